//! Every metric name the gateway exports. Code records metrics only through these consts,
//! so the names in SPEC.md, the README and the exporter stay one list.

/// Counter: requests answered, by `route`, `target` (monolith|service|aggregate|none),
/// `upstream` and `status_class` (1xx..5xx).
pub const REQUESTS_TOTAL: &str = "gateway_requests_total";
/// Histogram (seconds): time to the response head, by `route` and `target`.
pub const REQUEST_DURATION_SECONDS: &str = "gateway_request_duration_seconds";
/// Counter: requests refused by authentication, by `route` and `reason` (`missing`,
/// `expired`, `bad-signature`, ...).
pub const AUTH_FAILURES_TOTAL: &str = "gateway_auth_failures_total";
/// Gauge: a route's configured dial, in percent (0 to 100).
pub const ROLLOUT_PERCENT: &str = "gateway_rollout_percent";
/// Counter: requests meant for the service that the monolith answered, by `route` and
/// `reason` (breaker_open, connect_error, timeout, status_5xx, exchange_error).
pub const FALLBACKS_TOTAL: &str = "gateway_fallbacks_total";
/// Gauge: a breaker's state by `upstream`: 0 closed, 1 open, 2 half-open.
pub const CIRCUIT_STATE: &str = "gateway_circuit_state";
/// Counter: breaker state changes by `upstream` and `to` (closed, open, half_open).
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "gateway_circuit_transitions_total";
/// Counter: aggregate parts that failed (error, timeout, non-JSON), by `aggregate` and `part`.
pub const AGGREGATE_PART_FAILURES_TOTAL: &str = "gateway_aggregate_part_failures_total";
/// Histogram (seconds): time to fetch one aggregate part, by `aggregate` and `part`.
pub const AGGREGATE_PART_DURATION_SECONDS: &str = "gateway_aggregate_part_duration_seconds";
/// Counter: config reload attempts, by `result` (ok|error).
pub const CONFIG_RELOADS_TOTAL: &str = "gateway_config_reloads_total";
/// Gauge: version of the config snapshot being served (1 for the first load).
pub const CONFIG_VERSION: &str = "gateway_config_version";
/// Counter: TLS handshakes on `tls_listen` that failed, by `reason`.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "gateway_tls_handshake_failures_total";
/// Gauge: WebSocket connections relayed now, by `route`.
pub const UPGRADED_CONNECTIONS: &str = "gateway_upgraded_connections";

/// Buckets (seconds) of every `_seconds` histogram ([`REQUEST_DURATION_SECONDS`],
/// [`AGGREGATE_PART_DURATION_SECONDS`]): 250 µs to 10 s, dense below 100 ms
/// where a proxied API call usually lands, so p50/p99 of fast routes stay readable.
pub const REQUEST_DURATION_BUCKETS: &[f64] =
    &[0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Label value for a request that never reached a target decision (rejected before it).
pub const TARGET_NONE: &str = "none";
/// Label value for `upstream` when no upstream was called.
pub const UPSTREAM_NONE: &str = "none";
/// Gauge: endpoints of an upstream by `state` (`healthy`, `unhealthy`, `ejected`).
pub const UPSTREAM_ENDPOINTS: &str = "gateway_upstream_endpoints";
/// Counter: requests sent to each endpoint of an upstream, by `status_class` (`1xx`..`5xx`,
/// or `error` when no response head came).
pub const UPSTREAM_REQUESTS_TOTAL: &str = "gateway_upstream_requests_total";
/// Counter: DNS discovery lookups of an upstream by `result` (`ok`, `error`).
pub const DISCOVERY_LOOKUPS: &str = "gateway_discovery_lookups_total";
/// Counter: fetches of a `jwks_url` key source by `source` (the URL) and `result` (`ok`,
/// `error`).
pub const JWKS_REFRESH_TOTAL: &str = "gateway_jwks_refresh_total";
/// Gauge: seconds since a `jwks_url` source's keys in use were fetched, by `source`.
pub const JWKS_AGE_SECONDS: &str = "gateway_jwks_age_seconds";
