//! `gateway check NEW --against OLD`: what an edit does to users, before it is applied.
//!
//! Buckets are fixed per (route name, sticky key), so moving the dial from p1 to p2 moves
//! exactly the buckets between them, and only one way. Renaming a route or changing its
//! sticky key changes every user's bucket: that reshuffles users, and is a warning. A
//! change to the path the service receives (`service_prefix`) is named too: it is found
//! by running both configs' `upstream_exchange` plugins on the route's prefix.
//!
//! A route with a guarded ramp gets its plan: each step's dial and the buckets it moves
//! (monolith -> service, never back while it climbs), and whether a running ramp keeps its
//! position across the edit.

use std::collections::BTreeMap;

use gateway_plugin_api::Target;
use gateway_plugin_ramp::{RampPlan, pct};
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
                lines.extend(ramp_change(route, Some(old_route)));
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
                lines.extend(ramp_change(route, None));
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

/// Most steps a ramp preview lists one by one; a longer ramp shows its first and last.
const LISTED_STEPS: usize = 20;

/// What the edit does to `route`'s ramp (`old` is the same route in the current file).
fn ramp_change(route: &Route, old: Option<&Route>) -> Vec<String> {
    let name = &route.name;
    let old_plan = old.and_then(|r| r.ramp.as_ref()).map(|ramp| ramp.plan());
    let Some(plan) = route.ramp.as_ref().map(|ramp| ramp.plan()) else {
        return match old_plan {
            Some(before) => vec![format!(
                "warning: {name}: ramp removed: the dial is rollout_percent ({}) again; users a running ramp \
                 had moved past it go back to the monolith",
                pct(route.policy.as_ref().map_or(before.start, |p| p.percent.buckets())),
            )],
            None => Vec::new(),
        };
    };
    let mut lines = Vec::new();
    match &old_plan {
        Some(before) if before.keeps_position_under(&plan) => {
            lines.push(format!("{name}: ramp unchanged: a running ramp keeps its position (and a halt)"));
            return lines;
        }
        Some(_) => lines.push(format!(
            "{name}: ramp changed: a running ramp starts over at {} (its position and any halt are dropped)",
            pct(plan.start)
        )),
        None => {}
    }
    let steps = plan.steps();
    lines.push(format!(
        "{name}: ramp {} -> {} in {} step{} of {} on wall-clock multiples of {} s; each step needs {} service \
         requests no worse than the monolith (errors at most +{} points, p99 at most {}x), else {}",
        pct(plan.start),
        pct(plan.to),
        steps.len(),
        if steps.len() == 1 { "" } else { "s" },
        pct(plan.step),
        plan.every_seconds,
        plan.min_requests,
        plan.max_error_rate_increase,
        plan.max_p99_ratio,
        plan.on_fail.as_str(),
    ));
    lines.extend(ramp_steps(&plan, &steps));
    let has_segments = route.policy.as_ref().is_some_and(|p| !p.segments.is_empty());
    if plan.start == 0 && !has_segments {
        lines.push(format!(
            "warning: {name}: the ramp starts at 0% and the route has no segments: the service gets no requests, \
             so the first step waits for its {} forever (start at a small rollout_percent or add a segment)",
            plan.min_requests
        ));
    }
    lines
}

/// "  step 3 (10% -> 15%): buckets [1000, 1500) move monolith -> service", one per step.
fn ramp_steps(plan: &RampPlan, steps: &[u32]) -> Vec<String> {
    let line = |index: usize| {
        let from = if index == 0 { plan.start } else { steps[index - 1] };
        format!(
            "  step {} ({} -> {}): buckets [{from}, {}) move monolith -> service",
            index + 1,
            pct(from),
            pct(steps[index]),
            steps[index]
        )
    };
    if steps.len() <= LISTED_STEPS {
        return (0..steps.len()).map(line).collect();
    }
    let shown = LISTED_STEPS / 2;
    let mut lines: Vec<String> = (0..shown).map(line).collect();
    lines.push(format!("  ... {} more steps of {} ...", steps.len() - shown - 2, pct(plan.step)));
    lines.extend((steps.len() - 2..steps.len()).map(line));
    lines
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
    fn a_ramp_lists_its_steps_and_the_buckets_each_moves() {
        let plain = config(&route("users", "5", ""));
        let ramp = "ramp = { to = 20.0, step = 5.0, every_seconds = 600, min_requests = 500 }";
        let ramped = config(&route("users", "5", ramp));
        assert_eq!(
            preview(&plain, &ramped)[1..],
            [
                "users: ramp 5% -> 20% in 3 steps of 5% on wall-clock multiples of 600 s; each step needs 500 service \
                 requests no worse than the monolith (errors at most +1 points, p99 at most 1.5x), else rollback",
                "  step 1 (5% -> 10%): buckets [500, 1000) move monolith -> service",
                "  step 2 (10% -> 15%): buckets [1000, 1500) move monolith -> service",
                "  step 3 (15% -> 20%): buckets [1500, 2000) move monolith -> service",
            ]
        );
        assert_eq!(
            preview(&ramped, &ramped)[1],
            "users: ramp unchanged: a running ramp keeps its position (and a halt)"
        );
        let faster = config(&route("users", "5", &ramp.replace("600", "60")));
        assert!(preview(&ramped, &faster)[1].starts_with("users: ramp changed: a running ramp starts over at 5%"));
        let restarted = config(&route("users", "10", ramp));
        assert!(preview(&ramped, &restarted)[1].contains("starts over at 10%"), "a dial change restarts it");
        assert_eq!(
            preview(&ramped, &plain)[1],
            "warning: users: ramp removed: the dial is rollout_percent (5%) again; users a running ramp had moved \
             past it go back to the monolith"
        );
    }

    #[test]
    fn a_long_ramp_is_shortened_and_a_ramp_from_zero_without_segments_warns() {
        let from_zero = config(&route(
            "users",
            "0",
            "ramp = { to = 100.0, step = 1.0, every_seconds = 60, min_requests = 10, on_fail = \"hold\" }",
        ));
        let lines = preview(&config(""), &from_zero);
        assert_eq!(lines.len(), 1 + 1 + 10 + 1 + 2 + 1, "{lines:#?}");
        assert!(lines[1].contains("0% -> 100% in 100 steps of 1%") && lines[1].ends_with("else hold"));
        assert_eq!(lines[12], "  ... 88 more steps of 1% ...");
        assert_eq!(lines[14], "  step 100 (99% -> 100%): buckets [9900, 10000) move monolith -> service");
        assert!(lines[15].starts_with("warning: users: the ramp starts at 0% and the route has no segments"));
        let with_segment = config(&route(
            "users",
            "0",
            "segments = [\"beta\"]\nramp = { to = 100.0, step = 50.0, every_seconds = 60, min_requests = 10 }",
        ));
        assert!(!preview(&config(""), &with_segment).iter().any(|l| l.starts_with("warning")), "beta testers feed it");
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
