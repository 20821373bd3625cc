//! Migration progress: what share of each route the services really serve, how they
//! compare with the monolith, and which stage each route is in.
//!
//! The gateway measures this itself, per route and side (service, monolith):
//! - totals since start;
//! - a rolling window of sixty 15-second buckets (15 minutes), allocated only for routes
//!   that see traffic, so memory stays bounded by the routes actually used;
//! - per bucket, requests, errors (5xx, including the gateway's own 502/503/504), a
//!   latency histogram for p50/p99, and fallbacks by reason.
//!
//! Stats are keyed by route name and survive reloads. A reload records the last dial
//! change and restarts the time in stage when the stage changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_plugin_api::Target;
use gateway_plugin_breaker::CircuitState;
use serde::Serialize;

use crate::snapshot::Snapshot;

/// Width of one rolling bucket.
const BUCKET: Duration = Duration::from_secs(15);
/// Buckets kept: 15 minutes.
const BUCKETS: usize = 60;
/// Buckets in the short window: 1 minute.
const SHORT_BUCKETS: usize = 4;
/// Upper bounds (ms) of the latency histogram used for p50/p99; the last bucket is open.
const LATENCY_BOUNDS_MS: [f64; 15] =
    [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0];
/// Fallback reasons, in report order.
const FALLBACK_REASONS: [&str; 5] = ["breaker_open", "connect_error", "timeout", "status_5xx", "exchange_error"];
/// A route at 100% is "complete" once its monolith side has served nothing for this long.
const COMPLETE_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Clone, Copy, Debug, Default)]
struct Side {
    requests: u64,
    errors: u64,
    latency: [u32; LATENCY_BOUNDS_MS.len() + 1],
}

impl Side {
    fn record(&mut self, error: bool, latency: Duration) {
        self.requests += 1;
        self.errors += u64::from(error);
        let ms = latency.as_secs_f64() * 1000.0;
        let index = LATENCY_BOUNDS_MS.iter().position(|bound| ms <= *bound).unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[index] = self.latency[index].saturating_add(1);
    }

    fn add(&mut self, other: &Side) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency) {
            *mine = mine.saturating_add(theirs);
        }
    }

    /// The upper bound (ms) of the bucket holding quantile `q`.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().map(|c| u64::from(*c)).sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.latency.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Index of the 15-second slot since the stats' epoch.
    slot: u64,
    service: Side,
    monolith: Side,
    fallbacks: [u64; FALLBACK_REASONS.len()],
}

#[derive(Debug, Default)]
struct RouteData {
    total_service: Side,
    total_monolith: Side,
    total_fallbacks: [u64; FALLBACK_REASONS.len()],
    /// Allocated on the first request.
    ring: Vec<Bucket>,
    /// Stage and when it was entered (wall clock, seconds since the Unix epoch).
    stage: &'static str,
    stage_since: u64,
    /// The dial as last installed, and the last change of it.
    percent: Option<f64>,
    last_dial_change: Option<DialChange>,
    /// When the monolith side last served this route (the monotonic [`crate::clock`]).
    monolith_last_served: Option<Duration>,
}

/// A change of a route's dial, applied by a reload.
#[derive(Clone, Debug, Serialize)]
pub struct DialChange {
    /// Before, in percent.
    pub from: f64,
    /// After, in percent.
    pub to: f64,
    /// When (seconds since the Unix epoch).
    pub at_unix: u64,
}

/// One route's stats; shared by every snapshot that has a route of this name.
#[derive(Debug, Default)]
pub struct RouteStats {
    data: Mutex<RouteData>,
}

impl RouteStats {
    fn lock(&self) -> MutexGuard<'_, RouteData> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one finished request: its side, whether it was an error (5xx), its time
    /// to the response head, and the fallback reason if the monolith stood in.
    pub fn record(&self, target: Option<Target>, error: bool, latency: Duration, fallback: Option<&str>) {
        let now = crate::clock::now();
        let slot = current_slot(now);
        let fallback_index = fallback.and_then(|f| FALLBACK_REASONS.iter().position(|r| *r == f));
        let mut data = self.lock();
        if data.ring.is_empty() {
            data.ring = vec![Bucket::default(); BUCKETS];
        }
        let index = (slot % BUCKETS as u64) as usize;
        if data.ring[index].slot != slot {
            data.ring[index] = Bucket { slot, ..Bucket::default() };
        }
        let bucket = &mut data.ring[index];
        match target {
            Some(Target::Service) => bucket.service.record(error, latency),
            Some(Target::Monolith) => bucket.monolith.record(error, latency),
            _ => {}
        }
        if let Some(i) = fallback_index {
            bucket.fallbacks[i] += 1;
        }
        match target {
            Some(Target::Service) => data.total_service.record(error, latency),
            Some(Target::Monolith) => {
                data.total_monolith.record(error, latency);
                data.monolith_last_served = Some(now);
            }
            _ => {}
        }
        if let Some(i) = fallback_index {
            data.total_fallbacks[i] += 1;
        }
    }
}

/// All routes' stats, by route name.
#[derive(Debug, Default)]
pub struct MigrationStats {
    routes: Mutex<HashMap<String, Arc<RouteStats>>>,
}

fn current_slot(now: Duration) -> u64 {
    now.as_secs() / BUCKET.as_secs()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn stage_of(percent: Option<f64>) -> &'static str {
    match percent {
        None => "monolith only",
        Some(p) if p <= 0.0 => "monolith only",
        Some(p) if p >= 100.0 => "live at 100%",
        Some(_) => "canary",
    }
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
                let stage = stage_of(percent);
                if data.stage != stage {
                    data.stage = stage;
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
                let mut fallbacks = [0u64; FALLBACK_REASONS.len()];
                for bucket in data.ring.iter().filter(|b| b.slot + buckets as u64 > slot && b.slot <= slot) {
                    service.add(&bucket.service);
                    monolith.add(&bucket.monolith);
                    for (sum, n) in fallbacks.iter_mut().zip(bucket.fallbacks) {
                        *sum += n;
                    }
                }
                (service, monolith, fallbacks)
            };
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
            let effective = if breaker == Some(CircuitState::Open) { 0.0 } else { percent };
            let mut stage = data.stage;
            let monolith_quiet = data.monolith_last_served.is_none_or(|at| now.saturating_sub(at) >= COMPLETE_AFTER);
            let live_for = unix_now().saturating_sub(data.stage_since);
            if stage == "live at 100%" && monolith_quiet && live_for >= COMPLETE_AFTER.as_secs() {
                stage = "complete";
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
                fallbacks: FALLBACK_REASONS
                    .iter()
                    .zip(data.total_fallbacks)
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| ((*r).to_owned(), n))
                    .collect(),
                breaker: breaker.map(CircuitState::as_str),
                stage,
                time_in_stage_seconds: live_for,
                last_dial_change: data.last_dial_change.clone(),
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
    /// The dial after the breaker: 0 while the service's breaker is open.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_histogram() {
        let mut side = Side::default();
        for ms in [0.3, 0.4, 0.8, 2.0, 40.0] {
            side.record(false, Duration::from_secs_f64(ms / 1000.0));
        }
        assert_eq!(side.quantile_ms(0.5), Some(1.0), "the 3rd of 5 is 0.8 ms, in the <=1 ms bucket");
        assert_eq!(side.quantile_ms(0.99), Some(50.0));
        assert_eq!(Side::default().quantile_ms(0.5), None);
    }

    #[test]
    fn stages_follow_the_dial() {
        assert_eq!(stage_of(Some(0.0)), "monolith only");
        assert_eq!(stage_of(Some(12.5)), "canary");
        assert_eq!(stage_of(Some(100.0)), "live at 100%");
        assert_eq!(stage_of(None), "monolith only");
    }
}
