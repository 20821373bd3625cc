//! The real gateway, started in-process from a TOML string on ephemeral ports.

use std::net::SocketAddr;

use gateway::server::RunningGateway;

/// A config with both listeners on 127.0.0.1:0 and the given monolith url; append
/// upstreams, routes and `[server]` overrides are not possible after it, so pass extra
/// server keys in `server_extra`.
pub fn base_config(monolith_url: &str, server_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
default_upstream = "monolith"
workers = 1
{server_extra}

[upstreams.monolith]
url = "{monolith_url}"
timeout_ms = 1000
"#
    )
}

/// A gateway serving a config written to a temporary file.
pub struct TestGateway {
    /// The running gateway.
    pub running: Option<RunningGateway>,
    /// Data-plane address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// Writes `config` to `routes.toml` in a temporary directory, loads it and starts.
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, config).expect("write the config");
        let snapshot =
            gateway::config::load(&path, 1).unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n{config}"));
        let running = gateway::server::start(snapshot).await.expect("start the gateway");
        TestGateway { addr: running.listen_addr, admin: running.admin_addr, running: Some(running), _dir: dir }
    }

    /// `http://ADDR{path}` on the data plane.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://ADMIN{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown();
        }
    }
}
