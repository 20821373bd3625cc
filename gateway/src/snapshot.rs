//! The compiled, immutable config a request runs against from start to end.
//!
//! A snapshot is built by [`crate::config::compile`], never mutated, and swapped in whole
//! (one `ArcSwap`), so a request never sees half of one config and half of another.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gateway_plugin_api::config::BuiltPlugin;
use gateway_plugin_api::{Plugin, RouteId, Target};
use gateway_plugin_auth::AuthMode;
use gateway_plugin_rollout::{BasisPoints, Caller, Reason, RoutePolicy, ServiceHealth};

use crate::routing::router::Router;
use crate::telemetry::stats::RouteStats;
use crate::upstream::Upstream;

/// Where a snapshot came from.
#[derive(Clone, Debug)]
pub struct ConfigMeta {
    /// 1 for the first config loaded, +1 per applied reload.
    pub version: u64,
    /// The file it was read from.
    pub source: PathBuf,
    /// SHA-256 of the file's bytes, hex.
    pub checksum: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

/// `[server]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Client-facing plain-HTTP listener; absent when only `tls_listen` serves.
    pub listen: Option<SocketAddr>,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Runtime worker threads.
    pub workers: usize,
    /// Largest request head, bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: u64,
    /// Time to receive a request head.
    pub header_read_timeout: Duration,
    /// Client connection inactivity limit.
    pub idle_timeout: Duration,
    /// Drain period on shutdown.
    pub shutdown_grace: Duration,
    /// Whether to write access-log lines.
    pub access_log: bool,
    /// What happens to request headers whose names contain `_`.
    pub underscore_headers: UnderscoreHeaders,
    /// Longest wait for the next piece of a request body (408 after it).
    pub body_read_timeout: Duration,
    /// Proxies whose `x-forwarded-for` is believed when finding the client address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// HTTPS listener, when `tls_listen` is set.
    pub tls_listen: Option<SocketAddr>,
    /// Where the serving process writes its pid, relative paths resolved against the
    /// config file's directory.
    pub pid_file: Option<PathBuf>,
}

/// `server.underscore_headers`: what happens to request headers whose names contain `_`,
/// which CGI-style back-ends read as the `-` spelling (`transfer_encoding` as framing,
/// `x_user_id` as identity).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// Removed before forwarding, as nginx does by default.
    #[default]
    Drop,
    /// The request is refused with 400 `bad-header-name`.
    Reject,
    /// Forwarded as sent.
    Pass,
}

impl std::str::FromStr for UnderscoreHeaders {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        match text {
            "drop" => Ok(UnderscoreHeaders::Drop),
            "reject" => Ok(UnderscoreHeaders::Reject),
            "pass" => Ok(UnderscoreHeaders::Pass),
            _ => Err(()),
        }
    }
}

/// A route, compiled. The default route (unmatched traffic) is the last in the table.
#[derive(Debug)]
pub struct Route {
    /// Index in [`Snapshot::routes`].
    pub id: RouteId,
    /// Route name, or [`gateway_plugin_api::DEFAULT_ROUTE_LABEL`].
    pub name: Arc<str>,
    /// The configured prefix; `None` for the default route.
    pub prefix: Option<String>,
    /// The extracted service; `None` for the default route.
    pub service: Option<Arc<Upstream>>,
    /// The monolith side.
    pub monolith: Arc<Upstream>,
    /// What the route asks of the caller (token required, optional, or not checked).
    pub auth: AuthMode,
    /// The canary dial; `None` for the default route, which always goes to the monolith.
    pub policy: Option<RoutePolicy>,
    /// Replaying failed service requests on the monolith.
    pub fallback: Fallback,
    /// For an aggregate endpoint: its parts. Aggregates sit after the routes and before
    /// the default route in the table; their `prefix` is `None`.
    pub aggregate: Option<Arc<gateway_plugin_aggregate::Aggregate>>,
    /// The route's guarded ramp, when it has one: it holds the effective dial.
    pub ramp: Option<Arc<gateway_plugin_ramp::RouteRamp>>,
}

/// A route's `fallback` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// `fallback = "safe"`.
    pub enabled: bool,
    /// Largest request body kept so an idempotent request can be replayed after sending.
    pub body_limit: u64,
}

/// The side a request goes to, why, and the upstream that serves it.
#[derive(Debug)]
pub struct RouteDecision<'a> {
    /// Monolith or service.
    pub target: Target,
    /// Why; `None` for unmatched traffic (the default route has one side).
    pub reason: Option<Reason>,
    /// The upstream of that side.
    pub upstream: &'a Arc<Upstream>,
}

impl Route {
    /// Whether the service can take traffic now, as its circuit breaker sees it (without
    /// taking a half-open trial slot). A route without a service or breaker is Available.
    pub fn service_health(&self) -> ServiceHealth {
        let refusing =
            self.service.as_ref().and_then(|s| s.breaker.as_ref()).is_some_and(|b| b.would_refuse(crate::clock::now()));
        if refusing { ServiceHealth::BreakerOpen } else { ServiceHealth::Available }
    }

    /// The dial in force: the ramp's effective dial while the route has a ramp, else the
    /// configured one.
    pub fn dial(&self, policy: &RoutePolicy) -> BasisPoints {
        match &self.ramp {
            Some(ramp) => BasisPoints::new(ramp.effective()),
            None => policy.percent,
        }
    }

    /// The effective dial, percent; `None` for a route without one.
    pub fn effective_percent(&self) -> Option<f64> {
        self.policy.as_ref().map(|policy| self.dial(policy).percent())
    }

    /// Picks the side for `caller`. The data plane and `gateway explain` both call this,
    /// and it calls the one rollout function, [`gateway_plugin_rollout::decide`].
    pub fn decide(&self, caller: &Caller<'_>, health: ServiceHealth) -> RouteDecision<'_> {
        let dial = self.policy.as_ref().map_or(BasisPoints::ZERO, |policy| self.dial(policy));
        self.decide_at(caller, dial, health)
    }

    /// Picks the side for `caller` at `dial` rather than the one this snapshot holds:
    /// `gateway explain --admin` passes the effective dial of a running gateway.
    pub fn decide_at(&self, caller: &Caller<'_>, dial: BasisPoints, health: ServiceHealth) -> RouteDecision<'_> {
        match (&self.policy, &self.service) {
            (Some(policy), Some(service)) => {
                let decision = gateway_plugin_rollout::decide_at(policy, dial, caller, health);
                let upstream = if decision.target == Target::Service { service } else { &self.monolith };
                RouteDecision { target: decision.target, reason: Some(decision.reason), upstream }
            }
            _ => RouteDecision { target: Target::Monolith, reason: None, upstream: &self.monolith },
        }
    }
}

/// Plugins grouped by the phase they take part in, in pipeline order.
#[derive(Default)]
pub struct PhasePlugins {
    /// Run at `authenticate`.
    pub authenticate: Vec<Arc<dyn Plugin>>,
    /// Run at `on_request`.
    pub on_request: Vec<Arc<dyn Plugin>>,
    /// Run at `upstream_request`.
    pub upstream_request: Vec<Arc<dyn Plugin>>,
    /// Run at `upstream_exchange`, before every request sent upstream.
    pub upstream_exchange: Vec<Arc<dyn Plugin>>,
    /// Run at `mirror`, for a request the monolith is chosen to answer.
    pub mirror: Vec<Arc<dyn Plugin>>,
    /// Run at `on_response`.
    pub on_response: Vec<Arc<dyn Plugin>>,
    /// Run at `on_complete`.
    pub on_complete: Vec<Arc<dyn Plugin>>,
}

impl PhasePlugins {
    /// Files each plugin under the phases it declares.
    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Self {
        let mut phases = PhasePlugins::default();
        for plugin in plugins {
            let declared = plugin.phases();
            if declared.authenticate {
                phases.authenticate.push(plugin.clone());
            }
            if declared.upstream_request {
                phases.upstream_request.push(plugin.clone());
            }
            if declared.upstream_exchange {
                phases.upstream_exchange.push(plugin.clone());
            }
            if declared.mirror {
                phases.mirror.push(plugin.clone());
            }
            if declared.on_request {
                phases.on_request.push(plugin.clone());
            }
            if declared.on_response {
                phases.on_response.push(plugin.clone());
            }
            if declared.on_complete {
                phases.on_complete.push(plugin);
            }
        }
        phases
    }
}

impl std::fmt::Debug for PhasePlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |list: &[Arc<dyn Plugin>]| list.iter().map(|p| p.name()).collect::<Vec<_>>();
        f.debug_struct("PhasePlugins")
            .field("authenticate", &names(&self.authenticate))
            .field("on_request", &names(&self.on_request))
            .field("upstream_request", &names(&self.upstream_request))
            .field("upstream_exchange", &names(&self.upstream_exchange))
            .field("mirror", &names(&self.mirror))
            .field("on_response", &names(&self.on_response))
            .field("on_complete", &names(&self.on_complete))
            .finish()
    }
}

/// Everything one request needs from the config.
pub struct Snapshot {
    /// Version, source, checksum.
    pub meta: ConfigMeta,
    /// `[server]`.
    pub server: ServerSettings,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Routes in file order, then the default route; indexed by [`RouteId`].
    pub routes: Vec<Route>,
    /// Path -> route.
    pub router: Router,
    /// The certificates of the HTTPS listener, when `[server.tls]` is configured.
    pub tls: Option<Arc<crate::tls::Certificates>>,
    /// The span exporter, when `[telemetry] otlp_endpoint` is set.
    pub tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
    /// Token verification, when `[auth]` is configured.
    pub auth: Option<Arc<gateway_plugin_auth::Authenticator>>,
    /// The `jwks_url` sources the authenticator verifies with; each fetches while a
    /// snapshot holds it.
    pub jwks_sources: Vec<Arc<crate::upstream::jwks::JwksSource>>,
    /// The plugins the registered route policies built for this config (a reload hands
    /// them to the next build, so state such as rate-limit buckets carries over).
    pub policies: Vec<BuiltPlugin>,
    /// Plugins per phase.
    pub plugins: PhasePlugins,
    /// Migration stats per route, aligned with `routes`; set once when the gateway
    /// installs the snapshot (stats outlive snapshots: they are keyed by route name).
    pub route_stats: std::sync::OnceLock<Vec<Arc<RouteStats>>>,
}

impl Snapshot {
    /// The route with this id (ids come from this snapshot's router, so it exists).
    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.0]
    }

    /// The shadow plugin, when a route has `shadow`.
    pub fn shadow(&self) -> Option<&gateway_plugin_shadow::ShadowPlugin> {
        self.policies.iter().find_map(|built| built.concrete::<gateway_plugin_shadow::ShadowPlugin>())
    }

    /// The route named `name`.
    pub fn route_named(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|route| &*route.name == name)
    }

    /// The route for unmatched traffic.
    pub fn default_route(&self) -> &Route {
        self.routes.last().expect("a snapshot always has the default route")
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("meta", &self.meta)
            .field("server", &self.server)
            .field("routes", &self.routes)
            .field("policies", &self.policies)
            .field("plugins", &self.plugins)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use gateway_plugin_rollout::BasisPoints;

    #[test]
    fn the_ramp_reads_percentages_by_the_dials_rule() {
        for percent in [0.0, 0.01, 5.0, 12.34, 33.333, 99.99, 100.0, 100.5, -1.0, f64::NAN] {
            let dial = BasisPoints::from_percent(percent).map(BasisPoints::buckets);
            assert_eq!(gateway_plugin_ramp::basis_points(percent), dial, "{percent}");
        }
    }
}
