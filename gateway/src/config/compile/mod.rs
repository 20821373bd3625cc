//! Validation and compilation: [`FileConfig`] -> [`Snapshot`].
//!
//! Validation collects every problem before giving up, so `gateway check` lists them all
//! at once, each with line, column and key path. Nothing here panics on input. One
//! submodule per section; the keys of registered per-route policies (see
//! [`crate::policies`]) are taken out of each route and checked by their own crates.

mod aggregates;
mod auth;
mod rollout;
mod routes;
mod server;
mod telemetry;
mod upstreams;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gateway_plugin_aggregate::{Aggregate, Part, PartSource};
use gateway_plugin_api::config::{CompiledSections, ConfigErrors, Registry, RouteInfo, RouteSections, Section};
use gateway_plugin_api::{DEFAULT_ROUTE_LABEL, Plugin, RouteId, Target};
use gateway_plugin_auth::{AuthMode, AuthPlugin, Authenticator, KeySet, SystemClock, Verifier};
use gateway_plugin_breaker::{Breaker, BreakerSettings, ErrorRate};
use gateway_plugin_endpoints::{ActiveCheck, Balance, Ejection};
use gateway_plugin_metrics::{RequestMetrics, RouteLabels};
use gateway_plugin_rollout::{BasisPoints, ClaimTest, RoutePolicy, Segment, SegmentMatch, Sticky};
use gateway_plugin_transform::HostHeader;
use http::HeaderName;
use http::Uri;
use http::uri::Authority;
use ipnet::IpNet;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::defaults::*;
use super::error::{ConfigError, Diagnostic, SourceMap};
use super::file::{
    FileAggregate, FileAudience, FileAuth, FileAuthMode, FileBreaker, FileConfig, FileDiscovery, FileFallback,
    FileHealthCheck, FileRoute, FileSegment, FileServer, FileSide, FileUpstream,
};
use crate::routing::normalize::normalize_path;
use crate::routing::router::Router;
use crate::snapshot::{ConfigMeta, Fallback, PhasePlugins, Route, ServerSettings, Snapshot, UnderscoreHeaders};
use crate::tls::{Certificates, PairError};
use crate::upstream::{DnsDiscovery, Protocol, Upstream, UpstreamSettings};

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
    let certificates_unchanged = previous.tls.as_ref().is_none_or(|tls| tls.unchanged_on_disk());
    if sha256_hex(text.as_bytes()) == previous.meta.checksum && certificates_unchanged {
        return Ok(None);
    }
    compile_with(path, &text, previous.meta.version + 1, Some(previous)).map(Some)
}

fn compile_with(path: &Path, text: &str, version: u64, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
    let registry = crate::policies::registry();
    let map = SourceMap::new(text);
    let invalid = |diagnostics: Vec<Diagnostic>| ConfigError::Invalid { path: path.to_owned(), diagnostics };
    let syntax = |e: toml::de::Error| invalid(vec![map.at(e.span(), e.message())]);
    // The document is parsed once; each route's policy keys are taken out of it (their
    // crates check them), and the rest is deserialized into the gateway's own types.
    let mut document = DeTable::parse(text).map_err(syntax)?;
    let sections = take_policy_sections(document.get_mut(), &registry);
    let file = FileConfig::deserialize(toml::de::Deserializer::from(document)).map_err(syntax)?;

    let config_dir = path.parent().unwrap_or(Path::new("."));
    let mut checker = Checker { map: &map, config_dir, previous, registry: &registry, diagnostics: Vec::new() };
    let checked = checker.check(&file, sections);
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
    Ok(build(checked, meta, previous, &registry))
}

/// One route's value of one registered policy key: (route index, policy index, key, value).
type PolicySection<'a> = (usize, usize, &'static str, Spanned<DeValue<'a>>);

/// Removes every registered policy key from every `[[routes]]` entry of the document.
fn take_policy_sections<'a>(document: &mut DeTable<'a>, registry: &Registry) -> Vec<PolicySection<'a>> {
    let mut sections = Vec::new();
    let routes_key = Spanned::new(0..0, DeString::Borrowed("routes"));
    let Some(routes) = document.get_mut(&routes_key) else { return sections };
    let DeValue::Array(routes) = routes.get_mut() else { return sections };
    for (route_index, route) in routes.iter_mut().enumerate() {
        let DeValue::Table(table) = route.get_mut() else { continue };
        for (policy_index, key) in registry.keys() {
            if let Some(value) = table.remove(&Spanned::new(0..0, DeString::Borrowed(key))) {
                sections.push((route_index, policy_index, key, value));
            }
        }
    }
    sections
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
    auth: Option<(Authenticator, Vec<Arc<crate::upstream::jwks::JwksSource>>)>,
    upstreams: Vec<UpstreamSettings>,
    routes: Vec<CheckedRoute>,
    /// Every registered policy's compiled sections.
    policy_tables: Vec<CompiledSections>,
    /// `[server.tls]`, loaded.
    tls: Option<Certificates>,
    /// `[telemetry]`: span export, when configured.
    tracing: Option<crate::telemetry::trace::TraceSettings>,
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
    /// The per-route policies whose keys routes may carry.
    registry: &'a Registry,
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

    fn check(&mut self, file: &FileConfig, sections: Vec<PolicySection<'_>>) -> Option<Checked> {
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
        let tls = self.check_tls(&file.server);
        let tracing = self.check_telemetry(file.telemetry.as_ref());

        let auth = file.auth.as_ref().and_then(|auth| self.check_auth(auth));
        let has_auth = file.auth.is_some();
        let default_auth = self.auth_mode(&file.server.default_auth, has_auth, AuthMode::Off);

        let segments = self.check_segments(&file.segments);
        let mut route_names = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut routes = Vec::new();
        let mut route_modes = Vec::new();
        for route in &file.routes {
            known_upstream(self, &route.service);
            if let Some(monolith) = &route.monolith {
                known_upstream(self, monolith);
            }
            let default_mode = if has_auth { AuthMode::Required } else { AuthMode::Off };
            let mode = self.auth_mode(&route.auth, has_auth, default_mode);
            route_modes.push(mode);
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
        let claim_headers: Vec<HeaderName> = file
            .auth
            .iter()
            .flat_map(|auth| auth.get_ref().claims_to_headers.iter().flatten())
            .filter_map(|(_, header)| HeaderName::from_bytes(header.get_ref().as_bytes()).ok())
            .collect();
        let policy_tables = self.check_policy_sections(
            file,
            &route_modes,
            &claim_headers,
            sections,
            1 + file.routes.len() + aggregates.len(),
        );
        Some(Checked {
            tracing: tracing?,
            tls: tls?,
            policy_tables,
            aggregates,
            server: server?,
            default_upstream: file.server.default_upstream.get_ref().clone(),
            default_auth,
            auth: if has_auth { Some(auth?) } else { None },
            upstreams,
            routes: routes.into_iter().collect::<Option<Vec<_>>>()?,
        })
    }

    /// Hands each route's policy sections to their policies, which check and compile them.
    fn check_policy_sections(
        &mut self,
        file: &FileConfig,
        modes: &[AuthMode],
        claim_headers: &[HeaderName],
        sections: Vec<PolicySection<'_>>,
        route_count: usize,
    ) -> Vec<CompiledSections> {
        let registry = self.registry;
        let mut tables = registry.start(route_count);
        // Sections arrive grouped by route, each route's in registry order: one call per
        // (route, policy) with all of that policy's keys.
        let mut grouped: Vec<(usize, usize, RouteSections<'_>)> = Vec::new();
        for (route_index, policy_index, key, value) in sections {
            match grouped.last_mut() {
                Some((r, p, group)) if *r == route_index && *p == policy_index => {
                    *group = std::mem::take(group).with(key, Section::new(value));
                }
                _ => grouped.push((route_index, policy_index, RouteSections::new().with(key, Section::new(value)))),
            }
        }
        for (route_index, policy_index, route_sections) in grouped {
            let Some(route) = file.routes.get(route_index) else { continue };
            // From the route's auth mode itself, so a route with another problem does not
            // also get a misleading one about claims.
            let checks_tokens = modes.get(route_index).is_some_and(|mode| *mode != AuthMode::Off);
            let info = RouteInfo {
                id: RouteId(route_index),
                name: route.name.get_ref(),
                prefix: route.prefix.get_ref(),
                claim_headers,
                checks_tokens,
                rollout_percent: route.rollout_percent.as_ref().map_or(100.0, |p| *p.get_ref()),
                sticky: route.sticky.is_some() || checks_tokens,
                name_span: span(&route.name),
            };
            let mut errors = ConfigErrors::default();
            registry.compile_route(&mut tables, policy_index, &info, route_sections, &mut errors);
            for (at, message) in errors.into_problems() {
                self.error(at, message);
            }
        }
        tables
    }

    /// An optional millisecond/byte/count setting within `min..=max`, or its default.
    pub(super) fn bounded(
        &mut self,
        value: &Option<Spanned<u64>>,
        default: u64,
        min: u64,
        max: u64,
        unit: &str,
    ) -> u64 {
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

    pub(super) fn socket_addr(&mut self, value: &Spanned<String>) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(span(value), format!("\"{}\" is not IP:PORT (for example 127.0.0.1:8080)", value.get_ref()));
                None
            }
        }
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

fn build(checked: Checked, meta: ConfigMeta, previous: Option<&Snapshot>, registry: &Registry) -> Snapshot {
    // An upstream whose settings are unchanged keeps its handle, and so its warm pool.
    let upstreams: BTreeMap<String, Arc<Upstream>> = checked
        .upstreams
        .into_iter()
        .map(|settings| {
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
                    Arc::new(Upstream::new(settings, breaker, before.map(|b| &**b)))
                }
            };
            (upstream.settings.name.clone(), upstream)
        })
        .collect();
    let upstream = |name: &str| upstreams.get(name).cloned().expect("route upstreams were checked to exist");
    let default_monolith = upstream(&checked.default_upstream);

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
            auth: r.auth,
            policy: Some(r.policy),
            fallback: r.fallback,
            aggregate: None,
            ramp: None,
        })
        .collect();
    for (aggregate, mode) in checked.aggregates {
        routes.push(Route {
            id: RouteId(routes.len()),
            name: aggregate.name.clone(),
            prefix: None,
            service: None,
            monolith: default_monolith.clone(),
            auth: mode,
            policy: None,
            fallback: Fallback { enabled: false, body_limit: 0 },
            aggregate: Some(Arc::new(aggregate)),
            ramp: None,
        });
    }
    let default_id = RouteId(routes.len());
    routes.push(Route {
        id: default_id,
        name: Arc::from(DEFAULT_ROUTE_LABEL),
        prefix: None,
        service: None,
        monolith: default_monolith,
        auth: checked.default_auth,
        policy: None,
        fallback: Fallback { enabled: false, body_limit: 0 },
        aggregate: None,
        ramp: None,
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
    let (authenticator, jwks_sources) = match checked.auth {
        Some((new, sources)) => {
            let kept = previous.and_then(|p| p.auth.as_ref()).filter(|old| old.equivalent(&new));
            (Some(kept.cloned().unwrap_or_else(|| Arc::new(new))), sources)
        }
        None => (None, Vec::new()),
    };
    let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
    if let Some(authenticator) = &authenticator {
        let modes = routes.iter().map(|r| r.auth).collect();
        plugins.push(Arc::new(AuthPlugin::new(authenticator.clone(), modes)));
    }
    let policies = registry.build(checked.policy_tables, previous.map_or(&[], |p| &p.policies[..]));
    // A ramped route reads its effective dial from its ramp where it picks a side.
    if let Some(ramps) = policies.iter().find_map(|built| built.concrete::<gateway_plugin_ramp::RampPlugin>()) {
        for route in &mut routes {
            route.ramp = ramps.route(route.id).cloned();
        }
    }
    plugins.extend(policies.iter().map(|built| built.plugin.clone()));
    plugins.push(Arc::new(RequestMetrics::new(&labels)));
    Snapshot {
        meta,
        server: checked.server,
        upstreams,
        routes,
        router,
        auth: authenticator,
        jwks_sources,
        tls: checked.tls.map(Arc::new),
        // Unchanged settings keep the tracer, and so its queue and export task.
        tracer: checked.tracing.map(|settings| {
            previous
                .and_then(|p| p.tracer.as_ref())
                .filter(|t| *t.settings() == settings)
                .cloned()
                .unwrap_or_else(|| Arc::new(crate::telemetry::trace::Tracer::new(settings)))
        }),
        policies,
        plugins: PhasePlugins::new(plugins),
        route_stats: std::sync::OnceLock::new(),
    }
}

#[cfg(test)]
mod tests;
