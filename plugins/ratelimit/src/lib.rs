//! Per-route rate limits.
//!
//! ```toml
//! [[routes]]
//! name = "search"
//! # ...
//! rate_limit = { requests_per_second = 50.0, burst = 100, key = "ip" }   # claim:NAME | header:NAME | ip
//! ```
//!
//! A token bucket per key, per route and per replica (like breakers, each replica limits
//! on its own evidence): `burst` requests at once, refilled at `requests_per_second`. Over
//! the limit: 429 with `Retry-After` (whole seconds, at least 1), the gateway's JSON body
//! and `x-gateway-error: rate-limited`; the upstream sees nothing. A request without the
//! key shares one bucket for "no key". Memory is bounded under a flood of distinct keys
//! (see [`table`]). The limit runs at `on_request`: after authentication (so `claim:` is
//! the verified claim) and before the side is chosen, so it guards both sides alike.
//!
//! Counted in `gateway_rate_limited_total{route}`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod bucket;
pub mod table;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use gateway_plugin_api::config::{ConfigErrors, PerRoute, RouteInfo, RoutePolicy, RouteSections};
use gateway_plugin_api::{Flow, Phases, Plugin, Rejection, RequestCtx, codes};
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{StatusCode, request::Parts};
use serde::Deserialize;
use toml::Spanned;

use bucket::Rate;
use table::KeyTable;

/// The key this policy owns on `[[routes]]`.
pub const ROUTE_KEY: &str = "rate_limit";

/// Counter: requests refused by a route's rate limit, by `route`.
pub const RATE_LIMITED_TOTAL: &str = "gateway_rate_limited_total";
/// Most keys one route tracks; beyond, new keys share overflow buckets (see [`table`]).
/// About 3 MiB per route at the limit.
pub const MAX_TRACKED_KEYS: usize = 65_536;
/// Highest accepted `requests_per_second` and `burst`.
pub const MAX_RATE: f64 = 1_000_000.0;

/// `rate_limit = { ... }` on a route, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    /// Tokens added per second (may be fractional: 0.5 is one every two seconds).
    pub requests_per_second: Spanned<f64>,
    /// Bucket size: requests allowed at once.
    pub burst: Spanned<u64>,
    /// What identifies a caller: `claim:NAME`, `header:NAME` or `ip`.
    pub key: Spanned<String>,
}

/// What identifies a caller for its bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitKey {
    /// A claim of the verified token.
    Claim(String),
    /// A request header (its first value).
    Header(HeaderName),
    /// The client address (after `trusted_proxies`).
    Ip,
}

impl std::str::FromStr for LimitKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("\"{text}\" is not a rate-limit key: use \"claim:NAME\", \"header:NAME\" or \"ip\"");
        match text.split_once(':') {
            None if text == "ip" => Ok(LimitKey::Ip),
            Some(("claim", name)) if !name.is_empty() => Ok(LimitKey::Claim(name.to_owned())),
            Some(("header", name)) => {
                HeaderName::from_bytes(name.as_bytes()).map(LimitKey::Header).map_err(|_| invalid())
            }
            _ => Err(invalid()),
        }
    }
}

/// One route's limit, as compiled.
#[derive(Debug, PartialEq)]
pub struct RouteLimit {
    route: Arc<str>,
    requests_per_second: f64,
    burst: u64,
    key: LimitKey,
}

/// The policy: owns the `rate_limit` key on `[[routes]]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RateLimitPolicy;

impl RoutePolicy for RateLimitPolicy {
    const NAME: &'static str = "rate_limit";
    const ROUTE_KEYS: &'static [&'static str] = &[ROUTE_KEY];
    type Compiled = RouteLimit;
    type Plugin = RateLimiter;

    fn compile_route(
        &self,
        route: &RouteInfo<'_>,
        mut sections: RouteSections<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<RouteLimit> {
        let file: FileRateLimit = sections.take(ROUTE_KEY)?.parse(errors)?;
        let mut ok = true;
        let rps = *file.requests_per_second.get_ref();
        if !(rps.is_finite() && rps > 0.0 && rps <= MAX_RATE) {
            errors.error(
                file.requests_per_second.span(),
                format!("must be more than 0 and at most {MAX_RATE}, got {rps}"),
            );
            ok = false;
        }
        let burst = *file.burst.get_ref();
        if !(1..=MAX_RATE as u64).contains(&burst) {
            errors.error(file.burst.span(), format!("must be 1 to {}, got {burst}", MAX_RATE as u64));
            ok = false;
        }
        let key = match file.key.get_ref().parse::<LimitKey>() {
            Ok(LimitKey::Claim(_)) if !route.checks_tokens => {
                errors.error(
                    file.key.span(),
                    "claims exist only on routes that check tokens; this route has auth = \"off\" (use \"ip\" or \"header:NAME\")",
                );
                None
            }
            Ok(key) => Some(key),
            Err(message) => {
                errors.error(file.key.span(), message);
                None
            }
        };
        let key = key?;
        ok.then(|| RouteLimit { route: Arc::from(route.name), requests_per_second: rps, burst, key })
    }

    fn build(&self, routes: PerRoute<RouteLimit>, previous: Option<&RateLimiter>) -> Option<RateLimiter> {
        if routes.is_empty() {
            return None;
        }
        // A route whose limit did not change keeps its buckets across a reload.
        let kept: HashMap<&str, &Arc<Limiter>> = previous
            .map(|p| p.routes.iter().map(|(_, limiter)| (&*limiter.limit.route, limiter)).collect())
            .unwrap_or_default();
        let routes = routes.map(|_, limit| match kept.get(&*limit.route) {
            Some(before) if before.limit == limit => Arc::clone(before),
            _ => Arc::new(Limiter::new(limit)),
        });
        Some(RateLimiter { routes })
    }
}

/// A route's limit with its buckets.
#[derive(Debug)]
pub struct Limiter {
    limit: RouteLimit,
    table: KeyTable,
    refused: metrics::Counter,
}

impl Limiter {
    fn new(limit: RouteLimit) -> Self {
        let rate = Rate::new(limit.requests_per_second, limit.burst);
        let refused = metrics::counter!(RATE_LIMITED_TOTAL, "route" => limit.route.to_string());
        Limiter { table: KeyTable::new(rate, MAX_TRACKED_KEYS), limit, refused }
    }
}

/// The plugin: checks each request against its route's limit at `on_request`.
#[derive(Debug)]
pub struct RateLimiter {
    routes: PerRoute<Arc<Limiter>>,
}

impl RateLimiter {
    /// The limiter of route `route`, if it has one.
    pub fn limiter(&self, route: gateway_plugin_api::RouteId) -> Option<&Arc<Limiter>> {
        self.routes.get(route)
    }
}

impl Plugin for RateLimiter {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn phases(&self) -> Phases {
        Phases { on_request: true, ..Phases::default() }
    }

    fn on_request(&self, ctx: &mut RequestCtx, request: &mut Parts) -> Flow {
        let Some(limiter) = ctx.route.and_then(|id| self.routes.get(id)) else {
            return Flow::Continue;
        };
        let octets: [u8; 16];
        let key: Option<&[u8]> = match &limiter.limit.key {
            LimitKey::Claim(name) => ctx.identity.as_ref().and_then(|identity| identity.claim(name)).map(str::as_bytes),
            LimitKey::Header(name) => request.headers.get(name).map(HeaderValue::as_bytes),
            LimitKey::Ip => match ctx.client_ip {
                // One spelling per address: an IPv4 caller is the same key over IPv4 and
                // IPv4-mapped IPv6.
                Some(IpAddr::V4(v4)) => {
                    octets = v4.to_ipv6_mapped().octets();
                    Some(&octets)
                }
                Some(IpAddr::V6(v6)) => {
                    octets = v6.to_ipv4_mapped().map_or(v6, |v4| v4.to_ipv6_mapped()).octets();
                    Some(&octets)
                }
                None => None,
            },
        };
        match limiter.table.take(key, ctx.started) {
            Ok(()) => Flow::Continue,
            Err(wait) => {
                limiter.refused.increment(1);
                let seconds = bucket::retry_after_seconds(wait);
                Flow::Respond(
                    Rejection::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        codes::RATE_LIMITED,
                        format!("too many requests on route {}; retry in {seconds} s", limiter.limit.route),
                    )
                    .with_header(RETRY_AFTER, HeaderValue::from(seconds)),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests;
