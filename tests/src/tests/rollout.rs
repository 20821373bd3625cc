//! The canary dial end to end: the side a request really reaches is the side
//! `gateway explain` names, for header- and claim-keyed callers, segments and anonymous
//! callers alike.

use gateway::cli::explain::{ExplainRequest, explain};
use http::Request;
use http_body_util::Full;
use jsonwebtoken::Algorithm;

use crate::harness::tokens::*;
use crate::harness::*;

struct World {
    monolith: RunningMock,
    /// Held so the mock keeps serving for the whole test.
    _service: RunningMock,
    gateway: TestGateway,
}

async fn world() -> World {
    let monolith = MockUpstream::new("monolith").start().await;
    let service = MockUpstream::new("service").start().await;
    let config = format!(
        r#"{base}
[upstreams.users]
url = "{service}"

[segments.beta]
header = "x-beta"
equals = "1"

[segments.staff]
claim = "email"
ends_with = "@staff.example"

[[routes]]
name = "catalog"
prefix = "/api/catalog"
service = "users"
auth = "off"
rollout_percent = 30
sticky = "header:x-user"
segments = ["beta"]

[[routes]]
name = "profiles"
prefix = "/api/profiles"
service = "users"
rollout_percent = 50
segments = ["staff"]
{auth}"#,
        base = base_config(&monolith.url(), ""),
        service = service.url(),
        auth = auth_section()
    );
    let gateway = TestGateway::start(&config).await;
    World { monolith, _service: service, gateway }
}

async fn served_by(w: &World, path: &str, headers: &[(&str, String)]) -> String {
    let mut request = Request::get(w.gateway.url(path));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let reply = send(request.body(Full::default()).expect("a valid request")).await;
    assert_eq!(reply.status, 200, "{path} {headers:?}: {:?}", reply.body);
    reply.json()["served_by"].as_str().expect("served_by").to_owned()
}

fn explained_side(w: &World, path: &str, headers: &[(&str, String)], claims: &[(&str, String)]) -> String {
    let snapshot = w.gateway.running.as_ref().expect("running").gateway.snapshot();
    let request = ExplainRequest {
        method: "GET".to_owned(),
        path: path.to_owned(),
        headers: headers.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
        claims: claims.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
        ip: Some("127.0.0.1".parse().expect("ip")),
        live: None,
    };
    let explanation = explain(&snapshot, &request).expect("explainable");
    explanation.side.to_owned()
}

fn as_upstream(side: &str) -> &'static str {
    if side == "service" { "service" } else { "monolith" }
}

#[tokio::test]
async fn explain_names_the_side_each_header_keyed_caller_reaches() {
    let w = world().await;
    let mut on_service = 0;
    for i in 0..200 {
        let headers = [("x-user", format!("user-{i}"))];
        let reached = served_by(&w, "/api/catalog/items", &headers).await;
        let explained = explained_side(&w, "/api/catalog/items", &headers, &[]);
        assert_eq!(reached, as_upstream(&explained), "user-{i}");
        on_service += usize::from(reached == "service");
        // Sticky: the same caller again reaches the same side.
        assert_eq!(served_by(&w, "/api/catalog/items", &headers).await, reached, "user-{i} moved");
    }
    assert!((30..=90).contains(&on_service), "{on_service} of 200 at 30%");
    // Anonymous callers get the monolith; the beta segment gets the service whatever the bucket.
    assert_eq!(served_by(&w, "/api/catalog/items", &[]).await, "monolith");
    assert_eq!(explained_side(&w, "/api/catalog/items", &[], &[]), "monolith");
    let unlucky = (0..200)
        .map(|i| format!("user-{i}"))
        .find(|u| gateway_plugin_rollout::bucket("catalog", u) >= 3000)
        .expect("some user is above the dial");
    let beta = [("x-user", unlucky.clone()), ("x-beta", "1".to_owned())];
    assert_eq!(served_by(&w, "/api/catalog/items", &beta).await, "service");
    assert_eq!(explained_side(&w, "/api/catalog/items", &beta, &[]), "service");
    assert!(w.monolith.count() > 0);
}

#[tokio::test]
async fn explain_names_the_side_each_token_holder_reaches() {
    let w = world().await;
    for i in 0..40 {
        let sub = format!("member-{i}");
        let mut claims = claims_for(&sub);
        claims["email"] = serde_json::json!(format!("{sub}@example.com"));
        let token = sign(Algorithm::ES256, &claims);
        let reached = served_by(&w, "/api/profiles/me", &[("authorization", format!("Bearer {token}"))]).await;
        let explained = explained_side(&w, "/api/profiles/me", &[], &[("sub", sub.clone())]);
        assert_eq!(reached, as_upstream(&explained), "{sub}");
    }
    // A staff member is in the segment: the service, whatever the bucket.
    let staff = (0..100)
        .map(|i| format!("staff-{i}"))
        .find(|s| gateway_plugin_rollout::bucket("profiles", s) >= 5000)
        .expect("some staff member is above the dial");
    let mut claims = claims_for(&staff);
    claims["email"] = serde_json::json!(format!("{staff}@staff.example"));
    let token = sign(Algorithm::ES256, &claims);
    assert_eq!(served_by(&w, "/api/profiles/me", &[("authorization", format!("Bearer {token}"))]).await, "service");

    let metrics = String::from_utf8_lossy(&get(&w.gateway.admin_url("/metrics")).await.body).into_owned();
    assert!(metrics.contains(r#"gateway_rollout_percent{route="profiles"} 50"#), "{metrics}");
    assert!(metrics.contains(r#"gateway_rollout_percent{route="catalog"} 30"#), "{metrics}");
}
