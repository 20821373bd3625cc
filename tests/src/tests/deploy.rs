//! The deploy files: the Kubernetes manifests parse and mean what the README says, the
//! ConfigMap's routes.toml is a valid config, the Grafana dashboard queries only metrics
//! the gateway exports, and the systemd unit reloads with SIGHUP.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn deploy(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file))
        .expect("the deploy file exists")
}

fn str_at<'a>(doc: &'a Yaml, path: &[&str]) -> &'a str {
    let mut node = doc;
    for key in path {
        node = &node[*key];
    }
    node.as_str().unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

#[test]
fn the_kubernetes_manifests_parse_and_wire_probes_scraping_and_the_config() {
    let docs = YamlLoader::load_from_str(&deploy("kubernetes/gateway.yaml")).expect("valid YAML");
    let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, &["kind"])).collect();
    assert_eq!(kinds, ["ConfigMap", "Deployment", "Service"]);

    let deployment = &docs[1];
    let pod = &deployment["spec"]["template"];
    assert_eq!(str_at(pod, &["metadata", "annotations", "prometheus.io/scrape"]), "true");
    assert_eq!(str_at(pod, &["metadata", "annotations", "prometheus.io/path"]), "/metrics");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(str_at(container, &["readinessProbe", "httpGet", "path"]), "/ready");
    assert_eq!(str_at(container, &["livenessProbe", "httpGet", "path"]), "/health");
    let args: Vec<&str> = container["args"].as_vec().expect("args").iter().filter_map(Yaml::as_str).collect();
    assert_eq!(args, ["run", "--config", "/etc/gateway/routes.toml"]);
    let mount = &container["volumeMounts"][0];
    assert_eq!(str_at(mount, &["mountPath"]), "/etc/gateway");
    assert!(mount["subPath"].is_badvalue(), "a subPath mount would never see ConfigMap updates");
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_i64().expect("a grace period");

    // The ConfigMap's config is valid, and its drain fits in the pod's grace period.
    let config_map = &docs[0];
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("routes.toml"), str_at(config_map, &["data", "routes.toml"])).expect("write");
    std::fs::write(dir.path().join("jwks.json"), str_at(config_map, &["data", "jwks.json"])).expect("write");
    let snapshot = gateway::config::load(&dir.path().join("routes.toml"), 1).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        snapshot.server.shutdown_grace.as_secs() < grace as u64,
        "drain {:?} vs grace {grace}s",
        snapshot.server.shutdown_grace
    );
    assert_eq!(snapshot.server.admin_listen.port(), 9901, "the port the probes and annotations use");
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    use gateway_plugin_metrics::names;
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy("grafana/gateway-dashboard.json")).expect("valid JSON");
    let exported = [
        names::REQUESTS_TOTAL,
        names::REQUEST_DURATION_SECONDS,
        names::AUTH_FAILURES_TOTAL,
        names::ROLLOUT_PERCENT,
        names::FALLBACKS_TOTAL,
        names::CIRCUIT_STATE,
        names::CIRCUIT_TRANSITIONS_TOTAL,
        names::AGGREGATE_PART_FAILURES_TOTAL,
        names::AGGREGATE_PART_DURATION_SECONDS,
        names::CONFIG_RELOADS_TOTAL,
        names::CONFIG_VERSION,
    ];
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            let metrics: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("gateway_"))
                .collect();
            assert!(!metrics.is_empty(), "{expr}");
            for metric in metrics {
                let base = metric.trim_end_matches("_bucket");
                assert!(
                    exported.contains(&base),
                    "{} queries {metric}, which the gateway does not export",
                    panel["title"]
                );
            }
        }
    }
}

#[test]
fn the_systemd_unit_reloads_with_sighup_and_drains_on_stop() {
    let unit = deploy("systemd/gateway.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/gateway run --config /etc/gateway/routes.toml"));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("KillSignal=SIGTERM"));
    assert!(unit.contains("TimeoutStopSec=40"));
}

#[test]
fn the_systemd_units_activate_the_sockets_and_follow_an_upgrade() {
    let unit = deploy("systemd/gateway.service");
    assert!(unit.contains("Requires=gateway.socket"));
    // The upgraded process announces itself with MAINPID=, which needs these two.
    assert!(unit.contains("Type=notify") && unit.contains("NotifyAccess=all"));
    let socket = deploy("systemd/gateway.socket");
    // The proxy for other hosts, the admin listener on loopback only.
    assert!(socket.contains("ListenStream=0.0.0.0:8080") && socket.contains("ListenStream=127.0.0.1:9901"));
}
