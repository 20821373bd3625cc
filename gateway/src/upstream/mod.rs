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
pub mod discovery;
mod health;
pub(crate) mod http1;
pub(crate) mod http2;
pub mod jwks;
#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod tee;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use bytes::Bytes;
use gateway_plugin_breaker::{Breaker, BreakerSettings};
use gateway_plugin_transform::HostHeader;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::{Either, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;

pub use client_body::{ClientFault, GuardedBody};
pub use discovery::{DiscoveryStatus, DnsDiscovery};
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
    /// The configured url (or endpoints, or DNS name), for display.
    pub url: String,
    /// The fixed endpoints (`url` or `endpoints`); empty when `discovery` finds them.
    pub endpoints: Vec<http::uri::Authority>,
    /// DNS discovery of the endpoints, when configured.
    pub discovery: Option<DnsDiscovery>,
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

impl UpstreamSettings {
    /// True when an endpoint built for `self` reaches its address exactly as one built for
    /// `other` would (protocol, TLS, timeouts, pool): a reload may keep it.
    pub fn same_transport(&self, other: &UpstreamSettings) -> bool {
        self.protocol == other.protocol
            && self.tls == other.tls
            && self.connect_timeout == other.connect_timeout
            && self.pool_idle_timeout == other.pool_idle_timeout
            && self.pool_max_idle == other.pool_max_idle
    }
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
    /// `host:port` connected to, as a label (and the `Host` of a fixed endpoint).
    pub address: HeaderValue,
    /// The `Host` of `host_header = "upstream"`: the address of a fixed endpoint, the
    /// DNS name and port of a discovered one.
    host: HeaderValue,
    /// Outstanding requests (the balancer's load) and health.
    pub health: EndpointHealth,
    /// Its `gateway_upstream_requests_total` series.
    counters: EndpointCounters,
    transport: Transport,
}

impl Endpoint {
    /// An endpoint with an empty pool and a clean bill of health.
    fn new(settings: &UpstreamSettings, authority: &http::uri::Authority, host: HeaderValue) -> Self {
        Endpoint {
            address: HeaderValue::from_str(authority.as_str()).expect("a url authority is a valid header value"),
            host,
            health: EndpointHealth::new(),
            counters: EndpointCounters::default(),
            transport: match settings.protocol {
                Protocol::Http1 => Transport::Http1(http1::Http1::new(settings, authority)),
                Protocol::Http2 => Transport::Http2(http2::Http2::new(settings, authority)),
            },
        }
    }

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
    /// The endpoints now: the fixed list, or the last DNS answer (empty before the first).
    /// Swapped whole; a request holds the endpoint it was sent to.
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// The configured `host:port` (the first fixed endpoint, or the DNS name).
    host: HeaderValue,
    /// What DNS discovery found, when it runs.
    discovery_status: DiscoveryStatus,
    /// Round robin's next turn.
    turn: AtomicUsize,
    /// The health checker and the DNS discovery have been started (once per handle).
    background: std::sync::Once,
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
    /// Builds the upstream. Endpoints of `previous` (the handle a reload replaces) that are
    /// still configured, or still in its last DNS answer, are kept with their pool, health
    /// and load when they are reached the same way; the others start empty. `breaker` is
    /// the one to keep from the previous config, if any.
    pub fn new(settings: UpstreamSettings, breaker: Option<Arc<Breaker>>, previous: Option<&Upstream>) -> Self {
        let host = match (&settings.endpoints[..], &settings.discovery) {
            ([first, ..], _) => HeaderValue::from_str(first.as_str()),
            ([], Some(dns)) => HeaderValue::from_str(&dns.name_and_port()),
            ([], None) => unreachable!("config validation guarantees an endpoint or discovery"),
        }
        .expect("a validated authority is a valid header value");
        let kept = previous.filter(|before| before.settings.same_transport(&settings));
        let reuse = |address: &str, host: &HeaderValue| {
            let endpoint = kept?.endpoints.load().iter().find(|e| e.address == address && e.host == host)?.clone();
            endpoint.health.forget_unconfigured(settings.health_check.is_some(), settings.eject.is_some());
            Some(endpoint)
        };
        let endpoints: Vec<Arc<Endpoint>> = match &settings.discovery {
            None => settings
                .endpoints
                .iter()
                .map(|authority| {
                    let host =
                        HeaderValue::from_str(authority.as_str()).expect("a url authority is a valid header value");
                    reuse(authority.as_str(), &host)
                        .unwrap_or_else(|| Arc::new(Endpoint::new(&settings, authority, host)))
                })
                .collect(),
            // The last answer of the same name carries over until the first lookup.
            Some(dns) => previous
                .filter(|before| {
                    before.settings.discovery.as_ref().is_some_and(|d| d.name == dns.name && d.port == dns.port)
                })
                .map(|before| {
                    before
                        .endpoints
                        .load()
                        .iter()
                        .filter_map(|e| e.address.to_str().ok()?.parse::<http::uri::Authority>().ok())
                        .map(|authority| {
                            reuse(authority.as_str(), &host)
                                .unwrap_or_else(|| Arc::new(Endpoint::new(&settings, &authority, host.clone())))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        let discovery_status = DiscoveryStatus::default();
        if let Some(before) = previous.filter(|_| !endpoints.is_empty() && settings.discovery.is_some()) {
            discovery_status.carry_over(&before.discovery_status);
        }
        Upstream {
            name: Arc::from(settings.name.as_str()),
            settings,
            breaker,
            endpoints: ArcSwap::from_pointee(endpoints),
            host,
            discovery_status,
            turn: AtomicUsize::new(0),
            background: std::sync::Once::new(),
        }
    }

    /// The same upstream answered in process by `service` instead of over the network.
    #[cfg(test)]
    pub(crate) fn with_memory_transport(&self, service: memory::MemoryService) -> Self {
        let endpoint = Endpoint {
            address: self.host.clone(),
            host: self.host.clone(),
            health: EndpointHealth::new(),
            counters: EndpointCounters::default(),
            transport: Transport::Memory(service),
        };
        Upstream {
            name: self.name.clone(),
            settings: self.settings.clone(),
            breaker: self.breaker.clone(),
            endpoints: ArcSwap::from_pointee(vec![Arc::new(endpoint)]),
            host: self.host.clone(),
            discovery_status: DiscoveryStatus::default(),
            turn: AtomicUsize::new(0),
            background: std::sync::Once::new(),
        }
    }

    /// The endpoints now, in config order (or address order when discovered).
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// What DNS discovery found, when the upstream uses it.
    pub fn discovery_status(&self) -> Option<&DiscoveryStatus> {
        self.settings.discovery.as_ref().map(|_| &self.discovery_status)
    }

    /// Replaces the endpoints with `addresses` (a DNS answer) when they differ: endpoints
    /// still present are kept as they are, new ones start empty. True when it changed.
    fn replace_endpoints(&self, addresses: &[SocketAddr]) -> bool {
        let current = self.endpoints.load();
        let wanted: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        if current.iter().map(|e| e.address.as_bytes()).eq(wanted.iter().map(|a| a.as_bytes())) {
            return false;
        }
        let mut added = Vec::new();
        let next: Vec<Arc<Endpoint>> = wanted
            .iter()
            .map(|address| {
                current.iter().find(|e| e.address == address.as_str()).cloned().unwrap_or_else(|| {
                    let authority: http::uri::Authority = address.parse().expect("a socket address is an authority");
                    added.push(address.as_str());
                    Arc::new(Endpoint::new(&self.settings, &authority, self.host.clone()))
                })
            })
            .collect();
        let removed: Vec<&str> = current
            .iter()
            .filter(|e| !wanted.iter().any(|a| e.address == a.as_str()))
            .filter_map(|e| e.address.to_str().ok())
            .collect();
        tracing::info!(upstream = %self.name, ?added, ?removed, endpoints = next.len(), "DNS answer changed the endpoints");
        self.endpoints.store(Arc::new(next));
        true
    }

    /// True when endpoints can be out (health checks or ejection are configured).
    fn tracks_health(&self) -> bool {
        self.settings.health_check.is_some() || self.settings.eject.is_some()
    }

    /// The endpoint for the next request: the only one, or the balancer's pick among the
    /// available; `None` when every endpoint is out.
    fn pick_endpoint(&self, now: Duration) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        if let [only] = endpoints.as_slice() {
            return (!self.tracks_health() || only.health.is_available(now)).then(|| only.clone());
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
        .map(|i| endpoints[i].clone())
    }

    /// Starts the active health checks and the DNS discovery of this upstream, once per
    /// handle, where configured. They run off the data plane and stop when the handle is
    /// dropped (a reload that replaced it).
    pub fn start_background_tasks(self: &Arc<Self>) {
        // `gateway check` and pure tests compile snapshots without a runtime: no tasks.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.background.call_once(|| {
            if let Some(check) = self.settings.health_check.clone() {
                tokio::spawn(health::run_checks(Arc::downgrade(self), check));
            }
            if let Some(dns) = self.settings.discovery.clone() {
                tokio::spawn(discovery::run_discovery(Arc::downgrade(self), dns));
            }
        });
    }

    /// Publishes `gateway_upstream_endpoints{upstream,state}`.
    pub(crate) fn report_endpoint_states(&self, now: Duration) {
        let endpoints = self.endpoints.load();
        for state in [EndpointState::Healthy, EndpointState::Unhealthy, EndpointState::Ejected] {
            let count = endpoints.iter().filter(|e| e.health.state(now) == state).count() as u32;
            metrics::gauge!(gateway_plugin_metrics::names::UPSTREAM_ENDPOINTS, "upstream" => self.name.to_string(), "state" => state.as_str())
                .set(f64::from(count));
        }
    }

    /// Whether a response status counts as a failure for the breaker and for fallback.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.settings.failure_statuses.iter().any(|(low, high)| (*low..=*high).contains(&status))
    }

    /// The configured host:port (the first endpoint's, or the DNS name's): the `Host` of
    /// `host_header = "upstream"`, and of requests that carry none (HTTP/1.0 clients, the
    /// gateway's own requests) in `client` mode. With several fixed endpoints each request
    /// gets the one it is sent to.
    pub fn authority(&self) -> &HeaderValue {
        &self.host
    }

    /// Sets the `Host` the endpoint is to receive, as `host_header` says.
    fn set_host(&self, endpoint: &Endpoint, headers: &mut HeaderMap) {
        match self.settings.host_header.replacement(&endpoint.host) {
            Some(host) => {
                headers.insert(header::HOST, host.clone());
            }
            None if !headers.contains_key(header::HOST) => {
                headers.insert(header::HOST, endpoint.host.clone());
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
        self.set_host(&endpoint, request.headers_mut());
        let several = self.settings.discovery.is_some() || self.settings.endpoints.len() > 1;
        if several {
            endpoint.health.request_started();
        }
        // Boxed: the exchange future is large, and moving it into the timeout and up the
        // callers' states cost ~750 instructions per request in memcpy (callgrind); one
        // allocation costs far less.
        let exchange = Box::pin(endpoint.exchange(&self.name, request));
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
            self.record_outcome(&endpoint, &result, eject);
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
        let may_eject = failed && may_eject_one_more(self.endpoints.load().iter().map(|e| &e.health), now);
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
