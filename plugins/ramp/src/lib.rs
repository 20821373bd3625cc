//! Guarded ramp: the dial moves itself while the service is as good as the monolith, and
//! backs off when it is not.
//!
//! ```toml
//! [[routes]]
//! name = "users"
//! # ...
//! rollout_percent = 5.0                # where the ramp starts
//! ramp = { to = 100.0, step = 5.0, every_seconds = 600, min_requests = 200,
//!          max_error_rate_increase = 1.0, max_p99_ratio = 1.5, on_fail = "rollback" }
//! ```
//!
//! [`RampPolicy`] owns the key and its checks; [`plan`] is the state machine, over an
//! injected clock and injected evidence. The plugin takes part in no request phase: the
//! gateway reads each route's effective dial from its [`RouteRamp`] when it picks a side
//! (one atomic load), and a once-a-second task hands each ramp the route's stats (the
//! ones `/admin/migration` shows) and records the events it returns.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod plan;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use gateway_plugin_api::config::{ConfigErrors, PerRoute, RouteInfo, RoutePolicy, RouteSections};
use gateway_plugin_api::{Phases, Plugin, RouteId};
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use plan::{Event, EventKind, Evidence, OnFail, Phase, Ramp, RampPlan, SideEvidence, pct};

/// The key this policy owns on `[[routes]]`.
pub const ROUTE_KEY: &str = "ramp";
/// Counter: ramp audit events by `route` and `event` (advance, wait, rollback, hold, complete).
pub const RAMP_EVENTS_TOTAL: &str = "gateway_ramp_events_total";
/// Gauge: the dial in force by `route`, beside the configured `gateway_rollout_percent`.
pub const ROLLOUT_EFFECTIVE_PERCENT: &str = "gateway_rollout_effective_percent";
/// Defaults of the optional keys.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;
/// See [`DEFAULT_MIN_REQUESTS`].
pub const DEFAULT_MAX_ERROR_RATE_INCREASE: f64 = 1.0;
/// See [`DEFAULT_MIN_REQUESTS`].
pub const DEFAULT_MAX_P99_RATIO: f64 = 1.5;
/// Longest step: a day.
pub const MAX_EVERY_SECONDS: u64 = 86_400;

/// `ramp = { ... }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRamp {
    /// Where the ramp stops, percent.
    pub to: Spanned<f64>,
    /// How far one step moves the dial, percent.
    pub step: Spanned<f64>,
    /// Seconds per step; steps fall on multiples of it.
    pub every_seconds: Spanned<u64>,
    /// Service requests a step needs.
    pub min_requests: Option<Spanned<u64>>,
    /// Percentage points the service's error rate may exceed the monolith's.
    pub max_error_rate_increase: Option<Spanned<f64>>,
    /// Multiple of the monolith's p99 the service's may reach.
    pub max_p99_ratio: Option<Spanned<f64>>,
    /// `rollback` (default) or `hold`.
    pub on_fail: Option<Spanned<String>>,
}

/// The policy: owns `ramp` on `[[routes]]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RampPolicy;

/// One route's checked ramp.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteRampConfig {
    /// The route's name.
    pub route: String,
    /// The plan.
    pub plan: RampPlan,
}

/// A percentage as basis points, by the dial's rule (0 to 100 in steps of 0.01, as
/// `gateway_plugin_rollout::BasisPoints::from_percent`; a policy crate depends only on the
/// plugin API, and the gateway's tests check that both agree).
pub fn basis_points(percent: f64) -> Option<u32> {
    if !(0.0..=100.0).contains(&percent) {
        return None;
    }
    let scaled = percent * 100.0;
    let rounded = scaled.round();
    ((scaled - rounded).abs() < 1e-6).then_some(rounded as u32)
}

impl RoutePolicy for RampPolicy {
    const NAME: &'static str = "ramp";
    const ROUTE_KEYS: &'static [&'static str] = &[ROUTE_KEY];
    type Compiled = RouteRampConfig;
    type Plugin = RampPlugin;

    fn compile_route(
        &self,
        route: &RouteInfo<'_>,
        mut sections: RouteSections<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<RouteRampConfig> {
        let section = sections.take(ROUTE_KEY)?;
        let whole = section.span();
        let file: FileRamp = section.parse(errors)?;
        let mut ok = true;
        let start = basis_points(route.rollout_percent).unwrap_or(10_000);
        let mut percent =
            |value: &Spanned<f64>, what: &str, errors: &mut ConfigErrors| match basis_points(*value.get_ref()) {
                Some(bp) => bp,
                None => {
                    errors.error(
                        value.span(),
                        format!("{what} must be 0 to 100 in steps of 0.01, got {}", value.get_ref()),
                    );
                    ok = false;
                    0
                }
            };
        let to = percent(&file.to, "to", errors);
        let step = percent(&file.step, "step", errors);
        if ok && to <= start {
            errors.error(
                file.to.span(),
                format!(
                    "to ({}) must be above the route's rollout_percent ({}), where the ramp starts",
                    pct(to),
                    pct(start)
                ),
            );
            ok = false;
        }
        if ok && step == 0 {
            errors.error(file.step.span(), "step must be above 0");
            ok = false;
        }
        let every = *file.every_seconds.get_ref();
        if !(1..=MAX_EVERY_SECONDS).contains(&every) {
            errors.error(
                file.every_seconds.span(),
                format!("every_seconds must be 1 to {MAX_EVERY_SECONDS}, got {every}"),
            );
            ok = false;
        }
        let min_requests = file.min_requests.as_ref().map_or(DEFAULT_MIN_REQUESTS, |v| *v.get_ref());
        if let Some(value) = &file.min_requests
            && *value.get_ref() == 0
        {
            errors.error(value.span(), "min_requests must be at least 1: a guard needs evidence");
            ok = false;
        }
        let max_error_rate_increase = match &file.max_error_rate_increase {
            None => DEFAULT_MAX_ERROR_RATE_INCREASE,
            Some(value) if (0.0..=100.0).contains(value.get_ref()) => *value.get_ref(),
            Some(value) => {
                errors.error(
                    value.span(),
                    format!("max_error_rate_increase must be 0 to 100 points, got {}", value.get_ref()),
                );
                ok = false;
                0.0
            }
        };
        let max_p99_ratio = match &file.max_p99_ratio {
            None => DEFAULT_MAX_P99_RATIO,
            Some(value) if *value.get_ref() >= 1.0 && value.get_ref().is_finite() => *value.get_ref(),
            Some(value) => {
                errors.error(value.span(), format!("max_p99_ratio must be at least 1.0, got {}", value.get_ref()));
                ok = false;
                1.0
            }
        };
        let on_fail = match file.on_fail.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
            None | Some(("rollback", _)) => OnFail::Rollback,
            Some(("hold", _)) => OnFail::Hold,
            Some((other, at)) => {
                errors.error(at, format!("on_fail must be \"rollback\" or \"hold\", got \"{other}\""));
                ok = false;
                OnFail::Rollback
            }
        };
        if ok && !route.sticky {
            errors.error(
                whole,
                "a ramp moves the dial through partial rollouts, which need a sticky key: set sticky = \"header:NAME\", \"cookie:NAME\" or \"ip\"",
            );
            ok = false;
        }
        ok.then(|| RouteRampConfig {
            route: route.name.to_owned(),
            plan: RampPlan {
                start,
                to,
                step,
                every_seconds: every,
                min_requests,
                max_error_rate_increase,
                max_p99_ratio,
                on_fail,
            },
        })
    }

    fn build(&self, routes: PerRoute<RouteRampConfig>, previous: Option<&RampPlugin>) -> Option<RampPlugin> {
        if routes.is_empty() {
            return None;
        }
        let kept: HashMap<&str, &Arc<RouteRamp>> = previous
            .map(|p| p.routes.iter().map(|(_, ramp)| (ramp.route.as_str(), ramp)).collect())
            .unwrap_or_default();
        let now = unix_now();
        let routes = routes.map(|_, config| match kept.get(config.route.as_str()) {
            // Same route, same dial, same ramp: it keeps its position (and a halt).
            Some(before) if before.lock().plan().keeps_position_under(&config.plan) => Arc::clone(before),
            _ => Arc::new(RouteRamp::new(config.route, Ramp::new(config.plan, now))),
        });
        Some(RampPlugin { routes })
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One route's running ramp, shared by the data plane (the effective dial), the ticker and
/// the admin endpoints.
#[derive(Debug)]
pub struct RouteRamp {
    /// The route's name.
    pub route: String,
    ramp: Mutex<Ramp>,
    /// The dial in force, basis points: what the data plane reads.
    effective: AtomicU32,
}

impl RouteRamp {
    /// Wraps a ramp.
    pub fn new(route: String, ramp: Ramp) -> Self {
        let effective = AtomicU32::new(ramp.effective());
        RouteRamp { route, ramp: Mutex::new(ramp), effective }
    }

    fn lock(&self) -> MutexGuard<'_, Ramp> {
        self.ramp.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its plan, as configured.
    pub fn plan(&self) -> RampPlan {
        self.lock().plan().clone()
    }

    /// The dial in force, basis points.
    pub fn effective(&self) -> u32 {
        self.effective.load(Ordering::Relaxed)
    }

    /// When the current step's evidence started (Unix seconds): the ticker's baseline.
    pub fn step_started(&self) -> u64 {
        self.lock().step_started()
    }

    /// Hands the ramp the step's evidence at `now`; returns the event it made, if any.
    pub fn tick(&self, now: u64, evidence: &Evidence) -> Option<Event> {
        let mut ramp = self.lock();
        let event = ramp.tick(now, evidence);
        self.effective.store(ramp.effective(), Ordering::Relaxed);
        event
    }

    /// Where the ramp is, for `/admin/migration`.
    pub fn status(&self) -> RampStatus {
        let ramp = self.lock();
        let plan = ramp.plan();
        RampStatus {
            state: ramp.phase().as_str(),
            effective_percent: f64::from(ramp.effective()) / 100.0,
            from_percent: f64::from(plan.start) / 100.0,
            to_percent: f64::from(plan.to) / 100.0,
            step_percent: f64::from(plan.step) / 100.0,
            every_seconds: plan.every_seconds,
            min_requests: plan.min_requests,
            on_fail: plan.on_fail.as_str(),
            step_started_unix: ramp.step_started(),
            next_step_at_unix: ramp.next_step_at(),
            last_event: ramp.last_event().map(EventReport::from),
        }
    }
}

/// A ramp's state, as `/admin/migration` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RampStatus {
    /// climbing, halted, complete.
    pub state: &'static str,
    /// The dial in force.
    pub effective_percent: f64,
    /// Where it started (`rollout_percent`).
    pub from_percent: f64,
    /// Where it stops.
    pub to_percent: f64,
    /// One step.
    pub step_percent: f64,
    /// Seconds per step.
    pub every_seconds: u64,
    /// Service requests a step needs.
    pub min_requests: u64,
    /// rollback or hold.
    pub on_fail: &'static str,
    /// When the current step's evidence started.
    pub step_started_unix: u64,
    /// When the next step may come, while climbing.
    pub next_step_at_unix: Option<u64>,
    /// The last audit event.
    pub last_event: Option<EventReport>,
}

/// An audit event, as shown.
#[derive(Clone, Debug, Serialize)]
pub struct EventReport {
    /// advance, wait, rollback, hold, complete.
    pub event: &'static str,
    /// When.
    pub at_unix: u64,
    /// Dial before, percent.
    pub from_percent: f64,
    /// Dial after.
    pub to_percent: f64,
    /// The evidence in words.
    pub message: String,
}

impl From<&Event> for EventReport {
    fn from(event: &Event) -> Self {
        EventReport {
            event: event.kind.as_str(),
            at_unix: event.at_unix,
            from_percent: f64::from(event.from) / 100.0,
            to_percent: f64::from(event.to) / 100.0,
            message: event.message.clone(),
        }
    }
}

/// The plugin: every ramped route's ramp.
#[derive(Debug)]
pub struct RampPlugin {
    routes: PerRoute<Arc<RouteRamp>>,
}

impl RampPlugin {
    /// Route `id`'s ramp, if it has one.
    pub fn route(&self, id: RouteId) -> Option<&Arc<RouteRamp>> {
        self.routes.get(id)
    }

    /// Every ramp, with its route id.
    pub fn ramps(&self) -> impl Iterator<Item = (RouteId, &Arc<RouteRamp>)> {
        self.routes.iter()
    }
}

impl Plugin for RampPlugin {
    fn name(&self) -> &'static str {
        "ramp"
    }

    fn phases(&self) -> Phases {
        // No request hook: the data plane reads the effective dial where it picks a side.
        Phases::default()
    }
}

#[cfg(test)]
mod tests;
