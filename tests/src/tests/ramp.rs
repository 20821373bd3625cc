//! The guarded ramp end to end, with one-second steps: a healthy service climbs to `to`
//! while every user only ever moves from the monolith to the service; a failing service
//! rolls the dial back, a slow one holds it; the audit events, the metrics and
//! `/admin/migration` say what happened.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

async fn world(service: MockUpstream, route_extra: &str) -> (RunningMock, RunningMock, TestGateway) {
    let monolith = MockUpstream::new("monolith").start().await;
    let service = service.start().await;
    let config = format!(
        r#"{base}
[upstreams.users]
url = "{service}"
timeout_ms = 2000

[[routes]]
name = "{name}"
prefix = "/api/users"
service = "users"
sticky = "header:x-user"
{route_extra}
"#,
        base = base_config(&monolith.url(), ""),
        service = service.url(),
        name = "ramp-route",
    );
    (monolith, service, TestGateway::start(&config).await)
}

async fn route_report(gateway: &TestGateway) -> Value {
    get(&gateway.admin_url("/admin/migration")).await.json()["routes"][0].clone()
}

/// Sends one request per user; returns who answered each.
async fn round(gateway: &TestGateway, users: usize) -> Vec<String> {
    let mut sides = Vec::with_capacity(users);
    for user in 0..users {
        let reply = get_with(&gateway.url("/api/users/1"), &[("x-user", &format!("user-{user}"))]).await;
        sides.push(reply.json()["served_by"].as_str().unwrap_or("gateway").to_owned());
    }
    sides
}

async fn metrics(gateway: &TestGateway) -> String {
    String::from_utf8_lossy(&get(&gateway.admin_url("/metrics")).await.body).into_owned()
}

#[tokio::test]
async fn a_healthy_service_climbs_to_the_end_and_users_only_move_to_it() {
    let (_monolith, _service, gateway) = world(
        MockUpstream::new("users"),
        "rollout_percent = 10\nramp = { to = 50.0, step = 25.0, every_seconds = 1, min_requests = 3 }",
    )
    .await;
    let mut last_side: HashMap<usize, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut report = route_report(&gateway).await;
    assert_eq!(report["ramp"]["state"], "climbing", "{report}");
    assert_eq!(report["effective_dial_percent"], 10.0);
    while tokio::time::Instant::now() < deadline && report["ramp"]["state"] != "complete" {
        for (user, side) in round(&gateway, 40).await.into_iter().enumerate() {
            if let Some(before) = last_side.insert(user, side.clone()) {
                assert!(!(before == "users" && side == "monolith"), "user-{user} moved back to the monolith");
            }
        }
        report = route_report(&gateway).await;
    }
    assert_eq!(report["ramp"]["state"], "complete", "{report}");
    assert_eq!((report["dial_percent"].as_f64(), report["effective_dial_percent"].as_f64()), (Some(10.0), Some(50.0)));
    let last = &report["ramp"]["last_event"];
    assert_eq!(last["event"], "complete");
    assert!(last["message"].as_str().unwrap().starts_with("completed 35% -> 50%: service errors 0.0%"), "{last}");
    let table = gateway::cli::report::render(&get(&gateway.admin_url("/admin/migration")).await.json());
    assert!(table.contains("RAMP") && table.contains("complete (to 50.00%, last: complete)"), "{table}");
    let page = String::from_utf8_lossy(&get(&gateway.admin_url("/admin/")).await.body).into_owned();
    assert!(page.contains("r.ramp.state") && page.contains("\"state\":\"complete\""), "the page shows the ramp");
    let sides = round(&gateway, 40).await;
    let on_service = sides.iter().filter(|side| *side == "users").count();
    assert!((10..=30).contains(&on_service), "about half of 40 users at 50%: {on_service}");
    explain_uses_the_live_dial(&gateway, &sides).await;

    let metrics = metrics(&gateway).await;
    assert!(metrics.contains("gateway_rollout_effective_percent{route=\"ramp-route\"} 50"), "{metrics}");
    assert!(metrics.contains("gateway_ramp_events_total{route=\"ramp-route\",event=\"advance\"} 1"), "{metrics}");
    assert!(metrics.contains("gateway_ramp_events_total{route=\"ramp-route\",event=\"complete\"} 1"), "{metrics}");
    assert!(metrics.contains("gateway_rollout_percent{route=\"ramp-route\"} 10"), "the configured dial stays");
    let config = get(&gateway.admin_url("/admin/config")).await.json();
    let history = config["recent_changes"].as_array().unwrap();
    let ramp_changes: Vec<&Value> =
        history.iter().filter(|c| c["trigger"] == "ramp" && c["changes"][0]["change"] != "ramp wait").collect();
    assert_eq!(ramp_changes.len(), 2, "{history:#?}");
    assert_eq!(ramp_changes[0]["changes"][0]["change"], "ramp complete", "newest first");
    assert_eq!(ramp_changes[1]["changes"][0]["from"], "10%");
    assert_eq!(ramp_changes[1]["changes"][0]["to"], "35%");
    assert!(ramp_changes[1]["changes"][0]["detail"].as_str().unwrap().starts_with("advanced 10% -> 35%"));
}

/// `gateway explain --admin`: the file alone says the ramp's start (10%); with the running
/// gateway's admin it says the effective dial (50%) and names the side each user reached.
async fn explain_uses_the_live_dial(gateway: &TestGateway, sides: &[String]) {
    use gateway::cli::explain::{ExplainRequest, LiveGateway, explain};
    let admin = format!("http://{}", gateway.admin);
    let fetched = admin.clone();
    let report = tokio::task::spawn_blocking(move || gateway::cli::report::fetch(&fetched))
        .await
        .expect("fetch ran")
        .expect("the admin answers");
    let live = LiveGateway::from_migration(&admin, &report).expect("a migration report");
    let fresh = gateway::config::load(&gateway.config_path, 1).expect("valid");
    let mut moved_by_the_ramp = 0;
    for (user, side) in sides.iter().enumerate() {
        let request = |live: Option<LiveGateway>| ExplainRequest {
            method: "GET".to_owned(),
            path: "/api/users/1".to_owned(),
            headers: vec![("x-user".to_owned(), format!("user-{user}"))],
            live,
            ..ExplainRequest::default()
        };
        let offline = explain(&fresh, &request(None)).expect("explainable");
        let online = explain(&fresh, &request(Some(live.clone()))).expect("explainable");
        assert_eq!(offline.percent.as_deref(), Some("10.00%"));
        assert_eq!(online.percent.as_deref(), Some("50.00%"));
        let reached = if side == "users" { "service" } else { "monolith" };
        assert_eq!(online.side, reached, "user-{user}: {online:?}");
        moved_by_the_ramp += usize::from(offline.side == "monolith" && online.side == "service");
        assert!(!(offline.side == "service" && online.side == "monolith"), "user-{user}");
        let printed = online.to_string();
        assert!(
            printed.contains(&format!("live:   {admin}: effective dial 50.00% (ramp complete; the file says 10.00%)")),
            "{printed}"
        );
    }
    assert!(moved_by_the_ramp > 0, "some of 40 users are on the service only because of the ramp");
}

#[tokio::test]
async fn a_failing_service_rolls_the_dial_back_and_halts() {
    let (_monolith, _service, gateway) = world(
        MockUpstream::new("users").status(503),
        "rollout_percent = 50\nfallback = \"never\"\nramp = { to = 100.0, step = 10.0, every_seconds = 1, min_requests = 5, on_fail = \"rollback\" }",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut report = route_report(&gateway).await;
    while tokio::time::Instant::now() < deadline && report["ramp"]["state"] == "climbing" {
        round(&gateway, 20).await;
        report = route_report(&gateway).await;
    }
    assert_eq!(report["ramp"]["state"], "halted", "{report}");
    assert_eq!(report["effective_dial_percent"], 50.0, "rolled back to rollout_percent");
    let last = &report["ramp"]["last_event"];
    assert_eq!(last["event"], "rollback");
    let message = last["message"].as_str().unwrap();
    assert!(message.starts_with("halted at 50%: service errors 100.0% vs monolith 0.0% over"), "{message}");
    assert!(message.ends_with("; rolled back to 50%"), "{message}");
    assert!(report["ramp"]["next_step_at_unix"].is_null());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    round(&gateway, 20).await;
    assert_eq!(route_report(&gateway).await["ramp"]["state"], "halted", "it stays halted");
    assert!(metrics(&gateway).await.contains("gateway_ramp_events_total{route=\"ramp-route\",event=\"rollback\"} 1"));
}

#[tokio::test]
async fn fallbacks_count_against_the_service() {
    // The service fails; every failure is replayed on the monolith, so clients see 200s.
    let (_monolith, _service, gateway) = world(
        MockUpstream::new("users").status(502),
        "rollout_percent = 50\nramp = { to = 100.0, step = 10.0, every_seconds = 1, min_requests = 5, on_fail = \"hold\" }",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut report = route_report(&gateway).await;
    while tokio::time::Instant::now() < deadline && report["ramp"]["state"] == "climbing" {
        assert!(round(&gateway, 20).await.iter().all(|side| side == "monolith"), "every request fell back");
        report = route_report(&gateway).await;
    }
    assert_eq!(report["ramp"]["last_event"]["event"], "hold", "{report}");
    assert_eq!(report["effective_dial_percent"], 50.0, "held where it was");
}

#[tokio::test]
async fn a_slow_service_holds_the_dial() {
    let (_monolith, _service, gateway) = world(
        MockUpstream::new("users").latency(Duration::from_millis(300)),
        "rollout_percent = 50\nramp = { to = 100.0, step = 10.0, every_seconds = 1, min_requests = 5, max_p99_ratio = 2.0, on_fail = \"hold\" }",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut report = route_report(&gateway).await;
    while tokio::time::Instant::now() < deadline && report["ramp"]["state"] == "climbing" {
        round(&gateway, 12).await;
        report = route_report(&gateway).await;
    }
    let last = &report["ramp"]["last_event"];
    assert_eq!((report["ramp"]["state"].as_str(), last["event"].as_str()), (Some("halted"), Some("hold")), "{report}");
    assert!(last["message"].as_str().unwrap().contains("service p99 500 ms vs monolith"), "{last}");
    assert!(report["effective_dial_percent"].as_f64().unwrap() >= 50.0);
}

#[tokio::test]
async fn a_ramp_without_a_sticky_key_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let config = format!(
        "{}\n[upstreams.users]\nurl = \"http://127.0.0.1:9\"\n\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\nrollout_percent = 0\nramp = {{ to = 5.0, step = 50.0, every_seconds = 60 }}\n",
        base_config("http://127.0.0.1:9", "")
    );
    std::fs::write(&path, &config).unwrap();
    let error = gateway::config::load(&path, 1).expect_err("refused").to_string();
    let line = config.lines().position(|l| l.starts_with("ramp =")).unwrap() + 1;
    assert!(error.contains(&format!("routes.toml:{line}:")) && error.contains("routes[0].ramp"), "{error}");
    assert!(error.contains("need a sticky key"), "{error}");
}
