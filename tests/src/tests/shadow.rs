//! Shadow traffic end to end: the client always gets the monolith's answer, on time,
//! whatever the service does; copies are counted, bounded and compared by JSON pointer;
//! `ignore` and `learn_noise` leave out what they should and nothing else; samples never
//! show the caller's secrets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::harness::*;

/// What a scripted upstream answers for its `n`th request (from 0): status, JSON body,
/// delay before answering.
type Script = dyn Fn(u64, &Seen) -> (u16, String, Duration) + Send + Sync;

/// A request a scripted upstream received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path_and_query: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// An upstream that answers each request from a script, and records them.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: impl Fn(u64, &Seen) -> (u16, String, Duration) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let counter = Arc::new(AtomicU64::new(0));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (script, record, counter) = (script.clone(), record.clone(), counter.clone());
                let service = service_fn(move |request: Request<Incoming>| {
                    let (script, record, counter) = (script.clone(), record.clone(), counter.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let seen = Seen {
                            method: parts.method.to_string(),
                            path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
                            headers: parts.headers,
                            body,
                        };
                        record.lock().unwrap().push(seen.clone());
                        let (status, body, delay) = script(counter.fetch_add(1, Ordering::SeqCst), &seen);
                        tokio::time::sleep(delay).await;
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = http::StatusCode::from_u16(status).expect("a status");
                        response.headers_mut().insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Scripted { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn copies(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.headers.contains_key("x-gateway-shadow")).collect()
    }
}

fn fixed(status: u16, body: &'static str) -> impl Fn(u64, &Seen) -> (u16, String, Duration) + Send + Sync {
    move |_, _| (status, body.to_owned(), Duration::ZERO)
}

/// A gateway with route `name` on `/api/users`, dial 0, `shadow = { shadow }`, the service
/// at `service` (its timeout `service_timeout_ms`).
async fn gateway(monolith: &str, service: &str, name: &str, shadow: &str, service_timeout_ms: u64) -> TestGateway {
    let config = format!(
        r#"{base}
[upstreams.users]
url = "{service}"
timeout_ms = {service_timeout_ms}

[[routes]]
name = "{name}"
prefix = "/api/users"
service = "users"
rollout_percent = 0
shadow = {shadow}
"#,
        base = base_config(monolith, ""),
    );
    TestGateway::start(&config).await
}

async fn migration_shadow(gateway: &TestGateway) -> Value {
    let report = get(&gateway.admin_url("/admin/migration")).await.json();
    report["routes"][0]["shadow"].clone()
}

/// Waits until the route's copies have all been accounted for (compared + errors +
/// dropped reaches `n`), then returns the summary.
async fn settled(gateway: &TestGateway, n: u64) -> Value {
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    loop {
        let shadow = migration_shadow(gateway).await;
        let done = ["compared", "errors", "dropped"].iter().map(|k| shadow[*k].as_u64().unwrap_or(0)).sum::<u64>();
        if done >= n || tokio::time::Instant::now() > deadline {
            return shadow;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(gateway: &TestGateway) -> String {
    String::from_utf8_lossy(&get(&gateway.admin_url("/metrics")).await.body).into_owned()
}

fn counted(metrics: &str, route: &str, result: &str) -> u64 {
    let series = format!("gateway_shadow_requests_total{{route=\"{route}\",result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

#[tokio::test]
async fn the_client_gets_the_monolith_and_the_difference_is_reported_by_pointer() {
    let monolith = Scripted::start(fixed(200, r#"{"id":7,"name":"Ada","tags":["a","b"]}"#)).await;
    let service = Scripted::start(fixed(200, r#"{"tags":["a","b"],"name":"Eve","id":7}"#)).await;
    let gateway = gateway(&monolith.url(), &service.url(), "shadow-diff", "{ percent = 100.0 }", 1000).await;
    for i in 0..10 {
        let id = format!("req-{i}");
        let reply = get_with(&gateway.url("/api/users/7?page=2"), &[("x-request-id", &id)]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["name"], "Ada", "the client always gets the monolith's answer");
    }
    let shadow = settled(&gateway, 10).await;
    assert_eq!((shadow["compared"].as_u64(), shadow["matched"].as_u64()), (Some(10), Some(0)), "{shadow}");
    assert_eq!(shadow["match_rate_percent"], 0.0);
    assert_eq!(shadow["mismatched_pointers"], serde_json::json!([{ "pointer": "/name", "count": 10 }]));
    assert_eq!(shadow["status_pairs"], serde_json::json!([{ "monolith": 200, "service": 200, "count": 10 }]));
    assert!(shadow["service_p99_ms"].is_number() && shadow["monolith_p50_ms"].is_number(), "{shadow}");

    let copies = service.copies();
    assert_eq!(copies.len(), 10);
    assert_eq!(copies[0].method, "GET");
    assert_eq!(copies[0].path_and_query, "/api/users/7?page=2");
    assert_eq!(copies[0].headers["x-gateway-shadow"], "1");
    let ids: Vec<&str> = copies.iter().map(|c| c.headers["x-request-id"].to_str().unwrap()).collect();
    assert!((0..10).all(|i| ids.contains(&format!("req-{i}").as_str())), "the copy keeps the request id: {ids:?}");
    assert!(monolith.seen().iter().all(|s| !s.headers.contains_key("x-gateway-shadow")), "only copies are marked");

    let samples = get(&gateway.admin_url("/admin/shadow/shadow-diff")).await;
    assert_eq!(samples.status, 200);
    let samples = samples.json();
    let last = samples["last_mismatches"].as_array().expect("a list");
    assert_eq!(last.len(), 10);
    assert_eq!(last[0]["method"], "GET");
    assert_eq!(last[0]["path"], "/api/users/7", "no query string");
    assert_eq!((last[0]["monolith_status"].as_u64(), last[0]["service_status"].as_u64()), (Some(200), Some(200)));
    assert_eq!(
        last[0]["differences"],
        serde_json::json!([{ "pointer": "/name", "monolith": "\"Ada\"", "service": "\"Eve\"" }])
    );
    assert_eq!(get(&gateway.admin_url("/admin/shadow/nope")).await.status, 404);
    assert_eq!(counted(&metrics(&gateway).await, "shadow-diff", "mismatch"), 10);
    assert_eq!(counted(&metrics(&gateway).await, "shadow-diff", "match"), 0);
}

#[tokio::test]
async fn a_failing_or_hanging_service_changes_nothing_for_the_client() {
    let monolith = Scripted::start(fixed(200, r#"{"ok":true}"#)).await;
    // The first three copies get a 500, the rest hang past the service's timeout.
    let service = Scripted::start(|n, _| match n {
        0..3 => (500, r#"{"error":"boom"}"#.to_owned(), Duration::ZERO),
        _ => (200, r#"{"ok":true}"#.to_owned(), Duration::from_secs(3)),
    })
    .await;
    let gateway = gateway(&monolith.url(), &service.url(), "shadow-fail", "{ percent = 100.0 }", 300).await;
    for i in 0..6 {
        let started = tokio::time::Instant::now();
        let reply = get(&gateway.url("/api/users/1")).await;
        assert_eq!((reply.status.as_u16(), reply.json()["ok"].as_bool()), (200, Some(true)), "request {i}");
        // The copy of a hanging service takes 300 ms to time out; the client never waits for it.
        assert!(started.elapsed() < Duration::from_millis(250), "request {i} took {:?}", started.elapsed());
    }
    let shadow = settled(&gateway, 6).await;
    assert_eq!((shadow["compared"].as_u64(), shadow["errors"].as_u64()), (Some(3), Some(3)), "{shadow}");
    assert_eq!(shadow["status_pairs"], serde_json::json!([{ "monolith": 200, "service": 500, "count": 3 }]));
    let pointers: Vec<&str> =
        shadow["mismatched_pointers"].as_array().unwrap().iter().map(|p| p["pointer"].as_str().unwrap()).collect();
    assert!(pointers.contains(&"status") && pointers.contains(&"/error"), "{pointers:?}");
    let metrics = metrics(&gateway).await;
    assert_eq!(counted(&metrics, "shadow-fail", "mismatch"), 3);
    assert_eq!(counted(&metrics, "shadow-fail", "error"), 3);
}

#[tokio::test]
async fn percent_copies_its_share_and_only_listed_methods() {
    let monolith = Scripted::start(fixed(200, "{}")).await;
    let service = Scripted::start(fixed(200, "{}")).await;
    let tenth = gateway(&monolith.url(), &service.url(), "shadow-tenth", "{ percent = 10.0 }", 1000).await;
    for _ in 0..100 {
        assert_eq!(get(&tenth.url("/api/users/1")).await.status, 200);
    }
    let shadow = settled(&tenth, 10).await;
    assert_eq!(shadow["compared"], 10, "one request in ten: {shadow}");
    assert_eq!(service.copies().len(), 10);

    // Default methods: a POST is never copied (it would run twice).
    let post = |gateway: &TestGateway, body: &'static str| {
        Request::post(gateway.url("/api/users"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let all = gateway(&monolith.url(), &service.url(), "shadow-reads", "{ percent = 100.0 }", 1000).await;
    let before = service.copies().len();
    assert_eq!(send(post(&all, r#"{"n":1}"#)).await.status, 200);
    assert_eq!(get(&all.url("/api/users/2")).await.status, 200);
    settled(&all, 1).await;
    let copies = service.copies();
    assert_eq!(copies.len(), before + 1);
    assert_eq!(copies.last().unwrap().method, "GET");

    // Listed: the POST is copied with its body; one over max_body_bytes is not.
    let posts = gateway(
        &monolith.url(),
        &service.url(),
        "shadow-posts",
        r#"{ percent = 100.0, methods = ["POST"], max_body_bytes = 64 }"#,
        1000,
    )
    .await;
    assert_eq!(send(post(&posts, r#"{"n":2}"#)).await.status, 200);
    let large = r#"{"n":"................................................................................"}"#;
    let reply = send(post(&posts, large)).await;
    assert_eq!(reply.status, 200, "the monolith still gets the large body");
    assert_eq!(monolith.seen().last().unwrap().body, large.as_bytes());
    let shadow = settled(&posts, 2).await;
    assert_eq!((shadow["compared"].as_u64(), shadow["dropped"].as_u64()), (Some(1), Some(1)), "{shadow}");
    let copy = service.copies().into_iter().last().unwrap();
    assert_eq!((copy.method.as_str(), &copy.body[..]), ("POST", &br#"{"n":2}"#[..]));
}

#[tokio::test]
async fn ignore_and_learned_noise_hide_what_they_should_and_nothing_else() {
    let clock = Arc::new(AtomicU64::new(0));
    let tick = clock.clone();
    // The monolith's "at" changes on every answer, even to the same request.
    let monolith = Scripted::start(move |_, _| {
        let at = tick.fetch_add(1, Ordering::SeqCst);
        (200, format!(r#"{{"id":7,"at":{at},"name":"Ada","etag":"m"}}"#), Duration::ZERO)
    })
    .await;
    let service = Scripted::start(fixed(200, r#"{"id":7,"at":-1,"name":"Eve","etag":"s"}"#)).await;

    let learning =
        gateway(&monolith.url(), &service.url(), "shadow-noise", "{ percent = 100.0, learn_noise = true }", 1000).await;
    for _ in 0..5 {
        assert_eq!(get(&learning.url("/api/users/7")).await.json()["name"], "Ada");
    }
    let shadow = settled(&learning, 5).await;
    let pointers: Vec<&str> =
        shadow["mismatched_pointers"].as_array().unwrap().iter().map(|p| p["pointer"].as_str().unwrap()).collect();
    assert_eq!(pointers, ["/etag", "/name"], "the timestamp is noise; the rest is the service's: {shadow}");
    assert_eq!(shadow["noise_fields"], serde_json::json!([{ "pointer": "/at", "count": 5 }]));
    assert_eq!(shadow["noise_samples"], 5);
    assert_eq!(monolith.seen().len(), 10, "each learning copy asked the monolith a second time");
    assert_eq!(monolith.seen().iter().filter(|s| s.headers.contains_key("x-gateway-shadow")).count(), 5);

    let ignoring = gateway(
        &monolith.url(),
        &service.url(),
        "shadow-ignore",
        r#"{ percent = 100.0, ignore = ["/at", "/etag"] }"#,
        1000,
    )
    .await;
    for _ in 0..3 {
        get(&ignoring.url("/api/users/7")).await;
    }
    let shadow = settled(&ignoring, 3).await;
    assert_eq!(shadow["mismatched_pointers"], serde_json::json!([{ "pointer": "/name", "count": 3 }]), "{shadow}");
    assert_eq!(shadow["noise_fields"], serde_json::json!([]));
}

#[tokio::test]
async fn copies_beyond_max_in_flight_are_dropped_and_counted() {
    let monolith = Scripted::start(fixed(200, "{}")).await;
    let service = Scripted::start(|_, _| (200, "{}".to_owned(), Duration::from_millis(800))).await;
    let gateway =
        gateway(&monolith.url(), &service.url(), "shadow-bounded", "{ percent = 100.0, max_in_flight = 2 }", 2000)
            .await;
    for _ in 0..6 {
        assert_eq!(get(&gateway.url("/api/users/1")).await.status, 200);
    }
    let shadow = migration_shadow(&gateway).await;
    assert_eq!((shadow["dropped"].as_u64(), shadow["in_flight"].as_u64()), (Some(4), Some(2)), "{shadow}");
    let shadow = settled(&gateway, 6).await;
    assert_eq!((shadow["compared"].as_u64(), shadow["in_flight"].as_u64()), (Some(2), Some(0)), "{shadow}");
    assert_eq!(counted(&metrics(&gateway).await, "shadow-bounded", "dropped"), 4);
    assert!(eventually(|| service.copies().len() == 2).await);
}

#[tokio::test]
async fn samples_never_show_a_token_a_cookie_or_an_identity_header() {
    let monolith = Scripted::start(fixed(200, r#"{"who":"someone"}"#)).await;
    // A careless service echoes what it was sent.
    let service = Scripted::start(|_, seen| {
        let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = serde_json::json!({
            "who": header("authorization"),
            "cookie": header("cookie"),
            "session": header("cookie").split("session=").nth(1).unwrap_or(""),
        });
        (200, body.to_string(), Duration::ZERO)
    })
    .await;
    let gateway = gateway(&monolith.url(), &service.url(), "shadow-secrets", "{ percent = 100.0 }", 1000).await;
    let reply = get_with(
        &gateway.url("/api/users/7?api_key=k3y-in-query"),
        &[("authorization", "Bearer eyJ.s3cr3t.sig"), ("cookie", "theme=dark; session=c00kie-value")],
    )
    .await;
    assert_eq!(reply.status, 200);
    settled(&gateway, 1).await;
    let copy = &service.copies()[0];
    assert_eq!(copy.headers["authorization"], "Bearer eyJ.s3cr3t.sig", "the copy carries the caller's identity");
    let samples = get(&gateway.admin_url("/admin/shadow/shadow-secrets")).await;
    let shown = String::from_utf8_lossy(&samples.body).into_owned();
    for secret in ["s3cr3t", "c00kie-value", "k3y-in-query"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("[redacted]"), "{shown}");
    let migration = String::from_utf8_lossy(&get(&gateway.admin_url("/admin/migration")).await.body).into_owned();
    assert!(!migration.contains("s3cr3t"));
}

#[tokio::test]
async fn the_page_and_the_report_show_the_match_rate() {
    let monolith = Scripted::start(fixed(200, r#"{"a":1}"#)).await;
    let service =
        Scripted::start(|n, _| (200, if n % 2 == 0 { r#"{"a":1}"# } else { r#"{"a":2}"# }.to_owned(), Duration::ZERO))
            .await;
    let gateway = gateway(&monolith.url(), &service.url(), "shadow-shown", "{ percent = 100.0 }", 1000).await;
    for _ in 0..4 {
        get(&gateway.url("/api/users/1")).await;
    }
    let shadow = settled(&gateway, 4).await;
    assert_eq!(shadow["match_rate_percent"], 50.0);
    let page = String::from_utf8_lossy(&get(&gateway.admin_url("/admin/")).await.body).into_owned();
    assert!(page.contains("Shadow match") && page.contains("\"match_rate_percent\":50.0"), "the page embeds it");
    let report = get(&gateway.admin_url("/admin/migration")).await.json();
    let table = gateway::cli::report::render(&report);
    assert!(table.contains("SHADOW MATCH") && table.contains("50.0% of 4"), "{table}");
}

#[tokio::test]
async fn a_bad_shadow_section_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let config = format!(
        "{}\n[upstreams.users]\nurl = \"http://127.0.0.1:9\"\n\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\nshadow = {{ percent = 10.0, methods = [\"GET\", \"get\"], ignore = [\"no-slash\"] }}\n",
        base_config("http://127.0.0.1:9", "")
    );
    std::fs::write(&path, &config).unwrap();
    let error = gateway::config::load(&path, 1).expect_err("refused").to_string();
    let line = config.lines().position(|l| l.starts_with("shadow =")).unwrap() + 1;
    assert!(error.contains(&format!("routes.toml:{line}:")), "{error}");
    assert!(error.contains("routes[0].shadow") && error.contains("\"get\" is not a method name"), "{error}");
    assert!(error.contains("ignore: ") && error.contains("no-slash"), "{error}");
}
