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

use crate::error;
use crate::headers::{self, X_REQUEST_ID};
use crate::normalize::normalize_path;
use crate::snapshot::Snapshot;
use crate::upstream::PooledBody;

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
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
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
) -> Result<Response<PooledBody>, Rejection> {
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
    let caller = Caller { identity: ctx.identity.as_deref(), headers: &parts.headers, client_ip: Some(client_ip) };
    let decision = route.decide(&caller, ServiceHealth::Available);
    let upstream = decision.upstream;
    ctx.target = Some(decision.target);
    ctx.upstream = Some(upstream.name.clone());

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
        parts.headers.insert(header::HOST, host.unwrap_or_else(|| upstream.host_header().clone()));
    }
    parts.headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    // Origin-form: the upstream sees the path and query only, exactly as normalised.
    parts.uri = Uri::from(path_and_query);
    parts.version = Version::HTTP_11;
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    upstream.send(Request::from_parts(parts, Either::Left(limited))).await.map_err(|e| {
        tracing::debug!(request_id = ?ctx.request_id, error = %e, "upstream exchange failed");
        error::upstream_failed(&e)
    })
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
