//! Validation and compilation: [`FileConfig`] -> [`Snapshot`].
//!
//! Validation collects every problem before giving up, so `gateway check` lists them all
//! at once, each with line, column and key path. Nothing here panics on input.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gateway_plugin_aggregate::{Aggregate, Part, PartSource};
use gateway_plugin_api::Target;
use gateway_plugin_api::{DEFAULT_ROUTE_LABEL, Plugin, RouteId};
use gateway_plugin_auth::{AuthMode, AuthPlugin, Authenticator, KeySet, SystemClock, Verifier};
use gateway_plugin_breaker::{Breaker, BreakerSettings, ErrorRate};
use gateway_plugin_metrics::{RequestMetrics, RouteLabels};
use gateway_plugin_rollout::{BasisPoints, ClaimTest, RoutePolicy, Segment, SegmentMatch, Sticky};
use http::HeaderName;
use http::Uri;
use http::uri::Authority;
use ipnet::IpNet;
use jsonwebtoken::Algorithm;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::defaults::*;
use super::error::{ConfigError, Diagnostic, SourceMap};
use super::file::{
    FileAggregate, FileAudience, FileAuth, FileAuthMode, FileBreaker, FileConfig, FileFallback, FileRoute, FileSegment,
    FileServer, FileSide, FileUpstream,
};
use crate::normalize::normalize_path;
use crate::router::Router;
use crate::snapshot::{ConfigMeta, Fallback, PhasePlugins, Route, ServerSettings, Snapshot};
use crate::upstream::{Upstream, UpstreamSettings};

/// Most worker threads accepted.
const MAX_WORKERS: u64 = 1024;
/// Largest accepted `max_header_bytes` (bytes): 1 MiB.
const MAX_MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// Most headers accepted for `max_headers`.
const MAX_MAX_HEADERS: u64 = 10_000;
/// Longest accepted timeout of any kind (milliseconds): one hour.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Reads and compiles the config file at `path`.
pub fn load(path: &Path, version: u64) -> Result<Snapshot, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    compile(path, &text, version)
}

/// Validates `text` (the contents of `path`) and compiles it into a snapshot.
pub fn compile(path: &Path, text: &str, version: u64) -> Result<Snapshot, ConfigError> {
    compile_with(path, text, version, None)
}

/// Reads the file at `path` for a reload of `previous`: `Ok(None)` when its bytes are what
/// `previous` was built from, else the next snapshot (version + 1). Upstreams whose
/// settings did not change keep their connection pools, and an unchanged `[auth]` keeps
/// its cache of verified tokens. Settings that cannot change while running (listen
/// addresses, workers) are errors.
pub fn load_next(path: &Path, previous: &Snapshot) -> Result<Option<Snapshot>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    if sha256_hex(text.as_bytes()) == previous.meta.checksum {
        return Ok(None);
    }
    compile_with(path, &text, previous.meta.version + 1, Some(previous)).map(Some)
}

fn compile_with(path: &Path, text: &str, version: u64, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
    let map = SourceMap::new(text);
    let invalid = |diagnostics: Vec<Diagnostic>| ConfigError::Invalid { path: path.to_owned(), diagnostics };
    let file: FileConfig = toml::from_str(text).map_err(|e| invalid(vec![map.at(e.span(), e.message())]))?;

    let config_dir = path.parent().unwrap_or(Path::new("."));
    let mut checker = Checker { map: &map, config_dir, previous, diagnostics: Vec::new() };
    let checked = checker.check(&file);
    if !checker.diagnostics.is_empty() {
        let mut diagnostics = checker.diagnostics;
        diagnostics.sort_by_key(|d| (d.line, d.column));
        return Err(invalid(diagnostics));
    }
    let checked = checked.expect("a config without diagnostics is complete");
    let meta = ConfigMeta {
        version,
        source: path.to_owned(),
        checksum: sha256_hex(text.as_bytes()),
        loaded_at: SystemTime::now(),
    };
    Ok(build(checked, meta, previous))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A config that passed every check.
struct Checked {
    aggregates: Vec<(Aggregate, AuthMode)>,
    server: ServerSettings,
    default_upstream: String,
    default_auth: AuthMode,
    auth: Option<Authenticator>,
    upstreams: Vec<(UpstreamSettings, Authority)>,
    routes: Vec<CheckedRoute>,
}

struct CheckedRoute {
    name: String,
    prefix: String,
    service: String,
    monolith: String,
    auth: AuthMode,
    policy: RoutePolicy,
    fallback: Fallback,
}

struct Checker<'a> {
    map: &'a SourceMap<'a>,
    /// Relative key-file paths are resolved against the config file's directory.
    config_dir: &'a Path,
    /// The snapshot being served, when this is a reload.
    previous: Option<&'a Snapshot>,
    diagnostics: Vec<Diagnostic>,
}

/// Headers a claim may not be copied into: they steer routing or framing.
const RESERVED_CLAIM_HEADERS: &[&str] =
    &["authorization", "host", "content-length", "transfer-encoding", "connection", "cookie", "x-request-id"];

fn span<T>(value: &Spanned<T>) -> Range<usize> {
    value.span()
}

impl Checker<'_> {
    fn error(&mut self, at: Range<usize>, message: impl Into<String>) {
        self.diagnostics.push(self.map.at(Some(at), message));
    }

    fn check(&mut self, file: &FileConfig) -> Option<Checked> {
        let upstreams = self.check_upstreams(&file.upstreams);
        let names: HashSet<&str> = file.upstreams.keys().map(|k| k.get_ref().as_str()).collect();
        let defined = || {
            let mut list: Vec<&str> = names.iter().copied().collect();
            list.sort_unstable();
            if list.is_empty() { "none are defined".to_owned() } else { format!("defined: {}", list.join(", ")) }
        };
        let known_upstream = |checker: &mut Self, name: &Spanned<String>| {
            if !names.contains(name.get_ref().as_str()) {
                checker.error(span(name), format!("unknown upstream \"{}\" ({})", name.get_ref(), defined()));
            }
        };
        known_upstream(self, &file.server.default_upstream);
        let server = self.check_server(&file.server, &file.upstreams);

        let auth = file.auth.as_ref().and_then(|auth| self.check_auth(auth));
        let has_auth = file.auth.is_some();
        let default_auth = self.auth_mode(&file.server.default_auth, has_auth, AuthMode::Off);

        let segments = self.check_segments(&file.segments);
        let mut route_names = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut routes = Vec::new();
        for route in &file.routes {
            known_upstream(self, &route.service);
            if let Some(monolith) = &route.monolith {
                known_upstream(self, monolith);
            }
            let default_mode = if has_auth { AuthMode::Required } else { AuthMode::Off };
            let mode = self.auth_mode(&route.auth, has_auth, default_mode);
            let policy = self.check_policy(route, mode, &segments);
            routes.push(self.check_route(route, mode, &mut route_names, &mut prefixes).zip(policy).map(
                |(mut checked, policy)| {
                    checked.policy = policy;
                    checked
                },
            ));
        }
        let route_names_in_file: HashSet<&str> = file.routes.iter().map(|r| r.name.get_ref().as_str()).collect();
        let default_mode = if has_auth { AuthMode::Required } else { AuthMode::Off };
        let mut aggregate_paths = HashSet::new();
        let mut aggregates = Vec::new();
        for aggregate in &file.aggregates {
            let mode = self.auth_mode(&aggregate.auth, has_auth, default_mode);
            let checked =
                self.check_aggregate(aggregate, &mut route_names, &names, &route_names_in_file, &mut aggregate_paths);
            aggregates.extend(checked.map(|a| (a, mode)));
        }
        Some(Checked {
            aggregates,
            server: server?,
            default_upstream: file.server.default_upstream.get_ref().clone(),
            default_auth,
            auth: if has_auth { Some(auth?) } else { None },
            upstreams,
            routes: routes.into_iter().collect::<Option<Vec<_>>>()?,
        })
    }

    /// An `auth` mode; `required` and `optional` need an `[auth]` section to check with.
    fn auth_mode(&mut self, mode: &Option<Spanned<FileAuthMode>>, has_auth: bool, default: AuthMode) -> AuthMode {
        let Some(mode) = mode else {
            return default;
        };
        match mode.get_ref() {
            FileAuthMode::Off => AuthMode::Off,
            FileAuthMode::Required | FileAuthMode::Optional if !has_auth => {
                self.error(span(mode), "checking tokens needs an [auth] section (algorithms and keys)");
                AuthMode::Off
            }
            FileAuthMode::Required => AuthMode::Required,
            FileAuthMode::Optional => AuthMode::Optional,
        }
    }

    fn check_auth(&mut self, auth: &Spanned<FileAuth>) -> Option<Authenticator> {
        let section = span(auth);
        let auth = auth.get_ref();
        let keys = self.load_keys(auth, section);
        let algorithms = self.check_algorithms(&auth.algorithms, keys.as_ref());
        let leeway = self.bounded(&auth.leeway_seconds, DEFAULT_LEEWAY_SECONDS, 0, MAX_LEEWAY_SECONDS, "seconds");
        let cache_entries = self.bounded(&auth.cache_entries, DEFAULT_TOKEN_CACHE_ENTRIES, 0, 100_000_000, "entries");
        let audiences = match auth.audience.as_ref().map(|a| (a.get_ref(), span(a))) {
            None => Vec::new(),
            Some((FileAudience::One(one), _)) => vec![one.clone()],
            Some((FileAudience::Many(many), at)) => {
                if many.is_empty() {
                    self.error(at, "list at least one audience, or leave audience out to skip the check");
                }
                many.clone()
            }
        };
        let mut claims_to_headers = Vec::new();
        for (claim, header) in auth.claims_to_headers.iter().flatten() {
            let name = header.get_ref();
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(parsed) if RESERVED_CLAIM_HEADERS.contains(&parsed.as_str()) => {
                    self.error(
                        span(header),
                        format!("\"{name}\" cannot carry a claim: the gateway or HTTP relies on it"),
                    );
                }
                Ok(parsed) => claims_to_headers.push((claim.clone(), parsed)),
                Err(_) => self.error(span(header), format!("\"{name}\" is not a valid header name")),
            }
        }
        let verifier =
            Verifier::new(keys?, algorithms?, auth.issuer.as_ref().map(|i| i.get_ref().clone()), audiences, leeway);
        let cookie = auth.cookie.as_ref().map(|c| c.get_ref().clone());
        Some(Authenticator::new(verifier, claims_to_headers, cookie, cache_entries, Arc::new(SystemClock)))
    }

    fn load_keys(&mut self, auth: &FileAuth, section: Range<usize>) -> Option<KeySet> {
        let sources = [&auth.jwks_file, &auth.public_key_file, &auth.hs256_secret_env];
        let given: Vec<&Spanned<String>> = sources.iter().filter_map(|s| s.as_ref()).collect();
        if given.len() != 1 {
            let at = given.get(1).map_or(section, |second| span(second));
            self.error(at, "give exactly one key source: jwks_file, public_key_file or hs256_secret_env");
            return None;
        }
        let read = |checker: &mut Self, file: &Spanned<String>| -> Option<Vec<u8>> {
            let path = checker.config_dir.join(file.get_ref());
            match std::fs::read(&path) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    checker.error(span(file), format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        };
        let (result, at) = if let Some(file) = &auth.jwks_file {
            let bytes = read(self, file)?;
            (KeySet::from_jwks(&String::from_utf8_lossy(&bytes)), span(file))
        } else if let Some(file) = &auth.public_key_file {
            (KeySet::from_pem(&read(self, file)?), span(file))
        } else {
            let variable = auth.hs256_secret_env.as_ref().expect("exactly one source is set");
            match std::env::var(variable.get_ref()) {
                Ok(secret) => (KeySet::from_secret(secret.as_bytes()), span(variable)),
                Err(_) => {
                    self.error(span(variable), format!("environment variable {} is not set", variable.get_ref()));
                    return None;
                }
            }
        };
        result.map_err(|e| self.error(at, e.to_string())).ok()
    }

    fn check_algorithms(
        &mut self,
        list: &Spanned<Vec<Spanned<String>>>,
        keys: Option<&KeySet>,
    ) -> Option<Vec<Algorithm>> {
        const SUPPORTED: &str = "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512";
        if list.get_ref().is_empty() {
            self.error(span(list), format!("list at least one algorithm ({SUPPORTED})"));
            return None;
        }
        let mut algorithms = Vec::new();
        let mut ok = true;
        for name in list.get_ref() {
            let text = name.get_ref();
            match text.parse::<Algorithm>() {
                _ if text.eq_ignore_ascii_case("none") => {
                    self.error(span(name), "\"none\" is never accepted: unsigned tokens prove nothing");
                    ok = false;
                }
                Ok(algorithm) => {
                    if keys.is_some_and(|k| !k.supports(algorithm)) {
                        self.error(span(name), format!("no configured key can verify {text}"));
                        ok = false;
                    }
                    algorithms.push(algorithm);
                }
                Err(_) => {
                    self.error(span(name), format!("unknown algorithm \"{text}\" (supported: {SUPPORTED})"));
                    ok = false;
                }
            }
        }
        ok.then_some(algorithms)
    }

    /// An optional millisecond/byte/count setting within `min..=max`, or its default.
    fn bounded(&mut self, value: &Option<Spanned<u64>>, default: u64, min: u64, max: u64, unit: &str) -> u64 {
        let Some(value) = value else {
            return default;
        };
        let v = *value.get_ref();
        if v < min || v > max {
            self.error(span(value), format!("must be between {min} and {max} {unit}, got {v}"));
            return default;
        }
        v
    }

    fn socket_addr(&mut self, value: &Spanned<String>) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(span(value), format!("\"{}\" is not IP:PORT (for example 127.0.0.1:8080)", value.get_ref()));
                None
            }
        }
    }

    fn check_server(
        &mut self,
        server: &FileServer,
        upstreams: &BTreeMap<Spanned<String>, FileUpstream>,
    ) -> Option<ServerSettings> {
        let listen = self.socket_addr(&server.listen);
        let admin_listen = match &server.admin_listen {
            Some(admin) => self.socket_addr(admin),
            None => Some(DEFAULT_ADMIN_LISTEN.parse().expect("the default admin address parses")),
        };
        if let (Some(l), Some(a), Some(admin)) = (listen, admin_listen, &server.admin_listen)
            && l == a
            && l.port() != 0
        {
            self.error(span(admin), "must differ from server.listen");
        }
        let default_workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let workers = self.bounded(&server.workers, default_workers, 1, MAX_WORKERS, "threads");
        let max_header_bytes = self.bounded(
            &server.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
            MIN_MAX_HEADER_BYTES,
            MAX_MAX_HEADER_BYTES,
            "bytes",
        );
        let max_headers = self.bounded(&server.max_headers, DEFAULT_MAX_HEADERS, 1, MAX_MAX_HEADERS, "headers");
        let max_body_bytes = self.bounded(&server.max_body_bytes, DEFAULT_MAX_BODY_BYTES, 0, u64::MAX, "bytes");
        let header_read_timeout =
            self.bounded(&server.header_read_timeout_ms, DEFAULT_HEADER_READ_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
        let idle_timeout = self.bounded(&server.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
        let shutdown_grace =
            self.bounded(&server.shutdown_grace_ms, DEFAULT_SHUTDOWN_GRACE_MS, 0, MAX_TIMEOUT_MS, "ms");

        // An idle client connection is one with no bytes moving; while the gateway waits for
        // a slow upstream nothing moves, so the idle limit must outlast every upstream timeout.
        for (name, upstream) in upstreams {
            let timeout = upstream.timeout_ms.as_ref().map_or(DEFAULT_UPSTREAM_TIMEOUT_MS, |t| *t.get_ref());
            if timeout >= idle_timeout {
                let at = server.idle_timeout_ms.as_ref().map_or_else(|| span(&server.listen), span);
                self.error(
                    at,
                    format!(
                        "server.idle_timeout_ms ({idle_timeout}) must be longer than upstreams.{}.timeout_ms ({timeout}), \
                         or slow responses are cut off",
                        name.get_ref()
                    ),
                );
            }
        }
        // A running gateway cannot rebind its listeners or resize its runtime.
        if let Some(previous) = self.previous.map(|p| &p.server) {
            let fixed = [
                (
                    "server.listen",
                    listen.map(|a| a.to_string()),
                    previous.listen.to_string(),
                    Some(span(&server.listen)),
                ),
                (
                    "server.admin_listen",
                    admin_listen.map(|a| a.to_string()),
                    previous.admin_listen.to_string(),
                    server.admin_listen.as_ref().map(span),
                ),
                (
                    "server.workers",
                    Some(workers.to_string()),
                    previous.workers.to_string(),
                    server.workers.as_ref().map(span),
                ),
            ];
            for (key, now, before, at) in fixed {
                if now.as_ref().is_some_and(|now| *now != before) {
                    self.error(
                        at.unwrap_or_else(|| span(&server.listen)),
                        format!(
                            "{key} changed from {before} to {}: it cannot change while the gateway runs; \
                             restart to apply it (the running config keeps serving)",
                            now.unwrap_or_default()
                        ),
                    );
                }
            }
        }
        let mut trusted_proxies = Vec::new();
        for entry in server.trusted_proxies.iter().flatten() {
            let text = entry.get_ref();
            let parsed = text.parse::<IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => self.error(span(entry), format!("\"{text}\" is not an IP address or CIDR (10.0.0.0/8)")),
            }
        }
        Some(ServerSettings {
            trusted_proxies,
            listen: listen?,
            admin_listen: admin_listen?,
            workers: workers as usize,
            max_header_bytes: max_header_bytes as usize,
            max_headers: max_headers as usize,
            max_body_bytes,
            header_read_timeout: Duration::from_millis(header_read_timeout),
            idle_timeout: Duration::from_millis(idle_timeout),
            shutdown_grace: Duration::from_millis(shutdown_grace),
            access_log: server.access_log.unwrap_or(true),
        })
    }

    fn check_upstreams(
        &mut self,
        upstreams: &BTreeMap<Spanned<String>, FileUpstream>,
    ) -> Vec<(UpstreamSettings, Authority)> {
        let mut out = Vec::new();
        for (name, upstream) in upstreams {
            if !is_identifier(name.get_ref()) {
                self.error(span(name), "upstream names use only a-z, 0-9, '-' and '_'");
            }
            let authority = self.upstream_authority(&upstream.url);
            let timeout = self.bounded(&upstream.timeout_ms, DEFAULT_UPSTREAM_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
            let connect_timeout =
                self.bounded(&upstream.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
            let pool_idle_timeout =
                self.bounded(&upstream.pool_idle_timeout_ms, DEFAULT_POOL_IDLE_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
            let pool_max_idle = self.bounded(&upstream.pool_max_idle, DEFAULT_POOL_MAX_IDLE, 0, 65_536, "connections");
            let (breaker, failure_statuses) = match &upstream.breaker {
                Some(breaker) => self.check_breaker(breaker.get_ref()),
                None => (None, vec![(500, 599)]),
            };
            if let Some(authority) = authority {
                let settings = UpstreamSettings {
                    name: name.get_ref().clone(),
                    url: upstream.url.get_ref().clone(),
                    timeout: Duration::from_millis(timeout),
                    connect_timeout: Duration::from_millis(connect_timeout),
                    pool_idle_timeout: Duration::from_millis(pool_idle_timeout),
                    pool_max_idle: pool_max_idle as usize,
                    breaker,
                    failure_statuses,
                };
                out.push((settings, authority));
            }
        }
        out
    }

    fn check_breaker(&mut self, breaker: &FileBreaker) -> (Option<BreakerSettings>, Vec<(u16, u16)>) {
        let failures = self.bounded(&breaker.failures, DEFAULT_BREAKER_FAILURES, 1, 1_000_000, "failures");
        let window = self.bounded(&breaker.window_seconds, DEFAULT_BREAKER_WINDOW_SECONDS, 1, 3_600, "seconds");
        let open = self.bounded(&breaker.open_seconds, DEFAULT_BREAKER_OPEN_SECONDS, 1, 3_600, "seconds");
        let half_open =
            self.bounded(&breaker.half_open_requests, DEFAULT_BREAKER_HALF_OPEN_REQUESTS, 1, 10_000, "requests");
        let min_requests = self.bounded(&breaker.min_requests, DEFAULT_BREAKER_MIN_REQUESTS, 1, 1_000_000, "requests");
        let error_rate = breaker.error_rate_percent.as_ref().and_then(|rate| {
            let percent = *rate.get_ref();
            if percent > 0.0 && percent <= 100.0 {
                Some(ErrorRate { percent, min_requests: min_requests as u32 })
            } else {
                self.error(span(rate), format!("must be above 0 and at most 100, got {percent}"));
                None
            }
        });
        if breaker.min_requests.is_some() && breaker.error_rate_percent.is_none() {
            let at = breaker.min_requests.as_ref().map(span).expect("checked just above");
            self.error(at, "min_requests applies to error_rate_percent, which is not set");
        }
        let mut statuses = Vec::new();
        for entry in breaker.failure_statuses.iter().flatten() {
            let text = entry.get_ref();
            let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|code| (100..=599).contains(code));
            let range = match text.split_once('-') {
                Some((low, high)) => parse(low).zip(parse(high)).filter(|(l, h)| l <= h),
                None => parse(text).map(|code| (code, code)),
            };
            match range {
                Some(range) => statuses.push(range),
                None => {
                    self.error(span(entry), format!("\"{text}\" is not a status (\"503\") or a range (\"500-599\")"))
                }
            }
        }
        if breaker.failure_statuses.is_none() {
            statuses.push((500, 599));
        }
        let settings = BreakerSettings {
            failures: failures as u32,
            window: Duration::from_secs(window),
            open_for: Duration::from_secs(open),
            half_open_requests: half_open as u32,
            error_rate,
        };
        (Some(settings), statuses)
    }

    fn upstream_authority(&mut self, url: &Spanned<String>) -> Option<Authority> {
        let text = url.get_ref();
        let uri = match text.parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => {
                self.error(span(url), format!("\"{text}\" is not a url ({e}); write it as http://HOST:PORT"));
                return None;
            }
        };
        let problem = match (uri.scheme_str(), uri.authority()) {
            (Some("https"), _) => {
                Some("https upstreams are not supported yet; use http:// (TLS to upstreams is planned)")
            }
            (Some("http"), Some(a)) if a.as_str().contains('@') => Some("credentials in the url are not allowed"),
            (Some("http"), Some(_)) if !matches!(uri.path(), "" | "/") || uri.query().is_some() => {
                Some("the url must not have a path or query: the upstream receives the path the client sent")
            }
            (Some("http"), Some(_)) => None,
            _ => Some("write the url as http://HOST:PORT"),
        };
        if let Some(problem) = problem {
            self.error(span(url), format!("\"{text}\": {problem}"));
            return None;
        }
        uri.authority().cloned()
    }

    fn check_segments(&mut self, segments: &BTreeMap<Spanned<String>, FileSegment>) -> BTreeMap<String, Arc<Segment>> {
        let mut checked = BTreeMap::new();
        for (name, segment) in segments {
            if !is_identifier(name.get_ref()) {
                self.error(span(name), "segment names use only a-z, 0-9, '-' and '_'");
                continue;
            }
            let tests: Vec<(&str, Range<usize>)> = [
                segment.equals.as_ref().map(|v| ("equals", span(v))),
                segment.ends_with.as_ref().map(|v| ("ends_with", span(v))),
                segment.contains.as_ref().map(|v| ("contains", span(v))),
                segment.one_of.as_ref().map(|v| ("one_of", span(v))),
            ]
            .into_iter()
            .flatten()
            .collect();
            let matcher = match (&segment.claim, &segment.header) {
                (Some(claim), None) => {
                    if tests.len() != 1 {
                        let at = tests.get(1).map_or_else(|| span(claim), |(_, at)| at.clone());
                        self.error(at, "a claim segment needs exactly one of equals, ends_with, contains, one_of");
                        continue;
                    }
                    let text = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.get_ref().clone());
                    let test = if let Some(v) = text(&segment.equals) {
                        ClaimTest::Equals(v)
                    } else if let Some(v) = text(&segment.ends_with) {
                        ClaimTest::EndsWith(v)
                    } else if let Some(v) = text(&segment.contains) {
                        ClaimTest::Contains(v)
                    } else {
                        ClaimTest::OneOf(segment.one_of.as_ref().map(|v| v.get_ref().clone()).unwrap_or_default())
                    };
                    SegmentMatch::Claim { claim: claim.get_ref().clone(), test }
                }
                (None, Some(header)) => {
                    let Ok(name) = HeaderName::from_bytes(header.get_ref().as_bytes()) else {
                        self.error(span(header), format!("\"{}\" is not a valid header name", header.get_ref()));
                        continue;
                    };
                    match (&segment.equals, tests.len()) {
                        (Some(equals), 1) => SegmentMatch::Header { header: name, equals: equals.get_ref().clone() },
                        _ => {
                            self.error(span(header), "a header segment takes exactly one test: equals");
                            continue;
                        }
                    }
                }
                (Some(_), Some(header)) => {
                    self.error(span(header), "a segment tests either a claim or a header, not both");
                    continue;
                }
                (None, None) => {
                    self.error(span(name), "a segment needs claim = \"NAME\" or header = \"NAME\"");
                    continue;
                }
            };
            checked.insert(
                name.get_ref().clone(),
                Arc::new(Segment { name: Arc::from(name.get_ref().as_str()), matcher }),
            );
        }
        checked
    }

    fn check_aggregate(
        &mut self,
        aggregate: &FileAggregate,
        names: &mut HashSet<String>,
        upstreams: &HashSet<&str>,
        routes: &HashSet<&str>,
        paths: &mut HashSet<String>,
    ) -> Option<Aggregate> {
        let mut ok = true;
        let name = aggregate.name.get_ref();
        if !is_identifier(name) || name.starts_with('_') {
            self.error(
                span(&aggregate.name),
                "aggregate names use only a-z, 0-9, '-' and '_', and do not start with '_'",
            );
            ok = false;
        } else if !names.insert(name.clone()) {
            self.error(span(&aggregate.name), format!("another route or aggregate is named \"{name}\""));
            ok = false;
        }
        let path = aggregate.path.get_ref();
        match prefix_problem(path) {
            Some(problem) => {
                self.error(span(&aggregate.path), format!("\"{path}\": {}", problem.replace("prefix", "path")));
                ok = false;
            }
            None if !paths.insert(path.to_ascii_lowercase()) => {
                self.error(span(&aggregate.path), format!("another aggregate answers \"{path}\""));
                ok = false;
            }
            None => {}
        }
        let timeout = self.bounded(&aggregate.timeout_ms, DEFAULT_AGGREGATE_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
        let max_part_bytes =
            self.bounded(&aggregate.max_part_bytes, DEFAULT_MAX_PART_BYTES, 1, 64 * 1024 * 1024, "bytes");
        if aggregate.parts.get_ref().is_empty() {
            self.error(span(&aggregate.parts), "list at least one part");
            ok = false;
        }
        let mut part_names = HashSet::new();
        let mut parts = Vec::new();
        for part in aggregate.parts.get_ref() {
            let part_name = part.name.get_ref();
            if part_name.is_empty() || part_name.starts_with('_') || !part_names.insert(part_name.clone()) {
                self.error(
                    span(&part.name),
                    format!("part names are unique and do not start with '_' (\"{part_name}\")"),
                );
                ok = false;
            }
            let source = match (&part.upstream, &part.route) {
                (Some(upstream), None) if upstreams.contains(upstream.get_ref().as_str()) => {
                    Some(PartSource::Upstream(Arc::from(upstream.get_ref().as_str())))
                }
                (Some(upstream), None) => {
                    self.error(span(upstream), format!("unknown upstream \"{}\"", upstream.get_ref()));
                    None
                }
                (None, Some(route)) if routes.contains(route.get_ref().as_str()) => {
                    Some(PartSource::Route(Arc::from(route.get_ref().as_str())))
                }
                (None, Some(route)) => {
                    self.error(span(route), format!("unknown route \"{}\"", route.get_ref()));
                    None
                }
                _ => {
                    self.error(span(&part.name), "a part names exactly one of upstream or route");
                    None
                }
            };
            let part_path = part.path.get_ref();
            if !part_path.starts_with('/') || part_path.parse::<http::uri::PathAndQuery>().is_err() {
                self.error(span(&part.path), format!("\"{part_path}\" is not a path (and query) starting with '/'"));
                ok = false;
            }
            let part_timeout = match &part.timeout_ms {
                Some(t) if *t.get_ref() == 0 || *t.get_ref() > timeout => {
                    self.error(
                        span(t),
                        format!("must be between 1 and the aggregate's timeout_ms ({timeout}), got {}", t.get_ref()),
                    );
                    timeout
                }
                Some(t) => *t.get_ref(),
                None => timeout,
            };
            let default =
                part.default.as_ref().map(|value| serde_json::to_value(value).unwrap_or(serde_json::Value::Null));
            if let Some(source) = source {
                parts.push(Part {
                    name: Arc::from(part_name.as_str()),
                    source,
                    path: part_path.clone(),
                    required: part.required.unwrap_or(true),
                    timeout: Duration::from_millis(part_timeout),
                    default,
                });
            } else {
                ok = false;
            }
        }
        ok.then(|| Aggregate {
            name: Arc::from(name.as_str()),
            path: path.clone(),
            timeout: Duration::from_millis(timeout),
            max_part_bytes: max_part_bytes as usize,
            parts,
        })
    }

    /// The route's rollout: dial, sticky key, segments and the side for keyless callers.
    fn check_policy(
        &mut self,
        route: &FileRoute,
        auth: AuthMode,
        segments: &BTreeMap<String, Arc<Segment>>,
    ) -> Option<RoutePolicy> {
        let mut ok = true;
        let percent = match &route.rollout_percent {
            None => BasisPoints::ALL,
            Some(value) => match BasisPoints::from_percent(*value.get_ref()) {
                Some(percent) => percent,
                None => {
                    self.error(span(value), format!("must be 0 to 100 in steps of 0.01, got {}", value.get_ref()));
                    ok = false;
                    BasisPoints::ALL
                }
            },
        };
        let claims_available = auth != AuthMode::Off;
        let sticky = match &route.sticky {
            Some(text) => match text.get_ref().parse::<Sticky>() {
                Ok(Sticky::Claim(_)) if !claims_available => {
                    self.error(
                        span(text),
                        "claims exist only on routes that check tokens; this route has auth = \"off\"",
                    );
                    ok = false;
                    None
                }
                Ok(sticky) => Some(sticky),
                Err(e) => {
                    self.error(span(text), e.to_string());
                    ok = false;
                    None
                }
            },
            None if claims_available => Some(Sticky::Claim("sub".to_owned())),
            None => None,
        };
        let partial = percent != BasisPoints::ZERO && percent != BasisPoints::ALL;
        if partial && sticky.is_none() && ok {
            let at = route.rollout_percent.as_ref().map_or_else(|| span(&route.name), span);
            self.error(
                at,
                "a partial rollout needs a sticky key: set sticky = \"header:NAME\", \"cookie:NAME\" or \"ip\"",
            );
            ok = false;
        }
        let mut route_segments = Vec::new();
        for name in route.segments.iter().flatten() {
            match segments.get(name.get_ref()) {
                Some(segment) if matches!(segment.matcher, SegmentMatch::Claim { .. }) && !claims_available => {
                    self.error(
                        span(name),
                        format!("segment {} tests a claim, and this route has auth = \"off\"", name.get_ref()),
                    );
                    ok = false;
                }
                Some(segment) => route_segments.push(segment.clone()),
                None => {
                    let known: Vec<&str> = segments.keys().map(String::as_str).collect();
                    let known = if known.is_empty() {
                        "none are defined".to_owned()
                    } else {
                        format!("defined: {}", known.join(", "))
                    };
                    self.error(span(name), format!("unknown segment \"{}\" ({known})", name.get_ref()));
                    ok = false;
                }
            }
        }
        let anonymous = match route.anonymous.as_ref().map(|a| *a.get_ref()) {
            Some(FileSide::Service) => Target::Service,
            Some(FileSide::Monolith) | None => Target::Monolith,
        };
        ok.then(|| RoutePolicy {
            route: Arc::from(route.name.get_ref().as_str()),
            percent,
            sticky,
            segments: route_segments,
            anonymous,
        })
    }

    fn check_route(
        &mut self,
        route: &FileRoute,
        auth: AuthMode,
        names: &mut HashSet<String>,
        prefixes: &mut HashSet<String>,
    ) -> Option<CheckedRoute> {
        let name = route.name.get_ref();
        let fallback_settings = Fallback {
            enabled: !matches!(route.fallback.as_ref().map(|f| *f.get_ref()), Some(FileFallback::Never)),
            body_limit: self.bounded(
                &route.fallback_body_limit,
                DEFAULT_FALLBACK_BODY_LIMIT,
                0,
                64 * 1024 * 1024,
                "bytes",
            ),
        };
        let mut ok = true;
        if !is_identifier(name) || name.starts_with('_') {
            self.error(span(&route.name), "route names use only a-z, 0-9, '-' and '_', and do not start with '_'");
            ok = false;
        } else if !names.insert(name.clone()) {
            self.error(span(&route.name), format!("duplicate route name \"{name}\""));
            ok = false;
        }
        let prefix = route.prefix.get_ref();
        match prefix_problem(prefix) {
            Some(problem) => {
                self.error(span(&route.prefix), format!("\"{prefix}\": {problem}"));
                ok = false;
            }
            None if !prefixes.insert(prefix.to_ascii_lowercase()) => {
                self.error(
                    span(&route.prefix),
                    format!("another route already has the prefix \"{prefix}\" (prefixes match case-insensitively)"),
                );
                ok = false;
            }
            None => {}
        }
        ok.then(|| CheckedRoute {
            name: name.clone(),
            prefix: prefix.clone(),
            service: route.service.get_ref().clone(),
            monolith: route.monolith.as_ref().map(|m| m.get_ref().clone()).unwrap_or_default(),
            auth,
            policy: RoutePolicy {
                route: Arc::from(name.as_str()),
                percent: BasisPoints::ALL,
                sticky: None,
                segments: Vec::new(),
                anonymous: Target::Monolith,
            },
            fallback: fallback_settings,
        })
    }
}

/// Why a route prefix is unusable, if it is.
fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if !prefix.starts_with('/') {
        return Some("a prefix starts with '/'");
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Some("drop the trailing '/': a prefix matches whole segments, so \"/api\" already covers \"/api/...\"");
    }
    if prefix.contains(['?', '#', ';']) {
        return Some("a prefix is a path only, without '?', '#' or ';'");
    }
    match normalize_path(prefix) {
        Ok(normal) if normal == prefix => None,
        _ => Some("a prefix must be a normalised path (no '.', '..', '//', '\\' or escapes of plain characters)"),
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn build(checked: Checked, meta: ConfigMeta, previous: Option<&Snapshot>) -> Snapshot {
    // An upstream whose settings are unchanged keeps its handle, and so its warm pool.
    let upstreams: BTreeMap<String, Arc<Upstream>> = checked
        .upstreams
        .into_iter()
        .map(|(settings, authority)| {
            let before = previous.and_then(|p| p.upstreams.get(&settings.name));
            let upstream = match before {
                Some(before) if before.settings == settings => before.clone(),
                _ => {
                    // Breaker state survives while the url is the same; new thresholds apply.
                    let breaker = settings.breaker.clone().map(|thresholds| {
                        match before.filter(|b| b.settings.url == settings.url).and_then(|b| b.breaker.clone()) {
                            Some(kept) => {
                                kept.reconfigure(thresholds);
                                kept
                            }
                            None => Breaker::new(thresholds),
                        }
                    });
                    Arc::new(Upstream::new(settings, &authority, breaker))
                }
            };
            (upstream.settings.name.clone(), upstream)
        })
        .collect();
    let upstream = |name: &str| upstreams.get(name).cloned().expect("route upstreams were checked to exist");
    let default_monolith = upstream(&checked.default_upstream);

    let mut auth_modes: Vec<AuthMode> = checked.routes.iter().map(|r| r.auth).collect();
    auth_modes.push(checked.default_auth);
    let mut routes: Vec<Route> = checked
        .routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| Route {
            id: RouteId(i),
            name: Arc::from(r.name.as_str()),
            prefix: Some(r.prefix),
            service: Some(upstream(&r.service)),
            monolith: if r.monolith.is_empty() { default_monolith.clone() } else { upstream(&r.monolith) },
            policy: Some(r.policy),
            fallback: r.fallback,
            aggregate: None,
        })
        .collect();
    for (aggregate, mode) in checked.aggregates {
        auth_modes.insert(routes.len(), mode);
        routes.push(Route {
            id: RouteId(routes.len()),
            name: aggregate.name.clone(),
            prefix: None,
            service: None,
            monolith: default_monolith.clone(),
            policy: None,
            fallback: Fallback { enabled: false, body_limit: 0 },
            aggregate: Some(Arc::new(aggregate)),
        });
    }
    let default_id = RouteId(routes.len());
    routes.push(Route {
        id: default_id,
        name: Arc::from(DEFAULT_ROUTE_LABEL),
        prefix: None,
        service: None,
        monolith: default_monolith,
        policy: None,
        fallback: Fallback { enabled: false, body_limit: 0 },
        aggregate: None,
    });
    let router = Router::new(
        routes.iter().filter_map(|r| r.prefix.as_ref().map(|p| (p.to_ascii_lowercase(), r.id))),
        default_id,
    )
    .with_exact_paths(routes.iter().filter_map(|r| r.aggregate.as_ref().map(|a| (a.path.to_ascii_lowercase(), r.id))));
    let labels: Vec<RouteLabels> = routes
        .iter()
        .map(|r| RouteLabels {
            route: r.name.to_string(),
            monolith_upstream: r.monolith.name.to_string(),
            service_upstream: r.service.as_ref().map(|s| s.name.to_string()),
            rollout_percent: r.policy.as_ref().map(|p| p.percent.percent()),
            aggregate: r.aggregate.is_some(),
        })
        .collect();
    // Handles registered before a recorder exists would count into nothing.
    crate::telemetry::metrics_handle();
    // Unchanged keys and settings keep the authenticator, and so its verified tokens.
    let authenticator =
        checked.auth.map(|new| match previous.and_then(|p| p.auth.as_ref()).filter(|old| old.equivalent(&new)) {
            Some(old) => old.clone(),
            None => Arc::new(new),
        });
    let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
    if let Some(authenticator) = &authenticator {
        plugins.push(Arc::new(AuthPlugin::new(authenticator.clone(), auth_modes.clone())));
    }
    plugins.push(Arc::new(RequestMetrics::new(&labels)));
    Snapshot {
        meta,
        server: checked.server,
        upstreams,
        routes,
        router,
        auth: authenticator,
        auth_modes,
        plugins: PhasePlugins::new(plugins),
        route_stats: std::sync::OnceLock::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_plugin_auth::AuthMode;

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:8080"
default_upstream = "monolith"

[upstreams.monolith]
url = "http://127.0.0.1:3000"

[upstreams.users]
url = "http://127.0.0.1:3001"
timeout_ms = 2000
"#;

    fn errors(text: &str) -> Vec<String> {
        match compile(Path::new("routes.toml"), text, 1) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { diagnostics, .. }) => diagnostics.iter().map(|d| d.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    /// Each snippet's errors include the expected text (line:col, key path, message).
    fn assert_each_error(cases: &[(String, &str)]) {
        for (text, expected) in cases {
            let got = errors(text);
            assert!(
                got.iter().any(|e| e.contains(expected)),
                "expected {expected:?} in {got:#?}\n--- config ---\n{text}"
            );
        }
    }

    #[test]
    fn a_good_config_compiles() {
        let text = format!("{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n");
        let snapshot = compile(Path::new("routes.toml"), &text, 7).expect("valid");
        assert_eq!(snapshot.meta.version, 7);
        assert_eq!(snapshot.routes.len(), 2);
        assert_eq!(snapshot.router.find("/api/users/1"), RouteId(0));
        assert_eq!(snapshot.router.find("/elsewhere"), RouteId(1));
        assert_eq!(&*snapshot.default_route().monolith.name, "monolith");
        assert_eq!(snapshot.server.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(snapshot.meta.checksum.len(), 64);
    }

    /// Each bad snippet yields a message with line:col, the key path and what is wrong.
    #[test]
    fn bad_snippets_name_line_column_and_key() {
        let route = |body: &str| format!("{BASE}\n[[routes]]\n{body}\n");
        let cases: Vec<(String, &str)> = vec![
            (format!("{BASE}\nbogus = 1\n"), "13:1: upstreams.users.bogus: unknown field `bogus`"),
            (
                BASE.replace("listen = \"127.0.0.1:8080\"", "listen = \"localhost\""),
                "3:10: server.listen: \"localhost\" is not IP:PORT",
            ),
            (
                BASE.replace("default_upstream = \"monolith\"", "default_upstream = \"mono\""),
                "4:20: server.default_upstream: unknown upstream \"mono\" (defined: monolith, users)",
            ),
            (
                BASE.replace("timeout_ms = 2000", "timeout_ms = 0"),
                "11:14: upstreams.users.timeout_ms: must be between 1 and 3600000 ms, got 0",
            ),
            (
                BASE.replace("timeout_ms = 2000", "timeout_ms = \"2s\""),
                "11:14: upstreams.users.timeout_ms: invalid type: string \"2s\", expected u64",
            ),
            (
                BASE.replace("http://127.0.0.1:3001", "https://127.0.0.1:3001"),
                "10:7: upstreams.users.url: \"https://127.0.0.1:3001\": https upstreams are not supported yet",
            ),
            (
                BASE.replace("http://127.0.0.1:3001", "http://127.0.0.1:3001/v1"),
                "10:7: upstreams.users.url: \"http://127.0.0.1:3001/v1\": the url must not have a path",
            ),
            (
                route("name = \"users\"\nprefix = \"api/users\"\nservice = \"users\""),
                "15:10: routes[0].prefix: \"api/users\": a prefix starts with '/'",
            ),
            (
                route("name = \"users\"\nprefix = \"/api/users/\"\nservice = \"users\""),
                "15:10: routes[0].prefix: \"/api/users/\": drop the trailing '/'",
            ),
            (
                route("name = \"users\"\nprefix = \"/api/../users\"\nservice = \"users\""),
                "15:10: routes[0].prefix: \"/api/../users\": a prefix must be a normalised path",
            ),
            (
                route("name = \"users\"\nprefix = \"/api/users\"\nservice = \"userz\""),
                "16:11: routes[0].service: unknown upstream \"userz\"",
            ),
            (
                route("name = \"Users!\"\nprefix = \"/api/users\"\nservice = \"users\""),
                "14:8: routes[0].name: route names use only",
            ),
            (route("name = \"users\"\nprefix = \"/api/users\""), "13:1: routes[0]: missing field `service`"),
            (
                route(
                    "name = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n[[routes]]\nname = \"users\"\nprefix = \"/API/Users\"\nservice = \"users\"",
                ),
                "18:8: routes[1].name: duplicate route name \"users\"",
            ),
            (
                BASE.replace("[upstreams.monolith]", "idle_timeout_ms = 2000\n[upstreams.monolith]"),
                "server.idle_timeout_ms (2000) must be longer than upstreams.users.timeout_ms (2000)",
            ),
            ("[server\n".to_owned(), "1:8: unclosed table"),
        ];
        assert_each_error(&cases);
    }

    const FIXTURE_KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/keys");

    fn with_auth(auth: &str, route_extra: &str) -> String {
        format!(
            "{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n{route_extra}\n[auth]\n{auth}\n"
        )
    }

    #[test]
    fn an_auth_section_compiles_with_route_defaults() {
        let text = with_auth(
            &format!(
                "algorithms = [\"RS256\", \"ES256\"]\njwks_file = \"{FIXTURE_KEYS}/jwks.json\"\nissuer = \"i\"\naudience = [\"api\"]\nclaims_to_headers = {{ sub = \"x-user-id\" }}"
            ),
            "",
        );
        let snapshot = compile(Path::new("routes.toml"), &text, 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(snapshot.auth.is_some());
        assert_eq!(
            snapshot.auth_modes,
            [AuthMode::Required, AuthMode::Off],
            "routes default to required, unmatched to off"
        );
        assert_eq!(snapshot.plugins.on_request.len(), 1);
    }

    #[test]
    fn bad_auth_snippets_name_line_column_and_key() {
        let jwks = format!("jwks_file = \"{FIXTURE_KEYS}/jwks.json\"");
        let cases: Vec<(String, &str)> = vec![
            (
                with_auth(&format!("algorithms = [\"none\"]\n{jwks}"), ""),
                "19:15: auth.algorithms[0]: \"none\" is never accepted",
            ),
            (
                with_auth(&format!("algorithms = [\"RS256\", \"XS1\"]\n{jwks}"), ""),
                "19:24: auth.algorithms[1]: unknown algorithm \"XS1\"",
            ),
            (
                with_auth(&format!("algorithms = [\"HS256\"]\n{jwks}"), ""),
                "19:15: auth.algorithms[0]: no configured key can verify HS256",
            ),
            (with_auth("algorithms = [\"RS256\"]", ""), "18:1: auth: give exactly one key source"),
            (
                with_auth(&format!("algorithms = [\"RS256\"]\n{jwks}\npublic_key_file = \"k.pem\""), ""),
                "21:19: auth.public_key_file: give exactly one key source",
            ),
            (
                with_auth("algorithms = [\"RS256\"]\njwks_file = \"/nonexistent/jwks.json\"", ""),
                "20:13: auth.jwks_file: cannot read /nonexistent/jwks.json",
            ),
            (
                with_auth("algorithms = [\"HS256\"]\nhs256_secret_env = \"GATEWAY_TEST_SECRET_THAT_IS_NOT_SET\"", ""),
                "20:20: auth.hs256_secret_env: environment variable GATEWAY_TEST_SECRET_THAT_IS_NOT_SET is not set",
            ),
            (
                with_auth(
                    &format!("algorithms = [\"RS256\"]\n{jwks}\nclaims_to_headers = {{ sub = \"authorization\" }}"),
                    "",
                ),
                "21:29: auth.claims_to_headers.sub: \"authorization\" cannot carry a claim",
            ),
            (
                with_auth(&format!("algorithms = [\"RS256\"]\n{jwks}\nleeway_seconds = 3600"), ""),
                "21:18: auth.leeway_seconds: must be between 0 and 300 seconds",
            ),
            (
                with_auth(&format!("algorithms = [\"RS256\"]\n{jwks}"), "auth = \"sometimes\""),
                "17:8: routes[0].auth: unknown variant `sometimes`",
            ),
            (
                format!(
                    "{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\nauth = \"required\"\n"
                ),
                "17:8: routes[0].auth: checking tokens needs an [auth] section",
            ),
        ];
        assert_each_error(&cases);
    }

    #[test]
    fn bad_rollout_snippets_name_line_column_and_key() {
        let route = |extra: &str| {
            format!("{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n{extra}\n")
        };
        let segments = "\n[segments.beta]\nheader = \"x-beta\"\nequals = \"1\"\n[segments.staff]\nclaim = \"email\"\nends_with = \"@company.com\"\n";
        let cases: Vec<(String, &str)> = vec![
            (
                route("rollout_percent = 33.333\nsticky = \"ip\""),
                "17:19: routes[0].rollout_percent: must be 0 to 100 in steps of 0.01, got 33.333",
            ),
            (
                route("rollout_percent = 101\nsticky = \"ip\""),
                "routes[0].rollout_percent: must be 0 to 100 in steps of 0.01, got 101",
            ),
            (route("rollout_percent = 25"), "17:19: routes[0].rollout_percent: a partial rollout needs a sticky key"),
            (
                route("rollout_percent = 25\nsticky = \"query:uid\""),
                "18:10: routes[0].sticky: \"query:uid\" is not claim:NAME",
            ),
            (
                route("rollout_percent = 25\nsticky = \"claim:sub\""),
                "routes[0].sticky: claims exist only on routes that check tokens",
            ),
            (
                route("segments = [\"gamma\"]") + segments,
                "17:13: routes[0].segments[0]: unknown segment \"gamma\" (defined: beta, staff)",
            ),
            (
                route("segments = [\"staff\"]") + segments,
                "routes[0].segments[0]: segment staff tests a claim, and this route has auth = \"off\"",
            ),
            (
                format!("{BASE}\n[segments.both]\nclaim = \"a\"\nheader = \"b\"\nequals = \"c\"\n"),
                "segments.both.header: a segment tests either a claim or a header",
            ),
            (
                format!("{BASE}\n[segments.hdr]\nheader = \"b\"\nends_with = \"c\"\n"),
                "segments.hdr.header: a header segment takes exactly one test: equals",
            ),
            (
                format!("{BASE}\n[segments.two]\nclaim = \"a\"\nequals = \"b\"\ncontains = \"c\"\n"),
                "segments.two.contains: a claim segment needs exactly one of",
            ),
            (
                BASE.replace(
                    "default_upstream = \"monolith\"",
                    "default_upstream = \"monolith\"\ntrusted_proxies = [\"10.0.0.0/8\", \"lb\"]",
                ),
                "5:34: server.trusted_proxies[1]: \"lb\" is not an IP address or CIDR",
            ),
        ];
        assert_each_error(&cases);
    }

    #[test]
    fn route_policies_compile_with_defaults() {
        let text = format!(
            "{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\nrollout_percent = 12.5\nsticky = \"header:x-user\"\n\n[[routes]]\nname = \"all\"\nprefix = \"/all\"\nservice = \"users\"\n"
        );
        let snapshot = compile(Path::new("routes.toml"), &text, 1).unwrap_or_else(|e| panic!("{e}"));
        let policy = snapshot.routes[0].policy.as_ref().expect("a routed route has a policy");
        assert_eq!(policy.percent.buckets(), 1250);
        assert_eq!(policy.sticky.as_ref().map(ToString::to_string).as_deref(), Some("header:x-user"));
        let full = snapshot.routes[1].policy.as_ref().expect("policy");
        assert_eq!(full.percent, gateway_plugin_rollout::BasisPoints::ALL, "no rollout_percent means 100%");
        assert!(full.sticky.is_none());
        assert!(snapshot.routes[2].policy.is_none(), "the default route has no dial");
    }

    #[test]
    fn a_reload_keeps_what_did_not_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("routes.toml");
        let auth = format!(
            "\n[auth]\nalgorithms = [\"ES256\"]\njwks_file = \"{FIXTURE_KEYS}/jwks.json\"\nclaims_to_headers = {{ sub = \"x-user-id\" }}\n"
        );
        let first = format!("{BASE}{auth}");
        std::fs::write(&path, &first).expect("write");
        let v1 = load(&path, 1).expect("valid");
        assert!(load_next(&path, &v1).expect("readable").is_none(), "the same bytes are not a reload");

        std::fs::write(&path, format!("{first}\n# a comment changes the checksum\n")).expect("write");
        let v2 = load_next(&path, &v1).expect("valid").expect("changed");
        assert_eq!(v2.meta.version, 2);
        assert!(Arc::ptr_eq(&v1.upstreams["users"], &v2.upstreams["users"]), "unchanged upstream keeps its pool");
        assert!(Arc::ptr_eq(v1.auth.as_ref().expect("auth"), v2.auth.as_ref().expect("auth")), "token cache kept");

        let moved = first.replace("http://127.0.0.1:3001", "http://127.0.0.1:3999");
        let with_other_keys = moved.replace("jwks.json", "ec-public.pem").replace("jwks_file", "public_key_file");
        std::fs::write(&path, &with_other_keys).expect("write");
        let v3 = load_next(&path, &v2).expect("valid").expect("changed");
        assert!(!Arc::ptr_eq(&v2.upstreams["users"], &v3.upstreams["users"]), "a new url gets a new pool");
        assert!(Arc::ptr_eq(&v2.upstreams["monolith"], &v3.upstreams["monolith"]));
        assert!(!Arc::ptr_eq(v2.auth.as_ref().expect("auth"), v3.auth.as_ref().expect("auth")), "new keys, new cache");
    }

    #[test]
    fn settings_that_cannot_change_live_are_refused_on_reload() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, BASE).expect("write");
        let v1 = load(&path, 1).expect("valid");
        let edits = [
            (
                BASE.replace("127.0.0.1:8080", "127.0.0.1:8081"),
                "3:10: server.listen: server.listen changed from 127.0.0.1:8080 to 127.0.0.1:8081",
            ),
            (
                BASE.replace(
                    "default_upstream = \"monolith\"",
                    "default_upstream = \"monolith\"\nadmin_listen = \"127.0.0.1:9999\"",
                ),
                "server.admin_listen changed from 127.0.0.1:9901 to 127.0.0.1:9999",
            ),
            (
                BASE.replace("default_upstream = \"monolith\"", "default_upstream = \"monolith\"\nworkers = 999"),
                "server.workers changed from",
            ),
        ];
        for (text, expected) in edits {
            std::fs::write(&path, &text).expect("write");
            let error = load_next(&path, &v1).expect_err("refused").to_string();
            assert!(error.contains(expected), "expected {expected:?} in {error}");
            assert!(error.contains("restart to apply it"), "{error}");
        }
    }

    #[test]
    fn bad_breaker_and_fallback_snippets_name_line_column_and_key() {
        let with_breaker =
            |breaker: &str| BASE.replace("timeout_ms = 2000", &format!("timeout_ms = 2000\nbreaker = {{ {breaker} }}"));
        let route = |extra: &str| {
            format!("{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n{extra}\n")
        };
        let cases: Vec<(String, &str)> = vec![
            (
                with_breaker("failures = 0"),
                "12:24: upstreams.users.breaker.failures: must be between 1 and 1000000 failures, got 0",
            ),
            (
                with_breaker("failure_statuses = [\"5xx\"]"),
                "upstreams.users.breaker.failure_statuses[0]: \"5xx\" is not a status (\"503\") or a range (\"500-599\")",
            ),
            (with_breaker("failure_statuses = [\"599-500\"]"), "\"599-500\" is not a status"),
            (
                with_breaker("error_rate_percent = 150.0"),
                "upstreams.users.breaker.error_rate_percent: must be above 0 and at most 100, got 150",
            ),
            (
                with_breaker("min_requests = 10"),
                "upstreams.users.breaker.min_requests: min_requests applies to error_rate_percent, which is not set",
            ),
            (with_breaker("flures = 3"), "upstreams.users.breaker.flures: unknown field `flures`"),
            (
                route("fallback = \"sometimes\""),
                "17:12: routes[0].fallback: unknown variant `sometimes`, expected `safe` or `never`",
            ),
        ];
        assert_each_error(&cases);
        let good = with_breaker(
            "failures = 3, error_rate_percent = 50.0, min_requests = 10, failure_statuses = [\"502-504\", \"429\"]",
        );
        let snapshot = compile(Path::new("routes.toml"), &good, 1).unwrap_or_else(|e| panic!("{e}"));
        let users = &snapshot.upstreams["users"];
        assert!(users.is_failure_status(429) && users.is_failure_status(503) && !users.is_failure_status(500));
        assert_eq!(users.breaker.as_ref().expect("a breaker").settings().failures, 3);
        assert!(snapshot.upstreams["monolith"].breaker.is_none());
    }

    #[test]
    fn bad_aggregate_snippets_name_line_column_and_key() {
        let aggregate = |body: &str| format!("{BASE}\n[[aggregates]]\nname = \"dash\"\npath = \"/api/dash\"\n{body}\n");
        let cases: Vec<(String, &str)> = vec![
            (aggregate("parts = []"), "16:9: aggregates[0].parts: list at least one part"),
            (
                aggregate("parts = [{ name = \"a\", upstream = \"nope\", path = \"/x\" }]"),
                "aggregates[0].parts[0].upstream: unknown upstream \"nope\"",
            ),
            (
                aggregate("parts = [{ name = \"a\", route = \"nope\", path = \"/x\" }]"),
                "aggregates[0].parts[0].route: unknown route \"nope\"",
            ),
            (
                aggregate("parts = [{ name = \"a\", path = \"/x\" }]"),
                "aggregates[0].parts[0].name: a part names exactly one of upstream or route",
            ),
            (
                aggregate("parts = [{ name = \"a\", upstream = \"users\", path = \"x\" }]"),
                "aggregates[0].parts[0].path: \"x\" is not a path",
            ),
            (
                aggregate("parts = [{ name = \"_errors\", upstream = \"users\", path = \"/x\" }]"),
                "part names are unique and do not start with '_'",
            ),
            (
                aggregate(
                    "timeout_ms = 500\nparts = [{ name = \"a\", upstream = \"users\", path = \"/x\", timeout_ms = 900 }]",
                ),
                "aggregates[0].parts[0].timeout_ms: must be between 1 and the aggregate's timeout_ms (500), got 900",
            ),
            (
                aggregate("parts = [{ name = \"a\", upstream = \"users\", path = \"/x\" }]")
                    + "\n[[routes]]\nname = \"dash\"\nprefix = \"/d\"\nservice = \"users\"\n",
                "another route or aggregate is named \"dash\"",
            ),
            (
                aggregate("parts = [{ name = \"a\", upstream = \"users\", path = \"/x\" }]")
                    .replace("/api/dash", "/api/dash/"),
                "aggregates[0].path: \"/api/dash/\": drop the trailing '/'",
            ),
        ];
        assert_each_error(&cases);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = BASE
            .replace("listen = \"127.0.0.1:8080\"", "listen = \"nope\"")
            .replace("default_upstream = \"monolith\"", "default_upstream = \"missing\"")
            .replace("timeout_ms = 2000", "timeout_ms = 0");
        let got = errors(&text);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].starts_with("3:"), "sorted by line: {got:#?}");
    }

    #[test]
    fn the_error_names_the_file() {
        let err = compile(Path::new("conf/routes.toml"), "[server]\n", 1).expect_err("missing keys");
        assert!(err.to_string().starts_with("conf/routes.toml:1:1: server: missing field `listen`"), "{err}");
    }
}
