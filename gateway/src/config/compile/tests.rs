use super::*;
use gateway_plugin_auth::AuthMode;

const BASE: &str = r#"
[server]
listen = "127.0.0.1:8080"
default_upstream = "monolith"

[upstreams.monolith]
url = "http://127.0.0.1:3000"

[upstreams.users]
url = "http://127.0.0.1:3001"
timeout_ms = 2000
"#;

fn errors(text: &str) -> Vec<String> {
    match compile(Path::new("routes.toml"), text, 1) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { diagnostics, .. }) => diagnostics.iter().map(|d| d.to_string()).collect(),
        Err(e) => vec![e.to_string()],
    }
}

/// Each snippet's errors include the expected text (line:col, key path, message).
fn assert_each_error(cases: &[(String, &str)]) {
    for (text, expected) in cases {
        let got = errors(text);
        assert!(got.iter().any(|e| e.contains(expected)), "expected {expected:?} in {got:#?}\n--- config ---\n{text}");
    }
}

#[test]
fn a_good_config_compiles() {
    let text = format!("{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n");
    let snapshot = compile(Path::new("routes.toml"), &text, 7).expect("valid");
    assert_eq!(snapshot.meta.version, 7);
    assert_eq!(snapshot.routes.len(), 2);
    assert_eq!(snapshot.router.find("/api/users/1"), RouteId(0));
    assert_eq!(snapshot.router.find("/elsewhere"), RouteId(1));
    assert_eq!(&*snapshot.default_route().monolith.name, "monolith");
    assert_eq!(snapshot.server.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(snapshot.meta.checksum.len(), 64);
}

/// Each bad snippet yields a message with line:col, the key path and what is wrong.
#[test]
fn bad_snippets_name_line_column_and_key() {
    let route = |body: &str| format!("{BASE}\n[[routes]]\n{body}\n");
    let cases: Vec<(String, &str)> = vec![
        (format!("{BASE}\nbogus = 1\n"), "13:1: upstreams.users.bogus: unknown field `bogus`"),
        (
            BASE.replace("listen = \"127.0.0.1:8080\"", "listen = \"localhost\""),
            "3:10: server.listen: \"localhost\" is not IP:PORT",
        ),
        (
            BASE.replace("default_upstream = \"monolith\"", "default_upstream = \"mono\""),
            "4:20: server.default_upstream: unknown upstream \"mono\" (defined: monolith, users)",
        ),
        (
            BASE.replace("timeout_ms = 2000", "timeout_ms = 0"),
            "11:14: upstreams.users.timeout_ms: must be between 1 and 3600000 ms, got 0",
        ),
        (
            BASE.replace("timeout_ms = 2000", "timeout_ms = \"2s\""),
            "11:14: upstreams.users.timeout_ms: invalid type: string \"2s\", expected u64",
        ),
        (
            BASE.replace("http://127.0.0.1:3001", "ftp://127.0.0.1:3001"),
            "10:7: upstreams.users.url: \"ftp://127.0.0.1:3001\": write the url as http://HOST:PORT or https://HOST:PORT",
        ),
        (
            BASE.replace("http://127.0.0.1:3001", "http://127.0.0.1:3001/v1"),
            "10:7: upstreams.users.url: \"http://127.0.0.1:3001/v1\": the url must not have a path",
        ),
        (
            route("name = \"users\"\nprefix = \"api/users\"\nservice = \"users\""),
            "15:10: routes[0].prefix: \"api/users\": a prefix starts with '/'",
        ),
        (
            route("name = \"users\"\nprefix = \"/api/users/\"\nservice = \"users\""),
            "15:10: routes[0].prefix: \"/api/users/\": drop the trailing '/'",
        ),
        (
            route("name = \"users\"\nprefix = \"/api/../users\"\nservice = \"users\""),
            "15:10: routes[0].prefix: \"/api/../users\": a prefix must be a normalised path",
        ),
        (
            route("name = \"users\"\nprefix = \"/api/users\"\nservice = \"userz\""),
            "16:11: routes[0].service: unknown upstream \"userz\"",
        ),
        (
            route("name = \"Users!\"\nprefix = \"/api/users\"\nservice = \"users\""),
            "14:8: routes[0].name: route names use only",
        ),
        (route("name = \"users\"\nprefix = \"/api/users\""), "13:1: routes[0]: missing field `service`"),
        (
            route(
                "name = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n[[routes]]\nname = \"users\"\nprefix = \"/API/Users\"\nservice = \"users\"",
            ),
            "18:8: routes[1].name: duplicate route name \"users\"",
        ),
        (
            BASE.replace("[upstreams.monolith]", "idle_timeout_ms = 2000\n[upstreams.monolith]"),
            "server.idle_timeout_ms (2000) must be longer than upstreams.users.timeout_ms (2000)",
        ),
        ("[server\n".to_owned(), "1:8: unclosed table"),
    ];
    assert_each_error(&cases);
}

const FIXTURE_KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/keys");

fn with_auth(auth: &str, route_extra: &str) -> String {
    format!(
        "{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n{route_extra}\n[auth]\n{auth}\n"
    )
}

#[test]
fn an_auth_section_compiles_with_route_defaults() {
    let text = with_auth(
        &format!(
            "algorithms = [\"RS256\", \"ES256\"]\njwks_file = \"{FIXTURE_KEYS}/jwks.json\"\nissuer = \"i\"\naudience = [\"api\"]\nclaims_to_headers = {{ sub = \"x-user-id\" }}"
        ),
        "",
    );
    let snapshot = compile(Path::new("routes.toml"), &text, 1).unwrap_or_else(|e| panic!("{e}"));
    assert!(snapshot.auth.is_some());
    assert_eq!(
        snapshot.routes.iter().map(|r| r.auth).collect::<Vec<_>>(),
        [AuthMode::Required, AuthMode::Off],
        "routes default to required, unmatched to off"
    );
    assert_eq!(snapshot.plugins.authenticate.len(), 1);
}

#[test]
fn bad_auth_snippets_name_line_column_and_key() {
    let jwks = format!("jwks_file = \"{FIXTURE_KEYS}/jwks.json\"");
    let cases: Vec<(String, &str)> = vec![
        (
            with_auth(&format!("algorithms = [\"none\"]\n{jwks}"), ""),
            "19:15: auth.algorithms[0]: \"none\" is never accepted",
        ),
        (
            with_auth(&format!("algorithms = [\"RS256\", \"XS1\"]\n{jwks}"), ""),
            "19:24: auth.algorithms[1]: unknown algorithm \"XS1\"",
        ),
        (
            with_auth(&format!("algorithms = [\"HS256\"]\n{jwks}"), ""),
            "19:15: auth.algorithms[0]: no configured key can verify HS256",
        ),
        (with_auth("algorithms = [\"RS256\"]", ""), "18:1: auth: give at least one key source"),
        (
            with_auth(&format!("algorithms = [\"RS256\"]\n{jwks}\npublic_key_file = \"k.pem\""), ""),
            "21:19: auth.public_key_file: cannot read",
        ),
        (
            with_auth("algorithms = [\"RS256\"]\njwks_url = \"ftp://idp.example.com/keys\"", ""),
            "20:12: auth.jwks_url: \"ftp://idp.example.com/keys\" is not an https:// URL",
        ),
        (
            with_auth(
                "algorithms = [\"RS256\"]\njwks_url = [\"https://idp.example.com/k\", \"http://idp.example.com/k\"]",
                "",
            ),
            "20:42: auth.jwks_url[1]: \"http://idp.example.com/k\": keys are fetched over https://",
        ),
        (
            with_auth("algorithms = [\"HS256\"]\njwks_url = \"https://idp.example.com/k\"", ""),
            "19:15: auth.algorithms[0]: no configured key can verify HS256",
        ),
        (
            with_auth("algorithms = [\"RS256\"]\njwks_file = \"/nonexistent/jwks.json\"", ""),
            "20:13: auth.jwks_file: cannot read /nonexistent/jwks.json",
        ),
        (
            with_auth("algorithms = [\"HS256\"]\nhs256_secret_env = \"GATEWAY_TEST_SECRET_THAT_IS_NOT_SET\"", ""),
            "20:20: auth.hs256_secret_env: environment variable GATEWAY_TEST_SECRET_THAT_IS_NOT_SET is not set",
        ),
        (
            with_auth(
                &format!("algorithms = [\"RS256\"]\n{jwks}\nclaims_to_headers = {{ sub = \"authorization\" }}"),
                "",
            ),
            "21:29: auth.claims_to_headers.sub: \"authorization\" cannot carry a claim",
        ),
        (
            with_auth(&format!("algorithms = [\"RS256\"]\n{jwks}\nleeway_seconds = 3600"), ""),
            "21:18: auth.leeway_seconds: must be between 0 and 300 seconds",
        ),
        (
            with_auth(&format!("algorithms = [\"RS256\"]\n{jwks}"), "auth = \"sometimes\""),
            "17:8: routes[0].auth: unknown variant `sometimes`",
        ),
        (
            format!(
                "{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\nauth = \"required\"\n"
            ),
            "17:8: routes[0].auth: checking tokens needs an [auth] section",
        ),
    ];
    assert_each_error(&cases);
}

#[test]
fn bad_rollout_snippets_name_line_column_and_key() {
    let route = |extra: &str| {
        format!("{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n{extra}\n")
    };
    let segments = "\n[segments.beta]\nheader = \"x-beta\"\nequals = \"1\"\n[segments.staff]\nclaim = \"email\"\nends_with = \"@company.com\"\n";
    let cases: Vec<(String, &str)> = vec![
        (
            route("rollout_percent = 33.333\nsticky = \"ip\""),
            "17:19: routes[0].rollout_percent: must be 0 to 100 in steps of 0.01, got 33.333",
        ),
        (
            route("rollout_percent = 101\nsticky = \"ip\""),
            "routes[0].rollout_percent: must be 0 to 100 in steps of 0.01, got 101",
        ),
        (route("rollout_percent = 25"), "17:19: routes[0].rollout_percent: a partial rollout needs a sticky key"),
        (
            route("rollout_percent = 25\nsticky = \"query:uid\""),
            "18:10: routes[0].sticky: \"query:uid\" is not claim:NAME",
        ),
        (
            route("rollout_percent = 25\nsticky = \"claim:sub\""),
            "routes[0].sticky: claims exist only on routes that check tokens",
        ),
        (
            route("segments = [\"gamma\"]") + segments,
            "17:13: routes[0].segments[0]: unknown segment \"gamma\" (defined: beta, staff)",
        ),
        (
            route("segments = [\"staff\"]") + segments,
            "routes[0].segments[0]: segment staff tests a claim, and this route has auth = \"off\"",
        ),
        (
            format!("{BASE}\n[segments.both]\nclaim = \"a\"\nheader = \"b\"\nequals = \"c\"\n"),
            "segments.both.header: a segment tests either a claim or a header",
        ),
        (
            format!("{BASE}\n[segments.hdr]\nheader = \"b\"\nends_with = \"c\"\n"),
            "segments.hdr.header: a header segment takes exactly one test: equals",
        ),
        (
            format!("{BASE}\n[segments.two]\nclaim = \"a\"\nequals = \"b\"\ncontains = \"c\"\n"),
            "segments.two.contains: a claim segment needs exactly one of",
        ),
        (
            BASE.replace(
                "default_upstream = \"monolith\"",
                "default_upstream = \"monolith\"\ntrusted_proxies = [\"10.0.0.0/8\", \"lb\"]",
            ),
            "5:34: server.trusted_proxies[1]: \"lb\" is not an IP address or CIDR",
        ),
    ];
    assert_each_error(&cases);
}

#[test]
fn route_policies_compile_with_defaults() {
    let text = format!(
        "{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\nrollout_percent = 12.5\nsticky = \"header:x-user\"\n\n[[routes]]\nname = \"all\"\nprefix = \"/all\"\nservice = \"users\"\n"
    );
    let snapshot = compile(Path::new("routes.toml"), &text, 1).unwrap_or_else(|e| panic!("{e}"));
    let policy = snapshot.routes[0].policy.as_ref().expect("a routed route has a policy");
    assert_eq!(policy.percent.buckets(), 1250);
    assert_eq!(policy.sticky.as_ref().map(ToString::to_string).as_deref(), Some("header:x-user"));
    let full = snapshot.routes[1].policy.as_ref().expect("policy");
    assert_eq!(full.percent, gateway_plugin_rollout::BasisPoints::ALL, "no rollout_percent means 100%");
    assert!(full.sticky.is_none());
    assert!(snapshot.routes[2].policy.is_none(), "the default route has no dial");
}

#[test]
fn a_reload_keeps_what_did_not_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("routes.toml");
    let auth = format!(
        "\n[auth]\nalgorithms = [\"ES256\"]\njwks_file = \"{FIXTURE_KEYS}/jwks.json\"\nclaims_to_headers = {{ sub = \"x-user-id\" }}\n"
    );
    let first = format!("{BASE}{auth}");
    std::fs::write(&path, &first).expect("write");
    let v1 = load(&path, 1).expect("valid");
    assert!(load_next(&path, &v1).expect("readable").is_none(), "the same bytes are not a reload");

    std::fs::write(&path, format!("{first}\n# a comment changes the checksum\n")).expect("write");
    let v2 = load_next(&path, &v1).expect("valid").expect("changed");
    assert_eq!(v2.meta.version, 2);
    assert!(Arc::ptr_eq(&v1.upstreams["users"], &v2.upstreams["users"]), "unchanged upstream keeps its pool");
    assert!(Arc::ptr_eq(v1.auth.as_ref().expect("auth"), v2.auth.as_ref().expect("auth")), "token cache kept");

    let moved = first.replace("http://127.0.0.1:3001", "http://127.0.0.1:3999");
    let with_other_keys = moved.replace("jwks.json", "ec-public.pem").replace("jwks_file", "public_key_file");
    std::fs::write(&path, &with_other_keys).expect("write");
    let v3 = load_next(&path, &v2).expect("valid").expect("changed");
    assert!(!Arc::ptr_eq(&v2.upstreams["users"], &v3.upstreams["users"]), "a new url gets a new pool");
    assert!(Arc::ptr_eq(&v2.upstreams["monolith"], &v3.upstreams["monolith"]));
    assert!(!Arc::ptr_eq(v2.auth.as_ref().expect("auth"), v3.auth.as_ref().expect("auth")), "new keys, new cache");
}

#[test]
fn settings_that_cannot_change_live_are_refused_on_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, BASE).expect("write");
    let v1 = load(&path, 1).expect("valid");
    let edits = [
        (
            BASE.replace("127.0.0.1:8080", "127.0.0.1:8081"),
            "3:10: server.listen: server.listen changed from 127.0.0.1:8080 to 127.0.0.1:8081",
        ),
        (
            BASE.replace(
                "default_upstream = \"monolith\"",
                "default_upstream = \"monolith\"\nadmin_listen = \"127.0.0.1:9999\"",
            ),
            "server.admin_listen changed from 127.0.0.1:9901 to 127.0.0.1:9999",
        ),
        (
            BASE.replace("default_upstream = \"monolith\"", "default_upstream = \"monolith\"\nworkers = 999"),
            "server.workers changed from",
        ),
    ];
    for (text, expected) in edits {
        std::fs::write(&path, &text).expect("write");
        let error = load_next(&path, &v1).expect_err("refused").to_string();
        assert!(error.contains(expected), "expected {expected:?} in {error}");
        assert!(error.contains("restart to apply it"), "{error}");
    }
}

#[test]
fn bad_breaker_and_fallback_snippets_name_line_column_and_key() {
    let with_breaker =
        |breaker: &str| BASE.replace("timeout_ms = 2000", &format!("timeout_ms = 2000\nbreaker = {{ {breaker} }}"));
    let route = |extra: &str| {
        format!("{BASE}\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n{extra}\n")
    };
    let cases: Vec<(String, &str)> = vec![
        (
            with_breaker("failures = 0"),
            "12:24: upstreams.users.breaker.failures: must be between 1 and 1000000 failures, got 0",
        ),
        (
            with_breaker("failure_statuses = [\"5xx\"]"),
            "upstreams.users.breaker.failure_statuses[0]: \"5xx\" is not a status (\"503\") or a range (\"500-599\")",
        ),
        (with_breaker("failure_statuses = [\"599-500\"]"), "\"599-500\" is not a status"),
        (
            with_breaker("error_rate_percent = 150.0"),
            "upstreams.users.breaker.error_rate_percent: must be above 0 and at most 100, got 150",
        ),
        (
            with_breaker("min_requests = 10"),
            "upstreams.users.breaker.min_requests: min_requests applies to error_rate_percent, which is not set",
        ),
        (with_breaker("flures = 3"), "upstreams.users.breaker.flures: unknown field `flures`"),
        (
            route("fallback = \"sometimes\""),
            "17:12: routes[0].fallback: unknown variant `sometimes`, expected `safe` or `never`",
        ),
    ];
    assert_each_error(&cases);
    let good = with_breaker(
        "failures = 3, error_rate_percent = 50.0, min_requests = 10, failure_statuses = [\"502-504\", \"429\"]",
    );
    let snapshot = compile(Path::new("routes.toml"), &good, 1).unwrap_or_else(|e| panic!("{e}"));
    let users = &snapshot.upstreams["users"];
    assert!(users.is_failure_status(429) && users.is_failure_status(503) && !users.is_failure_status(500));
    assert_eq!(users.breaker.as_ref().expect("a breaker").settings().failures, 3);
    assert!(snapshot.upstreams["monolith"].breaker.is_none());
}

#[test]
fn bad_aggregate_snippets_name_line_column_and_key() {
    let aggregate = |body: &str| format!("{BASE}\n[[aggregates]]\nname = \"dash\"\npath = \"/api/dash\"\n{body}\n");
    let cases: Vec<(String, &str)> = vec![
        (aggregate("parts = []"), "16:9: aggregates[0].parts: list at least one part"),
        (
            aggregate("parts = [{ name = \"a\", upstream = \"nope\", path = \"/x\" }]"),
            "aggregates[0].parts[0].upstream: unknown upstream \"nope\"",
        ),
        (
            aggregate("parts = [{ name = \"a\", route = \"nope\", path = \"/x\" }]"),
            "aggregates[0].parts[0].route: unknown route \"nope\"",
        ),
        (
            aggregate("parts = [{ name = \"a\", path = \"/x\" }]"),
            "aggregates[0].parts[0].name: a part names exactly one of upstream or route",
        ),
        (
            aggregate("parts = [{ name = \"a\", upstream = \"users\", path = \"x\" }]"),
            "aggregates[0].parts[0].path: \"x\" is not a path",
        ),
        (
            aggregate("parts = [{ name = \"_errors\", upstream = \"users\", path = \"/x\" }]"),
            "part names are unique and do not start with '_'",
        ),
        (
            aggregate(
                "timeout_ms = 500\nparts = [{ name = \"a\", upstream = \"users\", path = \"/x\", timeout_ms = 900 }]",
            ),
            "aggregates[0].parts[0].timeout_ms: must be between 1 and the aggregate's timeout_ms (500), got 900",
        ),
        (
            aggregate("parts = [{ name = \"a\", upstream = \"users\", path = \"/x\" }]")
                + "\n[[routes]]\nname = \"dash\"\nprefix = \"/d\"\nservice = \"users\"\n",
            "another route or aggregate is named \"dash\"",
        ),
        (
            aggregate("parts = [{ name = \"a\", upstream = \"users\", path = \"/x\" }]")
                .replace("/api/dash", "/api/dash/"),
            "aggregates[0].path: \"/api/dash/\": drop the trailing '/'",
        ),
    ];
    assert_each_error(&cases);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = BASE
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"nope\"")
        .replace("default_upstream = \"monolith\"", "default_upstream = \"missing\"")
        .replace("timeout_ms = 2000", "timeout_ms = 0");
    let got = errors(&text);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got[0].starts_with("3:"), "sorted by line: {got:#?}");
}

#[test]
fn the_error_names_the_file() {
    let err = compile(Path::new("conf/routes.toml"), "[server]\n", 1).expect_err("missing keys");
    assert!(err.to_string().starts_with("conf/routes.toml:1:1: server: missing field `default_upstream`"), "{err}");
}

/// Registered policy keys are checked by their crates, with the same positions, and a
/// route's other problems do not spill into them.
#[test]
fn policy_sections_are_checked_by_their_crates() {
    let auth = format!("algorithms = [\"RS256\"]\njwks_file = \"{FIXTURE_KEYS}/jwks.json\"");
    let claim_limit = "rate_limit = { requests_per_second = 1.0, burst = 1, key = \"claim:sub\" }";
    let text = with_auth(&auth, claim_limit).replace("name = \"users\"", "name = \"Users!\"");
    let got = errors(&text);
    assert!(got.iter().any(|e| e.contains("routes[0].name")), "{got:#?}");
    assert!(!got.iter().any(|e| e.contains("claims exist only")), "the route checks tokens: {got:#?}");

    let text = with_auth(&auth, "rate_limit = { requests_per_second = 1.0, burst = 0, key = \"ip\" }");
    let got = errors(&text);
    assert!(got.iter().any(|e| e.contains("routes[0].rate_limit.burst: must be 1 to")), "{got:#?}");

    let snapshot = compile(Path::new("routes.toml"), &with_auth(&auth, claim_limit), 1).expect("valid");
    assert_eq!(snapshot.policies.len(), 1);
    assert_eq!(snapshot.plugins.on_request.len(), 1);
    let without = compile(Path::new("routes.toml"), &with_auth(&auth, ""), 1).expect("valid");
    assert!(without.policies.is_empty(), "no route has a limit: no plugin at all");
    assert!(without.plugins.on_request.is_empty());
}

/// Route transforms: several keys of one policy reach it together; the claim headers of
/// `[auth]` are owned like the gateway's own; `host_header` is checked on its upstream.
#[test]
fn transform_sections_and_host_headers_name_line_column_and_key() {
    let auth = format!(
        "algorithms = [\"RS256\"]\njwks_file = \"{FIXTURE_KEYS}/jwks.json\"\nclaims_to_headers = {{ sub = \"x-user-id\" }}"
    );
    let transforms = "service_prefix = \"/v2/users\"\nrequest_headers = { set = { \"x-user-id\" = \"a\" } }\n\
                      response_headers = { remove = [\"x-request-id\"] }";
    let got = errors(&with_auth(&auth, transforms));
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(
        got[0]
            .contains("18:29: routes[0].request_headers.set.x-user-id: cannot set \"x-user-id\": the gateway fills it"),
        "{got:#?}"
    );
    assert!(got[1].contains("routes[0].response_headers.remove[0]: cannot remove \"x-request-id\""), "{got:#?}");

    let good = "service_prefix = \"/v2/users\"\nrequest_headers = { set = { \"x-migrated-by\" = \"gateway\" } }";
    let snapshot = compile(Path::new("routes.toml"), &with_auth(&auth, good), 1).expect("valid");
    assert_eq!(snapshot.policies.iter().map(|p| p.name).collect::<Vec<_>>(), ["transform"]);
    assert_eq!(snapshot.plugins.upstream_exchange.len(), 1);
    assert!(snapshot.plugins.on_response.is_empty(), "no response edits: not in that phase");

    let host = |value: &str| BASE.replace("timeout_ms = 2000", &format!("host_header = {value}"));
    assert_each_error(&[
        (host("\"\""), "11:15: upstreams.users.host_header: \"\" is not client, upstream or a host[:port]"),
        (host("\"http://users\""), "upstreams.users.host_header: \"http://users\" is not client, upstream"),
        (host("true"), "11:15: upstreams.users.host_header: invalid type: boolean `true`, expected a string"),
    ]);
    for (value, expected) in [
        ("\"client\"", HostHeader::Client),
        ("\"upstream\"", HostHeader::Upstream),
        ("\"users.internal:8080\"", HostHeader::Literal(http::HeaderValue::from_static("users.internal:8080"))),
    ] {
        let snapshot = compile(Path::new("routes.toml"), &host(value), 1).expect("valid");
        assert_eq!(snapshot.upstreams["users"].settings.host_header, expected, "{value}");
    }
    let snapshot = compile(Path::new("routes.toml"), BASE, 1).expect("valid");
    assert_eq!(snapshot.upstreams["users"].settings.host_header, HostHeader::Client, "the default");
}

#[test]
fn an_upstream_protocol_is_http1_or_http2() {
    let with = |value: &str| BASE.replace("timeout_ms = 2000", &format!("protocol = {value}"));
    assert_each_error(&[
        (with("\"h2\""), "11:12: upstreams.users.protocol: \"h2\" is not a protocol: http1 (default) or http2"),
        (with("2"), "11:12: upstreams.users.protocol: invalid type: integer `2`, expected a string"),
    ]);
    let snapshot = compile(Path::new("routes.toml"), &with("\"http2\""), 1).expect("valid");
    assert_eq!(snapshot.upstreams["users"].settings.protocol, Protocol::Http2);
    assert_eq!(snapshot.upstreams["monolith"].settings.protocol, Protocol::Http1, "the default");
}

const FIXTURE_TLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tls");

#[test]
fn tls_settings_name_line_column_and_key() {
    let with = |server: &str, tls: &str| {
        BASE.replace("default_upstream = \"monolith\"", &format!("default_upstream = \"monolith\"\n{server}"))
            .replace("\n[upstreams.monolith]", &format!("\n{tls}\n[upstreams.monolith]"))
    };
    let pair = |cert: &str, key: &str| {
        format!(
            "[server.tls]\ncertificates = [{{ cert_file = \"{FIXTURE_TLS}/{cert}\", key_file = \"{FIXTURE_TLS}/{key}\" }}]"
        )
    };
    assert_each_error(&[
        (with("tls_listen = \"127.0.0.1:0\"", ""), "5:14: server.tls_listen: tls_listen needs [server.tls]"),
        (with("", &pair("api.pem", "api.key")), "server.tls: [server.tls] is used only with server.tls_listen"),
        (with("tls_listen = \"nope\"", &pair("api.pem", "api.key")), "server.tls_listen: \"nope\" is not IP:PORT"),
        (with("tls_listen = \"127.0.0.1:0\"", &pair("api.pem", "admin.key")), "server.tls.certificates[0].key_file: "),
        (
            with("tls_listen = \"127.0.0.1:0\"", &pair("missing.pem", "api.key")),
            "certificates[0].cert_file: cannot read",
        ),
        (with("tls_listen = \"127.0.0.1:0\"", "[server.tls]\ncertificates = []"), "give at least one certificate"),
    ]);
    let mismatched = errors(&with("tls_listen = \"127.0.0.1:0\"", &pair("api.pem", "admin.key")));
    assert!(mismatched.iter().any(|e| e.contains("admin.key is not the key of")), "{mismatched:#?}");
    let snapshot =
        compile(Path::new("routes.toml"), &with("tls_listen = \"127.0.0.1:0\"", &pair("api.pem", "api.key")), 1)
            .expect("valid");
    assert!(snapshot.tls.is_some() && snapshot.server.tls_listen.is_some());
}

#[test]
fn hostile_input_settings_are_checked_at_their_keys() {
    let with = |extra: &str| {
        BASE.replace("default_upstream = \"monolith\"", &format!("default_upstream = \"monolith\"\n{extra}"))
    };
    assert_each_error(&[
        (
            with("underscore_headers = \"allow\""),
            "5:22: server.underscore_headers: \"allow\" is not a choice: drop (default), reject or pass",
        ),
        (
            with("idle_timeout_ms = 9000\nbody_read_timeout_ms = 9000"),
            "server.body_read_timeout_ms: server.body_read_timeout_ms (9000) must be shorter than server.idle_timeout_ms (9000)",
        ),
    ]);
    let snapshot = compile(Path::new("routes.toml"), &with("underscore_headers = \"reject\""), 1).expect("valid");
    assert_eq!(snapshot.server.underscore_headers, UnderscoreHeaders::Reject);
    assert_eq!(snapshot.server.body_read_timeout, Duration::from_secs(30), "the default");
    let short_idle = compile(Path::new("routes.toml"), &with("idle_timeout_ms = 9000"), 1).expect("valid");
    assert!(
        short_idle.server.body_read_timeout < short_idle.server.idle_timeout,
        "the default stays below the idle limit"
    );
    let defaults = compile(Path::new("routes.toml"), BASE, 1).expect("valid");
    assert_eq!(defaults.server.underscore_headers, UnderscoreHeaders::Drop);
}

#[test]
fn health_checks_and_ejection_are_checked_at_their_keys() {
    let users = |extra: &str| {
        BASE.replace("url = \"http://127.0.0.1:3001\"", &format!("url = \"http://127.0.0.1:3001\"\n{extra}"))
    };
    assert_each_error(&[
        (
            users("health_check = { path = \"healthz\" }"),
            "upstreams.users.health_check.path: \"healthz\" is not a path",
        ),
        (
            users("health_check = { path = \"/healthz\", interval_ms = 100, timeout_ms = 100 }"),
            "upstreams.users.health_check.timeout_ms: timeout_ms (100) must be shorter than interval_ms (100)",
        ),
        (
            users("health_check = { path = \"/h\", unhealthy_after = 0 }"),
            "upstreams.users.health_check.unhealthy_after",
        ),
        (users("eject = { consecutive_failures = 0 }"), "upstreams.users.eject.consecutive_failures"),
        (users("eject = { seconds = 5, after = 3 }"), "unknown field `after`"),
    ]);
    let snapshot = compile(
        Path::new("routes.toml"),
        &users("health_check = { path = \"/healthz\" }\neject = { consecutive_failures = 3 }"),
        1,
    )
    .expect("valid");
    let settings = &snapshot.upstreams["users"].settings;
    let check = settings.health_check.as_ref().expect("a health check");
    assert_eq!(
        (check.interval, check.timeout, check.unhealthy_after, check.healthy_after),
        (Duration::from_secs(2), Duration::from_millis(500), 3, 2)
    );
    assert_eq!(settings.eject.map(|e| (e.consecutive_failures, e.duration)), Some((3, Duration::from_secs(30))));
}

#[test]
fn an_upstream_has_a_url_or_endpoints() {
    let users = |keys: &str| BASE.replace("url = \"http://127.0.0.1:3001\"", keys);
    assert_each_error(&[
        (users("endpoints = []"), "upstreams.users.endpoints: give at least one endpoint, or a url"),
        (
            users("url = \"http://127.0.0.1:3001\"\nendpoints = [\"http://127.0.0.1:3002\"]"),
            "upstreams.users.endpoints: give one of url (one endpoint), endpoints (several) or discovery (DNS)",
        ),
        (
            users("url = \"http://127.0.0.1:3001\"\ndiscovery = { dns = \"users.service.consul:3001\" }"),
            "upstreams.users.discovery: give one of url",
        ),
        (users(""), "upstreams.users: give url = \"http://HOST:PORT\", endpoints = [...] or discovery = { dns = ... }"),
        (
            users("endpoints = [\"http://127.0.0.1:3001\", \"https://127.0.0.1:3002\"]"),
            "endpoints are all http:// or all https://",
        ),
        (users("endpoints = [\"http://127.0.0.1:3001\", \"http://127.0.0.1:3001\"]"), "127.0.0.1:3001 is listed twice"),
        (users("endpoints = [\"http://127.0.0.1:3001\", \"ftp://x\"]"), "write the url as http://HOST:PORT"),
        (users("url = \"http://127.0.0.1:3001\"\nbalance = \"random\""), "\"random\" is not a balance"),
    ]);
    let snapshot = compile(
        Path::new("routes.toml"),
        &users("endpoints = [\"http://127.0.0.1:3001\", \"http://127.0.0.1:3002\"]\nbalance = \"round_robin\""),
        1,
    )
    .expect("valid");
    let upstream = &snapshot.upstreams["users"];
    let addresses: Vec<_> = upstream.endpoints().iter().map(|e| e.address.to_str().unwrap().to_owned()).collect();
    assert_eq!(addresses, ["127.0.0.1:3001", "127.0.0.1:3002"]);
    assert_eq!(upstream.settings.balance, gateway_plugin_endpoints::Balance::RoundRobin);
    assert_eq!(snapshot.upstreams["monolith"].settings.balance, gateway_plugin_endpoints::Balance::LeastRequest);
}

#[test]
fn discovery_takes_a_name_a_port_and_optional_nameservers() {
    let users = |keys: &str| BASE.replace("url = \"http://127.0.0.1:3001\"", keys);
    assert_each_error(&[
        (users("discovery = { dns = \"10.0.0.1:3001\" }"), "is an address, not a name: list it in endpoints instead"),
        (users("discovery = { dns = \"users.service.consul:3001/v1\" }"), "upstreams.users.discovery.dns: "),
        (
            users("discovery = { dns = \"users.service.consul:3001\", nameservers = [\"localhost\"] }"),
            "\"localhost\" is not a nameserver: write IP:PORT",
        ),
        (users("discovery = { dns = \"users:1\", refresh_seconds = 0 }"), "upstreams.users.discovery.refresh_seconds"),
        (users("discovery = { dns = \"users:1\", ttl = 3 }"), "unknown field `ttl`"),
    ]);
    let text = users(
        "discovery = { dns = \"users.service.consul:3001\", refresh_seconds = 2, nameservers = [\"127.0.0.1:8600\"] }\n\
         host_header = \"upstream\"",
    );
    let snapshot = compile(Path::new("routes.toml"), &text, 1).expect("valid");
    let users = &snapshot.upstreams["users"];
    let dns = users.settings.discovery.clone().expect("discovery");
    assert_eq!((dns.name.as_str(), dns.port, dns.refresh), ("users.service.consul", 3001, Duration::from_secs(2)));
    assert_eq!(dns.nameservers, ["127.0.0.1:8600".parse::<SocketAddr>().unwrap()]);
    assert!(users.endpoints().is_empty(), "no endpoint before the first answer");
    assert_eq!(users.authority(), "users.service.consul:3001", "the Host of host_header = upstream");
    // https:// and the default port.
    let https = compile(
        Path::new("routes.toml"),
        &BASE.replace("url = \"http://127.0.0.1:3001\"", "discovery = { dns = \"https://users.internal\" }"),
        1,
    )
    .expect("valid");
    let dns = https.upstreams["users"].settings.discovery.clone().expect("discovery");
    assert_eq!(dns.port, 443);
    assert!(https.upstreams["users"].settings.tls.is_some());
}

#[test]
fn a_reload_keeps_the_endpoints_it_still_lists_with_their_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("routes.toml");
    let with = |endpoints: &str, timeout: u32| {
        BASE.replace("url = \"http://127.0.0.1:3001\"", &format!("endpoints = [{endpoints}]"))
            .replace("timeout_ms = 2000", &format!("timeout_ms = {timeout}\neject = {{ consecutive_failures = 1 }}"))
    };
    std::fs::write(&path, with("\"http://127.0.0.1:3001\", \"http://127.0.0.1:3002\"", 2000)).expect("write");
    let v1 = load(&path, 1).expect("valid");
    let kept = v1.upstreams["users"].endpoints()[1].clone();
    kept.health.record_response(
        true,
        &gateway_plugin_endpoints::Ejection { consecutive_failures: 1, duration: Duration::from_secs(60) },
        crate::clock::now(),
        true,
    );

    // Another timeout and a third endpoint: a new handle, the same two endpoints.
    std::fs::write(
        &path,
        with("\"http://127.0.0.1:3001\", \"http://127.0.0.1:3002\", \"http://127.0.0.1:3003\"", 3000),
    )
    .expect("write");
    let v2 = load_next(&path, &v1).expect("valid").expect("changed");
    let endpoints = v2.upstreams["users"].endpoints();
    assert!(!Arc::ptr_eq(&v1.upstreams["users"], &v2.upstreams["users"]));
    assert_eq!(endpoints.len(), 3);
    assert!(Arc::ptr_eq(&endpoints[1], &kept), "127.0.0.1:3002 kept its pool and health");
    assert_eq!(endpoints[1].health.state(crate::clock::now()), gateway_plugin_endpoints::EndpointState::Ejected);
    assert!(Arc::ptr_eq(&endpoints[0], &v1.upstreams["users"].endpoints()[0]));

    // Another connect timeout reaches the endpoints differently: fresh ones.
    let text = with("\"http://127.0.0.1:3002\"", 3000)
        .replace("timeout_ms = 3000", "timeout_ms = 3000\nconnect_timeout_ms = 50");
    std::fs::write(&path, text).expect("write");
    let v3 = load_next(&path, &v2).expect("valid").expect("changed");
    assert!(!Arc::ptr_eq(&v3.upstreams["users"].endpoints()[0], &kept));
}

#[test]
fn listen_is_optional_only_when_tls_listen_serves() {
    let pair = format!(
        "[server.tls]\ncertificates = [{{ cert_file = \"{FIXTURE_TLS}/api.pem\", key_file = \"{FIXTURE_TLS}/api.key\" }}]"
    );
    let no_listen = BASE.replace("listen = \"127.0.0.1:8080\"\n", "");
    assert_each_error(&[(
        no_listen.clone(),
        "server.default_upstream: give server.listen, server.tls_listen, or both",
    )]);
    let tls_only = no_listen
        .replace("default_upstream = \"monolith\"", "default_upstream = \"monolith\"\ntls_listen = \"127.0.0.1:0\"")
        .replace("\n[upstreams.monolith]", &format!("\n{pair}\n[upstreams.monolith]"));
    let snapshot = compile(Path::new("routes.toml"), &tls_only, 1).expect("valid without a plain listener");
    assert_eq!(snapshot.server.listen, None);
    assert!(snapshot.server.tls_listen.is_some());
}

#[test]
fn https_upstream_settings_name_line_column_and_key() {
    let https = |extra: &str| {
        BASE.replace("url = \"http://127.0.0.1:3001\"", &format!("url = \"https://127.0.0.1:3001\"\n{extra}"))
    };
    assert_each_error(&[
        (https(&format!("ca_file = \"{FIXTURE_TLS}/missing.pem\"")), "11:11: upstreams.users.ca_file: cannot read"),
        (https(&format!("ca_file = \"{FIXTURE_TLS}/api.key\"")), "upstreams.users.ca_file: "),
        (
            https(&format!("client_cert_file = \"{FIXTURE_TLS}/client.pem\"")),
            "needs both client_cert_file and client_key_file",
        ),
        (
            https(&format!(
                "ca_file = \"{FIXTURE_TLS}/ca.pem\"\nclient_cert_file = \"{FIXTURE_TLS}/client.pem\"\nclient_key_file = \"{FIXTURE_TLS}/api.key\""
            )),
            "upstreams.users.client_key_file: ",
        ),
        (https(&format!("ca_file = \"{FIXTURE_TLS}/ca.pem\"\nserver_name = \"not a name\"")), "is not a DNS name"),
        (
            BASE.replace("timeout_ms = 2000", &format!("ca_file = \"{FIXTURE_TLS}/ca.pem\"")),
            "upstreams.users.ca_file: TLS settings apply only to an https:// url",
        ),
    ]);
    let snapshot =
        compile(Path::new("routes.toml"), &https(&format!("ca_file = \"{FIXTURE_TLS}/ca.pem\"")), 1).expect("valid");
    assert!(snapshot.upstreams["users"].settings.tls.is_some());
}

#[test]
fn the_pid_file_is_relative_to_the_config_file_and_not_empty() {
    let with = |extra: &str| {
        BASE.replace("default_upstream = \"monolith\"", &format!("default_upstream = \"monolith\"\n{extra}"))
    };
    let snapshot =
        compile(Path::new("/etc/gateway/routes.toml"), &with("pid_file = \"run/gateway.pid\""), 1).expect("valid");
    assert_eq!(snapshot.server.pid_file.as_deref(), Some(Path::new("/etc/gateway/run/gateway.pid")));
    let absolute =
        compile(Path::new("/etc/gateway/routes.toml"), &with("pid_file = \"/run/gateway.pid\""), 1).expect("valid");
    assert_eq!(absolute.server.pid_file.as_deref(), Some(Path::new("/run/gateway.pid")));
    assert_eq!(compile(Path::new("routes.toml"), BASE, 1).expect("valid").server.pid_file, None);
    assert_each_error(&[(with("pid_file = \" \""), "server.pid_file: give a file path")]);
}
