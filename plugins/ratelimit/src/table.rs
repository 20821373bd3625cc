//! One route's buckets, bounded in memory whatever the traffic.
//!
//! Keys are kept as 64-bit SipHash digests under a per-process random seed (so a caller
//! cannot aim collisions at another caller), spread over shards so concurrent requests
//! rarely meet on one lock. Each shard tracks at most `capacity / SHARDS` keys:
//! 1. A known key uses its own bucket.
//! 2. A new key takes a free slot.
//! 3. A full shard first forgets the keys whose buckets are full again (lossless: a full
//!    bucket is what a new key starts with), at most once per [`SWEEP_EVERY`].
//! 4. Still full (a flood of distinct keys): the new key shares the shard's overflow
//!    bucket. Keys already tracked keep their own state, so a flood can neither reset a
//!    limited caller nor grow memory; the flood is limited as one caller.
//!
//! Requests without the key (no such claim or header) share one "no key" bucket.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::bucket::{self, Rate};

/// Shards per route table.
pub const SHARDS: usize = 16;
/// Smallest time between two sweeps of one shard.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Shard {
    tats: HashMap<u64, Duration>,
    overflow: Duration,
    last_sweep: Option<Duration>,
}

/// Buckets for every key of one route.
#[derive(Debug)]
pub struct KeyTable {
    rate: Rate,
    per_shard: usize,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    no_key: Mutex<Duration>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a lookup and an assignment: poisoning cannot leave bad state.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KeyTable {
    /// A table at `rate` that tracks at most `capacity` keys (at least one per shard).
    pub fn new(rate: Rate, capacity: usize) -> Self {
        KeyTable {
            rate,
            per_shard: (capacity / SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            no_key: Mutex::new(Duration::ZERO),
        }
    }

    /// Takes a token for `key` (`None`: the caller has no key) at `now`: `Ok` when
    /// allowed, else how long until the next token.
    pub fn take(&self, key: Option<&[u8]>, now: Duration) -> Result<(), Duration> {
        let Some(key) = key else {
            let mut tat = lock(&self.no_key);
            *tat = bucket::take(*tat, now, self.rate)?;
            return Ok(());
        };
        let digest = self.hasher.hash_one(key);
        let mut shard = lock(&self.shards[shard_index(digest)]);
        if let Some(tat) = shard.tats.get_mut(&digest) {
            *tat = bucket::take(*tat, now, self.rate)?;
            return Ok(());
        }
        if shard.tats.len() >= self.per_shard {
            let due = shard.last_sweep.is_none_or(|last| now.saturating_sub(last) >= SWEEP_EVERY);
            if due {
                shard.last_sweep = Some(now);
                shard.tats.retain(|_, tat| *tat > now);
            }
        }
        if shard.tats.len() >= self.per_shard {
            shard.overflow = bucket::take(shard.overflow, now, self.rate)?;
            return Ok(());
        }
        let tat = bucket::take(Duration::ZERO, now, self.rate)?;
        shard.tats.insert(digest, tat);
        Ok(())
    }

    /// The shard `key` lives in.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        shard_index(self.hasher.hash_one(key))
    }

    /// Keys tracked now (not counting the overflow and no-key buckets).
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }

    /// The most keys this table tracks.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}

fn shard_index(digest: u64) -> usize {
    (digest % SHARDS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(100);

    #[test]
    fn each_key_has_its_own_bucket() {
        let table = KeyTable::new(Rate::new(1.0, 2), 1024);
        assert!(table.take(Some(b"alice"), T0).is_ok());
        assert!(table.take(Some(b"alice"), T0).is_ok());
        assert!(table.take(Some(b"alice"), T0).is_err(), "alice used her burst");
        assert!(table.take(Some(b"bob"), T0).is_ok(), "bob has his own");
        assert_eq!(table.tracked(), 2);
    }

    #[test]
    fn callers_without_a_key_share_one_bucket() {
        let table = KeyTable::new(Rate::new(1.0, 2), 1024);
        assert!(table.take(None, T0).is_ok());
        assert!(table.take(None, T0).is_ok());
        assert_eq!(table.take(None, T0), Err(Duration::from_secs(1)));
        assert!(table.take(Some(b"alice"), T0).is_ok(), "keyed callers are not in the no-key bucket");
        assert_eq!(table.tracked(), 1);
    }

    #[test]
    fn a_flood_of_new_keys_stays_bounded_and_cannot_reset_a_limited_caller() {
        let table = KeyTable::new(Rate::new(1.0, 1), 64);
        assert!(table.take(Some(b"limited"), T0).is_ok());
        assert!(table.take(Some(b"limited"), T0).is_err());
        let mut allowed = 0;
        for i in 0..100_000u32 {
            if table.take(Some(&i.to_le_bytes()), T0).is_ok() {
                allowed += 1;
            }
        }
        assert!(table.tracked() <= table.capacity(), "{} tracked", table.tracked());
        assert!(allowed <= table.capacity() + SHARDS, "the overflow buckets limit the flood: {allowed}");
        assert!(table.take(Some(b"limited"), T0).is_err(), "still limited after the flood");
    }

    #[test]
    fn keys_spread_over_every_shard() {
        let table = KeyTable::new(Rate::new(1.0, 1), SHARDS * 64);
        for i in 0..400u32 {
            assert!(table.take(Some(&i.to_le_bytes()), T0).is_ok(), "key {i} is new");
        }
        assert_eq!(table.tracked(), 400, "no shard filled up: the keys are spread");
        let shards: std::collections::HashSet<usize> = (0..400u32).map(|i| table.shard_of(&i.to_le_bytes())).collect();
        assert_eq!(shards.len(), SHARDS);
    }

    /// Keys that land in the same shard as `first`.
    fn same_shard(table: &KeyTable, first: &[u8], count: usize) -> Vec<Vec<u8>> {
        let shard = table.shard_of(first);
        (0u32..).map(|i| i.to_le_bytes().to_vec()).filter(|k| table.shard_of(k) == shard).take(count).collect()
    }

    #[test]
    fn keys_with_full_buckets_are_forgotten_when_room_is_needed() {
        // One key per shard; 10 tokens a second, one at a time.
        let table = KeyTable::new(Rate::new(10.0, 1), SHARDS);
        let keys = same_shard(&table, b"a", 3);
        let (b, c) = (&keys[0], &keys[1]);
        assert!(table.take(Some(b"a"), T0).is_ok());
        // The shard is full and a's bucket is not full again: b and c share the overflow.
        assert!(table.take(Some(b), T0).is_ok());
        assert!(table.take(Some(c), T0).is_err(), "the overflow is one bucket for every untracked key");
        assert!(table.take(Some(b), T0).is_err());
        assert_eq!(table.tracked(), 1);
        // Two seconds on, a's bucket is full: forgetting it loses nothing, and b gets a slot.
        let later = T0 + Duration::from_secs(2);
        assert!(table.take(Some(b), later).is_ok());
        assert!(table.take(Some(b), later).is_err(), "b's own bucket");
        assert!(table.take(Some(&keys[2]), later).is_ok(), "the refilled overflow");
        assert!(table.take(Some(b"a"), later).is_err(), "a is untracked now and the overflow is spent");
        assert_eq!(table.tracked(), 1);
    }

    #[test]
    fn a_sweep_runs_at_most_once_per_interval() {
        let table = KeyTable::new(Rate::new(1000.0, 1), SHARDS);
        for i in 0..10_000u32 {
            let _ = table.take(Some(&i.to_le_bytes()), T0 + Duration::from_micros(u64::from(i)));
        }
        assert!(table.tracked() <= SHARDS);
    }
}
