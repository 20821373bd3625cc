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
    /// Plain-HTTP data-plane address (`0.0.0.0:0` when the config serves only HTTPS).
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// The config file the gateway serves (and watches).
    pub config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// Writes `config` to `routes.toml` in a temporary directory, loads it and starts.
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, config).expect("write the config");
        Self::start_at(dir, path).await
    }

    /// Starts on a config file already in place (for example behind symlinks) in `dir`.
    pub async fn start_at(dir: tempfile::TempDir, path: std::path::PathBuf) -> Self {
        let snapshot = gateway::config::load(&path, 1).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
        let running = gateway::server::start(snapshot).await.expect("start the gateway");
        TestGateway {
            addr: running.listen_addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            admin: running.admin_addr,
            running: Some(running),
            config_path: path,
            _dir: dir,
        }
    }

    /// The directory the config lives in.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// The version of the config being served, from `/admin/config`.
    pub async fn config_version(&self) -> u64 {
        super::get(&self.admin_url("/admin/config")).await.json()["version"].as_u64().expect("a version")
    }

    /// Waits (at most [`super::IO_TIMEOUT`]) until the served version is at least `version`.
    pub async fn wait_for_version(&self, version: u64) -> bool {
        let deadline = tokio::time::Instant::now() + super::IO_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if self.config_version().await >= version {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
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
