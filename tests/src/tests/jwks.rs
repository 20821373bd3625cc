//! Remote key sets end to end: a local HTTPS identity provider (a private CA) publishing a
//! JWKS the tests rotate, break and shrink while the real gateway verifies tokens with it.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::harness::idp::*;
use crate::harness::tokens::*;
use crate::harness::*;

/// The HS256 secret `.cargo/config.toml` puts in the tests' environment.
const LEGACY_SECRET_ENV: &str = "GATEWAY_TEST_LEGACY_HS256_SECRET";

/// `/api/users` (auth required) to the users service, verified with the IdP's keys; `extra`
/// adds `[auth]` keys.
async fn world(idp: &TestIdp, algorithms: &str, extra: &str) -> UsersWorld {
    let rest = format!(
        r#"
[[routes]]
name = "users"
prefix = "/api/users"
service = "users"

[auth]
algorithms = {algorithms}
jwks_url = "{url}"
jwks_ca_file = "{ca}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
leeway_seconds = 0
claims_to_headers = {{ sub = "x-user-id" }}
{extra}
"#,
        url = idp.url(),
        ca = idp_ca_file(),
    );
    UsersWorld::start(&rest).await
}

async fn call(w: &UsersWorld, token: &str) -> Reply {
    get_with(&w.gateway.url("/api/users/me"), &[("authorization", &format!("Bearer {token}"))]).await
}

/// Polls the async `probe` every 20 ms until it holds, for at most [`IO_TIMEOUT`].
async fn until<F: std::future::Future<Output = bool>>(mut probe: impl FnMut() -> F) -> bool {
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn ready(w: &UsersWorld) -> u16 {
    get(&w.gateway.admin_url("/ready")).await.status.as_u16()
}

/// The `jwks_url` entry of `/admin/config`.
async fn url_source(w: &UsersWorld) -> Value {
    let config = get(&w.gateway.admin_url("/admin/config")).await.json();
    config["auth"]["sources"]
        .as_array()
        .expect("auth sources")
        .iter()
        .find(|s| s["kind"] == "jwks_url")
        .expect("the jwks_url source")
        .clone()
}

async fn metric(w: &UsersWorld, name_and_labels: &str) -> Option<f64> {
    let reply = get(&w.gateway.admin_url("/metrics")).await;
    String::from_utf8_lossy(&reply.body)
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test]
async fn ready_waits_for_the_first_fetch_then_a_served_key_verifies() {
    let idp = TestIdp::start(jwks_document(&[("key-a", IdpKey::Rsa)])).await;
    idp.set_failing(true);
    let w = world(&idp, r#"["RS256"]"#, "").await;
    let token = sign_as(IdpKey::Rsa, "key-a", &claims_for("alice"));
    assert!(until(|| async { idp.fetches() >= 1 }).await, "fetched at start");
    assert_eq!(ready(&w).await, 503, "not ready before the first successful fetch");
    let refused = call(&w, &token).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("x-gateway-error"), Some("jwt-unknown-kid"));
    assert!(url_source(&w).await["last_error"].as_str().is_some_and(|e| e.contains("503")));

    idp.set_failing(false);
    assert!(until(|| async { ready(&w).await == 200 }).await, "ready once the keys are in");
    let reply = call(&w, &token).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(w.users.requests().last().expect("forwarded").headers["x-user-id"], "alice");
    let source = url_source(&w).await;
    assert_eq!(source["kids"], serde_json::json!(["key-a"]));
    assert_eq!(source["source"], idp.url());
    assert!(source["fetches_failed"].as_u64() >= Some(1), "{source}");
    let ok = format!("gateway_jwks_refresh_total{{source=\"{}\",result=\"ok\"}}", idp.url());
    let error = format!("gateway_jwks_refresh_total{{source=\"{}\",result=\"error\"}}", idp.url());
    assert!(metric(&w, &ok).await >= Some(1.0) && metric(&w, &error).await >= Some(1.0));
}

#[tokio::test]
async fn a_rotated_in_kid_passes_on_its_first_request_after_one_extra_fetch() {
    let idp = TestIdp::start(jwks_document(&[("key-a", IdpKey::Rsa)])).await;
    let w = world(&idp, r#"["RS256", "ES256"]"#, "").await;
    assert!(until(|| async { ready(&w).await == 200 }).await);
    let before = idp.fetches();
    idp.publish(jwks_document(&[("key-a", IdpKey::Rsa), ("key-b", IdpKey::Ec)]));
    // The first token naming key-b waits for the refetch it causes, then passes.
    let reply = call(&w, &sign_as(IdpKey::Ec, "key-b", &claims_for("bob"))).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    for sub in ["carol", "dave"] {
        assert_eq!(call(&w, &sign_as(IdpKey::Ec, "key-b", &claims_for(sub))).await.status, 200);
    }
    assert_eq!(call(&w, &sign_as(IdpKey::Rsa, "key-a", &claims_for("erin"))).await.status, 200);
    assert_eq!(idp.fetches(), before + 1, "one extra fetch for the new kid");
}

#[tokio::test]
async fn fifty_made_up_kids_cause_one_fetch_and_all_get_401() {
    let idp = TestIdp::start(jwks_document(&[("key-a", IdpKey::Rsa)])).await;
    let w = world(&idp, r#"["RS256"]"#, "").await;
    assert!(until(|| async { ready(&w).await == 200 }).await);
    let before = idp.fetches();
    let calls = (0..50).map(|i| {
        let token = sign_as(IdpKey::Rsa, &format!("made-up-{i}-{}", now()), &claims_for("mallory"));
        let url = w.gateway.url("/api/users/me");
        async move { get_with(&url, &[("authorization", &format!("Bearer {token}"))]).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    for reply in &replies {
        assert_eq!(reply.status, 401);
        assert_eq!(reply.header("x-gateway-error"), Some("jwt-unknown-kid"));
    }
    // And again, sequentially: within the 30 s, no further fetch.
    for i in 0..10 {
        let reply = call(&w, &sign_as(IdpKey::Rsa, &format!("again-{i}"), &claims_for("mallory"))).await;
        assert_eq!(reply.status, 401);
    }
    assert_eq!(idp.fetches(), before + 1, "at most one fetch per 30 s for unknown kids");
    assert!(w.users.requests().is_empty(), "the upstream saw none of them");
}

#[tokio::test]
async fn with_the_idp_down_known_kids_pass_the_failure_is_counted_and_the_age_grows() {
    let idp = TestIdp::start(jwks_document(&[("key-a", IdpKey::Rsa)])).await;
    let w = world(&idp, r#"["RS256"]"#, "jwks_refresh_seconds = 1").await;
    assert!(until(|| async { ready(&w).await == 200 }).await);
    idp.set_failing(true);
    let error = format!("gateway_jwks_refresh_total{{source=\"{}\",result=\"error\"}}", idp.url());
    assert!(until(|| async { metric(&w, &error).await >= Some(1.0) }).await, "the failed refresh is counted");
    let age = format!("gateway_jwks_age_seconds{{source=\"{}\"}}", idp.url());
    let first_age = metric(&w, &age).await.expect("an age");
    assert!(until(|| async { metric(&w, &age).await > Some(first_age + 1.0) }).await, "the age grows");
    let reply = call(&w, &sign_as(IdpKey::Rsa, "key-a", &claims_for("alice"))).await;
    assert_eq!(reply.status, 200, "the last good keys still verify");
    assert_eq!(ready(&w).await, 200, "still ready: the keys in use are good");
    let source = url_source(&w).await;
    assert!(source["last_error"].as_str().is_some_and(|e| e.contains("503")), "{source}");
    assert_eq!(source["kids"], serde_json::json!(["key-a"]));
}

#[tokio::test]
async fn a_dropped_kid_is_refused_after_the_refresh_cached_or_not() {
    let idp = TestIdp::start(jwks_document(&[("key-a", IdpKey::Rsa), ("key-b", IdpKey::Ec)])).await;
    let w = world(&idp, r#"["RS256", "ES256"]"#, "jwks_refresh_seconds = 1").await;
    assert!(until(|| async { ready(&w).await == 200 }).await);
    let cached = sign_as(IdpKey::Rsa, "key-a", &claims_for("alice"));
    let kept = sign_as(IdpKey::Ec, "key-b", &claims_for("bob"));
    assert_eq!(call(&w, &cached).await.status, 200);
    assert_eq!(call(&w, &cached).await.status, 200, "now from the verified-token cache");
    assert_eq!(call(&w, &kept).await.status, 200);
    let fetched_ok = url_source(&w).await["fetches_ok"].as_u64().expect("a count");
    // An unchanged set keeps the cache: the same tokens still pass after refreshes.
    assert!(until(|| async { url_source(&w).await["fetches_ok"].as_u64() > Some(fetched_ok) }).await);
    assert_eq!(call(&w, &cached).await.status, 200);

    idp.publish(jwks_document(&[("key-b", IdpKey::Ec)]));
    assert!(until(|| async { url_source(&w).await["kids"] == serde_json::json!(["key-b"]) }).await);
    let reply = call(&w, &cached).await;
    assert_eq!(reply.status, 401, "a cached token of the dropped key is refused");
    assert_eq!(reply.header("x-gateway-error"), Some("jwt-unknown-kid"));
    let fresh = sign_as(IdpKey::Rsa, "key-a", &claims_for("carol"));
    assert_eq!(call(&w, &fresh).await.status, 401, "an uncached one too");
    assert_eq!(call(&w, &kept).await.status, 200, "the kept key still verifies");
}

#[tokio::test]
async fn legacy_hs256_tokens_pass_beside_the_idps_rs256_tokens() {
    let idp = TestIdp::start(jwks_document(&[("key-a", IdpKey::Rsa)])).await;
    let w = world(&idp, r#"["RS256", "HS256"]"#, &format!("hs256_secret_env = \"{LEGACY_SECRET_ENV}\"")).await;
    assert!(until(|| async { ready(&w).await == 200 }).await);
    let secret = std::env::var(LEGACY_SECRET_ENV).expect(".cargo/config.toml sets the test secret");
    let legacy = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims_for("legacy-user"),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signs");
    assert_eq!(call(&w, &legacy).await.status, 200, "HS256 without kid: the secret");
    assert_eq!(call(&w, &sign_as(IdpKey::Rsa, "key-a", &claims_for("idp-user"))).await.status, 200);
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims_for("legacy-user"),
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret-not-the-secret"),
    )
    .expect("signs");
    assert_eq!(call(&w, &forged).await.status, 401);
    let seen: Vec<String> =
        w.users.requests().iter().map(|r| r.headers["x-user-id"].to_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(seen, ["legacy-user", "idp-user"]);
    let kinds: Vec<Value> = get(&w.gateway.admin_url("/admin/config")).await.json()["auth"]["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| s["kind"].clone())
        .collect();
    assert_eq!(kinds, ["hs256_secret_env", "jwks_url"]);
}

#[test]
fn the_same_kid_in_two_key_files_is_a_config_error_at_the_second() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let jwks = jwks_document(&[("shared", IdpKey::Rsa)]);
    std::fs::write(dir.path().join("a.json"), &jwks).expect("write");
    std::fs::write(dir.path().join("b.json"), &jwks).expect("write");
    let config = format!(
        "{}\n[auth]\nalgorithms = [\"RS256\"]\njwks_file = [\"a.json\", \"b.json\"]\n",
        base_config("http://127.0.0.1:9", "")
    );
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, &config).expect("write");
    let error = gateway::config::load(&path, 1).expect_err("a kid from two sources").to_string();
    let line = config.lines().position(|l| l.starts_with("jwks_file")).expect("the line") + 1;
    let column = config.lines().nth(line - 1).expect("the line").find("\"b.json\"").expect("the item") + 1;
    assert!(error.contains(&format!("{line}:{column}")), "{error}");
    assert!(error.contains("kid \"shared\" is in b.json and in a.json"), "{error}");
}

#[test]
fn a_jwks_url_config_is_checked_without_fetching() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let write = |body: &str| {
        let path = dir.path().join("routes.toml");
        let config = format!("{}\n[auth]\nalgorithms = [\"RS256\"]\n{body}\n", base_config("http://127.0.0.1:9", ""));
        std::fs::write(&path, config).expect("write");
        gateway::config::load(&path, 1).map(|_| ()).map_err(|e| e.to_string())
    };
    // Nothing listens there: a check that fetched would fail.
    let closed = format!("jwks_url = \"https://127.0.0.1:9/keys\"\njwks_ca_file = \"{}\"", idp_ca_file());
    assert_eq!(write(&closed), Ok(()));
    let plain = write("jwks_url = \"http://idp.example.com/keys\"").expect_err("plain http to a remote host");
    assert!(plain.contains("https://"), "{plain}");
    assert_eq!(write("jwks_url = \"http://127.0.0.1:9/keys\""), Ok(()), "plain http on loopback is allowed");
    let stray = write("jwks_file = \"x.json\"\njwks_refresh_seconds = 5").expect_err("refresh without a url");
    assert!(stray.contains("jwks_refresh_seconds applies to jwks_url"), "{stray}");
    let none = write("").expect_err("no source");
    assert!(none.contains("give at least one key source"), "{none}");
}

#[tokio::test]
async fn a_reload_that_keeps_the_url_keeps_its_keys_fetch_loop_and_cache() {
    let idp = TestIdp::start(jwks_document(&[("key-a", IdpKey::Rsa)])).await;
    let w = world(&idp, r#"["RS256"]"#, "").await;
    assert!(until(|| async { ready(&w).await == 200 }).await);
    let token = sign_as(IdpKey::Rsa, "key-a", &claims_for("alice"));
    assert_eq!(call(&w, &token).await.status, 200);
    let fetches = idp.fetches();
    let text = std::fs::read_to_string(&w.gateway.config_path).expect("read the config");
    std::fs::write(&w.gateway.config_path, text.replace("leeway_seconds = 0", "leeway_seconds = 0\n# edited"))
        .expect("rewrite");
    assert!(w.gateway.wait_for_version(2).await, "the edit was applied");
    assert_eq!(ready(&w).await, 200, "still ready: the source and its keys were kept");
    assert_eq!(call(&w, &token).await.status, 200);
    assert_eq!(url_source(&w).await["kids"], serde_json::json!(["key-a"]));
    let config = get(&w.gateway.admin_url("/admin/config")).await.json();
    assert_eq!(config["auth"]["cached_tokens"], 1, "the verified-token cache was kept");
    assert_eq!(idp.fetches(), fetches, "no new fetch for an unchanged source");
}

#[tokio::test]
async fn a_kid_a_file_provides_is_never_taken_from_the_idp() {
    // The file says key-a is the EC key; the IdP publishes an RSA key as key-a.
    let idp = TestIdp::start(jwks_document(&[("key-a", IdpKey::Rsa), ("key-b", IdpKey::Rsa)])).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("pinned.json");
    std::fs::write(&file, jwks_document(&[("key-a", IdpKey::Ec)])).expect("write");
    let w = world(&idp, r#"["RS256", "ES256"]"#, &format!("jwks_file = \"{}\"", file.display())).await;
    assert!(until(|| async { ready(&w).await == 200 }).await);
    let from_idp = call(&w, &sign_as(IdpKey::Rsa, "key-a", &claims_for("mallory"))).await;
    assert_eq!(from_idp.status, 401, "key-a is the file's EC key, not the IdP's RSA key");
    assert_eq!(call(&w, &sign_as(IdpKey::Ec, "key-a", &claims_for("alice"))).await.status, 200);
    assert_eq!(call(&w, &sign_as(IdpKey::Rsa, "key-b", &claims_for("bob"))).await.status, 200);
    assert_eq!(url_source(&w).await["shadowed_kids"], serde_json::json!(["key-a"]));
}
