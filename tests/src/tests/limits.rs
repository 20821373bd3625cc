//! Failure answers and client limits: 504, 502, 413, 431, slow clients cut off.

use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// A route to `url` that answers errors itself: these tests are about the gateway's own
/// 502/504, so replaying on the monolith is turned off (see the breaker tests for that).
fn route_to(name: &str, url: &str, timeout_ms: u64) -> String {
    format!(
        "\n[upstreams.{name}]\nurl = \"{url}\"\ntimeout_ms = {timeout_ms}\nconnect_timeout_ms = 300\n\
         [[routes]]\nname = \"{name}\"\nprefix = \"/{name}\"\nservice = \"{name}\"\nfallback = \"never\"\n"
    )
}

#[tokio::test]
async fn a_slow_upstream_gets_504_with_the_reason() {
    let monolith = MockUpstream::new("monolith").start().await;
    let slow = MockUpstream::new("slow").latency(Duration::from_secs(3)).start().await;
    let config = base_config(&monolith.url(), "") + &route_to("slow", &slow.url(), 200);
    let gateway = TestGateway::start(&config).await;
    let started = Instant::now();
    let reply = get(&gateway.url("/slow/report")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("x-gateway-error"), Some("upstream-timeout"));
    assert_eq!(reply.json()["error"], "upstream-timeout");
    assert!(reply.header("x-request-id").is_some());
    assert!(started.elapsed() < Duration::from_millis(2500), "answered at the 200 ms timeout, not the upstream's 3 s");
}

#[tokio::test]
async fn a_refused_connection_gets_502_with_the_reason() {
    let monolith = MockUpstream::new("monolith").start().await;
    let nowhere = closed_port().await;
    let config = base_config(&monolith.url(), "") + &route_to("gone", &format!("http://{nowhere}"), 1000);
    let gateway = TestGateway::start(&config).await;
    let reply = get(&gateway.url("/gone/x")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-gateway-error"), Some("upstream-connect-failed"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let message = reply.json()["message"].as_str().expect("a message").to_owned();
    assert!(
        message.contains("gone") && !message.contains("127.0.0.1"),
        "names the upstream, not its address: {message}"
    );
}

#[tokio::test]
async fn a_declared_body_over_the_limit_gets_413_before_the_upstream_sees_it() {
    let monolith = MockUpstream::new("monolith").start().await;
    let gateway = TestGateway::start(&base_config(&monolith.url(), "max_body_bytes = 1000")).await;
    let request =
        Request::post(gateway.url("/upload")).body(Full::new(Bytes::from(vec![b'x'; 1001]))).expect("a valid request");
    let reply = send(request).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.header("x-gateway-error"), Some("body-too-large"));
    let at_limit = Request::post(gateway.url("/upload")).body(Full::new(Bytes::from(vec![b'x'; 1000]))).expect("valid");
    assert_eq!(send(at_limit).await.status, 200, "a body of exactly the limit passes");
    assert_eq!(monolith.count(), 1);
    assert_eq!(monolith.requests()[0].body.len(), 1000);
}

#[tokio::test]
async fn a_chunked_body_that_grows_over_the_limit_gets_413() {
    let monolith = MockUpstream::new("monolith").start().await;
    let gateway = TestGateway::start(&base_config(&monolith.url(), "max_body_bytes = 1000")).await;
    let chunk = "x".repeat(800);
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    let reply = raw_exchange(gateway.addr, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("x-gateway-error: body-too-large"), "{reply}");
    assert!(monolith.requests().iter().all(|r| r.body.len() <= 1000), "the upstream never got more than the limit");
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let monolith = MockUpstream::new("monolith").start().await;
    let gateway = TestGateway::start(&base_config(&monolith.url(), "max_header_bytes = 8192\nmax_headers = 20")).await;
    let big = format!("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nx-big: {}\r\n\r\n", "a".repeat(9000));
    let reply = raw_exchange(gateway.addr, big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "a 9 KB header over an 8 KiB limit: {reply}");
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{many}\r\n");
    let reply = raw_exchange(gateway.addr, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "30 headers over a limit of 20: {reply}");
    assert_eq!(monolith.count(), 0);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let monolith = MockUpstream::new("monolith").start().await;
    let gateway = TestGateway::start(&base_config(&monolith.url(), "header_read_timeout_ms = 300")).await;
    let started = Instant::now();
    // Slowloris: a request head that never ends.
    let reply = raw_exchange(gateway.addr, b"GET / HTTP/1.1\r\nHost: t\r\nx-slow: 1\r\n").await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "closed after {elapsed:?}, expected about 300 ms");
    assert!(!reply.contains("200 OK"), "{reply}");
    assert_eq!(monolith.count(), 0);
}

#[tokio::test]
async fn a_client_that_trickles_its_body_cannot_hold_the_connection() {
    let monolith = MockUpstream::new("monolith").start().await;
    let gateway = TestGateway::start(&base_config(&monolith.url(), "idle_timeout_ms = 1500")).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.expect("connect");
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("write the start of the request");
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the gateway ended the exchange");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "ended after {elapsed:?}");
    assert!(monolith.requests().iter().all(|r| r.body.len() < 100), "the upstream never saw a complete body");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_by_the_idle_timeout() {
    const RESPONSE_BYTES: usize = 32 * 1024 * 1024;
    let monolith = MockUpstream::new("monolith").body(vec![b'z'; RESPONSE_BYTES]).start().await;
    let gateway = TestGateway::start(&base_config(&monolith.url(), "idle_timeout_ms = 1200")).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.expect("connect");
    stream.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("write the request");
    // Read nothing while the gateway's writes fill the socket buffers and stall.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut received)).await;
    assert!(
        received.len() < RESPONSE_BYTES,
        "the gateway gave up on a reader that stalled longer than idle_timeout_ms (got {} bytes)",
        received.len()
    );
}
