//! The verified-token cache: signature checks are paid once per token, not per request.
//!
//! Keyed by the SHA-256 of the token (the token itself is never stored), bounded by an
//! entry count, and each entry expires when its token does (`exp` + leeway), so it never
//! outlives the token. A hit is still checked against the clock by the caller, and a
//! config with other keys gets a new, empty cache.

use std::sync::Arc;
use std::time::Duration;

use moka::Expiry;
use moka::sync::Cache;
use sha2::{Digest, Sha256};

use crate::{Clock, SystemClock, Verified};

/// SHA-256 of a token.
pub type TokenDigest = [u8; 32];

/// A bounded cache of verified tokens.
pub struct TokenCache {
    entries: Cache<TokenDigest, Arc<Verified>>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; entries expire `leeway_seconds` after `exp`.
    pub fn new(capacity: u64, leeway_seconds: u64) -> Self {
        let entries =
            Cache::builder().max_capacity(capacity).expire_after(UntilTokenExpires { leeway_seconds }).build();
        TokenCache { entries }
    }

    /// The digest that keys `token`.
    pub fn digest(token: &str) -> TokenDigest {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The cached verification of the token with this digest.
    pub fn get(&self, digest: &TokenDigest) -> Option<Arc<Verified>> {
        self.entries.get(digest)
    }

    /// Remembers a verified token.
    pub fn insert(&self, digest: TokenDigest, verified: Arc<Verified>) {
        self.entries.insert(digest, verified);
    }

    /// Forgets a token (for example one found expired on a hit).
    pub fn remove(&self, digest: &TokenDigest) {
        self.entries.invalidate(digest);
    }

    /// Entries currently held (approximate: moka applies writes in batches).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct UntilTokenExpires {
    leeway_seconds: u64,
}

// moka's trait hands us a std Instant we do not use; expiry is computed from the token's
// own `exp` against the wall clock, which is what `exp` is defined on.
#[allow(clippy::disallowed_types)]
impl Expiry<TokenDigest, Arc<Verified>> for UntilTokenExpires {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        value: &Arc<Verified>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let deadline = value.identity.expires_at.saturating_add(self.leeway_seconds);
        Some(Duration::from_secs(deadline.saturating_sub(SystemClock.now_unix())))
    }
}
