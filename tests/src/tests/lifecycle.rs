//! Shutdown: stop accepting, finish what is in flight.

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn shutdown_drains_an_in_flight_request_and_refuses_new_connections() {
    let monolith = MockUpstream::new("monolith").latency(Duration::from_millis(600)).start().await;
    let mut gateway = TestGateway::start(&base_config(&monolith.url(), "shutdown_grace_ms = 5000")).await;
    let url = gateway.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    // Let the request reach the upstream before asking the gateway to stop.
    assert!(eventually(|| monolith.count() == 1).await, "the request is in flight");
    let running = gateway.running.take().expect("the gateway is running");
    running.shutdown();
    let drained = tokio::time::timeout(IO_TIMEOUT, running.wait()).await;
    assert!(drained.is_ok(), "the gateway stopped within the grace period");
    let reply = in_flight.await.expect("the request task finished");
    assert_eq!(reply.status, 200, "the in-flight request completed during the drain");
    assert!(tokio::net::TcpStream::connect(gateway.addr).await.is_err(), "no new connections after shutdown");
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let monolith = MockUpstream::new("monolith").latency(Duration::from_secs(8)).start().await;
    let config = base_config(&monolith.url(), "shutdown_grace_ms = 300\nidle_timeout_ms = 20000")
        .replace("timeout_ms = 1000", "timeout_ms = 10000");
    let mut gateway = TestGateway::start(&config).await;
    let url = gateway.url("/stuck");
    let _in_flight = tokio::spawn(async move { get(&url).await });
    assert!(eventually(|| monolith.count() == 1).await, "the request is in flight");
    let running = gateway.running.take().expect("the gateway is running");
    let started = tokio::time::Instant::now();
    running.shutdown();
    running.wait().await;
    assert!(started.elapsed() < Duration::from_secs(3), "stopped after the 300 ms grace, not the 8 s request");
}
