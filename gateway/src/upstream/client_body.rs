//! The client's request body as it is forwarded: at most `server.max_body_bytes`, no pause
//! longer than `server.body_read_timeout_ms` between two pieces, and every failure marked
//! as the client's, so a malformed chunk or a stalled upload is answered 400 or 408 and
//! never counted against the upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::{BoxError, ClientBody};

/// What went wrong with the client's body; the client's fault, whoever noticed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFault {
    /// More than `server.max_body_bytes` (413).
    TooLarge,
    /// No body bytes for `server.body_read_timeout_ms` (408).
    Stalled,
    /// Malformed framing (a bad chunk size, a body cut short): 400.
    Malformed,
}

/// The error a [`GuardedBody`] yields; found again in the upstream exchange's error chain.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// See [`ClientFault::TooLarge`].
    #[error("the request body exceeds the limit")]
    TooLarge,
    /// See [`ClientFault::Stalled`].
    #[error("the client sent no body bytes for {0:?}")]
    Stalled(Duration),
    /// See [`ClientFault::Malformed`].
    #[error("the client's body is malformed: {0}")]
    Malformed(BoxError),
}

impl ClientBodyError {
    /// The fault, without its details.
    pub fn fault(&self) -> ClientFault {
        match self {
            ClientBodyError::TooLarge => ClientFault::TooLarge,
            ClientBodyError::Stalled(_) => ClientFault::Stalled,
            ClientBodyError::Malformed(_) => ClientFault::Malformed,
        }
    }
}

/// The client's fault behind `error`, if a [`GuardedBody`] is anywhere in its chain.
pub fn client_fault(error: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(body_error) = e.downcast_ref::<ClientBodyError>() {
            return Some(body_error.fault());
        }
        current = e.source();
    }
    None
}

/// Tells the upstream call when the request body has been sent in full (or abandoned):
/// the response-head timeout starts then, so a slow upload is the body timer's business.
#[derive(Debug, Default)]
pub struct BodySent {
    done: AtomicBool,
    notify: Notify,
}

impl BodySent {
    fn mark(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Waits until the body is sent, failed or dropped.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// The client's body under the size limit and the read timer (see the module docs).
/// Generic over the body so tests can drive it with a stream of their own.
#[derive(Debug)]
pub struct GuardedBody<B = ClientBody> {
    inner: B,
    remaining: u64,
    read_timeout: Duration,
    /// Armed at the first wait for the client, so bodies already in hand (and GETs) pay
    /// for no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// A piece arrived since the timer was last set.
    progressed: bool,
    sent: Option<Arc<BodySent>>,
}

impl<B> GuardedBody<B> {
    /// `inner`, allowed `limit` bytes and `read_timeout` between pieces.
    pub fn new(inner: B, limit: u64, read_timeout: Duration) -> Self {
        GuardedBody { inner, remaining: limit, read_timeout, timer: None, progressed: false, sent: None }
    }

    /// A signal for when this body has been sent in full, failed or been dropped.
    pub fn sent_signal(&mut self) -> Arc<BodySent> {
        self.sent.get_or_insert_with(Arc::default).clone()
    }

    fn finish(&mut self) {
        if let Some(sent) = self.sent.take() {
            sent.mark();
        }
    }

    /// Polls the read timer after the client had nothing to give.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<ClientBodyError> {
        let deadline = Instant::now() + self.read_timeout;
        let timer = match &mut self.timer {
            Some(timer) => {
                if std::mem::take(&mut self.progressed) {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(ClientBodyError::Stalled(self.read_timeout))
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let result = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => match this.poll_stalled(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(error) => Some(Err(error)),
            },
            Poll::Ready(Some(Ok(frame))) => {
                this.progressed = true;
                let len = frame.data_ref().map_or(0, |data| data.len() as u64);
                match this.remaining.checked_sub(len) {
                    Some(remaining) => {
                        this.remaining = remaining;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    None => Some(Err(ClientBodyError::TooLarge)),
                }
            }
            Poll::Ready(Some(Err(error))) => Some(Err(ClientBodyError::Malformed(error.into()))),
            Poll::Ready(None) => None,
        };
        this.finish();
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for GuardedBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream::{self, StreamExt};
    use http_body_util::{BodyExt, Full, StreamBody};

    type Pieces = StreamBody<stream::BoxStream<'static, Result<Frame<Bytes>, BoxError>>>;

    /// `count` one-byte pieces, `every` apart, then (when `then_fail`) a framing error.
    fn pieces(count: usize, every: Duration, then_fail: bool) -> Pieces {
        let data = stream::iter(0..count).then(move |_| async move {
            tokio::time::sleep(every).await;
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))
        });
        let failure = stream::iter(then_fail.then(|| Err::<Frame<Bytes>, BoxError>("invalid chunk size".into())));
        StreamBody::new(data.chain(failure).boxed())
    }

    #[tokio::test]
    async fn a_body_within_the_limit_passes_and_signals_when_sent() {
        let mut body = GuardedBody::new(Full::new(Bytes::from_static(b"hello")), 5, Duration::from_secs(1));
        let sent = body.sent_signal();
        let collected = body.collect().await.expect("within the limit").to_bytes();
        assert_eq!(collected, "hello");
        tokio::time::timeout(Duration::from_secs(1), sent.wait()).await.expect("signalled");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_the_clients_fault() {
        let body = GuardedBody::new(Full::new(Bytes::from_static(b"hello!")), 5, Duration::from_secs(1));
        let error = body.collect().await.expect_err("over the limit");
        assert_eq!(error.fault(), ClientFault::TooLarge);
        let boxed: BoxError = Box::new(error);
        assert_eq!(client_fault(&*boxed), Some(ClientFault::TooLarge));
        assert_eq!(client_fault(&std::io::Error::other("reset")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_and_a_slow_steady_one_does_not() {
        let timeout = Duration::from_millis(100);
        let steady = GuardedBody::new(pieces(5, Duration::from_millis(60), false), 100, timeout);
        assert_eq!(steady.collect().await.expect("never idle for 100 ms").to_bytes(), "xxxxx");

        let stalls = GuardedBody::new(pieces(2, Duration::from_millis(150), false), 100, timeout);
        assert_eq!(stalls.collect().await.expect_err("idle for 150 ms").fault(), ClientFault::Stalled);
    }

    #[tokio::test]
    async fn malformed_framing_is_the_clients_fault_and_still_signals() {
        let mut body = GuardedBody::new(pieces(1, Duration::ZERO, true), 100, Duration::from_secs(1));
        let sent = body.sent_signal();
        let error = body.collect().await.expect_err("a framing error");
        assert_eq!(error.fault(), ClientFault::Malformed);
        tokio::time::timeout(Duration::from_secs(1), sent.wait()).await.expect("signalled");
    }
}
