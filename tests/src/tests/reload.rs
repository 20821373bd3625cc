//! Hot reload end to end: good edits apply within a second, broken ones change nothing,
//! and no request fails while the file churns.

use std::time::Duration;

use tokio::time::Instant;

use crate::harness::*;

struct World {
    monolith: RunningMock,
    service: RunningMock,
    gateway: TestGateway,
}

fn config(monolith: &RunningMock, service: &RunningMock, dial: &str, extra_route: &str) -> String {
    format!(
        r#"{base}
[upstreams.users]
url = "{service}"

[[routes]]
name = "users"
prefix = "/api/users"
service = "users"
rollout_percent = {dial}
sticky = "header:x-user"
{extra_route}"#,
        base = base_config(&monolith.url(), ""),
        service = service.url(),
    )
}

async fn world(dial: &str) -> World {
    let monolith = MockUpstream::new("monolith").start().await;
    let service = MockUpstream::new("service").start().await;
    let gateway = TestGateway::start(&config(&monolith, &service, dial, "")).await;
    World { monolith, service, gateway }
}

async fn side_for(gateway: &TestGateway, path: &str, user: &str) -> String {
    let request = http::Request::get(gateway.url(path))
        .header("x-user", user)
        .body(http_body_util::Full::default())
        .expect("a valid request");
    let reply = send(request).await;
    assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    reply.json()["served_by"].as_str().expect("served_by").to_owned()
}

async fn admin_config(gateway: &TestGateway) -> serde_json::Value {
    get(&gateway.admin_url("/admin/config")).await.json()
}

async fn reloads_counted(gateway: &TestGateway, result: &str) -> u64 {
    let text = String::from_utf8_lossy(&get(&gateway.admin_url("/metrics")).await.body).into_owned();
    let needle = format!("gateway_config_reloads_total{{result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&needle)).map_or(0, |v| v.trim().parse().expect("a count"))
}

#[tokio::test]
async fn a_dial_change_and_a_new_route_apply_within_a_second() {
    let w = world("0").await;
    assert_eq!(side_for(&w.gateway, "/api/users/1", "alice").await, "monolith");
    assert_eq!(side_for(&w.gateway, "/api/orders/1", "alice").await, "monolith");
    let started = Instant::now();
    let orders = "[[routes]]\nname = \"orders\"\nprefix = \"/api/orders\"\nservice = \"users\"\n";
    std::fs::write(&w.gateway.config_path, config(&w.monolith, &w.service, "100", orders)).expect("rewrite");
    assert!(w.gateway.wait_for_version(2).await, "the edit was applied");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "applied after {elapsed:?}");
    assert_eq!(side_for(&w.gateway, "/api/users/1", "alice").await, "service");
    assert_eq!(side_for(&w.gateway, "/api/orders/1", "alice").await, "service");

    let config = admin_config(&w.gateway).await;
    let change = &config["recent_changes"][0];
    assert_eq!(change["version"], 2);
    let changes = change["changes"].as_array().expect("a list");
    assert!(
        changes.iter().any(|c| c["subject"] == "route users"
            && c["change"] == "dial"
            && c["from"] == "0.00%"
            && c["to"] == "100.00%"),
        "{changes:?}"
    );
    assert!(changes.iter().any(|c| c["subject"] == "route orders" && c["change"] == "added"), "{changes:?}");
    let metrics = String::from_utf8_lossy(&get(&w.gateway.admin_url("/metrics")).await.body).into_owned();
    assert!(metrics.contains("gateway_config_version 2"), "{metrics}");
}

#[tokio::test]
async fn a_broken_edit_changes_nothing_and_says_why() {
    let w = world("100").await;
    let good = config(&w.monolith, &w.service, "100", "");
    let broken_edits = [
        (good.replace("[[routes]]", "[[routes]\n"), "routes.toml:"),
        (good.replace("service = \"users\"", "service = \"userz\""), "unknown upstream \"userz\""),
        (good.replace("rollout_percent = 100", "rollout_percent = 120"), "routes[0].rollout_percent: must be 0 to 100"),
    ];
    let mut errors_before = reloads_counted(&w.gateway, "error").await;
    for (text, expected) in broken_edits {
        std::fs::write(&w.gateway.config_path, &text).expect("rewrite");
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let errors = reloads_counted(&w.gateway, "error").await;
            if errors > errors_before {
                errors_before = errors;
                break;
            }
            assert!(Instant::now() < deadline, "the broken edit was never counted: {expected}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let config = admin_config(&w.gateway).await;
        assert_eq!(config["version"], 1, "the old config keeps serving");
        let message = config["last_reload_error"]["message"].as_str().expect("an error message");
        assert!(message.contains(expected), "{message}");
        assert!(message.contains("routes.toml:"), "names file and position: {message}");
        assert!(config["last_reload_error"]["at"].is_string());
        assert_eq!(side_for(&w.gateway, "/api/users/1", "alice").await, "service", "still serving the old config");
    }
    // A good file clears the error.
    std::fs::write(&w.gateway.config_path, config(&w.monolith, &w.service, "0", "")).expect("rewrite");
    assert!(w.gateway.wait_for_version(2).await);
    assert!(admin_config(&w.gateway).await["last_reload_error"].is_null());
    assert_eq!(reloads_counted(&w.gateway, "ok").await, 1);
}

#[tokio::test]
async fn a_rename_save_is_picked_up() {
    let w = world("0").await;
    let temp = w.gateway.dir().join(".routes.toml.swp");
    std::fs::write(&temp, config(&w.monolith, &w.service, "100", "")).expect("write the new version aside");
    std::fs::rename(&temp, &w.gateway.config_path).expect("rename over the config, as editors do");
    assert!(w.gateway.wait_for_version(2).await);
    assert_eq!(side_for(&w.gateway, "/api/users/1", "alice").await, "service");
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let monolith = MockUpstream::new("monolith").start().await;
    let service = MockUpstream::new("service").start().await;
    // Kubernetes layout: routes.toml -> ..data/routes.toml, ..data -> ..2026_v1.
    let dir = tempfile::tempdir().expect("temp dir");
    let v1 = dir.path().join("..2026_v1");
    std::fs::create_dir(&v1).expect("mkdir");
    std::fs::write(v1.join("routes.toml"), config(&monolith, &service, "0", "")).expect("write v1");
    symlink("..2026_v1", dir.path().join("..data")).expect("link ..data");
    symlink("..data/routes.toml", dir.path().join("routes.toml")).expect("link routes.toml");
    let path = dir.path().join("routes.toml");
    let gateway = TestGateway::start_at(dir, path).await;
    assert_eq!(side_for(&gateway, "/api/users/1", "alice").await, "monolith");

    let v2 = gateway.dir().join("..2026_v2");
    std::fs::create_dir(&v2).expect("mkdir");
    std::fs::write(v2.join("routes.toml"), config(&monolith, &service, "100", "")).expect("write v2");
    symlink("..2026_v2", gateway.dir().join("..data_tmp")).expect("link ..data_tmp");
    std::fs::rename(gateway.dir().join("..data_tmp"), gateway.dir().join("..data")).expect("atomic swap of ..data");
    assert!(gateway.wait_for_version(2).await);
    assert_eq!(side_for(&gateway, "/api/users/1", "alice").await, "service");
}

#[tokio::test]
async fn sighup_rereads_a_change_the_watcher_cannot_see() {
    use std::os::unix::fs::symlink;
    let monolith = MockUpstream::new("monolith").start().await;
    let service = MockUpstream::new("service").start().await;
    // The config is a symlink to a file in another directory: edits there make no event
    // in the watched directory, so only SIGHUP picks them up.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let target = elsewhere.path().join("real-routes.toml");
    std::fs::write(&target, config(&monolith, &service, "0", "")).expect("write");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("routes.toml");
    symlink(&target, &path).expect("link");
    let gateway = TestGateway::start_at(dir, path).await;
    std::fs::write(&target, config(&monolith, &service, "100", "")).expect("rewrite the target");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gateway.config_version().await, 1, "no event reached the watcher");
    gateway.running.as_ref().expect("running").trigger_reload();
    assert!(gateway.wait_for_version(2).await, "SIGHUP re-read the file");
    assert_eq!(side_for(&gateway, "/api/users/1", "alice").await, "service");
    assert_eq!(admin_config(&gateway).await["recent_changes"][0]["trigger"], "sighup");
}

#[tokio::test]
async fn a_listen_address_change_is_refused_while_running() {
    let w = world("100").await;
    let moved =
        config(&w.monolith, &w.service, "100", "").replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    std::fs::write(&w.gateway.config_path, moved).expect("rewrite");
    let deadline = Instant::now() + IO_TIMEOUT;
    let message = loop {
        if let Some(message) = admin_config(&w.gateway).await["last_reload_error"]["message"].as_str() {
            break message.to_owned();
        }
        assert!(Instant::now() < deadline, "the edit was never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(message.contains("server.listen changed from 127.0.0.1:0 to 127.0.0.1:1"), "{message}");
    assert!(message.contains("restart to apply it"), "{message}");
    assert_eq!(admin_config(&w.gateway).await["version"], 1);
}

#[tokio::test]
async fn unchanged_upstreams_keep_their_warm_connections_across_a_reload() {
    let w = world("100").await;
    for _ in 0..3 {
        side_for(&w.gateway, "/api/users/1", "alice").await;
    }
    assert_eq!(w.service.connections(), 1);
    std::fs::write(
        &w.gateway.config_path,
        config(&w.monolith, &w.service, "100", "[[routes]]\nname = \"x\"\nprefix = \"/x\"\nservice = \"users\"\n"),
    )
    .expect("rewrite");
    assert!(w.gateway.wait_for_version(2).await);
    for _ in 0..3 {
        side_for(&w.gateway, "/api/users/1", "alice").await;
    }
    assert_eq!(w.service.connections(), 1, "the pool survived the reload");
}

#[tokio::test]
async fn no_request_fails_while_the_file_is_rewritten_fifty_times() {
    let w = world("0").await;
    let good = |dial: u32| config(&w.monolith, &w.service, &dial.to_string(), "");
    let broken = good(0).replace("[[routes]]", "[[routes");
    // Keep-alive clients of both protocols, counting every refused connect, reset, read
    // error and non-2xx.
    let http1 = Load::start(w.gateway.addr, "/api/users/1", 3, Protocol::Http1);
    let http2 = Load::start(w.gateway.addr, "/api/users/1", 1, Protocol::Http2);
    let started = Instant::now();
    // Alternate good versions (each a different dial) and broken ones, at uneven intervals
    // so the debounce window does not always land on the same version.
    for i in 0..50u32 {
        let text = if i % 2 == 0 { good(i + 1) } else { broken.clone() };
        std::fs::write(&w.gateway.config_path, text).expect("rewrite");
        tokio::time::sleep(Duration::from_millis(u64::from(60 + (i * 37) % 90))).await;
    }
    let (http1, http2) = (http1.stop().await, http2.stop().await);
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!((http1.failed(), http2.failed()), (0, 0), "not one request failed: {http1:?} {http2:?}");
    assert!(http1.ok > 100 && http2.ok > 30, "the clients kept sending: {http1:?} {http2:?}");
    assert!(reloads_counted(&w.gateway, "ok").await >= 3, "good edits applied during the churn");
    assert!(reloads_counted(&w.gateway, "error").await >= 3, "broken edits refused during the churn");
    // The churn ends on a good file, which must be what serves.
    std::fs::write(&w.gateway.config_path, good(100)).expect("rewrite");
    let deadline = Instant::now() + IO_TIMEOUT;
    while side_for(&w.gateway, "/api/users/1", "anyone").await != "service" {
        assert!(Instant::now() < deadline, "the last good edit was never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(w.gateway.config_version().await >= 2);
}

#[tokio::test]
async fn sighup_on_an_unchanged_file_is_counted() {
    let w = world("0").await;
    assert_eq!(reloads_counted(&w.gateway, "unchanged").await, 0);
    w.gateway.running.as_ref().expect("running").trigger_reload();
    assert!(
        eventually_async(|| async { reloads_counted(&w.gateway, "unchanged").await == 1 }).await,
        "the signal arrived and found nothing to apply"
    );
    assert_eq!(w.gateway.config_version().await, 1, "nothing was applied");
    assert_eq!(reloads_counted(&w.gateway, "ok").await, 0);
}
