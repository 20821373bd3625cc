//! Where keys come from, and which one verifies a token.
//!
//! A [`KeyRing`] merges every configured source: the fixed ones read with the config
//! (`jwks_file`, `public_key_file`, `hs256_secret_env`, whose `kid`s the config check has
//! proved distinct) and the remote ones (`jwks_url`), each a [`RemoteKeys`] that the
//! gateway fills from the network and swaps atomically while requests are verified. This
//! crate never opens a socket: it asks for a fetch ([`RemoteKeys::request_refetch`]) and
//! takes what the gateway fetched ([`RemoteKeys::apply`]).
//!
//! Rules a deployment relies on:
//! - A `kid` is looked up in the fixed sources first, then in the remote ones in config
//!   order, so a key the operator wrote down can never be displaced by a fetched one.
//! - An unknown `kid` asks every remote source for one refetch, at most once per
//!   [`UNKNOWN_KID_REFETCH_SECONDS`] per source: tokens with made-up kids cannot be used
//!   to flood the identity provider.
//! - A fetch that removes a key (or changes the material behind a `kid`) moves the
//!   source's epoch on; cached verifications made with the source's keys before that no
//!   longer count. A fetch that only adds keys, or changes nothing, keeps them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use tokio::sync::Notify;

use crate::keys::{KeySet, VerifyingKey};

/// Least time between two refetches one source makes for unknown kids.
pub const UNKNOWN_KID_REFETCH_SECONDS: u64 = 30;
/// Longest a request with an unknown kid waits for the refetch it caused (or joined):
/// a token signed with a key published a moment ago passes on its first request, and an
/// identity provider that hangs delays such requests by this much at most.
pub const REFETCH_WAIT_SECONDS: u64 = 3;

/// Which kind of source a key came from, as `[auth]` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// `jwks_file`.
    JwksFile,
    /// `public_key_file`.
    PublicKeyFile,
    /// `hs256_secret_env`.
    Hs256SecretEnv,
    /// `jwks_url`.
    JwksUrl,
}

impl SourceKind {
    /// The config key.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::JwksFile => "jwks_file",
            SourceKind::PublicKeyFile => "public_key_file",
            SourceKind::Hs256SecretEnv => "hs256_secret_env",
            SourceKind::JwksUrl => "jwks_url",
        }
    }
}

/// A source read with the config, as `/admin/config` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedSource {
    /// What kind.
    pub kind: SourceKind,
    /// The file's path, or the environment variable's name (never the secret).
    pub name: String,
    /// The `kid`s it provides.
    pub kids: Vec<String>,
}

/// Which source verified a token, so a cached verification can be checked against later
/// fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    /// A key read with the config; it lasts as long as the config.
    Fixed,
    /// A key of remote source `source` (config order) at `epoch`.
    Remote {
        /// Index among the ring's remote sources.
        source: usize,
        /// The source's epoch when the token was verified.
        epoch: u64,
        /// The key's material digest, to tell after a removal whether this key stayed.
        key: [u8; 32],
    },
}

/// Whether a cached verification still holds (see [`KeyRing::still_trusts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Yes, as cached.
    Holds,
    /// Yes: its source dropped other keys since; the entry should carry this origin now,
    /// so the next hit is fast again.
    HoldsAs(KeyOrigin),
    /// No: the key that verified it is gone or was replaced.
    Void,
}

/// The key chosen for a token, and where it came from.
#[derive(Clone, Debug)]
pub struct Chosen {
    /// The key.
    pub key: Arc<VerifyingKey>,
    /// Its source.
    pub origin: KeyOrigin,
}

/// Every trusted key.
#[derive(Clone, Debug)]
pub struct KeyRing {
    fixed: KeySet,
    fixed_sources: Vec<FixedSource>,
    remote: Vec<Arc<RemoteKeys>>,
}

impl From<KeySet> for KeyRing {
    /// A ring of one fixed source (tests, tools).
    fn from(keys: KeySet) -> Self {
        KeyRing { fixed: keys, fixed_sources: Vec::new(), remote: Vec::new() }
    }
}

impl KeyRing {
    /// A ring of fixed keys (already merged, kids distinct) and remote sources.
    pub fn new(fixed: KeySet, fixed_sources: Vec<FixedSource>, remote: Vec<Arc<RemoteKeys>>) -> Self {
        KeyRing { fixed, fixed_sources, remote }
    }

    /// The fixed keys, merged.
    pub fn fixed(&self) -> &KeySet {
        &self.fixed
    }

    /// The fixed sources, in config order.
    pub fn fixed_sources(&self) -> &[FixedSource] {
        &self.fixed_sources
    }

    /// The remote sources, in config order.
    pub fn remote(&self) -> &[Arc<RemoteKeys>] {
        &self.remote
    }

    /// True when both rings trust the same keys now and later: the same fixed material
    /// and the very same remote sources.
    pub fn same_sources(&self, other: &KeyRing) -> bool {
        self.fixed.fingerprint() == other.fixed.fingerprint()
            && self.remote.len() == other.remote.len()
            && self.remote.iter().zip(&other.remote).all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// Whether some source may provide a key for `algorithm`. A remote source may (its
    /// keys are not known before it is fetched) unless the algorithm is HMAC: published
    /// key sets never carry secrets.
    pub fn may_support(&self, algorithm: Algorithm) -> bool {
        self.fixed.supports(algorithm) || (!self.remote.is_empty() && algorithm.family() != AlgorithmFamily::Hmac)
    }

    /// The key for a token signed with `algorithm` naming `kid`, at `now` (seconds since
    /// the epoch).
    /// - With a `kid`: the key with that `kid`, else a key without a `kid` of the
    ///   algorithm's family (a PEM key, the HMAC secret; failing that, of another family,
    ///   for the caller to refuse the algorithm). An unknown `kid` asks the remote
    ///   sources for a refetch (rate-limited per source).
    /// - Without a `kid`: the one key of the algorithm's family without a `kid` (the HMAC
    ///   secret for HS*), else the one key of that family at all.
    pub fn choose(&self, kid: Option<&str>, algorithm: Algorithm, now: u64) -> Option<Chosen> {
        let family = algorithm.family();
        let fixed = |key: &Arc<VerifyingKey>| Chosen { key: key.clone(), origin: KeyOrigin::Fixed };
        if let Some(kid) = kid {
            if let Some(key) = self.fixed.by_kid(kid) {
                return Some(fixed(key));
            }
            for (source, remote) in self.remote.iter().enumerate() {
                let (keys, epoch) = remote.current();
                if let Some(key) = keys.as_deref().and_then(|k| k.by_kid(kid)) {
                    let origin = KeyOrigin::Remote { source, epoch, key: key.digest() };
                    return Some(Chosen { key: key.clone(), origin });
                }
            }
            for remote in &self.remote {
                remote.request_refetch(now);
            }
            // A key without kid of another family is returned too: the caller then refuses
            // the algorithm, which says more than "unknown kid" (an RSA public key used as
            // an HMAC secret).
            let without_kid = || self.fixed.keys().iter().filter(|k| k.kid.is_none());
            return without_kid().find(|k| k.family == family).or_else(|| without_kid().next()).map(fixed);
        }
        let mut without_kid = None;
        let mut count_without_kid = 0;
        let mut any = None;
        let mut count = 0;
        let mut consider = |key: &Arc<VerifyingKey>, origin: KeyOrigin| {
            if key.family != family {
                return;
            }
            count += 1;
            any = Some(Chosen { key: key.clone(), origin });
            if key.kid.is_none() {
                count_without_kid += 1;
                without_kid = Some(Chosen { key: key.clone(), origin });
            }
        };
        for key in self.fixed.keys() {
            consider(key, KeyOrigin::Fixed);
        }
        for (source, remote) in self.remote.iter().enumerate() {
            let (keys, epoch) = remote.current();
            for key in keys.iter().flat_map(|k| k.keys()) {
                consider(key, KeyOrigin::Remote { source, epoch, key: key.digest() });
            }
        }
        match (count_without_kid, count) {
            (1, _) => without_kid,
            (_, 1) => any,
            _ => None,
        }
    }

    /// Whether a verification made with a key from `origin` still holds. The fast path is
    /// one atomic load: the source has dropped no key since. After a removal, the key
    /// itself is looked for once (by its digest); only tokens of a dropped or replaced
    /// key are void, and no other cached token pays a signature check again.
    pub fn still_trusts(&self, origin: KeyOrigin) -> Trust {
        let KeyOrigin::Remote { source, epoch, key } = origin else { return Trust::Holds };
        let Some(remote) = self.remote.get(source) else { return Trust::Void };
        if remote.epoch() == epoch {
            return Trust::Holds;
        }
        let (keys, now_epoch) = remote.current();
        match keys.is_some_and(|set| set.keys().iter().any(|k| k.digest() == key)) {
            true => Trust::HoldsAs(KeyOrigin::Remote { source, epoch: now_epoch, key }),
            false => Trust::Void,
        }
    }

    /// A wait for a refetch an unknown kid asked for, while one is in flight and younger
    /// than [`REFETCH_WAIT_SECONDS`]; the token is then checked again. None: nothing to
    /// wait for, the token is refused.
    pub fn refetch_wait(&self, now: u64) -> Option<impl Future<Output = ()> + Send + 'static + use<>> {
        self.remote.iter().find_map(|remote| remote.refetch_wait(now))
    }

    /// True when every remote source has keys (it was fetched at least once).
    pub fn ready(&self) -> bool {
        self.remote.iter().all(|r| r.current().0.is_some())
    }
}

/// How one remote source is fetched, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSettings {
    /// The URL, as a label for metrics and logs (no query string, no user info).
    pub source: String,
    /// Between two background refreshes (a shorter `Cache-Control: max-age` wins).
    pub refresh: Duration,
}

/// What applying one fetched set changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The source's first keys.
    First,
    /// The same keys as before.
    Unchanged,
    /// Keys were added, removed or replaced; `removed` includes replaced ones.
    Changed {
        /// `kid`s new in this set.
        added: Vec<String>,
        /// `kid`s gone, or whose material changed.
        removed: Vec<String>,
    },
}

/// What the fetches of one source have found, for `/admin/config` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteStatus {
    /// Fetches that gave a usable set.
    pub fetches_ok: u64,
    /// Fetches that failed (the last good keys were kept).
    pub fetches_failed: u64,
    /// When the keys in use were last fetched (seconds since the epoch).
    pub last_success_unix: Option<u64>,
    /// Why the last fetch failed, when it did.
    pub last_error: Option<String>,
    /// Keys of the last set that could not be used, and why.
    pub skipped: Vec<String>,
}

/// One remote key source (`jwks_url`): the last good set, swapped atomically.
pub struct RemoteKeys {
    settings: RemoteSettings,
    keys: ArcSwapOption<KeySet>,
    /// Moves on when a key is removed or replaced (see [`KeyRing::still_trusts`]).
    epoch: AtomicU64,
    status: Mutex<RemoteStatus>,
    /// One plus the time of the last refetch for an unknown kid; 0: never.
    last_unknown_kid_refetch: AtomicU64,
    /// One plus the time that refetch was asked for, until a fetch completes; 0: none.
    refetch_pending_since: Arc<AtomicU64>,
    /// Counts completed fetches, so requests waiting for a refetch wake when it ends.
    completed: tokio::sync::watch::Sender<u64>,
    refetch: Arc<Notify>,
    started: AtomicBool,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl RemoteKeys {
    /// A source with no keys yet.
    pub fn new(settings: RemoteSettings) -> Self {
        RemoteKeys {
            settings,
            keys: ArcSwapOption::empty(),
            epoch: AtomicU64::new(0),
            status: Mutex::default(),
            last_unknown_kid_refetch: AtomicU64::new(0),
            refetch_pending_since: Arc::new(AtomicU64::new(0)),
            completed: tokio::sync::watch::Sender::new(0),
            refetch: Arc::new(Notify::new()),
            started: AtomicBool::new(false),
        }
    }

    /// How it is fetched.
    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// The keys in use (none before the first successful fetch) and the current epoch.
    pub fn current(&self) -> (Option<Arc<KeySet>>, u64) {
        // The epoch is read first: a set swapped in meanwhile can only be newer than it.
        let epoch = self.epoch();
        (self.keys.load_full(), epoch)
    }

    /// The removal epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// What the fetches found so far.
    pub fn status(&self) -> RemoteStatus {
        self.lock().clone()
    }

    /// Seconds since the keys in use were fetched; none before the first success.
    pub fn age_seconds(&self, now: u64) -> Option<u64> {
        self.lock().last_success_unix.map(|at| now.saturating_sub(at))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RemoteStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True exactly once: the caller starts the source's fetch loop. A source kept by a
    /// reload is already being fetched.
    pub fn claim_fetching(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    /// Signalled when a refetch is wanted; the fetch loop waits on it between refreshes.
    pub fn refetch_signal(&self) -> Arc<Notify> {
        self.refetch.clone()
    }

    /// Asks for one refetch because a token named an unknown `kid`. At most one request
    /// per [`UNKNOWN_KID_REFETCH_SECONDS`] goes through (true when this one did); the
    /// fetch loop serves it, so concurrent requests share one fetch.
    pub fn request_refetch(&self, now: u64) -> bool {
        let last = self.last_unknown_kid_refetch.load(Ordering::Acquire);
        if last != 0 && now < (last - 1).saturating_add(UNKNOWN_KID_REFETCH_SECONDS) {
            return false;
        }
        let stamped = now.saturating_add(1);
        if self.last_unknown_kid_refetch.compare_exchange(last, stamped, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        self.refetch_pending_since.store(stamped, Ordering::Release);
        self.refetch.notify_one();
        true
    }

    /// See [`KeyRing::refetch_wait`].
    fn refetch_wait(&self, now: u64) -> Option<impl Future<Output = ()> + Send + 'static + use<>> {
        let since = self.refetch_pending_since.load(Ordering::Acquire);
        let deadline = (since != 0).then(|| (since - 1).saturating_add(REFETCH_WAIT_SECONDS))?;
        if now >= deadline {
            return None;
        }
        let mut completed = self.completed.subscribe();
        let pending = Arc::clone(&self.refetch_pending_since);
        let left = Duration::from_secs(deadline - now);
        Some(async move {
            // Subscribed first, checked second: a fetch that ends in between is not missed.
            if pending.load(Ordering::Acquire) == 0 {
                return;
            }
            let _ = tokio::time::timeout(left, completed.changed()).await;
        })
    }

    /// Ends a fetch, whatever its outcome: waiting requests look at the keys again.
    fn fetch_completed(&self) {
        self.refetch_pending_since.store(0, Ordering::Release);
        self.completed.send_modify(|count| *count += 1);
    }

    /// Takes a fetched set at `now`: an unchanged set keeps everything (and the cache);
    /// a changed one is swapped in, and moves the epoch on when it drops or replaces a key.
    pub fn apply(&self, fetched: KeySet, skipped: Vec<String>, now: u64) -> Applied {
        let before = self.keys.load_full();
        let applied = match &before {
            None => Applied::First,
            Some(old) if old.fingerprint() == fetched.fingerprint() => Applied::Unchanged,
            Some(old) => {
                let identity = |k: &Arc<VerifyingKey>| (k.kid.clone(), k.digest());
                let new_keys: HashSet<_> = fetched.keys().iter().map(identity).collect();
                let old_keys: HashSet<_> = old.keys().iter().map(identity).collect();
                let name = |(kid, _): &(Option<String>, [u8; 32])| kid.clone().unwrap_or_else(|| "(no kid)".to_owned());
                let mut removed: Vec<String> = old_keys.difference(&new_keys).map(name).collect();
                let mut added: Vec<String> = new_keys.difference(&old_keys).map(name).collect();
                removed.sort_unstable();
                added.sort_unstable();
                Applied::Changed { added, removed }
            }
        };
        if applied != Applied::Unchanged {
            self.keys.store(Some(Arc::new(fetched)));
            if let Applied::Changed { removed, .. } = &applied
                && !removed.is_empty()
            {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
        {
            let mut status = self.lock();
            status.fetches_ok += 1;
            status.last_success_unix = Some(now);
            status.last_error = None;
            status.skipped = skipped;
        }
        self.fetch_completed();
        applied
    }

    /// Records a failed fetch; the keys in use stay.
    pub fn record_failure(&self, error: String) {
        {
            let mut status = self.lock();
            status.fetches_failed += 1;
            status.last_error = Some(error);
        }
        self.fetch_completed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/keys/");

    fn fixture_jwks() -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}jwks.json")).expect("fixture")).expect("json")
    }

    /// The fixture set with only the keys whose kid is listed.
    fn set_of(kids: &[&str]) -> KeySet {
        let mut document = fixture_jwks();
        document["keys"].as_array_mut().expect("keys").retain(|k| kids.contains(&k["kid"].as_str().unwrap_or("")));
        KeySet::from_jwks(&document.to_string()).expect("loads")
    }

    fn remote() -> Arc<RemoteKeys> {
        Arc::new(RemoteKeys::new(RemoteSettings {
            source: "https://idp.test/jwks.json".to_owned(),
            refresh: Duration::from_secs(300),
        }))
    }

    #[test]
    fn unknown_kids_ask_for_one_refetch_per_thirty_seconds() {
        let source = remote();
        assert!(source.request_refetch(1_000), "the first unknown kid refetches at once");
        for now in [1_000, 1_010, 1_029] {
            assert!(!source.request_refetch(now), "at {now}");
        }
        assert!(source.request_refetch(1_030));
        assert!(!source.request_refetch(1_031));
    }

    #[test]
    fn unknown_kids_refetch_through_the_ring_and_fall_back_to_a_key_without_kid() {
        let source = remote();
        let secret = KeySet::from_secret(&[9u8; 32]).expect("valid");
        let ring = KeyRing::new(secret, Vec::new(), vec![source.clone()]);
        let other_family = ring.choose(Some("rsa-9"), Algorithm::RS256, 50).expect("the secret, to be refused");
        assert!(!other_family.key.accepts(Algorithm::RS256));
        assert!(!source.request_refetch(51), "the ring asked already");
        let remote_only = KeyRing::new(KeySet::empty(), Vec::new(), vec![remote()]);
        assert!(remote_only.choose(Some("rsa-9"), Algorithm::RS256, 50).is_none());
        let hmac = ring.choose(Some("anything"), Algorithm::HS256, 100).expect("the secret serves any kid");
        assert_eq!(hmac.key.family, AlgorithmFamily::Hmac);
        assert_eq!(hmac.origin, KeyOrigin::Fixed);
    }

    #[tokio::test]
    async fn a_request_with_an_unknown_kid_waits_for_the_refetch_it_asked_for() {
        let source = remote();
        let ring = KeyRing::new(KeySet::empty(), Vec::new(), vec![source.clone()]);
        assert!(ring.refetch_wait(100).is_none(), "nothing asked for yet");
        assert!(ring.choose(Some("rsa-1"), Algorithm::RS256, 100).is_none());
        let wait = ring.refetch_wait(100).expect("a refetch is in flight");
        let fetcher = source.clone();
        tokio::spawn(async move { fetcher.apply(set_of(&["rsa-1"]), Vec::new(), 100) });
        tokio::time::timeout(Duration::from_secs(5), wait).await.expect("the fetch ends the wait");
        assert!(ring.choose(Some("rsa-1"), Algorithm::RS256, 100).is_some(), "checked again, the key is there");
        assert!(ring.choose(Some("rsa-2"), Algorithm::RS256, 101).is_none());
        assert!(ring.refetch_wait(101).is_none(), "no refetch in flight: refused at once");
        // An identity provider that does not answer delays such requests a bounded time.
        assert!(ring.choose(Some("rsa-2"), Algorithm::RS256, 200).is_none(), "30 s later: asks again");
        assert!(ring.refetch_wait(200).is_some() && ring.refetch_wait(202).is_some());
        assert!(ring.refetch_wait(200 + REFETCH_WAIT_SECONDS).is_none(), "never past the wait limit");
    }

    #[test]
    fn keys_are_found_by_kid_fixed_sources_first() {
        let source = remote();
        source.apply(set_of(&["rsa-1", "ec-1"]), Vec::new(), 10);
        let ring = KeyRing::new(set_of(&["ec-1"]), Vec::new(), vec![source.clone()]);
        let rsa = ring.choose(Some("rsa-1"), Algorithm::RS256, 10).expect("remote key");
        assert!(matches!(rsa.origin, KeyOrigin::Remote { source: 0, epoch: 0, .. }));
        let ec = ring.choose(Some("ec-1"), Algorithm::ES256, 10).expect("fixed key");
        assert_eq!(ec.origin, KeyOrigin::Fixed, "the fixed source wins a shared kid");
        assert!(ring.ready());
    }

    #[test]
    fn a_token_without_kid_needs_one_candidate_of_its_family() {
        let secret = KeySet::from_secret(&[9u8; 32]).expect("valid");
        let ring = KeyRing::from(set_of(&["rsa-1", "ec-1"]).merged(&secret));
        assert_eq!(ring.choose(None, Algorithm::HS256, 0).expect("the secret").key.family, AlgorithmFamily::Hmac);
        assert_eq!(ring.choose(None, Algorithm::RS256, 0).expect("the one RSA key").key.kid.as_deref(), Some("rsa-1"));
        let two_rsa = KeyRing::from(
            set_of(&["rsa-1"])
                .merged(&KeySet::from_pem(&std::fs::read(format!("{FIXTURES}rsa-public.pem")).unwrap()).unwrap()),
        );
        let chosen = two_rsa.choose(None, Algorithm::RS256, 0).expect("the RSA key without kid is preferred");
        assert!(chosen.key.kid.is_none());
        let ambiguous = KeyRing::from(set_of(&["rsa-1", "ec-1", "ed-1"]));
        assert!(ambiguous.choose(None, Algorithm::PS256, 0).is_some(), "one RSA key");
        let mut document = fixture_jwks();
        let mut second = document["keys"][0].clone();
        second["kid"] = "rsa-2".into();
        document["keys"].as_array_mut().unwrap().push(second);
        let two = KeyRing::from(KeySet::from_jwks(&document.to_string()).unwrap());
        assert!(two.choose(None, Algorithm::RS256, 0).is_none(), "two RSA keys: the token must name one");
    }

    #[test]
    fn removal_moves_the_epoch_additions_and_repeats_do_not() {
        let source = remote();
        let ring = KeyRing::new(KeySet::empty(), Vec::new(), vec![source.clone()]);
        assert!(!ring.ready(), "no keys before the first fetch");
        assert_eq!(source.apply(set_of(&["rsa-1"]), Vec::new(), 10), Applied::First);
        let rsa_at = ring.choose(Some("rsa-1"), Algorithm::RS256, 10).expect("fetched").origin;
        assert_eq!(source.apply(set_of(&["rsa-1"]), Vec::new(), 20), Applied::Unchanged);
        assert_eq!(
            source.apply(set_of(&["rsa-1", "ec-1"]), Vec::new(), 30),
            Applied::Changed { added: vec!["ec-1".to_owned()], removed: Vec::new() }
        );
        assert_eq!(ring.still_trusts(rsa_at), Trust::Holds, "adding a key keeps earlier verifications");
        let ec_at = ring.choose(Some("ec-1"), Algorithm::ES256, 30).expect("fetched").origin;
        assert_eq!(
            source.apply(set_of(&["ec-1"]), Vec::new(), 40),
            Applied::Changed { added: Vec::new(), removed: vec!["rsa-1".to_owned()] }
        );
        assert_eq!(ring.still_trusts(rsa_at), Trust::Void, "a removed key's verifications are void");
        let KeyOrigin::Remote { key, .. } = ec_at else { panic!("a remote origin") };
        assert_eq!(
            ring.still_trusts(ec_at),
            Trust::HoldsAs(KeyOrigin::Remote { source: 0, epoch: 1, key }),
            "a kept key's verifications hold, at the new epoch"
        );
        assert!(ring.choose(Some("rsa-1"), Algorithm::RS256, 40).is_none());
        assert_eq!(source.age_seconds(100), Some(60));
    }

    #[test]
    fn replacing_the_material_behind_a_kid_counts_as_a_removal() {
        let source = remote();
        source.apply(set_of(&["rsa-1"]), Vec::new(), 10);
        let mut document = fixture_jwks();
        document["keys"].as_array_mut().unwrap().retain(|k| k["kid"] == "ec-1");
        document["keys"][0]["kid"] = "rsa-1".into();
        document["keys"][0]["alg"] = "ES256".into();
        let swapped = KeySet::from_jwks(&document.to_string()).expect("loads");
        let applied = source.apply(swapped, Vec::new(), 20);
        assert_eq!(applied, Applied::Changed { added: vec!["rsa-1".to_owned()], removed: vec!["rsa-1".to_owned()] });
        assert_eq!(source.epoch(), 1);
    }

    #[test]
    fn a_failed_fetch_keeps_the_keys_and_the_age_grows() {
        let source = remote();
        source.apply(set_of(&["rsa-1"]), vec!["p521: unsupported curve".to_owned()], 10);
        source.record_failure("connection refused".to_owned());
        let status = source.status();
        assert_eq!((status.fetches_ok, status.fetches_failed), (1, 1));
        assert_eq!(status.last_error.as_deref(), Some("connection refused"));
        assert_eq!(status.skipped.len(), 1);
        assert!(source.current().0.is_some_and(|k| k.by_kid("rsa-1").is_some()));
        assert_eq!(source.age_seconds(70), Some(60));
        source.apply(set_of(&["rsa-1"]), Vec::new(), 80);
        assert_eq!(source.status().last_error, None, "a success clears the error");
    }

    #[test]
    fn sources_are_the_same_only_when_the_remote_ones_are_shared() {
        let source = remote();
        let a = KeyRing::new(set_of(&["ec-1"]), Vec::new(), vec![source.clone()]);
        let b = KeyRing::new(set_of(&["ec-1"]), Vec::new(), vec![source.clone()]);
        let c = KeyRing::new(set_of(&["ec-1"]), Vec::new(), vec![remote()]);
        assert!(a.same_sources(&b));
        assert!(!a.same_sources(&c), "another remote source may serve other keys");
        assert!(a.may_support(Algorithm::PS512), "a remote source may publish any asymmetric key");
        assert!(!a.may_support(Algorithm::HS256), "never a secret");
        assert!(source.claim_fetching() && !source.claim_fetching());
    }
}
