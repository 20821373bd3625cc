//! The real `gateway` binary as a child process, for what only a process can show:
//! signals, a binary upgrade, socket activation. Its log (JSON lines on stderr) goes to a
//! file the test reads; every process it started (upgrades included) is killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::IO_TIMEOUT;

/// The `gateway` binary beside this test binary (`target/debug/gateway`): `cargo nextest
/// run --workspace --all-targets` builds it.
pub fn gateway_binary() -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary.parent().and_then(Path::parent).expect("target/PROFILE/deps/TEST");
    let binary = profile_dir.join("gateway");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let built = modified(&binary)
        .unwrap_or_else(|| panic!("{} is missing: build it with cargo build -p gateway", binary.display()));
    // The binary links the library: a library newer than it means the binary is stale
    // (`cargo nextest run -p gateway-tests` does not rebuild it).
    let library = std::fs::read_dir(profile_dir.join("deps"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libgateway-") && name.ends_with(".rlib")
        })
        .filter_map(|entry| modified(&entry.path()))
        .max();
    assert!(
        library.is_none_or(|library| library <= built),
        "{} is older than the gateway library: rebuild it with cargo build -p gateway",
        binary.display()
    );
    binary
}

/// A gateway process and the directory of its config and log.
pub struct GatewayProcess {
    child: Option<Child>,
    /// The pid of the process serving now (changes with an upgrade).
    pub pid: u32,
    /// Its plain-HTTP address.
    pub listen: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
    /// The config file.
    pub config_path: PathBuf,
    log_path: PathBuf,
    /// Every pid seen, killed on drop if still running.
    pids: Vec<u32>,
    dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Writes `config` to `routes.toml` and runs `gateway run` on it; waits until it
    /// logs that it started.
    pub async fn start(config: &str) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_path = dir.path().join("routes.toml");
        std::fs::write(&config_path, config).expect("write the config");
        let mut command = Command::new(gateway_binary());
        command.arg("run").arg("--config").arg(&config_path);
        Self::spawn(dir, config_path, command).await
    }

    /// Runs `command` (which starts the gateway on `config_path`, in `dir`) with its log
    /// captured; waits until it logs that it started.
    pub async fn spawn(dir: tempfile::TempDir, config_path: PathBuf, mut command: Command) -> GatewayProcess {
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("create the log");
        let child = command
            .current_dir(dir.path())
            .env("GATEWAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the gateway binary");
        let pid = child.id();
        let mut process = GatewayProcess {
            child: Some(child),
            pid,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            config_path,
            log_path,
            pids: vec![pid],
            dir,
        };
        let started = process.wait_for_log(|line| line["message"] == "gateway started").await;
        let started = started.unwrap_or_else(|| panic!("the gateway did not start:\n{}", process.log()));
        process.pid = started["pid"].as_u64().expect("a pid") as u32;
        process.listen = started["listen"].as_str().expect("a listen address").parse().expect("an address");
        process.admin = started["admin"].as_str().expect("an admin address").parse().expect("an address");
        if !process.pids.contains(&process.pid) {
            process.pids.push(process.pid);
        }
        process
    }

    /// The directory of the config and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log's JSON lines so far.
    pub fn log_lines(&self) -> Vec<Value> {
        self.log().lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Waits (at most [`IO_TIMEOUT`]) for a log line `wanted` accepts.
    pub async fn wait_for_log(&self, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(line) = self.log_lines().into_iter().find(|line| wanted(line)) {
                return Some(line);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (`TERM`, `HUP`, `USR2`) to the process serving now.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid.to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {}", self.pid);
    }

    /// After an upgrade: the new process (from its "gateway started" line) serves now.
    pub fn follow(&mut self, pid: u32) {
        self.pid = pid;
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
    }

    /// Waits (at most `limit`) for the process this handle started to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether process `pid` still runs (`kill -0`).
    pub fn is_running(pid: u32) -> bool {
        Command::new("kill").arg("-0").arg(pid.to_string()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).stderr(Stdio::null()).status();
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait();
        }
    }
}
