//! The canary dial: which side (monolith or service) answers a caller on a route.
//!
//! [`decide`] is the one function that makes the choice. The data plane, `gateway explain`
//! and the admin API all call it, so they can never disagree. The order is fixed:
//!
//! 1. **Breaker**: while the service's circuit breaker is open, the monolith answers.
//! 2. **Segment**: a caller in one of the route's segments gets the service.
//! 3. **Dial**: at 0% everyone else gets the monolith, at 100% the service. In between,
//!    a caller with a sticky key gets the service when
//!    `murmur3_x86_32(route + ":" + key, seed 0) mod 10000 < percent × 100`
//!    (see [`bucket`]); a caller without one gets the route's `anonymous` side
//!    (the monolith unless configured otherwise).
//!
//! The bucket depends only on the route name and the caller's key, so the same user
//! always lands on the same side, every replica agrees without talking to the others, and
//! raising the percentage only ever moves users from the monolith to the service.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

mod segment;
mod sticky;

use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;

use gateway_plugin_api::{Identity, Target};
use http::HeaderMap;

pub use segment::{ClaimTest, Segment, SegmentMatch};
pub use sticky::{Sticky, StickyParseError, client_ip};

/// Buckets per route: a percentage has two decimals, so 100.00% is 10 000 buckets.
pub const BUCKETS: u32 = 10_000;

/// The bucket of `key` on `route`: `murmur3_x86_32(route + ":" + key, seed 0) mod 10000`.
pub fn bucket(route: &str, key: &str) -> u32 {
    let mut input = route.as_bytes().chain(&b":"[..]).chain(key.as_bytes());
    let hash = murmur3::murmur3_32(&mut input, 0).expect("reading from memory cannot fail");
    hash % BUCKETS
}

/// A percentage in basis points (hundredths of a percent): 25.5% is 2550.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BasisPoints(u32);

impl BasisPoints {
    /// Nobody on the service.
    pub const ZERO: BasisPoints = BasisPoints(0);
    /// Everybody on the service.
    pub const ALL: BasisPoints = BasisPoints(BUCKETS);

    /// `percent` (0 to 100 in steps of 0.01), or `None` when out of range or finer.
    pub fn from_percent(percent: f64) -> Option<Self> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        let scaled = percent * 100.0;
        let rounded = scaled.round();
        ((scaled - rounded).abs() < 1e-6).then_some(BasisPoints(rounded as u32))
    }

    /// `n` basis points, at most all of them.
    pub fn new(n: u32) -> Self {
        BasisPoints(n.min(BUCKETS))
    }

    /// The number of buckets on the service side: buckets `[0, n)`.
    pub fn buckets(self) -> u32 {
        self.0
    }

    /// As a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl std::fmt::Display for BasisPoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}%", self.0 / 100, self.0 % 100)
    }
}

/// A route's rollout, as configured.
#[derive(Clone, Debug)]
pub struct RoutePolicy {
    /// The route name: part of the hashed input, so renaming a route reshuffles users.
    pub route: Arc<str>,
    /// The dial.
    pub percent: BasisPoints,
    /// Where the caller's key comes from; `None` only when the dial is at 0% or 100%.
    pub sticky: Option<Sticky>,
    /// Segments that always get the service.
    pub segments: Vec<Arc<Segment>>,
    /// The side for callers without a sticky key, while the dial is between 0% and 100%.
    pub anonymous: Target,
}

/// What the decision knows about the caller. Claims come from a verified token only.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The verified identity, if the request carried a valid token.
    pub identity: Option<&'a Identity>,
    /// The request headers, as received.
    pub headers: &'a HeaderMap,
    /// The client address (the peer, or the forwarded client behind a trusted proxy).
    pub client_ip: Option<IpAddr>,
}

/// Whether the service can take traffic, as its circuit breaker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceHealth {
    /// The breaker is closed or half-open with room for a trial: the service may be called.
    Available,
    /// The breaker is open: the service must not be called.
    BreakerOpen,
}

/// Why a side was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The service's breaker is open.
    BreakerOpen,
    /// The caller is in this segment.
    Segment(Arc<str>),
    /// The dial is at 0%.
    DialAtZero,
    /// The dial is at 100%.
    DialAtFull,
    /// The caller's bucket against the dial.
    Bucket {
        /// The caller's bucket, `0..10000`.
        bucket: u32,
    },
    /// The dial is partial and the caller has no sticky key.
    NoStickyKey,
}

impl Reason {
    /// A short description, for `gateway explain` and logs.
    pub fn describe(&self, percent: BasisPoints) -> String {
        match self {
            Reason::BreakerOpen => "the service's circuit breaker is open".to_owned(),
            Reason::Segment(name) => format!("segment {name} always gets the service"),
            Reason::DialAtZero => "the dial is at 0.00%".to_owned(),
            Reason::DialAtFull => "the dial is at 100.00%".to_owned(),
            Reason::Bucket { bucket } if *bucket < percent.buckets() => {
                format!("bucket {bucket} < {} (dial {percent})", percent.buckets())
            }
            Reason::Bucket { bucket } => format!("bucket {bucket} >= {} (dial {percent})", percent.buckets()),
            Reason::NoStickyKey => "no sticky key (anonymous caller)".to_owned(),
        }
    }
}

/// The side and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Monolith or service.
    pub target: Target,
    /// Why.
    pub reason: Reason,
}

/// Picks a side at the configured dial (see [`decide_at`]).
pub fn decide(policy: &RoutePolicy, caller: &Caller<'_>, health: ServiceHealth) -> Decision {
    decide_at(policy, policy.percent, caller, health)
}

/// The one function that picks a side: breaker, then segment, then the dial `percent` (the
/// configured one, or the effective one while a ramp moves it).
pub fn decide_at(policy: &RoutePolicy, percent: BasisPoints, caller: &Caller<'_>, health: ServiceHealth) -> Decision {
    let decision = |target, reason| Decision { target, reason };
    if health == ServiceHealth::BreakerOpen {
        return decision(Target::Monolith, Reason::BreakerOpen);
    }
    if let Some(segment) = policy.segments.iter().find(|s| s.matches(caller)) {
        return decision(Target::Service, Reason::Segment(segment.name.clone()));
    }
    if percent == BasisPoints::ZERO {
        return decision(Target::Monolith, Reason::DialAtZero);
    }
    if percent == BasisPoints::ALL {
        return decision(Target::Service, Reason::DialAtFull);
    }
    let key = policy.sticky.as_ref().and_then(|sticky| sticky.key(caller));
    match key {
        None => decision(policy.anonymous, Reason::NoStickyKey),
        Some(key) => {
            let bucket = bucket(&policy.route, &key);
            let target = if bucket < percent.buckets() { Target::Service } else { Target::Monolith };
            decision(target, Reason::Bucket { bucket })
        }
    }
}

#[cfg(test)]
mod tests;
