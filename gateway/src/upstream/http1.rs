//! The HTTP/1.1 transport: one keep-alive connection pool per upstream.
//!
//! The pool is a LIFO stack of idle HTTP/1.1 connections (`hyper::client::conn::http1`)
//! under an uncontended mutex, with no per-request hashing, URI rebuilding or connect
//! future. A connection goes back on the stack when its response body has been read to
//! the end; a connection whose body was abandoned is closed instead, because HTTP/1 cannot
//! reuse it. Stale idle connections are swept in the background. A request that hyper
//! hands back unsent (the pooled connection had been closed by the upstream meanwhile) is
//! retried on another connection, which is always safe because no byte of it reached the
//! upstream.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::tee::BodyTee;

use super::{
    SendFailure, UpstreamBody, UpstreamError, UpstreamSettings, connect_address, connect_upstream, exchange_error,
};

/// Smallest interval between two sweeps of idle connections.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Pooled HTTP/1.1 connections to one `host:port`.
pub(crate) struct Http1 {
    /// `host:port` to connect to.
    connect_to: String,
    connect_timeout: Duration,
    /// TLS for an `https://` upstream.
    tls: Option<crate::tls::UpstreamTls>,
    pool: Arc<Pool>,
}

impl Http1 {
    pub(crate) fn new(settings: &UpstreamSettings, authority: &http::uri::Authority) -> Self {
        let connect_to = connect_address(authority, settings.tls.is_some());
        let pool = Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            max_idle: settings.pool_max_idle,
            idle_timeout: settings.pool_idle_timeout,
            sweeper_started: std::sync::Once::new(),
        });
        Http1 { connect_to, connect_timeout: settings.connect_timeout, tls: settings.tls.clone(), pool }
    }

    pub(crate) async fn exchange(
        &self,
        name: &Arc<str>,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendFailure> {
        loop {
            let (mut sender, reused) = match self.pool.checkout().await {
                Some(sender) => (sender, true),
                None => match self.connect(name).await {
                    Ok(sender) => (sender, false),
                    Err(error) => return Err(SendFailure { error, unsent: Some(request) }),
                },
            };
            match sender.try_send_request(request).await {
                // A connection that switched protocols (a WebSocket) is never reused.
                Ok(response) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                    return Ok(response.map(PooledBody::unpooled));
                }
                Ok(response) => {
                    let pool = Arc::clone(&self.pool);
                    return Ok(response.map(|body| PooledBody {
                        inner: body,
                        lease: Some(Lease { sender, pool }),
                        tee: None,
                    }));
                }
                Err(mut failed) => match failed.take_message() {
                    // Never sent: the pooled connection closed while parked. Try the next.
                    Some(unsent) if reused => request = unsent,
                    unsent => return Err(SendFailure { error: exchange_error(name, failed.into_error()), unsent }),
                },
            }
        }
    }

    async fn connect(&self, name: &Arc<str>) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        self.pool.start_sweeper();
        let stream = connect_upstream(name, &self.connect_to, self.connect_timeout, self.tls.as_ref()).await?;
        let connect_error = |reason: String| UpstreamError::Connect { upstream: name.clone(), reason };
        let (sender, connection) = http1::Builder::new()
            .writev(false) // one buffer per request, like the server side (see server/mod.rs)
            .max_buf_size(super::UPSTREAM_READ_BUFFER_BYTES)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let name = name.clone();
        tokio::spawn(async move {
            // with_upgrades: a 101 hands the connection to the WebSocket relay.
            if let Err(e) = connection.with_upgrades().await {
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
    /// A copy for mirrors (shadow traffic), kept as the body streams.
    tee: Option<Box<BodyTee>>,
}

struct Lease {
    sender: SendRequest<UpstreamBody>,
    pool: Arc<Pool>,
}

impl PooledBody {
    /// A body whose connection is not the pool's to take back (HTTP/2, a switched
    /// protocol).
    pub(crate) fn unpooled(inner: Incoming) -> Self {
        PooledBody { inner, lease: None, tee: None }
    }

    /// Keeps a copy of the body as it streams, for the mirrors subscribed to `tee`.
    pub(crate) fn tee(&mut self, tee: BodyTee) {
        self.tee = Some(Box::new(tee));
    }

    fn observe(&mut self, frame: &Option<Result<Frame<Bytes>, hyper::Error>>) {
        let Some(tee) = &mut self.tee else { return };
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    tee.data(data);
                }
                if self.inner.is_end_stream()
                    && let Some(tee) = self.tee.take()
                {
                    tee.end();
                }
            }
            None => {
                if let Some(tee) = self.tee.take() {
                    tee.end();
                }
            }
            // Broken off: the mirrors learn it when the copy is dropped.
            Some(Err(_)) => self.tee = None,
        }
    }

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
        self.observe(&frame);
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
        if self.inner.is_end_stream()
            && let Some(tee) = self.tee.take()
        {
            tee.end();
        }
        self.release_if_finished();
    }
}
