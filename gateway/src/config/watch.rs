//! Watching the config file: a change in its directory becomes a reload [`Trigger`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

/// Quiet period before a reload: editors and ConfigMap swaps write in bursts.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Extensions of the files a config reads beside itself (key sets, certificates, keys).
/// Kubernetes' `..data` swaps and the config file itself count too.
const CONFIG_INPUT_EXTENSIONS: [&str; 6] = ["toml", "json", "pem", "crt", "cer", "key"];

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Something changed in the config file's directory.
    FileChanged,
    /// SIGHUP.
    Signal,
}

impl Trigger {
    /// The audit and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChanged => "file-changed",
            Trigger::Signal => "sighup",
        }
    }
}

/// Watches the directory, not the file: a rename-save or a symlink swap replaces the
/// file's inode, which a watch on the file itself would lose. `also` are more
/// directories whose files the config reads (certificates).
pub(crate) fn watch_directory(
    config: &Path,
    also: &[PathBuf],
    triggers: mpsc::Sender<Trigger>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let directory: PathBuf = match config.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let config_name = config.file_name().map(ToOwned::to_owned);
    let config_directory = directory.clone();
    // Only files the config may read count: a log file or pid file written next to
    // routes.toml would otherwise reload it on every line.
    let may_be_read = move |path: &Path| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        path.parent().is_some_and(|dir| dir != config_directory && !dir.as_os_str().is_empty())
            || Some(path.file_name().unwrap_or_default()) == config_name.as_deref()
            || name.starts_with("..")
            || CONFIG_INPUT_EXTENSIONS.iter().any(|ext| path.extension().is_some_and(|e| e == *ext))
    };
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if !matches!(event.kind, EventKind::Access(_)) && event.paths.iter().any(|p| may_be_read(p)) => {
            // Full means a reload is already pending, which will read the latest file.
            let _ = triggers.try_send(Trigger::FileChanged);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "config watcher error"),
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(&directory, RecursiveMode::NonRecursive)?;
        for extra in also.iter().filter(|d| **d != directory) {
            if let Err(e) = watcher.watch(extra, RecursiveMode::NonRecursive) {
                tracing::warn!(directory = %extra.display(), error = %e, "cannot watch a certificate directory; reload with SIGHUP");
            }
        }
        Ok(watcher)
    });
    match watcher {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!(directory = %directory.display(), error = %e, "cannot watch the config directory; reload with SIGHUP");
            None
        }
    }
}
