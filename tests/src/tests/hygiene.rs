//! Header hygiene: hop-by-hop headers, forwarding headers, request ids, trace context.

use http::Request;
use http_body_util::Full;

use crate::harness::*;

async fn gateway_in_front_of(mock: &RunningMock) -> TestGateway {
    TestGateway::start(&base_config(&mock.url(), "")).await
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let monolith = MockUpstream::new("monolith")
        .header("connection", "x-upstream-hop")
        .header("x-upstream-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-upstream-kept", "yes")
        .start()
        .await;
    let gateway = gateway_in_front_of(&monolith).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = Request::get(gateway.url("/page"))
        .header("connection", "keep-alive, x-client-hop")
        .header("x-client-hop", "drop me")
        .header("keep-alive", "timeout=10")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "gzip")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("traceparent", traceparent)
        .header("x-request-id", "req-abc-123")
        .header("x-kept", "1")
        .body(Full::default())
        .expect("a valid request");
    let reply = send(request).await;
    assert_eq!(reply.status, 200);

    let received = &monolith.requests()[0];
    for hop in ["x-client-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(received.headers.get(hop).is_none(), "{hop} must not be forwarded: {:?}", received.headers);
    }
    assert_eq!(received.headers["x-kept"], "1");
    assert_eq!(received.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "the peer is appended to the chain");
    assert_eq!(received.headers["x-forwarded-proto"], "http", "the scheme the gateway saw, not the client's claim");
    assert_eq!(received.headers["traceparent"], traceparent);
    assert_eq!(received.headers["x-request-id"], "req-abc-123");

    assert_eq!(reply.header("x-request-id"), Some("req-abc-123"), "the request id comes back to the client");
    assert_eq!(reply.header("x-upstream-kept"), Some("yes"));
    assert!(reply.header("x-upstream-hop").is_none(), "a hop-by-hop header nominated by the upstream is stripped");
    assert!(reply.header("keep-alive").is_none());
}

#[tokio::test]
async fn a_request_id_is_made_when_missing_or_unusable_and_shared_with_the_upstream() {
    let monolith = MockUpstream::new("monolith").start().await;
    let gateway = gateway_in_front_of(&monolith).await;
    let first = get(&gateway.url("/a")).await;
    let second = send(
        Request::get(gateway.url("/b"))
            .header("x-request-id", "x".repeat(500))
            .body(Full::default())
            .expect("a valid request"),
    )
    .await;
    let ids: Vec<&str> =
        [&first, &second].iter().map(|r| r.header("x-request-id").expect("an id is returned")).collect();
    assert_eq!(ids[0].len(), 32);
    assert_eq!(ids[1].len(), 32, "an oversized client id is replaced");
    assert_ne!(ids[0], ids[1]);
    let received = monolith.requests();
    assert_eq!(received[0].headers["x-request-id"], ids[0]);
    assert_eq!(received[1].headers["x-request-id"], ids[1]);
}
