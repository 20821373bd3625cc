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

/// The route's totals when its current step started.
struct Baseline {
    ramp: Arc<RouteRamp>,
    step_started: u64,
    service: Side,
    monolith: Side,
    fallbacks: u64,
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
        let (service, monolith, fallbacks) = {
            let data = stats.lock();
            (data.total_service, data.total_monolith, data.total_fallbacks.iter().sum::<u64>())
        };
        // A new ramp (start, or a reload that changed it) or a new step starts from here.
        let baseline = baselines.entry(route.name.to_string()).or_insert_with(|| Baseline {
            ramp: ramp.clone(),
            step_started: ramp.step_started(),
            service,
            monolith,
            fallbacks,
        });
        if !Arc::ptr_eq(&baseline.ramp, ramp) || baseline.step_started != ramp.step_started() {
            *baseline =
                Baseline { ramp: ramp.clone(), step_started: ramp.step_started(), service, monolith, fallbacks };
        }
        let evidence = Evidence {
            service: side(&service.since(&baseline.service), fallbacks.saturating_sub(baseline.fallbacks)),
            monolith: side(&monolith.since(&baseline.monolith), 0),
        };
        if let Some(event) = ramp.tick(now, &evidence) {
            record(gateway, &snapshot, &route.name, &event);
            if ramp.step_started() != baseline.step_started {
                *baseline =
                    Baseline { ramp: ramp.clone(), step_started: ramp.step_started(), service, monolith, fallbacks };
            }
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
