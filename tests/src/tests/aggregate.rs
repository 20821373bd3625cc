//! Aggregates end to end: parallel parts, merged JSON, honest partial results.

use std::time::Duration;

use http::Request;
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use tokio::time::Instant;

use crate::harness::tokens::*;
use crate::harness::*;

struct World {
    users: RunningMock,
    orders: RunningMock,
    _monolith: RunningMock,
    gateway: TestGateway,
}

async fn world(orders: MockUpstream, orders_part: &str, aggregate_extra: &str) -> World {
    let monolith = MockUpstream::new("monolith").start().await;
    let users = MockUpstream::new("users").start().await;
    let orders = orders.start().await;
    let config = format!(
        r#"{base}
[upstreams.users]
url = "{users}"
[upstreams.orders]
url = "{orders}"

[[aggregates]]
name = "dashboard"
path = "/api/dashboard"
timeout_ms = 400
{aggregate_extra}
parts = [
  {{ name = "user", upstream = "users", path = "/stats?window=7d" }},
  {orders_part},
]
{auth}"#,
        base = base_config(&monolith.url(), ""),
        users = users.url(),
        orders = orders.url(),
        auth = auth_section(),
    );
    let gateway = TestGateway::start(&config).await;
    World { users, orders, _monolith: monolith, gateway }
}

async fn dashboard(w: &World, sub: &str) -> Reply {
    let token = sign(Algorithm::ES256, &claims_for(sub));
    let request = Request::get(w.gateway.url("/api/dashboard"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-request-id", "dash-1")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .body(Full::default())
        .expect("a valid request");
    send(request).await
}

const OPTIONAL_ORDERS: &str = r#"{ name = "orders", upstream = "orders", path = "/stats", required = false }"#;

#[tokio::test]
async fn two_parts_are_fetched_with_the_callers_identity_and_merged() {
    let w = world(MockUpstream::new("orders"), OPTIONAL_ORDERS, "").await;
    let reply = dashboard(&w, "alice").await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["user"]["served_by"], "users");
    assert_eq!(body["user"]["path"], "/stats");
    assert_eq!(body["orders"]["served_by"], "orders");
    assert!(body.get("_errors").is_none());
    assert!(reply.header("x-gateway-partial").is_none());
    for mock in [&w.users, &w.orders] {
        let seen = &mock.requests()[0];
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.headers["x-user-id"], "alice", "the verified identity reaches every part");
        assert_eq!(seen.headers["x-request-id"], "dash-1");
        assert_eq!(seen.headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(seen.headers.get("authorization").is_none(), "the token itself is not fanned out");
    }
    assert_eq!(w.users.requests()[0].query.as_deref(), Some("window=7d"));
    let metrics = String::from_utf8_lossy(&get(&w.gateway.admin_url("/metrics")).await.body).into_owned();
    assert!(
        metrics.contains(
            r#"gateway_requests_total{route="dashboard",target="aggregate",upstream="none",status_class="2xx"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_aggregate_part_duration_seconds_count{aggregate="dashboard",part="user"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failing_optional_part_is_null_named_in_errors_and_flagged() {
    let w = world(MockUpstream::new("orders").status(503), OPTIONAL_ORDERS, "").await;
    let reply = dashboard(&w, "alice").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-gateway-partial"), Some("true"));
    let body = reply.json();
    assert_eq!(body["user"]["served_by"], "users");
    assert!(body["orders"].is_null());
    assert_eq!(body["_errors"]["orders"], "status 503");
    let metrics = String::from_utf8_lossy(&get(&w.gateway.admin_url("/metrics")).await.body).into_owned();
    assert!(
        metrics.contains(r#"gateway_aggregate_part_failures_total{aggregate="dashboard",part="orders"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_part_that_is_not_json_gets_its_default() {
    let part =
        r#"{ name = "orders", upstream = "orders", path = "/stats", required = false, default = { count = 0 } }"#;
    let w = world(MockUpstream::new("orders").body("<html>oops</html>"), part, "").await;
    let body = dashboard(&w, "alice").await.json();
    assert_eq!(body["orders"], serde_json::json!({"count": 0}));
    assert_eq!(body["_errors"]["orders"], "not_json");
}

#[tokio::test]
async fn a_hanging_part_does_not_hold_the_call_past_its_timeout() {
    let w = world(MockUpstream::new("orders").latency(Duration::from_secs(5)), OPTIONAL_ORDERS, "").await;
    let started = Instant::now();
    let reply = dashboard(&w, "alice").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["_errors"]["orders"], "timeout");
    assert!(elapsed >= Duration::from_millis(390), "waited for the part until the deadline: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(700), "400 ms timeout, answered after {elapsed:?}");
}

#[tokio::test]
async fn a_failing_required_part_makes_the_reply_502() {
    let required = r#"{ name = "orders", upstream = "orders", path = "/stats" }"#;
    let w = world(MockUpstream::new("orders").status(500), required, "").await;
    let reply = dashboard(&w, "alice").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-gateway-error"), Some("aggregate-part-failed"));
    let body = reply.json();
    assert_eq!(body["_errors"]["orders"], "status 500");
    assert_eq!(body["request_id"], "dash-1");
}

#[tokio::test]
async fn the_aggregate_enforces_its_auth_and_calls_no_part_without_it() {
    let w = world(MockUpstream::new("orders"), OPTIONAL_ORDERS, "").await;
    let reply = get(&w.gateway.url("/api/dashboard")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(w.users.count() + w.orders.count(), 0);
}

#[tokio::test]
async fn a_route_part_follows_the_callers_side() {
    let monolith = MockUpstream::new("monolith").start().await;
    let service = MockUpstream::new("profiles-service").start().await;
    let config = format!(
        r#"{base}
[upstreams.profiles]
url = "{service}"

[[routes]]
name = "profiles"
prefix = "/api/profiles"
service = "profiles"
rollout_percent = 50

[[aggregates]]
name = "home"
path = "/api/home"
parts = [ {{ name = "profile", route = "profiles", path = "/api/profiles/me" }} ]
{auth}"#,
        base = base_config(&monolith.url(), ""),
        service = service.url(),
        auth = auth_section(),
    );
    let gateway = TestGateway::start(&config).await;
    for i in 0..30 {
        let sub = format!("person-{i}");
        let expected =
            if gateway_plugin_rollout::bucket("profiles", &sub) < 5000 { "profiles-service" } else { "monolith" };
        let token = sign(Algorithm::ES256, &claims_for(&sub));
        let auth = format!("Bearer {token}");
        let home = send(
            Request::get(gateway.url("/api/home")).header("authorization", &auth).body(Full::default()).expect("valid"),
        )
        .await;
        assert_eq!(home.json()["profile"]["served_by"], expected, "{sub} in the dashboard");
        let direct = send(
            Request::get(gateway.url("/api/profiles/me"))
                .header("authorization", &auth)
                .body(Full::default())
                .expect("valid"),
        )
        .await;
        assert_eq!(direct.json()["served_by"], expected, "{sub} on the route itself: one user, one side");
    }
}
