//! Why a token was refused. Each reason has a stable code used in `x-gateway-error`
//! (`jwt-<code>`), in `gateway_auth_failures_total{reason}` and in the JSON body.

/// Why authentication refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The route requires a token and none was sent.
    #[error("a bearer token is required")]
    Missing,
    /// Not a compact JWS with a decodable header, payload and signature.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// `alg` is `none`, unknown, not in the allow-list, or not one the key may verify.
    #[error("the token's signing algorithm is not accepted")]
    AlgorithmNotAllowed,
    /// No configured key has the token's `kid`.
    #[error("no trusted key matches the token's kid")]
    UnknownKid,
    /// The signature does not verify with the key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` (plus leeway) has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` (minus leeway) is still in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The token carries no numeric `exp`.
    #[error("the token has no expiry (exp)")]
    MissingExpiry,
    /// `iss` is not the configured issuer.
    #[error("the token was issued by an untrusted issuer")]
    BadIssuer,
    /// `aud` names none of the configured audiences.
    #[error("the token is not meant for this audience")]
    BadAudience,
}

impl AuthFailure {
    /// The reason code: `missing`, `expired`, `bad-signature`, ...
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::AlgorithmNotAllowed => "alg-not-allowed",
            AuthFailure::UnknownKid => "unknown-kid",
            AuthFailure::BadSignature => "bad-signature",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not-yet-valid",
            AuthFailure::MissingExpiry => "missing-exp",
            AuthFailure::BadIssuer => "bad-issuer",
            AuthFailure::BadAudience => "bad-audience",
        }
    }

    /// The `x-gateway-error` value: `jwt-<code>`.
    pub fn gateway_error(self) -> &'static str {
        match self {
            AuthFailure::Missing => "jwt-missing",
            AuthFailure::Malformed => "jwt-malformed",
            AuthFailure::AlgorithmNotAllowed => "jwt-alg-not-allowed",
            AuthFailure::UnknownKid => "jwt-unknown-kid",
            AuthFailure::BadSignature => "jwt-bad-signature",
            AuthFailure::Expired => "jwt-expired",
            AuthFailure::NotYetValid => "jwt-not-yet-valid",
            AuthFailure::MissingExpiry => "jwt-missing-exp",
            AuthFailure::BadIssuer => "jwt-bad-issuer",
            AuthFailure::BadAudience => "jwt-bad-audience",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_error_is_jwt_dash_code() {
        for failure in [
            AuthFailure::Missing,
            AuthFailure::Malformed,
            AuthFailure::AlgorithmNotAllowed,
            AuthFailure::UnknownKid,
            AuthFailure::BadSignature,
            AuthFailure::Expired,
            AuthFailure::NotYetValid,
            AuthFailure::MissingExpiry,
            AuthFailure::BadIssuer,
            AuthFailure::BadAudience,
        ] {
            assert_eq!(failure.gateway_error(), format!("jwt-{}", failure.code()));
        }
    }
}
