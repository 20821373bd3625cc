//! Upstream handles: one per `[upstreams.<name>]`, each with its transport and breaker.
//!
//! - [`http1`]: the keep-alive HTTP/1.1 connection pool the gateway uses in production.
//! - `memory` (tests only): an in-process transport (a function from request to response) that the
//!   phase tests use, so the whole pipeline runs without sockets.
//! - [`call`]: the breaker-guarded call every caller goes through (the data plane,
//!   aggregates, side requests of policies), which reports each outcome to the breaker.
//!
//! Errors say what failed: connecting (502), no response head within `timeout_ms` (504),
//! or the exchange itself (502). A request that never left the gateway comes back in the
//! failure, so a fallback can send it elsewhere.

pub(crate) mod call;
pub mod client_body;
mod health;
pub(crate) mod http1;
pub(crate) mod http2;
#[cfg(test)]
pub(crate) mod memory;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_plugin_breaker::{Breaker, BreakerSettings};
use gateway_plugin_transform::HostHeader;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::{Either, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;

pub use client_body::{ClientFault, GuardedBody};
use gateway_plugin_endpoints::{ActiveCheck, Balance, Ejection, EndpointHealth, EndpointState, may_eject_one_more};
use gateway_plugin_metrics::EndpointCounters;
pub use http1::PooledBody;
use std::sync::atomic::{AtomicUsize, Ordering};

use client_body::client_fault;

/// Most bytes read ahead from one upstream connection (HTTP/1.1 read buffer; the response
/// head must fit too). With the client's write buffer (`max_header_bytes`) this bounds
/// what a slow reader makes the gateway hold per connection: the rest waits in the
/// upstream's socket, which is backpressure.
pub(crate) const UPSTREAM_READ_BUFFER_BYTES: usize = 64 * 1024;
/// HTTP/2 flow-control window per upstream stream: what one slow reader can leave
/// buffered in the gateway on a multiplexed connection.
pub(crate) const UPSTREAM_H2_STREAM_WINDOW: u32 = 256 * 1024;
/// HTTP/2 window of a whole upstream connection, shared by its streams.
pub(crate) const UPSTREAM_H2_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// The client's request body: hyper's, or one built in memory (phase tests, replays).
pub type ClientBody = Either<Incoming, Full<Bytes>>;

/// Body of a request sent upstream: the client's body streamed under the size limit and
/// the read timer, or a body the gateway built itself (a buffered replay copy, an
/// aggregate part's GET).
pub type UpstreamBody = Either<GuardedBody, Full<Bytes>>;

/// Body of every response the gateway sends: an upstream's, streamed, or its own.
pub type ResponseBody = Either<PooledBody, Full<Bytes>>;

/// An error from below the HTTP layer, boxed: hyper's, or an in-memory transport's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Settings of one upstream, as validated from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamSettings {
    /// Name from `[upstreams.<name>]`.
    pub name: String,
    /// The configured url, for display.
    pub url: String,
    /// Response-head timeout, counted from the start of the exchange.
    pub timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled connection lifetime.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept.
    pub pool_max_idle: usize,
    /// The circuit breaker's thresholds, when the upstream has one.
    pub breaker: Option<BreakerSettings>,
    /// How requests spread over several endpoints.
    pub balance: Balance,
    /// Active health checks of each endpoint, when configured.
    pub health_check: Option<ActiveCheck>,
    /// Passive ejection of a failing endpoint, when configured.
    pub eject: Option<Ejection>,
    /// Response statuses that count as failures (inclusive ranges).
    pub failure_statuses: Vec<(u16, u16)>,
    /// The `Host` requests to this upstream carry.
    pub host_header: HostHeader,
    /// How requests travel to it.
    pub protocol: Protocol,
    /// For an `https://` url: trust, name and client certificate.
    pub tls: Option<crate::tls::UpstreamTls>,
}

/// `protocol` on an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// Pooled HTTP/1.1 keep-alive connections (the default).
    #[default]
    Http1,
    /// One multiplexed HTTP/2 connection (prior knowledge over `http://`).
    Http2,
}

impl Protocol {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

/// How an upstream's requests travel.
pub(crate) enum Transport {
    /// Pooled HTTP/1.1 over TCP.
    Http1(http1::Http1),
    /// One multiplexed HTTP/2 connection over TCP.
    Http2(http2::Http2),
    /// An in-process service, for tests of the phases (not in the product's build).
    #[cfg(test)]
    Memory(memory::MemoryService),
}

/// One instance of an upstream: its address, its own pool (or HTTP/2 connection) and its
/// load.
pub struct Endpoint {
    /// `host:port`, as a label and a `Host` value.
    pub address: HeaderValue,
    /// Outstanding requests (the balancer's load) and health.
    pub health: EndpointHealth,
    /// Its `gateway_upstream_requests_total` series.
    counters: EndpointCounters,
    transport: Transport,
}

impl Endpoint {
    /// One request over this endpoint's transport, up to the response head (no timeout:
    /// the caller sets its own).
    async fn exchange(
        &self,
        name: &Arc<str>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, SendFailure> {
        match &self.transport {
            Transport::Http1(http1) => http1.exchange(name, request).await.map(|r| r.map(Either::Left)),
            Transport::Http2(http2) => http2.exchange(name, request).await.map(|r| r.map(Either::Left)),
            #[cfg(test)]
            Transport::Memory(service) => service.exchange(name, request).await.map(|r| r.map(Either::Right)),
        }
    }
}

/// A named upstream with its endpoints.
pub struct Upstream {
    /// Name from `[upstreams.<name>]`, shared with logs and metric labels.
    pub name: Arc<str>,
    /// What it was built from.
    pub settings: UpstreamSettings,
    /// The circuit breaker, when configured; kept across reloads while the url is the same.
    pub breaker: Option<Arc<Breaker>>,
    /// Never empty: the config has a `url` or at least one of `endpoints`.
    endpoints: Vec<Endpoint>,
    /// Round robin's next turn.
    turn: AtomicUsize,
    /// The health checker has been started (once per upstream handle).
    checking: std::sync::Once,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("url", &self.settings.url).finish()
    }
}

/// A failed send, with the request when it never left the gateway.
#[derive(Debug)]
pub struct SendFailure {
    /// What went wrong.
    pub error: UpstreamError,
    /// The request, when no byte of it was sent: replaying it elsewhere is always safe.
    pub unsent: Option<Request<UpstreamBody>>,
}

/// Why an upstream exchange failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No response head within the upstream's `timeout_ms`.
    #[error("upstream {upstream} sent no response within {timeout:?}")]
    Timeout {
        /// Upstream name.
        upstream: Arc<str>,
        /// The limit that ran out.
        timeout: Duration,
    },
    /// The TCP connection could not be opened (refused, unreachable, connect timeout).
    #[error("cannot connect to upstream {upstream}: {reason}")]
    Connect {
        /// Upstream name.
        upstream: Arc<str>,
        /// What went wrong.
        reason: String,
    },
    /// The TLS handshake failed: the certificate did not verify, or the peer refused ours.
    #[error("TLS handshake with upstream {upstream} failed: {reason}")]
    Tls {
        /// Upstream name.
        upstream: Arc<str>,
        /// What went wrong.
        reason: String,
    },
    /// Every endpoint failed its health checks or is ejected; nothing was sent.
    #[error("upstream {upstream} has no healthy endpoint")]
    NoHealthyEndpoint {
        /// Upstream name.
        upstream: Arc<str>,
    },
    /// The client's body failed while it was being forwarded: too large, stalled or
    /// malformed. The client's fault: never counted against the upstream.
    #[error("the client's request body failed: {0:?}")]
    Client(ClientFault),
    /// The connection broke or the upstream sent something that is not HTTP.
    #[error("upstream {upstream} failed: {source}")]
    Exchange {
        /// Upstream name.
        upstream: Arc<str>,
        /// What broke.
        source: BoxError,
    },
}

impl Upstream {
    /// Builds the upstream with one (empty) pool per endpoint. `authorities` come from the
    /// validated url or endpoints (at least one); `breaker` is the one to keep from the
    /// previous config, if any.
    pub fn new(
        settings: UpstreamSettings,
        authorities: &[http::uri::Authority],
        breaker: Option<Arc<Breaker>>,
    ) -> Self {
        assert!(!authorities.is_empty(), "config validation guarantees an endpoint");
        let endpoints = authorities
            .iter()
            .map(|authority| Endpoint {
                address: HeaderValue::from_str(authority.as_str()).expect("a url authority is a valid header value"),
                health: EndpointHealth::new(),
                counters: EndpointCounters::default(),
                transport: match settings.protocol {
                    Protocol::Http1 => Transport::Http1(http1::Http1::new(&settings, authority)),
                    Protocol::Http2 => Transport::Http2(http2::Http2::new(&settings, authority)),
                },
            })
            .collect();
        Upstream {
            name: Arc::from(settings.name.as_str()),
            settings,
            breaker,
            endpoints,
            turn: AtomicUsize::new(0),
            checking: std::sync::Once::new(),
        }
    }

    /// The same upstream answered in process by `service` instead of over the network.
    #[cfg(test)]
    pub(crate) fn with_memory_transport(&self, service: memory::MemoryService) -> Self {
        let endpoint = Endpoint {
            address: self.endpoints[0].address.clone(),
            health: EndpointHealth::new(),
            counters: EndpointCounters::default(),
            transport: Transport::Memory(service),
        };
        Upstream {
            name: self.name.clone(),
            settings: self.settings.clone(),
            breaker: self.breaker.clone(),
            endpoints: vec![endpoint],
            turn: AtomicUsize::new(0),
            checking: std::sync::Once::new(),
        }
    }

    /// The endpoints, in config order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// True when endpoints can be out (health checks or ejection are configured).
    fn tracks_health(&self) -> bool {
        self.settings.health_check.is_some() || self.settings.eject.is_some()
    }

    /// The endpoint for the next request: the only one, or the balancer's pick among the
    /// available; `None` when every endpoint is out.
    fn pick_endpoint(&self, now: Duration) -> Option<&Endpoint> {
        let endpoints = &self.endpoints;
        if let [only] = endpoints.as_slice() {
            return (!self.tracks_health() || only.health.is_available(now)).then_some(only);
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        gateway_plugin_endpoints::pick(
            self.settings.balance,
            endpoints.len(),
            |i| endpoints[i].health.is_available(now),
            |i| endpoints[i].health.outstanding(),
            random_u64(),
            turn,
        )
        .map(|i| &endpoints[i])
    }

    /// Starts the active health checks of this upstream's endpoints, once per handle, if
    /// it has any. They run off the data plane, jittered, and stop when the handle is
    /// dropped (a reload that replaced it).
    pub fn start_health_checks(self: &Arc<Self>) {
        let Some(check) = self.settings.health_check.clone() else { return };
        // `gateway check` and pure tests compile snapshots without a runtime: no checks.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.checking.call_once(|| {
            let upstream = Arc::downgrade(self);
            tokio::spawn(health::run_checks(upstream, check));
        });
    }

    /// Publishes `gateway_upstream_endpoints{upstream,state}`.
    pub(crate) fn report_endpoint_states(&self, now: Duration) {
        for state in [EndpointState::Healthy, EndpointState::Unhealthy, EndpointState::Ejected] {
            let count = self.endpoints.iter().filter(|e| e.health.state(now) == state).count() as u32;
            metrics::gauge!(gateway_plugin_metrics::names::UPSTREAM_ENDPOINTS, "upstream" => self.name.to_string(), "state" => state.as_str())
                .set(f64::from(count));
        }
    }

    /// Whether a response status counts as a failure for the breaker and for fallback.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.settings.failure_statuses.iter().any(|(low, high)| (*low..=*high).contains(&status))
    }

    /// The (first) endpoint's host:port: the `Host` of `host_header = "upstream"`, and of
    /// requests that carry none (HTTP/1.0 clients, the gateway's own requests) in `client`
    /// mode. With several endpoints each request gets the one it is sent to.
    pub fn authority(&self) -> &HeaderValue {
        &self.endpoints[0].address
    }

    /// Sets the `Host` the endpoint at `address` is to receive, as `host_header` says.
    fn set_host(&self, address: &HeaderValue, headers: &mut HeaderMap) {
        match self.settings.host_header.replacement(address) {
            Some(host) => {
                headers.insert(header::HOST, host.clone());
            }
            None if !headers.contains_key(header::HOST) => {
                headers.insert(header::HOST, address.clone());
            }
            None => {}
        }
    }

    /// True when this upstream replaces the `Host` it is given.
    pub fn rewrites_host(&self) -> bool {
        self.settings.host_header != HostHeader::Client
    }

    /// Sends the request (origin-form URI, `Host` set) and waits for the response head,
    /// within the upstream's timeout. The response body streams afterwards. A request that
    /// never left the gateway (the connection could not be made, or hyper handed it back
    /// unsent) comes back in the failure, ready to be sent elsewhere.
    pub async fn send(&self, mut request: Request<UpstreamBody>) -> Result<Response<ResponseBody>, SendFailure> {
        // A body still on its way from the client: the head timeout starts once it is sent.
        let body_sent = match request.body_mut() {
            Either::Left(body) if !body.is_end_stream() => Some(body.sent_signal()),
            _ => None,
        };
        // Without checks or ejection every endpoint is always in: no clock read needed.
        let now = if self.tracks_health() { crate::clock::now() } else { Duration::ZERO };
        let Some(endpoint) = self.pick_endpoint(now) else {
            return Err(SendFailure {
                error: UpstreamError::NoHealthyEndpoint { upstream: self.name.clone() },
                unsent: Some(request),
            });
        };
        self.set_host(&endpoint.address, request.headers_mut());
        let several = self.endpoints.len() > 1;
        if several {
            endpoint.health.request_started();
        }
        let exchange = endpoint.exchange(&self.name, request);
        let in_time = match body_sent {
            None => tokio::time::timeout(self.settings.timeout, exchange).await.ok(),
            Some(sent) => {
                let head_deadline = async {
                    sent.wait().await;
                    tokio::time::sleep(self.settings.timeout).await;
                };
                tokio::select! {
                    result = exchange => Some(result),
                    () = head_deadline => None,
                }
            }
        };
        if several {
            endpoint.health.request_ended();
        }
        let result = match in_time {
            Some(result) => result,
            None => {
                let error = UpstreamError::Timeout { upstream: self.name.clone(), timeout: self.settings.timeout };
                Err(SendFailure { error, unsent: None })
            }
        };
        let status = result.as_ref().ok().map(|response| response.status().as_u16());
        endpoint
            .counters
            .record(status, || (self.name.to_string(), endpoint.address.to_str().unwrap_or_default().to_owned()));
        if let Some(eject) = &self.settings.eject {
            self.record_outcome(endpoint, &result, eject);
        }
        result
    }

    /// Passive health: a connect error, timeout, broken exchange or failure status counts
    /// against the endpoint; the client's own faults count for nothing.
    fn record_outcome(
        &self,
        endpoint: &Endpoint,
        result: &Result<Response<ResponseBody>, SendFailure>,
        eject: &Ejection,
    ) {
        let failed = match result {
            Ok(response) => self.is_failure_status(response.status().as_u16()),
            Err(SendFailure { error: UpstreamError::Client(_), .. }) => return,
            Err(_) => true,
        };
        let now = crate::clock::now();
        let may_eject = failed && may_eject_one_more(self.endpoints.iter().map(|e| &e.health), now);
        if endpoint.health.record_response(failed, eject, now, may_eject) {
            tracing::warn!(
                upstream = %self.name,
                endpoint = endpoint.address.to_str().unwrap_or_default(),
                seconds = eject.duration.as_secs(),
                "endpoint ejected after consecutive failures"
            );
            self.report_endpoint_states(now);
        }
    }
}

/// `host:port` to connect to for a url's authority (port 80, or 443 over TLS, when the
/// url names none).
pub(crate) fn connect_address(authority: &http::uri::Authority, tls: bool) -> String {
    match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:{}", authority.host(), if tls { 443 } else { 80 }),
    }
}

/// A connection to an upstream: TCP, or TLS over it.
pub(crate) enum UpstreamIo {
    /// `http://`.
    Plain(tokio::net::TcpStream),
    /// `https://`.
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for UpstreamIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpstreamIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connects to an upstream (and runs the TLS handshake for an `https://` one).
pub(crate) async fn connect_upstream(
    name: &Arc<str>,
    address: &str,
    timeout: Duration,
    tls: Option<&crate::tls::UpstreamTls>,
) -> Result<UpstreamIo, UpstreamError> {
    let stream = connect_tcp(name, address, timeout).await?;
    let Some(tls) = tls else { return Ok(UpstreamIo::Plain(stream)) };
    match tokio::time::timeout(timeout, tls.connect(stream)).await {
        Ok(Ok(stream)) => Ok(UpstreamIo::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(UpstreamError::Tls { upstream: name.clone(), reason: e.to_string() }),
        Err(_) => {
            Err(UpstreamError::Tls { upstream: name.clone(), reason: format!("no handshake within {timeout:?}") })
        }
    }
}

/// Opens the TCP connection to an upstream within `timeout`, with Nagle off.
pub(crate) async fn connect_tcp(
    name: &Arc<str>,
    address: &str,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, UpstreamError> {
    let connect_error = |reason: String| UpstreamError::Connect { upstream: name.clone(), reason };
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(connect_error(e.to_string())),
        Err(_) => return Err(connect_error(format!("timed out after {timeout:?}"))),
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(upstream = %name, error = %e, "cannot set TCP_NODELAY");
    }
    Ok(stream)
}

/// The error of an exchange hyper gave up on: the client's body over the limit, or the
/// exchange itself.
pub(crate) fn exchange_error(name: &Arc<str>, error: hyper::Error) -> UpstreamError {
    match client_fault(&error) {
        Some(fault) => UpstreamError::Client(fault),
        None => UpstreamError::Exchange { upstream: name.clone(), source: Box::new(error) },
    }
}

/// True when `content-type` is gRPC's: `application/grpc` (any case) alone or followed by
/// `+subtype` or `;parameters`.
pub(crate) fn is_grpc_content_type(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= GRPC.len()
            && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
            && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

/// A fresh random number for the balancer's two choices: xorshift64* per thread, seeded
/// from the process's random hasher keys. Not for secrets.
fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, RandomState};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}
