//! `gateway explain`: which route a request matches, which side answers it, and why.
//!
//! It runs the data plane's own steps on a described request: the same normaliser, the
//! same router, and [`crate::snapshot::Route::decide`], which calls the one rollout
//! function. Claims given on the command line stand in for a verified token. The path each
//! side receives comes from the data plane's own `upstream_exchange` plugins
//! ([`crate::proxy::upstream_target`]).
//!
//! A one-shot process knows the file, not what a running gateway has done since: a ramp
//! moves the dial and a breaker may be open. With `--admin URL` the explanation uses the
//! running gateway's effective dial and breaker state, read from its `/admin/migration`
//! (the numbers the page shows), in the same decision function.

use std::collections::BTreeMap;
use std::net::IpAddr;

use gateway_plugin_api::{ClaimValue, Identity, Target};
use gateway_plugin_auth::AuthMode;
use gateway_plugin_rollout::{BasisPoints, Caller, Reason, ServiceHealth, client_ip};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;

use gateway_plugin_transform::HostHeader;

use crate::proxy::upstream_target;
use crate::routing::normalize::{PathError, normalize_path};
use crate::snapshot::Snapshot;
use crate::upstream::Upstream;

/// A request to explain.
#[derive(Clone, Debug, Default)]
pub struct ExplainRequest {
    /// Method, for display.
    pub method: String,
    /// Path as the client would send it (query allowed).
    pub path: String,
    /// Claims of the caller's (verified) token.
    pub claims: Vec<(String, String)>,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// The peer address.
    pub ip: Option<IpAddr>,
    /// A running gateway's state, for `--admin`; `None` explains the file alone.
    pub live: Option<LiveGateway>,
}

/// What a running gateway says about its routes, from its `/admin/migration`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveGateway {
    /// The admin URL it was read from.
    pub admin: String,
    /// Per route name.
    pub routes: BTreeMap<String, LiveRoute>,
}

/// One route of a running gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveRoute {
    /// The dial its file configures.
    pub configured: BasisPoints,
    /// The dial in force (a ramp's position, else the configured dial).
    pub effective: BasisPoints,
    /// Its service's breaker refuses traffic.
    pub breaker_open: bool,
    /// The ramp's state (`climbing`, `halted`, ...), when it has one.
    pub ramp_state: Option<String>,
}

impl LiveGateway {
    /// Reads the routes of an `/admin/migration` document fetched from `admin`.
    pub fn from_migration(admin: &str, report: &Value) -> Result<Self, String> {
        let routes = report["routes"].as_array().ok_or("the report has no routes list")?;
        let percent = |route: &Value, key: &str| {
            route[key]
                .as_f64()
                .and_then(BasisPoints::from_percent)
                .ok_or_else(|| format!("route {} has no valid {key}", route["name"].as_str().unwrap_or("?")))
        };
        let mut live = LiveGateway { admin: admin.trim_end_matches('/').to_owned(), routes: BTreeMap::new() };
        for route in routes {
            let Some(name) = route["name"].as_str() else { return Err("a route has no name".to_owned()) };
            live.routes.insert(
                name.to_owned(),
                LiveRoute {
                    configured: percent(route, "dial_percent")?,
                    effective: percent(route, "effective_dial_percent")?,
                    breaker_open: route["breaker"].as_str() == Some("open"),
                    ramp_state: route["ramp"]["state"].as_str().map(str::to_owned),
                },
            );
        }
        Ok(live)
    }
}

/// Why a request could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The gateway would answer 400.
    #[error("the gateway answers 400 ({code}): {error}")]
    Path {
        /// The `x-gateway-error` code.
        code: &'static str,
        /// What is wrong with the path.
        error: PathError,
    },
    /// A `--header` is not a valid header.
    #[error("header {0:?} is not a valid NAME=VALUE header")]
    Header(String),
}

/// The answer.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    /// Method, as given.
    pub method: String,
    /// The path after normalisation: what the router and the upstream see.
    pub path: String,
    /// The matched route, or `_default`.
    pub route: String,
    /// The route's prefix; `None` for unmatched traffic.
    pub prefix: Option<String>,
    /// `required`, `optional` or `off`.
    pub auth: &'static str,
    /// `monolith` or `service`.
    pub side: &'static str,
    /// The upstream that answers.
    pub upstream: String,
    /// What the monolith side receives: the path and query as matched.
    pub monolith_request: SideRequest,
    /// What the service side receives (after `service_prefix`); `None` without a service.
    pub service_request: Option<SideRequest>,
    /// The dial in force, e.g. `25.00%` (a running gateway's effective dial with `--admin`).
    pub percent: Option<String>,
    /// The sticky source, e.g. `claim:sub`.
    pub sticky: Option<String>,
    /// The caller's sticky key.
    pub sticky_key: Option<String>,
    /// The caller's bucket, `0..10000`, when the dial decided.
    pub bucket: Option<u32>,
    /// Why this side.
    pub reason: String,
    /// What the caller still needs (a token), if anything.
    pub note: Option<String>,
    /// Where the dial and breaker state came from, with `--admin`: e.g. "http://127.0.0.1:9901:
    /// effective dial 35.00% (ramp climbing; the file says 10.00%), breaker closed".
    pub live: Option<String>,
}

/// The request line and `Host` one side receives.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SideRequest {
    /// The upstream of that side.
    pub upstream: String,
    /// Path and query, as sent.
    pub path: String,
    /// The `Host` it is sent; `None` when it keeps the client's.
    pub host: Option<String>,
}

impl SideRequest {
    fn new(
        snapshot: &Snapshot,
        route: &crate::snapshot::Route,
        side: Target,
        upstream: &Upstream,
        target: &str,
    ) -> Self {
        let host = match &upstream.settings.host_header {
            HostHeader::Client => None,
            HostHeader::Upstream => Some(upstream.authority().to_str().unwrap_or_default().to_owned()),
            HostHeader::Literal(host) => Some(host.to_str().unwrap_or_default().to_owned()),
        };
        SideRequest { upstream: upstream.name.to_string(), path: upstream_target(snapshot, route, side, target), host }
    }
}

impl std::fmt::Display for SideRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(host) => write!(f, "{} (upstream {}, Host {host})", self.path, self.upstream),
            None => write!(f, "{} (upstream {}, the client's Host)", self.path, self.upstream),
        }
    }
}

/// Explains `request` against `snapshot`.
pub fn explain(snapshot: &Snapshot, request: &ExplainRequest) -> Result<Explanation, ExplainError> {
    let raw_path = request.path.split('?').next().unwrap_or_default();
    let path = normalize_path(raw_path).map_err(|error| ExplainError::Path { code: error.code(), error })?.into_owned();
    let route_id = snapshot.router.route(&path).map_err(|error| ExplainError::Path { code: error.code(), error })?;
    let route = snapshot.route(route_id);
    let auth = route.auth;
    let target = match request.path.split_once('?') {
        Some((_, query)) => format!("{path}?{query}"),
        None => path.clone(),
    };
    let monolith_request = SideRequest::new(snapshot, route, Target::Monolith, &route.monolith, &target);
    let service_request =
        route.service.as_ref().map(|service| SideRequest::new(snapshot, route, Target::Service, service, &target));

    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| ExplainError::Header(format!("{name}={value}")))?;
        let value = HeaderValue::from_str(value).map_err(|_| ExplainError::Header(format!("{name}={value}")))?;
        headers.append(name, value);
    }
    let identity = (!request.claims.is_empty()).then(|| Identity {
        claims: request
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), ClaimValue::Text(v.clone())))
            .collect::<BTreeMap<_, _>>(),
        expires_at: u64::MAX,
    });
    // As in the data plane: only verified claims count, and a route that does not check
    // tokens has none.
    let identity = identity.filter(|_| auth != AuthMode::Off);
    let client = request.ip.map(|ip| client_ip(ip, &headers, &snapshot.server.trusted_proxies));
    let caller = Caller { identity: identity.as_ref(), headers: &headers, client_ip: client };
    // The same rule as the data plane (breaker > segment > dial). A one-shot process has
    // fresh breakers and the file's dial; a running gateway's come from its admin API.
    let live_route = request.live.as_ref().map(|live| (live, live.routes.get(&*route.name)));
    let (decision, dial, live) = match (live_route, &route.policy) {
        (Some((live, Some(state))), Some(_)) => {
            let health = if state.breaker_open { ServiceHealth::BreakerOpen } else { ServiceHealth::Available };
            let ramp = state.ramp_state.as_ref().map(|s| format!("ramp {s}; "));
            let said = format!(
                "{}: effective dial {} ({}the file says {}), breaker {}",
                live.admin,
                state.effective,
                ramp.unwrap_or_default(),
                state.configured,
                if state.breaker_open { "open" } else { "not open" },
            );
            (route.decide_at(&caller, state.effective, health), Some(state.effective), Some(said))
        }
        (Some((live, None)), Some(_)) => {
            let said =
                format!("{}: the running gateway has no route {}; the file's dial is used", live.admin, route.name);
            (route.decide(&caller, route.service_health()), route.policy.as_ref().map(|p| route.dial(p)), Some(said))
        }
        _ => (route.decide(&caller, route.service_health()), route.policy.as_ref().map(|p| route.dial(p)), None),
    };

    let policy = route.policy.as_ref();
    let sticky_key = policy.and_then(|p| p.sticky.as_ref()).and_then(|s| s.key(&caller)).map(|k| k.into_owned());
    let bucket = match &decision.reason {
        Some(Reason::Bucket { bucket }) => Some(*bucket),
        _ => None,
    };
    let reason = match (&decision.reason, dial) {
        (Some(reason), Some(dial)) => reason.describe(dial),
        _ => "no route matches: server.default_upstream answers".to_owned(),
    };
    let note = match (auth, identity.is_some()) {
        (AuthMode::Required, false) => {
            Some("this route requires a token: without one the gateway answers 401".to_owned())
        }
        _ => None,
    };
    Ok(Explanation {
        method: request.method.clone(),
        path,
        route: route.name.to_string(),
        prefix: route.prefix.clone(),
        auth: match auth {
            AuthMode::Required => "required",
            AuthMode::Optional => "optional",
            AuthMode::Off => "off",
        },
        side: match decision.target {
            Target::Service => "service",
            _ => "monolith",
        },
        upstream: decision.upstream.name.to_string(),
        monolith_request,
        service_request,
        percent: dial.map(|dial| dial.to_string()),
        sticky: policy.and_then(|p| p.sticky.as_ref()).map(ToString::to_string),
        sticky_key,
        bucket,
        reason,
        note,
        live,
    })
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.prefix {
            Some(prefix) => writeln!(
                f,
                "{} {} -> route {} (prefix {prefix}, auth {})",
                self.method, self.path, self.route, self.auth
            )?,
            None => writeln!(f, "{} {} -> no route (default upstream, auth {})", self.method, self.path, self.auth)?,
        }
        writeln!(f, "side:   {} (upstream {})", self.side, self.upstream)?;
        writeln!(f, "reason: {}", self.reason)?;
        writeln!(f, "sends:  monolith gets {}", self.monolith_request)?;
        if let Some(service) = &self.service_request {
            writeln!(f, "        service gets {service}")?;
        }
        if let (Some(percent), Some(sticky)) = (&self.percent, &self.sticky) {
            match (&self.sticky_key, self.bucket) {
                (Some(key), Some(bucket)) => writeln!(
                    f,
                    "dial:   {percent}, sticky {sticky} = {key:?}: murmur3_x86_32(\"{}:{key}\", 0) mod 10000 = {bucket}",
                    self.route
                )?,
                (Some(key), None) => writeln!(f, "dial:   {percent}, sticky {sticky} = {key:?}")?,
                (None, _) => writeln!(f, "dial:   {percent}, sticky {sticky} (the caller has no key)")?,
            }
        } else if let Some(percent) = &self.percent {
            writeln!(f, "dial:   {percent}")?;
        }
        if let Some(live) = &self.live {
            writeln!(f, "live:   {live}")?;
        }
        if let Some(note) = &self.note {
            writeln!(f, "note:   {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_gateways_dials_and_breakers_are_read_from_its_report() {
        let report = serde_json::json!({"routes": [
            {"name": "users", "dial_percent": 10.0, "effective_dial_percent": 35.0, "breaker": "closed",
             "ramp": {"state": "climbing"}},
            {"name": "orders", "dial_percent": 100.0, "effective_dial_percent": 100.0, "breaker": "open", "ramp": null},
        ]});
        let live = LiveGateway::from_migration("http://127.0.0.1:9901/", &report).expect("valid");
        assert_eq!(live.admin, "http://127.0.0.1:9901");
        let users = &live.routes["users"];
        assert_eq!((users.configured, users.effective), (BasisPoints::new(1000), BasisPoints::new(3500)));
        assert_eq!((users.breaker_open, users.ramp_state.as_deref()), (false, Some("climbing")));
        assert!(live.routes["orders"].breaker_open && live.routes["orders"].ramp_state.is_none());

        let broken = serde_json::json!({"routes": [{"name": "users", "dial_percent": 10.0}]});
        assert_eq!(
            LiveGateway::from_migration("http://x:1", &broken),
            Err("route users has no valid effective_dial_percent".to_owned())
        );
        assert_eq!(
            LiveGateway::from_migration("http://x:1", &serde_json::json!({})),
            Err("the report has no routes list".to_owned())
        );
    }
}
