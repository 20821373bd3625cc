//! A client stream that closes itself after a period with no bytes moving either way.
//! It wraps any `AsyncRead + AsyncWrite` stream (TCP today, TLS over TCP later).
//!
//! hyper bounds the time to read a request head, but not a client that trickles a body,
//! stops reading its response, or holds an HTTP/2 connection open doing nothing. This
//! wrapper covers all three. Progress only bumps a counter, so the hot path reads no clock
//! and never touches the timer wheel: the timer checks the counter every quarter of the
//! limit and closes the connection after four quiet checks in a row, that is after an
//! idle time between the limit and 1.25 times the limit.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Checks per idle limit; the connection closes after this many quiet checks in a row.
const CHECKS_PER_LIMIT: u32 = 4;

/// Completed reads and writes of one connection. The stream is its only writer, so a
/// bump is a plain load and store; the drain reads it from the connection's task to tell
/// an idle connection from one still moving a response.
#[derive(Debug, Default)]
pub(crate) struct Progress(AtomicU64);

impl Progress {
    fn bump(&self) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// The count so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A stream with an inactivity limit.
pub(crate) struct IdleTimeoutStream<S> {
    inner: S,
    check_every: Duration,
    /// Bumped on every completed read or write.
    progress: Arc<Progress>,
    /// `progress` at the last check.
    progress_at_check: u64,
    quiet_checks: u32,
    timer: Pin<Box<Sleep>>,
}

impl<S> IdleTimeoutStream<S> {
    /// Wraps `inner`; the connection fails with `TimedOut` once nothing has moved for
    /// between `limit` and 1.25 × `limit`; it counts its reads and writes in `progress`.
    pub(crate) fn new(inner: S, limit: Duration, progress: Arc<Progress>) -> Self {
        let check_every = limit / CHECKS_PER_LIMIT;
        IdleTimeoutStream {
            inner,
            check_every,
            progress,
            progress_at_check: 0,
            quiet_checks: 0,
            timer: Box::pin(tokio::time::sleep_until(Instant::now() + check_every)),
        }
    }

    fn progressed(&mut self) {
        self.progress.bump();
    }

    /// Ready with an error once enough consecutive checks saw no progress.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let progress = self.progress.get();
            if progress == self.progress_at_check {
                self.quiet_checks += 1;
                if self.quiet_checks >= CHECKS_PER_LIMIT {
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "client connection idle timeout"));
                }
            } else {
                self.progress_at_check = progress;
                self.quiet_checks = 0;
            }
            // From now, not from the missed deadline: after a stall of the runtime, checks
            // must not pile up and close a connection that had no chance to move.
            let next = Instant::now() + self.check_every;
            self.timer.as_mut().reset(next);
        }
    }

    /// Counts a completed operation as progress; while one is pending, watches the timer.
    fn track<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeoutStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.track(cx, poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeoutStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.track(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair(limit: Duration) -> (IdleTimeoutStream<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (IdleTimeoutStream::new(server, limit, Arc::default()), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_cut_off_between_the_limit_and_a_quarter_more() {
        let (mut server, _client) = pair(Duration::from_secs(60)).await;
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let error = server.read(&mut buf).await.expect_err("times out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let idle = started.elapsed();
        assert!(idle >= Duration::from_secs(60) && idle <= Duration::from_secs(75), "closed after {idle:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_keeps_the_connection_open() {
        let (mut server, mut client) = pair(Duration::from_secs(4)).await;
        let mut buf = [0u8; 1];
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            client.write_all(b"x").await.expect("write");
            server.read_exact(&mut buf).await.expect("a byte every 3 s keeps a 4 s limit from firing");
        }
    }
}
