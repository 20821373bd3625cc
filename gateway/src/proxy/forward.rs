//! Phase: forward. Sends the request to the chosen side; a service that fails is replaced
//! by the route's monolith when a replay is safe.
//!
//! The fallback rules, in one place:
//! - a request that never left the gateway (breaker refusal, connect failure) is replayed
//!   for any method (a breaker refusal always; the others with `fallback = "safe"`);
//! - after sending, only an idempotent request whose whole body was buffered (at most
//!   `fallback_body_limit`) is replayed, and only before any response byte reached the
//!   client, which is always the case here: the response head is still in hand;
//! - a body over the limit, stalled or malformed is the client's doing: 413, 408 or 400,
//!   no fallback, and the breaker does not count it;
//! - a replay is the request as matched (path and `Host`), never the service's rewrite of
//!   it: each side's exchange starts from the matched head.

use std::sync::Arc;

use bytes::Bytes;
use gateway_plugin_api::{Exchange, FallbackReason, Plugin, RequestCtx, Target};
use http::header::{HOST, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Body;

use super::reply::ProxyError;
use super::traced::traced_call;
use super::{Selection, is_idempotent, run_exchange_hooks};
use crate::snapshot::Route;
use crate::telemetry::trace::Tracer;
use crate::upstream::call::CallFailure;
use crate::upstream::{ClientFault, ResponseBody, Upstream, UpstreamBody, UpstreamError};

/// Sends `request` (the head as matched) to the selected side and returns the response
/// head to pass on. `exchange_hooks` are the plugins of the `upstream_exchange` phase.
pub(super) async fn forward(
    exchange_hooks: &[Arc<dyn Plugin>],
    tracer: Option<&Arc<Tracer>>,
    route: &Route,
    ctx: &mut RequestCtx,
    selection: Selection<'_>,
    request: Request<UpstreamBody>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let request = match (&route.service, selection.target) {
        (Some(service), Target::Service) => {
            match call_service(exchange_hooks, tracer, ctx, route, service, request).await {
                ServiceResult::Answered(response) => return Ok(response),
                ServiceResult::Failed(error) => return Err(error),
                ServiceResult::FallBack { request, reason } => {
                    fell_back(ctx, route, service, reason);
                    request
                }
            }
        }
        _ => {
            if let (true, Some(service)) = (selection.diverted, &route.service) {
                fell_back(ctx, route, service, FallbackReason::BreakerOpen);
            }
            request
        }
    };
    // The monolith side: the route's monolith, or the default upstream.
    let request = for_side(exchange_hooks, ctx, route, Target::Monolith, request);
    let what = if ctx.fallback.is_some() { "fallback replay" } else { "upstream" };
    let result = traced_call!(tracer, ctx, what, &route.monolith, request);
    result.map_err(call_error)
}

/// `request` as the upstream_exchange plugins prepare it for `side`.
fn for_side(
    exchange_hooks: &[Arc<dyn Plugin>],
    ctx: &RequestCtx,
    route: &Route,
    side: Target,
    request: Request<UpstreamBody>,
) -> Request<UpstreamBody> {
    if exchange_hooks.is_empty() {
        return request;
    }
    let (mut parts, body) = request.into_parts();
    run_exchange_hooks(exchange_hooks, ctx, Exchange { route: route.id, side }, &mut parts);
    Request::from_parts(parts, body)
}

/// The URI and `Host` of a request as matched, to undo the service's rewrite of a request
/// that comes back unsent and is replayed on the monolith.
struct AsMatched {
    uri: Uri,
    host: Option<HeaderValue>,
}

impl AsMatched {
    fn restore(self, mut request: Request<UpstreamBody>) -> Request<UpstreamBody> {
        *request.uri_mut() = self.uri;
        match self.host {
            Some(host) => request.headers_mut().insert(HOST, host),
            None => request.headers_mut().remove(HOST),
        };
        request
    }
}

fn restore(as_matched: Option<AsMatched>, request: Request<UpstreamBody>) -> Request<UpstreamBody> {
    match as_matched {
        Some(as_matched) => as_matched.restore(request),
        None => request,
    }
}

/// The reply for a call that produced no response head.
fn call_error(failure: CallFailure) -> ProxyError {
    match failure {
        CallFailure::Failed { error, .. } => ProxyError::Upstream(error),
        CallFailure::Refused { retry_after, .. } => ProxyError::BreakerOpen { retry_after },
    }
}

/// The fallback reason for an exchange that failed.
fn failure_reason(error: &UpstreamError) -> FallbackReason {
    match error {
        UpstreamError::Connect { .. } | UpstreamError::Tls { .. } => FallbackReason::ConnectError,
        UpstreamError::Timeout { .. } => FallbackReason::Timeout,
        UpstreamError::Client(_) | UpstreamError::Exchange { .. } => FallbackReason::ExchangeError,
        UpstreamError::NoHealthyEndpoint { .. } => FallbackReason::NoHealthyEndpoint,
    }
}

/// Records a fallback on the request and logs it once.
fn fell_back(ctx: &mut RequestCtx, route: &Route, service: &Upstream, reason: FallbackReason) {
    ctx.fallback = Some(reason);
    ctx.target = Some(Target::Monolith);
    ctx.upstream = Some(route.monolith.name.clone());
    tracing::warn!(
        request_id = ctx.request_id.to_str().unwrap_or(""),
        route = &*route.name,
        from = &*service.name,
        to = &*route.monolith.name,
        reason = reason.as_str(),
        "fallback to the monolith"
    );
}

enum ServiceResult {
    /// The service answered (a failure status is passed on when a replay is not safe).
    Answered(Response<ResponseBody>),
    /// Replay this request on the monolith.
    FallBack { request: Request<UpstreamBody>, reason: FallbackReason },
    /// The service failed and replay is not safe (or not wanted), or the client's body
    /// could not be read.
    Failed(ProxyError),
}

/// Calls the service, keeping what a safe replay needs (see the module rules).
async fn call_service(
    exchange_hooks: &[Arc<dyn Plugin>],
    tracer: Option<&Arc<Tracer>>,
    ctx: &RequestCtx,
    route: &Route,
    service: &Upstream,
    request: Request<UpstreamBody>,
) -> ServiceResult {
    let (mut parts, body) = request.into_parts();
    // Only kept when something will rewrite the service's copy (two reference counts).
    let as_matched = (!exchange_hooks.is_empty() || service.rewrites_host())
        .then(|| AsMatched { uri: parts.uri.clone(), host: parts.headers.get(HOST).cloned() });
    let replayable_after_send = route.fallback.enabled
        && is_idempotent(&parts.method)
        && body.size_hint().upper().is_some_and(|upper| upper <= route.fallback.body_limit);
    let (request, replay_copy) = if replayable_after_send {
        let bytes = match buffer(body, route.fallback.body_limit).await {
            Ok(bytes) => bytes,
            Err(error) => return ServiceResult::Failed(error),
        };
        // A replay needs the request line and headers as matched, not hyper's per-request
        // extensions, and not the service's rewrite.
        let copy = ReplayCopy {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            body: bytes.clone(),
        };
        run_exchange_hooks(exchange_hooks, ctx, Exchange { route: route.id, side: Target::Service }, &mut parts);
        (Request::from_parts(parts, Either::Right(Full::new(bytes))), Some(copy))
    } else {
        run_exchange_hooks(exchange_hooks, ctx, Exchange { route: route.id, side: Target::Service }, &mut parts);
        (Request::from_parts(parts, body), None)
    };
    let result = traced_call!(tracer, ctx, "upstream", service, request);
    match result {
        Ok(response) if service.is_failure_status(response.status().as_u16()) && replay_copy.is_some() => {
            // The service's failure head is dropped unread: nothing of it reached the client.
            drop(response);
            let request = replay_of(replay_copy).expect("checked is_some");
            ServiceResult::FallBack { request, reason: FallbackReason::Status5xx }
        }
        Ok(response) => ServiceResult::Answered(response),
        // The client's body failed: nothing to replay, and not the service's fault.
        Err(CallFailure::Failed { error: UpstreamError::Client(fault), .. }) => {
            ServiceResult::Failed(ProxyError::ClientBody(fault))
        }
        // An open breaker routes to the monolith whatever `fallback` says; so does a
        // service with no healthy endpoint (nothing was sent either way).
        Err(CallFailure::Refused { request, .. }) => {
            ServiceResult::FallBack { request: restore(as_matched, request), reason: FallbackReason::BreakerOpen }
        }
        Err(CallFailure::Failed { error: UpstreamError::NoHealthyEndpoint { .. }, unsent: Some(request) }) => {
            ServiceResult::FallBack { request: restore(as_matched, request), reason: FallbackReason::NoHealthyEndpoint }
        }
        Err(CallFailure::Failed { error, unsent }) => {
            let reason = failure_reason(&error);
            let unsent = unsent.map(|request| restore(as_matched, request));
            match (route.fallback.enabled, unsent, replay_of(replay_copy)) {
                (true, Some(request), _) | (true, None, Some(request)) => ServiceResult::FallBack { request, reason },
                _ => ServiceResult::Failed(ProxyError::Upstream(error)),
            }
        }
    }
}

/// Reads a body that is to be replayable; most such requests (GETs) have none.
pub(super) async fn buffer(body: UpstreamBody, limit: u64) -> Result<Bytes, ProxyError> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    match http_body_util::BodyExt::collect(body).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => match crate::upstream::client_body::client_fault(&*e) {
            Some(ClientFault::TooLarge) => Err(ProxyError::BodyTooLarge { limit }),
            Some(fault) => Err(ProxyError::ClientBody(fault)),
            None => Err(ProxyError::ClientBody(ClientFault::Malformed)),
        },
    }
}

/// What a replay after sending needs: the request without hyper's extensions.
struct ReplayCopy {
    method: Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: Bytes,
}

fn replay_of(copy: Option<ReplayCopy>) -> Option<Request<UpstreamBody>> {
    copy.map(|copy| {
        let mut request = Request::new(Either::Right(Full::new(copy.body)));
        *request.method_mut() = copy.method;
        *request.uri_mut() = copy.uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = copy.headers;
        request
    })
}
