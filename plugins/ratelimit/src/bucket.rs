//! The token bucket, as GCRA (the generic cell rate algorithm): one timestamp per key.
//!
//! A bucket holds `burst` tokens and gains one every `interval` (1 / requests_per_second).
//! GCRA keeps, instead of a token count and a refill time, the *theoretical arrival time*
//! (TAT): when the bucket would be full again. A request at `now` is allowed when
//! `max(TAT, now) - now <= (burst - 1) * interval`, and then moves the TAT on by one
//! interval. A TAT at or before `now` is a full bucket, which is why forgetting such a key
//! loses nothing.

use std::time::Duration;

/// A bucket's rate and size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Time to earn one token.
    pub interval: Duration,
    /// How far the TAT may run ahead of now: `(burst - 1) * interval`.
    pub tolerance: Duration,
}

impl Rate {
    /// `burst` requests at once, refilled at `requests_per_second`. Callers validate both
    /// (positive, finite); out-of-range values are clamped rather than panicking.
    pub fn new(requests_per_second: f64, burst: u64) -> Self {
        let interval = Duration::try_from_secs_f64(1.0 / requests_per_second).unwrap_or(Duration::MAX);
        let extra = u32::try_from(burst.saturating_sub(1)).unwrap_or(u32::MAX);
        Rate { interval, tolerance: interval.checked_mul(extra).unwrap_or(Duration::MAX) }
    }
}

/// Asks bucket `tat` for one token at `now`: the new TAT when allowed, or how long until
/// a token is there when not.
pub fn take(tat: Duration, now: Duration, rate: Rate) -> Result<Duration, Duration> {
    let start = tat.max(now);
    let ahead = start - now;
    if ahead > rate.tolerance {
        return Err(ahead - rate.tolerance);
    }
    Ok(start.saturating_add(rate.interval))
}

/// Whole seconds for `Retry-After`: rounded up, and never 0 (that would invite a retry
/// loop that is still refused).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn run(rate: Rate, tat: &mut Duration, now: Duration) -> bool {
        match take(*tat, now, rate) {
            Ok(next) => {
                *tat = next;
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn a_full_bucket_allows_exactly_burst_at_once() {
        let rate = Rate::new(10.0, 5);
        let mut tat = Duration::ZERO;
        let now = Duration::from_secs(100);
        let allowed = (0..20).filter(|_| run(rate, &mut tat, now)).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let rate = Rate::new(10.0, 1);
        let mut tat = Duration::ZERO;
        let start = Duration::from_secs(10);
        assert!(run(rate, &mut tat, start));
        assert!(!run(rate, &mut tat, start + 99 * MS), "1/10 s has not passed");
        assert!(run(rate, &mut tat, start + 100 * MS));
        assert!(!run(rate, &mut tat, start + 150 * MS));
        assert!(run(rate, &mut tat, start + 200 * MS));
    }

    #[test]
    fn the_wait_is_until_the_next_token() {
        let rate = Rate::new(2.0, 2);
        let now = Duration::from_secs(1);
        let tat = take(take(Duration::ZERO, now, rate).unwrap(), now, rate).unwrap();
        assert_eq!(take(tat, now, rate), Err(Duration::from_millis(500)));
        assert_eq!(take(tat, now + 200 * MS, rate), Err(Duration::from_millis(300)));
        assert!(take(tat, now + 500 * MS, rate).is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
    }

    #[test]
    fn extreme_rates_do_not_panic() {
        let slow = Rate::new(f64::MIN_POSITIVE, u64::MAX);
        assert!(take(Duration::ZERO, Duration::from_secs(1), slow).is_ok());
        let fast = Rate::new(1e9, 1);
        assert!(take(Duration::ZERO, Duration::from_secs(1), fast).is_ok());
    }

    proptest! {
        /// Over any window, no more than burst + window * rate requests get through.
        #[test]
        fn never_more_than_burst_plus_the_refill(
            rps in 1.0f64..1000.0,
            burst in 1u64..50,
            gaps in proptest::collection::vec(0u64..20_000, 1..300),
        ) {
            let rate = Rate::new(rps, burst);
            let mut tat = Duration::ZERO;
            let start = Duration::from_secs(1000);
            let mut now = start;
            let mut allowed = 0u64;
            for gap in gaps {
                now += Duration::from_micros(gap);
                if run(rate, &mut tat, now) {
                    allowed += 1;
                }
            }
            let window = (now - start).as_secs_f64();
            let bound = burst as f64 + window * rps + 1e-6;
            prop_assert!(allowed as f64 <= bound, "{allowed} allowed, bound {bound}");
        }
    }
}
