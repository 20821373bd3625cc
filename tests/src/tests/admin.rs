//! The admin listener.

use crate::harness::*;

#[tokio::test]
async fn health_ready_metrics_and_config_are_served() {
    let monolith = MockUpstream::new("monolith").start().await;
    let users = MockUpstream::new("users").start().await;
    let config = format!(
        "{}\n[upstreams.metrics-probe]\nurl = \"{}\"\n[[routes]]\nname = \"metrics-probe\"\nprefix = \"/probe\"\nservice = \"metrics-probe\"\n",
        base_config(&monolith.url(), ""),
        users.url()
    );
    let gateway = TestGateway::start(&config).await;

    assert_eq!(get(&gateway.admin_url("/health")).await.status, 200);
    let ready = get(&gateway.admin_url("/ready")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");

    for _ in 0..3 {
        assert_eq!(get(&gateway.url("/probe/1")).await.status, 200);
    }
    let metrics = get(&gateway.admin_url("/metrics")).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"gateway_requests_total{route="metrics-probe",target="service",upstream="metrics-probe",status_class="2xx"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gateway_request_duration_seconds_count{route="metrics-probe",target="service"} 3"#),
        "{text}"
    );

    let config = get(&gateway.admin_url("/admin/config")).await.json();
    assert_eq!(config["version"], 1);
    assert_eq!(config["checksum"].as_str().map(str::len), Some(64));
    assert!(config["source"].as_str().expect("a source").ends_with("routes.toml"));
    assert!(config["last_reload_error"].is_null());
    assert_eq!(config["routes"][0]["prefix"], "/probe");

    let missing = get(&gateway.admin_url("/nope")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-gateway-error"), Some("not-found"));
    let not_on_data_plane = get(&gateway.url("/metrics")).await;
    assert_eq!(not_on_data_plane.json()["served_by"], "monolith", "admin endpoints are not on the proxy port");
}
