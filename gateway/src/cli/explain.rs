//! `gateway explain`: which route a request matches, which side answers it, and why.
//!
//! It runs the data plane's own steps on a described request: the same normaliser, the
//! same router, and [`crate::snapshot::Route::decide`], which calls the one rollout
//! function. Claims given on the command line stand in for a verified token. The path each
//! side receives comes from the data plane's own `upstream_exchange` plugins
//! ([`crate::proxy::upstream_target`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use gateway_plugin_api::{ClaimValue, Identity, Target};
use gateway_plugin_auth::AuthMode;
use gateway_plugin_rollout::{Caller, Reason, client_ip};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

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
    /// The dial, e.g. `25.00%`.
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
    // The same breaker rule as the data plane (breaker > segment > dial). A one-shot
    // `gateway explain` process has fresh breakers; the running gateway's come with the
    // admin API.
    let decision = route.decide(&caller, route.service_health());

    let policy = route.policy.as_ref();
    let sticky_key = policy.and_then(|p| p.sticky.as_ref()).and_then(|s| s.key(&caller)).map(|k| k.into_owned());
    let bucket = match &decision.reason {
        Some(Reason::Bucket { bucket }) => Some(*bucket),
        _ => None,
    };
    let reason = match (&decision.reason, policy) {
        (Some(reason), Some(policy)) => reason.describe(policy.percent),
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
        percent: policy.map(|p| p.percent.to_string()),
        sticky: policy.and_then(|p| p.sticky.as_ref()).map(ToString::to_string),
        sticky_key,
        bucket,
        reason,
        note,
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
        if let Some(note) = &self.note {
            writeln!(f, "note:   {note}")?;
        }
        Ok(())
    }
}
