//! Which endpoint gets the next request.
//!
//! `least_request` is the power of two choices (as Envoy's and linkerd's balancers): two
//! endpoints drawn at random, the one with fewer outstanding requests wins. It needs no
//! shared ordering and avoids the herd that always-pick-the-least-loaded causes when many
//! gateways see the same stale counts. `round_robin` takes turns.

/// `balance = "least_request" | "round_robin"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Power of two choices over outstanding requests (the default).
    #[default]
    LeastRequest,
    /// Each available endpoint in turn.
    RoundRobin,
}

impl Balance {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastRequest => "least_request",
            Balance::RoundRobin => "round_robin",
        }
    }
}

impl std::str::FromStr for Balance {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        match text {
            "least_request" => Ok(Balance::LeastRequest),
            "round_robin" => Ok(Balance::RoundRobin),
            _ => Err(()),
        }
    }
}

/// Picks the endpoint (an index below `len`) for the next request, or `None` when none is
/// available. `available(i)` and `load(i)` (outstanding requests) describe endpoint `i`;
/// `random` is a fresh random number (least_request) and `turn` the next value of a
/// shared counter (round_robin). Allocates nothing.
pub fn pick(
    balance: Balance,
    len: usize,
    available: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> u32,
    random: u64,
    turn: usize,
) -> Option<usize> {
    match len {
        0 => None,
        1 => available(0).then_some(0),
        _ => match balance {
            Balance::LeastRequest => two_choices(len, &available, &load, random),
            Balance::RoundRobin => first_available_from(turn % len, len, &available),
        },
    }
}

fn two_choices(
    len: usize,
    available: &impl Fn(usize) -> bool,
    load: &impl Fn(usize) -> u32,
    random: u64,
) -> Option<usize> {
    // Two distinct indices from one random number: `first`, and `second` at a non-zero
    // offset from it.
    let first = (random % len as u64) as usize;
    let second = (first + 1 + ((random >> 32) % (len as u64 - 1)) as usize) % len;
    match (available(first), available(second)) {
        (true, true) => Some(if load(second) < load(first) { second } else { first }),
        (true, false) => Some(first),
        (false, true) => Some(second),
        // Both drawn endpoints are out: take the next available one after the first.
        (false, false) => first_available_from(first, len, available),
    }
}

fn first_available_from(start: usize, len: usize, available: &impl Fn(usize) -> bool) -> Option<usize> {
    (0..len).map(|offset| (start + offset) % len).find(|&i| available(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn two_choices_pick_the_less_loaded_of_the_pair() {
        let loads = [5u32, 1, 9];
        // Over many draws every pair comes up; the busiest endpoint loses every pair it is in.
        let mut picked = [0usize; 3];
        for random in 0..3000u64 {
            let random = random.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let i = pick(Balance::LeastRequest, 3, |_| true, |i| loads[i], random, 0).expect("one is available");
            picked[i] += 1;
        }
        assert_eq!(picked[2], 0, "the busiest endpoint is never the lesser of a pair: {picked:?}");
        assert!(picked[1] > picked[0], "the idlest wins most: {picked:?}");
    }

    #[test]
    fn equal_loads_spread_over_every_endpoint() {
        let mut picked = [0usize; 3];
        for random in 0..3000u64 {
            let random = random.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            picked[pick(Balance::LeastRequest, 3, |_| true, |_| 0, random, 0).expect("available")] += 1;
        }
        assert!(picked.iter().all(|&n| n > 600), "{picked:?}");
    }

    #[test]
    fn round_robin_takes_turns_over_the_available() {
        let available = [true, false, true];
        let order: Vec<_> = (0..6)
            .map(|turn| pick(Balance::RoundRobin, 3, |i| available[i], |_| 0, 0, turn).expect("available"))
            .collect();
        assert_eq!(order, [0, 2, 2, 0, 2, 2]);
    }

    #[test]
    fn nothing_available_is_none() {
        for balance in [Balance::LeastRequest, Balance::RoundRobin] {
            assert_eq!(pick(balance, 0, |_| true, |_| 0, 7, 7), None);
            assert_eq!(pick(balance, 1, |_| false, |_| 0, 7, 7), None);
            assert_eq!(pick(balance, 4, |_| false, |_| 0, 7, 7), None);
            assert_eq!(pick(balance, 1, |_| true, |_| 0, 7, 7), Some(0));
        }
    }

    #[test]
    fn balance_names_round_trip() {
        for balance in [Balance::LeastRequest, Balance::RoundRobin] {
            assert_eq!(balance.as_str().parse::<Balance>(), Ok(balance));
        }
        assert!("random".parse::<Balance>().is_err());
    }

    proptest! {
        #[test]
        fn an_unavailable_endpoint_is_never_picked(
            mask in proptest::collection::vec(any::<bool>(), 1..12),
            loads in proptest::collection::vec(0u32..50, 12),
            random in any::<u64>(),
            turn in any::<usize>(),
        ) {
            for balance in [Balance::LeastRequest, Balance::RoundRobin] {
                let picked = pick(balance, mask.len(), |i| mask[i], |i| loads[i], random, turn);
                match picked {
                    Some(i) => prop_assert!(mask[i], "{balance:?} picked unavailable {i}"),
                    None => prop_assert!(mask.iter().all(|up| !up), "{balance:?} found none among {mask:?}"),
                }
            }
        }
    }
}
