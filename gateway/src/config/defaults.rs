//! Default values for every optional key, each with its unit.

/// Admin listener: loopback only, so metrics and config are not exposed by accident.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Largest request head: 32 KiB (bytes), room for a few large JWTs and cookies.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 * 1024;
/// Smallest accepted `max_header_bytes` (bytes): hyper's minimum read buffer.
pub const MIN_MAX_HEADER_BYTES: u64 = 8 * 1024;
/// Most request headers: 100 (count), hyper's stack-allocated default.
pub const DEFAULT_MAX_HEADERS: u64 = 100;
/// Largest request body: 10 MiB (bytes).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Time to receive a request head: 10 seconds (milliseconds).
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Client connection inactivity limit: 60 seconds (milliseconds).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Between two health checks of an endpoint: 2 seconds (milliseconds).
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 2_000;
/// A health check's time limit: 500 ms.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 500;
/// Failed health checks in a row that take an endpoint out.
pub const DEFAULT_UNHEALTHY_AFTER: u64 = 3;
/// Passed health checks in a row that bring it back.
pub const DEFAULT_HEALTHY_AFTER: u64 = 2;
/// Failed responses in a row that eject an endpoint.
pub const DEFAULT_EJECT_FAILURES: u64 = 5;
/// How long an ejection lasts: 30 seconds.
pub const DEFAULT_EJECT_SECONDS: u64 = 30;
/// Between two DNS lookups of a discovered upstream: 5 seconds.
pub const DEFAULT_DISCOVERY_REFRESH_SECONDS: u64 = 5;
/// Longest wait for the next piece of a request body: 30 seconds (milliseconds).
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Grace period for in-flight requests on SIGTERM: 30 seconds (milliseconds).
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;
/// Upstream response-head timeout: 5 seconds (milliseconds).
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 5_000;
/// Upstream TCP connect timeout: 1 second (milliseconds).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Pooled idle upstream connection lifetime: 30 seconds (milliseconds).
pub const DEFAULT_POOL_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Idle connections kept per upstream: 128 (count).
pub const DEFAULT_POOL_MAX_IDLE: u64 = 128;
/// Clock skew tolerated on `exp` and `nbf`: 30 seconds.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;
/// Largest accepted leeway: 5 minutes (seconds).
pub const MAX_LEEWAY_SECONDS: u64 = 300;
/// Seconds between background refreshes of a `jwks_url` (`jwks_refresh_seconds`).
pub const DEFAULT_JWKS_REFRESH_SECONDS: u64 = 300;
/// Longest accepted `jwks_refresh_seconds`: one day.
pub const MAX_JWKS_REFRESH_SECONDS: u64 = 86_400;
/// Verified tokens cached: 100 000 (count), a few tens of MB at most.
pub const DEFAULT_TOKEN_CACHE_ENTRIES: u64 = 100_000;
/// Breaker: failures within the window that open it (count).
pub const DEFAULT_BREAKER_FAILURES: u64 = 5;
/// Breaker: sliding window, 60 seconds.
pub const DEFAULT_BREAKER_WINDOW_SECONDS: u64 = 60;
/// Breaker: time open before trials, 30 seconds.
pub const DEFAULT_BREAKER_OPEN_SECONDS: u64 = 30;
/// Breaker: trials admitted at once while half-open (count).
pub const DEFAULT_BREAKER_HALF_OPEN_REQUESTS: u64 = 1;
/// Breaker: with an error rate, the fewest requests in the window it applies to (count).
pub const DEFAULT_BREAKER_MIN_REQUESTS: u64 = 20;
/// Fallback: largest request body kept for a replay after sending, 64 KiB (bytes).
pub const DEFAULT_FALLBACK_BODY_LIMIT: u64 = 64 * 1024;
/// Aggregate: the whole call's time limit, 2 seconds (milliseconds).
pub const DEFAULT_AGGREGATE_TIMEOUT_MS: u64 = 2_000;
/// Aggregate: largest part body read, 1 MiB (bytes).
pub const DEFAULT_MAX_PART_BYTES: u64 = 1024 * 1024;
