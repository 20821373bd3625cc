//! Side requests: calls a policy makes to an upstream beside the request it serves
//! (a shadow copy, a mirror), through the gateway's own pools and breakers.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// Why a side request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideError {
    /// No upstream of that name in the config being served.
    UnknownUpstream(String),
    /// The upstream's breaker refused the call.
    BreakerOpen,
    /// The exchange failed (connect error, timeout, broken exchange); the text says which.
    Failed(String),
    /// The response body was larger than the limit the caller gave; its head said this.
    TooLarge {
        /// The answer's status.
        status: http::StatusCode,
        /// Its `content-type`, if any.
        content_type: Option<http::HeaderValue>,
    },
}

impl std::fmt::Display for SideError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SideError::UnknownUpstream(name) => write!(f, "no upstream named {name}"),
            SideError::BreakerOpen => f.write_str("the upstream's circuit breaker is open"),
            SideError::Failed(why) => f.write_str(why),
            SideError::TooLarge { .. } => f.write_str("the response body is over the limit"),
        }
    }
}

impl std::error::Error for SideError {}

/// A side request in flight. It owns everything it needs (`'static`), so a policy may
/// spawn it and let the client's request finish first.
pub type SideFuture = Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, SideError>> + Send + 'static>>;

/// The upstreams of the config being served, as a policy may call them.
pub trait Upstreams: Send + Sync {
    /// Sends `request` (origin-form URI) to the upstream named `upstream` through its pool
    /// and breaker, and reads the response body up to `max_body_bytes`. The gateway sets
    /// `Host` when the request has none.
    fn send(&self, upstream: &str, request: http::Request<Bytes>, max_body_bytes: usize) -> SideFuture;
}

/// Why the primary answer's body is not there for a mirror to compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrimaryBodyError {
    /// It is larger than the mirror's `max_body_bytes`: only its head can be compared.
    TooLarge,
    /// It did not arrive whole (the upstream broke off, or the client went away).
    Incomplete,
}

/// The primary answer's body, read by the gateway as it streams to the client (never
/// held beyond the mirror's cap); resolves when the body has ended.
pub type PrimaryBody = Pin<Box<dyn Future<Output = Result<Bytes, PrimaryBodyError>> + Send + 'static>>;

/// The monolith's answer to the client's request, as a [`Mirror`] gets it once its head
/// is in hand.
pub struct PrimaryAnswer {
    /// Its status.
    pub status: http::StatusCode,
    /// Its `content-type`, if any.
    pub content_type: Option<http::HeaderValue>,
    /// From the start of the client's request to the primary's response head.
    pub latency: std::time::Duration,
    /// The body, as it streams to the client.
    pub body: PrimaryBody,
    /// The body of the client's request, when it had one and the gateway buffered it for
    /// the mirror ([`Mirror::wants_request_body`]); empty otherwise.
    pub request_body: Bytes,
    /// The gateway's monotonic clock, for timing the copy.
    pub now: fn() -> std::time::Duration,
}

/// The sides of the route being served, as a mirror sends to them.
pub trait RouteSides: Send + Sync {
    /// Sends `request` (the head as matched, origin-form URI) to `side` of the route
    /// being served, as the data plane would (its `upstream_exchange` plugins applied,
    /// through the upstream's pool and breaker), and reads the answer's body up to
    /// `max_body_bytes`.
    fn send(&self, side: crate::Target, request: http::Request<Bytes>, max_body_bytes: usize) -> SideFuture;
}

/// Work a mirror does beside the client's request; the gateway spawns it and never
/// awaits it for the client.
pub type SideTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Why the gateway will not start a mirror it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorSkipped {
    /// The request has a body the gateway could not buffer for the copy (over the
    /// mirror's cap, or of unknown length).
    BodyNotBuffered,
}

/// A copy of the client's request a policy wants made once the primary answer's head is
/// in hand ([`crate::Plugin::mirror`]). Dropped without a call when there is nothing to
/// compare (the request failed, or the service answered it).
pub trait Mirror: Send + 'static {
    /// The largest body (of the request and of each answer) the mirror looks at.
    fn max_body_bytes(&self) -> usize;

    /// True when the copy needs the client's request body: the gateway then buffers it
    /// (at most [`Mirror::max_body_bytes`]) before forwarding, or skips the mirror.
    fn wants_request_body(&self) -> bool;

    /// Starts the copy with the primary's answer; returns the work to spawn.
    fn start(self: Box<Self>, primary: PrimaryAnswer, sides: &dyn RouteSides) -> SideTask;

    /// The copy will not be made, and why.
    fn skip(self: Box<Self>, why: MirrorSkipped);
}
