//! Listeners and lifecycle: accept, serve HTTP/1.1 and h2c, drain on shutdown.
//!
//! [`start`] binds both listeners and returns at once with their addresses (port 0 works,
//! which is how the tests run many gateways side by side). [`RunningGateway::shutdown`]
//! stops accepting; in-flight requests get `server.shutdown_grace_ms` to finish.

mod admin;
mod idle;
mod ramp;
mod reload;
pub(crate) mod state;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::watch::Trigger;
use crate::proxy::{self, Peer};
use crate::snapshot::{ServerSettings, Snapshot};
use idle::IdleTimeoutStream;
pub use state::Gateway;
use state::stopped;

/// Pause after a failed accept (for example EMFILE), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Most concurrent HTTP/2 streams per client connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// How often histogram samples are folded in, so memory stays flat between scrapes.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

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
        self.shutdown.send_replace(true);
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
    let settings = snapshot.server.clone();
    let (listener, listen_addr) = bind_optional(settings.listen, "server.listen").await?;
    let (admin_listener, admin_addr) = bind(settings.admin_listen, "server.admin_listen").await?;
    let (tls_listener, tls_addr) = bind_optional(settings.tls_listen, "server.tls_listen").await?;

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
        _watcher: watcher,
    })
}

/// Binds one listener and reads back its address (the port the OS chose for `:0`).
async fn bind(addr: SocketAddr, what: &'static str) -> Result<(TcpListener, SocketAddr), StartError> {
    let failed = |source| StartError::Bind { addr, what, source };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

async fn bind_optional(
    addr: Option<SocketAddr>,
    what: &'static str,
) -> Result<(Option<TcpListener>, Option<SocketAddr>), StartError> {
    match addr {
        Some(addr) => bind(addr, what).await.map(|(listener, bound)| (Some(listener), Some(bound))),
        None => Ok((None, None)),
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
    let graceful = GracefulShutdown::new();
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
                let stream = IdleTimeoutStream::new(stream, settings.idle_timeout);
                match &tls {
                    None => serve_connection(stream, Peer::new(peer.ip()), &settings, &gateway, graceful.watcher()),
                    Some(acceptor) => {
                        let accept = acceptor.accept(stream);
                        let (gateway, watcher) = (gateway.clone(), graceful.watcher());
                        tokio::spawn(async move {
                            match tokio::time::timeout(settings.header_read_timeout, accept).await {
                                Ok(Ok(stream)) => {
                                    serve_connection(stream, Peer::tls(peer.ip()), &settings, &gateway, watcher);
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
    let in_flight = graceful.count();
    tracing::info!(connections = in_flight, grace_ms = grace.as_millis() as u64, "stopped accepting; draining");
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period ran out with requests still in flight; closing them");
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

/// Counts a TLS handshake that failed, by a reason label only (never key material).
fn handshake_failed(reason: &'static str) {
    tracing::debug!(reason, "TLS handshake failed");
    metrics::counter!(gateway_plugin_metrics::names::TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => reason).increment(1);
}

/// One client connection as its requests see it.
struct ClientConnection {
    peer: Peer,
    /// Set by the first request head; until then the header-read timer counted from
    /// accept may close the connection.
    requested: AtomicBool,
}

/// Serves HTTP/1.1 and HTTP/2 (and WebSocket upgrades) on one accepted connection.
///
/// A connection must deliver its first request head within `header_read_timeout_ms` of
/// being served (for TLS, of the handshake's end, which has its own bound), or it is
/// closed: a client that connects and sends nothing holds no socket for long. hyper's own
/// header timer covers each later head of a keep-alive connection.
fn serve_connection<S>(stream: S, peer: Peer, settings: &ServerSettings, gateway: &Arc<Gateway>, graceful: Watcher)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = connection_builder(settings);
    let address = peer.ip;
    let client = Arc::new(ClientConnection { peer, requested: AtomicBool::new(false) });
    let first_head_deadline = settings.header_read_timeout;
    let gateway = gateway.clone();
    let watched = client.clone();
    let service = service_fn(move |request| {
        let snapshot = gateway.snapshot();
        let client = client.clone();
        if !client.requested.load(Ordering::Relaxed) {
            client.requested.store(true, Ordering::Relaxed);
        }
        async move { Ok::<_, Infallible>(proxy::handle(snapshot, request.map(Either::Left), &client.peer).await) }
    });
    let connection = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
    tokio::spawn(async move {
        tokio::pin!(connection);
        let result = tokio::select! {
            result = &mut connection => result,
            () = tokio::time::sleep(first_head_deadline) => {
                if !watched.requested.load(Ordering::Relaxed) {
                    tracing::debug!(peer = %address, "no request head within server.header_read_timeout_ms; closing");
                    return;
                }
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %address, error = %e, "client connection ended with an error");
        }
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
