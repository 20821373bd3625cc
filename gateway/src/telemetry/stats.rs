//! Per-route request statistics behind the migration report: what share of each route
//! the services really serve and how they compare with the monolith.
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

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gateway_plugin_api::{FallbackReason, Target};
use serde::Serialize;

/// Width of one rolling bucket.
pub(crate) const BUCKET: Duration = Duration::from_secs(15);
/// Buckets kept: 15 minutes.
pub(crate) const BUCKETS: usize = 60;
/// Buckets in the short window: 1 minute.
pub(crate) const SHORT_BUCKETS: usize = 4;
/// Upper bounds (ms) of the latency histogram used for p50/p99; the last bucket is open.
const LATENCY_BOUNDS_MS: [f64; 15] =
    [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0];
/// Fallback reasons, in report order.
const REASONS: usize = FallbackReason::ALL.len();

/// Requests, errors and latencies of one side over some time.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Side {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    latency: [u32; LATENCY_BOUNDS_MS.len() + 1],
}

impl Side {
    pub(crate) fn record(&mut self, error: bool, latency: Duration) {
        self.requests += 1;
        self.errors += u64::from(error);
        let ms = latency.as_secs_f64() * 1000.0;
        let index = LATENCY_BOUNDS_MS.iter().position(|bound| ms <= *bound).unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[index] = self.latency[index].saturating_add(1);
    }

    pub(crate) fn add(&mut self, other: &Side) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency) {
            *mine = mine.saturating_add(theirs);
        }
    }

    /// What was added to `self` since it was `earlier` (totals only grow).
    pub(crate) fn since(&self, earlier: &Side) -> Side {
        let mut delta = Side {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self.latency,
        };
        for (now, then) in delta.latency.iter_mut().zip(earlier.latency) {
            *now = now.saturating_sub(then);
        }
        delta
    }

    /// Both bounds (ms) of the bucket holding quantile `q`: the lower is the previous
    /// bucket's upper bound (0 for the first).
    pub(crate) fn quantile_bounds_ms(&self, q: f64) -> Option<(f64, f64)> {
        let upper = self.quantile_ms(q)?;
        let lower = LATENCY_BOUNDS_MS.iter().copied().take_while(|bound| *bound < upper).last().unwrap_or(0.0);
        Some((lower, upper))
    }

    /// The upper bound (ms) of the bucket holding quantile `q`.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
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

/// One 15-second slot of the rolling window.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Bucket {
    /// Index of the 15-second slot since the stats' epoch.
    pub(crate) slot: u64,
    pub(crate) service: Side,
    pub(crate) monolith: Side,
    pub(crate) fallbacks: [u64; REASONS],
    /// The dial in force (percent) at the slot's last request, for the page's charts.
    pub(crate) dial_percent: Option<f64>,
}

/// Where a route is in its migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    /// The dial is at 0 (or the route has no service side).
    #[default]
    MonolithOnly,
    /// The dial is between 0 and 100.
    Canary,
    /// The dial is at 100.
    Live,
    /// At 100 for 15 minutes with nothing served by the monolith.
    Complete,
}

impl Stage {
    /// The stage for a dial (percent; `None` for a route without one).
    pub fn of(percent: Option<f64>) -> Stage {
        match percent {
            None => Stage::MonolithOnly,
            Some(p) if p <= 0.0 => Stage::MonolithOnly,
            Some(p) if p >= 100.0 => Stage::Live,
            Some(_) => Stage::Canary,
        }
    }

    /// How the report and the page name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::MonolithOnly => "monolith only",
            Stage::Canary => "canary",
            Stage::Live => "live at 100%",
            Stage::Complete => "complete",
        }
    }
}

/// Everything recorded for one route.
#[derive(Debug, Default)]
pub(crate) struct RouteData {
    pub(crate) total_service: Side,
    pub(crate) total_monolith: Side,
    pub(crate) total_fallbacks: [u64; REASONS],
    /// Allocated on the first request.
    pub(crate) ring: Vec<Bucket>,
    /// Stage (`None` until the first config is installed) and when it was entered (wall clock, seconds since the Unix epoch).
    pub(crate) stage: Option<Stage>,
    pub(crate) stage_since: u64,
    /// The dial as last installed, and the last change of it.
    pub(crate) percent: Option<f64>,
    pub(crate) last_dial_change: Option<DialChange>,
    /// When the monolith side last served this route (the monotonic [`crate::clock`]).
    pub(crate) monolith_last_served: Option<Duration>,
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
    pub(crate) fn lock(&self) -> MutexGuard<'_, RouteData> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one finished request: its side, whether it was an error (5xx), its time
    /// to the response head, the fallback reason if the monolith stood in, and the dial
    /// in force (percent; a ramp's effective dial).
    pub fn record(
        &self,
        target: Option<Target>,
        error: bool,
        latency: Duration,
        fallback: Option<FallbackReason>,
        dial_percent: Option<f64>,
    ) {
        let now = crate::clock::now();
        let slot = current_slot(now);
        let fallback_index = fallback.map(FallbackReason::index);
        let mut data = self.lock();
        if data.ring.is_empty() {
            data.ring = vec![Bucket::default(); BUCKETS];
        }
        let index = (slot % BUCKETS as u64) as usize;
        if data.ring[index].slot != slot {
            data.ring[index] = Bucket { slot, ..Bucket::default() };
        }
        let bucket = &mut data.ring[index];
        if dial_percent.is_some() {
            bucket.dial_percent = dial_percent;
        }
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

/// The 15-second slot `now` (monotonic) falls in.
pub(crate) fn current_slot(now: Duration) -> u64 {
    now.as_secs() / BUCKET.as_secs()
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
        assert_eq!(Stage::of(Some(0.0)), Stage::MonolithOnly);
        assert_eq!(Stage::of(Some(12.5)), Stage::Canary);
        assert_eq!(Stage::of(Some(100.0)), Stage::Live);
        assert_eq!(Stage::of(None), Stage::MonolithOnly);
        assert_eq!(Stage::Live.as_str(), "live at 100%");
        assert_eq!(Stage::Complete.as_str(), "complete");
    }

    #[test]
    fn fallbacks_are_counted_by_reason() {
        let stats = RouteStats::default();
        stats.record(Some(Target::Monolith), false, Duration::from_millis(1), Some(FallbackReason::Timeout), None);
        stats.record(Some(Target::Service), true, Duration::from_millis(1), None, Some(25.0));
        let data = stats.lock();
        assert_eq!(data.total_fallbacks[FallbackReason::Timeout.index()], 1);
        assert_eq!(data.total_fallbacks.iter().sum::<u64>(), 1);
        assert_eq!((data.total_service.requests, data.total_service.errors), (1, 1));
        assert_eq!((data.total_monolith.requests, data.total_monolith.errors), (1, 0));
    }
}
