//! `gateway check NEW --against OLD`: what an edit does to users, before it is applied.
//!
//! Buckets are fixed per (route name, sticky key), so moving the dial from p1 to p2 moves
//! exactly the buckets between them, and only one way. Renaming a route or changing its
//! sticky key changes every user's bucket: that reshuffles users, and is a warning. A
//! change to the path the service receives (`service_prefix`) is named too: it is found
//! by running both configs' `upstream_exchange` plugins on the route's prefix.

use std::collections::BTreeMap;

use gateway_plugin_api::Target;
use gateway_plugin_rollout::{BasisPoints, RoutePolicy};

use crate::proxy::upstream_target;
use crate::snapshot::{Route, Snapshot};

/// One line per route, in the new file's order, then removed routes.
pub fn preview(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let old_routes = routed(old);
    let new_routes = routed(new);
    let mut lines = Vec::new();
    for route in new.routes.iter().filter(|r| r.prefix.is_some()) {
        let (Some(new_policy), Some(prefix)) = (&route.policy, &route.prefix) else { continue };
        match old_routes.get(&*route.name).and_then(|r| r.policy.as_ref().map(|p| (*r, p))) {
            Some((old_route, old_policy)) => {
                let service_path = service_path_change(old, old_route, new, route);
                lines.push(compare(&route.name, old_route, old_policy, route, new_policy, service_path));
            }
            None => {
                let renamed_from = old_routes
                    .values()
                    .find(|r| r.prefix.as_deref() == Some(prefix.as_str()) && !new_routes.contains_key(&*r.name));
                match renamed_from.and_then(|r| r.policy.as_ref().map(|p| (r, p))) {
                    Some((old_route, old_policy))
                        if !is_partial(old_policy.percent) && !is_partial(new_policy.percent) =>
                    {
                        lines.push(format!(
                            "{}: renamed from {} (same prefix {prefix}); {} -> {}: nobody switches sides",
                            route.name, old_route.name, old_policy.percent, new_policy.percent
                        ))
                    }
                    Some((old_route, old_policy)) => lines.push(format!(
                        "warning: {}: renamed from {} (same prefix {prefix}); the bucket hash includes the route name, \
                         so every user is reshuffled: {} -> {}, about {} of users switch sides",
                        route.name,
                        old_route.name,
                        old_policy.percent,
                        new_policy.percent,
                        share_switching(old_policy.percent, new_policy.percent),
                    )),
                    None => {
                        lines.push(format!("{}: new route {prefix}, {} on the service", route.name, new_policy.percent))
                    }
                }
            }
        }
    }
    for (name, route) in &old_routes {
        let renamed = new.routes.iter().any(|r| r.prefix == route.prefix && !old_routes.contains_key(&*r.name));
        if !new_routes.contains_key(name) && !renamed {
            lines.push(format!(
                "{name}: removed; {} now goes where the remaining routes send it (the monolith unless a shorter prefix matches)",
                route.prefix.as_deref().unwrap_or("?"),
            ));
        }
    }
    if lines.is_empty() {
        lines.push("no routes".to_owned());
    }
    lines
}

fn routed(snapshot: &Snapshot) -> BTreeMap<String, &Route> {
    snapshot.routes.iter().filter(|r| r.prefix.is_some()).map(|r| (r.name.to_string(), r)).collect()
}

/// "service_prefix: the service gets /api/users as /v3/users (was /v2/users)" when the
/// service would receive the route's prefix differently.
fn service_path_change(old: &Snapshot, old_route: &Route, new: &Snapshot, new_route: &Route) -> Option<String> {
    let (Some(old_prefix), Some(new_prefix)) = (&old_route.prefix, &new_route.prefix) else { return None };
    let before = upstream_target(old, old_route, Target::Service, old_prefix);
    let after = upstream_target(new, new_route, Target::Service, new_prefix);
    (before != after).then(|| format!("service_prefix: the service gets {new_prefix} as {after} (was {before})"))
}

fn compare(
    name: &str,
    old_route: &Route,
    old: &RoutePolicy,
    new_route: &Route,
    new: &RoutePolicy,
    service_path: Option<String>,
) -> String {
    let mut notes = Vec::new();
    if old_route.prefix != new_route.prefix {
        notes.push(format!(
            "prefix {} -> {}",
            old_route.prefix.as_deref().unwrap_or("?"),
            new_route.prefix.as_deref().unwrap_or("?")
        ));
    }
    let old_segments: Vec<&str> = old.segments.iter().map(|s| &*s.name).collect();
    let new_segments: Vec<&str> = new.segments.iter().map(|s| &*s.name).collect();
    for added in new_segments.iter().filter(|s| !old_segments.contains(s)) {
        notes.push(format!("segment {added} added: its members always get the service"));
    }
    for removed in old_segments.iter().filter(|s| !new_segments.contains(s)) {
        notes.push(format!("segment {removed} removed: its members follow the dial"));
    }
    notes.extend(service_path);
    let suffix = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };

    let sticky = |p: &RoutePolicy| p.sticky.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string);
    if old.sticky != new.sticky && (is_partial(old.percent) || is_partial(new.percent)) {
        return format!(
            "warning: {name}: sticky {} -> {}: every user gets a new bucket, so users are reshuffled: {} -> {}, \
             about {} of users switch sides{suffix}",
            sticky(old),
            sticky(new),
            old.percent,
            new.percent,
            share_switching(old.percent, new.percent),
        );
    }
    let (from, to) = (old.percent, new.percent);
    if from == to {
        return format!("{name}: {from} unchanged; nobody moves{suffix}");
    }
    let (low, high) = (from.min(to), from.max(to));
    let moved = format!("{}", BasisPoints::from_percent(high.percent() - low.percent()).unwrap_or(high));
    if to > from {
        format!(
            "{name}: {from} -> {to}: buckets [{}, {}) move monolith -> service, about {} of users; nobody moves back{suffix}",
            low.buckets(),
            high.buckets(),
            trim_percent(&moved),
        )
    } else {
        format!(
            "warning: {name}: {from} -> {to}: buckets [{}, {}) move service -> monolith, about {} of users; \
             nobody moves the other way{suffix}",
            low.buckets(),
            high.buckets(),
            trim_percent(&moved),
        )
    }
}

/// A dial strictly between 0% and 100%, where buckets decide.
fn is_partial(percent: BasisPoints) -> bool {
    percent != BasisPoints::ZERO && percent != BasisPoints::ALL
}

/// Expected share of users whose side differs between two independent draws at p1 and
/// p2: p1(1-p2) + p2(1-p1).
fn share_switching(p1: BasisPoints, p2: BasisPoints) -> String {
    let (a, b) = (p1.percent() / 100.0, p2.percent() / 100.0);
    format!("{:.1}%", (a * (1.0 - b) + b * (1.0 - a)) * 100.0)
}

/// "25.00%" -> "25%", "12.50%" -> "12.5%".
fn trim_percent(text: &str) -> String {
    let number = text.trim_end_matches('%');
    let trimmed = if number.contains('.') { number.trim_end_matches('0').trim_end_matches('.') } else { number };
    format!("{trimmed}%")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(routes: &str) -> Snapshot {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndefault_upstream = \"monolith\"\n\
             [upstreams.monolith]\nurl = \"http://127.0.0.1:1\"\n[upstreams.users]\nurl = \"http://127.0.0.1:2\"\n\
             [segments.beta]\nheader = \"x-beta\"\nequals = \"1\"\n{routes}"
        );
        crate::config::compile(Path::new("routes.toml"), &text, 1).unwrap_or_else(|e| panic!("{e}"))
    }

    fn route(name: &str, percent: &str, extra: &str) -> String {
        format!(
            "[[routes]]\nname = \"{name}\"\nprefix = \"/api/users\"\nservice = \"users\"\n\
             sticky = \"header:x-user\"\nrollout_percent = {percent}\n{extra}\n"
        )
    }

    #[test]
    fn raising_and_lowering_the_dial_name_the_buckets_that_move() {
        let at25 = config(&route("users", "25", ""));
        let at50 = config(&route("users", "50", ""));
        assert_eq!(
            preview(&at25, &at50),
            [
                "users: 25.00% -> 50.00%: buckets [2500, 5000) move monolith -> service, about 25% of users; nobody moves back"
            ]
        );
        assert_eq!(
            preview(&at50, &at25),
            ["warning: users: 50.00% -> 25.00%: buckets [2500, 5000) move service -> monolith, about 25% of users; \
                 nobody moves the other way"]
        );
        assert_eq!(preview(&at25, &at25), ["users: 25.00% unchanged; nobody moves"]);
        let at_12_5 = config(&route("users", "12.5", ""));
        assert!(
            preview(&at_12_5, &at25)[0].contains("buckets [1250, 2500) move monolith -> service, about 12.5% of users")
        );
    }

    #[test]
    fn renames_and_sticky_changes_warn_that_users_are_reshuffled() {
        let old = config(&route("users", "25", ""));
        let renamed = config(&route("users-v2", "25", ""));
        let lines = preview(&old, &renamed);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("warning: users-v2: renamed from users (same prefix /api/users)"), "{lines:?}");
        assert!(
            lines[0].contains("about 37.5% of users switch sides"),
            "two independent 25% draws differ 37.5% of the time"
        );
        let resticked = config(&route("users", "25", "").replace("header:x-user", "cookie:uid"));
        assert!(preview(&old, &resticked)[0].starts_with("warning: users: sticky header:x-user -> cookie:uid"));
    }

    #[test]
    fn new_removed_and_segment_changes_are_listed() {
        let none = config("");
        let one = config(&route("users", "10", "segments = [\"beta\"]"));
        assert_eq!(preview(&none, &one), ["users: new route /api/users, 10.00% on the service"]);
        assert!(
            preview(&one, &none)[0]
                .starts_with("users: removed; /api/users now goes where the remaining routes send it")
        );
        let without_beta = config(&route("users", "10", ""));
        assert!(preview(&one, &without_beta)[0].contains("segment beta removed: its members follow the dial"));
    }

    #[test]
    fn a_changed_service_prefix_is_named() {
        let plain = config(&route("users", "10", ""));
        let v2 = config(&route("users", "10", "service_prefix = \"/v2/users\""));
        let v3 =
            config(&route("users", "10", "service_prefix = \"/v3/users\"\nrequest_headers = { remove = [\"x-a\"] }"));
        assert_eq!(
            preview(&v2, &v3),
            [
                "users: 10.00% unchanged; nobody moves (service_prefix: the service gets /api/users as /v3/users (was /v2/users))"
            ]
        );
        assert!(preview(&plain, &v2)[0].contains("the service gets /api/users as /v2/users (was /api/users)"));
        assert!(preview(&v2, &plain)[0].contains("the service gets /api/users as /api/users (was /v2/users)"));
        assert_eq!(preview(&v2, &v2), ["users: 10.00% unchanged; nobody moves"], "an unchanged prefix says nothing");
    }
}
