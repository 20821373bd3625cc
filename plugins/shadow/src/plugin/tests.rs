use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use gateway_plugin_api::config::RoutePolicy;
use gateway_plugin_api::side::SideFuture;
use http::StatusCode;

use super::*;
use crate::policy::ShadowPolicy;

fn config(text: &str) -> RouteShadow {
    crate::policy::tests::compile_text(text).expect("valid")
}

fn plugin(text: &str, previous: Option<&ShadowPlugin>) -> ShadowPlugin {
    let mut routes = PerRoute::new(2);
    routes.set(RouteId(0), config(text));
    ShadowPolicy.build(routes, previous).expect("a route uses it")
}

fn ctx() -> RequestCtx {
    let mut ctx = RequestCtx::new(HeaderValue::from_static("req-1"), Duration::ZERO);
    ctx.route = Some(RouteId(0));
    ctx.path = "/api/users/7".to_owned();
    ctx
}

fn head(method: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut builder = Request::builder().method(method).uri("/api/users/7?token=abc");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("valid").into_parts().0
}

/// Runs a future that never waits on I/O (every test future is ready at once).
fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the test's futures are all ready"),
    }
}

/// Sides that answer from a script and remember what they were sent.
#[derive(Default)]
struct Script {
    service: Mutex<Vec<SideAnswer>>,
    monolith: Mutex<Vec<SideAnswer>>,
    sent: Mutex<Vec<(Target, Request<Bytes>)>>,
}

impl RouteSides for Script {
    fn send(&self, side: Target, request: Request<Bytes>, _max_body_bytes: usize) -> SideFuture {
        self.sent.lock().unwrap().push((side, request));
        let queue = match side {
            Target::Service => &self.service,
            _ => &self.monolith,
        };
        let answer = queue.lock().unwrap().remove(0);
        Box::pin(async move { answer })
    }
}

fn json(status: u16, body: &str) -> SideAnswer {
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_owned()))
        .expect("valid"))
}

fn primary(status: u16, body: &str) -> PrimaryAnswer {
    let body = Bytes::from(body.to_owned());
    PrimaryAnswer {
        status: StatusCode::from_u16(status).expect("valid"),
        content_type: Some(HeaderValue::from_static("application/json")),
        latency: Duration::from_millis(3),
        body: Box::pin(async move { Ok(body) }),
        request_body: Bytes::new(),
        now: || Duration::from_millis(10),
    }
}

/// Runs one copy of a GET through the plugin: returns what was sent.
fn copy_once(plugin: &ShadowPlugin, monolith: &str, service: SideAnswer, second: Option<SideAnswer>) -> Script {
    let script = Script::default();
    script.service.lock().unwrap().push(service);
    if let Some(second) = second {
        script.monolith.lock().unwrap().push(second);
    }
    let mirror = plugin.mirror(&ctx(), &head("GET", &[])).expect("copied");
    run(mirror.start(primary(200, monolith), &script));
    script
}

#[test]
fn the_dial_picks_exactly_its_share_in_arrival_order() {
    for (percent, picked) in [("100.0", 1000), ("10.0", 100), ("2.5", 25), ("0.0", 0), ("0.01", 0)] {
        let plugin = plugin(&format!("{{ percent = {percent}, max_in_flight = 10000 }}"), None);
        let mirrors: Vec<_> = (0..1000).filter_map(|_| plugin.mirror(&ctx(), &head("GET", &[]))).collect();
        assert_eq!(mirrors.len(), picked, "{percent}%");
    }
}

#[test]
fn only_listed_methods_are_copied() {
    let reads = plugin("{ percent = 100.0 }", None);
    assert!(reads.mirror(&ctx(), &head("GET", &[])).is_some());
    assert!(reads.mirror(&ctx(), &head("HEAD", &[])).is_some());
    assert!(reads.mirror(&ctx(), &head("POST", &[])).is_none(), "a POST would run twice");
    assert!(reads.mirror(&ctx(), &head("DELETE", &[])).is_none());
    let posts = plugin(r#"{ percent = 100.0, methods = ["POST"] }"#, None);
    assert!(posts.mirror(&ctx(), &head("POST", &[])).is_some());
    assert!(posts.mirror(&ctx(), &head("GET", &[])).is_none());
    let mut other = ctx();
    other.route = Some(RouteId(1));
    assert!(posts.mirror(&other, &head("POST", &[])).is_none(), "a route without shadow");
}

#[test]
fn copies_beyond_max_in_flight_are_dropped_and_counted() {
    let plugin = plugin("{ percent = 100.0, max_in_flight = 2 }", None);
    let first = plugin.mirror(&ctx(), &head("GET", &[])).expect("room");
    let second = plugin.mirror(&ctx(), &head("GET", &[])).expect("room");
    assert!(plugin.mirror(&ctx(), &head("GET", &[])).is_none());
    assert!(plugin.mirror(&ctx(), &head("GET", &[])).is_none());
    let summary = plugin.summary(RouteId(0)).unwrap();
    assert_eq!((summary.in_flight, summary.dropped), (2, 2));
    drop(first);
    assert!(plugin.mirror(&ctx(), &head("GET", &[])).is_some(), "a finished copy frees its place");
    drop(second);
    assert_eq!(plugin.summary(RouteId(0)).unwrap().in_flight, 0);
}

#[test]
fn the_copy_carries_the_head_and_the_shadow_mark() {
    let plugin = plugin("{ percent = 100.0 }", None);
    let request = head("GET", &[("authorization", "Bearer tok"), ("x-request-id", "req-1")]);
    let mirror = plugin.mirror(&ctx(), &request).expect("copied");
    let script = Script::default();
    script.service.lock().unwrap().push(json(200, "{}"));
    run(mirror.start(primary(200, "{}"), &script));
    let sent = script.sent.lock().unwrap();
    let (side, copy) = &sent[0];
    assert_eq!(*side, Target::Service);
    assert_eq!(copy.uri(), "/api/users/7?token=abc");
    assert_eq!(copy.headers()["authorization"], "Bearer tok");
    assert_eq!(copy.headers()["x-request-id"], "req-1");
    assert_eq!(copy.headers()[SHADOW_HEADER], "1");
}

#[test]
fn a_match_and_a_mismatch_are_reported_by_pointer() {
    let plugin = plugin("{ percent = 100.0 }", None);
    copy_once(&plugin, r#"{"id":7,"name":"Ada"}"#, json(200, r#"{"name":"Ada","id":7}"#), None);
    copy_once(&plugin, r#"{"id":7,"name":"Ada"}"#, json(200, r#"{"id":7,"name":"Eve"}"#), None);
    copy_once(&plugin, r#"{"id":7}"#, json(500, r#"{"error":"boom"}"#), None);
    let summary = plugin.summary(RouteId(0)).unwrap();
    assert_eq!((summary.compared, summary.matched), (3, 1));
    let pointers: Vec<(&str, u64)> =
        summary.mismatched_pointers.iter().map(|p| (p.pointer.as_str(), p.count)).collect();
    assert!(pointers.contains(&("/name", 1)), "{pointers:?}");
    assert!(pointers.contains(&("status", 1)), "{pointers:?}");
    let pairs: Vec<(u16, u16, u64)> = summary.status_pairs.iter().map(|p| (p.monolith, p.service, p.count)).collect();
    assert_eq!(pairs, [(200, 200, 2), (200, 500, 1)]);
    let samples = plugin.samples(RouteId(0)).unwrap();
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].path, "/api/users/7");
    assert_eq!(samples[0].differences[0].pointer, "/name");
    assert_eq!(
        (samples[0].differences[0].primary.as_str(), samples[0].differences[0].shadow.as_str()),
        ("\"Ada\"", "\"Eve\"")
    );
    assert_eq!(summary.monolith_p50_ms.is_some(), summary.service_p99_ms.is_some());
}

#[test]
fn a_copy_without_an_answer_is_an_error_not_a_comparison() {
    let plugin = plugin("{ percent = 100.0 }", None);
    copy_once(&plugin, "{}", Err(SideError::Failed("timed out".into())), None);
    copy_once(&plugin, "{}", Err(SideError::BreakerOpen), None);
    let summary = plugin.summary(RouteId(0)).unwrap();
    assert_eq!((summary.compared, summary.errors, summary.in_flight), (0, 2, 0));
}

#[test]
fn an_oversized_answer_compares_its_head_only() {
    let plugin = plugin("{ percent = 100.0 }", None);
    let too_large = SideError::TooLarge {
        status: StatusCode::OK,
        content_type: Some(HeaderValue::from_static("application/json")),
    };
    copy_once(&plugin, r#"{"a":1}"#, Err(too_large), None);
    let summary = plugin.summary(RouteId(0)).unwrap();
    assert_eq!((summary.compared, summary.matched), (1, 1));
}

#[test]
fn learned_noise_hides_what_the_monolith_itself_changes_and_nothing_else() {
    let plugin = plugin("{ percent = 100.0, learn_noise = true }", None);
    let script = copy_once(
        &plugin,
        r#"{"id":7,"at":"10:00:01","name":"Ada"}"#,
        json(200, r#"{"id":7,"at":"10:00:02","name":"Eve"}"#),
        Some(json(200, r#"{"id":7,"at":"10:00:03","name":"Ada"}"#)),
    );
    assert_eq!(script.sent.lock().unwrap().iter().filter(|(side, _)| *side == Target::Monolith).count(), 1);
    let summary = plugin.summary(RouteId(0)).unwrap();
    assert_eq!(summary.noise_samples, 1);
    assert_eq!(summary.noise_fields.iter().map(|f| f.pointer.as_str()).collect::<Vec<_>>(), ["/at"]);
    let pointers: Vec<&str> = summary.mismatched_pointers.iter().map(|p| p.pointer.as_str()).collect();
    assert_eq!(pointers, ["/name"], "the timestamp is noise, the name is not");
}

#[test]
fn ignore_hides_its_pointers_only() {
    let plugin = plugin(r#"{ percent = 100.0, ignore = ["/at", "/items/*/etag"] }"#, None);
    copy_once(
        &plugin,
        r#"{"at":1,"items":[{"etag":"a","n":1}]}"#,
        json(200, r#"{"at":2,"items":[{"etag":"b","n":1}]}"#),
        None,
    );
    copy_once(
        &plugin,
        r#"{"at":1,"items":[{"etag":"a","n":1}]}"#,
        json(200, r#"{"at":1,"items":[{"etag":"a","n":2}]}"#),
        None,
    );
    let summary = plugin.summary(RouteId(0)).unwrap();
    assert_eq!((summary.compared, summary.matched), (2, 1));
    assert_eq!(summary.mismatched_pointers[0].pointer, "/items/0/n");
}

#[test]
fn samples_never_show_the_callers_secrets() {
    let plugin = plugin("{ percent = 100.0 }", None);
    let request = head("GET", &[("authorization", "Bearer s3cr3t-token"), ("cookie", "theme=dark; session=c00kie")]);
    let mirror = plugin.mirror(&ctx(), &request).expect("copied");
    let script = Script::default();
    script.service.lock().unwrap().push(json(200, r#"{"echo":"Bearer s3cr3t-token","s":"c00kie"}"#));
    run(mirror.start(primary(200, r#"{"echo":"","s":""}"#), &script));
    let samples = plugin.samples(RouteId(0)).unwrap();
    let shown = format!("{samples:?}");
    assert!(!shown.contains("s3cr3t") && !shown.contains("c00kie"), "{shown}");
    assert!(shown.contains(crate::REDACTED), "{shown}");
}

#[test]
fn a_reload_keeps_results_unless_the_comparison_changed() {
    let first = plugin("{ percent = 100.0 }", None);
    copy_once(&first, "{}", json(200, "{}"), None);
    let same = plugin("{ percent = 50.0 }", Some(&first));
    assert_eq!(same.summary(RouteId(0)).unwrap().compared, 1, "a new percent keeps the results");
    assert_eq!(same.summary(RouteId(0)).unwrap().percent, 50.0);
    let changed = plugin(r#"{ percent = 50.0, ignore = ["/x"] }"#, Some(&same));
    assert_eq!(changed.summary(RouteId(0)).unwrap().compared, 0, "a new ignore list starts over");
}

#[test]
fn an_unbuffered_body_drops_the_copy() {
    let plugin = plugin(r#"{ percent = 100.0, methods = ["POST"] }"#, None);
    let mirror = plugin.mirror(&ctx(), &head("POST", &[])).expect("copied");
    assert!(mirror.wants_request_body());
    mirror.skip(MirrorSkipped::BodyNotBuffered);
    let summary = plugin.summary(RouteId(0)).unwrap();
    assert_eq!((summary.dropped, summary.in_flight), (1, 0));
}

#[test]
fn an_incomplete_primary_is_not_compared() {
    let plugin = plugin("{ percent = 100.0 }", None);
    let mirror = plugin.mirror(&ctx(), &head("GET", &[])).expect("copied");
    let script = Script::default();
    script.service.lock().unwrap().push(json(200, "{}"));
    let mut answer = primary(200, "{}");
    answer.body = Box::pin(async { Err(PrimaryBodyError::Incomplete) });
    run(mirror.start(answer, &script));
    let summary = plugin.summary(RouteId(0)).unwrap();
    assert_eq!((summary.compared, summary.errors, summary.in_flight), (0, 0, 0));
}
