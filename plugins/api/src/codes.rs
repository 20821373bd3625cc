//! Every `x-gateway-error` code the gateway itself answers with, in one place.
//!
//! A response the gateway makes (rather than forwards) carries one of these in
//! `x-gateway-error` and in its JSON body's `error`, so clients, dashboards and tests can
//! tell the gateway's answers from an upstream's. Authentication codes (`jwt-*`) are made
//! by the auth plugin from its failure reasons and are listed there.

/// The path cannot be normalised without ambiguity (the specific `bad-path-*` codes come
/// from the normaliser).
pub const BAD_PATH: &str = "bad-path";
/// 400: two `Host` headers, or a `Host` that disagrees with the request target's
/// authority (absolute form or HTTP/2 `:authority`).
pub const BAD_HOST: &str = "bad-host";
/// 400: a request header name contains `_` and `server.underscore_headers = "reject"`.
pub const BAD_HEADER_NAME: &str = "bad-header-name";
/// 400: the path's lenient reading (as a permissive back-end decodes it) lands on a
/// different route than the strict one.
pub const BAD_PATH_AMBIGUOUS: &str = "bad-path-ambiguous";
/// 400: the client's body framing is malformed (a bad chunk size, a body cut short).
pub const BAD_REQUEST_BODY: &str = "bad-request-body";
/// 408: the client stopped sending its body for `server.body_read_timeout_ms`.
pub const BODY_TIMEOUT: &str = "body-timeout";
/// The request body is larger than `server.max_body_bytes` (or the replay limit).
pub const BODY_TOO_LARGE: &str = "body-too-large";
/// The upstream sent no response head within its `timeout_ms`.
pub const UPSTREAM_TIMEOUT: &str = "upstream-timeout";
/// The upstream could not be connected to.
pub const UPSTREAM_CONNECT_FAILED: &str = "upstream-connect-failed";
/// 502: the upstream's certificate did not verify (or the TLS handshake failed); nothing
/// of the request was sent.
pub const UPSTREAM_TLS_FAILED: &str = "upstream-tls-failed";
/// The upstream broke the exchange (reset, not HTTP).
pub const UPSTREAM_ERROR: &str = "upstream-error";
/// 503: every endpoint of the upstream failed its health checks or is ejected, and there
/// is nowhere else to go.
pub const NO_HEALTHY_ENDPOINT: &str = "no-healthy-endpoint";
/// The upstream's circuit breaker is open and there is nowhere else to go.
pub const BREAKER_OPEN: &str = "breaker-open";
/// A required part of an aggregate failed.
pub const AGGREGATE_PART_FAILED: &str = "aggregate-part-failed";
/// The caller is over the route's rate limit.
pub const RATE_LIMITED: &str = "rate-limited";
/// The client went away before the response (logged and counted as status 499).
pub const CLIENT_CLOSED: &str = "client-closed";
/// A policy asked the pipeline to wait more often than the pipeline allows.
pub const POLICY_STALLED: &str = "policy-stalled";
/// The admin listener answers GET (and HEAD) only.
pub const METHOD_NOT_ALLOWED: &str = "method-not-allowed";
/// No such admin endpoint.
pub const NOT_FOUND: &str = "not-found";
