//! The contract between the gateway's fixed request pipeline and its policy plugins (v2).
//!
//! A policy is a crate under `plugins/` that knows nothing of sockets. It owns:
//! - its key on `[[routes]]`, the serde type of that key, its checks and its compiled
//!   per-route state ([`config::RoutePolicy`]);
//! - the plugin built from them once per config, immutable behind an `Arc`, which takes
//!   part in the phases it names in [`Plugin::phases`].
//!
//! Per-request state lives in [`RequestCtx`], which every phase receives; each typed field
//! there is set by exactly one phase (the one that owns it) and read by the phases after it.
//!
//! ```text
//!  normalise -> route -> authenticate* -> on_request* -> select_target
//!     -> upstream_request* -> mirror* -> forward | aggregate -> on_response*
//!     -> on_complete* (always)
//!                               │
//!            upstream_exchange* before every request sent upstream (the forward, a
//!            fallback replay on the monolith, each aggregate part fetched for a route)
//! ```
//! (`*`: plugin hooks; the others are the gateway's own fixed steps.)
//!
//! A hook that must wait for something (a key set being fetched) returns
//! [`Flow::Wait`] with a future; the pipeline awaits it and calls the same hook again. Only
//! a hook that waits allocates; the usual answer, [`Flow::Continue`], costs nothing.
//!
//! This crate knows nothing of bodies or runtimes, so every plugin can be unit tested and
//! benchmarked without a network.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod codes;
pub mod config;
pub mod headers;
mod reasons;
pub mod side;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

/// The label used for requests that matched no route and went to `server.default_upstream`.
pub const DEFAULT_ROUTE_LABEL: &str = "_default";

/// Index of a route in the compiled snapshot's route table.
///
/// Routes are numbered `0..n` in file order; the unmatched ("default") route is `n`, so
/// per-route tables built at compile time have `n + 1` entries and index without hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteId(pub usize);

/// Which side of the migration answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The monolith (the trunk) answered.
    Monolith,
    /// The extracted service answered.
    Service,
    /// The gateway fanned out to several parts and merged their replies.
    Aggregate,
}

impl Target {
    /// Every target, in the order used by per-target tables.
    pub const ALL: [Target; 3] = [Target::Monolith, Target::Service, Target::Aggregate];

    /// The Prometheus label value and access-log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Monolith => "monolith",
            Target::Service => "service",
            Target::Aggregate => "aggregate",
        }
    }

    /// Position in [`Target::ALL`], for table lookups without hashing.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A response the gateway makes itself instead of forwarding.
///
/// The gateway renders it as a short JSON body (`{"error": code, "message": message}`) with
/// an `x-gateway-error: <code>` header, so nobody confuses it with an upstream's answer.
#[derive(Clone, Debug)]
pub struct Rejection {
    /// HTTP status to answer with.
    pub status: StatusCode,
    /// Stable machine-readable reason, e.g. `jwt-expired`, `breaker-open`, `bad-path`.
    pub code: &'static str,
    /// One short human sentence; never contains a token or secret.
    pub message: Cow<'static, str>,
    /// Extra response headers, e.g. `WWW-Authenticate` or `Retry-After`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Rejection {
    /// A rejection without extra headers.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection { status, code, message: message.into(), headers: Vec::new() }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// A claim of a verified token, in a form later phases can compare without re-parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimValue {
    /// A string, or a number or boolean as written in the token (`42`, `true`).
    Text(String),
    /// An array whose items are strings, numbers or booleans, each as text.
    List(Vec<String>),
}

/// The caller, as proven by a token the authentication phase verified.
///
/// Later phases (rollout, segments, aggregation) read this; nothing re-parses the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Claims usable as text; objects and nested arrays are left out.
    pub claims: BTreeMap<String, ClaimValue>,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Identity {
    /// A claim's value when it is text (strings, numbers, booleans).
    pub fn claim(&self, name: &str) -> Option<&str> {
        match self.claims.get(name)? {
            ClaimValue::Text(text) => Some(text),
            ClaimValue::List(_) => None,
        }
    }

    /// `sub`, if the token has one.
    pub fn subject(&self) -> Option<&str> {
        self.claim("sub")
    }
}

pub use reasons::FallbackReason;

/// A future a hook asks the pipeline to await before calling the hook again.
pub type Pending = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What a phase tells the pipeline to do next.
pub enum Flow {
    /// Go on to the next plugin and phase.
    Continue,
    /// Stop here and answer the client with this rejection; `on_complete` still runs.
    Respond(Rejection),
    /// Await this future, then call the same hook of the same plugin again (a bounded
    /// number of times: a hook that keeps waiting gets the request answered with 503
    /// `policy-stalled`).
    Wait(Pending),
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flow::Continue => f.write_str("Continue"),
            Flow::Respond(rejection) => f.debug_tuple("Respond").field(rejection).finish(),
            Flow::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

/// Per-request state shared by all phases.
///
/// Fields are public so phases can read them; by convention only the owning phase writes
/// (`route` by the router, `identity` by authentication, `target` by target selection,
/// and so on).
#[derive(Debug)]
pub struct RequestCtx {
    /// The request id returned to the client in `x-request-id` (kept from the client or made).
    pub request_id: http::HeaderValue,
    /// When the request started, on the gateway's monotonic clock (time since the clock's
    /// epoch): the `now` of every time-based policy (rate limits, breakers) for this request.
    pub started: Duration,
    /// The normalised path the route matched; set by normalisation.
    pub path: String,
    /// The matched route, or the default route for unmatched traffic; set by `route`.
    pub route: Option<RouteId>,
    /// The caller's address: the peer, or the right-most untrusted `x-forwarded-for` entry
    /// when the peer is a trusted proxy. Set by `route`.
    pub client_ip: Option<IpAddr>,
    /// The verified caller; `None` for anonymous requests. Set by authentication.
    pub identity: Option<Arc<Identity>>,
    /// Why authentication refused the request (`expired`, `bad-signature`, ...), for
    /// metrics. Set by authentication.
    pub auth_failure: Option<&'static str>,
    /// The side chosen for this request; set by `select_target` (and by forwarding when
    /// the monolith stands in).
    pub target: Option<Target>,
    /// Name of the upstream the request is sent to; set with `target`.
    pub upstream: Option<Arc<str>>,
    /// Why a request meant for the service was answered by the monolith. Set by forwarding.
    pub fallback: Option<FallbackReason>,
    /// The request's span when it is traced (sampled): calls made for it are its children.
    pub trace: Option<TraceContext>,
}

/// A W3C trace context: the trace and the span that calls made for a request descend from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, kept from the caller's `traceparent` or new.
    pub trace_id: [u8; 16],
    /// The gateway's span for the request.
    pub span_id: [u8; 8],
}

impl RequestCtx {
    /// A fresh context for a request with the given id that started at `started`.
    pub fn new(request_id: HeaderValue, started: Duration) -> Self {
        RequestCtx {
            request_id,
            started,
            path: String::new(),
            route: None,
            client_ip: None,
            identity: None,
            auth_failure: None,
            target: None,
            upstream: None,
            fallback: None,
            trace: None,
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers, if present.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// One request the gateway is about to send upstream for a client request, as
/// [`Plugin::upstream_exchange`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The route whose request this is: the matched route, or for an aggregate part
    /// fetched through a route, that route.
    pub route: RouteId,
    /// The side it goes to: [`Target::Monolith`] or [`Target::Service`].
    pub side: Target,
}

/// How a request ended, as seen by `on_complete`.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// Status sent to the client (or 499 when the client went away first).
    pub status: StatusCode,
    /// Time from the start of the request to the response head being ready.
    pub duration: Duration,
    /// The `x-gateway-error` code when the gateway answered by itself.
    pub gateway_error: Option<&'static str>,
}

/// The phases a plugin takes part in; the pipeline keeps one plugin list per phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    /// Runs [`Plugin::authenticate`].
    pub authenticate: bool,
    /// Runs [`Plugin::on_request`].
    pub on_request: bool,
    /// Runs [`Plugin::upstream_request`].
    pub upstream_request: bool,
    /// Runs [`Plugin::upstream_exchange`].
    pub upstream_exchange: bool,
    /// Runs [`Plugin::mirror`].
    pub mirror: bool,
    /// Runs [`Plugin::on_response`].
    pub on_response: bool,
    /// Runs [`Plugin::on_complete`].
    pub on_complete: bool,
}

/// A request policy. Every hook has a no-op default; override only what you need and
/// say so in [`Plugin::phases`], which the pipeline reads once when it compiles a config
/// (a plugin is never called for a phase it did not name).
pub trait Plugin: Send + Sync + 'static {
    /// A short stable name for logs and errors.
    fn name(&self) -> &'static str;

    /// The phases this plugin takes part in.
    fn phases(&self) -> Phases;

    /// Runs after the route matched: verifies who the caller is and sets
    /// [`RequestCtx::identity`]. May edit the request head (claim headers). The default
    /// returns [`Flow::Continue`]; [`Flow::Respond`] answers the client (401) and skips
    /// every later phase but `on_response` and `on_complete`.
    fn authenticate(&self, _ctx: &mut RequestCtx, _request: &mut http::request::Parts) -> Flow {
        Flow::Continue
    }

    /// Runs after authentication and before the side is chosen, so it guards both sides
    /// alike (rate limits, access rules). The default returns [`Flow::Continue`].
    fn on_request(&self, _ctx: &mut RequestCtx, _request: &mut http::request::Parts) -> Flow {
        Flow::Continue
    }

    /// Runs after the target is chosen and admitted, just before forwarding, with the
    /// outgoing request head (origin-form URI, forwarding headers set). It may edit the
    /// request, and start side requests through `upstreams` (spawn them to keep the client
    /// from waiting). Not run for aggregates. The default returns [`Flow::Continue`].
    fn upstream_request(
        &self,
        _ctx: &RequestCtx,
        _request: &mut http::request::Parts,
        _upstreams: &dyn side::Upstreams,
    ) -> Flow {
        Flow::Continue
    }

    /// Runs before every request sent upstream for this client request: the forward, a
    /// fallback replay on the monolith, each aggregate part fetched through a route. It
    /// may rewrite what differs between the sides (the path and query) and edit headers.
    ///
    /// The gateway gives every exchange the URI and `Host` as matched (a replay does not
    /// inherit the service's rewrite); other headers carry over from the exchange before,
    /// so header edits must not depend on the side (set and remove are fine: doing them
    /// twice changes nothing). `Host` is the upstream's to set (`host_header`). The
    /// default does nothing.
    fn upstream_exchange(&self, _ctx: &RequestCtx, _exchange: &Exchange, _request: &mut http::request::Parts) {}

    /// Runs after `upstream_request` for a request the monolith is chosen to answer (not
    /// a fallback, not an upgrade), with the outgoing head as matched: may ask for a copy
    /// to be made once the monolith's response head is in hand ([`side::Mirror`]). Keep
    /// the usual answer, `None`, cheap. The default returns `None`.
    fn mirror(&self, _ctx: &RequestCtx, _request: &http::request::Parts) -> Option<Box<dyn side::Mirror>> {
        None
    }

    /// Runs when the response head is ready (from the upstream or the gateway itself),
    /// before it is sent. The default does nothing.
    fn on_response(&self, _ctx: &RequestCtx, _response: &mut http::response::Parts) {}

    /// Runs exactly once for every request, whatever happened before (also when the
    /// client went away): the only place to record metrics and outcomes. The default does
    /// nothing.
    fn on_complete(&self, _ctx: &RequestCtx, _outcome: &Outcome) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_claims_read_as_text() {
        let identity = Identity {
            claims: BTreeMap::from([
                ("sub".to_owned(), ClaimValue::Text("alice".to_owned())),
                ("groups".to_owned(), ClaimValue::List(vec!["beta".to_owned()])),
            ]),
            expires_at: 10,
        };
        assert_eq!(identity.subject(), Some("alice"));
        assert_eq!(identity.claim("groups"), None, "a list is not text");
        assert_eq!(identity.claim("missing"), None);
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::COOKIE, HeaderValue::from_static("theme=dark; session=abc"));
        headers.append(http::header::COOKIE, HeaderValue::from_static("uid=7"));
        assert_eq!(cookie(&headers, "session"), Some("abc"));
        assert_eq!(cookie(&headers, "uid"), Some("7"));
        assert_eq!(cookie(&headers, "sess"), None);
    }

    #[test]
    fn flows_print_what_they_hold() {
        assert_eq!(format!("{:?}", Flow::Continue), "Continue");
        assert_eq!(format!("{:?}", Flow::Wait(Box::pin(async {}))), "Wait(..)");
        let respond = Flow::Respond(Rejection::new(StatusCode::TOO_MANY_REQUESTS, codes::RATE_LIMITED, "slow"));
        assert!(format!("{respond:?}").starts_with("Respond(Rejection { status: 429"), "{respond:?}");
    }

    #[test]
    fn side_errors_say_what_failed() {
        use side::SideError;
        assert_eq!(SideError::UnknownUpstream("x".into()).to_string(), "no upstream named x");
        assert_eq!(SideError::BreakerOpen.to_string(), "the upstream's circuit breaker is open");
        assert_eq!(SideError::Failed("timed out".into()).to_string(), "timed out");
        let too_large = SideError::TooLarge { status: StatusCode::OK, content_type: None };
        assert_eq!(too_large.to_string(), "the response body is over the limit");
    }

    #[test]
    fn target_indexes_follow_all() {
        for (i, t) in Target::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
        assert_eq!(Target::Service.as_str(), "service");
    }
}
