//! `gateway token`: mint a signed JWT for trying routes out (and the token `gateway demo`
//! prints). The gateway itself only ever verifies tokens; this is a tool for operators.

use std::path::Path;

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value};

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The key file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key does not fit the algorithm, or the algorithm is unknown.
    #[error("cannot sign {algorithm} with {path}: {reason}")]
    Key {
        /// The algorithm asked for.
        algorithm: String,
        /// The key file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A `--claim` is not `name=value`.
    #[error("claim {0:?} is not NAME=VALUE")]
    Claim(String),
}

/// What to put in the token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `RS256`, `ES256`, `EdDSA`, ... (HMAC secrets are not read from files, so HS* is not offered).
    pub algorithm: String,
    /// `kid` header, so a JWKS-keyed gateway can pick the key.
    pub kid: Option<String>,
    /// `sub`.
    pub subject: Option<String>,
    /// `iss`.
    pub issuer: Option<String>,
    /// `aud`.
    pub audience: Option<String>,
    /// Lifetime in seconds from now (`exp`).
    pub ttl_seconds: u64,
    /// Extra claims as `name=value`; a value that parses as JSON (number, bool, array) is
    /// used as such, anything else as a string.
    pub claims: Vec<String>,
}

/// Signs a token with the private key in PEM at `key_path`.
pub fn mint(key_path: &Path, request: &TokenRequest, now_unix: u64) -> Result<String, MintError> {
    let path = key_path.display().to_string();
    let pem = std::fs::read(key_path).map_err(|source| MintError::Read { path: path.clone(), source })?;
    let key_error =
        |reason: String| MintError::Key { algorithm: request.algorithm.clone(), path: path.clone(), reason };
    let algorithm: Algorithm = request.algorithm.parse().map_err(|_| key_error("unknown algorithm".to_owned()))?;
    let key = match algorithm.family() {
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
        _ => return Err(key_error("HMAC secrets come from the environment, not from files".to_owned())),
    }
    .map_err(|e| key_error(e.to_string()))?;

    let mut claims = Map::new();
    for claim in &request.claims {
        let (name, value) = claim.split_once('=').ok_or_else(|| MintError::Claim(claim.clone()))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        claims.insert(name.to_owned(), value);
    }
    let mut set = |name: &str, value: Option<&String>| {
        if let Some(value) = value {
            claims.insert(name.to_owned(), Value::String(value.clone()));
        }
    };
    set("sub", request.subject.as_ref());
    set("iss", request.issuer.as_ref());
    set("aud", request.audience.as_ref());
    claims.insert("iat".to_owned(), now_unix.into());
    claims.insert("exp".to_owned(), now_unix.saturating_add(request.ttl_seconds).into());

    let mut header = Header::new(algorithm);
    header.kid = request.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| key_error(e.to_string()))
}
