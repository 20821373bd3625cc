//! Route transforms: the service's own paths and headers.
//!
//! ```toml
//! [[routes]]
//! name = "users"
//! prefix = "/api/users"
//! service = "users"
//! service_prefix = "/v2/users"   # the service gets /v2/users/7 for /api/users/7; the monolith the path as matched
//! request_headers = { set = { "x-migrated-by" = "gateway" }, remove = ["x-debug"] }
//! response_headers = { set = { "cache-control" = "no-store" }, remove = ["server"] }
//! ```
//!
//! - `service_prefix` ([`prefix`]) replaces the matched prefix on requests sent to the
//!   service only; the monolith, a fallback replay on it included, gets the path as
//!   matched. It runs at `upstream_exchange`, which the gateway calls for every request it
//!   sends (the forward, a replay, each aggregate part fetched through a route).
//! - `request_headers` and `response_headers` ([`edits`]) apply on both sides; the
//!   response edits apply to every response of the route, the gateway's own included.
//!   Headers the gateway owns (see [`gateway_plugin_api::headers`] and the claim headers)
//!   are refused at their position in the file.
//! - `host_header` ([`host`]) is a setting of an upstream: its type and checks live here,
//!   the gateway's upstream handle applies it to every request it sends.
//!
//! A route without transforms costs one table lookup per exchange while another route has
//! some; a config without any builds no plugin at all.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod edits;
pub mod host;
pub mod prefix;

use gateway_plugin_api::config::{ConfigErrors, PerRoute, RouteInfo, RoutePolicy, RouteSections};
use gateway_plugin_api::{Exchange, Phases, Plugin, RequestCtx, Target};
use toml::Spanned;

pub use edits::{FileHeaderEdits, HeaderEdits};
pub use host::HostHeader;
pub use prefix::ServicePrefix;

/// The route key of the service-side prefix.
pub const SERVICE_PREFIX: &str = "service_prefix";
/// The route key of the request header edits.
pub const REQUEST_HEADERS: &str = "request_headers";
/// The route key of the response header edits.
pub const RESPONSE_HEADERS: &str = "response_headers";

/// One route's transforms, compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTransform {
    /// The rewrite for the service side.
    pub service_prefix: Option<ServicePrefix>,
    /// Edits of every request sent upstream for the route.
    pub request_headers: HeaderEdits,
    /// Edits of every response of the route.
    pub response_headers: HeaderEdits,
}

/// The policy: owns `service_prefix`, `request_headers` and `response_headers` on
/// `[[routes]]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransformPolicy;

impl RoutePolicy for TransformPolicy {
    const NAME: &'static str = "transform";
    const ROUTE_KEYS: &'static [&'static str] = &[SERVICE_PREFIX, REQUEST_HEADERS, RESPONSE_HEADERS];
    type Compiled = RouteTransform;
    type Plugin = Transforms;

    fn compile_route(
        &self,
        route: &RouteInfo<'_>,
        mut sections: RouteSections<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<RouteTransform> {
        let mut valid = true;
        let mut transform = RouteTransform::default();
        if let Some(section) = sections.take(SERVICE_PREFIX) {
            let value: Option<Spanned<String>> = section.parse(errors);
            match value {
                Some(value) => match prefix::prefix_problem(value.get_ref()) {
                    None => transform.service_prefix = Some(ServicePrefix::new(route.prefix, value.get_ref())),
                    Some(problem) => {
                        errors.error(value.span(), format!("\"{}\": {problem}", value.get_ref()));
                        valid = false;
                    }
                },
                None => valid = false,
            }
        }
        for (key, edits) in
            [(REQUEST_HEADERS, &mut transform.request_headers), (RESPONSE_HEADERS, &mut transform.response_headers)]
        {
            let Some(section) = sections.take(key) else { continue };
            let whole = section.span();
            match section.parse::<FileHeaderEdits>(errors) {
                Some(file) => match HeaderEdits::compile(file, whole, route.claim_headers, errors) {
                    Some(compiled) => *edits = compiled,
                    None => valid = false,
                },
                None => valid = false,
            }
        }
        valid.then_some(transform)
    }

    fn build(&self, routes: PerRoute<RouteTransform>, _previous: Option<&Transforms>) -> Option<Transforms> {
        let mut phases = Phases::default();
        for (_, transform) in routes.iter() {
            phases.upstream_exchange |= transform.service_prefix.is_some() || !transform.request_headers.is_empty();
            phases.on_response |= !transform.response_headers.is_empty();
        }
        (phases != Phases::default()).then_some(Transforms { routes, phases })
    }
}

/// The plugin: every route's transforms, indexed by route.
#[derive(Debug)]
pub struct Transforms {
    routes: PerRoute<RouteTransform>,
    phases: Phases,
}

impl Plugin for Transforms {
    fn name(&self) -> &'static str {
        "transform"
    }

    fn phases(&self) -> Phases {
        self.phases
    }

    fn upstream_exchange(&self, _ctx: &RequestCtx, exchange: &Exchange, request: &mut http::request::Parts) {
        let Some(transform) = self.routes.get(exchange.route) else { return };
        transform.request_headers.apply(&mut request.headers);
        if let (Target::Service, Some(prefix)) = (exchange.side, &transform.service_prefix)
            && let Some(uri) = prefix.rewrite(&request.uri)
        {
            request.uri = uri;
        }
    }

    fn on_response(&self, ctx: &RequestCtx, response: &mut http::response::Parts) {
        let Some(transform) = ctx.route.and_then(|id| self.routes.get(id)) else { return };
        transform.response_headers.apply(&mut response.headers);
    }
}

#[cfg(test)]
mod tests;
