use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use gateway_plugin_api::{ClaimValue, Identity, RouteId};
use toml::de::DeValue;

use super::*;

const T0: Duration = Duration::from_secs(1000);

fn info(checks_tokens: bool) -> RouteInfo<'static> {
    RouteInfo {
        id: RouteId(0),
        name: "search",
        prefix: "/search",
        claim_headers: &[],
        checks_tokens,
        rollout_percent: 100.0,
        sticky: true,
        name_span: 0..0,
    }
}

/// Compiles one `rate_limit` value; the problems come with the text each span covers.
fn compile(text: &str, checks_tokens: bool) -> Result<RouteLimit, Vec<(String, String)>> {
    let value = DeValue::parse(text).expect("test values are TOML");
    let mut errors = ConfigErrors::default();
    let compiled = RateLimitPolicy.compile_route(
        &info(checks_tokens),
        RouteSections::new().with(ROUTE_KEY, gateway_plugin_api::config::Section::new(value)),
        &mut errors,
    );
    let problems: Vec<(String, String)> =
        errors.into_problems().into_iter().map(|(span, message)| (text[span].to_owned(), message)).collect();
    match compiled {
        Some(limit) if problems.is_empty() => Ok(limit),
        _ => Err(problems),
    }
}

fn plugin(text: &str, checks_tokens: bool) -> RateLimiter {
    let mut routes = PerRoute::new(2);
    routes.set(RouteId(0), compile(text, checks_tokens).expect("valid"));
    RateLimitPolicy.build(routes, None).expect("a route uses it")
}

fn request(headers: &[(&str, &str)]) -> Parts {
    let mut builder = http::Request::builder().uri("/search");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("valid request").into_parts().0
}

fn ctx(route: usize, now: Duration, ip: Option<IpAddr>) -> RequestCtx {
    let mut ctx = RequestCtx::new(HeaderValue::from_static("r"), now);
    ctx.route = Some(RouteId(route));
    ctx.client_ip = ip;
    ctx
}

fn with_subject(mut ctx: RequestCtx, sub: &str) -> RequestCtx {
    ctx.identity = Some(Arc::new(Identity {
        claims: BTreeMap::from([("sub".to_owned(), ClaimValue::Text(sub.to_owned()))]),
        expires_at: u64::MAX,
    }));
    ctx
}

fn allowed(plugin: &RateLimiter, ctx: &mut RequestCtx, request: &mut Parts) -> bool {
    match plugin.on_request(ctx, request) {
        Flow::Continue => true,
        Flow::Respond(_) => false,
        Flow::Wait(_) => panic!("the rate limiter never waits"),
    }
}

#[test]
fn good_sections_compile() {
    let limit = compile(r#"{ requests_per_second = 50.0, burst = 100, key = "ip" }"#, false).expect("valid");
    assert_eq!((limit.requests_per_second, limit.burst, limit.key), (50.0, 100, LimitKey::Ip));
    let limit = compile(r#"{ requests_per_second = 0.5, burst = 1, key = "header:X-Api-Key" }"#, false).unwrap();
    assert_eq!(limit.key, LimitKey::Header(HeaderName::from_static("x-api-key")));
    let limit = compile(r#"{ requests_per_second = 1.0, burst = 1, key = "claim:sub" }"#, true).unwrap();
    assert_eq!(limit.key, LimitKey::Claim("sub".to_owned()));
}

#[test]
fn bad_sections_point_at_the_bad_value() {
    let cases: [(&str, bool, &str, &str); 10] = [
        (r#"{ requests_per_second = 0.0, burst = 1, key = "ip" }"#, false, "0.0", "must be more than 0"),
        (r#"{ requests_per_second = -1.0, burst = 1, key = "ip" }"#, false, "-1.0", "must be more than 0"),
        (r#"{ requests_per_second = nan, burst = 1, key = "ip" }"#, false, "nan", "must be more than 0"),
        (r#"{ requests_per_second = 2e6, burst = 1, key = "ip" }"#, false, "2e6", "at most 1000000"),
        (r#"{ requests_per_second = 1.0, burst = 0, key = "ip" }"#, false, "0", "must be 1 to 1000000, got 0"),
        (r#"{ requests_per_second = 1.0, burst = 2000000, key = "ip" }"#, false, "2000000", "got 2000000"),
        (r#"{ requests_per_second = 1.0, burst = 1, key = "user" }"#, false, "\"user\"", "not a rate-limit key"),
        (r#"{ requests_per_second = 1.0, burst = 1, key = "claim:" }"#, true, "\"claim:\"", "not a rate-limit key"),
        (
            r#"{ requests_per_second = 1.0, burst = 1, key = "header:a b" }"#,
            false,
            "\"header:a b\"",
            "not a rate-limit",
        ),
        (r#"{ requests_per_second = 1.0, burst = 1, key = "claim:sub" }"#, false, "\"claim:sub\"", "auth = \"off\""),
    ];
    for (text, checks_tokens, at, expected) in cases {
        let problems = compile(text, checks_tokens).expect_err(text);
        assert!(
            problems.iter().any(|(span, message)| span == at && message.contains(expected)),
            "{text}: expected {expected:?} at {at:?}, got {problems:?}"
        );
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_with_their_position() {
    let problems =
        compile(r#"{ requests_per_second = 1.0, burst = 1, key = "ip", per = "minute" }"#, false).unwrap_err();
    assert!(problems.iter().any(|(span, m)| span.contains("per") && m.contains("unknown field")), "{problems:?}");
    let problems = compile(r#"{ requests_per_second = 1.0, burst = "many", key = "ip" }"#, false).unwrap_err();
    assert!(problems.iter().any(|(span, m)| span == "\"many\"" && m.contains("invalid type")), "{problems:?}");
    let problems = compile(r#""fast""#, false).unwrap_err();
    assert!(problems.iter().any(|(_, m)| m.contains("invalid type")), "{problems:?}");
    let problems = compile(r#"{ burst = 1, key = "ip" }"#, false).unwrap_err();
    assert!(problems.iter().any(|(_, m)| m.contains("requests_per_second")), "{problems:?}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let problems = compile(r#"{ requests_per_second = 0.0, burst = 0, key = "nope" }"#, false).unwrap_err();
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[test]
fn over_the_limit_is_a_429_with_retry_after_and_the_code() {
    let plugin = plugin(r#"{ requests_per_second = 0.4, burst = 2, key = "ip" }"#, false);
    let ip = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    let mut parts = request(&[]);
    assert!(allowed(&plugin, &mut ctx(0, T0, ip), &mut parts));
    assert!(allowed(&plugin, &mut ctx(0, T0, ip), &mut parts));
    let Flow::Respond(rejection) = plugin.on_request(&mut ctx(0, T0, ip), &mut parts) else { panic!("over the limit") };
    assert_eq!(rejection.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(rejection.code, "rate-limited");
    let retry = rejection.headers.iter().find(|(name, _)| name == RETRY_AFTER).map(|(_, v)| v.clone());
    assert_eq!(retry, Some(HeaderValue::from_static("3")), "one token every 2.5 s, rounded up");
    assert!(rejection.message.contains("search"));
    assert!(allowed(&plugin, &mut ctx(0, T0 + Duration::from_millis(2500), ip), &mut parts), "refilled");
}

#[test]
fn routes_without_a_limit_are_not_limited() {
    let plugin = plugin(r#"{ requests_per_second = 1.0, burst = 1, key = "ip" }"#, false);
    let mut parts = request(&[]);
    for _ in 0..10 {
        assert!(allowed(&plugin, &mut ctx(1, T0, None), &mut parts));
    }
    let mut unrouted = RequestCtx::new(HeaderValue::from_static("r"), T0);
    assert!(allowed(&plugin, &mut unrouted, &mut parts));
}

#[test]
fn keys_come_from_the_verified_claim_the_header_or_the_address() {
    let by_claim = plugin(r#"{ requests_per_second = 1.0, burst = 1, key = "claim:sub" }"#, true);
    let mut parts = request(&[]);
    assert!(allowed(&by_claim, &mut with_subject(ctx(0, T0, None), "alice"), &mut parts));
    assert!(!allowed(&by_claim, &mut with_subject(ctx(0, T0, None), "alice"), &mut parts));
    assert!(allowed(&by_claim, &mut with_subject(ctx(0, T0, None), "bob"), &mut parts));
    assert!(allowed(&by_claim, &mut ctx(0, T0, None), &mut parts), "anonymous: the no-key bucket");
    assert!(!allowed(&by_claim, &mut ctx(0, T0, None), &mut parts), "which all anonymous callers share");

    let by_header = plugin(r#"{ requests_per_second = 1.0, burst = 1, key = "header:x-api-key" }"#, false);
    assert!(allowed(&by_header, &mut ctx(0, T0, None), &mut request(&[("x-api-key", "k1")])));
    assert!(!allowed(&by_header, &mut ctx(0, T0, None), &mut request(&[("x-api-key", "k1")])));
    assert!(allowed(&by_header, &mut ctx(0, T0, None), &mut request(&[("x-api-key", "k2")])));

    let by_ip = plugin(r#"{ requests_per_second = 1.0, burst = 1, key = "ip" }"#, false);
    let v4 = Ipv4Addr::new(192, 0, 2, 7);
    assert!(allowed(&by_ip, &mut ctx(0, T0, Some(IpAddr::V4(v4))), &mut parts));
    assert!(
        !allowed(&by_ip, &mut ctx(0, T0, Some(IpAddr::V6(v4.to_ipv6_mapped()))), &mut parts),
        "the IPv4-mapped spelling is the same caller"
    );
    assert!(allowed(&by_ip, &mut ctx(0, T0, Some(IpAddr::V6(Ipv6Addr::LOCALHOST))), &mut parts));
}

#[test]
fn refusals_are_counted_per_route() {
    let plugin = plugin(r#"{ requests_per_second = 1.0, burst = 1, key = "ip" }"#, false);
    let limiter = plugin.limiter(RouteId(0)).expect("route 0 is limited");
    assert_eq!(limiter.limit.route.as_ref(), "search");
    assert!(plugin.limiter(RouteId(1)).is_none());
}

#[test]
fn no_plugin_is_built_when_no_route_has_a_limit() {
    assert!(RateLimitPolicy.build(PerRoute::new(3), None).is_none());
}

#[test]
fn a_reload_keeps_the_buckets_of_unchanged_limits_only() {
    let text = r#"{ requests_per_second = 1.0, burst = 1, key = "ip" }"#;
    let first = plugin(text, false);
    let ip = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut parts = request(&[]);
    assert!(allowed(&first, &mut ctx(0, T0, ip), &mut parts));

    let mut routes = PerRoute::new(2);
    routes.set(RouteId(0), compile(text, false).unwrap());
    let same = RateLimitPolicy.build(routes, Some(&first)).unwrap();
    assert!(!allowed(&same, &mut ctx(0, T0, ip), &mut parts), "the bucket carried over the reload");

    let mut routes = PerRoute::new(2);
    routes.set(RouteId(0), compile(r#"{ requests_per_second = 1.0, burst = 2, key = "ip" }"#, false).unwrap());
    let changed = RateLimitPolicy.build(routes, Some(&same)).unwrap();
    assert!(allowed(&changed, &mut ctx(0, T0, ip), &mut parts), "new settings, new buckets");
}

#[test]
fn the_plugin_runs_at_on_request_only() {
    let plugin = plugin(r#"{ requests_per_second = 1.0, burst = 1, key = "ip" }"#, false);
    assert_eq!(plugin.name(), "rate_limit");
    assert_eq!(plugin.phases(), Phases { on_request: true, ..Phases::default() });
}
