//! Authentication end to end: real tokens, real upstreams, and no way around the check.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::harness::tokens::*;
use crate::harness::*;

/// `/api/users` (auth required), `/api/catalog` (optional), `/public` (off), and the
/// default route (off) to the monolith.
async fn world() -> UsersWorld {
    let routes = r#"
[[routes]]
name = "users"
prefix = "/api/users"
service = "users"

[[routes]]
name = "catalog"
prefix = "/api/catalog"
service = "users"
auth = "optional"

[[routes]]
name = "public"
prefix = "/public"
service = "users"
auth = "off"
"#;
    UsersWorld::start(&format!("{routes}{}", auth_section())).await
}

#[tokio::test]
async fn valid_rs256_and_es256_tokens_pass_and_the_upstream_sees_the_identity() {
    let w = world().await;
    for (algorithm, sub) in [(Algorithm::RS256, "alice"), (Algorithm::ES256, "bob")] {
        let token = sign(algorithm, &claims_for(sub));
        let reply = get_with(&w.gateway.url("/api/users/me"), &[("authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(reply.status, 200, "{algorithm:?}: {:?}", reply.body);
    }
    let seen = w.users.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["x-user-id"], "alice");
    assert_eq!(seen[0].headers["x-user-email"], "alice@company.com");
    assert_eq!(seen[1].headers["x-user-id"], "bob");
}

#[tokio::test]
async fn every_bad_token_gets_401_with_its_reason_and_the_upstream_sees_nothing() {
    let w = world().await;
    let expired = {
        let mut claims = claims_for("alice");
        claims["exp"] = json!(now() - 10);
        sign(Algorithm::ES256, &claims)
    };
    let wrong_issuer = {
        let mut claims = claims_for("alice");
        claims["iss"] = json!("https://evil.example.com");
        sign(Algorithm::ES256, &claims)
    };
    let wrong_audience = {
        let mut claims = claims_for("alice");
        claims["aud"] = json!("billing");
        sign(Algorithm::ES256, &claims)
    };
    let not_yet = {
        let mut claims = claims_for("alice");
        claims["nbf"] = json!(now() + 3600);
        sign(Algorithm::ES256, &claims)
    };
    let unknown_kid = {
        let pem = std::fs::read(fixture("ec-private.pem")).expect("fixture");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("retired".to_owned());
        jsonwebtoken::encode(&header, &claims_for("alice"), &EncodingKey::from_ec_pem(&pem).expect("key"))
            .expect("signs")
    };
    let valid = sign(Algorithm::RS256, &claims_for("alice"));
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims_for("admin").to_string()), parts[2]);
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims_for("alice").to_string())
    );
    let confusion = {
        let public_pem = std::fs::read(fixture("rsa-public.pem")).expect("fixture");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".to_owned());
        jsonwebtoken::encode(&header, &claims_for("alice"), &EncodingKey::from_secret(&public_pem)).expect("signs")
    };
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "jwt-missing"),
        (vec![("authorization", "Bearer not-a-jwt".to_owned())], "jwt-malformed"),
        (vec![("authorization", format!("Bearer {expired}"))], "jwt-expired"),
        (vec![("authorization", format!("Bearer {not_yet}"))], "jwt-not-yet-valid"),
        (vec![("authorization", format!("Bearer {wrong_issuer}"))], "jwt-bad-issuer"),
        (vec![("authorization", format!("Bearer {wrong_audience}"))], "jwt-bad-audience"),
        (vec![("authorization", format!("Bearer {unknown_kid}"))], "jwt-unknown-kid"),
        (vec![("authorization", format!("Bearer {tampered}"))], "jwt-bad-signature"),
        (vec![("authorization", format!("Bearer {alg_none}"))], "jwt-alg-not-allowed"),
        (vec![("authorization", format!("Bearer {confusion}"))], "jwt-alg-not-allowed"),
    ];
    for (headers, code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = get_with(&w.gateway.url("/api/users/me"), &headers).await;
        assert_eq!(reply.status, 401, "{code}");
        assert_eq!(reply.header("x-gateway-error"), Some(code));
        assert_eq!(reply.json()["error"], code);
        let challenge = reply.header("www-authenticate").expect("a challenge");
        if code == "jwt-missing" {
            assert_eq!(challenge, "Bearer");
        } else {
            assert!(challenge.starts_with(r#"Bearer error="invalid_token", error_description=""#), "{challenge}");
        }
    }
    assert_eq!(w.users.count(), 0, "no refused request reached the service");
    assert_eq!(w.monolith.count(), 0);

    let metrics = String::from_utf8_lossy(&get(&w.gateway.admin_url("/metrics")).await.body).into_owned();
    assert!(metrics.contains(r#"gateway_auth_failures_total{route="users",reason="expired"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"gateway_auth_failures_total{route="users",reason="alg-not-allowed"} 2"#), "{metrics}");
}

#[tokio::test]
async fn a_spoofed_identity_header_never_reaches_an_upstream() {
    let w = world().await;
    let token = sign(Algorithm::ES256, &claims_for("alice"));
    let bearer = format!("Bearer {token}");
    let spoof = [("x-user-id", "admin"), ("x-user-email", "root@company.com")];
    // Required route with a valid token: replaced by the verified claims.
    let with_token: Vec<(&str, &str)> = spoof.iter().copied().chain([("authorization", bearer.as_str())]).collect();
    assert_eq!(get_with(&w.gateway.url("/api/users/1"), &with_token).await.status, 200);
    // Optional route, anonymous; auth-off route; unmatched traffic: removed.
    for path in ["/api/catalog/1", "/public/page", "/legacy/page"] {
        assert_eq!(get_with(&w.gateway.url(path), &spoof).await.status, 200, "{path}");
    }
    let mut seen = w.users.requests();
    seen.extend(w.monolith.requests());
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].headers.get_all("x-user-id").iter().collect::<Vec<_>>(), ["alice"]);
    for request in &seen[1..] {
        assert!(request.headers.get("x-user-id").is_none(), "{}: {:?}", request.path, request.headers);
        assert!(request.headers.get("x-user-email").is_none(), "{}", request.path);
    }
}

#[tokio::test]
async fn optional_routes_admit_anonymous_callers_but_not_bad_tokens() {
    let w = world().await;
    assert_eq!(get(&w.gateway.url("/api/catalog/items")).await.status, 200);
    let bad = get_with(&w.gateway.url("/api/catalog/items"), &[("authorization", "Bearer a.b.c")]).await;
    assert_eq!(bad.status, 401);
    let token = sign(Algorithm::RS256, &claims_for("carol"));
    let good = get_with(&w.gateway.url("/api/catalog/items"), &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(good.status, 200);
    let seen = w.users.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].headers.get("x-user-id").is_none());
    assert_eq!(seen[1].headers["x-user-id"], "carol");
}

#[tokio::test]
async fn no_path_trick_reaches_a_protected_route_without_its_auth() {
    let w = world().await;
    let tricks = [
        "/api/users/../users",
        "/api//users",
        "/api/%75sers",
        "/API/USERS/1",
        "/api/users;x=1",
        "/api/users%2f..",
        "/public/../api/users",
        "/public/%2e%2e/api/users/1",
        "/public/..%2fapi/users",
    ];
    for trick in tricks {
        let request = format!("GET {trick} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let reply = raw_exchange(w.gateway.addr, request.as_bytes()).await;
        assert!(
            reply.starts_with("HTTP/1.1 400") || reply.starts_with("HTTP/1.1 401"),
            "{trick} must be refused or meet the auth of /api/users: {reply}"
        );
    }
    assert_eq!(w.users.count() + w.monolith.count(), 0, "nothing reached an upstream without a token");
}
