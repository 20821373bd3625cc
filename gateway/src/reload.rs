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
//!    changed per route and upstream (the last [`HISTORY`] are kept for `/admin/config`).
//! 5. Invalid: nothing changes. The error (with line and column) is logged, counted, and
//!    shown on `/admin/config` until a good file loads.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_plugin_metrics::names;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::server::{Gateway, stopped};
use crate::snapshot::{Route, Snapshot};

/// Quiet period before a reload: editors and ConfigMap swaps write in bursts.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// Applied changes kept for `/admin/config`.
pub const HISTORY: usize = 20;

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Something changed in the config file's directory.
    FileChanged,
    /// SIGHUP.
    Signal,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChanged => "file-changed",
            Trigger::Signal => "sighup",
        }
    }
}

/// One thing a reload changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// What changed: `route users`, `upstream orders`, `auth`, `server`.
    pub subject: String,
    /// How: `added`, `removed`, `dial`, `url`, ...
    pub change: String,
    /// Before, when there was a before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// After, when there is an after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// An applied reload, as kept on `/admin/config`.
#[derive(Clone, Debug, Serialize)]
pub struct AppliedChange {
    /// The new version.
    pub version: u64,
    /// SHA-256 of the new file.
    pub checksum: String,
    /// When it was applied (HTTP date).
    pub at: String,
    /// What started it.
    pub trigger: &'static str,
    /// What changed.
    pub changes: Vec<Change>,
}

/// A refused reload, as shown on `/admin/config` until a good file loads.
#[derive(Clone, Debug, Serialize)]
pub struct ReloadFailure {
    /// Every error, `FILE:LINE:COL: key: message`, one per line.
    pub message: String,
    /// When (HTTP date).
    pub at: String,
    /// When (seconds since the Unix epoch).
    pub at_unix: u64,
}

/// Reload bookkeeping shared with the admin listener.
#[derive(Debug, Default)]
pub struct ReloadState {
    last_error: Mutex<Option<ReloadFailure>>,
    history: Mutex<VecDeque<AppliedChange>>,
}

impl ReloadState {
    /// The last refused reload, if no good file has loaded since.
    pub fn last_error(&self) -> Option<ReloadFailure> {
        lock(&self.last_error).clone()
    }

    /// Applied changes, newest first.
    pub fn history(&self) -> Vec<AppliedChange> {
        lock(&self.history).iter().rev().cloned().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one assignment or push; poisoning cannot leave bad state.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now() -> (String, u64) {
    let now = SystemTime::now();
    (httpdate::fmt_http_date(now), now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// What one reload attempt did.
#[derive(Debug)]
pub enum Outcome {
    /// A new snapshot is serving.
    Applied {
        /// Its version.
        version: u64,
        /// What changed.
        changes: Vec<Change>,
    },
    /// The file is byte for byte what is already serving.
    Unchanged,
    /// The file was refused; the old snapshot keeps serving.
    Refused(String),
}

/// Reads the config file again and swaps it in if it is valid.
pub async fn reload(gateway: &Gateway, trigger: Trigger) -> Outcome {
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
            *lock(&state.last_error) = None;
            {
                let mut history = lock(&state.history);
                if history.len() == HISTORY {
                    history.pop_front();
                }
                history.push_back(applied.clone());
            }
            tracing::info!(
                audit = true,
                version,
                checksum = %applied.checksum,
                trigger = trigger.as_str(),
                changes = %serde_json::to_string(&changes).unwrap_or_default(),
                "config applied"
            );
            Outcome::Applied { version, changes }
        }
        Ok(Ok(None)) => {
            // Back to what is serving (for example a broken edit reverted): nothing to swap,
            // and the last error no longer describes the file.
            *lock(&state.last_error) = None;
            tracing::debug!(trigger = trigger.as_str(), "config file unchanged");
            Outcome::Unchanged
        }
        Ok(Err(error)) => refuse(state, trigger, error.to_string()),
        Err(join) => refuse(state, trigger, format!("the reload task failed: {join}")),
    }
}

fn refuse(state: &ReloadState, trigger: Trigger, message: String) -> Outcome {
    metrics::counter!(names::CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
    tracing::error!(trigger = trigger.as_str(), error = %message, "config refused; the running config keeps serving");
    let (at, at_unix) = now();
    *lock(&state.last_error) = Some(ReloadFailure { message: message.clone(), at, at_unix });
    Outcome::Refused(message)
}

/// Starts the reloader: a task that debounces triggers and reloads, and a watcher on the
/// config file's directory. Returns the sender for other triggers (SIGHUP) and the
/// watcher, which stops watching when dropped.
pub fn start(
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
) -> (mpsc::Sender<Trigger>, Option<notify::RecommendedWatcher>) {
    // One pending trigger is enough: a reload reads the whole file anyway.
    let (sender, receiver) = mpsc::channel(1);
    let watcher = watch_directory(&gateway.snapshot().meta.source, sender.clone());
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

/// Watches the directory, not the file: a rename-save or a symlink swap replaces the
/// file's inode, which a watch on the file itself would lose.
fn watch_directory(config: &Path, triggers: mpsc::Sender<Trigger>) -> Option<notify::RecommendedWatcher> {
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

// === audit ===

/// What changed between two snapshots, per route, upstream, `[auth]` and `[server]`.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut changes = Vec::new();
    let change = |subject: &str, change: &str, from: Option<String>, to: Option<String>| Change {
        subject: subject.to_owned(),
        change: change.to_owned(),
        from,
        to,
    };
    let (old_routes, new_routes) = (routes_by_name(old), routes_by_name(new));
    for (name, (new_index, route)) in &new_routes {
        let subject = format!("route {name}");
        let Some((old_index, before)) = old_routes.get(name) else {
            changes.push(change(&subject, "added", None, Some(describe_route(route))));
            continue;
        };
        let pairs = [
            ("prefix", before.prefix.clone().unwrap_or_default(), route.prefix.clone().unwrap_or_default()),
            ("service", upstream_name(before.service.as_ref()), upstream_name(route.service.as_ref())),
            ("monolith", before.monolith.name.to_string(), route.monolith.name.to_string()),
            ("dial", percent(before), percent(route)),
            ("sticky", sticky(before), sticky(route)),
            ("segments", segments(before), segments(route)),
            ("auth", auth_mode(old, *old_index), auth_mode(new, *new_index)),
        ];
        for (what, from, to) in pairs {
            if from != to {
                changes.push(change(&subject, what, Some(from), Some(to)));
            }
        }
    }
    for name in old_routes.keys().filter(|name| !new_routes.contains_key(*name)) {
        changes.push(change(&format!("route {name}"), "removed", None, None));
    }
    for (name, upstream) in &new.upstreams {
        let subject = format!("upstream {name}");
        match old.upstreams.get(name) {
            None => changes.push(change(&subject, "added", None, Some(upstream.settings.url.clone()))),
            Some(before) if before.settings.url != upstream.settings.url => changes.push(change(
                &subject,
                "url",
                Some(before.settings.url.clone()),
                Some(upstream.settings.url.clone()),
            )),
            Some(before) if before.settings != upstream.settings => {
                changes.push(change(&subject, "timeouts or pool", None, None))
            }
            Some(_) => {}
        }
    }
    for name in old.upstreams.keys().filter(|name| !new.upstreams.contains_key(*name)) {
        changes.push(change(&format!("upstream {name}"), "removed", None, None));
    }
    match (&old.auth, &new.auth) {
        (None, Some(_)) => changes.push(change("auth", "added", None, None)),
        (Some(_), None) => changes.push(change("auth", "removed", None, None)),
        (Some(before), Some(after)) if !Arc::ptr_eq(before, after) => {
            let keys_changed = before.verifier().keys().fingerprint() != after.verifier().keys().fingerprint();
            let what = if keys_changed { "keys changed; verified-token cache cleared" } else { "settings changed" };
            changes.push(change("auth", what, None, None));
        }
        _ => {}
    }
    let default_upstream = |s: &Snapshot| s.default_route().monolith.name.to_string();
    if default_upstream(old) != default_upstream(new) {
        changes.push(change("server", "default_upstream", Some(default_upstream(old)), Some(default_upstream(new))));
    }
    if old.server != new.server {
        changes.push(change("server", "settings", None, None));
    }
    changes
}

fn routes_by_name(snapshot: &Snapshot) -> BTreeMap<String, (usize, &Route)> {
    snapshot.routes.iter().filter(|r| r.prefix.is_some()).map(|r| (r.name.to_string(), (r.id.0, r))).collect()
}

fn upstream_name(upstream: Option<&Arc<crate::upstream::Upstream>>) -> String {
    upstream.map(|u| u.name.to_string()).unwrap_or_default()
}

fn percent(route: &Route) -> String {
    route.policy.as_ref().map(|p| p.percent.to_string()).unwrap_or_default()
}

fn sticky(route: &Route) -> String {
    route.policy.as_ref().and_then(|p| p.sticky.as_ref()).map(ToString::to_string).unwrap_or_default()
}

fn segments(route: &Route) -> String {
    route
        .policy
        .as_ref()
        .map(|p| p.segments.iter().map(|s| &*s.name).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn auth_mode(snapshot: &Snapshot, index: usize) -> String {
    snapshot.auth_modes.get(index).map(|m| format!("{m:?}").to_lowercase()).unwrap_or_default()
}

fn describe_route(route: &Route) -> String {
    format!(
        "{} -> {} at {}",
        route.prefix.as_deref().unwrap_or(""),
        upstream_name(route.service.as_ref()),
        percent(route)
    )
}
