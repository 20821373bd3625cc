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
    /// The response body was larger than the limit the caller gave.
    TooLarge,
}

impl std::fmt::Display for SideError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SideError::UnknownUpstream(name) => write!(f, "no upstream named {name}"),
            SideError::BreakerOpen => f.write_str("the upstream's circuit breaker is open"),
            SideError::Failed(why) => f.write_str(why),
            SideError::TooLarge => f.write_str("the response body is over the limit"),
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
