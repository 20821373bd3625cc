//! Binary upgrade (`kill -USR2`) and the process's announcements: the pid file and
//! systemd's notify socket.
//!
//! The running gateway starts the binary at its own path (as it was when this process
//! started, so a binary replaced on disk is the one started) with the same arguments, and
//! hands it the listening sockets ([`super::listeners`]). The new process loads its config,
//! serves on the inherited sockets beside the old one, and says "ready" once `/ready`
//! would answer 200. Only then does the old one stop accepting and drain. A new process
//! that fails (bad config, crash, not ready in time) says so or exits; the old one logs
//! why and keeps serving, and the sockets never stopped accepting.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::RunningGateway;
use super::listeners::{InheritedListeners, UPGRADE_ENV, send_listeners};

/// How long a new process has to become ready before it gives up (and exits).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the old process waits for the new one's word: its own limit, plus the time
/// to drain what it accepted if it gives up.
const WAIT_FOR_WORD: Duration = Duration::from_secs(90);

/// Why an upgrade did not happen. The old process keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Another upgrade is still waiting for its new process.
    #[error("an upgrade is already in progress")]
    InProgress,
    /// The gateway is already shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The binary could not be started.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The sockets could not be handed over.
    #[error("cannot hand the listening sockets to the new process: {0}")]
    Handover(io::Error),
    /// The new process said it will not serve.
    #[error("the new process {pid} did not start: {reason}")]
    Refused {
        /// Its pid.
        pid: u32,
        /// What it said.
        reason: String,
    },
    /// The new process exited without a word.
    #[error("the new process {pid} exited ({status}) before it was ready; its log says why")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it exited.
        status: String,
    },
    /// The new process neither got ready nor exited in time; it was killed.
    #[error("the new process {pid} was not ready within {}s; it was stopped", WAIT_FOR_WORD.as_secs())]
    Timeout {
        /// Its pid.
        pid: u32,
    },
}

/// How to start this process again: its binary and arguments, taken at start.
#[derive(Clone, Debug)]
pub struct Relaunch {
    binary: PathBuf,
    args: Vec<OsString>,
}

/// Set while an upgrade waits for its new process.
static IN_PROGRESS: AtomicBool = AtomicBool::new(false);

impl Relaunch {
    /// This process's binary path and arguments (call it at start: once the binary is
    /// replaced on disk, `/proc/self/exe` names a deleted file).
    pub fn of_this_process() -> io::Result<Self> {
        Ok(Relaunch { binary: std::env::current_exe()?, args: std::env::args_os().skip(1).collect() })
    }

    /// Starts the new process with `running`'s listening sockets and waits until it is
    /// ready; returns its pid. The caller then drains this one.
    pub async fn upgrade(&self, running: &RunningGateway) -> Result<u32, UpgradeError> {
        if IN_PROGRESS.swap(true, Ordering::AcqRel) {
            return Err(UpgradeError::InProgress);
        }
        let result = match running.handover_sockets() {
            Ok(sockets) if sockets.is_empty() => Err(UpgradeError::ShuttingDown),
            Ok(sockets) => {
                let relaunch = self.clone();
                tokio::task::spawn_blocking(move || relaunch.start_and_wait(sockets))
                    .await
                    .unwrap_or_else(|e| Err(UpgradeError::Handover(io::Error::other(e.to_string()))))
            }
            Err(e) => Err(UpgradeError::Handover(e)),
        };
        IN_PROGRESS.store(false, Ordering::Release);
        result
    }

    fn start_and_wait(&self, sockets: Vec<(super::listeners::Role, OwnedFd)>) -> Result<u32, UpgradeError> {
        let (ours, theirs) = UnixStream::pair().map_err(UpgradeError::Handover)?;
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .env(UPGRADE_ENV, std::process::id().to_string())
            // The new process takes its sockets from the hand-over, not from systemd's
            // variables (which name this process's pid).
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .spawn()
            .map_err(|source| UpgradeError::Spawn { path: self.binary.clone(), source })?;
        let pid = child.id();
        tracing::info!(pid, binary = %self.binary.display(), "upgrade: started the new process; handing over the listening sockets");
        let borrowed: Vec<_> = sockets.iter().map(|(role, fd)| (*role, fd.as_fd())).collect();
        if let Err(e) = send_listeners(&ours, &borrowed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(UpgradeError::Handover(e));
        }
        drop(borrowed);
        drop(sockets);
        ours.set_read_timeout(Some(WAIT_FOR_WORD)).map_err(UpgradeError::Handover)?;
        let mut word = String::new();
        let read = BufReader::new(&ours).read_line(&mut word);
        let exited = |child: &mut std::process::Child| {
            let status = child.wait().map_or_else(|e| e.to_string(), |s: ExitStatus| s.to_string());
            UpgradeError::Exited { pid, status }
        };
        match read {
            Ok(_) if word.starts_with("ready") => Ok(pid),
            Ok(_) if word.starts_with("failed ") => {
                let reason = word.trim_end().trim_start_matches("failed ").to_owned();
                // It exits on its own; reap it.
                let _ = child.wait();
                Err(UpgradeError::Refused { pid, reason })
            }
            Ok(_) => Err(exited(&mut child)),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(UpgradeError::Timeout { pid })
            }
            Err(_) => Err(exited(&mut child)),
        }
    }
}

/// Announces that this process serves: writes the pid file, tells systemd (with
/// `MAINPID` after an upgrade, so it follows the new process), and tells the process
/// being upgraded, which then drains.
pub fn announce_ready(running: &RunningGateway, inherited: &mut InheritedListeners) {
    let snapshot = running.gateway.snapshot();
    if let Some(path) = &snapshot.server.pid_file
        && let Err(e) = write_pid_file(path)
    {
        tracing::error!(path = %path.display(), error = %e, "cannot write the pid file");
    }
    let pid = std::process::id();
    let notified = if inherited.upgrading_from().is_some() {
        sd_notify::notify(false, &[sd_notify::NotifyState::MainPid(pid), sd_notify::NotifyState::Ready])
    } else {
        sd_notify::notify(false, &[sd_notify::NotifyState::Ready])
    };
    if let Err(e) = notified {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    inherited.report_ready();
}

/// Tells systemd the service is stopping (a SIGTERM drain, not an upgrade's).
pub fn announce_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// Removes the pid file at `path` if it still names this process (after an upgrade it
/// names the new one and stays).
pub fn remove_pid_file(path: &Path) {
    let ours = std::process::id().to_string();
    if std::fs::read_to_string(path).is_ok_and(|text| text.trim() == ours) {
        let _ = std::fs::remove_file(path);
    }
}

/// Writes this process's pid to `path` atomically (a temporary file renamed over it), so
/// a reader never sees a half-written pid.
fn write_pid_file(path: &Path) -> io::Result<()> {
    let pid = std::process::id();
    let temporary = path.with_extension(format!("tmp.{pid}"));
    std::fs::write(&temporary, format!("{pid}\n"))?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.pid");
        std::fs::write(&path, "1\n").unwrap();
        write_pid_file(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }
}
