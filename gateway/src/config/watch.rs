//! Watching the config file: a change in its directory becomes a reload [`Trigger`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

/// Quiet period before a reload: editors and ConfigMap swaps write in bursts.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

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
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if !matches!(event.kind, EventKind::Access(_)) => {
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
