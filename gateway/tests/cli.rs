//! The real binary's one-shot commands on a config with route transforms: `explain` names
//! the path each side receives, `check --against` names a changed `service_prefix`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"
default_upstream = "monolith"

[upstreams.monolith]
url = "http://127.0.0.1:3000"

[upstreams.users]
url = "http://127.0.0.1:3001"
host_header = "upstream"

[[routes]]
name = "users"
prefix = "/api/users"
service = "users"
rollout_percent = 100
service_prefix = "/v2/users"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a config");
    path
}

fn gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway")).args(args).output().expect("run the gateway binary")
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-cli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

#[test]
fn explain_prints_the_path_each_side_receives() {
    let dir = scratch("explain");
    let config = write(&dir, "routes.toml", CONFIG);
    let config = config.to_str().expect("a UTF-8 path");
    let output = gateway(&["explain", "--config", config, "GET", "/api/users/7?page=2"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("side:   service (upstream users)"), "{text}");
    assert!(text.contains("monolith gets /api/users/7?page=2 (upstream monolith, the client's Host)"), "{text}");
    assert!(text.contains("service gets /v2/users/7?page=2 (upstream users, Host 127.0.0.1:3001)"), "{text}");

    let output = gateway(&["explain", "--config", config, "--json", "GET", "/api/users/7"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["service_request"]["path"], "/v2/users/7");
    assert_eq!(json["monolith_request"]["path"], "/api/users/7");
    assert_eq!(json["monolith_request"]["host"], serde_json::Value::Null, "null: the client's Host");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_refuses_a_path_the_data_plane_refuses_as_ambiguous() {
    let dir = scratch("explain-ambiguous");
    let config = write(&dir, "routes.toml", CONFIG);
    let config = config.to_str().expect("a UTF-8 path");
    let output = gateway(&["explain", "--config", config, "GET", "/public/..;/api/users/7"]);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("bad-path-ambiguous"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_against_names_a_changed_service_prefix() {
    let dir = scratch("check");
    let old = write(&dir, "old.toml", CONFIG);
    let new = write(&dir, "new.toml", &CONFIG.replace("/v2/users", "/v3/users"));
    let output = gateway(&["check", new.to_str().expect("UTF-8"), "--against", old.to_str().expect("UTF-8")]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("service_prefix: the service gets /api/users as /v3/users (was /v2/users)"), "{text}");

    let owned = write(&dir, "owned.toml", &format!("{CONFIG}request_headers = {{ remove = [\"host\"] }}\n"));
    let output = gateway(&["check", owned.to_str().expect("UTF-8")]);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        errors.contains("owned.toml:19:31: routes[0].request_headers.remove[0]: cannot remove \"host\""),
        "{errors}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
