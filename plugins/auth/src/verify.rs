//! Token verification: algorithm allow-list, key selection by `kid` and family, signature,
//! then `exp`, `nbf`, `iss` and `aud` against an injected clock.
//!
//! The order matters for safety and for cost: everything that can be refused without
//! cryptography (bad shape, `alg: none`, an algorithm of another key family, an unknown
//! `kid`) is refused first; the signature is checked before any claim is trusted.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_plugin_api::{ClaimValue, Identity};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::failure::AuthFailure;
use crate::ring::{KeyOrigin, KeyRing};

/// Longest token accepted (bytes); longer is malformed, before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a token must satisfy.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: KeyRing,
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audiences: Vec<String>,
    leeway_seconds: u64,
}

/// The part of the JOSE header the verifier reads itself, before jsonwebtoken does, so it
/// can tell `alg: none` and unknown algorithms apart from a malformed header.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    /// Critical extensions: none are understood, so any present refuses the token.
    crit: Option<Value>,
}

impl Verifier {
    /// A verifier. `algorithms` is the allow-list (`none` cannot be expressed: jsonwebtoken
    /// has no such algorithm); `audiences` empty means `aud` is not checked.
    pub fn new(
        keys: impl Into<KeyRing>,
        algorithms: Vec<Algorithm>,
        issuer: Option<String>,
        audiences: Vec<String>,
        leeway_seconds: u64,
    ) -> Self {
        Verifier { keys: keys.into(), algorithms, issuer, audiences, leeway_seconds }
    }

    /// Same key sources, algorithms, issuer, audiences and leeway.
    pub fn equivalent(&self, other: &Verifier) -> bool {
        self.keys.same_sources(&other.keys)
            && self.algorithms == other.algorithms
            && self.issuer == other.issuer
            && self.audiences == other.audiences
            && self.leeway_seconds == other.leeway_seconds
    }

    /// The trusted keys.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The allow-list of algorithms.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// The required issuer, if any.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The accepted audiences (empty: not checked).
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Leeway applied to `exp` and `nbf`.
    pub fn leeway_seconds(&self) -> u64 {
        self.leeway_seconds
    }

    /// Verifies `token` at time `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, AuthFailure> {
        self.verify_with_origin(token, now).map(|(identity, _)| identity)
    }

    /// Verifies `token` at `now`, and says which source's key verified it.
    pub fn verify_with_origin(&self, token: &str, now: u64) -> Result<(Identity, KeyOrigin), AuthFailure> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
            return Err(AuthFailure::Malformed);
        }
        let header_segment = token.split('.').next().unwrap_or_default();
        let header_json = URL_SAFE_NO_PAD.decode(header_segment).map_err(|_| AuthFailure::Malformed)?;
        let header: RawHeader = serde_json::from_slice(&header_json).map_err(|_| AuthFailure::Malformed)?;
        if header.crit.is_some() {
            return Err(AuthFailure::Malformed);
        }
        // "none", "None", unknown names and names outside the allow-list all stop here.
        let algorithm = Algorithm::from_str(&header.alg).map_err(|_| AuthFailure::AlgorithmNotAllowed)?;
        if !self.algorithms.contains(&algorithm) {
            return Err(AuthFailure::AlgorithmNotAllowed);
        }
        let chosen = self.keys.choose(header.kid.as_deref(), algorithm, now).ok_or(AuthFailure::UnknownKid)?;
        let key = &chosen.key;
        if !key.accepts(algorithm) {
            return Err(AuthFailure::AlgorithmNotAllowed);
        }

        // Signature only: the claims are checked below against the injected clock.
        let mut validation = Validation::new(algorithm);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, key.decoding_key(), &validation).map_err(|e| match e
                .kind()
            {
                ErrorKind::InvalidSignature => AuthFailure::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat | ErrorKind::UnsupportedAlgorithm => {
                    AuthFailure::AlgorithmNotAllowed
                }
                _ => AuthFailure::Malformed,
            })?;
        let claims = data.claims;

        let expires_at = numeric_date(claims.get("exp")).ok_or(AuthFailure::MissingExpiry)?;
        if now >= expires_at.saturating_add(self.leeway_seconds) {
            return Err(AuthFailure::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let not_before = numeric_date(Some(nbf)).ok_or(AuthFailure::Malformed)?;
            if now.saturating_add(self.leeway_seconds) < not_before {
                return Err(AuthFailure::NotYetValid);
            }
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(AuthFailure::BadIssuer);
        }
        if !self.audiences.is_empty() && !audience_matches(claims.get("aud"), &self.audiences) {
            return Err(AuthFailure::BadAudience);
        }
        Ok((Identity { claims: text_claims(claims), expires_at }, chosen.origin))
    }
}

/// A NumericDate (RFC 7519 §2): a non-negative number of seconds; fractions truncate.
fn numeric_date(value: Option<&Value>) -> Option<u64> {
    let number = value?.as_number()?;
    number.as_u64().or_else(|| number.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

fn audience_matches(aud: Option<&Value>, accepted: &[String]) -> bool {
    match aud {
        Some(Value::String(one)) => accepted.iter().any(|a| a == one),
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).any(|one| accepted.iter().any(|a| a == one)),
        _ => false,
    }
}

/// Claims as text: strings, numbers and booleans; arrays of those as lists. Objects,
/// nulls and nested arrays are left out.
fn text_claims(claims: Map<String, Value>) -> BTreeMap<String, ClaimValue> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    claims
        .into_iter()
        .filter_map(|(name, value)| {
            let claim = match &value {
                Value::Array(items) => ClaimValue::List(items.iter().filter_map(scalar).collect()),
                other => ClaimValue::Text(scalar(other)?),
            };
            Some((name, claim))
        })
        .collect()
}
