//! The contract between the gateway's fixed request pipeline and its policy plugins.
//!
//! A plugin is built once from a compiled config snapshot, is immutable behind an `Arc`,
//! and overrides only the phases it cares about. Per-request state lives in
//! [`RequestCtx`], which every phase receives; each typed field there is set by exactly
//! one phase (the one that owns it) and read by the phases after it.
//!
//! ```text
//!  on_request -> route -> authenticate -> select_target -> admit -> forward | aggregate
//!       -> on_response -> on_complete (always, whatever happened before)
//! ```
//!
//! This crate knows nothing of sockets, bodies or runtimes, so every plugin can be unit
//! tested and benchmarked without a network.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

use std::borrow::Cow;
use std::collections::BTreeMap;
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

/// What a phase tells the pipeline to do next.
#[derive(Debug)]
pub enum Flow {
    /// Go on to the next plugin and phase.
    Continue,
    /// Stop here and answer the client with this rejection; `on_complete` still runs.
    Respond(Rejection),
}

/// Per-request state shared by all phases.
///
/// Fields are public so phases can read them; by convention only the owning phase writes
/// (`route` by the router, `target` by target selection, and so on).
#[derive(Debug)]
pub struct RequestCtx {
    /// The request id returned to the client in `x-request-id` (kept from the client or made).
    pub request_id: http::HeaderValue,
    /// The normalised path the route matched and the upstream receives; set by `on_request`.
    pub path: String,
    /// The matched route, or the default route for unmatched traffic; set by `route`.
    pub route: Option<RouteId>,
    /// The side chosen for this request; set by `select_target`.
    pub target: Option<Target>,
    /// Name of the upstream the request was sent to; set by `forward`.
    pub upstream: Option<Arc<str>>,
    /// The verified caller; `None` for anonymous requests. Set by authentication.
    pub identity: Option<Arc<Identity>>,
    /// Why authentication refused the request (`expired`, `bad-signature`, ...), for
    /// metrics. Set by authentication.
    pub auth_failure: Option<&'static str>,
    /// Why a request meant for the service was answered by the monolith (`breaker_open`,
    /// `connect_error`, `timeout`, `status_5xx`, ...). Set by forwarding.
    pub fallback: Option<&'static str>,
}

impl RequestCtx {
    /// A fresh context for a request with the given id.
    pub fn new(request_id: HeaderValue) -> Self {
        RequestCtx {
            request_id,
            path: String::new(),
            route: None,
            target: None,
            upstream: None,
            identity: None,
            auth_failure: None,
            fallback: None,
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

/// How a request ended, as seen by `on_complete`.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// Status sent to the client (or 502/504 if the exchange broke before a status was sent).
    pub status: StatusCode,
    /// Time from the start of the request to the response head being ready.
    pub duration: Duration,
    /// The `x-gateway-error` code when the gateway answered by itself.
    pub gateway_error: Option<&'static str>,
}

/// The phases a plugin takes part in; the pipeline keeps one plugin list per phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    /// Runs [`Plugin::on_request`].
    pub on_request: bool,
    /// Runs [`Plugin::on_response`].
    pub on_response: bool,
    /// Runs [`Plugin::on_complete`].
    pub on_complete: bool,
}

/// A request policy. Every method has a no-op default; override only what you need and
/// say so in [`Plugin::phases`], which the pipeline reads once when it compiles a config.
pub trait Plugin: Send + Sync + 'static {
    /// A short stable name for logs and errors.
    fn name(&self) -> &'static str;

    /// The phases this plugin takes part in.
    fn phases(&self) -> Phases;

    /// Runs after the path is normalised and the route matched, before authentication.
    /// The default does nothing and returns [`Flow::Continue`]; returning
    /// [`Flow::Respond`] answers the client and skips forwarding.
    fn on_request(&self, _ctx: &mut RequestCtx, _request: &mut http::request::Parts) -> Flow {
        Flow::Continue
    }

    /// Runs when the response head is ready (from the upstream or the gateway itself),
    /// before it is sent. The default does nothing.
    fn on_response(&self, _ctx: &RequestCtx, _response: &mut http::response::Parts) {}

    /// Runs exactly once for every request, whatever happened before: the only place to
    /// record metrics and outcomes. The default does nothing.
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
    fn target_indexes_follow_all() {
        for (i, t) in Target::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
        assert_eq!(Target::Service.as_str(), "service");
    }
}
