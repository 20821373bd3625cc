//! Per-route rate limits end to end: the real gateway, real upstreams, real HTTP.

use jsonwebtoken::Algorithm;

use crate::harness::tokens::*;
use crate::harness::*;

/// `/api/users` keyed by the verified `sub`, `/search` keyed by a header and `/ip` by the
/// client address, each with a burst of 2 and a slow refill; `/free` has no limit.
async fn world() -> UsersWorld {
    let routes = r#"
[[routes]]
name = "users"
prefix = "/api/users"
service = "users"
rate_limit = { requests_per_second = 0.01, burst = 2, key = "claim:sub" }

[[routes]]
name = "search"
prefix = "/search"
service = "users"
auth = "off"
rate_limit = { requests_per_second = 0.01, burst = 2, key = "header:x-api-key" }

[[routes]]
name = "by-ip"
prefix = "/ip"
service = "users"
auth = "off"
rollout_percent = 0.0
rate_limit = { requests_per_second = 0.01, burst = 2, key = "ip" }

[[routes]]
name = "free"
prefix = "/free"
service = "users"
auth = "off"
"#;
    UsersWorld::start(&format!("{routes}{}", auth_section())).await
}

async fn limited_count(gateway: &TestGateway, route: &str) -> Option<u64> {
    let metrics = String::from_utf8_lossy(&get(&gateway.admin_url("/metrics")).await.body).into_owned();
    let series = format!("gateway_rate_limited_total{{route=\"{route}\"}} ");
    metrics.lines().find_map(|line| line.strip_prefix(&series)).and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn over_the_limit_a_caller_gets_429_and_the_upstream_sees_nothing() {
    let w = world().await;
    let alice = format!("Bearer {}", sign(Algorithm::RS256, &claims_for("alice")));
    for _ in 0..2 {
        assert_eq!(get_with(&w.gateway.url("/api/users/1"), &[("authorization", &alice)]).await.status, 200);
    }
    let refused = get_with(&w.gateway.url("/api/users/1"), &[("authorization", &alice)]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-gateway-error"), Some("rate-limited"));
    let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().expect("whole seconds");
    assert!((1..=100).contains(&retry), "one token per 100 s, rounded up: {retry}");
    assert_eq!(refused.json()["error"], "rate-limited");
    assert!(refused.json()["request_id"].is_string());
    assert_eq!(w.users.count(), 2, "the refused request never reached the service");

    let bob = format!("Bearer {}", sign(Algorithm::RS256, &claims_for("bob")));
    assert_eq!(
        get_with(&w.gateway.url("/api/users/1"), &[("authorization", &bob)]).await.status,
        200,
        "bob has his own bucket"
    );
    assert_eq!(limited_count(&w.gateway, "users").await, Some(1));
}

#[tokio::test]
async fn authentication_comes_first_and_a_spoofed_claim_header_is_not_a_key() {
    let w = world().await;
    for _ in 0..3 {
        let reply = get_with(&w.gateway.url("/api/users/1"), &[("x-user-id", "alice")]).await;
        assert_eq!(reply.status, 401, "no token: refused by auth, not counted by the limit");
    }
    assert_eq!(limited_count(&w.gateway, "users").await.unwrap_or(0), 0);
}

#[tokio::test]
async fn header_keys_and_the_shared_no_key_bucket() {
    let w = world().await;
    for key in ["k1", "k1"] {
        assert_eq!(get_with(&w.gateway.url("/search?q=a"), &[("x-api-key", key)]).await.status, 200);
    }
    assert_eq!(get_with(&w.gateway.url("/search?q=a"), &[("x-api-key", "k1")]).await.status, 429);
    assert_eq!(get_with(&w.gateway.url("/search?q=a"), &[("x-api-key", "k2")]).await.status, 200);
    // Callers without the header share one bucket.
    assert_eq!(get(&w.gateway.url("/search")).await.status, 200);
    assert_eq!(get(&w.gateway.url("/search")).await.status, 200);
    assert_eq!(get(&w.gateway.url("/search")).await.status, 429);
}

#[tokio::test]
async fn the_limit_guards_the_monolith_side_too_and_other_routes_are_free() {
    let w = world().await;
    for _ in 0..2 {
        assert_eq!(get(&w.gateway.url("/ip/x")).await.status, 200);
    }
    assert_eq!(get(&w.gateway.url("/ip/x")).await.status, 429);
    assert_eq!(w.monolith.count(), 2, "the dial is at 0: the monolith side is limited alike");
    for _ in 0..10 {
        assert_eq!(get(&w.gateway.url("/free/x")).await.status, 200);
    }
}

#[tokio::test]
async fn a_bad_rate_limit_is_a_config_error_at_its_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("routes.toml");
    let text = format!(
        "{}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"monolith\"\nauth = \"off\"\nrate_limit = {{ requests_per_second = 0.0, burst = 1, key = \"claim:sub\" }}\n",
        base_config("http://127.0.0.1:9", "")
    );
    std::fs::write(&path, &text).expect("write");
    let error = gateway::config::load(&path, 1).expect_err("invalid").to_string();
    let line = text.lines().position(|l| l.starts_with("rate_limit")).expect("the line") + 1;
    assert!(
        error
            .contains(&format!("routes.toml:{line}:38: routes[0].rate_limit.requests_per_second: must be more than 0")),
        "{error}"
    );
    assert!(error.contains("routes[0].rate_limit.key: claims exist only on routes that check tokens"), "{error}");
    let unknown = text.replace("burst = 1", "burst = 1, per = \"minute\"");
    std::fs::write(&path, &unknown).expect("write");
    let error = gateway::config::load(&path, 1).expect_err("invalid").to_string();
    assert!(error.contains("unknown field `per`"), "{error}");
}
