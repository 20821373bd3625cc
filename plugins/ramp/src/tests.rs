use gateway_plugin_api::config::Section;
use toml::de::DeValue;

use super::*;

fn info(rollout_percent: f64, sticky: bool) -> RouteInfo<'static> {
    RouteInfo {
        id: RouteId(0),
        name: "users",
        prefix: "/api/users",
        claim_headers: &[],
        checks_tokens: true,
        rollout_percent,
        sticky,
        name_span: 0..0,
    }
}

fn compile(text: &str, rollout_percent: f64, sticky: bool) -> Result<RouteRampConfig, Vec<String>> {
    let value = DeValue::parse(text).expect("test values are TOML");
    let mut errors = ConfigErrors::default();
    let sections = RouteSections::new().with(ROUTE_KEY, Section::new(value));
    let compiled = RampPolicy.compile_route(&info(rollout_percent, sticky), sections, &mut errors);
    let problems: Vec<String> =
        errors.into_problems().into_iter().map(|(span, message)| format!("{}: {message}", &text[span])).collect();
    match compiled {
        Some(compiled) if problems.is_empty() => Ok(compiled),
        _ => Err(problems),
    }
}

#[test]
fn a_ramp_starts_at_the_routes_dial_with_defaults() {
    let ramp = compile("{ to = 100.0, step = 5.0, every_seconds = 600 }", 5.0, true).unwrap();
    assert_eq!(
        ramp.plan,
        RampPlan {
            start: 500,
            to: 10_000,
            step: 500,
            every_seconds: 600,
            min_requests: 100,
            max_error_rate_increase: 1.0,
            max_p99_ratio: 1.5,
            on_fail: OnFail::Rollback
        }
    );
    let hold = compile(
        r#"{ to = 50.0, step = 2.5, every_seconds = 10, min_requests = 20, max_error_rate_increase = 0.5, max_p99_ratio = 2.0, on_fail = "hold" }"#,
        0.0,
        true,
    )
    .unwrap();
    assert_eq!((hold.plan.start, hold.plan.step, hold.plan.on_fail), (0, 250, OnFail::Hold));
    assert_eq!((hold.plan.min_requests, hold.plan.max_error_rate_increase, hold.plan.max_p99_ratio), (20, 0.5, 2.0));
}

#[test]
fn problems_point_at_their_values() {
    let problems = compile(
        r#"{ to = 100.5, step = 0.001, every_seconds = 0, min_requests = 0, max_error_rate_increase = -1.0, max_p99_ratio = 0.5, on_fail = "panic" }"#,
        5.0,
        true,
    )
    .unwrap_err();
    assert_eq!(problems.len(), 7, "{problems:#?}");
    assert!(problems[0].starts_with("100.5: to must be 0 to 100"), "{problems:#?}");
    assert!(problems[1].starts_with("0.001: step must be 0 to 100 in steps of 0.01"), "{problems:#?}");
    assert!(problems[2].starts_with("0: every_seconds must be 1 to 86400"), "{problems:#?}");
    assert!(problems[3].starts_with("0: min_requests must be at least 1"), "{problems:#?}");
    assert!(problems[4].starts_with("-1.0: max_error_rate_increase must be 0 to 100"), "{problems:#?}");
    assert!(problems[5].starts_with("0.5: max_p99_ratio must be at least 1.0"), "{problems:#?}");
    assert!(problems[6].starts_with("\"panic\": on_fail must be"), "{problems:#?}");
}

#[test]
fn a_ramp_must_go_up_and_needs_a_sticky_key() {
    let down = compile("{ to = 5.0, step = 5.0, every_seconds = 60 }", 25.0, true).unwrap_err();
    assert_eq!(down, ["5.0: to (5%) must be above the route's rollout_percent (25%), where the ramp starts"]);
    let keyless = compile("{ to = 50.0, step = 5.0, every_seconds = 60 }", 0.0, false).unwrap_err();
    assert!(keyless[0].contains("need a sticky key"), "{keyless:?}");
    let unknown = compile("{ to = 50.0, step = 5.0, every_seconds = 60, speed = 2 }", 0.0, true).unwrap_err();
    assert!(unknown[0].contains("unknown field `speed`"), "{unknown:?}");
}

fn plugin(text: &str, rollout_percent: f64, previous: Option<&RampPlugin>) -> RampPlugin {
    let mut routes = PerRoute::new(2);
    routes.set(RouteId(0), compile(text, rollout_percent, true).expect("valid"));
    RampPolicy.build(routes, previous).expect("a route ramps")
}

#[test]
fn a_reload_keeps_the_position_unless_the_dial_or_the_ramp_changed() {
    let first = plugin("{ to = 100.0, step = 5.0, every_seconds = 1 }", 5.0, None);
    let ramp = first.route(RouteId(0)).unwrap();
    let evidence = Evidence {
        service: SideEvidence { requests: 500, errors: 0, p99_ms: Some((1.0, 2.5)) },
        monolith: SideEvidence { requests: 500, errors: 0, p99_ms: Some((1.0, 2.5)) },
    };
    let later = ramp.step_started() + 5;
    assert_eq!(ramp.tick(later, &evidence).map(|e| e.kind), Some(EventKind::Advance));
    assert_eq!(ramp.effective(), 1000);
    let same = plugin("{ to = 100.0, step = 5.0, every_seconds = 1 }", 5.0, Some(&first));
    assert_eq!(same.route(RouteId(0)).unwrap().effective(), 1000, "an unrelated reload keeps the position");
    let new_ramp = plugin("{ to = 100.0, step = 10.0, every_seconds = 1 }", 5.0, Some(&same));
    assert_eq!(new_ramp.route(RouteId(0)).unwrap().effective(), 500, "a changed ramp starts over");
    let new_dial = plugin("{ to = 100.0, step = 10.0, every_seconds = 1 }", 20.0, Some(&new_ramp));
    assert_eq!(new_dial.route(RouteId(0)).unwrap().effective(), 2000, "a changed dial starts over from it");
    let status = new_dial.route(RouteId(0)).unwrap().status();
    assert_eq!((status.state, status.effective_percent, status.to_percent), ("climbing", 20.0, 100.0));
    assert!(status.next_step_at_unix.is_some() && status.last_event.is_none());
}
