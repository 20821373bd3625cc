//! A copy of a response body as it streams to the client, for a mirror's comparison: at
//! most the mirrors' cap is kept (past it they learn "too large" at once and nothing more
//! is held), and the copy is handed over when the body has ended.

use bytes::{Bytes, BytesMut};
use gateway_plugin_api::side::{PrimaryBody, PrimaryBodyError};
use tokio::sync::oneshot;

type Waiting = (usize, oneshot::Sender<Result<Bytes, PrimaryBodyError>>);

/// The copy being kept, and who waits for it.
#[derive(Debug, Default)]
pub(crate) struct BodyTee {
    kept: BytesMut,
    cap: usize,
    over: bool,
    waiting: Vec<Waiting>,
}

impl BodyTee {
    /// A future of the body, for a mirror that looks at `cap` bytes at most. Resolves to
    /// [`PrimaryBodyError::Incomplete`] when the body is dropped before its end.
    pub(crate) fn subscribe(&mut self, cap: usize) -> PrimaryBody {
        let (sender, receiver) = oneshot::channel();
        self.cap = self.cap.max(cap);
        self.waiting.push((cap, sender));
        Box::pin(async move { receiver.await.unwrap_or(Err(PrimaryBodyError::Incomplete)) })
    }

    /// Keeps a piece of the body, unless the copy is already over the cap.
    pub(crate) fn data(&mut self, chunk: &[u8]) {
        if self.over {
            return;
        }
        if self.kept.len() + chunk.len() > self.cap {
            self.over = true;
            self.kept = BytesMut::new();
            for (_, sender) in self.waiting.drain(..) {
                let _ = sender.send(Err(PrimaryBodyError::TooLarge));
            }
            return;
        }
        self.kept.extend_from_slice(chunk);
    }

    /// The body ended: every mirror gets the copy (or "too large" past its own cap).
    pub(crate) fn end(mut self) {
        let body = std::mem::take(&mut self.kept).freeze();
        for (cap, sender) in self.waiting.drain(..) {
            let _ = sender.send(if body.len() > cap { Err(PrimaryBodyError::TooLarge) } else { Ok(body.clone()) });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn ready(mut body: PrimaryBody) -> Option<Result<Bytes, PrimaryBodyError>> {
        match Pin::new(&mut body).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        }
    }

    #[test]
    fn the_whole_body_arrives_at_its_end() {
        let mut tee = BodyTee::default();
        let body = tee.subscribe(10);
        tee.data(b"hello ");
        tee.data(b"you");
        tee.end();
        assert_eq!(ready(body), Some(Ok(Bytes::from_static(b"hello you"))));
    }

    #[test]
    fn past_the_cap_nothing_is_kept() {
        let mut tee = BodyTee::default();
        let small = tee.subscribe(4);
        let large = tee.subscribe(8);
        tee.data(b"12345");
        assert!(tee.kept.len() == 5);
        tee.data(b"6789");
        assert!(tee.kept.is_empty() && tee.over, "nothing held past the largest cap");
        assert_eq!(ready(large), Some(Err(PrimaryBodyError::TooLarge)));
        assert_eq!(ready(small), Some(Err(PrimaryBodyError::TooLarge)));
    }

    #[test]
    fn a_body_dropped_before_its_end_is_incomplete() {
        let mut tee = BodyTee::default();
        let body = tee.subscribe(10);
        tee.data(b"half");
        drop(tee);
        assert_eq!(ready(body), Some(Err(PrimaryBodyError::Incomplete)));
    }
}
