//! JWT authentication at the edge.
//!
//! [`AuthPlugin`] runs at `authenticate` on every request:
//! 1. It removes the headers named in `claims_to_headers` from the request, whatever the
//!    route, so a caller can never spoof `x-user-id`.
//! 2. On routes with `auth = "off"` it stops there.
//! 3. It takes the token from `Authorization: Bearer` (or the configured cookie; never the
//!    query string). No token: 401 on `required` routes, anonymous on `optional` ones.
//! 4. It verifies the token, or finds it in the verified-token cache, and on success sets
//!    the typed [`Identity`] on the request and the claim headers on the upstream request.
//!    Any failure is a 401 naming the reason; the upstream sees nothing.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod cache;
mod failure;
pub mod keys;
pub mod ring;
mod verify;

use std::sync::Arc;

use gateway_plugin_api::{Flow, Identity, Phases, Plugin, Rejection, RequestCtx};
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::{StatusCode, request::Parts};

pub use cache::TokenCache;
pub use failure::AuthFailure;
pub use keys::{KeyError, KeySet};
pub use ring::{Applied, FixedSource, KeyOrigin, KeyRing, RemoteKeys, RemoteSettings, RemoteStatus, SourceKind, Trust};
pub use verify::{MAX_TOKEN_BYTES, Verifier};

/// What a route asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// A valid token is required.
    Required,
    /// No token is fine (anonymous); a token that is present must be valid.
    Optional,
    /// The gateway does not look at tokens (the upstream may do its own auth).
    Off,
}

/// The seconds-since-epoch clock tokens are checked against; injectable for tests.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> u64;
}

/// The system wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// A verified token as cached: the identity and the claim headers made from it once.
#[derive(Debug)]
pub struct Verified {
    /// The caller.
    pub identity: Arc<Identity>,
    /// `claims_to_headers`, ready to insert.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The source whose key verified it: a later fetch that drops the key voids this.
    pub origin: KeyOrigin,
}

/// Verifies tokens, through the cache. One per `[auth]` section; shared by reloads that
/// keep the same keys and settings.
pub struct Authenticator {
    verifier: Verifier,
    claims_to_headers: Vec<(String, HeaderName)>,
    cookie: Option<String>,
    cache_entries: u64,
    cache: Option<TokenCache>,
    clock: Arc<dyn Clock>,
}

impl Authenticator {
    /// An authenticator with a cache of `cache_entries` tokens (0 disables the cache).
    pub fn new(
        verifier: Verifier,
        claims_to_headers: Vec<(String, HeaderName)>,
        cookie: Option<String>,
        cache_entries: u64,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let cache = (cache_entries > 0).then(|| TokenCache::new(cache_entries, verifier.leeway_seconds()));
        Authenticator { verifier, claims_to_headers, cookie, cache_entries, cache, clock }
    }

    /// True when `other` would accept and reject exactly the same tokens and produce the
    /// same headers: then a reload may keep this authenticator and its cache of verified
    /// tokens. Any key change makes them differ.
    pub fn equivalent(&self, other: &Authenticator) -> bool {
        self.verifier.equivalent(&other.verifier)
            && self.claims_to_headers == other.claims_to_headers
            && self.cookie == other.cookie
            && self.cache_entries == other.cache_entries
    }

    /// The verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The cache, if enabled.
    pub fn cache(&self) -> Option<&TokenCache> {
        self.cache.as_ref()
    }

    /// The header names set from claims (and stripped from every request).
    pub fn claim_header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.claims_to_headers.iter().map(|(_, header)| header)
    }

    /// Verifies `token` now, using the cache.
    pub fn authenticate(&self, token: &str) -> Result<Arc<Verified>, AuthFailure> {
        let now = self.clock.now_unix();
        let Some(cache) = &self.cache else {
            return self.verify(token, now);
        };
        let digest = TokenCache::digest(token);
        if let Some(hit) = cache.get(&digest) {
            // The cache expires entries by itself, but a hit is checked against the clock
            // all the same: the token's own `exp` is the only authority. A key its
            // source has dropped since voids the hit.
            if now < hit.identity.expires_at.saturating_add(self.verifier.leeway_seconds()) {
                match self.verifier.keys().still_trusts(hit.origin) {
                    Trust::Holds => return Ok(hit),
                    Trust::HoldsAs(origin) => {
                        let renewed =
                            Arc::new(Verified { identity: hit.identity.clone(), headers: hit.headers.clone(), origin });
                        cache.insert(digest, renewed.clone());
                        return Ok(renewed);
                    }
                    Trust::Void => {}
                }
            }
            cache.remove(&digest);
        }
        let verified = self.verify(token, now)?;
        cache.insert(digest, verified.clone());
        Ok(verified)
    }

    fn verify(&self, token: &str, now: u64) -> Result<Arc<Verified>, AuthFailure> {
        let (identity, origin) = self.verifier.verify_with_origin(token, now)?;
        // Only text claims become headers. Non-ASCII text goes as its UTF-8 bytes (HTTP's
        // obs-text); a value with control characters is left out rather than refused.
        let headers = self
            .claims_to_headers
            .iter()
            .filter_map(|(claim, header)| {
                let value = HeaderValue::from_bytes(identity.claim(claim)?.as_bytes()).ok()?;
                Some((header.clone(), value))
            })
            .collect();
        Ok(Arc::new(Verified { identity: Arc::new(identity), headers, origin }))
    }

    /// A wait for an in-flight refetch of a remote key source (see
    /// [`KeyRing::refetch_wait`]).
    pub fn refetch_wait(&self) -> Option<impl Future<Output = ()> + Send + 'static + use<>> {
        self.verifier.keys().refetch_wait(self.clock.now_unix())
    }

    /// The token a request carries: `Authorization: Bearer`, else the configured cookie.
    /// Two bearer tokens are malformed (which one would the upstream believe?).
    pub fn token<'a>(&self, headers: &'a HeaderMap) -> Result<Option<&'a str>, AuthFailure> {
        let mut found = None;
        for value in headers.get_all(AUTHORIZATION) {
            let Ok(text) = value.to_str() else { continue };
            if let Some(token) = strip_bearer(text)
                && found.replace(token).is_some()
            {
                return Err(AuthFailure::Malformed);
            }
        }
        if found.is_none()
            && let Some(name) = &self.cookie
        {
            found = gateway_plugin_api::cookie(headers, name);
        }
        Ok(found)
    }
}

/// `Bearer <token>`, scheme case-insensitive (RFC 9110 §11.1).
fn strip_bearer(value: &str) -> Option<&str> {
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let rest = &value[6..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    Some(rest.trim())
}

/// The authentication phase.
pub struct AuthPlugin {
    authenticator: Arc<Authenticator>,
    /// Indexed by route id (routes in file order, then the default route).
    modes: Vec<AuthMode>,
    claim_headers: Vec<HeaderName>,
}

impl AuthPlugin {
    /// The plugin for one compiled config: `modes` is indexed by route id.
    pub fn new(authenticator: Arc<Authenticator>, modes: Vec<AuthMode>) -> Self {
        let claim_headers = authenticator.claim_header_names().cloned().collect();
        AuthPlugin { authenticator, modes, claim_headers }
    }

    fn reject(ctx: &mut RequestCtx, failure: AuthFailure) -> Flow {
        ctx.auth_failure = Some(failure.code());
        // RFC 6750 §3.1: a request without credentials gets no error code.
        let challenge = match failure {
            AuthFailure::Missing => HeaderValue::from_static("Bearer"),
            other => HeaderValue::from_str(&format!(r#"Bearer error="invalid_token", error_description="{other}""#))
                .expect("the descriptions are plain ASCII"),
        };
        Flow::Respond(
            Rejection::new(StatusCode::UNAUTHORIZED, failure.gateway_error(), failure.to_string())
                .with_header(WWW_AUTHENTICATE, challenge),
        )
    }
}

impl Plugin for AuthPlugin {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn phases(&self) -> Phases {
        Phases { authenticate: true, ..Phases::default() }
    }

    fn authenticate(&self, ctx: &mut RequestCtx, request: &mut Parts) -> Flow {
        for name in &self.claim_headers {
            request.headers.remove(name);
        }
        // A route id outside the table cannot happen; if it did, fail closed.
        let mode = ctx.route.and_then(|id| self.modes.get(id.0)).copied().unwrap_or(AuthMode::Required);
        if mode == AuthMode::Off {
            return Flow::Continue;
        }
        let token = match self.authenticator.token(&request.headers) {
            Ok(Some(token)) => token,
            Ok(None) if mode == AuthMode::Optional => return Flow::Continue,
            Ok(None) => return Self::reject(ctx, AuthFailure::Missing),
            Err(failure) => return Self::reject(ctx, failure),
        };
        match self.authenticator.authenticate(token) {
            Ok(verified) => {
                for (name, value) in &verified.headers {
                    request.headers.insert(name.clone(), value.clone());
                }
                ctx.identity = Some(verified.identity.clone());
                Flow::Continue
            }
            // The key may have been published a moment ago: wait (bounded) for the
            // refetch this kid asked for, or joined, then look again.
            Err(AuthFailure::UnknownKid) => match self.authenticator.refetch_wait() {
                Some(wait) => Flow::Wait(Box::pin(wait)),
                None => Self::reject(ctx, AuthFailure::UnknownKid),
            },
            Err(failure) => Self::reject(ctx, failure),
        }
    }
}

#[cfg(test)]
mod tests;
