//! The fixed request pipeline: one function per phase, in an order config never changes.
//!
//! ```text
//!  request ─► load snapshot (once) ─► screen (Host, `_` names, length) ─400─┐
//!                                        │                                    │
//!                                     normalise ───────────────────400────────┤
//!                                        │                                    │
//!                                      route (router; client IP) ──400────────┤
//!                                      (lenient reading elsewhere: ambiguous) │
//!                                        │                                    │
//!                               authenticate* (auth) ──────────401────────────┤
//!                                        │                                    │
//!                               on_request* (rate limit) ──────429────────────┤
//!                                        │                                    │
//!                      select_target: breaker > segment > dial                │
//!                          │                          │                       │
//!                       aggregate                  admit (breaker permit,     │
//!                    (parts in parallel)            in upstream::call)        │
//!                          │                          │                       │
//!                          │                  upstream_request* (edit the     │
//!                          │                  request, side requests)         │
//!                          │                          │                       │
//!                          │                  mirror* (monolith chosen: copies│
//!                          │                  to start once its head is in)   │
//!                          │                          │                       │
//!                    upstream_exchange* before each request sent upstream     │
//!                    (service prefix, header edits; the upstream sets Host)   │
//!                          │                          │                       │
//!                          │                  forward (413, 502, 503, 504;    │
//!                          │                  safe fallback to the monolith)──┤
//!                          ▼                          ▼                       ▼
//!                       respond: hop-by-hop out, x-request-id, on_response* ◄─ (JSON reply)
//!                                        │
//!                    complete: on_complete* (metrics), route stats, access log (always)
//! ```
//! (`*`: the registered plugins of that phase, in registry order.)

pub(crate) mod aggregate;
mod forward;
pub mod headers;
mod mirror;
pub(crate) mod reply;
#[cfg(test)]
mod tests;
mod traced;
pub mod upgrade;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use gateway_plugin_api::{Exchange, Flow, Outcome, Plugin, RequestCtx, Target, codes};
use gateway_plugin_rollout::{Caller, ServiceHealth, client_ip};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Body;

use crate::clock;
use crate::proxy::headers::X_REQUEST_ID;
use crate::proxy::reply::ProxyError;
use crate::routing::normalize::normalize_path;
use crate::snapshot::{Route, Snapshot};
use crate::upstream::call::SideRequests;
use crate::upstream::{ClientBody, GuardedBody, ResponseBody, Upstream};

/// Status logged and counted when the client goes away before the response (nginx's 499).
const CLIENT_CLOSED_REQUEST: u16 = 499;
/// How often one hook may ask to wait for one request before the request is refused.
const MAX_WAITS_PER_HOOK: u32 = 2;

/// The client connection's peer, formatted once per connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The peer address.
    pub(crate) ip: IpAddr,
    /// The same, as a header value for `x-forwarded-for`.
    pub(crate) header: HeaderValue,
    /// How it reached the gateway, for `x-forwarded-proto`.
    pub(crate) proto: &'static HeaderValue,
}

impl Peer {
    /// A peer at `ip` on the plain HTTP listener.
    pub(crate) fn new(ip: IpAddr) -> Self {
        Peer {
            ip,
            header: HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value"),
            proto: &headers::PROTO_HTTP,
        }
    }

    /// A peer at `ip` on the TLS listener.
    pub(crate) fn tls(ip: IpAddr) -> Self {
        Peer { proto: &headers::PROTO_HTTPS, ..Peer::new(ip) }
    }
}

/// Runs one request through every phase and returns the response to send.
pub(crate) async fn handle(
    snapshot: Arc<Snapshot>,
    request: Request<ClientBody>,
    peer: &Peer,
) -> Response<ResponseBody> {
    let request_id = headers::request_id(request.headers());
    let traced = snapshot.tracer.as_ref().and_then(|tracer| tracer.begin(request.headers()));
    let mut in_flight = InFlight {
        grpc: reply::is_grpc(request.version(), request.headers()),
        method: request.method().clone(),
        ctx: RequestCtx::new(request_id, clock::now()),
        gateway_error: None,
        completed: false,
        traced,
        snapshot,
    };
    in_flight.ctx.trace = traced.map(|begun| begun.context);
    let result = run(&in_flight.snapshot, &mut in_flight.ctx, request, peer).await;
    let response = respond(&mut in_flight, result);
    in_flight.complete(response.status());
    response
}

/// The phases from normalisation to the response head.
async fn run(
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    request: Request<ClientBody>,
    peer: &Peer,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let hop_by_hop = screen(snapshot, &mut parts).inspect_err(|_| ctx.path = parts.uri.path().to_owned())?;
    let path_and_query = normalise(ctx, &parts)?;
    let route = route(snapshot, ctx, &parts, peer)?;

    let plugins = &snapshot.plugins;
    run_hooks(&plugins.authenticate, |plugin| plugin.authenticate(ctx, &mut parts)).await?;
    run_hooks(&plugins.on_request, |plugin| plugin.on_request(ctx, &mut parts)).await?;

    if let Some(aggregate) = &route.aggregate {
        // Route parts decide with this caller; the identity is cloned (an Arc) because
        // serving the aggregate also writes to the context.
        let identity = ctx.identity.clone();
        let caller = Caller { identity: identity.as_deref(), headers: &parts.headers, client_ip: ctx.client_ip };
        return Ok(aggregate::serve(snapshot, ctx, &parts, &caller, aggregate).await);
    }
    let selection = select_target(route, ctx, &parts.headers);

    let limit = snapshot.server.max_body_bytes;
    if body.size_hint().lower() > limit {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let websocket = prepare_upstream_request(ctx, &mut parts, hop_by_hop, path_and_query, peer);
    // A WebSocket: the client connection, handed over once the upstream answers 101.
    let pending = match websocket {
        true => parts.extensions.remove::<hyper::upgrade::OnUpgrade>().map(|client| {
            upgrade::restore_handshake_headers(&mut parts.headers);
            upgrade::PendingUpgrade { client, route: route.name.clone() }
        }),
        false => None,
    };
    if !plugins.upstream_request.is_empty() {
        let side = SideRequests { upstreams: &snapshot.upstreams };
        run_hooks(&plugins.upstream_request, |plugin| plugin.upstream_request(ctx, &mut parts, &side)).await?;
    }
    let mut body = Either::Left(GuardedBody::new(body, limit, snapshot.server.body_read_timeout));
    // Copies only of what the monolith answers as chosen: not a fallback, not an upgrade.
    let mut mirrors = None;
    if !plugins.mirror.is_empty() && selection.target == Target::Monolith && !selection.diverted && pending.is_none() {
        let mut chosen = mirror::Mirrors::choose(&plugins.mirror, ctx, &parts);
        if !chosen.is_empty() {
            body = chosen.prepare_body(body).await?;
            mirrors = Some(chosen);
        }
    }
    let request = Request::from_parts(parts, body);
    let tracer = snapshot.tracer.as_ref();
    let mut response = forward::forward(&plugins.upstream_exchange, tracer, route, ctx, selection, request).await?;
    match pending {
        Some(pending) => upgrade::accept(pending, &mut response).map_err(|_| ProxyError::WrongUpgrade)?,
        None if response.status() == StatusCode::SWITCHING_PROTOCOLS => return Err(ProxyError::WrongUpgrade),
        None => {}
    }
    if let Some(mirrors) = mirrors {
        mirrors.start(&mut response, route, ctx, &plugins.upstream_exchange, tracer);
    }
    Ok(response)
}

/// Phase: screen. Refuses heads that two parsers could read two ways (two `Host`s, a
/// `Host` that disagrees with the target, `_` names under "reject"), drops `_` names under
/// "drop", and makes `Content-Length` the number it was read as. Returns the hop-by-hop
/// headers found on the way, for the forward.
fn screen(snapshot: &Snapshot, parts: &mut http::request::Parts) -> Result<headers::HopByHop, ProxyError> {
    let scan = headers::scan_request(&parts.headers);
    if scan.host {
        headers::check_host(&parts.headers, &parts.uri).map_err(ProxyError::BadHead)?;
    }
    if scan.underscore {
        headers::apply_underscore_policy(&mut parts.headers, snapshot.server.underscore_headers)
            .map_err(ProxyError::BadHead)?;
    }
    if scan.content_length {
        headers::canonicalise_content_length(&mut parts.headers).map_err(ProxyError::BadHead)?;
    }
    Ok(scan.hop_by_hop)
}

/// Phase: normalise. One spelling of the path for auth, routing and the upstream.
fn normalise(ctx: &mut RequestCtx, parts: &http::request::Parts) -> Result<PathAndQuery, ProxyError> {
    let normalized = match normalize_path(parts.uri.path()) {
        Ok(normalized) => normalized,
        Err(e) => {
            ctx.path = parts.uri.path().to_owned();
            return Err(ProxyError::BadPath(e));
        }
    };
    let path_and_query = match (&normalized, parts.uri.path_and_query()) {
        (std::borrow::Cow::Borrowed(_), Some(original)) => original.clone(),
        _ => rebuild_path_and_query(&normalized, parts.uri.query())?,
    };
    ctx.path = normalized.into_owned();
    Ok(path_and_query)
}

/// Phase: route. Finds the route (longest whole-segment prefix; refused when a lenient
/// reading of the path lands elsewhere) and the caller's address.
fn route<'s>(
    snapshot: &'s Snapshot,
    ctx: &mut RequestCtx,
    parts: &http::request::Parts,
    peer: &Peer,
) -> Result<&'s Route, ProxyError> {
    let route = snapshot.route(snapshot.router.route(&ctx.path).map_err(ProxyError::BadPath)?);
    ctx.route = Some(route.id);
    ctx.client_ip = Some(client_ip(peer.ip, &parts.headers, &snapshot.server.trusted_proxies));
    Ok(route)
}

/// Runs one phase's plugins in order; the first answer ends the request. A plugin that
/// asks to wait is awaited and called again, at most [`MAX_WAITS_PER_HOOK`] times.
async fn run_hooks(plugins: &[Arc<dyn Plugin>], mut hook: impl FnMut(&dyn Plugin) -> Flow) -> Result<(), ProxyError> {
    for plugin in plugins {
        let mut waits = 0;
        loop {
            match hook(&**plugin) {
                Flow::Continue => break,
                Flow::Respond(rejection) => return Err(ProxyError::Policy(rejection)),
                Flow::Wait(_) if waits >= MAX_WAITS_PER_HOOK => {
                    return Err(ProxyError::PolicyStalled { plugin: plugin.name() });
                }
                Flow::Wait(pending) => {
                    waits += 1;
                    pending.await;
                }
            }
        }
    }
    Ok(())
}

fn caller<'a>(ctx: &'a RequestCtx, headers: &'a http::HeaderMap) -> Caller<'a> {
    Caller { identity: ctx.identity.as_deref(), headers, client_ip: ctx.client_ip }
}

/// The side chosen for a request, and whether the breaker turned it away from the service.
pub(crate) struct Selection<'r> {
    /// Monolith or service.
    pub(crate) target: Target,
    /// The upstream of that side.
    pub(crate) upstream: &'r Arc<Upstream>,
    /// The dial or a segment chose the service, and its open breaker sent the caller to
    /// the monolith instead: a fallback.
    pub(crate) diverted: bool,
}

/// Phase: select target (breaker > segment > dial, in `gateway_plugin_rollout::decide`).
fn select_target<'r>(route: &'r Route, ctx: &mut RequestCtx, headers: &http::HeaderMap) -> Selection<'r> {
    let caller = caller(ctx, headers);
    let health = route.service_health();
    let decision = route.decide(&caller, health);
    // Only callers the dial or a segment would have sent to the service count as fallbacks.
    let diverted = health == ServiceHealth::BreakerOpen
        && route.decide(&caller, ServiceHealth::Available).target == Target::Service;
    let selection = Selection { target: decision.target, upstream: decision.upstream, diverted };
    ctx.target = Some(selection.target);
    ctx.upstream = Some(selection.upstream.name.clone());
    selection
}

/// The outgoing request head, as matched: hop-by-hop headers out, forwarding headers and
/// the request id in, the client's `Host` kept (the upstream may replace it, and adds its
/// own when there is none), origin-form URI with the normalised path. Returns true when
/// the client asked for a WebSocket upgrade (looked at only when it sent `Upgrade`).
fn prepare_upstream_request(
    ctx: &RequestCtx,
    parts: &mut http::request::Parts,
    present: headers::HopByHop,
    path_and_query: PathAndQuery,
    peer: &Peer,
) -> bool {
    let websocket = present.has_upgrade() && upgrade::is_websocket(&parts.method, parts.version, &parts.headers);
    headers::strip_present(&mut parts.headers, present);
    headers::set_forwarding(&mut parts.headers, &peer.header, peer.proto);
    // HTTP/2 clients send :authority instead of Host; HTTP/1.1 upstreams need a Host. An
    // origin-form HTTP/1.1 request has no authority, so the usual request looks up nothing.
    if let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    parts.headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    parts.uri = Uri::from(path_and_query);
    parts.version = Version::HTTP_11;
    websocket
}

/// Phase: upstream_exchange. Runs that phase's plugins on the head of one request about
/// to be sent to `exchange.side` (the forward, a replay, an aggregate part).
pub(crate) fn run_exchange_hooks(
    plugins: &[Arc<dyn Plugin>],
    ctx: &RequestCtx,
    exchange: Exchange,
    parts: &mut http::request::Parts,
) {
    for plugin in plugins {
        plugin.upstream_exchange(ctx, &exchange, parts);
    }
}

/// The request target (path and query) `side` of `route` receives for `target`, the
/// normalised path and query as matched: the data plane's `upstream_exchange` plugins run
/// on it as they would on a request. `gateway explain` and `gateway check --against` call
/// this, so they cannot disagree with the data plane.
pub fn upstream_target(snapshot: &Snapshot, route: &Route, side: Target, target: &str) -> String {
    let plugins = &snapshot.plugins.upstream_exchange;
    let Ok(uri) = target.parse::<Uri>() else { return target.to_owned() };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.uri = uri;
    let mut ctx = RequestCtx::new(HeaderValue::from_static("preview"), clock::now());
    ctx.route = Some(route.id);
    ctx.target = Some(side);
    run_exchange_hooks(plugins, &ctx, Exchange { route: route.id, side }, &mut parts);
    parts.uri.path_and_query().map_or_else(|| target.to_owned(), ToString::to_string)
}

/// Phase: respond. The upstream's head loses its hop-by-hop headers, a failure becomes
/// the gateway's JSON reply; every response gets `x-request-id`, then `on_response` runs.
fn respond(in_flight: &mut InFlight, result: Result<Response<ResponseBody>, ProxyError>) -> Response<ResponseBody> {
    let mut response = match result {
        Ok(mut response) => {
            headers::strip_hop_by_hop(response.headers_mut());
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                // Only an accepted WebSocket upgrade gets here (see `upgrade::accept`).
                upgrade::restore_handshake_headers(response.headers_mut());
            }
            response
        }
        Err(error) => {
            let rejection = error.into_rejection();
            in_flight.gateway_error = Some(rejection.code);
            let reply = if in_flight.grpc {
                reply::render_grpc(rejection)
            } else {
                reply::render(rejection, &in_flight.ctx.request_id)
            };
            reply.map(Either::Right)
        }
    };
    response.headers_mut().insert(&X_REQUEST_ID, in_flight.ctx.request_id.clone());
    let on_response = &in_flight.snapshot.plugins.on_response;
    if !on_response.is_empty() {
        let (mut parts, body) = response.into_parts();
        for plugin in on_response {
            plugin.on_response(&in_flight.ctx, &mut parts);
        }
        response = Response::from_parts(parts, body);
    }
    response
}

fn rebuild_path_and_query(path: &str, query: Option<&str>) -> Result<PathAndQuery, ProxyError> {
    let text = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    PathAndQuery::from_maybe_shared(Bytes::from(text)).map_err(|_| ProxyError::InvalidTarget)
}

/// Methods whose replay is harmless (RFC 9110 §9.2.2), minus TRACE.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

/// Phase: complete. A request between its start and its response: runs `on_complete`
/// exactly once, also when the client goes away and the request future is dropped.
struct InFlight {
    snapshot: Arc<Snapshot>,
    ctx: RequestCtx,
    method: Method,
    /// A gRPC request: the gateway's own answers take gRPC's form.
    grpc: bool,
    /// The `x-gateway-error` code when the gateway answered by itself.
    gateway_error: Option<&'static str>,
    completed: bool,
    /// The request's server span, when it is traced.
    traced: Option<crate::telemetry::trace::Begun>,
}

impl InFlight {
    fn complete(&mut self, status: StatusCode) {
        if std::mem::replace(&mut self.completed, true) {
            return;
        }
        let duration = clock::now().saturating_sub(self.ctx.started);
        let outcome = Outcome { status, duration, gateway_error: self.gateway_error };
        for plugin in &self.snapshot.plugins.on_complete {
            plugin.on_complete(&self.ctx, &outcome);
        }
        if let Some(table) = self.snapshot.route_stats.get() {
            let route = self.ctx.route.map_or(table.len().saturating_sub(1), |id| id.0);
            if let Some(stats) = table.get(route) {
                let dial = self.ctx.route.and_then(|id| self.snapshot.route(id).effective_percent());
                stats.record(self.ctx.target, status.is_server_error(), outcome.duration, self.ctx.fallback, dial);
            }
        }
        if self.snapshot.server.access_log {
            self.access_log(&outcome);
        }
        if let (Some(begun), Some(tracer)) = (self.traced.as_ref(), &self.snapshot.tracer) {
            self.server_span(begun, tracer, &outcome);
        }
    }

    /// The request's server span: route, side, upstream, status, the gateway's error code.
    fn server_span(
        &self,
        begun: &crate::telemetry::trace::Begun,
        tracer: &crate::telemetry::trace::Tracer,
        outcome: &Outcome,
    ) {
        use crate::telemetry::trace::{AttributeValue::*, FinishedSpan, Kind, unix_nanos};
        let route = self.ctx.route.map(|id| self.snapshot.route(id).name.to_string());
        let mut attributes = vec![
            ("http.request.method", Text(self.method.as_str().to_owned())),
            ("url.path", Text(self.ctx.path.clone())),
            ("http.response.status_code", Int(i64::from(outcome.status.as_u16()))),
        ];
        if let Some(route) = &route {
            attributes.push(("http.route", Text(route.clone())));
        }
        if let Some(target) = self.ctx.target {
            attributes.push(("gateway.side", Text(target.as_str().to_owned())));
        }
        if let Some(upstream) = &self.ctx.upstream {
            attributes.push(("gateway.upstream", Text(upstream.to_string())));
        }
        if let Some(reason) = self.ctx.fallback {
            attributes.push(("gateway.fallback", Text(reason.as_str().to_owned())));
        }
        if let Some(code) = outcome.gateway_error {
            attributes.push(("gateway.error", Text(code.to_owned())));
        }
        tracer.record(FinishedSpan {
            trace_id: begun.context.trace_id,
            span_id: begun.context.span_id,
            parent: begun.parent,
            name: format!("{} {}", self.method, route.as_deref().unwrap_or("_default")),
            kind: Kind::Server,
            start_unix_nanos: begun.start_unix_nanos,
            end_unix_nanos: unix_nanos(),
            attributes,
            error: (outcome.status.is_server_error()).then(|| {
                outcome.gateway_error.map_or_else(|| format!("status {}", outcome.status.as_u16()), str::to_owned)
            }),
        });
    }

    fn access_log(&self, outcome: &Outcome) {
        crate::telemetry::access::AccessLine {
            request_id: self.ctx.request_id.to_str().unwrap_or(""),
            method: self.method.as_str(),
            path: self.ctx.path.as_str(),
            route: self.ctx.route.map(|id| &*self.snapshot.route(id).name),
            target: self.ctx.target.map(Target::as_str),
            upstream: self.ctx.upstream.as_deref(),
            status: outcome.status.as_u16(),
            duration: outcome.duration,
            error: outcome.gateway_error,
        }
        .write();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.completed {
            self.gateway_error = Some(codes::CLIENT_CLOSED);
            let status = StatusCode::from_u16(CLIENT_CLOSED_REQUEST).expect("499 is in range");
            self.complete(status);
        }
    }
}
