//! Circuit breakers and fallback end to end.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::harness::*;

struct World {
    monolith: RunningMock,
    service: RunningMock,
    gateway: TestGateway,
}

fn config(monolith: &RunningMock, service_url: &str, route_extra: &str) -> String {
    format!(
        r#"{base}
[upstreams.users]
url = "{service_url}"
connect_timeout_ms = 300
breaker = {{ failures = 3, window_seconds = 60, open_seconds = 1, half_open_requests = 1 }}

[[routes]]
name = "users"
prefix = "/api/users"
service = "users"
{route_extra}
"#,
        base = base_config(&monolith.url(), ""),
    )
}

async fn world(service_status: u16, route_extra: &str) -> World {
    let monolith = MockUpstream::new("monolith").start().await;
    let service = MockUpstream::new("service").status(service_status).start().await;
    let gateway = TestGateway::start(&config(&monolith, &service.url(), route_extra)).await;
    World { monolith, service, gateway }
}

async fn metrics(gateway: &TestGateway) -> String {
    String::from_utf8_lossy(&get(&gateway.admin_url("/metrics")).await.body).into_owned()
}

fn post(url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url).body(Full::new(Bytes::from_static(body.as_bytes()))).expect("a valid request")
}

#[tokio::test]
async fn a_failing_service_opens_its_breaker_and_the_monolith_takes_over() {
    let w = world(503, "fallback = \"never\"").await;
    for _ in 0..3 {
        let reply = get(&w.gateway.url("/api/users/1")).await;
        assert_eq!(reply.status, 503, "the service's own answer passes through while closed");
        assert_eq!(reply.json()["served_by"], "service");
    }
    for _ in 0..5 {
        let reply = get(&w.gateway.url("/api/users/1")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["served_by"], "monolith", "open breaker: the monolith answers");
    }
    assert_eq!(w.service.count(), 3, "the open breaker kept traffic off the service");
    let text = metrics(&w.gateway).await;
    assert!(text.contains(r#"gateway_circuit_state{upstream="users"} 1"#), "{text}");
    assert!(text.contains(r#"gateway_circuit_transitions_total{upstream="users",to="open"} 1"#), "{text}");
    assert!(text.contains(r#"gateway_fallbacks_total{route="users",reason="breaker_open"} 5"#), "{text}");
    let config = get(&w.gateway.admin_url("/admin/config")).await.json();
    assert_eq!(config["upstreams"]["users"]["breaker"], "open");
}

#[tokio::test]
async fn a_healed_service_closes_the_breaker_through_a_trial() {
    let w = world(500, "fallback = \"never\"").await;
    for _ in 0..3 {
        assert_eq!(get(&w.gateway.url("/api/users/1")).await.status, 500);
    }
    assert_eq!(get(&w.gateway.url("/api/users/1")).await.json()["served_by"], "monolith");
    w.service.set_status(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let trial = get(&w.gateway.url("/api/users/1")).await;
    assert_eq!(trial.json()["served_by"], "service", "after open_seconds a trial reaches the service");
    for _ in 0..3 {
        assert_eq!(get(&w.gateway.url("/api/users/1")).await.json()["served_by"], "service");
    }
    let text = metrics(&w.gateway).await;
    assert!(text.contains(r#"gateway_circuit_transitions_total{upstream="users",to="half_open"} 1"#), "{text}");
    assert!(text.contains(r#"gateway_circuit_transitions_total{upstream="users",to="closed"} 1"#), "{text}");
    assert!(text.contains(r#"gateway_circuit_state{upstream="users"} 0"#), "{text}");
}

#[tokio::test]
async fn an_idempotent_request_is_replayed_on_the_monolith_and_a_post_is_not() {
    let w = world(503, "").await;
    let reply = get(&w.gateway.url("/api/users/1")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["served_by"], "monolith", "a GET that got a 5xx is replayed");
    let put =
        Request::put(w.gateway.url("/api/users/1")).body(Full::new(Bytes::from_static(b"{\"n\":1}"))).expect("valid");
    let reply = send(put).await;
    assert_eq!(reply.json()["served_by"], "monolith", "a small PUT is replayed too");
    assert_eq!(w.monolith.requests()[1].body, Bytes::from_static(b"{\"n\":1}"), "with its body");

    let reply = send(post(&w.gateway.url("/api/users"), "{\"name\":\"ada\"}")).await;
    assert_eq!(reply.status, 503, "a POST that reached the service is never replayed");
    assert_eq!(reply.json()["served_by"], "service");
    assert!(w.monolith.requests().iter().all(|r| r.method != "POST"), "the monolith records no POST");
    let text = metrics(&w.gateway).await;
    assert!(text.contains(r#"gateway_fallbacks_total{route="users",reason="status_5xx"} 2"#), "{text}");
}

#[tokio::test]
async fn a_post_that_timed_out_is_not_replayed() {
    let monolith = MockUpstream::new("monolith").start().await;
    let slow = MockUpstream::new("slow").latency(Duration::from_secs(3)).start().await;
    let gateway = TestGateway::start(
        &config(&monolith, &slow.url(), "")
            .replace("connect_timeout_ms = 300", "connect_timeout_ms = 300\ntimeout_ms = 200"),
    )
    .await;
    let reply = send(post(&gateway.url("/api/users"), "{}")).await;
    assert_eq!(reply.status, 504, "it may have reached the service");
    assert_eq!(reply.header("x-gateway-error"), Some("upstream-timeout"));
    let reply = get(&gateway.url("/api/users/1")).await;
    assert_eq!(reply.json()["served_by"], "monolith", "a GET that timed out is replayed");
    assert_eq!(monolith.requests().len(), 1);
    assert_eq!(monolith.requests()[0].method, "GET");
    let text = metrics(&gateway).await;
    assert!(text.contains(r#"gateway_fallbacks_total{route="users",reason="timeout"} 1"#), "{text}");
}

#[tokio::test]
async fn a_closed_port_falls_back_for_get_and_for_post_because_nothing_was_sent() {
    let monolith = MockUpstream::new("monolith").start().await;
    let nowhere = closed_port().await;
    let gateway = TestGateway::start(&config(&monolith, &format!("http://{nowhere}"), "")).await;
    assert_eq!(get(&gateway.url("/api/users/1")).await.json()["served_by"], "monolith");
    let reply = send(post(&gateway.url("/api/users"), "{\"name\":\"ada\"}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["served_by"], "monolith");
    let posted = monolith.requests().into_iter().find(|r| r.method == "POST").expect("the POST was replayed");
    assert_eq!(posted.body, Bytes::from_static(b"{\"name\":\"ada\"}"), "with its body, streamed once");
    let text = metrics(&gateway).await;
    assert!(text.contains(r#"gateway_fallbacks_total{route="users",reason="connect_error"} 2"#), "{text}");
}

#[tokio::test]
async fn fallback_never_answers_the_error_instead() {
    let monolith = MockUpstream::new("monolith").start().await;
    let nowhere = closed_port().await;
    let gateway = TestGateway::start(&config(&monolith, &format!("http://{nowhere}"), "fallback = \"never\"")).await;
    let reply = get(&gateway.url("/api/users/1")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(monolith.count(), 0);
}

#[tokio::test]
async fn an_open_breaker_with_nothing_to_fall_back_to_answers_503_with_retry_after() {
    let monolith = MockUpstream::new("monolith").status(500).start().await;
    let text = base_config(&monolith.url(), "").replace(
        "timeout_ms = 1000",
        "timeout_ms = 1000\nbreaker = { failures = 2, window_seconds = 60, open_seconds = 30 }",
    );
    let gateway = TestGateway::start(&text).await;
    for _ in 0..2 {
        assert_eq!(get(&gateway.url("/legacy")).await.status, 500);
    }
    let reply = get(&gateway.url("/legacy")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-gateway-error"), Some("breaker-open"));
    let retry: u64 = reply.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(monolith.count(), 2);
}

#[tokio::test]
async fn breaker_state_survives_a_reload_while_the_url_is_the_same() {
    let w = world(503, "fallback = \"never\"").await;
    for _ in 0..3 {
        get(&w.gateway.url("/api/users/1")).await;
    }
    assert_eq!(get(&w.gateway.url("/api/users/1")).await.json()["served_by"], "monolith");
    // A different dial, and a longer open period: same url, so the breaker stays open.
    let edited = config(&w.monolith, &w.service.url(), "fallback = \"never\"\nrollout_percent = 100")
        .replace("open_seconds = 1,", "open_seconds = 60,");
    std::fs::write(&w.gateway.config_path, edited).expect("rewrite");
    assert!(w.gateway.wait_for_version(2).await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&w.gateway.url("/api/users/1")).await.json()["served_by"], "monolith", "still open after reload");
    assert_eq!(w.service.count(), 3);
    // A new url is a new service: a fresh, closed breaker.
    let healthy = MockUpstream::new("healthy").start().await;
    std::fs::write(&w.gateway.config_path, config(&w.monolith, &healthy.url(), "fallback = \"never\""))
        .expect("rewrite");
    assert!(w.gateway.wait_for_version(3).await);
    assert_eq!(get(&w.gateway.url("/api/users/1")).await.json()["served_by"], "healthy");
}
