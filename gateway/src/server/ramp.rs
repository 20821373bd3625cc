//! The ramp driver: once a second, hands every ramped route's ramp the evidence of its
//! current step (the route's stats since the step started: the ones `/admin/migration`
//! shows) and records what it decides: a log line, `gateway_ramp_events_total`,
//! `gateway_rollout_effective_percent`, and an entry in `/admin/config`'s history.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_plugin_ramp::{Event, Evidence, RAMP_EVENTS_TOTAL, ROLLOUT_EFFECTIVE_PERCENT, RouteRamp, SideEvidence};
use metrics::{counter, gauge};
use tokio::sync::watch;

use crate::config::audit::{AppliedChange, Change};
use crate::server::state::{Gateway, stopped};
use crate::snapshot::Snapshot;
use crate::telemetry::stats::Side;

/// How often the guard looks at the evidence.
const TICK: Duration = Duration::from_secs(1);

/// A route's totals since the gateway started: what `/admin/migration` shows.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    service: Side,
    monolith: Side,
    /// Requests the monolith answered in the service's place (fallbacks, diversions).
    fallbacks: u64,
}

/// The route's totals when its ramp's current step started: the step's evidence is what
/// was added since.
struct Baseline {
    ramp: Arc<RouteRamp>,
    step_started: u64,
    at_start: Totals,
}

impl Baseline {
    fn new(ramp: &Arc<RouteRamp>, totals: Totals) -> Self {
        Baseline { ramp: Arc::clone(ramp), step_started: ramp.step_started(), at_start: totals }
    }

    /// Starts over from `totals` when the ramp is another one (a reload that changed it)
    /// or has begun a new step.
    fn follow(&mut self, ramp: &Arc<RouteRamp>, totals: Totals) {
        if !Arc::ptr_eq(&self.ramp, ramp) || self.step_started != ramp.step_started() {
            *self = Baseline::new(ramp, totals);
        }
    }

    /// The evidence of `ramp`'s current step, given the route's totals now.
    fn evidence(&mut self, ramp: &Arc<RouteRamp>, totals: Totals) -> Evidence {
        self.follow(ramp, totals);
        Evidence {
            service: side(
                &totals.service.since(&self.at_start.service),
                totals.fallbacks.saturating_sub(self.at_start.fallbacks),
            ),
            monolith: side(&totals.monolith.since(&self.at_start.monolith), 0),
        }
    }
}

/// Drives every ramp until shutdown.
pub(crate) async fn drive(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut baselines: HashMap<String, Baseline> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => step(&gateway, unix_now(), &mut baselines),
            _ = stopped(&mut shutdown) => return,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A side's evidence; for the service, requests the monolith answered in its place
/// (fallbacks, breaker diversions) are requests it failed.
fn side(side: &Side, failed_elsewhere: u64) -> SideEvidence {
    SideEvidence {
        requests: side.requests + failed_elsewhere,
        errors: side.errors + failed_elsewhere,
        p99_ms: side.quantile_bounds_ms(0.99),
    }
}

/// One look at every ramp of the snapshot serving now.
fn step(gateway: &Gateway, now: u64, baselines: &mut HashMap<String, Baseline>) {
    let snapshot = gateway.snapshot();
    let Some(table) = snapshot.route_stats.get() else { return };
    let mut seen = Vec::new();
    for route in &snapshot.routes {
        let (Some(ramp), Some(stats)) = (&route.ramp, table.get(route.id.0)) else { continue };
        seen.push(route.name.to_string());
        let totals = {
            let data = stats.lock();
            Totals {
                service: data.total_service,
                monolith: data.total_monolith,
                fallbacks: data.total_fallbacks.iter().sum::<u64>(),
            }
        };
        let baseline = baselines.entry(route.name.to_string()).or_insert_with(|| Baseline::new(ramp, totals));
        let evidence = baseline.evidence(ramp, totals);
        if let Some(event) = ramp.tick(now, &evidence) {
            record(gateway, &snapshot, &route.name, &event);
            // The next step's evidence starts now, not at the next tick.
            baseline.follow(ramp, totals);
        }
    }
    baselines.retain(|name, _| seen.contains(name));
}

/// An audit event: logged once, counted, kept in `/admin/config`'s history.
fn record(gateway: &Gateway, snapshot: &Snapshot, route: &str, event: &Event) {
    let kind = event.kind.as_str();
    tracing::info!(route, event = kind, from = event.from, to = event.to, "ramp: {}", event.message);
    counter!(RAMP_EVENTS_TOTAL, "route" => route.to_owned(), "event" => kind).increment(1);
    gauge!(ROLLOUT_EFFECTIVE_PERCENT, "route" => route.to_owned()).set(f64::from(event.to) / 100.0);
    let (at, _) = crate::config::audit::now();
    gateway.reload_state().record_applied(AppliedChange {
        version: snapshot.meta.version,
        checksum: snapshot.meta.checksum.clone(),
        at,
        trigger: "ramp",
        changes: vec![Change {
            subject: format!("route {route}"),
            change: format!("ramp {kind}"),
            from: Some(gateway_plugin_ramp::pct(event.from)),
            to: Some(gateway_plugin_ramp::pct(event.to)),
            detail: Some(event.message.clone()),
        }],
    });
}

#[cfg(test)]
mod tests {
    use gateway_plugin_ramp::{OnFail, Ramp, RampPlan};

    use super::*;

    fn ramp(start_at: u64) -> Arc<RouteRamp> {
        let plan = RampPlan {
            start: 1000,
            to: 5000,
            step: 1000,
            every_seconds: 10,
            min_requests: 2,
            max_error_rate_increase: 1.0,
            max_p99_ratio: 1.5,
            on_fail: OnFail::Rollback,
        };
        Arc::new(RouteRamp::new("users".to_owned(), Ramp::new(plan, start_at)))
    }

    fn totals(service: &[bool], monolith: &[bool], fallbacks: u64) -> Totals {
        let side = |errors: &[bool]| {
            let mut side = Side::default();
            for error in errors {
                side.record(*error, Duration::from_millis(3));
            }
            side
        };
        Totals { service: side(service), monolith: side(monolith), fallbacks }
    }

    #[test]
    fn a_step_sees_only_what_happened_since_it_began() {
        let ramp = ramp(100);
        // Traffic before the ramp started is not its evidence.
        let before = totals(&[true, true, false], &[false; 4], 0);
        let mut baseline = Baseline::new(&ramp, before);
        assert_eq!(baseline.evidence(&ramp, before), Evidence::default());
        let later = totals(&[true, true, false, false, false, true], &[false; 9], 2);
        let evidence = baseline.evidence(&ramp, later);
        assert_eq!(evidence.monolith.requests, 5);
        assert_eq!((evidence.monolith.errors, evidence.monolith.p99_ms), (0, Some((2.5, 5.0))));
        assert_eq!(
            (evidence.service.requests, evidence.service.errors),
            (3 + 2, 1 + 2),
            "two fallbacks count as service requests it failed"
        );
    }

    #[test]
    fn a_new_step_or_a_changed_ramp_starts_the_evidence_over() {
        let ramp = ramp(100);
        let start = totals(&[], &[], 0);
        let mut baseline = Baseline::new(&ramp, start);
        let healthy = totals(&[false; 4], &[false; 4], 0);
        let evidence = baseline.evidence(&ramp, healthy);
        let event = ramp.tick(110, &evidence).expect("the step ends at 110");
        assert_eq!((event.from, event.to), (1000, 2000));
        baseline.follow(&ramp, healthy);
        assert_eq!(baseline.evidence(&ramp, healthy), Evidence::default(), "the new step has no evidence yet");
        let more = totals(&[false; 6], &[false; 5], 0);
        assert_eq!(baseline.evidence(&ramp, more).service.requests, 2);

        // A reload that changed the ramp brings a new one: its evidence starts at the reload.
        let reloaded = self::ramp(115);
        assert_eq!(baseline.evidence(&reloaded, more), Evidence::default());
    }
}
