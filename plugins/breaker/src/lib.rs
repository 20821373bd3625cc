//! A circuit breaker per upstream, as a pure state machine.
//!
//! Time is injected: every call takes `now`, a monotonic [`Duration`] since any fixed
//! epoch the caller chooses, so the machine is tested without sleeping and knows nothing
//! of runtimes. The states are the breaker-jargon ones:
//!
//! 1. **Closed**: requests flow. Outcomes go into a sliding window of one-second buckets.
//!    The breaker opens when the window holds `failures` failures, or, when an error rate
//!    is configured, when at least `min_requests` outcomes include `error_rate_percent`%
//!    failures.
//! 2. **Open**: nothing is admitted, for `open_seconds`.
//! 3. **HalfOpen**: after that, at most `half_open_requests` trial requests are admitted at
//!    once; others are refused as if open. A trial success closes the breaker (with a fresh
//!    window), and a trial failure opens it again.
//!
//! Each state change bumps a generation number. A permit remembers the generation it was
//! admitted in, and its outcome counts only if the breaker is still in that generation, so
//! a slow request admitted while closed cannot reopen a breaker that has since recovered.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Retry-After suggested while the half-open trial slots are all busy.
pub const HALF_OPEN_BUSY_RETRY: Duration = Duration::from_secs(1);

/// An error-rate trip condition.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorRate {
    /// Open at or above this share of failures (0 to 100).
    pub percent: f64,
    /// ... over at least this many outcomes in the window.
    pub min_requests: u32,
}

/// How a breaker behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    /// Failures within the window that open the breaker.
    pub failures: u32,
    /// The sliding window (whole seconds).
    pub window: Duration,
    /// How long the breaker stays open before trials.
    pub open_for: Duration,
    /// Trials admitted at once while half-open.
    pub half_open_requests: u32,
    /// Optional error-rate condition, checked besides the failure count.
    pub error_rate: Option<ErrorRate>,
}

/// The three states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// Nothing is admitted.
    Open,
    /// A few trial requests are admitted.
    HalfOpen,
}

impl CircuitState {
    /// `gateway_circuit_state` value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }

    /// Label value: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// A state change, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: CircuitState,
    /// After.
    pub to: CircuitState,
}

/// The breaker's answer to a request.
#[derive(Debug)]
pub enum Admission {
    /// Call the upstream, then report the outcome on the permit.
    Admitted(Permit),
    /// Do not call the upstream; suggest retrying after this long.
    Refused {
        /// Time until the breaker may admit again.
        retry_after: Duration,
    },
}

/// One circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: BreakerSettings,
    state: CircuitState,
    generation: u64,
    opened_at: Duration,
    trials_in_flight: u32,
    window: Window,
}

/// Outcomes per whole second, oldest first.
#[derive(Debug, Default)]
struct Window {
    buckets: VecDeque<Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    second: u64,
    successes: u32,
    failures: u32,
}

impl Window {
    fn record(&mut self, now: Duration, window: Duration, failed: bool) {
        let second = now.as_secs();
        self.expire(now, window);
        match self.buckets.back_mut() {
            Some(bucket) if bucket.second == second => {
                if failed {
                    bucket.failures += 1
                } else {
                    bucket.successes += 1
                }
            }
            _ => self.buckets.push_back(Bucket { second, successes: u32::from(!failed), failures: u32::from(failed) }),
        }
    }

    /// Drops buckets that fell out of `(now - window, now]`.
    fn expire(&mut self, now: Duration, window: Duration) {
        // Seconds now-window+1 ..= now; near the epoch, everything since 0.
        let oldest_kept = (now.as_secs() + 1).saturating_sub(window.as_secs().max(1));
        while self.buckets.front().is_some_and(|b| b.second < oldest_kept) {
            self.buckets.pop_front();
        }
    }

    fn totals(&self) -> (u32, u32) {
        self.buckets.iter().fold((0, 0), |(ok, failed), b| (ok + b.successes, failed + b.failures))
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Arc<Self> {
        Arc::new(Breaker {
            inner: Mutex::new(Inner {
                settings,
                state: CircuitState::Closed,
                generation: 0,
                opened_at: Duration::ZERO,
                trials_in_flight: 0,
                window: Window::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the state consistent before it can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// New thresholds, keeping the current state and window (a config reload).
    pub fn reconfigure(&self, settings: BreakerSettings) {
        self.lock().settings = settings;
    }

    /// The thresholds in force.
    pub fn settings(&self) -> BreakerSettings {
        self.lock().settings.clone()
    }

    /// The state as callers would see it now: an open breaker whose `open_for` has passed
    /// reports half-open (it becomes so on the next admission).
    pub fn state(&self, now: Duration) -> CircuitState {
        let inner = self.lock();
        match inner.state {
            CircuitState::Open if now >= inner.opened_at + inner.settings.open_for => CircuitState::HalfOpen,
            state => state,
        }
    }

    /// Whether a request now would be refused, without taking a trial slot.
    pub fn would_refuse(&self, now: Duration) -> bool {
        let inner = self.lock();
        match inner.state {
            CircuitState::Closed => false,
            CircuitState::Open => now < inner.opened_at + inner.settings.open_for,
            CircuitState::HalfOpen => inner.trials_in_flight >= inner.settings.half_open_requests,
        }
    }

    /// Asks to call the upstream now; may move Open to HalfOpen.
    pub fn admit(self: &Arc<Self>, now: Duration) -> (Admission, Option<Transition>) {
        let mut inner = self.lock();
        let mut transition = None;
        if inner.state == CircuitState::Open {
            let reopens_at = inner.opened_at + inner.settings.open_for;
            if now < reopens_at {
                return (Admission::Refused { retry_after: reopens_at - now }, None);
            }
            transition = Some(inner.enter(CircuitState::HalfOpen));
        }
        let trial = inner.state == CircuitState::HalfOpen;
        if trial {
            if inner.trials_in_flight >= inner.settings.half_open_requests {
                return (Admission::Refused { retry_after: HALF_OPEN_BUSY_RETRY }, transition);
            }
            inner.trials_in_flight += 1;
        }
        let permit = Permit { breaker: Arc::clone(self), generation: inner.generation, trial, settled: false };
        (Admission::Admitted(permit), transition)
    }

    fn settle(&self, permit: &Permit, failed: bool, now: Duration) -> Option<Transition> {
        let mut inner = self.lock();
        if permit.generation != inner.generation {
            // Admitted under an earlier state: its outcome says nothing about this one.
            return None;
        }
        match inner.state {
            CircuitState::Closed => {
                let window = inner.settings.window;
                inner.window.record(now, window, failed);
                inner.window.expire(now, window);
                inner.should_trip().then(|| inner.open(now))
            }
            // A permit of this generation taken while half-open is a trial: every change
            // of state starts a new generation.
            CircuitState::HalfOpen => {
                inner.trials_in_flight = inner.trials_in_flight.saturating_sub(1);
                if failed { Some(inner.open(now)) } else { Some(inner.enter(CircuitState::Closed)) }
            }
            _ => None,
        }
    }

    fn release(&self, permit: &Permit) {
        let mut inner = self.lock();
        if permit.trial && permit.generation == inner.generation && inner.state == CircuitState::HalfOpen {
            inner.trials_in_flight = inner.trials_in_flight.saturating_sub(1);
        }
    }
}

impl Inner {
    fn enter(&mut self, to: CircuitState) -> Transition {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.trials_in_flight = 0;
        // Outcomes are recorded only while closed, so every state starts with an empty
        // window; closing again never counts the failures that opened the breaker.
        self.window = Window::default();
        Transition { from, to }
    }

    fn open(&mut self, now: Duration) -> Transition {
        self.opened_at = now;
        self.enter(CircuitState::Open)
    }

    fn should_trip(&self) -> bool {
        let (successes, failures) = self.window.totals();
        if failures >= self.settings.failures {
            return true;
        }
        match self.settings.error_rate {
            Some(rate) => {
                let total = successes + failures;
                // Called right after an outcome was recorded, so `total` is at least 1.
                total >= rate.min_requests && f64::from(failures) * 100.0 >= rate.percent * f64::from(total)
            }
            None => false,
        }
    }
}

/// Permission to call the upstream once. Report how it went with [`Permit::succeeded`] or
/// [`Permit::failed`]; a permit dropped unreported (the client went away) frees its trial
/// slot without counting either way.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    generation: u64,
    trial: bool,
    settled: bool,
}

impl Permit {
    /// Whether this is a half-open trial.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// The upstream answered well.
    pub fn succeeded(mut self, now: Duration) -> Option<Transition> {
        self.settled = true;
        self.breaker.settle(&self, false, now)
    }

    /// The upstream failed (connect error, timeout, failure status).
    pub fn failed(mut self, now: Duration) -> Option<Transition> {
        self.settled = true;
        self.breaker.settle(&self, true, now)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.release(self);
        }
    }
}

#[cfg(test)]
mod tests;
