//! Route transforms end to end: the service's own prefix, header edits on both sides and
//! on responses, the `Host` each upstream expects, a fallback replay that goes to the
//! monolith as matched, an aggregate part through a transformed route, and `gateway
//! explain` naming the path each side receives.

use gateway::cli::explain::{ExplainRequest, explain};

use crate::harness::*;

struct World {
    monolith: RunningMock,
    users: RunningMock,
    orders: RunningMock,
    gateway: TestGateway,
}

async fn world() -> World {
    let monolith = MockUpstream::new("monolith").header("server", "monolith/1.0").start().await;
    let users = MockUpstream::new("users").header("server", "users/2.0").start().await;
    let orders = MockUpstream::new("orders").start().await;
    let down = closed_port().await;
    let config = format!(
        r#"{base}host_header = "monolith.internal"

[upstreams.users]
url = "{users}"
host_header = "upstream"

[upstreams.orders]
url = "{orders}"

[upstreams.accounts]
url = "http://{down}"
host_header = "accounts.internal:8443"

[segments.canary]
header = "x-canary"
equals = "1"

[[routes]]
name = "users"
prefix = "/api/users"
service = "users"
rollout_percent = 0
segments = ["canary"]
service_prefix = "/v2/users"
request_headers = {{ set = {{ "x-migrated-by" = "gateway" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ "cache-control" = "no-store" }}, remove = ["server"] }}

[[routes]]
name = "orders"
prefix = "/api/orders"
service = "orders"
rollout_percent = 100
service_prefix = "/"

[[routes]]
name = "accounts"
prefix = "/api/accounts"
service = "accounts"
rollout_percent = 100
fallback = "safe"
service_prefix = "/internal/accounts"

[[aggregates]]
name = "dashboard"
path = "/api/dashboard"
parts = [{{ name = "profile", route = "users", path = "/api/users/me" }}]
"#,
        base = base_config(&monolith.url(), ""),
        users = users.url(),
        orders = orders.url(),
    );
    let gateway = TestGateway::start(&config).await;
    World { monolith, users, orders, gateway }
}

fn authority(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[tokio::test]
async fn the_service_gets_its_prefix_and_the_monolith_the_path_as_matched() {
    let w = world().await;
    let headers = [("x-canary", "1"), ("x-debug", "on"), ("x-migrated-by", "client")];
    let reply = get_with(&w.gateway.url("/api/users/7/orders?page=2"), &headers).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["served_by"], "users");
    let seen = &w.users.requests()[0];
    assert_eq!(seen.path, "/v2/users/7/orders");
    assert_eq!(seen.query.as_deref(), Some("page=2"), "the query is kept");

    let reply = get_with(&w.gateway.url("/api/users/7/orders?page=2"), &[("x-debug", "on")]).await;
    assert_eq!(reply.json()["served_by"], "monolith");
    let seen = &w.monolith.requests()[0];
    assert_eq!(seen.path, "/api/users/7/orders", "the monolith gets the path as matched");
    assert_eq!(seen.query.as_deref(), Some("page=2"));

    // A root service prefix strips the route prefix; a percent-encoded segment stays as normalised.
    let reply = get(&w.gateway.url("/api/orders/caf%C3%A9%20%41?x=1")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = &w.orders.requests()[0];
    assert_eq!((seen.path.as_str(), seen.query.as_deref()), ("/caf%C3%A9%20A", Some("x=1")));
    get(&w.gateway.url("/api/orders")).await;
    assert_eq!(w.orders.requests()[1].path, "/");
}

#[tokio::test]
async fn header_edits_apply_on_both_sides_and_on_responses() {
    let w = world().await;
    let sent = [("x-debug", "on"), ("x-migrated-by", "client"), ("x-keep", "1")];
    let to_service = get_with(&w.gateway.url("/api/users/7"), &[sent.as_slice(), &[("x-canary", "1")]].concat()).await;
    let to_monolith = get_with(&w.gateway.url("/api/users/7"), &sent).await;
    for (reply, seen) in [(&to_service, &w.users.requests()[0]), (&to_monolith, &w.monolith.requests()[0])] {
        assert_eq!(seen.headers["x-migrated-by"], "gateway", "set replaces the client's value");
        assert_eq!(seen.headers.get_all("x-migrated-by").iter().count(), 1);
        assert!(!seen.headers.contains_key("x-debug"));
        assert_eq!(seen.headers["x-keep"], "1");
        assert!(seen.headers.contains_key("x-request-id"), "the gateway's own headers are still set");
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert_eq!(reply.header("server"), None, "removed from the response");
        assert!(reply.header("x-request-id").is_some());
    }
    // Another route has no edits: the upstream's headers pass.
    let untouched = get(&w.gateway.url("/elsewhere")).await;
    assert_eq!(untouched.header("server"), Some("monolith/1.0"));
    assert_eq!(untouched.header("cache-control"), None);
    assert_eq!(w.monolith.requests()[1].headers.get("x-migrated-by"), None);
}

#[tokio::test]
async fn each_upstream_gets_the_host_its_host_header_names() {
    let w = world().await;
    let gateway_host = w.gateway.addr.to_string();
    get_with(&w.gateway.url("/api/users/1"), &[("x-canary", "1")]).await;
    assert_eq!(w.users.requests()[0].headers["host"], authority(&w.users.url()), "upstream: the url's host:port");
    get(&w.gateway.url("/api/orders/1")).await;
    assert_eq!(w.orders.requests()[0].headers["host"], gateway_host.as_str(), "client (the default): as sent");
    get(&w.gateway.url("/legacy")).await;
    assert_eq!(w.monolith.requests()[0].headers["host"], "monolith.internal", "a literal host");
}

#[tokio::test]
async fn a_fallback_replay_goes_to_the_monolith_with_the_path_as_matched() {
    let w = world().await;
    let reply = get(&w.gateway.url("/api/accounts/42/profile?full=1")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["served_by"], "monolith");
    let replay = &w.monolith.requests()[0];
    assert_eq!(replay.path, "/api/accounts/42/profile", "not the service's /internal/accounts/...");
    assert_eq!(replay.query.as_deref(), Some("full=1"));
    assert_eq!(replay.headers["host"], "monolith.internal", "the monolith's Host, not accounts.internal:8443");
}

#[tokio::test]
async fn an_aggregate_part_through_a_transformed_route_is_rewritten() {
    let w = world().await;
    let reply = get_with(&w.gateway.url("/api/dashboard"), &[("x-canary", "1")]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["profile"]["served_by"], "users");
    let part = &w.users.requests()[0];
    assert_eq!(part.path, "/v2/users/me");
    assert_eq!(part.headers["x-migrated-by"], "gateway");
    assert_eq!(part.headers["host"], authority(&w.users.url()));
    let reply = get(&w.gateway.url("/api/dashboard")).await;
    assert_eq!(reply.json()["profile"]["served_by"], "monolith");
    assert_eq!(w.monolith.requests()[0].path, "/api/users/me", "the monolith's part as written");
}

#[tokio::test]
async fn explain_prints_the_path_each_side_receives() {
    let w = world().await;
    let snapshot = w.gateway.running.as_ref().expect("running").gateway.snapshot();
    let request = ExplainRequest {
        method: "GET".to_owned(),
        path: "/api/users/7?page=2".to_owned(),
        ..ExplainRequest::default()
    };
    let explanation = explain(&snapshot, &request).expect("explainable");
    assert_eq!(explanation.monolith_request.path, "/api/users/7?page=2");
    assert_eq!(explanation.monolith_request.host.as_deref(), Some("monolith.internal"));
    let service = explanation.service_request.as_ref().expect("the route has a service");
    assert_eq!(service.path, "/v2/users/7?page=2");
    assert_eq!(service.host.as_deref(), Some(authority(&w.users.url())));
    let text = explanation.to_string();
    assert!(
        text.contains("sends:  monolith gets /api/users/7?page=2 (upstream monolith, Host monolith.internal)"),
        "{text}"
    );
    assert!(text.contains("service gets /v2/users/7?page=2 (upstream users, Host 127.0.0.1:"), "{text}");

    // What explain says is what the data plane does.
    get_with(&w.gateway.url("/api/users/7?page=2"), &[("x-canary", "1")]).await;
    let seen = &w.users.requests()[0];
    assert_eq!(format!("{}?{}", seen.path, seen.query.as_deref().unwrap_or("")), service.path);

    let unmatched = explain(&snapshot, &ExplainRequest { path: "/legacy".to_owned(), ..ExplainRequest::default() })
        .expect("explainable");
    assert!(unmatched.service_request.is_none());
    assert_eq!(unmatched.monolith_request.path, "/legacy");
}

#[tokio::test]
async fn admin_config_shows_the_service_path_and_each_host_header() {
    let w = world().await;
    let config = get(&w.gateway.admin_url("/admin/config")).await.json();
    assert_eq!(config["routes"][0]["service_path"], "/v2/users");
    assert_eq!(config["routes"][1]["service_path"], "/");
    assert_eq!(config["upstreams"]["users"]["host_header"], "upstream");
    assert_eq!(config["upstreams"]["orders"]["host_header"], "client");
    assert_eq!(config["upstreams"]["accounts"]["host_header"], "accounts.internal:8443");
}
