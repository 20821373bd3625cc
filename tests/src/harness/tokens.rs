//! Tokens signed with the fixture keys in `tests/fixtures/keys`, and the `[auth]` section
//! that trusts them.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The issuer the test `[auth]` section requires.
pub const ISSUER: &str = "https://auth.test.local";
/// The audience the test `[auth]` section requires.
pub const AUDIENCE: &str = "api";

/// Path of a fixture key file.
pub fn fixture(name: &str) -> String {
    format!("{}/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An `[auth]` section trusting the fixture JWKS, mapping `sub` and `email` to headers.
pub fn auth_section() -> String {
    format!(
        r#"
[auth]
algorithms = ["RS256", "ES256"]
jwks_file = "{}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
leeway_seconds = 0
claims_to_headers = {{ sub = "x-user-id", email = "x-user-email" }}
"#,
        fixture("jwks.json")
    )
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Claims a valid token for `sub` carries.
pub fn claims_for(sub: &str) -> Value {
    json!({ "sub": sub, "email": format!("{sub}@company.com"), "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600 })
}

/// Signs `claims` with a fixture key: RS256 (`rsa-1`), ES256 (`ec-1`).
pub fn sign(algorithm: Algorithm, claims: &Value) -> String {
    let (file, kid) = match algorithm {
        Algorithm::RS256 => ("rsa-private.pem", "rsa-1"),
        Algorithm::ES256 => ("ec-private.pem", "ec-1"),
        other => panic!("no fixture key for {other:?}"),
    };
    let pem = std::fs::read(fixture(file)).expect("fixture key");
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .expect("fixture key loads");
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("signs")
}
