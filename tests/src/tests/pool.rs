//! The upstream connection pool: keep-alive reuse, and no use of a connection the
//! upstream has closed.

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let monolith = MockUpstream::new("monolith").start().await;
    let gateway = TestGateway::start(&base_config(&monolith.url(), "")).await;
    for i in 0..20 {
        let reply = get(&gateway.url(&format!("/page/{i}"))).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(monolith.count(), 20);
    assert_eq!(monolith.connections(), 1, "one kept-alive connection served all 20 requests");
}

#[tokio::test]
async fn empty_responses_also_return_their_connection_to_the_pool() {
    let monolith = MockUpstream::new("monolith").status(204).body("").start().await;
    let gateway = TestGateway::start(&base_config(&monolith.url(), "")).await;
    for _ in 0..5 {
        assert_eq!(get(&gateway.url("/ping")).await.status, 204);
    }
    assert_eq!(monolith.connections(), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    let monolith = MockUpstream::new("monolith").keep_alive(Duration::from_millis(100)).start().await;
    let gateway = TestGateway::start(&base_config(&monolith.url(), "")).await;
    assert_eq!(get(&gateway.url("/first")).await.status, 200);
    // The upstream closes the parked connection after 100 ms of idleness.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reply = get(&gateway.url("/second")).await;
    assert_eq!(reply.status, 200, "the gateway opened a fresh connection instead of failing: {reply:?}");
    assert_eq!(monolith.connections(), 2);
}
