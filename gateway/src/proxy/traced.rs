//! Child spans for the calls a traced request makes: the upstream call, a fallback
//! replay, each aggregate part, each shadow copy. Each callee gets `traceparent` naming
//! its call's span as the parent. An untraced request pays one `None` check per call.

use std::sync::Arc;

use gateway_plugin_api::RequestCtx;
use http::{HeaderMap, Request, Response};

use crate::telemetry::trace::{AttributeValue, ChildSpan, Tracer};
use crate::upstream::call::{CallFailure, call};
use crate::upstream::{ResponseBody, Upstream, UpstreamBody};

/// A call in progress for a traced request.
pub(crate) struct CallSpan {
    tracer: Arc<Tracer>,
    span: ChildSpan,
    upstream: Arc<str>,
}

impl CallSpan {
    /// Starts the span of a call named `what` (`upstream`, `fallback replay`, `aggregate
    /// part`, `shadow copy`) to `upstream`, and names it the parent in `headers`; `None`
    /// when the request is not traced.
    pub(crate) fn start(
        tracer: Option<&Arc<Tracer>>,
        ctx: &RequestCtx,
        what: &str,
        upstream: &Upstream,
        headers: &mut HeaderMap,
    ) -> Option<CallSpan> {
        let (tracer, parent) = (tracer?, ctx.trace.as_ref()?);
        let span = tracer.child(parent, format!("{what} {}", upstream.name));
        span.inject(headers);
        Some(CallSpan { tracer: tracer.clone(), span, upstream: upstream.name.clone() })
    }

    /// The callee answered with `status`.
    pub(crate) fn answered(self, status: u16) {
        self.finish(Some(status), None);
    }

    /// The call failed.
    pub(crate) fn failed(self, error: String) {
        self.finish(None, Some(error));
    }

    fn finish(self, status: Option<u16>, error: Option<String>) {
        let attributes = vec![("gateway.upstream", AttributeValue::Text(self.upstream.to_string()))];
        self.span.finish(&self.tracer, attributes, status, error);
    }
}

/// [`call`] with a span when the request is traced.
pub(crate) async fn traced_call(
    tracer: Option<&Arc<Tracer>>,
    ctx: &RequestCtx,
    what: &str,
    upstream: &Upstream,
    mut request: Request<UpstreamBody>,
) -> Result<Response<ResponseBody>, CallFailure> {
    let span = CallSpan::start(tracer, ctx, what, upstream, request.headers_mut());
    let result = call(upstream, request).await;
    if let Some(span) = span {
        match &result {
            Ok(response) => span.answered(response.status().as_u16()),
            Err(CallFailure::Refused { .. }) => span.failed("the circuit breaker is open".to_owned()),
            Err(CallFailure::Failed { error, .. }) => span.failed(error.to_string()),
        }
    }
    result
}
