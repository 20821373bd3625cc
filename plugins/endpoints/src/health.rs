//! Endpoint health: active checks and passive ejection, over an injected clock (`now` is
//! time since an arbitrary start, as the breaker's).
//!
//! - Active: `unhealthy_after` failed checks in a row take an endpoint out;
//!   `healthy_after` passed checks in a row bring it back. A new endpoint starts healthy,
//!   so a fresh config serves at once.
//! - Passive: `consecutive_failures` failed responses in a row (connect errors, 5xx) eject
//!   it for `duration`, unless half the endpoints are ejected already.
//!
//! The data plane reads the state with two atomic loads; only a recorded outcome that
//! changes a count takes the lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// `health_check = { path, interval_ms, timeout_ms, unhealthy_after, healthy_after }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveCheck {
    /// The path requested with GET; any 2xx passes.
    pub path: String,
    /// Between two checks of one endpoint (jittered by the checker).
    pub interval: Duration,
    /// A check without a response head in this time fails.
    pub timeout: Duration,
    /// Failed checks in a row that take an endpoint out.
    pub unhealthy_after: u32,
    /// Passed checks in a row that bring it back.
    pub healthy_after: u32,
}

/// `eject = { consecutive_failures, seconds }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// Failed responses in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// How long an ejection lasts.
    pub duration: Duration,
}

/// What the data plane sees of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    /// Gets requests.
    Healthy,
    /// Failed its active checks; gets none until it passes `healthy_after`.
    Unhealthy,
    /// Ejected passively; gets none until the ejection ends.
    Ejected,
}

impl EndpointState {
    /// The label in metrics and on `/admin/config`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Healthy => "healthy",
            EndpointState::Unhealthy => "unhealthy",
            EndpointState::Ejected => "ejected",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    checks_failed: u32,
    checks_passed: u32,
    responses_failed: u32,
    /// The last thing that changed the state, for `/admin/config`.
    reason: Option<String>,
}

/// One endpoint's health and load.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    /// Taken out by its active checks.
    checks_down: AtomicBool,
    /// Ejected until this many milliseconds on the clock; 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// Requests sent and not yet answered (the balancer's load).
    outstanding: AtomicU32,
    counts: Mutex<Counts>,
}

fn millis(now: Duration) -> u64 {
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

impl EndpointHealth {
    /// A healthy endpoint with nothing outstanding.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state at `now`.
    pub fn state(&self, now: Duration) -> EndpointState {
        if self.checks_down.load(Ordering::Relaxed) {
            EndpointState::Unhealthy
        } else if self.ejected_until_ms.load(Ordering::Relaxed) > millis(now) {
            EndpointState::Ejected
        } else {
            EndpointState::Healthy
        }
    }

    /// True when the endpoint may get a new request at `now`.
    pub fn is_available(&self, now: Duration) -> bool {
        self.state(now) == EndpointState::Healthy
    }

    /// Why the endpoint is in its state, when something took it out or brought it back.
    pub fn reason(&self) -> Option<String> {
        self.lock().reason.clone()
    }

    /// Requests outstanding now.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// A request was sent to the endpoint; pair with [`EndpointHealth::request_ended`].
    pub fn request_started(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    /// The request's response head came (or it failed).
    pub fn request_ended(&self) {
        let _ = self.outstanding.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Forgets what active checks (`checks = false`) or ejections (`ejection = false`)
    /// decided, for an endpoint kept by a reload whose config no longer has them.
    pub fn forget_unconfigured(&self, checks: bool, ejection: bool) {
        let mut counts = self.lock();
        if !checks && self.checks_down.swap(false, Ordering::Relaxed) {
            counts.reason = Some("health checks are no longer configured".to_owned());
        }
        if !checks {
            counts.checks_failed = 0;
            counts.checks_passed = 0;
        }
        if !ejection && self.ejected_until_ms.swap(0, Ordering::Relaxed) != 0 {
            counts.reason = Some("ejection is no longer configured".to_owned());
        }
        if !ejection {
            counts.responses_failed = 0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one active check; returns the new state when it changed.
    pub fn record_check(&self, passed: bool, check: &ActiveCheck, now: Duration) -> Option<EndpointState> {
        let before = self.state(now);
        let mut counts = self.lock();
        if passed {
            counts.checks_failed = 0;
            counts.checks_passed = counts.checks_passed.saturating_add(1);
            if self.checks_down.load(Ordering::Relaxed) && counts.checks_passed >= check.healthy_after {
                self.checks_down.store(false, Ordering::Relaxed);
                counts.reason = Some(format!("passed {} health checks in a row", counts.checks_passed));
            }
        } else {
            counts.checks_passed = 0;
            counts.checks_failed = counts.checks_failed.saturating_add(1);
            if !self.checks_down.load(Ordering::Relaxed) && counts.checks_failed >= check.unhealthy_after {
                self.checks_down.store(true, Ordering::Relaxed);
                counts.reason = Some(format!("failed {} health checks in a row", counts.checks_failed));
            }
        }
        drop(counts);
        let after = self.state(now);
        (after != before).then_some(after)
    }

    /// Records one response (a failure is a connect error or a 5xx). `may_eject` says
    /// whether the cap allows one more ejection now (see [`may_eject_one_more`]). Returns
    /// true when this response ejected the endpoint.
    pub fn record_response(&self, failed: bool, eject: &Ejection, now: Duration, may_eject: bool) -> bool {
        let mut counts = self.lock();
        if !failed {
            counts.responses_failed = 0;
            return false;
        }
        counts.responses_failed = counts.responses_failed.saturating_add(1);
        let already = self.ejected_until_ms.load(Ordering::Relaxed) > millis(now);
        if already || counts.responses_failed < eject.consecutive_failures || !may_eject {
            return false;
        }
        self.ejected_until_ms.store(millis(now + eject.duration), Ordering::Relaxed);
        counts.reason = Some(format!(
            "ejected for {} s after {} failed responses in a row",
            eject.duration.as_secs(),
            counts.responses_failed
        ));
        // Back from an ejection, an endpoint needs a fresh run of failures to go again.
        counts.responses_failed = 0;
        true
    }
}

/// True when one more of `endpoints` may be ejected at `now`: never more than half are
/// ejected at once, so a bad deploy cannot eject its way to no endpoints at all.
pub fn may_eject_one_more<'a>(endpoints: impl IntoIterator<Item = &'a EndpointHealth>, now: Duration) -> bool {
    let (mut total, mut ejected) = (0usize, 0usize);
    for endpoint in endpoints {
        total += 1;
        ejected += usize::from(endpoint.state(now) == EndpointState::Ejected);
    }
    (ejected + 1) * 2 <= total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> ActiveCheck {
        ActiveCheck {
            path: "/healthz".to_owned(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            unhealthy_after: 3,
            healthy_after: 2,
        }
    }

    const EJECT: Ejection = Ejection { consecutive_failures: 2, duration: Duration::from_secs(30) };

    #[test]
    fn failed_checks_take_an_endpoint_out_and_passed_ones_bring_it_back() {
        let endpoint = EndpointHealth::new();
        let t = Duration::from_secs(1);
        assert_eq!(endpoint.state(t), EndpointState::Healthy, "new endpoints serve at once");
        assert_eq!(endpoint.record_check(false, &check(), t), None);
        assert_eq!(endpoint.record_check(false, &check(), t), None);
        assert_eq!(endpoint.record_check(false, &check(), t), Some(EndpointState::Unhealthy));
        assert!(!endpoint.is_available(t));
        assert_eq!(endpoint.reason().as_deref(), Some("failed 3 health checks in a row"));
        assert_eq!(endpoint.record_check(true, &check(), t), None, "one pass is not enough");
        assert_eq!(endpoint.record_check(false, &check(), t), None, "a failure restarts the count");
        assert_eq!(endpoint.record_check(true, &check(), t), None);
        assert_eq!(endpoint.record_check(true, &check(), t), Some(EndpointState::Healthy));
        assert!(endpoint.is_available(t));
    }

    #[test]
    fn a_pass_in_between_resets_the_failure_count() {
        let endpoint = EndpointHealth::new();
        let t = Duration::ZERO;
        for passed in [false, false, true, false, false] {
            endpoint.record_check(passed, &check(), t);
        }
        assert!(endpoint.is_available(t));
    }

    #[test]
    fn consecutive_failed_responses_eject_until_the_time_is_up() {
        let endpoint = EndpointHealth::new();
        let t = Duration::from_secs(100);
        assert!(!endpoint.record_response(true, &EJECT, t, true));
        assert!(!endpoint.record_response(false, &EJECT, t, true), "a success in between");
        assert!(!endpoint.record_response(true, &EJECT, t, true));
        assert!(endpoint.record_response(true, &EJECT, t, true), "two in a row");
        assert_eq!(endpoint.state(t + Duration::from_secs(29)), EndpointState::Ejected);
        assert_eq!(endpoint.state(t + Duration::from_secs(30)), EndpointState::Healthy, "the ejection ended");
        assert!(endpoint.reason().is_some_and(|r| r.contains("ejected for 30 s")));
        assert!(!endpoint.record_response(true, &EJECT, t + Duration::from_secs(31), true), "a fresh run is needed");
    }

    #[test]
    fn the_cap_keeps_half_the_endpoints_in() {
        let endpoints: Vec<EndpointHealth> = (0..4).map(|_| EndpointHealth::new()).collect();
        let t = Duration::from_secs(5);
        let mut ejected = 0;
        for endpoint in &endpoints {
            for _ in 0..EJECT.consecutive_failures {
                let may = may_eject_one_more(&endpoints, t);
                ejected += usize::from(endpoint.record_response(true, &EJECT, t, may));
            }
        }
        assert_eq!(ejected, 2, "at most half of 4");
        assert_eq!(endpoints.iter().filter(|e| e.is_available(t)).count(), 2);
        assert!(!may_eject_one_more(&endpoints[..1], t), "one endpoint alone is never ejected");
    }

    #[test]
    fn a_reload_without_checks_or_ejection_brings_a_kept_endpoint_back() {
        let t = Duration::from_secs(5);
        let endpoint = EndpointHealth::new();
        for _ in 0..3 {
            endpoint.record_check(false, &check(), t);
        }
        assert_eq!(endpoint.state(t), EndpointState::Unhealthy);
        endpoint.forget_unconfigured(true, true);
        assert_eq!(endpoint.state(t), EndpointState::Unhealthy, "still configured: kept");
        endpoint.forget_unconfigured(false, true);
        assert_eq!(endpoint.state(t), EndpointState::Healthy);

        endpoint.record_response(true, &EJECT, t, true);
        endpoint.record_response(true, &EJECT, t, true);
        assert_eq!(endpoint.state(t), EndpointState::Ejected);
        endpoint.forget_unconfigured(false, false);
        assert_eq!(endpoint.state(t), EndpointState::Healthy);
        assert_eq!(endpoint.reason().as_deref(), Some("ejection is no longer configured"));
    }

    #[test]
    fn outstanding_requests_are_counted_and_never_go_below_zero() {
        let endpoint = EndpointHealth::new();
        endpoint.request_started();
        endpoint.request_started();
        endpoint.request_ended();
        assert_eq!(endpoint.outstanding(), 1);
        endpoint.request_ended();
        endpoint.request_ended();
        assert_eq!(endpoint.outstanding(), 0);
    }
}
