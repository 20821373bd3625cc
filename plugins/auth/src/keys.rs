//! Verification keys, each bound to its algorithm family.
//!
//! A key remembers its family (RSA, EC, EdDSA, HMAC) and, when the source says so, the one
//! algorithm it is for (a JWK's `alg`, an EC key's curve). A token whose `alg` is of
//! another family is refused before any cryptography runs, so an RSA public key can never
//! be used as an HMAC secret ("algorithm confusion").
//!
//! A [`KeySet`] is what one source holds (a JWKS document, a PEM key, a secret); the
//! [`KeyRing`](crate::ring::KeyRing) merges the sources and picks the key for a token.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use sha2::{Digest, Sha256};

/// Shortest accepted HMAC secret (bytes): 256 bits, as RFC 7518 §3.2 requires for HS256.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The JWKS document is not valid JSON of the JWKS shape.
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    /// A JWK could not be turned into a key.
    #[error("key {kid}: {reason}")]
    BadJwk {
        /// The key's `kid`, or its position.
        kid: String,
        /// What is wrong.
        reason: String,
    },
    /// No usable signing key was found.
    #[error("no signature-verification key found")]
    Empty,
    /// The PEM is not an RSA, EC or Ed25519 public key.
    #[error("not an RSA, EC or Ed25519 public key in PEM form")]
    BadPem,
    /// The HMAC secret is too short.
    #[error("the secret is {0} bytes; at least {MIN_HMAC_SECRET_BYTES} are required")]
    ShortSecret(usize),
    /// Two keys of one document share a `kid`: which one would verify?
    #[error("kid \"{0}\" names two keys in this document")]
    DuplicateKid(String),
}

/// One key a token may be verified with.
#[derive(Clone)]
pub struct VerifyingKey {
    /// The `kid` that selects it, when it has one.
    pub kid: Option<String>,
    /// The family of algorithms it can verify.
    pub family: AlgorithmFamily,
    /// The single algorithm it is for, when the source pins one.
    pub algorithm: Option<Algorithm>,
    key: DecodingKey,
    /// SHA-256 of this key's material: a key whose `kid` stays but whose material changes
    /// is a different key.
    digest: [u8; 32],
}

impl VerifyingKey {
    /// The key material for jsonwebtoken.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// Whether this key may verify a token signed with `algorithm`.
    pub fn accepts(&self, algorithm: Algorithm) -> bool {
        algorithm.family() == self.family && self.algorithm.is_none_or(|pinned| pinned == algorithm)
    }

    /// SHA-256 of the key material.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material: an HMAC key is a secret.
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// The keys of one source.
#[derive(Clone, Debug)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    /// SHA-256 of the key material: equal fingerprints mean the same trust, so a cache of
    /// verified tokens may be kept across a reload.
    fingerprint: [u8; 32],
}

impl KeySet {
    /// Keys from a JWKS document read with the config: any key that cannot be used is an
    /// error. RSA, EC and OKP (Ed25519) keys are used; keys marked `"use": "enc"` or with a
    /// non-signing `alg` are skipped; symmetric (`oct`) keys are refused, because a secret
    /// does not belong in a file.
    pub fn from_jwks(json: &str) -> Result<Self, KeyError> {
        let (keys, problems) = Self::parse_jwks(json)?;
        if let Some(problem) = problems.into_iter().next() {
            return Err(problem);
        }
        Self::new(keys, json.as_bytes())
    }

    /// Keys from a JWKS document an identity provider published: a key this gateway cannot
    /// use (an unsupported curve, an `oct` key) is skipped and named in the second value,
    /// so one exotic key does not stop the others from rotating in. A document that is not
    /// JWKS, repeats a `kid` or leaves no usable key is still an error.
    pub fn from_published_jwks(json: &str) -> Result<(Self, Vec<String>), KeyError> {
        let (keys, problems) = Self::parse_jwks(json)?;
        let skipped = problems.iter().map(ToString::to_string).collect();
        Ok((Self::new(keys, json.as_bytes())?, skipped))
    }

    fn parse_jwks(json: &str) -> Result<(Vec<VerifyingKey>, Vec<KeyError>), KeyError> {
        let set: JwkSet = serde_json::from_str(json).map_err(|e| KeyError::NotJwks(e.to_string()))?;
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        let mut kids = HashSet::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            if let Some(kid) = &kid
                && !kids.insert(kid.clone())
            {
                return Err(KeyError::DuplicateKid(kid.clone()));
            }
            let name = kid.clone().unwrap_or_else(|| format!("#{i}"));
            let bad = |reason: String| KeyError::BadJwk { kid: name.clone(), reason };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let pinned = match &jwk.common.key_algorithm {
                Some(algorithm) => {
                    let name = serde_json::to_value(algorithm).ok().and_then(|v| v.as_str().map(str::to_owned));
                    match name.as_deref().map(Algorithm::from_str) {
                        Some(Ok(algorithm)) => Some(algorithm),
                        // An encryption algorithm (RSA-OAEP, ...): not a signing key.
                        _ => continue,
                    }
                }
                None => None,
            };
            let (family, curve_algorithm) = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
                    EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
                    ref other => {
                        problems.push(bad(format!("unsupported curve {other:?}")));
                        continue;
                    }
                },
                AlgorithmParameters::OctetKeyPair(_) => (AlgorithmFamily::Ed, None),
                AlgorithmParameters::OctetKey(_) => {
                    problems.push(bad("symmetric (oct) keys are not read from files; use hs256_secret_env".to_owned()));
                    continue;
                }
                _ => {
                    problems.push(bad("unsupported key type".to_owned()));
                    continue;
                }
            };
            if let (Some(pinned), Some(by_curve)) = (pinned, curve_algorithm)
                && pinned != by_curve
            {
                problems.push(bad(format!("alg {pinned:?} does not match the key's curve")));
                continue;
            }
            if let Some(pinned) = pinned
                && pinned.family() != family
            {
                problems.push(bad(format!("alg {pinned:?} does not match the key type")));
                continue;
            }
            let key = match DecodingKey::from_jwk(jwk) {
                Ok(key) => key,
                Err(e) => {
                    problems.push(bad(e.to_string()));
                    continue;
                }
            };
            let material = serde_json::to_vec(jwk).unwrap_or_default();
            let digest = Sha256::digest(&material).into();
            keys.push(VerifyingKey { kid, family, algorithm: pinned.or(curve_algorithm), key, digest });
        }
        Ok((keys, problems))
    }

    /// One public key in PEM form (RSA, EC or Ed25519), used for tokens with any `kid`.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let (key, family) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (key, AlgorithmFamily::Rsa)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (key, AlgorithmFamily::Ec)
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (key, AlgorithmFamily::Ed)
        } else {
            return Err(KeyError::BadPem);
        };
        let digest = Sha256::digest(pem).into();
        Self::new(vec![VerifyingKey { kid: None, family, algorithm: None, key, digest }], pem)
    }

    /// An HMAC secret, used for tokens with any `kid`.
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        let key = VerifyingKey {
            kid: None,
            family: AlgorithmFamily::Hmac,
            algorithm: None,
            key: DecodingKey::from_secret(secret),
            digest: Sha256::digest(secret).into(),
        };
        Self::new(vec![key], secret)
    }

    fn new(keys: Vec<VerifyingKey>, material: &[u8]) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(KeySet { keys: keys.into_iter().map(Arc::new).collect(), fingerprint: Sha256::digest(material).into() })
    }

    /// No keys (a ring whose only sources are fetched).
    pub fn empty() -> Self {
        KeySet { keys: Vec::new(), fingerprint: Sha256::digest([]).into() }
    }

    /// These keys and then `other`'s, in one set; the caller has checked that no `kid`
    /// repeats.
    pub fn merged(&self, other: &KeySet) -> KeySet {
        let keys = self.keys.iter().chain(&other.keys).cloned().collect();
        let mut hasher = Sha256::new();
        hasher.update(self.fingerprint);
        hasher.update(other.fingerprint);
        KeySet { keys, fingerprint: hasher.finalize().into() }
    }

    /// Every key, in source order.
    pub fn keys(&self) -> &[Arc<VerifyingKey>] {
        &self.keys
    }

    /// The `kid`s of the keys that have one, in source order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref())
    }

    /// The key with this `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// Whether some key may verify tokens signed with `algorithm`.
    pub fn supports(&self, algorithm: Algorithm) -> bool {
        self.keys.iter().any(|k| k.accepts(algorithm))
    }

    /// SHA-256 of the key material.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/keys/");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}{name}")).expect("fixture exists")
    }

    #[test]
    fn jwks_keys_carry_family_and_algorithm() {
        let set = KeySet::from_jwks(&String::from_utf8(fixture("jwks.json")).expect("utf-8")).expect("loads");
        let rsa = set.by_kid("rsa-1").expect("rsa key");
        assert_eq!(rsa.family, AlgorithmFamily::Rsa);
        assert!(rsa.accepts(Algorithm::RS256));
        assert!(!rsa.accepts(Algorithm::HS256), "an RSA key never verifies HMAC");
        assert!(!rsa.accepts(Algorithm::PS256), "the JWK pins RS256");
        let ec = set.by_kid("ec-1").expect("ec key");
        assert!(ec.accepts(Algorithm::ES256) && !ec.accepts(Algorithm::ES384));
        assert!(set.by_kid("ed-1").expect("ed key").accepts(Algorithm::EdDSA));
        assert!(set.by_kid("nope").is_none());
        assert_eq!(set.kids().collect::<Vec<_>>(), ["rsa-1", "ec-1", "ed-1"]);
    }

    #[test]
    fn a_set_supports_exactly_the_algorithms_its_keys_accept() {
        let rsa = KeySet::from_pem(&fixture("rsa-public.pem")).expect("loads");
        assert!(rsa.supports(Algorithm::RS256) && rsa.supports(Algorithm::PS512));
        assert!(!rsa.supports(Algorithm::ES256) && !rsa.supports(Algorithm::HS256));
        let secret = KeySet::from_secret(&[3u8; 32]).expect("valid");
        assert!(secret.supports(Algorithm::HS256) && !secret.supports(Algorithm::RS256));
    }

    #[test]
    fn symmetric_jwks_keys_are_refused_with_their_own_reason() {
        let jwks = r#"{"keys":[{"kty":"oct","kid":"hmac-1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}"#;
        let error = KeySet::from_jwks(jwks).expect_err("oct keys are refused").to_string();
        assert!(error.contains("symmetric (oct) keys are not read from files"), "{error}");
        assert!(error.contains("hmac-1"), "{error}");
    }

    #[test]
    fn key_debug_output_names_the_key_but_never_its_material() {
        let set = KeySet::from_secret(b"0123456789abcdef0123456789abcdef").expect("valid");
        let text = format!("{set:?}");
        assert!(text.contains("VerifyingKey") && text.contains("family"), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }

    #[test]
    fn pem_keys_are_classified_by_family() {
        for (file, family) in [
            ("rsa-public.pem", AlgorithmFamily::Rsa),
            ("ec-public.pem", AlgorithmFamily::Ec),
            ("ed-public.pem", AlgorithmFamily::Ed),
        ] {
            let set = KeySet::from_pem(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            let [key] = set.keys() else { panic!("{file}: one key") };
            assert_eq!(key.family, family, "{file}");
            assert!(key.kid.is_none(), "{file}: a PEM key has no kid");
        }
        assert!(matches!(KeySet::from_pem(b"not a key"), Err(KeyError::BadPem)));
    }

    #[test]
    fn secrets_must_be_long_enough_and_oct_keys_are_refused() {
        assert!(matches!(KeySet::from_secret(b"short"), Err(KeyError::ShortSecret(5))));
        assert!(KeySet::from_secret(&[7u8; 32]).is_ok());
        let oct = r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#;
        assert!(matches!(KeySet::from_jwks(oct), Err(KeyError::BadJwk { .. })));
        assert!(matches!(KeySet::from_jwks(r#"{"keys":[]}"#), Err(KeyError::Empty)));
        assert!(matches!(KeySet::from_jwks("{"), Err(KeyError::NotJwks(_))));
    }

    #[test]
    fn a_published_set_skips_what_it_cannot_use_and_keeps_the_rest() {
        let jwks = String::from_utf8(fixture("jwks.json")).expect("utf-8");
        let mut document: serde_json::Value = serde_json::from_str(&jwks).expect("json");
        let keys = document["keys"].as_array_mut().expect("keys");
        keys.push(serde_json::json!({"kty": "oct", "kid": "hmac-9", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}));
        keys.push(serde_json::json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AQ", "y": "AQ"}));
        let text = document.to_string();
        assert!(KeySet::from_jwks(&text).is_err(), "a file must be usable as a whole");
        let (set, skipped) = KeySet::from_published_jwks(&text).expect("the usable keys load");
        assert_eq!(set.kids().collect::<Vec<_>>(), ["rsa-1", "ec-1", "ed-1"]);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("hmac-9") && skipped[1].contains("p521"), "{skipped:?}");
        let only_bad = r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#;
        assert!(matches!(KeySet::from_published_jwks(only_bad), Err(KeyError::Empty)));
    }

    #[test]
    fn a_kid_twice_in_one_document_is_refused() {
        let jwks = String::from_utf8(fixture("jwks.json")).expect("utf-8");
        let mut document: serde_json::Value = serde_json::from_str(&jwks).expect("json");
        let first = document["keys"][0].clone();
        document["keys"].as_array_mut().expect("keys").push(first);
        for result in
            [KeySet::from_jwks(&document.to_string()).err(), KeySet::from_published_jwks(&document.to_string()).err()]
        {
            assert!(matches!(result, Some(KeyError::DuplicateKid(kid)) if kid == "rsa-1"));
        }
    }

    #[test]
    fn key_digests_follow_each_keys_material() {
        let a = KeySet::from_jwks(&String::from_utf8(fixture("jwks.json")).expect("utf-8")).expect("loads");
        let b = KeySet::from_jwks(&String::from_utf8(fixture("jwks.json")).expect("utf-8")).expect("loads");
        let digests = |s: &KeySet| s.keys().iter().map(|k| k.digest()).collect::<Vec<_>>();
        assert_eq!(digests(&a), digests(&b));
        assert_ne!(digests(&a)[0], digests(&a)[1]);
        let merged = a.merged(&KeySet::from_secret(&[4u8; 32]).expect("valid"));
        assert_eq!(merged.keys().len(), 4);
        assert_ne!(merged.fingerprint(), a.fingerprint());
    }

    #[test]
    fn fingerprints_follow_key_material() {
        let a = KeySet::from_secret(&[1u8; 32]).expect("valid");
        let b = KeySet::from_secret(&[1u8; 32]).expect("valid");
        let c = KeySet::from_secret(&[2u8; 32]).expect("valid");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
