//! Hot reload: watch routes.toml, re-read it on SIGHUP, and swap in a new snapshot only
//! when the whole file is valid.
//!
//! 1. A trigger arrives: a change in the config file's directory (which catches editors'
//!    rename-saves, a file deleted and recreated, and Kubernetes ConfigMap `..data`
//!    symlink swaps), or SIGHUP.
//! 2. Triggers are debounced: the reload starts after [`DEBOUNCE`] without new ones.
//! 3. The file is read, validated and compiled on a blocking thread, off the data plane.
//! 4. Valid: one `ArcSwap::store`. Requests in flight finish on the snapshot they started
//!    with; new ones get the new one. The version goes up, and one audit event lists what
//!    changed per route and upstream (the last [`crate::config::audit::HISTORY`] are kept
//!    for `/admin/config`).
//! 5. Invalid: nothing changes. The error (with line and column) is logged, counted, and
//!    shown on `/admin/config` until a good file loads.

use std::sync::Arc;

use gateway_plugin_metrics::names;
use tokio::sync::{mpsc, watch};

use crate::config::audit::{AppliedChange, ReloadFailure, ReloadState, diff, now};
use crate::config::watch::{DEBOUNCE, Trigger, watch_directory};
use crate::server::state::{Gateway, stopped};

/// Reads the config file again and swaps it in if it is valid.
pub(crate) async fn reload(gateway: &Gateway, trigger: Trigger) {
    let current = gateway.snapshot();
    let path = current.meta.source.clone();
    let previous = current.clone();
    let compiled = tokio::task::spawn_blocking(move || crate::config::load_next(&path, &previous)).await;
    let state = gateway.reload_state();
    match compiled {
        Ok(Ok(Some(next))) => {
            let changes = diff(&current, &next);
            let version = next.meta.version;
            let (at, _) = now();
            let applied = AppliedChange {
                version,
                checksum: next.meta.checksum.clone(),
                at,
                trigger: trigger.as_str(),
                changes: changes.clone(),
            };
            gateway.install(next);
            metrics::counter!(names::CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
            state.record_applied(applied.clone());
            tracing::info!(
                audit = true,
                version,
                checksum = %applied.checksum,
                trigger = trigger.as_str(),
                changes = %serde_json::to_string(&changes).unwrap_or_default(),
                "config applied"
            );
        }
        Ok(Ok(None)) => {
            // Back to what is serving (for example a broken edit reverted): nothing to swap,
            // and the last error no longer describes the file.
            // Logged and counted, so an operator sees that the signal (or file event) arrived.
            state.clear_error();
            metrics::counter!(names::CONFIG_RELOADS_TOTAL, "result" => "unchanged").increment(1);
            tracing::info!(
                trigger = trigger.as_str(),
                version = current.meta.version,
                checksum = %current.meta.checksum,
                "config file unchanged; the running config stays"
            );
        }
        Ok(Err(error)) => refuse(state, trigger, error.to_string()),
        Err(join) => refuse(state, trigger, format!("the reload task failed: {join}")),
    }
}

fn refuse(state: &ReloadState, trigger: Trigger, message: String) {
    metrics::counter!(names::CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
    tracing::error!(trigger = trigger.as_str(), error = %message, "config refused; the running config keeps serving");
    let (at, at_unix) = now();
    state.record_refused(ReloadFailure { message, at, at_unix });
}

/// Starts the reloader: a task that debounces triggers and reloads, and a watcher on the
/// config file's directory. Returns the sender for other triggers (SIGHUP) and the
/// watcher, which stops watching when dropped.
pub(crate) fn start(
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
) -> (mpsc::Sender<Trigger>, Option<notify::RecommendedWatcher>) {
    // One pending trigger is enough: a reload reads the whole file anyway.
    let (sender, receiver) = mpsc::channel(1);
    let snapshot = gateway.snapshot();
    // The directories of the TLS certificates too, so a renewed certificate is picked up.
    let also: Vec<std::path::PathBuf> = snapshot.tls.iter().flat_map(|tls| tls.directories()).collect();
    let watcher = watch_directory(&snapshot.meta.source, &also, sender.clone());
    tokio::spawn(reloader(gateway, receiver, shutdown));
    (sender, watcher)
}

async fn reloader(gateway: Arc<Gateway>, mut triggers: mpsc::Receiver<Trigger>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let trigger = tokio::select! {
            trigger = triggers.recv() => match trigger {
                Some(trigger) => trigger,
                None => return,
            },
            _ = stopped(&mut shutdown) => return,
        };
        tokio::time::sleep(DEBOUNCE).await;
        let mut trigger = trigger;
        while let Ok(later) = triggers.try_recv() {
            trigger = if later == Trigger::Signal { later } else { trigger };
        }
        reload(&gateway, trigger).await;
    }
}
