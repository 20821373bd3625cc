//! Migration progress end to end: /admin/migration after a known mix of traffic, the
//! terminal report, and the admin page rendered by headless Chromium.

use std::path::PathBuf;
use std::process::Command;

use http::Request;
use http_body_util::Full;

use crate::harness::*;

struct World {
    _monolith: RunningMock,
    _service: RunningMock,
    gateway: TestGateway,
}

fn config(monolith: &RunningMock, service: &RunningMock, dial: u32) -> String {
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
fallback = "never"

[[routes]]
name = "billing"
prefix = "/api/billing"
service = "users"
"#,
        base = base_config(&monolith.url(), ""),
        service = service.url(),
    )
}

/// The monolith answers 503 (so its error rate is 100%), the service 200.
async fn world() -> World {
    world_with(503, 200).await
}

async fn world_with(monolith_status: u16, service_status: u16) -> World {
    let monolith = MockUpstream::new("monolith").status(monolith_status).start().await;
    let service = MockUpstream::new("service").status(service_status).start().await;
    let gateway = TestGateway::start(&config(&monolith, &service, 50)).await;
    World { _monolith: monolith, _service: service, gateway }
}

async fn traffic(w: &World) -> usize {
    let mut expected_service = 0;
    for i in 0..40 {
        let user = format!("user-{i}");
        expected_service += usize::from(gateway_plugin_rollout::bucket("users", &user) < 5000);
        let request =
            Request::get(w.gateway.url("/api/users/1")).header("x-user", &user).body(Full::default()).expect("valid");
        send(request).await;
    }
    for _ in 0..5 {
        get(&w.gateway.url("/api/billing/invoices")).await;
    }
    expected_service
}

fn route<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["routes"].as_array().expect("routes").iter().find(|r| r["name"] == name).expect("the route is reported")
}

#[tokio::test]
async fn the_migration_report_matches_the_traffic_sent() {
    let w = world().await;
    let on_service = traffic(&w).await;
    assert!(on_service > 5 && on_service < 35, "a meaningful mix: {on_service} of 40");
    let report = get(&w.gateway.admin_url("/admin/migration")).await.json();
    let users = route(&report, "users");
    assert_eq!(users["dial_percent"], 50.0);
    assert_eq!(users["effective_dial_percent"], 50.0);
    assert_eq!(users["stage"], "canary");
    assert_eq!(users["service_since_start"]["requests"], on_service);
    assert_eq!(users["monolith_since_start"]["requests"], 40 - on_service);
    assert_eq!(users["service_since_start"]["error_rate_percent"], 0.0);
    assert_eq!(users["monolith_since_start"]["error_rate_percent"], 100.0);
    let share = on_service as f64 * 100.0 / 40.0;
    for window in ["last_1m", "last_15m", "since_start"] {
        let observed = users["observed_service_share_percent"][window].as_f64().expect("a share");
        assert!((observed - share).abs() < 1e-9, "{window}: {observed} vs {share}");
    }
    assert!(users["service_since_start"]["p50_ms"].as_f64().is_some());
    let billing = route(&report, "billing");
    assert_eq!(billing["stage"], "live at 100%");
    assert_eq!(billing["service_since_start"]["requests"], 5);
    let overall = &report["overall"];
    assert_eq!(overall["requests"], 45);
    let overall_share = overall["service_share_percent"].as_f64().expect("a share");
    assert!((overall_share - (on_service + 5) as f64 * 100.0 / 45.0).abs() < 1e-9);
    assert_eq!(overall["routes_extracted"], 2);
    assert_eq!(overall["routes_fully_migrated"], 0, "complete needs 15 minutes at 100% without the monolith");

    // A reload that moves the dial is the last dial change; the counts survive it.
    let monolith_url = w._monolith.url();
    let text = config(&w._monolith, &w._service, 60);
    assert!(text.contains(&monolith_url));
    std::fs::write(&w.gateway.config_path, text).expect("rewrite");
    assert!(w.gateway.wait_for_version(2).await);
    let report = get(&w.gateway.admin_url("/admin/migration")).await.json();
    let users = route(&report, "users");
    assert_eq!(users["last_dial_change"]["from"], 50.0);
    assert_eq!(users["last_dial_change"]["to"], 60.0);
    assert_eq!(users["service_since_start"]["requests"], on_service, "stats are kept across the reload");
}

#[tokio::test]
async fn the_report_prints_every_route() {
    let w = world().await;
    traffic(&w).await;
    // The report client blocks; run it off this test's (single) runtime thread, which also
    // serves the admin listener.
    let admin = format!("http://{}", w.gateway.admin);
    let report = tokio::task::spawn_blocking(move || gateway::cli::report::fetch(&admin)).await.expect("join");
    let table = gateway::cli::report::render(&report.expect("the admin answers"));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("config v1: "), "{table}");
    assert!(lines.iter().any(|l| l.starts_with("ROUTE") && l.contains("OBSERVED 15m")), "{table}");
    let users = lines.iter().find(|l| l.starts_with("users ")).expect("a users line");
    assert!(users.contains("/api/users") && users.contains("50.00%") && users.contains("canary"), "{users}");
    assert!(users.contains("0.0% / 100.0%"), "service and monolith error rates side by side: {users}");
    assert!(lines.iter().any(|l| l.starts_with("billing ") && l.contains("live at 100%")), "{table}");
    let nowhere = format!("http://{}", closed_port().await);
    assert!(tokio::task::spawn_blocking(move || gateway::cli::report::fetch(&nowhere)).await.expect("join").is_err());
    assert!(gateway::cli::report::fetch("ftp://x").is_err());
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| PathBuf::from(dir).join(name)).find(|p| p.exists())
    })
}

#[tokio::test]
async fn the_admin_page_renders_every_route_in_headless_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("GATEWAY_SKIP_BROWSER_TESTS").is_some(),
            "chromium is not installed (.ci/run installs it; set GATEWAY_SKIP_BROWSER_TESTS=1 to skip)"
        );
        return;
    };
    // The service does worse than the monolith here, which the page must make stand out.
    let w = world_with(200, 503).await;
    traffic(&w).await;
    let url = format!("http://{}/admin/", w.gateway.admin);
    let profile = tempfile::tempdir().expect("a profile directory");
    let screenshot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/admin-migration.png");
    let run = |extra: &[String]| {
        let browser = browser.clone();
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend_from_slice(extra);
        args.push(url.clone());
        tokio::task::spawn_blocking(move || Command::new("timeout").arg("60").arg(browser).args(args).output())
    };
    let dom = run(&["--dump-dom".to_owned()]).await.expect("join").expect("chromium runs");
    assert!(dom.status.success(), "chromium failed: {}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for name in ["users", "billing"] {
        assert!(dom.contains(&format!(r#"data-route="{name}""#)), "a row for {name} in:\n{dom}");
    }
    assert!(dom.contains(r#"class="bar" style="width:"#), "bars are drawn");
    assert!(dom.contains(r#"<b class="dial-value">50.00%</b>"#), "the dial is shown");
    assert!(dom.contains("of all traffic served by extracted services"), "the summary is shown");
    assert!(dom.contains(r#"<span class="worse">100.0%</span>"#), "the service's 100% errors stand out: {dom}");
    // Each route has its 15-minute charts, with the traffic just sent drawn in them.
    for chart in ["share", "errors", "p99"] {
        assert_eq!(dom.matches(&format!(r#"data-chart="{chart}""#)).count(), 2, "a {chart} chart per route");
    }
    let users_charts = dom.split(r#"<tr class="charts" data-route="users">"#).nth(1).expect("the users charts");
    let users_charts = users_charts.split("</tr>").next().unwrap_or_default();
    let drawn = |class: &str| {
        users_charts.contains(&format!(r#"class="dot {class}""#))
            || users_charts.contains(&format!(r#"class="line {class}""#))
    };
    assert!(drawn("service") && drawn("monolith") && drawn("dial"), "data points in the charts: {users_charts}");
    let shot = run(&[format!("--screenshot={}", screenshot.display()), "--window-size=1280,640".to_owned()])
        .await
        .expect("join")
        .expect("chromium runs");
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG for a person to look at: {}", screenshot.display());
}
