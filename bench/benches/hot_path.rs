//! Micro-benchmarks of the per-request pure logic: `cargo bench -p gateway-bench`.
//! The whole-proxy comparison with nginx and HAProxy is `python3 bench/compare.py`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::proxy::headers::{
    canonicalise_content_length, check_host, request_id, scan_request, set_forwarding, strip_present,
};
use gateway::routing::normalize::normalize_path;
use gateway::routing::router::Router;
use gateway_plugin_api::RouteId;
use http::{HeaderMap, HeaderValue};

fn normalisation(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize_path");
    group.bench_function("already_normal", |b| b.iter(|| normalize_path(black_box("/api/users/42/orders"))));
    group.bench_function("encoded_and_dots", |b| {
        b.iter(|| normalize_path(black_box("/api/%2e%2e/api//users/./%34%32/orders")))
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let routes: Vec<(String, RouteId)> = (0..200)
        .map(|i| (format!("/api/service-{i}/v1"), RouteId(i)))
        .chain([("/api/users".to_owned(), RouteId(200))])
        .collect();
    let router = Router::new(routes, RouteId(201));
    let mut group = c.benchmark_group("router_find_201_routes");
    group.bench_function("hit_two_segments_deep", |b| b.iter(|| router.find(black_box("/api/users/42/orders"))));
    group.bench_function("miss_to_default", |b| b.iter(|| router.find(black_box("/legacy/page/42"))));
    group.bench_function("mixed_case_hit", |b| b.iter(|| router.find(black_box("/API/Users/42"))));
    group.finish();

    // The route-confusion guard: `route` is `find` plus the lenient reading when the path
    // has `%`, `;` or non-ASCII bytes. The guard's cost is `route` minus `find` on the
    // same path.
    let paths = [
        ("plain_path", "/api/users/42/orders"),
        ("escaped_path", "/api/users/caf%C3%A9/100%25"),
        ("escaped_below_prefix_depth", "/api/users/42/search/caf%C3%A9%20100%25"),
        ("attack_path", "/api/x/..%252f..%252fusers/1"),
    ];
    let mut group = c.benchmark_group("confusion_guard_201_routes");
    for (name, path) in paths {
        group.bench_function(format!("{name}/find"), |b| b.iter(|| router.find(black_box(path))));
        group.bench_function(format!("{name}/route"), |b| b.iter(|| router.route(black_box(path))));
        group.bench_function(format!("{name}/lenient_reading"), |b| {
            b.iter(|| {
                gateway::routing::lenient::with_lenient_reading(black_box(path), |r, same| r.len() + usize::from(same))
            })
        });
    }
    group.finish();
}

fn header_hygiene(c: &mut Criterion) {
    let mut request = HeaderMap::new();
    request.insert("content-length", HeaderValue::from_static("112"));
    request.insert("host", HeaderValue::from_static("api.example.com"));
    request.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    request.insert("accept", HeaderValue::from_static("application/json"));
    request.insert("connection", HeaderValue::from_static("keep-alive"));
    let client_ip = HeaderValue::from_static("10.1.2.3");
    c.bench_function("request_headers_prepare", |b| {
        b.iter_batched(
            || request.clone(),
            |mut headers| {
                let scan = scan_request(&headers);
                if scan.host {
                    black_box(check_host(&headers, &http::Uri::from_static("/api/users/42"))).ok();
                }
                if scan.content_length {
                    canonicalise_content_length(&mut headers).ok();
                }
                strip_present(&mut headers, scan.hop_by_hop);
                set_forwarding(&mut headers, &client_ip, &gateway::proxy::headers::PROTO_HTTP);
                black_box(request_id(&headers));
                headers
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// The cost of a cache miss (one RS256 signature check plus claim checks) and of a hit
/// (SHA-256 of the token, cache lookup, expiry check).
fn jwt(c: &mut Criterion) {
    use std::sync::Arc;

    use gateway_plugin_auth::{Authenticator, Clock, KeySet, SystemClock, Verifier};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    let keys_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/keys/");
    let read = |name: &str| std::fs::read(format!("{keys_dir}{name}")).expect("fixture key");
    let keys = KeySet::from_jwks(&String::from_utf8(read("jwks.json")).expect("utf-8")).expect("jwks");
    let now = SystemClock.now_unix();
    let claims =
        serde_json::json!({"sub": "alice", "email": "alice@company.com", "iss": "i", "aud": "api", "exp": now + 3600});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".to_owned());
    let token =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&read("rsa-private.pem")).expect("key"))
            .expect("signs");
    let verifier = Verifier::new(keys, vec![Algorithm::RS256], Some("i".to_owned()), vec!["api".to_owned()], 30);
    c.bench_function("jwt_rs256_verify_cache_miss", |b| {
        b.iter(|| verifier.verify(black_box(&token), now).expect("valid"))
    });
    let claim_headers = vec![("sub".to_owned(), http::HeaderName::from_static("x-user-id"))];
    let authenticator = Authenticator::new(verifier.clone(), claim_headers, None, 10_000, Arc::new(SystemClock));
    authenticator.authenticate(&token).expect("valid");
    c.bench_function("jwt_authenticate_cache_hit", |b| {
        b.iter(|| authenticator.authenticate(black_box(&token)).expect("valid"))
    });
}

/// One refresh of a 50-key published JWKS on the fetch task: parse the document, build
/// the keys, compare with the set in use and swap (every second round drops a key, so
/// the comparison finds a change). Requests never wait for it; this is what the fetch
/// task takes from a worker thread.
fn jwks_refresh_50_keys(c: &mut Criterion) {
    use gateway_plugin_auth::{KeySet, RemoteKeys, RemoteSettings};

    let keys_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/keys/");
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{keys_dir}jwks.json")).expect("fixture")).expect("json");
    let rsa = fixture["keys"][0].clone();
    let document = |decoy: u32| {
        let mut keys: Vec<serde_json::Value> = (1..50)
            .map(|i| {
                let mut key = rsa.clone();
                key["kid"] = format!("key-{i}").into();
                key
            })
            .collect();
        let mut key = rsa.clone();
        key["kid"] = format!("decoy-{decoy}").into();
        keys.push(key);
        serde_json::json!({ "keys": keys }).to_string()
    };
    let documents = [document(0), document(1)];
    let source = RemoteKeys::new(RemoteSettings { source: "bench".to_owned(), refresh: Duration::from_secs(1) });
    let mut round = 0usize;
    c.bench_function("jwks_refresh_50_keys", |b| {
        b.iter(|| {
            round += 1;
            let (keys, skipped) = KeySet::from_published_jwks(black_box(&documents[round % 2])).expect("jwks");
            source.apply(keys, skipped, 0)
        })
    });
}

/// A reload of a 10,000-route file: read, checksum, validate every route, compile, and
/// register its metrics; everything but the swap itself (one atomic store).
fn reload_10000_routes(c: &mut Criterion) {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\ndefault_upstream = \"monolith\"\n\
         [upstreams.monolith]\nurl = \"http://127.0.0.1:3000\"\n\
         [segments.beta]\nheader = \"x-beta\"\nequals = \"1\"\n",
    );
    for u in 0..20 {
        text.push_str(&format!("[upstreams.svc-{u}]\nurl = \"http://127.0.0.1:{}\"\n", 4000 + u));
    }
    for r in 0..10_000 {
        text.push_str(&format!(
            "[[routes]]\nname = \"route-{r}\"\nprefix = \"/api/area-{}/resource-{r}\"\nservice = \"svc-{}\"\n\
             rollout_percent = {}\nsticky = \"header:x-user\"\nsegments = [\"beta\"]\n",
            r % 50,
            r % 20,
            r % 101
        ));
    }
    let dir = std::env::temp_dir().join(format!("gateway-bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("routes.toml");
    std::fs::write(&path, &text).expect("write");
    let first = gateway::config::load(&path, 1).expect("the generated file is valid");
    // Each iteration reads a file that differs from `first` only by a comment, so the
    // checksum differs and the whole file is validated and compiled.
    std::fs::write(&path, format!("{text}\n# edited\n")).expect("write");
    let mut group = c.benchmark_group("config");
    group.sample_size(20);
    group.bench_function("reload_10000_routes", |b| {
        b.iter(|| gateway::config::load_next(black_box(&path), &first).expect("valid").expect("changed"))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// One token taken per call: a key seen before (one shard lock, one hash lookup), and a
/// stream of new keys once the table is full (the overflow path a flood takes).
fn rate_limit(c: &mut Criterion) {
    use gateway_plugin_ratelimit::bucket::Rate;
    use gateway_plugin_ratelimit::table::KeyTable;
    use std::time::Duration;
    let mut group = c.benchmark_group("rate_limit_take");
    let table = KeyTable::new(Rate::new(1e6, 1_000_000), 65_536);
    let mut now = Duration::from_secs(1);
    group.bench_function("known_key", |b| {
        b.iter(|| {
            now += Duration::from_nanos(100);
            table.take(Some(black_box(b"203.0.113.7")), now)
        })
    });
    let full = KeyTable::new(Rate::new(1e6, 1_000_000), 1_024);
    let mut key = 0u64;
    group.bench_function("flood_of_new_keys", |b| {
        b.iter(|| {
            key += 1;
            full.take(Some(black_box(&key.to_le_bytes())), Duration::from_secs(1))
        })
    });
    group.finish();
}

/// One service-side exchange of a route with a service prefix and two header edits, and
/// the same plugin on a route without transforms (the cost another route's transforms put
/// on it: one table lookup).
fn transforms(c: &mut Criterion) {
    use gateway_plugin_api::config::{ConfigErrors, PerRoute, RouteInfo, RoutePolicy, RouteSections, Section};
    use gateway_plugin_api::{Exchange, Plugin, RequestCtx, Target};
    use gateway_plugin_transform::TransformPolicy;
    let text = r#"{ set = { "x-migrated-by" = "gateway" }, remove = ["x-debug"] }"#;
    let sections = RouteSections::new()
        .with("service_prefix", Section::new(toml::de::DeValue::parse("\"/v2/users\"").expect("TOML")))
        .with("request_headers", Section::new(toml::de::DeValue::parse(text).expect("TOML")));
    let info = RouteInfo {
        id: RouteId(0),
        name: "users",
        prefix: "/api/users",
        claim_headers: &[],
        checks_tokens: false,
        rollout_percent: 100.0,
        sticky: true,
        name_span: 0..0,
    };
    let compiled = TransformPolicy.compile_route(&info, sections, &mut ConfigErrors::default()).expect("valid");
    let mut routes = PerRoute::new(2);
    routes.set(RouteId(0), compiled);
    let plugin = TransformPolicy.build(routes, None).expect("a route uses it");
    let ctx = RequestCtx::new(HeaderValue::from_static("bench"), std::time::Duration::ZERO);
    let request = http::Request::builder()
        .uri("/api/users/42/orders?page=2")
        .header("host", "api.example.com")
        .header("x-debug", "1")
        .header("accept", "application/json")
        .body(())
        .expect("valid")
        .into_parts()
        .0;
    let mut group = c.benchmark_group("transform_exchange");
    for (name, route) in [("prefix_and_two_edits", RouteId(0)), ("route_without_transforms", RouteId(1))] {
        let exchange = Exchange { route, side: Target::Service };
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || request.clone(),
                |parts| plugin.upstream_exchange(&ctx, black_box(&exchange), parts),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    normalisation,
    routing,
    header_hygiene,
    jwt,
    jwks_refresh_50_keys,
    reload_10000_routes,
    rate_limit,
    transforms
);
criterion_main!(benches);
