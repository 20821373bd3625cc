//! Upstream handles: one keep-alive connection pool per `[upstreams.<name>]`.
//!
//! The pool is a LIFO stack of idle HTTP/1.1 connections (`hyper::client::conn::http1`)
//! under an uncontended mutex, with no per-request hashing, URI rebuilding or connect
//! future. A connection goes back on the stack when its response body has been read to
//! the end; a connection whose body was abandoned is closed instead, because HTTP/1 cannot
//! reuse it. Stale idle connections are swept in the background.
//!
//! Errors say what failed: connecting (502), no response head within `timeout_ms` (504),
//! or the exchange itself (502). A request that hyper hands back unsent (the pooled
//! connection had been closed by the upstream meanwhile) is retried on another connection,
//! which is always safe because no byte of it reached the upstream.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use gateway_plugin_breaker::{Breaker, BreakerSettings};
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Body of a request sent upstream: the client's body streamed under the size limit, or
/// a body the gateway built itself.
pub type UpstreamBody = Either<Limited<Incoming>, Full<Bytes>>;

/// Smallest interval between two sweeps of idle connections.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Response statuses that count as failures (inclusive ranges).
    pub failure_statuses: Vec<(u16, u16)>,
}

/// A named upstream with its connection pool.
pub struct Upstream {
    /// Name from `[upstreams.<name>]`, shared with logs and metric labels.
    pub name: Arc<str>,
    /// What it was built from.
    pub settings: UpstreamSettings,
    /// The circuit breaker, when configured; kept across reloads while the url is the same.
    pub breaker: Option<Arc<Breaker>>,
    /// `host:port` to connect to.
    connect_to: String,
    /// `Host` for requests that arrive without one (HTTP/1.0, HTTP/2 without :authority).
    host: HeaderValue,
    pool: Arc<Pool>,
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
    /// The client's body grew past `server.max_body_bytes` while it was being forwarded.
    #[error("request body exceeds the limit")]
    BodyTooLarge,
    /// The connection broke or the upstream sent something that is not HTTP.
    #[error("upstream {upstream} failed: {source}")]
    Exchange {
        /// Upstream name.
        upstream: Arc<str>,
        /// hyper's error.
        source: hyper::Error,
    },
}

impl Upstream {
    /// Builds the upstream and its (empty) pool. `authority` comes from the validated url;
    /// `breaker` is the one to keep from the previous config, if any.
    pub fn new(settings: UpstreamSettings, authority: &http::uri::Authority, breaker: Option<Arc<Breaker>>) -> Self {
        let connect_to = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.host()),
        };
        let host = HeaderValue::from_str(authority.as_str()).expect("a url authority is a valid header value");
        let pool = Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            max_idle: settings.pool_max_idle,
            idle_timeout: settings.pool_idle_timeout,
            sweeper_started: std::sync::Once::new(),
        });
        Upstream { name: Arc::from(settings.name.as_str()), settings, breaker, connect_to, host, pool }
    }

    /// Whether a response status counts as a failure for the breaker and for fallback.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.settings.failure_statuses.iter().any(|(low, high)| (*low..=*high).contains(&status))
    }

    /// The `Host` header to send when the client gave none.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host
    }

    /// Sends the request (origin-form URI, `Host` set) and waits for the response head,
    /// within the upstream's timeout. The response body streams afterwards. A request that
    /// never left the gateway (the connection could not be made, or hyper handed it back
    /// unsent) comes back in the failure, ready to be sent elsewhere.
    pub async fn send(&self, request: Request<UpstreamBody>) -> Result<Response<PooledBody>, SendFailure> {
        match tokio::time::timeout(self.settings.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(SendFailure {
                error: UpstreamError::Timeout { upstream: self.name.clone(), timeout: self.settings.timeout },
                unsent: None,
            }),
        }
    }

    async fn exchange(&self, mut request: Request<UpstreamBody>) -> Result<Response<PooledBody>, SendFailure> {
        loop {
            let (mut sender, reused) = match self.pool.checkout().await {
                Some(sender) => (sender, true),
                None => match self.connect().await {
                    Ok(sender) => (sender, false),
                    Err(error) => return Err(SendFailure { error, unsent: Some(request) }),
                },
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let pool = Arc::clone(&self.pool);
                    return Ok(response.map(|body| PooledBody { inner: body, lease: Some(Lease { sender, pool }) }));
                }
                Err(mut failed) => match failed.take_message() {
                    // Never sent: the pooled connection closed while parked. Try the next.
                    Some(unsent) if reused => request = unsent,
                    unsent => return Err(SendFailure { error: self.exchange_error(failed.into_error()), unsent }),
                },
            }
        }
    }

    fn exchange_error(&self, error: hyper::Error) -> UpstreamError {
        if caused_by::<LengthLimitError>(&error) {
            UpstreamError::BodyTooLarge
        } else {
            UpstreamError::Exchange { upstream: self.name.clone(), source: error }
        }
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        self.pool.start_sweeper();
        let connect_error = |reason: String| UpstreamError::Connect { upstream: self.name.clone(), reason };
        let stream =
            match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(&self.connect_to)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(connect_error(e.to_string())),
                Err(_) => return Err(connect_error(format!("timed out after {:?}", self.settings.connect_timeout))),
            };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(upstream = %self.name, error = %e, "cannot set TCP_NODELAY");
        }
        let (sender, connection) = http1::Builder::new()
            .writev(false) // one buffer per request, like the server side (see server.rs)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %name, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

// === impl Pool ===

struct Pool {
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<IdleConnection>>,
    max_idle: usize,
    idle_timeout: Duration,
    sweeper_started: std::sync::Once,
}

struct IdleConnection {
    sender: SendRequest<UpstreamBody>,
    parked_at: Instant,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IdleConnection>> {
        // The critical sections only push or pop; a panic cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently parked connection that is still open and fresh.
    async fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        loop {
            let idle = self.lock().pop()?;
            if idle.sender.is_closed() || idle.parked_at.elapsed() >= self.idle_timeout {
                continue;
            }
            let mut sender = idle.sender;
            // A connection is parked as soon as its response body ended; hyper may not
            // have marked it ready yet, and will within a poll or two.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn park(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(IdleConnection { sender, parked_at: Instant::now() });
        }
    }

    /// Starts (once) a task that closes connections idle for longer than the timeout, so
    /// an upstream that goes quiet does not keep sockets open forever.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper_started.call_once(|| {
            let pool: Weak<Pool> = Arc::downgrade(self);
            let interval = (self.idle_timeout / 2).max(MIN_SWEEP_INTERVAL);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tick.tick().await;
                    let Some(pool) = pool.upgrade() else { return };
                    let timeout = pool.idle_timeout;
                    pool.lock().retain(|c| !c.sender.is_closed() && c.parked_at.elapsed() < timeout);
                }
            });
        });
    }
}

// === impl PooledBody ===

/// A response body from the pool: when it has been read to the end, its connection goes
/// back to the pool for the next request.
pub struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

struct Lease {
    sender: SendRequest<UpstreamBody>,
    pool: Arc<Pool>,
}

impl PooledBody {
    fn release_if_finished(&mut self) {
        if self.inner.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.pool.park(lease.sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            if let Some(lease) = self.lease.take() {
                lease.pool.park(lease.sender);
            }
        } else {
            self.release_if_finished();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (204, HEAD, Content-Length: 0) may never be polled.
        self.release_if_finished();
    }
}

/// True when `E` is anywhere in the error's source chain.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Logs a breaker state change and records it in `gateway_circuit_state` and
/// `gateway_circuit_transitions_total`.
pub fn report_transition(upstream: &str, transition: Option<gateway_plugin_breaker::Transition>) {
    use gateway_plugin_metrics::names;
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
