//! Every transition, the sliding window, the error-rate mode and the half-open limit, on
//! an injected clock.

use proptest::prelude::*;

use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn settings(failures: u32) -> BreakerSettings {
    BreakerSettings { failures, window: secs(10), open_for: secs(30), half_open_requests: 1, error_rate: None }
}

fn admitted(breaker: &Arc<Breaker>, now: Duration) -> Permit {
    match breaker.admit(now).0 {
        Admission::Admitted(permit) => permit,
        Admission::Refused { retry_after } => panic!("refused at {now:?}, retry after {retry_after:?}"),
    }
}

fn fail_once(breaker: &Arc<Breaker>, now: Duration) -> Option<Transition> {
    admitted(breaker, now).failed(now)
}

#[test]
fn n_failures_within_the_window_open_the_breaker() {
    let breaker = Breaker::new(settings(3));
    assert_eq!(fail_once(&breaker, secs(1)), None);
    assert_eq!(fail_once(&breaker, secs(2)), None);
    assert_eq!(admitted(&breaker, secs(2)).succeeded(secs(2)), None, "a success does not trip");
    let tripped = fail_once(&breaker, secs(3));
    assert_eq!(tripped, Some(Transition { from: CircuitState::Closed, to: CircuitState::Open }));
    assert_eq!(breaker.state(secs(3)), CircuitState::Open);
    match breaker.admit(secs(13)).0 {
        Admission::Refused { retry_after } => assert_eq!(retry_after, secs(20), "open until 3 + 30"),
        Admission::Admitted(_) => panic!("an open breaker admits nothing"),
    }
    assert!(breaker.would_refuse(secs(13)));
}

#[test]
fn failures_that_slide_out_of_the_window_do_not_count() {
    let breaker = Breaker::new(settings(3));
    fail_once(&breaker, secs(0));
    fail_once(&breaker, secs(5));
    // At t=10 the failure at t=0 has left the 10 s window (9..=10 is still in).
    assert_eq!(fail_once(&breaker, secs(10)), None);
    assert_eq!(breaker.state(secs(10)), CircuitState::Closed);
    assert!(fail_once(&breaker, secs(11)).is_some(), "5, 10 and 11 are within 10 s");
}

#[test]
fn the_error_rate_mode_needs_its_minimum_of_requests() {
    let breaker = Breaker::new(BreakerSettings {
        failures: 1_000,
        error_rate: Some(ErrorRate { percent: 50.0, min_requests: 10 }),
        ..settings(1_000)
    });
    for _ in 0..4 {
        assert_eq!(fail_once(&breaker, secs(1)), None, "4 of 4 failed, but fewer than 10 requests");
    }
    for _ in 0..5 {
        assert_eq!(admitted(&breaker, secs(1)).succeeded(secs(1)), None);
    }
    // 4 failures of 9 requests: under the minimum. The 10th, a failure: 5 of 10 = 50%.
    let tripped = fail_once(&breaker, secs(1));
    assert_eq!(tripped.map(|t| t.to), Some(CircuitState::Open));
}

#[test]
fn after_open_for_a_trial_success_closes_it() {
    let breaker = Breaker::new(settings(1));
    fail_once(&breaker, secs(0));
    assert_eq!(breaker.state(secs(29)), CircuitState::Open);
    assert_eq!(breaker.state(secs(30)), CircuitState::HalfOpen, "reported half-open once open_for has passed");
    let (admission, transition) = breaker.admit(secs(30));
    assert_eq!(transition, Some(Transition { from: CircuitState::Open, to: CircuitState::HalfOpen }));
    let Admission::Admitted(trial) = admission else { panic!("a trial is admitted") };
    assert!(trial.is_trial());
    assert_eq!(trial.succeeded(secs(31)), Some(Transition { from: CircuitState::HalfOpen, to: CircuitState::Closed }));
    assert_eq!(breaker.state(secs(31)), CircuitState::Closed);
    assert_eq!(fail_once(&breaker, secs(32)).map(|t| t.to), Some(CircuitState::Open), "the window starts fresh");
}

#[test]
fn a_trial_failure_opens_it_again_for_a_full_period() {
    let breaker = Breaker::new(settings(1));
    fail_once(&breaker, secs(0));
    let trial = admitted(&breaker, secs(40));
    assert_eq!(trial.failed(secs(41)), Some(Transition { from: CircuitState::HalfOpen, to: CircuitState::Open }));
    assert!(breaker.would_refuse(secs(70)), "open again from t=41 until t=71");
    assert!(!breaker.would_refuse(secs(71)));
}

#[test]
fn half_open_admits_only_its_limit_of_concurrent_trials() {
    let breaker = Breaker::new(BreakerSettings { half_open_requests: 2, ..settings(1) });
    fail_once(&breaker, secs(0));
    let first = admitted(&breaker, secs(30));
    let second = admitted(&breaker, secs(30));
    match breaker.admit(secs(30)).0 {
        Admission::Refused { retry_after } => assert_eq!(retry_after, HALF_OPEN_BUSY_RETRY),
        Admission::Admitted(_) => panic!("a third concurrent trial is refused"),
    }
    assert!(breaker.would_refuse(secs(30)));
    drop(first);
    let third = admitted(&breaker, secs(31));
    assert!(third.is_trial(), "a dropped trial frees its slot");
    drop((second, third));
}

#[test]
fn outcomes_from_an_earlier_state_are_ignored() {
    let breaker = Breaker::new(settings(1));
    let slow = admitted(&breaker, secs(0));
    fail_once(&breaker, secs(1));
    let trial = admitted(&breaker, secs(31));
    trial.succeeded(secs(31));
    assert_eq!(breaker.state(secs(32)), CircuitState::Closed);
    assert_eq!(slow.failed(secs(32)), None, "a request from before the trip cannot reopen it");
    assert_eq!(breaker.state(secs(32)), CircuitState::Closed);
}

#[test]
fn reconfiguring_keeps_the_state() {
    let breaker = Breaker::new(settings(1));
    fail_once(&breaker, secs(0));
    breaker.reconfigure(BreakerSettings { open_for: secs(5), ..settings(1) });
    assert_eq!(breaker.state(secs(4)), CircuitState::Open);
    assert_eq!(breaker.state(secs(5)), CircuitState::HalfOpen, "the new open_for applies to the open state");
}

#[derive(Clone, Debug)]
enum Step {
    Succeed(u64),
    Fail(u64),
    Abandon(u64),
}

proptest! {
    /// Whatever happens, the breaker never admits more concurrent trials than allowed, and
    /// never admits anything while open.
    #[test]
    fn invariants_hold_for_any_sequence(steps in proptest::collection::vec(
        prop_oneof![(0u64..5).prop_map(Step::Succeed), (0u64..5).prop_map(Step::Fail), (0u64..5).prop_map(Step::Abandon)],
        1..200,
    )) {
        let breaker = Breaker::new(BreakerSettings { half_open_requests: 2, open_for: secs(3), ..settings(2) });
        let mut now = Duration::ZERO;
        let mut held = Vec::new();
        for step in steps {
            let (advance, action) = match step {
                Step::Succeed(d) => (d, 0),
                Step::Fail(d) => (d, 1),
                Step::Abandon(d) => (d, 2),
            };
            now += secs(advance);
            let state = breaker.state(now);
            match breaker.admit(now).0 {
                Admission::Admitted(permit) => {
                    prop_assert_ne!(state, CircuitState::Open, "admitted while open");
                    match action {
                        0 => { permit.succeeded(now); }
                        1 => { permit.failed(now); }
                        _ => held.push(permit),
                    }
                }
                Admission::Refused { .. } => prop_assert_ne!(state, CircuitState::Closed, "refused while closed"),
            }
            // Trials of the current half-open period; an earlier period's permits hold no slot.
            let generation = breaker.lock().generation;
            let trials = held.iter().filter(|p| p.is_trial() && p.generation == generation).count();
            prop_assert!(trials <= 2, "{} trials held", trials);
            if held.len() > 3 {
                held.remove(0);
            }
        }
    }
}

/// The error-rate comparison is exact: 50% of failures does not reach a 50.25% limit.
#[test]
fn the_error_rate_is_compared_as_a_share_not_a_count() {
    let rate = |percent, min_requests| BreakerSettings {
        error_rate: Some(ErrorRate { percent, min_requests }),
        ..settings(1_000)
    };
    let breaker = Breaker::new(rate(50.25, 2));
    assert_eq!(admitted(&breaker, secs(1)).succeeded(secs(1)), None);
    assert_eq!(fail_once(&breaker, secs(1)), None, "1 of 2 is 50%, under 50.25%");
    let breaker = Breaker::new(rate(50.0, 2));
    assert_eq!(admitted(&breaker, secs(1)).succeeded(secs(1)), None);
    assert!(fail_once(&breaker, secs(1)).is_some(), "1 of 2 reaches 50%");
}

/// Outcomes in different seconds go to different buckets, so the older one expires alone.
#[test]
fn each_second_has_its_own_bucket_in_the_window() {
    let breaker = Breaker::new(BreakerSettings { window: secs(2), ..settings(3) });
    let ms = Duration::from_millis;
    assert_eq!(fail_once(&breaker, ms(0)), None);
    assert_eq!(fail_once(&breaker, ms(1500)), None);
    // At 2.1 s the second-0 bucket has left the window; the second-1 failure has not.
    assert_eq!(fail_once(&breaker, ms(2100)), None, "1.5 s and 2.1 s: two in the window");
    assert!(fail_once(&breaker, ms(2200)).is_some(), "1.5, 2.1 and 2.2 s are three within 2 s");
}

#[test]
fn states_have_their_gauge_values_and_labels() {
    assert_eq!(CircuitState::Closed.gauge(), 0.0);
    assert_eq!(CircuitState::Open.gauge(), 1.0);
    assert_eq!(CircuitState::HalfOpen.gauge(), 2.0);
    assert_eq!(CircuitState::Closed.as_str(), "closed");
    assert_eq!(CircuitState::Open.as_str(), "open");
    assert_eq!(CircuitState::HalfOpen.as_str(), "half_open");
}

/// The window keeps one bucket per second, however many outcomes a second has.
#[test]
fn a_busy_second_is_one_bucket() {
    let breaker = Breaker::new(settings(1_000_000));
    for i in 0..500u64 {
        let now = Duration::from_millis(1000 + i);
        admitted(&breaker, now).succeeded(now);
        fail_once(&breaker, now);
    }
    assert_eq!(breaker.lock().window.buckets.len(), 1);
    let later = secs(3);
    fail_once(&breaker, later);
    assert_eq!(breaker.lock().window.buckets.len(), 2);
}

#[test]
fn closing_again_forgets_the_failures_that_opened_it() {
    let breaker = Breaker::new(settings(3));
    for t in 1..=3 {
        fail_once(&breaker, secs(t));
    }
    assert_eq!(breaker.state(secs(3)), CircuitState::Open);
    let trial = admitted(&breaker, secs(40));
    assert_eq!(trial.succeeded(secs(40)).map(|t| t.to), Some(CircuitState::Closed));
    assert_eq!(fail_once(&breaker, secs(41)), None, "one failure after closing is one, not four");
    assert_eq!(fail_once(&breaker, secs(41)), None);
    assert!(fail_once(&breaker, secs(41)).is_some());
}
