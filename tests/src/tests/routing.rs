//! Routing: longest whole-segment prefix, the default upstream, normalisation before
//! matching, and the upstream receiving exactly the matched path.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::harness::*;

struct World {
    monolith: RunningMock,
    users: RunningMock,
    admin: RunningMock,
    gateway: TestGateway,
}

async fn world() -> World {
    let monolith = MockUpstream::new("monolith").start().await;
    let users = MockUpstream::new("users").start().await;
    let admin = MockUpstream::new("users-admin").start().await;
    let config = format!(
        r#"{}
[upstreams.users]
url = "{}"
[upstreams.users-admin]
url = "{}"

[[routes]]
name = "users"
prefix = "/api/users"
service = "users"

[[routes]]
name = "users-admin"
prefix = "/api/users/admin"
service = "users-admin"
"#,
        base_config(&monolith.url(), ""),
        users.url(),
        admin.url()
    );
    let gateway = TestGateway::start(&config).await;
    World { monolith, users, admin, gateway }
}

#[tokio::test]
async fn longest_whole_segment_prefix_wins_and_the_rest_goes_to_the_monolith() {
    let w = world().await;
    let cases = [
        ("/api/users", "users"),
        ("/api/users/7", "users"),
        ("/api/users/7/orders?page=2", "users"),
        ("/api/usersX", "monolith"),
        ("/api/users/admin", "users-admin"),
        ("/api/users/admin/keys", "users-admin"),
        ("/api/users/administrator", "users"),
        ("/", "monolith"),
        ("/checkout/cart", "monolith"),
    ];
    for (path, expected) in cases {
        let reply = get(&w.gateway.url(path)).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.json()["served_by"], expected, "{path}");
    }
    assert_eq!(w.users.count(), 4);
    assert_eq!(w.admin.count(), 2);
    assert_eq!(w.monolith.count(), 3);
    let with_query = &w.users.requests()[2];
    assert_eq!(with_query.path, "/api/users/7/orders");
    assert_eq!(with_query.query.as_deref(), Some("page=2"), "the query string is passed on untouched");
}

#[tokio::test]
async fn the_path_is_normalised_once_and_the_upstream_receives_it() {
    let w = world().await;
    let cases = [
        ("/api/users/%37", "users", "/api/users/7"),
        ("//api///users/7", "users", "/api/users/7"),
        ("/api/orders/../users/./7", "users", "/api/users/7"),
        ("/api/%2e%2e/api/users/admin/x", "users-admin", "/api/users/admin/x"),
        ("/public/%2E%2E/api/users/admin", "users-admin", "/api/users/admin"),
        ("/API/Users/7", "users", "/API/Users/7"),
        ("/api/users;jsessionid=1/admin", "users-admin", "/api/users;jsessionid=1/admin"),
        ("/api/users/caf%c3%a9", "users", "/api/users/caf%C3%A9"),
    ];
    for (sent, expected_upstream, expected_path) in cases {
        let request = format!("GET {sent} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let reply = raw_exchange(w.gateway.addr, request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{sent}: {reply}");
        assert!(reply.contains(&format!("\"served_by\":\"{expected_upstream}\"")), "{sent}: {reply}");
        assert!(
            reply.contains(&format!("\"path\":\"{expected_path}\"")),
            "{sent} should arrive as {expected_path}: {reply}"
        );
    }
}

#[tokio::test]
async fn ambiguous_paths_get_400_and_reach_no_upstream() {
    let w = world().await;
    let cases = [
        ("/api/users%2fadmin", "bad-path-encoded-slash"),
        ("/api/users%5Cadmin", "bad-path-encoded-slash"),
        ("/api/users/%00", "bad-path-encoded-nul"),
        ("/api/users/%zz", "bad-path-escape"),
        ("/api/../../etc/passwd", "bad-path-dot-segments"),
        ("/%2e%2e/api/users", "bad-path-dot-segments"),
    ];
    for (sent, code) in cases {
        let request = format!("GET {sent} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let reply = raw_exchange(w.gateway.addr, request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{sent}: {reply}");
        assert!(reply.contains(&format!("x-gateway-error: {code}")), "{sent}: {reply}");
        assert!(reply.contains(&format!("\"error\":\"{code}\"")), "{sent}: JSON body names the reason: {reply}");
    }
    assert_eq!(w.users.count() + w.admin.count() + w.monolith.count(), 0, "no upstream saw an ambiguous path");
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let monolith = MockUpstream::new("monolith").start().await;
    let big_response = Bytes::from(vec![b'r'; 3 * 1024 * 1024]);
    let service = MockUpstream::new("files").body(big_response.clone()).start().await;
    let config = format!(
        "{}\n[upstreams.files]\nurl = \"{}\"\n[[routes]]\nname = \"files\"\nprefix = \"/files\"\nservice = \"files\"\n",
        base_config(&monolith.url(), ""),
        service.url()
    );
    let gateway = TestGateway::start(&config).await;
    let upload = Bytes::from((0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let request = Request::post(gateway.url("/files/upload")).body(Full::new(upload.clone())).expect("a valid request");
    let reply = send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, big_response, "the 3 MiB response arrives whole");
    let received = &service.requests()[0];
    assert_eq!(received.method, "POST");
    assert_eq!(received.body, upload, "the 2 MiB upload arrives byte for byte");
}

#[tokio::test]
async fn http2_clients_with_prior_knowledge_are_served() {
    let w = world().await;
    let request = Request::get(w.gateway.url("/api/users/9")).body(Full::default()).expect("a valid request");
    let reply = send_h2(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["served_by"], "users");
    let received = &w.users.requests()[0];
    assert!(received.headers.get("host").is_some(), "an HTTP/1.1 upstream gets a Host header from :authority");
}
