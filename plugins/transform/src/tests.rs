use gateway_plugin_api::config::Section;
use gateway_plugin_api::{RouteId, Target};
use http::HeaderName;
use http::header::HeaderValue;

use super::*;

static CLAIM_HEADERS: [HeaderName; 1] = [HeaderName::from_static("x-user-id")];

fn info() -> RouteInfo<'static> {
    RouteInfo {
        id: RouteId(0),
        name: "users",
        prefix: "/api/users",
        claim_headers: &CLAIM_HEADERS,
        checks_tokens: true,
        rollout_percent: 100.0,
        sticky: true,
        name_span: 0..0,
    }
}

/// Compiles a route's transform keys, given as `key = value` lines; problems come with
/// the text their span covers.
fn compile(lines: &str) -> Result<RouteTransform, Vec<(String, String)>> {
    let document = toml::de::DeTable::parse(lines).expect("test lines are TOML");
    let mut sections = RouteSections::new();
    for (key, value) in document.into_inner() {
        let key = *TransformPolicy::ROUTE_KEYS.iter().find(|k| **k == key.get_ref().as_ref()).expect("a transform key");
        sections = sections.with(key, Section::new(value));
    }
    let mut errors = ConfigErrors::default();
    let compiled = TransformPolicy.compile_route(&info(), sections, &mut errors);
    let problems: Vec<(String, String)> =
        errors.into_problems().into_iter().map(|(span, message)| (lines[span].to_owned(), message)).collect();
    match compiled {
        Some(transform) if problems.is_empty() => Ok(transform),
        _ => Err(problems),
    }
}

fn plugin(lines: &str) -> Transforms {
    let mut routes = PerRoute::new(2);
    routes.set(RouteId(0), compile(lines).expect("valid"));
    TransformPolicy.build(routes, None).expect("a route uses it")
}

fn request(target: &str) -> http::request::Parts {
    http::Request::builder()
        .uri(target)
        .header("x-debug", "1")
        .header("x-migrated-by", "client")
        .header("accept", "*/*")
        .body(())
        .expect("valid request")
        .into_parts()
        .0
}

fn ctx(route: usize) -> RequestCtx {
    let mut ctx = RequestCtx::new(HeaderValue::from_static("id"), std::time::Duration::ZERO);
    ctx.route = Some(RouteId(route));
    ctx
}

const FULL: &str = r#"
service_prefix = "/v2/users"
request_headers = { set = { "X-Migrated-By" = "gateway" }, remove = ["x-debug"] }
response_headers = { set = { "cache-control" = "no-store" }, remove = ["server"] }
"#;

#[test]
fn every_key_compiles() {
    let transform = compile(FULL).expect("valid");
    assert_eq!(transform.service_prefix.as_ref().map(ServicePrefix::replacement), Some("/v2/users"));
    assert_eq!(
        transform.request_headers.set(),
        [(HeaderName::from_static("x-migrated-by"), HeaderValue::from_static("gateway"))]
    );
    assert_eq!(transform.request_headers.remove(), [HeaderName::from_static("x-debug")]);
    assert_eq!(transform.response_headers.remove(), [HeaderName::from_static("server")]);
    let only_prefix = compile("service_prefix = \"/\"").expect("valid");
    assert!(only_prefix.request_headers.is_empty() && only_prefix.response_headers.is_empty());
}

#[test]
fn the_service_side_gets_the_rewrite_and_both_sides_the_edits() {
    let plugin = plugin(FULL);
    assert_eq!(plugin.name(), "transform");
    let ctx = ctx(0);
    let mut service = request("/api/users/7?fields=name");
    plugin.upstream_exchange(&ctx, &Exchange { route: RouteId(0), side: Target::Service }, &mut service);
    assert_eq!(service.uri, "/v2/users/7?fields=name");
    assert_eq!(service.headers["x-migrated-by"], "gateway");
    assert!(!service.headers.contains_key("x-debug"));
    assert_eq!(service.headers["accept"], "*/*", "other headers are left alone");

    let mut monolith = request("/api/users/7?fields=name");
    plugin.upstream_exchange(&ctx, &Exchange { route: RouteId(0), side: Target::Monolith }, &mut monolith);
    assert_eq!(monolith.uri, "/api/users/7?fields=name", "the monolith gets the path as matched");
    assert_eq!(monolith.headers["x-migrated-by"], "gateway");
    assert!(!monolith.headers.contains_key("x-debug"));

    // A replay runs the edits again on the same headers: nothing more changes.
    let before = monolith.headers.clone();
    plugin.upstream_exchange(&ctx, &Exchange { route: RouteId(0), side: Target::Monolith }, &mut monolith);
    assert_eq!(monolith.headers, before);

    let mut other_route = request("/api/users/7");
    plugin.upstream_exchange(&ctx, &Exchange { route: RouteId(1), side: Target::Service }, &mut other_route);
    assert_eq!(other_route.uri, "/api/users/7", "a route without transforms is untouched");
    assert!(other_route.headers.contains_key("x-debug"));
}

#[test]
fn responses_of_the_route_get_their_edits() {
    let plugin = plugin(FULL);
    let response = || {
        http::Response::builder()
            .header("server", "monolith/1.0")
            .header("cache-control", "max-age=60")
            .header("content-type", "application/json")
            .body(())
            .expect("valid response")
            .into_parts()
            .0
    };
    let mut edited = response();
    plugin.on_response(&ctx(0), &mut edited);
    assert!(!edited.headers.contains_key("server"));
    assert_eq!(edited.headers["cache-control"], "no-store");
    assert_eq!(edited.headers.get_all("cache-control").iter().count(), 1, "set replaces");
    assert_eq!(edited.headers["content-type"], "application/json");

    let mut untouched = response();
    plugin.on_response(&ctx(1), &mut untouched);
    assert_eq!(untouched.headers["server"], "monolith/1.0");
    let mut unrouted = response();
    let mut no_route = ctx(0);
    no_route.route = None;
    plugin.on_response(&no_route, &mut unrouted);
    assert_eq!(unrouted.headers["server"], "monolith/1.0");
}

#[test]
fn the_plugin_takes_part_only_in_the_phases_its_routes_need() {
    assert_eq!(plugin("service_prefix = \"/v2\"").phases(), Phases { upstream_exchange: true, ..Phases::default() });
    assert_eq!(
        plugin("response_headers = { remove = [\"server\"] }").phases(),
        Phases { on_response: true, ..Phases::default() }
    );
    assert_eq!(
        plugin("request_headers = { remove = [\"x-debug\"] }").phases(),
        Phases { upstream_exchange: true, ..Phases::default() }
    );
    let all = plugin(FULL).phases();
    assert!(all.upstream_exchange && all.on_response && !all.on_request && !all.upstream_request);
    assert!(TransformPolicy.build(PerRoute::new(3), None).is_none(), "no route with transforms, no plugin");
    let mut empty_edits = PerRoute::new(1);
    empty_edits.set(RouteId(0), compile("request_headers = {}").expect("valid"));
    assert!(TransformPolicy.build(empty_edits, None).is_none(), "edits that change nothing need no plugin");
}

#[test]
fn gateway_owned_headers_are_refused_with_the_reason() {
    for (lines, text, why) in [
        (
            "request_headers = { set = { host = \"x\" } }",
            "host",
            "cannot set \"host\": the gateway sets Host per upstream",
        ),
        ("request_headers = { remove = [\"X-Request-Id\"] }", "\"X-Request-Id\"", "cannot remove \"x-request-id\""),
        (
            "request_headers = { set = { \"x-forwarded-for\" = \"1.2.3.4\" } }",
            "\"x-forwarded-for\"",
            "forwarding headers",
        ),
        ("request_headers = { remove = [\"x-forwarded-host\"] }", "\"x-forwarded-host\"", "forwarding headers"),
        ("request_headers = { remove = [\"connection\"] }", "\"connection\"", "hop-by-hop"),
        ("request_headers = { set = { \"transfer-encoding\" = \"chunked\" } }", "\"transfer-encoding\"", "hop-by-hop"),
        ("response_headers = { set = { \"content-length\" = \"0\" } }", "\"content-length\"", "frames the body"),
        ("response_headers = { remove = [\"x-gateway-error\"] }", "\"x-gateway-error\"", "signals to clients"),
        ("request_headers = { set = { \"x-user-id\" = \"admin\" } }", "\"x-user-id\"", "auth.claims_to_headers"),
    ] {
        let problems = compile(lines).expect_err(lines);
        assert_eq!(problems.len(), 1, "{lines}: {problems:?}");
        assert_eq!(problems[0].0, text, "{lines}: the span covers the name");
        assert!(problems[0].1.contains(why), "{lines}: {}", problems[0].1);
    }
}

#[test]
fn bad_edits_are_refused_where_they_are() {
    for (lines, text, why) in [
        ("request_headers = { set = { \"bad name\" = \"x\" } }", "\"bad name\"", "not a header name"),
        ("request_headers = { set = { \"x-a\" = \"line\\nbreak\" } }", "\"line\\nbreak\"", "no line breaks"),
        ("request_headers = { set = { \"x-a\" = \"1\" }, remove = [\"X-A\"] }", "\"X-A\"", "both set and removed"),
        ("request_headers = { set = { \"x-a\" = \"1\", \"X-A\" = \"2\" } }", "\"x-a\"", "set twice"),
        ("request_headers = { add = { \"x-a\" = \"1\" } }", "add", "unknown field `add`"),
        ("request_headers = { remove = \"x-a\" }", "\"x-a\"", "invalid type"),
        ("service_prefix = \"v2\"", "\"v2\"", "starts with '/'"),
        ("service_prefix = \"/v2/\"", "\"/v2/\"", "trailing '/'"),
        ("service_prefix = 2", "2", "invalid type"),
    ] {
        let problems = compile(lines).expect_err(lines);
        assert!(!problems.is_empty(), "{lines}");
        assert_eq!(problems[0].0, text, "{lines}: {problems:?}");
        assert!(problems[0].1.contains(why), "{lines}: {}", problems[0].1);
    }
    // Every problem of a route is reported, not only the first.
    let problems =
        compile("service_prefix = \"v2\"\nrequest_headers = { remove = [\"host\", \"te\"] }").expect_err("bad");
    assert_eq!(problems.len(), 3, "{problems:?}");
    let names = |count: usize| (0..count).map(|i| format!("\"x-{i}\", ")).collect::<String>();
    let problems = compile(&format!("request_headers = {{ remove = [{}] }}", names(65))).expect_err("too many");
    assert!(problems[0].1.contains("at most 64 headers"), "{problems:?}");
    let most = compile(&format!("request_headers = {{ remove = [{}] }}", names(64))).expect("64 is allowed");
    assert_eq!(most.request_headers.remove().len(), 64);
}

#[test]
fn a_repeated_remove_is_kept_once() {
    let transform = compile("request_headers = { remove = [\"x-a\", \"X-A\"] }").expect("valid");
    assert_eq!(transform.request_headers.remove(), [HeaderName::from_static("x-a")]);
}
