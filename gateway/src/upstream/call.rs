//! The breaker-guarded call: every request to an upstream goes through [`call`], which
//! asks the upstream's breaker first and reports the outcome to it afterwards.
//!
//! [`SideRequests`] exposes the same call to policies (shadow copies, mirrors) as the
//! plugin API's [`Upstreams`], over the snapshot being served; [`side_call`] is the one
//! side request both it and the mirrors' route sides make.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_plugin_api::side::{SideError, SideFuture, Upstreams};
use gateway_plugin_breaker::Admission;
use gateway_plugin_metrics::names;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full, Limited};

use super::{ResponseBody, SendFailure, Upstream, UpstreamBody, UpstreamError};
use crate::clock;

/// Why a call did not produce a response head.
pub(crate) enum CallFailure {
    /// The upstream's breaker refused the call; the request, untouched, comes back.
    Refused { retry_after: Duration, request: Request<UpstreamBody> },
    /// The exchange failed; `unsent` is the request when it never left the gateway.
    Failed { error: UpstreamError, unsent: Option<Request<UpstreamBody>> },
}

/// Calls `upstream` through its circuit breaker, if it has one, and reports the outcome:
/// a connect error, a timeout, a broken exchange or a failure status count as failures;
/// a failure of the client's body (too large, stalled, malformed) is the client's doing
/// and counts as neither.
///
/// The request gets the `Host` the upstream's `host_header` asks for in `send`, once the
/// endpoint is chosen, so every caller (the data plane, a replay, an aggregate part, a
/// side request) honours it.
pub(crate) async fn call(
    upstream: &Upstream,
    request: Request<UpstreamBody>,
) -> Result<Response<ResponseBody>, CallFailure> {
    let permit = match &upstream.breaker {
        None => None,
        Some(breaker) => {
            let (admission, transition) = breaker.admit(clock::now());
            report_transition(&upstream.name, transition);
            match admission {
                Admission::Admitted(permit) => Some(permit),
                Admission::Refused { retry_after } => return Err(CallFailure::Refused { retry_after, request }),
            }
        }
    };
    let result = upstream.send(request).await;
    if let Some(permit) = permit {
        let now = clock::now();
        let transition = match &result {
            Ok(response) if upstream.is_failure_status(response.status().as_u16()) => permit.failed(now),
            Ok(_) => permit.succeeded(now),
            Err(SendFailure { error: UpstreamError::Client(_), .. }) => None,
            Err(_) => permit.failed(now),
        };
        report_transition(&upstream.name, transition);
    }
    result.map_err(|failure| {
        match &failure.error {
            // The client's body failed: nothing to say about the upstream.
            UpstreamError::Client(fault) => tracing::debug!(upstream = %upstream.name, ?fault, "client body failed"),
            error => tracing::debug!(upstream = %upstream.name, %error, "upstream exchange failed"),
        }
        CallFailure::Failed { error: failure.error, unsent: failure.unsent }
    })
}

/// Logs a breaker state change and records it in `gateway_circuit_state` and
/// `gateway_circuit_transitions_total`.
pub(crate) fn report_transition(upstream: &str, transition: Option<gateway_plugin_breaker::Transition>) {
    let Some(transition) = transition else { return };
    tracing::info!(
        upstream,
        from = transition.from.as_str(),
        to = transition.to.as_str(),
        "circuit breaker changed state"
    );
    metrics::gauge!(names::CIRCUIT_STATE, "upstream" => upstream.to_owned()).set(transition.to.gauge());
    metrics::counter!(names::CIRCUIT_TRANSITIONS_TOTAL, "upstream" => upstream.to_owned(), "to" => transition.to.as_str())
        .increment(1);
}

/// The upstreams of one snapshot, as policies call them for side requests.
pub(crate) struct SideRequests<'a> {
    pub(crate) upstreams: &'a BTreeMap<String, Arc<Upstream>>,
}

impl Upstreams for SideRequests<'_> {
    fn send(&self, name: &str, request: Request<Bytes>, max_body_bytes: usize) -> SideFuture {
        match self.upstreams.get(name) {
            Some(upstream) => side_call(upstream.clone(), request, max_body_bytes),
            None => {
                let name = name.to_owned();
                Box::pin(async move { Err(SideError::UnknownUpstream(name)) })
            }
        }
    }
}

/// One side request through `upstream`'s breaker, its body read up to `max_body_bytes`.
pub(crate) fn side_call(upstream: Arc<Upstream>, request: Request<Bytes>, max_body_bytes: usize) -> SideFuture {
    Box::pin(async move {
        let request = request.map(|body| Either::Right(Full::new(body)));
        let response = match call(&upstream, request).await {
            Ok(response) => response,
            Err(CallFailure::Refused { .. }) => return Err(SideError::BreakerOpen),
            Err(CallFailure::Failed { error, .. }) => return Err(SideError::Failed(error.to_string())),
        };
        let (parts, body) = response.into_parts();
        match Limited::new(body, max_body_bytes).collect().await {
            Ok(collected) => Ok(Response::from_parts(parts, collected.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(SideError::TooLarge {
                status: parts.status,
                content_type: parts.headers.get(http::header::CONTENT_TYPE).cloned(),
            }),
            Err(e) => Err(SideError::Failed(format!("the response body broke: {e}"))),
        }
    })
}
