//! Migration progress: what share of each route the services really serve, how they
//! compare with the monolith, and which stage each route is in (`/admin/migration`, the
//! page, `gateway report`).
//!
//! The numbers come from [`crate::telemetry::stats`]. Stats are keyed by route name and
//! survive reloads; a reload records the last dial change and restarts the time in stage
//! when the stage changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_plugin_api::FallbackReason;
use gateway_plugin_breaker::CircuitState;
use serde::Serialize;

use crate::snapshot::Snapshot;
use crate::telemetry::stats::{
    BUCKET, BUCKETS, Bucket, DialChange, RouteStats, SHORT_BUCKETS, Side, Stage, current_slot,
};

/// A route at 100% is "complete" once its monolith side has served nothing for this long.
const COMPLETE_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default)]
pub struct MigrationStats {
    routes: Mutex<HashMap<String, Arc<RouteStats>>>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl MigrationStats {
    /// The stats table for `snapshot`, aligned with its routes: created for new routes,
    /// kept for known ones; records the dial change and stage change a reload brings.
    pub fn table_for(&self, snapshot: &Snapshot) -> Vec<Arc<RouteStats>> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        snapshot
            .routes
            .iter()
            .map(|route| {
                let stats = routes.entry(route.name.to_string()).or_default().clone();
                let percent = route.policy.as_ref().map(|p| p.percent.percent());
                let mut data = stats.lock();
                let now = unix_now();
                if let (Some(before), Some(after)) = (data.percent, percent)
                    && before != after
                {
                    data.last_dial_change = Some(DialChange { from: before, to: after, at_unix: now });
                }
                let stage = Stage::of(percent);
                if data.stage != Some(stage) {
                    data.stage = Some(stage);
                    data.stage_since = now;
                }
                data.percent = percent;
                drop(data);
                stats
            })
            .collect()
    }

    /// The `/admin/migration` document for the snapshot being served.
    pub fn report(&self, snapshot: &Snapshot, table: &[Arc<RouteStats>]) -> MigrationReport {
        let now = crate::clock::now();
        let slot = current_slot(now);
        let mut routes = Vec::new();
        let (mut all_requests, mut service_requests, mut fully_migrated, mut extracted) = (0u64, 0u64, 0usize, 0usize);
        for (route, stats) in snapshot.routes.iter().zip(table) {
            let data = stats.lock();
            let window = |buckets: usize| {
                let mut service = Side::default();
                let mut monolith = Side::default();
                let mut fallbacks = [0u64; FallbackReason::ALL.len()];
                for bucket in data.ring.iter().filter(|b| b.slot + buckets as u64 > slot && b.slot <= slot) {
                    service.add(&bucket.service);
                    monolith.add(&bucket.monolith);
                    for (sum, n) in fallbacks.iter_mut().zip(bucket.fallbacks) {
                        *sum += n;
                    }
                }
                (service, monolith, fallbacks)
            };
            let chart = chart(&data.ring, slot);
            let (service_1m, monolith_1m, _) = window(SHORT_BUCKETS);
            let (service_15m, monolith_15m, _) = window(BUCKETS);
            all_requests += data.total_service.requests + data.total_monolith.requests;
            service_requests += data.total_service.requests;
            if route.aggregate.is_some() {
                continue;
            }
            let Some(policy) = &route.policy else {
                continue;
            };
            extracted += 1;
            let breaker = route.service.as_ref().and_then(|s| s.breaker.as_ref()).map(|b| b.state(crate::clock::now()));
            let percent = policy.percent.percent();
            // The ramp's dial while the route has a ramp; 0 while the breaker is open.
            let dial = route.effective_percent().unwrap_or(percent);
            let effective = if breaker == Some(CircuitState::Open) { 0.0 } else { dial };
            let mut stage = match &route.ramp {
                Some(_) => Stage::of(Some(dial)),
                None => data.stage.unwrap_or_default(),
            };
            let monolith_quiet = data.monolith_last_served.is_none_or(|at| now.saturating_sub(at) >= COMPLETE_AFTER);
            let live_for = unix_now().saturating_sub(data.stage_since);
            if stage == Stage::Live && monolith_quiet && live_for >= COMPLETE_AFTER.as_secs() {
                stage = Stage::Complete;
                fully_migrated += 1;
            }
            let share = |service: &Side, monolith: &Side| {
                let total = service.requests + monolith.requests;
                (total > 0).then(|| service.requests as f64 * 100.0 / total as f64)
            };
            let side = |s: &Side| SideReport {
                requests: s.requests,
                error_rate_percent: (s.requests > 0).then(|| s.errors as f64 * 100.0 / s.requests as f64),
                p50_ms: s.quantile_ms(0.5),
                p99_ms: s.quantile_ms(0.99),
            };
            routes.push(RouteReport {
                name: route.name.to_string(),
                prefix: route.prefix.clone().unwrap_or_default(),
                service: route.service.as_ref().map(|s| s.name.to_string()).unwrap_or_default(),
                monolith: route.monolith.name.to_string(),
                dial_percent: percent,
                effective_dial_percent: effective,
                observed_service_share_percent: ShareReport {
                    last_1m: share(&service_1m, &monolith_1m),
                    last_15m: share(&service_15m, &monolith_15m),
                    since_start: share(&data.total_service, &data.total_monolith),
                },
                service_side: side(&data.total_service),
                monolith_side: side(&data.total_monolith),
                service_15m: side(&service_15m),
                monolith_15m: side(&monolith_15m),
                fallbacks: FallbackReason::ALL
                    .iter()
                    .zip(data.total_fallbacks)
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (r.as_str().to_owned(), n))
                    .collect(),
                breaker: breaker.map(CircuitState::as_str),
                stage: stage.as_str(),
                time_in_stage_seconds: live_for,
                last_dial_change: data.last_dial_change.clone(),
                shadow: snapshot.shadow().and_then(|shadow| shadow.summary(route.id)),
                ramp: route.ramp.as_ref().map(|ramp| ramp.status()),
                chart,
            });
        }
        MigrationReport {
            config_version: snapshot.meta.version,
            generated_at_unix: unix_now(),
            routes,
            overall: OverallReport {
                requests: all_requests,
                service_share_percent: (all_requests > 0)
                    .then(|| service_requests as f64 * 100.0 / all_requests as f64),
                routes_extracted: extracted,
                routes_fully_migrated: fully_migrated,
            },
        }
    }
}

/// `/admin/migration`.
#[derive(Clone, Debug, Serialize)]
pub struct MigrationReport {
    /// Config version the report describes.
    pub config_version: u64,
    /// When it was made.
    pub generated_at_unix: u64,
    /// Routes with a service side, in file order.
    pub routes: Vec<RouteReport>,
    /// All traffic.
    pub overall: OverallReport,
}

/// One route.
#[derive(Clone, Debug, Serialize)]
pub struct RouteReport {
    /// Route name.
    pub name: String,
    /// Its prefix.
    pub prefix: String,
    /// The service upstream.
    #[serde(rename = "service_upstream")]
    pub service: String,
    /// The monolith upstream.
    #[serde(rename = "monolith_upstream")]
    pub monolith: String,
    /// The configured dial.
    pub dial_percent: f64,
    /// The dial in force: the ramp's while one runs, 0 while the service's breaker is open.
    pub effective_dial_percent: f64,
    /// Share of the route's requests the service answered.
    pub observed_service_share_percent: ShareReport,
    /// Service side since start.
    #[serde(rename = "service_since_start")]
    pub service_side: SideReport,
    /// Monolith side since start.
    #[serde(rename = "monolith_since_start")]
    pub monolith_side: SideReport,
    /// Service side, last 15 minutes.
    pub service_15m: SideReport,
    /// Monolith side, last 15 minutes.
    pub monolith_15m: SideReport,
    /// Fallbacks since start, by reason.
    pub fallbacks: BTreeMap<String, u64>,
    /// The service's breaker: closed, open, half_open; absent without a breaker.
    pub breaker: Option<&'static str>,
    /// monolith only, canary, live at 100%, complete.
    pub stage: &'static str,
    /// Seconds since the route entered its dial stage.
    pub time_in_stage_seconds: u64,
    /// The last reload that moved the dial.
    pub last_dial_change: Option<DialChange>,
    /// Shadow traffic results, when the route has `shadow`.
    pub shadow: Option<gateway_plugin_shadow::ShadowSummary>,
    /// The guarded ramp, when the route has `ramp`: state, next step, last event.
    pub ramp: Option<gateway_plugin_ramp::RampStatus>,
    /// The last 15 minutes, slot by slot.
    pub chart: ChartReport,
}

/// Observed service share over three windows (percent; absent without traffic).
#[derive(Clone, Debug, Serialize)]
pub struct ShareReport {
    /// Last minute.
    pub last_1m: Option<f64>,
    /// Last 15 minutes.
    pub last_15m: Option<f64>,
    /// Since the gateway started.
    pub since_start: Option<f64>,
}

/// A route's last 15 minutes, one point per 15-second slot, oldest first: what the
/// page draws.
#[derive(Clone, Debug, Serialize)]
pub struct ChartReport {
    /// Width of one slot.
    pub slot_seconds: u64,
    /// One point per slot of the window; slots without traffic have no rates.
    pub points: Vec<ChartPoint>,
}

/// One 15-second slot.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChartPoint {
    /// Requests on both sides.
    pub requests: u64,
    /// The service's share of them, percent.
    pub service_share_percent: Option<f64>,
    /// The dial in force at the slot's last request (a ramp's effective dial).
    pub dial_percent: Option<f64>,
    /// 5xx share of the service's requests, percent.
    pub service_error_rate_percent: Option<f64>,
    /// 5xx share of the monolith's requests, percent.
    pub monolith_error_rate_percent: Option<f64>,
    /// The service's p99 (upper bound of its histogram bucket), ms.
    pub service_p99_ms: Option<f64>,
    /// The monolith's p99, ms.
    pub monolith_p99_ms: Option<f64>,
}

/// The window's points for a route's ring, ending with the slot `now_slot`.
fn chart(ring: &[Bucket], now_slot: u64) -> ChartReport {
    let rate = |side: &Side| (side.requests > 0).then(|| side.errors as f64 * 100.0 / side.requests as f64);
    // Always the whole window: slots before the gateway started are empty.
    let points = (0..BUCKETS as u64)
        .map(|back| now_slot.checked_sub(BUCKETS as u64 - 1 - back))
        .map(|slot| {
            match slot
                .and_then(|slot| ring.iter().find(|b| b.slot == slot && (b.service.requests + b.monolith.requests) > 0))
            {
                Some(b) => {
                    let requests = b.service.requests + b.monolith.requests;
                    ChartPoint {
                        requests,
                        service_share_percent: Some(b.service.requests as f64 * 100.0 / requests as f64),
                        dial_percent: b.dial_percent,
                        service_error_rate_percent: rate(&b.service),
                        monolith_error_rate_percent: rate(&b.monolith),
                        service_p99_ms: b.service.quantile_ms(0.99),
                        monolith_p99_ms: b.monolith.quantile_ms(0.99),
                    }
                }
                None => ChartPoint::default(),
            }
        })
        .collect();
    ChartReport { slot_seconds: BUCKET.as_secs(), points }
}

/// One side of a route.
#[derive(Clone, Debug, Serialize)]
pub struct SideReport {
    /// Requests answered.
    pub requests: u64,
    /// 5xx share, percent.
    pub error_rate_percent: Option<f64>,
    /// Median latency to the response head (upper bound of its histogram bucket), ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, same.
    pub p99_ms: Option<f64>,
}

/// All traffic.
#[derive(Clone, Debug, Serialize)]
pub struct OverallReport {
    /// Requests on every route (including unmatched traffic) since start.
    pub requests: u64,
    /// Share of them that extracted services answered.
    pub service_share_percent: Option<f64>,
    /// Routes with a service side.
    pub routes_extracted: usize,
    /// Of those, routes complete: at 100% for 15 minutes with nothing served by the monolith.
    pub routes_fully_migrated: usize,
}

/// Sets `gateway_rollout_effective_percent` for every route of a snapshot being installed.
pub(crate) fn publish_effective_dials(snapshot: &Snapshot) {
    for route in &snapshot.routes {
        if let Some(percent) = route.effective_percent() {
            metrics::gauge!(gateway_plugin_ramp::ROLLOUT_EFFECTIVE_PERCENT, "route" => route.name.to_string())
                .set(percent);
        }
    }
}
