//! The reload audit: what each applied reload changed, and the last refused one, for
//! `/admin/config` and the log.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::snapshot::{Route, Snapshot};

/// Applied changes kept for `/admin/config`.
pub const HISTORY: usize = 20;

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
    /// Why, in words, when the change has a reason (a ramp's evidence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
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

impl ReloadState {
    /// Records an applied reload: the last error is cleared and the change kept.
    pub(crate) fn record_applied(&self, applied: AppliedChange) {
        *lock(&self.last_error) = None;
        let mut history = lock(&self.history);
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(applied);
    }

    /// Records a refused reload, shown until a good (or reverted) file loads.
    pub(crate) fn record_refused(&self, failure: ReloadFailure) {
        *lock(&self.last_error) = Some(failure);
    }

    /// The file on disk is what is serving again: the last error no longer describes it.
    pub(crate) fn clear_error(&self) {
        *lock(&self.last_error) = None;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one assignment or push; poisoning cannot leave bad state.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Now, as an HTTP date and as seconds since the Unix epoch.
pub(crate) fn now() -> (String, u64) {
    let now = SystemTime::now();
    (httpdate::fmt_http_date(now), now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// What changed between two snapshots, per route, upstream, `[auth]` and `[server]`.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut changes = Vec::new();
    let change = |subject: &str, change: &str, from: Option<String>, to: Option<String>| Change {
        detail: None,
        subject: subject.to_owned(),
        change: change.to_owned(),
        from,
        to,
    };
    let (old_routes, new_routes) = (routes_by_name(old), routes_by_name(new));
    for (name, route) in &new_routes {
        let subject = format!("route {name}");
        let Some(before) = old_routes.get(name) else {
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
            ("auth", auth_mode(before), auth_mode(route)),
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
            let keys_changed = !before.verifier().keys().same_sources(after.verifier().keys());
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

fn routes_by_name(snapshot: &Snapshot) -> BTreeMap<String, &Route> {
    snapshot.routes.iter().filter(|r| r.prefix.is_some()).map(|r| (r.name.to_string(), r)).collect()
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

fn auth_mode(route: &Route) -> String {
    format!("{:?}", route.auth).to_lowercase()
}

fn describe_route(route: &Route) -> String {
    format!(
        "{} -> {} at {}",
        route.prefix.as_deref().unwrap_or(""),
        upstream_name(route.service.as_ref()),
        percent(route)
    )
}
