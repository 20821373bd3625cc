//! Child spans for the calls a traced request makes: the upstream call, a fallback
//! replay, each aggregate part, each shadow copy. Each callee gets `traceparent` naming
//! its call's span as the parent. An untraced request pays one `None` check per call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use gateway_plugin_api::RequestCtx;
use http::{HeaderMap, Response};

use crate::telemetry::trace::{AttributeValue, ChildSpan, Tracer};
use crate::upstream::call::CallFailure;
use crate::upstream::{ResponseBody, Upstream};

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
        let span = ChildSpan::start(parent, format!("{what} {}", upstream.name));
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

impl CallSpan {
    /// Runs `call` inside this span (boxed: only traced calls pay for it).
    pub(crate) fn around<'a>(
        self,
        call: impl Future<Output = CallResult> + Send + 'a,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        Box::pin(async move {
            let result = call.await;
            match &result {
                Ok(response) => self.answered(response.status().as_u16()),
                Err(CallFailure::Refused { .. }) => self.failed("the circuit breaker is open".to_owned()),
                Err(CallFailure::Failed { error, .. }) => self.failed(error.to_string()),
            }
            result
        })
    }
}

/// What a call gives.
pub(crate) type CallResult = Result<Response<ResponseBody>, CallFailure>;

/// `call(upstream, request).await`, inside a span when the request is traced. A macro so
/// that an untraced call is awaited exactly where it was: no wrapper future, nothing
/// more for every request to move (callgrind measured a wrapper at about 500
/// instructions a request).
macro_rules! traced_call {
    ($tracer:expr, $ctx:expr, $what:expr, $upstream:expr, $request:expr) => {{
        let mut request = $request;
        let upstream = $upstream;
        match $crate::proxy::traced::CallSpan::start($tracer, $ctx, $what, upstream, request.headers_mut()) {
            None => $crate::upstream::call::call(upstream, request).await,
            Some(span) => span.around($crate::upstream::call::call(upstream, request)).await,
        }
    }};
}
pub(crate) use traced_call;
