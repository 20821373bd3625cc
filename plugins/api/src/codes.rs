//! Every `x-gateway-error` code the gateway itself answers with, in one place.
//!
//! A response the gateway makes (rather than forwards) carries one of these in
//! `x-gateway-error` and in its JSON body's `error`, so clients, dashboards and tests can
//! tell the gateway's answers from an upstream's. Authentication codes (`jwt-*`) are made
//! by the auth plugin from its failure reasons and are listed there.

/// The path cannot be normalised without ambiguity (the specific `bad-path-*` codes come
/// from the normaliser).
pub const BAD_PATH: &str = "bad-path";
/// The request body is larger than `server.max_body_bytes` (or the replay limit).
pub const BODY_TOO_LARGE: &str = "body-too-large";
/// The client's request body could not be read.
pub const BODY_READ_FAILED: &str = "body-read-failed";
/// The upstream sent no response head within its `timeout_ms`.
pub const UPSTREAM_TIMEOUT: &str = "upstream-timeout";
/// The upstream could not be connected to.
pub const UPSTREAM_CONNECT_FAILED: &str = "upstream-connect-failed";
/// 502: the upstream's certificate did not verify (or the TLS handshake failed); nothing
/// of the request was sent.
pub const UPSTREAM_TLS_FAILED: &str = "upstream-tls-failed";
/// The upstream broke the exchange (reset, not HTTP).
pub const UPSTREAM_ERROR: &str = "upstream-error";
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
