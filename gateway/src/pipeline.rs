//! The fixed request pipeline. Config never changes the order of the phases:
//!
//! ```text
//!  request ─► load snapshot (once) ─► normalise path ──400──┐
//!                                         │                  │
//!                                       route                │
//!                                         │                  │
//!                               on_request plugins ─Respond──┤
//!                                         │                  │
//!                        select target: breaker > segment > dial
//!                                         │                  │
//!                        forward (body limit ─413, 502, 504)─┤
//!                                         │                  │
//!                                   on_response ◄────────────┘ (gateway-made JSON reply)
//!                                         │
//!                            on_complete (always: metrics, access log)
//! ```
//!
//! Authentication, rollout, breakers and aggregation slot into the phases above as plugins
//! and the target decision; the driver itself stays this one function.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use gateway_plugin_api::{Flow, Outcome, Rejection, RequestCtx, Target};
use gateway_plugin_rollout::{Caller, ServiceHealth, client_ip};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full, Limited};
use hyper::body::{Body, Incoming};
use tokio::time::Instant;

use crate::clock;
use crate::error;
use crate::headers::{self, X_REQUEST_ID};
use crate::normalize::normalize_path;
use crate::snapshot::Route;
use crate::snapshot::Snapshot;
use crate::upstream::{PooledBody, SendFailure, Upstream, UpstreamBody, UpstreamError, report_transition};
use gateway_plugin_breaker::Admission;

/// Body of every response the gateway sends: the upstream's, streamed, or its own.
pub type ResponseBody = Either<PooledBody, Full<Bytes>>;

/// Status logged and counted when the client goes away before the response (nginx's 499).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The client connection's peer, formatted once per connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The peer address.
    pub ip: IpAddr,
    /// The same, as a header value for `x-forwarded-for`.
    pub header: HeaderValue,
}

impl Peer {
    /// A peer at `ip`.
    pub fn new(ip: IpAddr) -> Self {
        Peer { ip, header: HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value") }
    }
}

/// Runs one request through every phase and returns the response to send.
pub async fn handle(snapshot: Arc<Snapshot>, request: Request<Incoming>, peer: &Peer) -> Response<ResponseBody> {
    let request_id = headers::request_id(request.headers());
    let mut in_flight = InFlight {
        method: request.method().clone(),
        ctx: RequestCtx::new(request_id),
        started: Instant::now(),
        gateway_error: None,
        completed: false,
        snapshot,
    };
    let mut response = match run(&in_flight.snapshot, &mut in_flight.ctx, request, peer).await {
        Ok(mut response) => {
            headers::strip_hop_by_hop(response.headers_mut());
            response
        }
        Err(rejection) => {
            let code = rejection.code;
            let response = error::render(rejection, &in_flight.ctx.request_id).map(Either::Right);
            in_flight.gateway_error = Some(code);
            response
        }
    };
    response.headers_mut().insert(&X_REQUEST_ID, in_flight.ctx.request_id.clone());
    if !in_flight.snapshot.plugins.on_response.is_empty() {
        let (mut parts, body) = response.into_parts();
        for plugin in &in_flight.snapshot.plugins.on_response {
            plugin.on_response(&in_flight.ctx, &mut parts);
        }
        response = Response::from_parts(parts, body);
    }
    in_flight.complete(response.status());
    response
}

/// The phases from normalisation to the upstream's response head.
async fn run(
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    request: Request<Incoming>,
    peer: &Peer,
) -> Result<Response<ResponseBody>, Rejection> {
    let (mut parts, body) = request.into_parts();

    // Phase: normalise. One spelling of the path for auth, routing and the upstream.
    let normalized = match normalize_path(parts.uri.path()) {
        Ok(normalized) => normalized,
        Err(e) => {
            ctx.path = parts.uri.path().to_owned();
            return Err(error::bad_path(e));
        }
    };
    let path_and_query = match (&normalized, parts.uri.path_and_query()) {
        (std::borrow::Cow::Borrowed(_), Some(original)) => original.clone(),
        _ => rebuild_path_and_query(&normalized, parts.uri.query())?,
    };
    ctx.path = normalized.into_owned();

    // Phase: route.
    let route = snapshot.route(snapshot.router.find(&ctx.path));
    ctx.route = Some(route.id);

    // Phase: on_request plugins (authentication and other request policies).
    for plugin in &snapshot.plugins.on_request {
        if let Flow::Respond(rejection) = plugin.on_request(ctx, &mut parts) {
            return Err(rejection);
        }
    }

    // Phase: select target (breaker > segment > dial, in gateway_plugin_rollout::decide).
    let client_ip = client_ip(peer.ip, &parts.headers, &snapshot.server.trusted_proxies);
    if let Some(aggregate) = &route.aggregate {
        // Phase: aggregate (instead of forward). Route parts decide with this caller.
        let identity = ctx.identity.clone();
        let caller = Caller { identity: identity.as_deref(), headers: &parts.headers, client_ip: Some(client_ip) };
        return Ok(crate::aggregate::serve(snapshot, ctx, &parts, &caller, aggregate).await);
    }
    let caller = Caller { identity: ctx.identity.as_deref(), headers: &parts.headers, client_ip: Some(client_ip) };
    let health = route.service_health();
    let service_open = health == ServiceHealth::BreakerOpen;
    let decision = route.decide(&caller, health);
    // Only callers the dial or a segment would have sent to the service count as fallbacks.
    let diverted = service_open && route.decide(&caller, ServiceHealth::Available).target == Target::Service;
    let target = decision.target;
    ctx.target = Some(target);
    ctx.upstream = Some(decision.upstream.name.clone());

    // Phase: forward.
    let limit = snapshot.server.max_body_bytes;
    if body.size_hint().lower() > limit {
        return Err(error::body_too_large(limit));
    }
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::set_forwarding(&mut parts.headers, &peer.header);
    if !parts.headers.contains_key(header::HOST) {
        // HTTP/2 clients send :authority instead of Host; HTTP/1.1 upstreams need a Host.
        let host = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        parts.headers.insert(header::HOST, host.unwrap_or_else(|| decision.upstream.host_header().clone()));
    }
    parts.headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    // Origin-form: the upstream sees the path and query only, exactly as normalised.
    parts.uri = Uri::from(path_and_query);
    parts.version = Version::HTTP_11;
    let body = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));

    let mut request = match (&route.service, target) {
        (Some(service), Target::Service) => match call_service(route, service, parts, body).await {
            ServiceResult::Answered(response) => return Ok(response.map(Either::Left)),
            ServiceResult::Failed(error) => return Err(error::upstream_failed(&error)),
            ServiceResult::BodyError(rejection) => return Err(rejection),
            ServiceResult::FallBack { request, reason } => {
                fell_back(ctx, route, service, reason);
                request
            }
        },
        _ => {
            if let (true, Some(service)) = (diverted, &route.service) {
                fell_back(ctx, route, service, FALLBACK_BREAKER_OPEN);
            }
            Request::from_parts(parts, Either::Left(body))
        }
    };
    // The monolith side: the route's monolith, or the default upstream.
    let monolith = &route.monolith;
    if !request.headers().contains_key(header::HOST) {
        request.headers_mut().insert(header::HOST, monolith.host_header().clone());
    }
    match call(monolith, request).await {
        Ok(response) => Ok(response.map(Either::Left)),
        Err(failure) => Err(call_rejection(&failure)),
    }
}

/// `gateway_fallbacks_total` reason: the service's breaker is open.
const FALLBACK_BREAKER_OPEN: &str = "breaker_open";

/// Methods whose replay is harmless (RFC 9110 §9.2.2), minus TRACE.
fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

/// Records a fallback on the request and logs it once.
fn fell_back(ctx: &mut RequestCtx, route: &Route, service: &Upstream, reason: &'static str) {
    ctx.fallback = Some(reason);
    ctx.target = Some(Target::Monolith);
    ctx.upstream = Some(route.monolith.name.clone());
    tracing::warn!(
        request_id = ctx.request_id.to_str().unwrap_or(""),
        route = &*route.name,
        from = &*service.name,
        to = &*route.monolith.name,
        reason,
        "fallback to the monolith"
    );
}

enum ServiceResult {
    /// The service answered (a failure status is passed on when a replay is not safe).
    Answered(Response<PooledBody>),
    /// Replay this request on the monolith.
    FallBack { request: Request<UpstreamBody>, reason: &'static str },
    /// The service failed and replay is not safe (or not wanted).
    Failed(UpstreamError),
    /// The client's body could not be read or is too large.
    BodyError(Rejection),
}

/// Calls the service, keeping what a safe replay needs:
/// - a request that never left the gateway (connect failure, breaker refusal) is replayed
///   for any method;
/// - after sending, only an idempotent request whose whole body was buffered (at most
///   `fallback_body_limit`) is replayed, and only before any response byte reached the
///   client, which is always the case here: the response head is still in hand.
async fn call_service(
    route: &Route,
    service: &Upstream,
    parts: http::request::Parts,
    body: Limited<Incoming>,
) -> ServiceResult {
    let replayable_after_send = route.fallback.enabled
        && is_idempotent(&parts.method)
        && body.size_hint().upper().is_some_and(|upper| upper <= route.fallback.body_limit);
    let (request, replay_copy) = if replayable_after_send {
        // Most such requests (GETs) have no body: nothing to read.
        let bytes = if body.is_end_stream() {
            Bytes::new()
        } else {
            match http_body_util::BodyExt::collect(body).await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return ServiceResult::BodyError(if e.is::<http_body_util::LengthLimitError>() {
                        error::body_too_large(route.fallback.body_limit)
                    } else {
                        Rejection::new(
                            StatusCode::BAD_REQUEST,
                            "body-read-failed",
                            "the request body could not be read",
                        )
                    });
                }
            }
        };
        // A replay needs the request line and headers, not hyper's per-request extensions.
        let copy = ReplayCopy {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            body: bytes.clone(),
        };
        (Request::from_parts(parts, Either::Right(Full::new(bytes))), Some(copy))
    } else {
        (Request::from_parts(parts, Either::Left(body)), None)
    };
    match call(service, request).await {
        Ok(response) if service.is_failure_status(response.status().as_u16()) && replay_copy.is_some() => {
            // The service's failure head is dropped unread: nothing of it reached the client.
            drop(response);
            let request = replay_of(replay_copy).expect("checked is_some");
            ServiceResult::FallBack { request, reason: "status_5xx" }
        }
        Ok(response) => ServiceResult::Answered(response),
        Err(CallFailure::Failed { error: UpstreamError::BodyTooLarge, .. }) => {
            ServiceResult::Failed(UpstreamError::BodyTooLarge)
        }
        // An open breaker routes to the monolith whatever `fallback` says.
        Err(CallFailure::Refused { request, .. }) => ServiceResult::FallBack { request, reason: FALLBACK_BREAKER_OPEN },
        Err(CallFailure::Failed { error, unsent }) => {
            let reason = match error {
                UpstreamError::Connect { .. } => "connect_error",
                UpstreamError::Timeout { .. } => "timeout",
                _ => "exchange_error",
            };
            match (route.fallback.enabled, unsent, replay_of(replay_copy)) {
                (true, Some(request), _) | (true, None, Some(request)) => ServiceResult::FallBack { request, reason },
                _ => ServiceResult::Failed(error),
            }
        }
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

/// Why a call did not produce a response head.
pub(crate) enum CallFailure {
    /// The upstream's breaker refused the call; the request, untouched, comes back.
    Refused { retry_after: std::time::Duration, request: Request<UpstreamBody> },
    /// The exchange failed; `unsent` is the request when it never left the gateway.
    Failed { error: UpstreamError, unsent: Option<Request<UpstreamBody>> },
}

/// Calls `upstream` through its circuit breaker, if it has one, and reports the outcome:
/// a connect error, a timeout, a broken exchange or a failure status count as failures;
/// a body over the limit is the client's doing and counts as neither.
pub(crate) async fn call(
    upstream: &Upstream,
    request: Request<UpstreamBody>,
) -> Result<Response<PooledBody>, CallFailure> {
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
            Err(SendFailure { error: UpstreamError::BodyTooLarge, .. }) => None,
            Err(_) => permit.failed(now),
        };
        report_transition(&upstream.name, transition);
    }
    result.map_err(|failure| {
        tracing::debug!(upstream = %upstream.name, error = %failure.error, "upstream exchange failed");
        CallFailure::Failed { error: failure.error, unsent: failure.unsent }
    })
}

fn call_rejection(failure: &CallFailure) -> Rejection {
    match failure {
        CallFailure::Failed { error, .. } => error::upstream_failed(error),
        CallFailure::Refused { retry_after, .. } => {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "breaker-open", "the upstream's circuit breaker is open")
                .with_header(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)))
        }
    }
}

fn rebuild_path_and_query(path: &str, query: Option<&str>) -> Result<PathAndQuery, Rejection> {
    let text = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    PathAndQuery::from_maybe_shared(Bytes::from(text)).map_err(|_| {
        Rejection::new(StatusCode::BAD_REQUEST, "bad-path", "the normalised path is not a valid request target")
    })
}

/// A request between its start and its response: runs `on_complete` exactly once, also
/// when the client goes away and the request future is dropped mid-flight.
struct InFlight {
    snapshot: Arc<Snapshot>,
    ctx: RequestCtx,
    method: Method,
    started: Instant,
    /// The `x-gateway-error` code when the gateway answered by itself.
    gateway_error: Option<&'static str>,
    completed: bool,
}

impl InFlight {
    fn complete(&mut self, status: StatusCode) {
        if std::mem::replace(&mut self.completed, true) {
            return;
        }
        let outcome = Outcome { status, duration: self.started.elapsed(), gateway_error: self.gateway_error };
        for plugin in &self.snapshot.plugins.on_complete {
            plugin.on_complete(&self.ctx, &outcome);
        }
        if let Some(table) = self.snapshot.route_stats.get() {
            let route = self.ctx.route.map_or(table.len().saturating_sub(1), |id| id.0);
            if let Some(stats) = table.get(route) {
                stats.record(self.ctx.target, status.is_server_error(), outcome.duration, self.ctx.fallback);
            }
        }
        if self.snapshot.server.access_log {
            self.access_log(&outcome);
        }
    }

    fn access_log(&self, outcome: &Outcome) {
        let route = self.ctx.route.map(|id| &*self.snapshot.route(id).name);
        tracing::info!(
            request_id = self.ctx.request_id.to_str().unwrap_or(""),
            method = self.method.as_str(),
            path = self.ctx.path.as_str(),
            route,
            target = self.ctx.target.map(Target::as_str),
            upstream = self.ctx.upstream.as_deref(),
            status = outcome.status.as_u16(),
            duration_ms = outcome.duration.as_secs_f64() * 1000.0,
            error = outcome.gateway_error,
            "access"
        );
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.completed {
            self.gateway_error = Some("client-closed");
            let status = StatusCode::from_u16(CLIENT_CLOSED_REQUEST).expect("499 is in range");
            self.complete(status);
        }
    }
}
