//! Hostile input, one test per class the attack kit found: each asserts what the client got
//! and what the upstream received (or that it received nothing).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::harness::*;

async fn gateway_with(server_extra: &str, rest: &str) -> (RunningMock, TestGateway) {
    let monolith = MockUpstream::new("monolith").start().await;
    let config = format!("{}\n{rest}", base_config(&monolith.url(), server_extra));
    (monolith, TestGateway::start(&config).await)
}

fn status_line(reply: &str) -> &str {
    reply.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn header_names_with_underscores_are_dropped_by_default() {
    let (monolith, gateway) = gateway_with("", "").await;
    let reply = raw_exchange(
        gateway.addr,
        b"POST /form HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\ntransfer_encoding: chunked\r\n\
          content_length: 500\r\nx_user_id: admin\r\nx-user-agent-ok: 1\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(status_line(&reply).contains("200"), "{reply}");
    let seen = monolith.requests();
    assert_eq!(seen.len(), 1);
    for dropped in ["transfer_encoding", "content_length", "x_user_id"] {
        assert!(!seen[0].headers.contains_key(dropped), "{dropped} reached the upstream");
    }
    assert_eq!(seen[0].headers["x-user-agent-ok"], "1");
    assert_eq!(seen[0].body, "hello");
}

#[tokio::test]
async fn underscore_headers_can_be_rejected_or_passed() {
    let (monolith, gateway) = gateway_with("underscore_headers = \"reject\"", "").await;
    let reply = get_with(&gateway.url("/x"), &[("x_user_id", "admin")]).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("x-gateway-error"), Some("bad-header-name"));
    assert!(reply.json()["message"].as_str().unwrap_or_default().contains("x_user_id"));
    assert_eq!(monolith.count(), 0, "nothing reached the upstream");

    let (monolith, gateway) = gateway_with("underscore_headers = \"pass\"", "").await;
    assert_eq!(get_with(&gateway.url("/x"), &[("x_user_id", "admin")]).await.status, 200);
    assert_eq!(monolith.requests()[0].headers["x_user_id"], "admin");
}

#[tokio::test]
async fn content_length_is_forwarded_as_the_number_it_was_read_as() {
    let (monolith, gateway) = gateway_with("", "").await;
    let reply = raw_exchange(
        gateway.addr,
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 0000000000005\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(status_line(&reply).contains("200"), "{reply}");
    let seen = monolith.requests();
    assert_eq!(seen[0].headers.get_all("content-length").iter().collect::<Vec<_>>(), ["5"]);
    assert_eq!(seen[0].body, "hello");
}

#[tokio::test]
async fn two_hosts_or_a_host_that_disagrees_with_the_target_are_refused() {
    let (monolith, gateway) = gateway_with("", "").await;
    for request in [
        &b"GET /x HTTP/1.1\r\nHost: app\r\nHost: admin.internal\r\nConnection: close\r\n\r\n"[..],
        b"GET http://app/x HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    ] {
        let reply = raw_exchange(gateway.addr, request).await;
        assert!(status_line(&reply).contains("400"), "{reply}");
        assert!(reply.contains("x-gateway-error: bad-host"), "{reply}");
    }
    // The same authority in both places is fine.
    let reply =
        raw_exchange(gateway.addr, b"GET http://app/x HTTP/1.1\r\nHost: APP:80\r\nConnection: close\r\n\r\n").await;
    assert!(status_line(&reply).contains("200"), "{reply}");
    // Over HTTP/2 the target's authority is `:authority`; a `Host` naming another is refused.
    let request = http::Request::get(gateway.url("/x"))
        .header("host", "admin.internal")
        .body(Full::<Bytes>::default())
        .expect("a valid request");
    let reply = send_h2(request).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("x-gateway-error"), Some("bad-host"));
    assert_eq!(monolith.count(), 1, "only the agreeing request was forwarded");
}

#[tokio::test]
async fn paths_a_lenient_back_end_reads_into_another_route_are_refused() {
    let w = UsersWorld::start("[[routes]]\nname = \"admin\"\nprefix = \"/admin\"\nservice = \"users\"\n").await;
    let tricks = [
        "/public/%252e%252e/admin/keys",
        "/public/..%252fadmin/keys",
        "/public/..;/admin/keys",
        "/public/%C0%AE%C0%AE/admin/keys",
        "/public/..%C0%AFadmin/keys",
        "/public/..%EF%BC%8Fadmin/keys",
    ];
    for path in tricks {
        let reply = get(&w.gateway.url(path)).await;
        assert_eq!(reply.status, 400, "{path}");
        assert_eq!(reply.header("x-gateway-error"), Some("bad-path-ambiguous"), "{path}");
    }
    assert_eq!(w.monolith.count() + w.users.count(), 0, "no trick reached an upstream");
    // Encoded characters whose lenient reading stays on the same route are served.
    for path in ["/search/100%25", "/public/caf%C3%A9", "/admin/100%25"] {
        assert_eq!(get(&w.gateway.url(path)).await.status, 200, "{path}");
    }
    assert_eq!(w.monolith.requests()[0].path, "/search/100%25", "forwarded in its strict spelling");
    assert_eq!(w.users.count(), 1);
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400_and_never_opens_the_breaker() {
    let w = UsersWorld::start(
        "breaker = { failures = 2, window_seconds = 60, open_seconds = 30 }\n\
         [[routes]]\nname = \"users\"\nprefix = \"/users\"\nservice = \"users\"\nfallback = \"never\"\n",
    )
    .await;
    for _ in 0..3 {
        let reply = raw_exchange(
            w.gateway.addr,
            b"POST /users/1 HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              5\r\nhello\r\nzz-not-a-size\r\n\r\n",
        )
        .await;
        assert!(status_line(&reply).contains("400"), "{reply}");
        assert!(reply.contains("x-gateway-error: bad-request-body"), "{reply}");
    }
    // Three client faults, a breaker that opens after two failures: still closed.
    let reply = get(&w.gateway.url("/users/2")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["served_by"], "users");
    let config = get(&format!("http://{}/admin/config", w.gateway.admin)).await.json();
    assert_eq!(config["upstreams"]["users"]["breaker"], "closed");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_within_the_header_timeout() {
    let (_monolith, gateway) = gateway_with("header_read_timeout_ms = 300", "").await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(gateway.addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(IO_TIMEOUT, silent.read(&mut buf)).await.expect("closed before the test timeout");
    assert_eq!(read.expect("a clean close"), 0, "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    // A client that does speak is served as usual.
    assert_eq!(get(&gateway.url("/x")).await.status, 200);
}

#[tokio::test]
async fn a_stalled_upload_gets_408_not_the_upstreams_timeout() {
    // The upstream's head timeout (1 s) is shorter than the body timer: before, the stall
    // ended in a 504 after 1 s; the head timer now starts once the body is sent.
    let (monolith, gateway) = gateway_with("body_read_timeout_ms = 1500", "").await;
    let started = Instant::now();
    let reply = raw_exchange(
        gateway.addr,
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly ten b",
    )
    .await;
    assert!(status_line(&reply).contains("408"), "{reply}");
    assert!(reply.contains("x-gateway-error: body-timeout"), "{reply}");
    assert!(started.elapsed() >= Duration::from_millis(1400), "after the body timer, not before");
    // The upstream saw the start of a body that never completed; it answered nothing.
    assert!(monolith.requests().iter().all(|r| r.body.len() < 100));
}

/// An upstream that answers `/small` with `ok` and anything else with `chunks` pieces of
/// 16 KiB, made as they are sent, with the smallest write buffer hyper allows, so that
/// what the test process holds is mostly the gateway's.
async fn large_response_upstream(chunks: usize) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| async move {
                let body = if request.uri().path() == "/small" {
                    Either::Left(Full::new(Bytes::from_static(b"ok")))
                } else {
                    let pieces = futures_util::stream::iter(0..chunks)
                        .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 16 * 1024]))));
                    Either::Right(StreamBody::new(pieces))
                };
                Ok::<_, Infallible>(http::Response::new(body))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(8192)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

/// Reads one whole `ok` response (2-byte body) off a keep-alive connection.
async fn read_small_response(stream: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await.expect("in time").expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn slow_readers_of_large_responses_hold_a_bounded_buffer_each() {
    const READERS: usize = 20;
    let (upstream, task) = large_response_upstream(1024).await; // 16 MiB each
    let gateway = TestGateway::start(&base_config(&format!("http://{upstream}"), "")).await;
    // Warm up: every connection (client and pooled upstream side) made and used once, so
    // that what grows afterwards is what the large responses leave buffered.
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut stream = TcpStream::connect(gateway.addr).await.expect("connect");
        stream.write_all(b"GET /small HTTP/1.1\r\nHost: app\r\n\r\n").await.expect("write");
        read_small_response(&mut stream).await;
        readers.push(stream);
    }
    let before = resident_bytes();
    let mut first_reads = Vec::new();
    for stream in &mut readers {
        stream.write_all(b"GET /big HTTP/1.1\r\nHost: app\r\n\r\n").await.expect("write");
        // Read a little, then stop: the gateway now holds what it has read ahead.
        let mut head = [0u8; 4096];
        let first = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut head)).await;
        first_reads.push(first.ok().and_then(Result::ok).unwrap_or(0));
    }
    // Let every connection fill whatever the gateway and the sockets will buffer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = resident_bytes().saturating_sub(before);
    eprintln!("{READERS} slow readers grew the process by {} KiB", grown / 1024);
    // Unbounded read-ahead would be 20 x 16 MiB, hyper's default buffers about 600 KiB
    // each; ours are 64 KiB read ahead, a 32 KiB write buffer and one piece in between.
    assert!(grown < 8 * 1024 * 1024, "the process grew by {} KiB for {READERS} slow readers", grown / 1024);

    // The readers are merely slow: one that resumes gets the whole body.
    let (mut last, mut total) = (readers.pop().expect("a reader"), first_reads.pop().expect("a count"));
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + IO_TIMEOUT;
    while total < 16 * 1024 * 1024 && Instant::now() < deadline {
        match tokio::time::timeout(IO_TIMEOUT, last.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
    assert!(total >= 16 * 1024 * 1024, "read {total} bytes");
    task.abort();
}
