//! The raw shape of `routes.toml`: serde types that mirror the file one to one.
//!
//! Unknown keys are rejected (`deny_unknown_fields`) so a typo is an error, not a silent
//! default. Fields that later checks point at are `Spanned`, so every semantic error can
//! name its line and column. Defaults live in [`super::defaults`]; nothing here is
//! validated: `compile` turns these into an immutable [`crate::snapshot::Snapshot`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`: listeners, the trunk upstream and client-facing limits.
    pub server: FileServer,
    /// `[auth]`: how tokens are verified; absent means no route checks tokens.
    pub auth: Option<Spanned<FileAuth>>,
    /// `[upstreams.<name>]`: every backend the gateway may call, by name.
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, FileUpstream>,
    /// `[[routes]]`: path prefixes that an extracted service answers.
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    /// `[segments.<name>]`: groups of callers that always get the service.
    #[serde(default)]
    pub segments: BTreeMap<Spanned<String>, FileSegment>,
    /// `[[aggregates]]`: one call answered by several parts fetched in parallel.
    #[serde(default)]
    pub aggregates: Vec<FileAggregate>,
    /// `[telemetry]`: OpenTelemetry span export.
    pub telemetry: Option<Spanned<FileTelemetry>>,
}

/// `[telemetry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTelemetry {
    /// The collector's base URL; spans are POSTed to `/v1/traces` (OTLP/HTTP, protobuf).
    pub otlp_endpoint: Option<Spanned<String>>,
    /// Share of new traces recorded (0 to 100, steps of 0.01); a caller's sampled trace
    /// is always continued, an unsampled one never.
    pub trace_sample_percent: Option<Spanned<f64>>,
    /// `service.name` of the exported spans; default "gateway".
    pub service_name: Option<Spanned<String>>,
    /// More resource attributes (`deployment.environment = "prod"`).
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
}

/// One `[[aggregates]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAggregate {
    /// Name: metric label; unique among routes and aggregates.
    pub name: Spanned<String>,
    /// The exact path it answers.
    pub path: Spanned<String>,
    /// What it asks of the caller; default `required` when `[auth]` exists.
    pub auth: Option<Spanned<FileAuthMode>>,
    /// The whole call's time limit, ms.
    pub timeout_ms: Option<Spanned<u64>>,
    /// Largest part body read, bytes.
    pub max_part_bytes: Option<Spanned<u64>>,
    /// The parts.
    pub parts: Spanned<Vec<FilePart>>,
}

/// One part of an aggregate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePart {
    /// Key in the reply.
    pub name: Spanned<String>,
    /// A named upstream ...
    pub upstream: Option<Spanned<String>>,
    /// ... or a route, whose side for this caller answers.
    pub route: Option<Spanned<String>>,
    /// Path (and query) requested with GET.
    pub path: Spanned<String>,
    /// A failure fails the whole reply; default true.
    pub required: Option<bool>,
    /// This part's time limit, ms; default the aggregate's.
    pub timeout_ms: Option<Spanned<u64>>,
    /// JSON used when a non-required part fails.
    pub default: Option<toml::Value>,
}

/// `[segments.<name>]`: a claim test, or a header that equals a value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSegment {
    /// A claim of the verified token.
    pub claim: Option<Spanned<String>>,
    /// A request header (the caller controls it: for opt-in canaries).
    pub header: Option<Spanned<String>>,
    /// The value equals this.
    pub equals: Option<Spanned<String>>,
    /// The claim ends with this.
    pub ends_with: Option<Spanned<String>>,
    /// The claim contains this.
    pub contains: Option<Spanned<String>>,
    /// The claim is one of these.
    pub one_of: Option<Spanned<Vec<String>>>,
}

/// `anonymous = "monolith" | "service"`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileSide {
    /// The monolith.
    Monolith,
    /// The extracted service.
    Service,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Client-facing plain-HTTP listener, `IP:PORT`; optional when `tls_listen` is set.
    pub listen: Option<Spanned<String>>,
    /// Admin listener (health, metrics, config), `IP:PORT`; loopback by default.
    pub admin_listen: Option<Spanned<String>>,
    /// Upstream that serves every request no route matches (the trunk).
    pub default_upstream: Spanned<String>,
    /// Runtime worker threads; defaults to the number of CPUs.
    pub workers: Option<Spanned<u64>>,
    /// Largest request head (request line + headers) in bytes; at least 8192.
    pub max_header_bytes: Option<Spanned<u64>>,
    /// Most request headers accepted.
    pub max_headers: Option<Spanned<u64>>,
    /// Largest request body in bytes (413 beyond it).
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Time a client has to send a complete request head (also bounds HTTP/1 keep-alive idle).
    pub header_read_timeout_ms: Option<Spanned<u64>>,
    /// A client connection with no bytes moving either way for this long is closed.
    pub idle_timeout_ms: Option<Spanned<u64>>,
    /// On SIGTERM, time given to in-flight requests before the process exits.
    pub shutdown_grace_ms: Option<Spanned<u64>>,
    /// Write one JSON access-log line per request.
    pub access_log: Option<bool>,
    /// Request headers whose names contain `_`: drop (default), reject (400) or pass.
    pub underscore_headers: Option<Spanned<String>>,
    /// A client that sends no body bytes for this long gets 408.
    pub body_read_timeout_ms: Option<Spanned<u64>>,
    /// What unmatched traffic (to `default_upstream`) asks of the caller; default off.
    pub default_auth: Option<Spanned<FileAuthMode>>,
    /// Proxies (IPs or CIDRs) whose `x-forwarded-for` is believed for `sticky = "ip"`.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// HTTPS listener (ALPN h2 and http/1.1), with `[server.tls]`.
    pub tls_listen: Option<Spanned<String>>,
    /// File the serving process's pid is written to (it follows a binary upgrade).
    pub pid_file: Option<Spanned<String>>,
    /// The certificates of `tls_listen`.
    pub tls: Option<Spanned<FileTls>>,
}

/// `[server.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// SNI picks the first whose names match; the first is the default.
    pub certificates: Vec<Spanned<FileCertificate>>,
}

/// `{ cert_file = "...", key_file = "..." }`, relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    /// PEM certificate chain, leaf first.
    pub cert_file: Spanned<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Spanned<String>,
}

/// `auth = "required" | "optional" | "off"`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileAuthMode {
    /// A valid token is required.
    Required,
    /// No token is anonymous; a present token must be valid.
    Optional,
    /// Tokens are not looked at.
    Off,
}

/// One text value or a list of them. A list keeps each item's place in the file; a single
/// value's place is that of the key's value.
#[derive(Debug)]
pub enum FileOneOrMany {
    /// One value.
    One(String),
    /// Several.
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for FileOneOrMany {
    // By hand rather than `#[serde(untagged)]`: an untagged enum buffers its input and
    // would lose the items' places in the file.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FileOneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<FileOneOrMany, E> {
                Ok(FileOneOrMany::One(value.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FileOneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(FileOneOrMany::Many(items))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl FileOneOrMany {
    /// Every value with its place, in file order; `whole` is the place of the key's value.
    pub fn values(&self, whole: std::ops::Range<usize>) -> Vec<(String, std::ops::Range<usize>)> {
        match self {
            FileOneOrMany::One(one) => vec![(one.clone(), whole)],
            FileOneOrMany::Many(many) => many.iter().map(|item| (item.get_ref().clone(), item.span())).collect(),
        }
    }
}

/// `audience = "api"` or `audience = ["api", "web"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileAudience {
    /// One accepted audience.
    One(String),
    /// Several; a token naming any of them is accepted.
    Many(Vec<String>),
}

/// `[auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    /// The allow-list of signing algorithms, e.g. `["RS256", "ES256"]`; never `none`.
    pub algorithms: Spanned<Vec<Spanned<String>>>,
    /// JWKS documents published by identity providers (`https://`; `http://` only on a
    /// loopback address), fetched at start and refreshed: one URL or a list.
    pub jwks_url: Option<Spanned<FileOneOrMany>>,
    /// Seconds between background refreshes of every `jwks_url`.
    pub jwks_refresh_seconds: Option<Spanned<u64>>,
    /// PEM CA certificates to verify the `jwks_url` servers with; default the system roots.
    pub jwks_ca_file: Option<Spanned<String>>,
    /// JWKS documents (keys by `kid`), relative to this file's directory: one or a list.
    pub jwks_file: Option<Spanned<FileOneOrMany>>,
    /// One PEM public key (RSA, EC or Ed25519), relative to this file's directory.
    pub public_key_file: Option<Spanned<String>>,
    /// Name of the environment variable holding the HMAC secret (never the secret itself).
    pub hs256_secret_env: Option<Spanned<String>>,
    /// Required `iss`, when set.
    pub issuer: Option<Spanned<String>>,
    /// Accepted `aud` values, when set.
    pub audience: Option<Spanned<FileAudience>>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    pub leeway_seconds: Option<Spanned<u64>>,
    /// A cookie to take the token from when there is no `Authorization: Bearer`.
    pub cookie: Option<Spanned<String>>,
    /// Claim -> request header, set from verified tokens only (and stripped otherwise).
    pub claims_to_headers: Option<BTreeMap<String, Spanned<String>>>,
    /// Verified tokens kept in the cache (0 disables it).
    pub cache_entries: Option<Spanned<u64>>,
}

/// `[upstreams.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// `http://host:port`, without a path: the upstream receives the path the client sent.
    /// One endpoint; `endpoints` lists several instead.
    pub url: Option<Spanned<String>>,
    /// Several instances of the upstream, each `http://host:port` (all http or all https).
    pub endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    /// The endpoints are every A/AAAA record of a DNS name, looked up again and again.
    pub discovery: Option<Spanned<FileDiscovery>>,
    /// How requests spread over the endpoints: `least_request` (default) or `round_robin`.
    pub balance: Option<Spanned<String>>,
    /// Active health checks of every endpoint.
    pub health_check: Option<Spanned<FileHealthCheck>>,
    /// Passive ejection of an endpoint that keeps failing.
    pub eject: Option<Spanned<FileEject>>,
    /// Time allowed from sending the request to the response head (504 beyond it).
    pub timeout_ms: Option<Spanned<u64>>,
    /// Time allowed to open a TCP connection (502 beyond it).
    pub connect_timeout_ms: Option<Spanned<u64>>,
    /// A pooled idle connection is closed after this long; keep it below the upstream's own
    /// keep-alive timeout so the gateway never reuses a connection the upstream is closing.
    pub pool_idle_timeout_ms: Option<Spanned<u64>>,
    /// Idle connections kept per upstream.
    pub pool_max_idle: Option<Spanned<u64>>,
    /// A circuit breaker for this upstream; none when absent.
    pub breaker: Option<Spanned<FileBreaker>>,
    /// The `Host` it is sent: `client` (default), `upstream` (the url's host:port) or a
    /// literal host.
    pub host_header: Option<Spanned<String>>,
    /// `http1` (default) or `http2` (prior knowledge over `http://`, ALPN over `https://`).
    pub protocol: Option<Spanned<String>>,
    /// PEM CA certificates an `https://` upstream is verified against (default: the system's).
    pub ca_file: Option<Spanned<String>>,
    /// Name verified and sent as SNI, when it differs from the url's host.
    pub server_name: Option<Spanned<String>>,
    /// Client certificate for mutual TLS, with `client_key_file`.
    pub client_cert_file: Option<Spanned<String>>,
    /// Client key for mutual TLS, with `client_cert_file`.
    pub client_key_file: Option<Spanned<String>>,
}

/// `discovery = { dns = "NAME:PORT", refresh_seconds = 5, nameservers = ["IP:PORT"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    /// `NAME:PORT` (http), or `https://NAME:PORT`.
    pub dns: Spanned<String>,
    /// Between two lookups.
    pub refresh_seconds: Option<Spanned<u64>>,
    /// DNS servers to ask, `IP:PORT` (default: the system's resolv.conf).
    pub nameservers: Option<Vec<Spanned<String>>>,
}

/// `health_check = { path, interval_ms, timeout_ms, unhealthy_after, healthy_after }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    /// Requested with GET; any 2xx passes.
    pub path: Spanned<String>,
    /// Between two checks of an endpoint (jittered).
    pub interval_ms: Option<Spanned<u64>>,
    /// A check without a response head in this time fails.
    pub timeout_ms: Option<Spanned<u64>>,
    /// Failed checks in a row that take an endpoint out.
    pub unhealthy_after: Option<Spanned<u64>>,
    /// Passed checks in a row that bring it back.
    pub healthy_after: Option<Spanned<u64>>,
}

/// `eject = { consecutive_failures, seconds }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEject {
    /// Failed responses in a row (connect errors, failure statuses) that eject an endpoint.
    pub consecutive_failures: Option<Spanned<u64>>,
    /// How long the ejection lasts.
    pub seconds: Option<Spanned<u64>>,
}

/// `breaker = { failures = 5, window_seconds = 60, open_seconds = 30, half_open_requests = 1 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBreaker {
    /// Failures within the window that open the breaker.
    pub failures: Option<Spanned<u64>>,
    /// The sliding window, seconds.
    pub window_seconds: Option<Spanned<u64>>,
    /// How long the breaker stays open, seconds.
    pub open_seconds: Option<Spanned<u64>>,
    /// Trials admitted at once while half-open.
    pub half_open_requests: Option<Spanned<u64>>,
    /// Also open at this failure percentage over the window ...
    pub error_rate_percent: Option<Spanned<f64>>,
    /// ... once it holds at least this many requests.
    pub min_requests: Option<Spanned<u64>>,
    /// Statuses that count as failures: `"500-599"`, `"429"`; default `["500-599"]`.
    pub failure_statuses: Option<Vec<Spanned<String>>>,
}

/// `fallback = "safe" | "never"`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileFallback {
    /// Replay on the monolith when that is safe.
    Safe,
    /// Never replay.
    Never,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Stable identifier: metric label, log field; `[a-z0-9_-]`, unique.
    pub name: Spanned<String>,
    /// Whole-segment path prefix, lower case, e.g. `/api/users`.
    pub prefix: Spanned<String>,
    /// Upstream of the extracted service that answers this prefix.
    pub service: Spanned<String>,
    /// The route's monolith; defaults to `server.default_upstream`.
    pub monolith: Option<Spanned<String>>,
    /// What the route asks of the caller; default `required` when `[auth]` exists.
    pub auth: Option<Spanned<FileAuthMode>>,
    /// Share of keyed callers sent to the service, 0 to 100 in steps of 0.01; default 100.
    pub rollout_percent: Option<Spanned<f64>>,
    /// `claim:NAME | header:NAME | cookie:NAME | ip`; default `claim:sub` on routes that
    /// check tokens.
    pub sticky: Option<Spanned<String>>,
    /// Segments that always get the service.
    pub segments: Option<Vec<Spanned<String>>>,
    /// Side for callers without a sticky key while the dial is partial; default monolith.
    pub anonymous: Option<Spanned<FileSide>>,
    /// Replay failed service requests on the monolith when safe; default `safe`.
    pub fallback: Option<Spanned<FileFallback>>,
    /// Largest body kept for a replay after sending (bytes); default 65536.
    pub fallback_body_limit: Option<Spanned<u64>>,
}
