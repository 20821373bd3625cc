//! Listeners and lifecycle: accept, serve HTTP/1.1 and h2c, drain on shutdown.
//!
//! [`start`] binds the listeners (or takes inherited ones, [`listeners`]) and returns at
//! once with their addresses (port 0 works, which is how the tests run many gateways side
//! by side). [`RunningGateway::shutdown`] stops accepting and drains: in-flight requests
//! get `server.shutdown_grace_ms` to finish, and no connection is cut between requests
//! (see [`serve_connection`]).

mod admin;
mod idle;
pub mod listeners;
mod ramp;
mod reload;
pub(crate) mod state;
pub mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::watch::Trigger;
use crate::proxy::{self, Peer};
use crate::snapshot::{ServerSettings, Snapshot};
use idle::{IdleTimeoutStream, Progress};
use listeners::{InheritedListeners, Role};
pub use state::Gateway;
use state::stopped;

/// Pause after a failed accept (for example EMFILE), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Most concurrent HTTP/2 streams per client connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// How often histogram samples are folded in, so memory stays flat between scrapes.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// While draining, an HTTP/1 connection is closed once nothing has moved on it and no
/// request has been in flight for this long (at most a quarter of the grace period): a
/// client that keeps sending gets `Connection: close` on its next response instead.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// How often a draining connection looks at its activity.
const DRAIN_CHECK: Duration = Duration::from_millis(100);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A started gateway.
pub struct RunningGateway {
    /// Where the plain-HTTP data plane listens, when `listen` is set.
    pub listen_addr: Option<SocketAddr>,
    /// Where the admin endpoints listen.
    pub admin_addr: SocketAddr,
    /// Where HTTPS is served, when `tls_listen` is set.
    pub tls_addr: Option<SocketAddr>,
    /// Shared state, for in-process inspection.
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    reload_triggers: mpsc::Sender<Trigger>,
    /// Duplicates of the listening sockets, for a binary upgrade; dropped at shutdown so
    /// that a gateway that stops for good stops accepting.
    handover: Mutex<Vec<(Role, OwnedFd)>>,
    /// Watches the config directory while the gateway runs.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl RunningGateway {
    /// Asks for a reload, as SIGHUP does: the file is re-read after the debounce period.
    pub fn trigger_reload(&self) {
        // Full means a reload is already pending, which reads the latest file anyway.
        let _ = self.reload_triggers.try_send(Trigger::Signal);
    }

    /// Stops accepting connections and starts draining in-flight requests.
    pub fn shutdown(&self) {
        self.handover.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.gateway.start_draining();
        self.shutdown.send_replace(true);
    }

    /// New duplicates of the listening sockets, by role, for a binary upgrade; empty
    /// once shutdown has begun.
    pub fn handover_sockets(&self) -> std::io::Result<Vec<(Role, OwnedFd)>> {
        let sockets = self.handover.lock().unwrap_or_else(PoisonError::into_inner);
        sockets.iter().map(|(role, fd)| Ok((*role, fd.try_clone()?))).collect()
    }

    /// Waits up to `limit` for the gateway to be ready (`/ready` answers 200).
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.gateway.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Waits until both listeners have stopped and in-flight requests have finished (or
    /// the grace period ran out).
    pub async fn wait(self) {
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a listener task failed");
            }
        }
    }
}

/// Binds the listeners and starts serving `snapshot`.
pub async fn start(snapshot: Snapshot) -> Result<RunningGateway, StartError> {
    start_with(snapshot, &mut InheritedListeners::none()).await
}

/// Starts serving `snapshot` on the listeners `inherited` holds for its addresses (a
/// binary upgrade's or systemd's), binding the others.
pub async fn start_with(snapshot: Snapshot, inherited: &mut InheritedListeners) -> Result<RunningGateway, StartError> {
    let settings = snapshot.server.clone();
    let listener = match settings.listen {
        Some(addr) => Some(listen(addr, Role::Listen, inherited).await?),
        None => None,
    };
    let admin_listener = listen(settings.admin_listen, Role::AdminListen, inherited).await?;
    let tls_listener = match settings.tls_listen {
        Some(addr) => Some(listen(addr, Role::TlsListen, inherited).await?),
        None => None,
    };
    inherited.close_unclaimed();
    let address = |l: &TcpListener| l.local_addr().ok();
    let (listen_addr, tls_addr) = (listener.as_ref().and_then(address), tls_listener.as_ref().and_then(address));
    let admin_addr = address(&admin_listener).unwrap_or(settings.admin_listen);
    let mut handover = Vec::new();
    for (role, socket) in [
        (Role::Listen, listener.as_ref()),
        (Role::AdminListen, Some(&admin_listener)),
        (Role::TlsListen, tls_listener.as_ref()),
    ] {
        if let Some(fd) = socket.and_then(|l| l.as_fd().try_clone_to_owned().ok()) {
            handover.push((role, fd));
        }
    }

    let gateway = Arc::new(Gateway::new(snapshot));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (reload_triggers, watcher) = reload::start(gateway.clone(), shutdown_rx.clone());
    let mut tasks = vec![
        tokio::spawn(admin::serve(admin_listener, gateway.clone(), shutdown_rx.clone())),
        tokio::spawn(metrics_upkeep(gateway.metrics.clone(), shutdown_rx.clone())),
        tokio::spawn(ramp::drive(gateway.clone(), shutdown_rx.clone())),
    ];
    if let Some(listener) = listener {
        tasks.push(tokio::spawn(serve_proxy(listener, None, gateway.clone(), shutdown_rx.clone())));
    }
    if let Some(tls_listener) = tls_listener {
        // Each handshake picks from the certificates of the snapshot serving then.
        let current = gateway.clone();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(crate::tls::server_config(move || current.snapshot().tls.clone()));
        tasks.push(tokio::spawn(serve_proxy(tls_listener, Some(acceptor), gateway.clone(), shutdown_rx)));
    }
    gateway.set_ready();
    Ok(RunningGateway {
        listen_addr,
        admin_addr,
        tls_addr,
        gateway,
        shutdown,
        tasks,
        reload_triggers,
        handover: Mutex::new(handover),
        _watcher: watcher,
    })
}

/// The listener for `role` at `addr`: the inherited one, else a new one bound here.
async fn listen(addr: SocketAddr, role: Role, inherited: &mut InheritedListeners) -> Result<TcpListener, StartError> {
    let what = role.key();
    let failed = |source| StartError::Bind { addr, what, source };
    match inherited.take(role, addr) {
        Some(listener) => {
            listener.set_nonblocking(true).map_err(failed)?;
            let listener = TcpListener::from_std(listener).map_err(failed)?;
            tracing::info!(listener = what, addr = %listener.local_addr().map_err(failed)?, from = %inherited.source(), "listening on an inherited socket");
            Ok(listener)
        }
        None => TcpListener::bind(addr).await.map_err(failed),
    }
}

fn connection_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        // Copy head and body into one buffer and write() it: for API-sized responses that
        // beats an iovec per part (about 2% more requests/s in bench/compare.py).
        .writev(false)
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes);
    // hyper keeps up to 100 header slots on the stack; only a different limit costs a heap
    // allocation per request.
    if settings.max_headers != 100 {
        http1.max_headers(settings.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    builder
}

/// Serves one data-plane listener: plain HTTP, or HTTPS when `tls` is given (the handshake
/// runs in the connection's own task, within `header_read_timeout_ms`).
async fn serve_proxy(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(watch::Sender::new(0usize));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                // Limits and timeouts come from the config serving now, so a reload applies
                // them to every connection accepted after it.
                let settings = gateway.snapshot().server.clone();
                let progress = Arc::new(Progress::default());
                let stream = IdleTimeoutStream::new(stream, settings.idle_timeout, progress.clone());
                let open = OpenConnection::new(&connections, shutdown.clone(), progress);
                match &tls {
                    None => serve_connection(stream, Peer::new(peer.ip()), &settings, &gateway, open),
                    Some(acceptor) => {
                        let accept = acceptor.accept(stream);
                        let gateway = gateway.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(settings.header_read_timeout, accept).await {
                                Ok(Ok(stream)) => {
                                    serve_connection(stream, Peer::tls(peer.ip()), &settings, &gateway, open);
                                }
                                Ok(Err(e)) => handshake_failed(crate::tls::handshake_failure_reason(&e)),
                                Err(_) => handshake_failed("timeout"),
                            }
                        });
                    }
                }
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    // The grace period of the config serving now: a reload may have changed it.
    let grace = gateway.snapshot().server.shutdown_grace;
    let in_flight = *connections.borrow();
    tracing::info!(connections = in_flight, grace_ms = grace.as_millis() as u64, "stopped accepting; draining");
    let deadline = tokio::time::Instant::now() + grace;
    let mut open = connections.subscribe();
    if tokio::time::timeout_at(deadline, open.wait_for(|n| *n == 0)).await.is_err() {
        tracing::warn!(
            connections = *connections.borrow(),
            "grace period ran out with requests still in flight; closing them"
        );
    }
    // WebSockets left their HTTP connections when they upgraded: wait for them too.
    let sockets = proxy::upgrade::open_relays();
    if sockets > 0 {
        tracing::info!(websockets = sockets, "waiting for open websockets to close");
        if tokio::time::timeout_at(deadline, proxy::upgrade::drained()).await.is_err() {
            tracing::warn!(websockets = proxy::upgrade::open_relays(), "grace period ran out; closing websockets");
        }
    }
}

/// One accepted connection as the drain sees it: counted while open, told when the
/// drain starts, and how busy it is.
struct OpenConnection {
    count: Arc<watch::Sender<usize>>,
    shutdown: watch::Receiver<bool>,
    progress: Arc<Progress>,
}

impl OpenConnection {
    fn new(count: &Arc<watch::Sender<usize>>, shutdown: watch::Receiver<bool>, progress: Arc<Progress>) -> Self {
        count.send_modify(|n| *n += 1);
        OpenConnection { count: count.clone(), shutdown, progress }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Counts a TLS handshake that failed, by a reason label only (never key material).
fn handshake_failed(reason: &'static str) {
    tracing::debug!(reason, "TLS handshake failed");
    metrics::counter!(gateway_plugin_metrics::names::TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => reason).increment(1);
}

/// One client connection as its requests see it.
struct ClientConnection {
    peer: Peer,
    /// Requests started so far; until the first, the header-read timer counted from
    /// accept may close the connection.
    requests: AtomicU64,
    /// Requests whose response head is not yet made.
    in_flight: AtomicU32,
    /// The connection speaks HTTP/2 (a drain sends it a GOAWAY at once).
    http2: AtomicBool,
    /// The gateway is draining: HTTP/1 responses carry `Connection: close`.
    draining: Arc<AtomicBool>,
}

/// Counts a request as in flight until its response head is made (or it is dropped).
struct InFlightRequest(Arc<ClientConnection>);

impl InFlightRequest {
    fn start(client: Arc<ClientConnection>, version: http::Version) -> Self {
        // One writer per field and relaxed order: these only steer the drain.
        client.requests.store(client.requests.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        client.in_flight.fetch_add(1, Ordering::Relaxed);
        if version == http::Version::HTTP_2 && !client.http2.load(Ordering::Relaxed) {
            client.http2.store(true, Ordering::Relaxed);
        }
        InFlightRequest(client)
    }
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves HTTP/1.1 and HTTP/2 (and WebSocket upgrades) on one accepted connection.
///
/// A connection must deliver its first request head within `header_read_timeout_ms` of
/// being served (for TLS, of the handshake's end, which has its own bound), or it is
/// closed: a client that connects and sends nothing holds no socket for long. hyper's own
/// header timer covers each later head of a keep-alive connection.
///
/// Draining loses no request. An HTTP/2 connection gets a GOAWAY at once (hyper sends
/// two: "no new streams soon", then the last stream it took) and closes when its streams
/// are done. An HTTP/1 connection is never cut between requests: each response made
/// while draining carries `Connection: close`, so a client that sends again learns it
/// in the response; a connection with nothing in flight and no bytes moving for
/// [`DRAIN_QUIET`] is closed, after the client had the chance to finish.
fn serve_connection<S>(stream: S, peer: Peer, settings: &ServerSettings, gateway: &Arc<Gateway>, open: OpenConnection)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = connection_builder(settings);
    let address = peer.ip;
    let client = Arc::new(ClientConnection {
        peer,
        requests: AtomicU64::new(0),
        in_flight: AtomicU32::new(0),
        http2: AtomicBool::new(false),
        draining: gateway.draining_flag(),
    });
    let first_head_deadline = settings.header_read_timeout;
    let quiet = DRAIN_QUIET.min(settings.shutdown_grace / 4);
    let gateway = gateway.clone();
    let watched = client.clone();
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let snapshot = gateway.snapshot();
        let version = request.version();
        let in_flight = InFlightRequest::start(client.clone(), version);
        async move {
            let mut response = proxy::handle(snapshot, request.map(Either::Left), &in_flight.0.peer).await;
            if version < http::Version::HTTP_2
                && in_flight.0.draining.load(Ordering::Relaxed)
                && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
    tokio::spawn(async move {
        let mut open = open;
        let OpenConnection { shutdown, progress, .. } = &mut open;
        tokio::pin!(connection);
        let first_head = tokio::time::sleep(first_head_deadline);
        tokio::pin!(first_head);
        let mut first_head_checked = false;
        let mut draining = false;
        let mut closing = false;
        let mut check = tokio::time::interval(DRAIN_CHECK);
        let (mut seen, mut quiet_since) = (progress.get(), tokio::time::Instant::now());
        let result = loop {
            tokio::select! {
                result = &mut connection => break result,
                () = &mut first_head, if !first_head_checked => {
                    first_head_checked = true;
                    if watched.requests.load(Ordering::Relaxed) == 0 {
                        tracing::debug!(peer = %address, "no request head within server.header_read_timeout_ms; closing");
                        return;
                    }
                }
                _ = stopped(shutdown), if !draining => {
                    draining = true;
                    quiet_since = tokio::time::Instant::now();
                }
                _ = check.tick(), if draining && !closing => {
                    let now = tokio::time::Instant::now();
                    let moved = progress.get();
                    if moved != seen || watched.in_flight.load(Ordering::Relaxed) > 0 {
                        (seen, quiet_since) = (moved, now);
                    }
                    if watched.http2.load(Ordering::Relaxed) || now.duration_since(quiet_since) >= quiet {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %address, error = %e, "client connection ended with an error");
        }
        drop(open);
    });
}

async fn metrics_upkeep(metrics: PrometheusHandle, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => metrics.run_upkeep(),
            _ = stopped(&mut shutdown) => return,
        }
    }
}
