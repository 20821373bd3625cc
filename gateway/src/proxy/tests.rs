//! The phases against in-memory upstreams: a real config, compiled as in production, with
//! every upstream's transport swapped for a function. No sockets.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway_plugin_api::side::Upstreams;
use gateway_plugin_api::{Exchange, FallbackReason, Flow, Phases, Plugin, RequestCtx, Target};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};

use super::{Peer, handle};
use crate::migration::MigrationStats;
use crate::snapshot::Snapshot;
use crate::upstream::Upstream;
use crate::upstream::memory::{MemoryReply, MemoryService};

/// What an in-memory upstream does with each request.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// 200 with a body naming the upstream and the path it got.
    Ok,
    /// This status.
    Status(u16),
    /// The connection cannot be made.
    Refuse,
    /// The exchange breaks after sending.
    Break,
    /// No answer for this long.
    Hang(Duration),
}

/// An in-memory upstream that records what it received.
#[derive(Clone)]
struct Recorder {
    name: &'static str,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<Request<Bytes>>>>,
}

impl Recorder {
    fn new(name: &'static str, behaviour: Behaviour) -> Self {
        Recorder { name, behaviour: Arc::new(Mutex::new(behaviour)), seen: Arc::default() }
    }

    fn service(&self) -> MemoryService {
        let me = self.clone();
        MemoryService::new(move |request: Request<Bytes>| {
            let me = me.clone();
            async move {
                let path = request.uri().to_string();
                me.seen.lock().unwrap().push(request);
                let behaviour = *me.behaviour.lock().unwrap();
                match behaviour {
                    Behaviour::Ok => MemoryReply::Respond(
                        Response::builder()
                            .header("x-upstream", me.name)
                            .body(Full::new(Bytes::from(format!("{} {path}", me.name))))
                            .unwrap(),
                    ),
                    Behaviour::Status(status) => MemoryReply::Respond(
                        Response::builder().status(status).header("x-upstream", me.name).body(Full::default()).unwrap(),
                    ),
                    Behaviour::Refuse => MemoryReply::RefuseConnection,
                    Behaviour::Break => MemoryReply::BreakExchange,
                    Behaviour::Hang(time) => {
                        tokio::time::sleep(time).await;
                        MemoryReply::BreakExchange
                    }
                }
            }
        })
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Request<Bytes> {
        self.seen.lock().unwrap().last().cloned().expect("the upstream got a request")
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }
}

const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
default_upstream = "monolith"

[upstreams.monolith]
url = "http://monolith.test"

[upstreams.users]
url = "http://users.test"
timeout_ms = 1000
"#;

struct Harness {
    snapshot: Arc<Snapshot>,
    monolith: Recorder,
    users: Recorder,
}

/// Compiles `BASE` plus `extra`, answers `monolith` and `users` in memory, and gives the
/// snapshot its route statistics as the server would.
fn harness(extra: &str, users: Behaviour) -> Harness {
    harness_with(extra, users, |_| {})
}

fn harness_with(extra: &str, users: Behaviour, adjust: impl FnOnce(&mut Snapshot)) -> Harness {
    harness_from(BASE, extra, users, adjust)
}

/// As [`harness_with`], on another `[server]` and `[upstreams]` base.
fn harness_from(base: &str, extra: &str, users: Behaviour, adjust: impl FnOnce(&mut Snapshot)) -> Harness {
    let text = format!("{base}\n{extra}");
    let mut snapshot = crate::config::compile(Path::new("routes.toml"), &text, 1).unwrap_or_else(|e| panic!("{e}"));
    let monolith = Recorder::new("monolith", Behaviour::Ok);
    let users = Recorder::new("users", users);
    let mut swapped = BTreeMap::new();
    for (name, upstream) in &snapshot.upstreams {
        let recorder = if name == "users" { &users } else { &monolith };
        swapped.insert(name.clone(), Arc::new(upstream.with_memory_transport(recorder.service())));
    }
    let swap = |u: &Arc<Upstream>| swapped[&*u.name].clone();
    for route in &mut snapshot.routes {
        route.monolith = swap(&route.monolith);
        route.service = route.service.as_ref().map(swap);
    }
    snapshot.upstreams = swapped;
    let _ = snapshot.route_stats.set(MigrationStats::default().table_for(&snapshot));
    adjust(&mut snapshot);
    Harness { snapshot: Arc::new(snapshot), monolith, users }
}

const USERS_ROUTE: &str = r#"
[[routes]]
name = "users"
prefix = "/api/users"
service = "users"
"#;

fn peer() -> Peer {
    Peer::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
}

impl Harness {
    async fn send(&self, method: Method, uri: &str, body: &'static [u8]) -> Response<Bytes> {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "gateway.test")
            .body(Either::Right(Full::new(Bytes::from_static(body))))
            .unwrap();
        let response = handle(self.snapshot.clone(), request, &peer()).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("a whole body").to_bytes();
        Response::from_parts(parts, bytes)
    }

    async fn get(&self, uri: &str) -> Response<Bytes> {
        self.send(Method::GET, uri, b"").await
    }

    fn fallbacks(&self, route: usize) -> [u64; FallbackReason::ALL.len()] {
        self.snapshot.route_stats.get().expect("stats are set")[route].lock().total_fallbacks
    }
}

fn gateway_error(response: &Response<Bytes>) -> Option<&str> {
    response.headers().get("x-gateway-error").and_then(|v| v.to_str().ok())
}

fn answered_by(response: &Response<Bytes>) -> Option<&str> {
    response.headers().get("x-upstream").and_then(|v| v.to_str().ok())
}

// === routing and forwarding ===

#[tokio::test]
async fn a_matched_route_goes_to_the_service_and_the_rest_to_the_monolith() {
    let h = harness(USERS_ROUTE, Behaviour::Ok);
    let response = h.get("/api/users/7?x=1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "users /api/users/7?x=1");
    assert!(response.headers().contains_key("x-request-id"));
    let response = h.get("/legacy/page").await;
    assert_eq!(response.body(), "monolith /legacy/page");
    assert_eq!((h.users.count(), h.monolith.count()), (1, 1));
}

#[tokio::test]
async fn the_upstream_gets_the_normalised_path_and_forwarding_headers() {
    let h = harness(USERS_ROUTE, Behaviour::Ok);
    let response = h.get("/api/./users/%37").await;
    assert_eq!(response.body(), "users /api/users/7");
    let seen = h.users.last();
    assert_eq!(seen.headers()["x-forwarded-for"], "192.0.2.1");
    assert_eq!(seen.headers()["host"], "gateway.test");
    assert_eq!(seen.headers()["x-request-id"], response.headers()["x-request-id"]);
}

#[tokio::test]
async fn an_ambiguous_path_is_refused_before_any_upstream() {
    let h = harness(USERS_ROUTE, Behaviour::Ok);
    let response = h.get("/api/users/..%2f..%2fadmin").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(gateway_error(&response), Some("bad-path-encoded-slash"));
    assert_eq!((h.users.count(), h.monolith.count()), (0, 0));
}

// === the fallback matrix ===

struct Case {
    name: &'static str,
    route_extra: &'static str,
    service: Behaviour,
    method: Method,
    body: &'static [u8],
    status: u16,
    answered_by: Option<&'static str>,
    gateway_error: Option<&'static str>,
    fallback: Option<FallbackReason>,
    monolith_calls: usize,
}

#[tokio::test(start_paused = true)]
async fn the_fallback_matrix() {
    use Behaviour::*;
    let never = "fallback = \"never\"";
    let small = "fallback_body_limit = 4";
    let cases = [
        Case {
            name: "service answers",
            route_extra: "",
            service: Ok,
            method: Method::GET,
            body: b"",
            status: 200,
            answered_by: Some("users"),
            gateway_error: None,
            fallback: None,
            monolith_calls: 0,
        },
        Case {
            name: "5xx on GET is replayed",
            route_extra: "",
            service: Status(503),
            method: Method::GET,
            body: b"",
            status: 200,
            answered_by: Some("monolith"),
            gateway_error: None,
            fallback: Some(FallbackReason::Status5xx),
            monolith_calls: 1,
        },
        Case {
            name: "5xx on PUT with a small body is replayed",
            route_extra: "",
            service: Status(500),
            method: Method::PUT,
            body: b"{}",
            status: 200,
            answered_by: Some("monolith"),
            gateway_error: None,
            fallback: Some(FallbackReason::Status5xx),
            monolith_calls: 1,
        },
        Case {
            name: "5xx on POST is passed on",
            route_extra: "",
            service: Status(503),
            method: Method::POST,
            body: b"{}",
            status: 503,
            answered_by: Some("users"),
            gateway_error: None,
            fallback: None,
            monolith_calls: 0,
        },
        Case {
            name: "4xx is an answer",
            route_extra: "",
            service: Status(404),
            method: Method::GET,
            body: b"",
            status: 404,
            answered_by: Some("users"),
            gateway_error: None,
            fallback: None,
            monolith_calls: 0,
        },
        Case {
            name: "5xx with fallback never is passed on",
            route_extra: never,
            service: Status(503),
            method: Method::GET,
            body: b"",
            status: 503,
            answered_by: Some("users"),
            gateway_error: None,
            fallback: None,
            monolith_calls: 0,
        },
        Case {
            name: "5xx on a body over the replay limit is passed on",
            route_extra: small,
            service: Status(503),
            method: Method::PUT,
            body: b"0123456789",
            status: 503,
            answered_by: Some("users"),
            gateway_error: None,
            fallback: None,
            monolith_calls: 0,
        },
        Case {
            name: "refused connect on POST is replayed (nothing was sent)",
            route_extra: "",
            service: Refuse,
            method: Method::POST,
            body: b"{}",
            status: 200,
            answered_by: Some("monolith"),
            gateway_error: None,
            fallback: Some(FallbackReason::ConnectError),
            monolith_calls: 1,
        },
        Case {
            name: "refused connect with fallback never is a 502",
            route_extra: never,
            service: Refuse,
            method: Method::GET,
            body: b"",
            status: 502,
            answered_by: None,
            gateway_error: Some("upstream-connect-failed"),
            fallback: None,
            monolith_calls: 0,
        },
        Case {
            name: "a broken exchange on GET is replayed",
            route_extra: "",
            service: Break,
            method: Method::GET,
            body: b"",
            status: 200,
            answered_by: Some("monolith"),
            gateway_error: None,
            fallback: Some(FallbackReason::ExchangeError),
            monolith_calls: 1,
        },
        Case {
            name: "a broken exchange on POST is a 502",
            route_extra: "",
            service: Break,
            method: Method::POST,
            body: b"{}",
            status: 502,
            answered_by: None,
            gateway_error: Some("upstream-error"),
            fallback: None,
            monolith_calls: 0,
        },
        Case {
            name: "a timeout on GET is replayed",
            route_extra: "",
            service: Hang(Duration::from_secs(5)),
            method: Method::GET,
            body: b"",
            status: 200,
            answered_by: Some("monolith"),
            gateway_error: None,
            fallback: Some(FallbackReason::Timeout),
            monolith_calls: 1,
        },
        Case {
            name: "a timeout on POST is a 504",
            route_extra: "",
            service: Hang(Duration::from_secs(5)),
            method: Method::POST,
            body: b"{}",
            status: 504,
            answered_by: None,
            gateway_error: Some("upstream-timeout"),
            fallback: None,
            monolith_calls: 0,
        },
        Case {
            name: "a timeout with fallback never is a 504",
            route_extra: never,
            service: Hang(Duration::from_secs(5)),
            method: Method::GET,
            body: b"",
            status: 504,
            answered_by: None,
            gateway_error: Some("upstream-timeout"),
            fallback: None,
            monolith_calls: 0,
        },
    ];
    for case in cases {
        let h = harness(&format!("{USERS_ROUTE}{}\n", case.route_extra), case.service);
        let response = h.send(case.method.clone(), "/api/users/1", case.body).await;
        let name = case.name;
        assert_eq!(response.status().as_u16(), case.status, "{name}");
        assert_eq!(answered_by(&response), case.answered_by, "{name}");
        assert_eq!(gateway_error(&response), case.gateway_error, "{name}");
        assert_eq!(h.monolith.count(), case.monolith_calls, "{name}");
        assert_eq!(h.users.count(), 1, "{name}: the service is tried once");
        let fallbacks = h.fallbacks(0);
        for reason in FallbackReason::ALL {
            let expected = u64::from(case.fallback == Some(reason));
            assert_eq!(fallbacks[reason.index()], expected, "{name}: fallbacks for {}", reason.as_str());
        }
        if case.monolith_calls > 0 {
            let replay = h.monolith.last();
            assert_eq!(replay.uri(), "/api/users/1", "{name}: the monolith gets the path as matched");
            assert_eq!(replay.method(), case.method, "{name}");
            assert_eq!(replay.body(), case.body, "{name}: the replay carries the same body");
        }
    }
}

#[tokio::test]
async fn an_open_breaker_sends_callers_to_the_monolith_whatever_fallback_says() {
    let breaker = "\n[upstreams.users.breaker]\nfailures = 2\nopen_seconds = 60\n";
    let h = harness(&format!("{USERS_ROUTE}fallback = \"never\"\n{breaker}"), Behaviour::Status(500));
    for _ in 0..2 {
        assert_eq!(h.get("/api/users/1").await.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    h.users.set(Behaviour::Ok);
    let response = h.get("/api/users/1").await;
    assert_eq!(answered_by(&response), Some("monolith"), "the breaker is open");
    assert_eq!(h.users.count(), 2, "the service got nothing more");
    assert_eq!(h.fallbacks(0)[FallbackReason::BreakerOpen.index()], 1);
}

#[tokio::test]
async fn a_monolith_that_fails_is_a_502_without_fallback() {
    let h = harness(USERS_ROUTE, Behaviour::Ok);
    h.monolith.set(Behaviour::Refuse);
    let response = h.get("/legacy").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(gateway_error(&response), Some("upstream-connect-failed"));
    assert_eq!(h.fallbacks(1).iter().sum::<u64>(), 0);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_not_the_upstreams_fault() {
    let h = harness_with(USERS_ROUTE, Behaviour::Ok, |s| s.server.max_body_bytes = 4);
    let response = h.send(Method::POST, "/api/users/1", b"0123456789").await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(gateway_error(&response), Some("body-too-large"));
    assert_eq!(h.users.count(), 0);
}

// === the plugin contract's phases ===

/// A plugin that logs each hook it runs in and can wait or edit the outgoing request.
struct Probe {
    log: Arc<Mutex<Vec<&'static str>>>,
    waits: Mutex<u32>,
    always_wait: bool,
    side_upstream: Option<&'static str>,
}

impl Probe {
    fn new(log: &Arc<Mutex<Vec<&'static str>>>) -> Self {
        Probe { log: log.clone(), waits: Mutex::new(0), always_wait: false, side_upstream: None }
    }
}

impl Plugin for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn phases(&self) -> Phases {
        Phases {
            authenticate: true,
            on_request: true,
            upstream_request: true,
            upstream_exchange: true,
            mirror: true,
            on_response: true,
            on_complete: true,
        }
    }

    fn mirror(
        &self,
        ctx: &RequestCtx,
        _request: &http::request::Parts,
    ) -> Option<Box<dyn gateway_plugin_api::side::Mirror>> {
        assert_eq!(ctx.target, Some(Target::Monolith), "only what the monolith is chosen to answer");
        self.log.lock().unwrap().push("mirror");
        None
    }

    fn authenticate(&self, ctx: &mut RequestCtx, _request: &mut http::request::Parts) -> Flow {
        assert!(ctx.route.is_some() && ctx.client_ip.is_some(), "route and client ip come first");
        self.log.lock().unwrap().push("authenticate");
        Flow::Continue
    }

    fn on_request(&self, ctx: &mut RequestCtx, _request: &mut http::request::Parts) -> Flow {
        assert!(ctx.target.is_none(), "on_request runs before the side is chosen");
        let mut waits = self.waits.lock().unwrap();
        if self.always_wait || *waits == 0 {
            *waits += 1;
            self.log.lock().unwrap().push("wait");
            return Flow::Wait(Box::pin(tokio::task::yield_now()));
        }
        self.log.lock().unwrap().push("on_request");
        Flow::Continue
    }

    fn upstream_request(
        &self,
        ctx: &RequestCtx,
        request: &mut http::request::Parts,
        upstreams: &dyn Upstreams,
    ) -> Flow {
        assert!(ctx.target.is_some(), "the side is chosen before upstream_request");
        self.log.lock().unwrap().push("upstream_request");
        request.headers.insert("x-probe", http::HeaderValue::from_static("edited"));
        if let Some(name) = self.side_upstream {
            let copy = Request::builder().uri(request.uri.clone()).header("x-side", "1").body(Bytes::new()).unwrap();
            tokio::spawn(upstreams.send(name, copy, 1024));
        }
        Flow::Continue
    }

    fn upstream_exchange(&self, ctx: &RequestCtx, exchange: &Exchange, _request: &mut http::request::Parts) {
        assert_eq!(Some(exchange.route), ctx.route, "a forward is the matched route's exchange");
        self.log.lock().unwrap().push(match exchange.side {
            Target::Service => "upstream_exchange:service",
            _ => "upstream_exchange:monolith",
        });
    }

    fn on_response(&self, _ctx: &RequestCtx, response: &mut http::response::Parts) {
        self.log.lock().unwrap().push("on_response");
        response.headers.insert("x-probe-response", http::HeaderValue::from_static("1"));
    }

    fn on_complete(&self, _ctx: &RequestCtx, _outcome: &gateway_plugin_api::Outcome) {
        self.log.lock().unwrap().push("on_complete");
    }
}

fn with_probe(probe: Probe) -> impl FnOnce(&mut Snapshot) {
    move |snapshot| {
        let probe: Arc<dyn Plugin> = Arc::new(probe);
        let plugins = &mut snapshot.plugins;
        plugins.authenticate.push(probe.clone());
        plugins.on_request.push(probe.clone());
        plugins.upstream_request.push(probe.clone());
        plugins.upstream_exchange.push(probe.clone());
        plugins.mirror.push(probe.clone());
        plugins.on_response.push(probe.clone());
        plugins.on_complete.push(probe);
    }
}

#[tokio::test]
async fn hooks_run_in_phase_order_and_a_wait_calls_the_hook_again() {
    let log = Arc::default();
    let h = harness_with(USERS_ROUTE, Behaviour::Ok, with_probe(Probe::new(&log)));
    let response = h.get("/api/users/1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-probe-response"], "1");
    assert_eq!(
        *log.lock().unwrap(),
        [
            "authenticate",
            "wait",
            "on_request",
            "upstream_request",
            "upstream_exchange:service",
            "on_response",
            "on_complete"
        ]
    );
    assert_eq!(h.users.last().headers()["x-probe"], "edited", "upstream_request edits the outgoing request");

    // The monolith's side: mirror runs after upstream_request, before the exchange.
    log.lock().unwrap().clear();
    assert_eq!(h.get("/elsewhere").await.status(), StatusCode::OK);
    let log = log.lock().unwrap();
    let at = |phase: &str| log.iter().position(|e| *e == phase).unwrap_or_else(|| panic!("{phase} in {log:?}"));
    assert!(at("upstream_request") < at("mirror") && at("mirror") < at("upstream_exchange:monolith"), "{log:?}");
}

#[tokio::test]
async fn a_hook_that_keeps_waiting_gets_a_503_and_on_complete_still_runs() {
    let log = Arc::default();
    let probe = Probe { always_wait: true, ..Probe::new(&log) };
    let h = harness_with(USERS_ROUTE, Behaviour::Ok, with_probe(probe));
    let response = h.get("/api/users/1").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gateway_error(&response), Some("policy-stalled"));
    assert_eq!(h.users.count(), 0);
    let log = log.lock().unwrap();
    assert_eq!(log.iter().filter(|e| **e == "wait").count(), 3, "the first call and two more");
    assert_eq!(log.last(), Some(&"on_complete"));
}

#[tokio::test]
async fn upstream_request_can_send_side_requests_through_the_upstream_registry() {
    let log = Arc::default();
    let probe = Probe { side_upstream: Some("monolith"), ..Probe::new(&log) };
    let h = harness_with(USERS_ROUTE, Behaviour::Ok, with_probe(probe));
    let response = h.get("/api/users/9").await;
    assert_eq!(answered_by(&response), Some("users"));
    for _ in 0..100 {
        if h.monolith.count() > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let side = h.monolith.last();
    assert_eq!(side.uri(), "/api/users/9");
    assert_eq!(side.headers()["x-side"], "1");
    assert_eq!(side.headers()["host"], "monolith.test", "the registry sets the upstream's Host");
}

#[tokio::test]
async fn a_side_request_to_an_unknown_upstream_fails_cleanly() {
    let h = harness(USERS_ROUTE, Behaviour::Ok);
    let side = crate::upstream::call::SideRequests { upstreams: &h.snapshot.upstreams };
    let result = side.send("nope", Request::new(Bytes::new()), 10).await;
    assert_eq!(result.unwrap_err(), gateway_plugin_api::side::SideError::UnknownUpstream("nope".to_owned()));
    let result = side.send("users", Request::builder().uri("/x").body(Bytes::new()).unwrap(), 2).await;
    let too_large = result.unwrap_err();
    assert!(
        matches!(too_large, gateway_plugin_api::side::SideError::TooLarge { status, .. } if status == StatusCode::OK),
        "users answers 'users /x': {too_large:?}"
    );
}

// === route transforms ===

/// The users route with every transform; `users` wants its own Host, the monolith a literal.
fn transforms(users_host: &str, monolith_host: &str, route_extra: &str) -> Harness {
    let base = BASE
        .replace(
            "url = \"http://monolith.test\"",
            &format!("url = \"http://monolith.test\"\nhost_header = \"{monolith_host}\""),
        )
        .replace(
            "url = \"http://users.test\"",
            &format!("url = \"http://users.test:3001\"\nhost_header = \"{users_host}\""),
        );
    let routes = format!(
        r#"
[[routes]]
name = "users"
prefix = "/api/users"
service = "users"
service_prefix = "/v2/users"
request_headers = {{ set = {{ "x-migrated-by" = "gateway" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ "cache-control" = "no-store" }}, remove = ["x-upstream-secret"] }}
{route_extra}
"#
    );
    harness_from(&base, &routes, Behaviour::Ok, |_| {})
}

impl Harness {
    async fn get_with_debug(&self, uri: &str) -> Response<Bytes> {
        let request = Request::builder()
            .uri(uri)
            .header("host", "gateway.test")
            .header("x-debug", "1")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap();
        let response = handle(self.snapshot.clone(), request, &peer()).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("a whole body").to_bytes();
        Response::from_parts(parts, bytes)
    }
}

#[tokio::test]
async fn the_service_gets_its_prefix_and_host_and_both_sides_the_header_edits() {
    let h = transforms("upstream", "client", "");
    let response = h.get_with_debug("/api/users/7?fields=name").await;
    assert_eq!(response.body(), "users /v2/users/7?fields=name", "the prefix is replaced, the query kept");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let seen = h.users.last();
    assert_eq!(seen.headers()["host"], "users.test:3001", "host_header = upstream");
    assert_eq!(seen.headers()["x-migrated-by"], "gateway");
    assert!(!seen.headers().contains_key("x-debug"));
    assert_eq!(seen.headers()["x-forwarded-for"], "192.0.2.1", "the gateway's own headers are untouched");

    // Unmatched traffic: no route transforms; the monolith keeps the client's Host.
    let response = h.get_with_debug("/legacy").await;
    assert_eq!(response.body(), "monolith /legacy");
    assert!(!response.headers().contains_key("cache-control"));
    let seen = h.monolith.last();
    assert_eq!(seen.headers()["host"], "gateway.test", "host_header = client");
    assert_eq!(seen.headers()["x-debug"], "1");
}

#[tokio::test]
async fn the_monolith_side_of_a_transformed_route_gets_the_path_as_matched() {
    let h = transforms("upstream", "monolith.internal:8080", "rollout_percent = 0");
    let response = h.get_with_debug("/api/users/7?fields=name").await;
    assert_eq!(response.body(), "monolith /api/users/7?fields=name");
    assert_eq!(response.headers()["cache-control"], "no-store", "response edits apply on both sides");
    let seen = h.monolith.last();
    assert_eq!(seen.headers()["host"], "monolith.internal:8080", "a literal host_header");
    assert_eq!(seen.headers()["x-migrated-by"], "gateway", "request edits apply on both sides");
    assert!(!seen.headers().contains_key("x-debug"));
    assert_eq!(h.users.count(), 0);
}

#[tokio::test]
async fn a_replay_after_sending_goes_to_the_monolith_as_matched() {
    let h = transforms("users.internal", "client", "fallback = \"safe\"");
    h.users.set(Behaviour::Status(503));
    let response = h.get_with_debug("/api/users/7?fields=name").await;
    assert_eq!(response.body(), "monolith /api/users/7?fields=name");
    assert_eq!(h.users.last().uri(), "/v2/users/7?fields=name", "the service got its rewrite first");
    assert_eq!(h.users.last().headers()["host"], "users.internal");
    let replay = h.monolith.last();
    assert_eq!(replay.headers()["host"], "gateway.test", "the replay carries the client's Host, not the service's");
    assert_eq!(replay.headers()["x-migrated-by"], "gateway");
    assert!(!replay.headers().contains_key("x-debug"));
    assert_eq!(h.fallbacks(0)[FallbackReason::Status5xx as usize], 1);
}

#[tokio::test]
async fn a_request_that_never_left_is_replayed_as_matched() {
    let h = transforms("upstream", "client", "fallback = \"safe\"");
    h.users.set(Behaviour::Refuse);
    // A POST is replayed only because it never left the gateway.
    let response = h.send(Method::POST, "/api/users/7?x=1", b"{}").await;
    assert_eq!(response.body(), "monolith /api/users/7?x=1");
    assert_eq!(h.users.count(), 1, "the refused attempt was recorded");
    assert_eq!(h.monolith.last().headers()["host"], "gateway.test");
    assert_eq!(h.monolith.last().headers()["x-migrated-by"], "gateway");
}

#[tokio::test]
async fn an_aggregate_part_through_a_route_gets_the_routes_rewrite() {
    let h = transforms(
        "upstream",
        "client",
        r#"
[[aggregates]]
name = "dashboard"
path = "/api/dashboard"
parts = [
  { name = "profile", route = "users", path = "/api/users/me?full=1" },
  { name = "news", upstream = "monolith", path = "/news" },
]
"#,
    );
    let response = h.get("/api/dashboard").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "the in-memory upstreams answer text, not JSON");
    let part = h.users.last();
    assert_eq!(part.uri(), "/v2/users/me?full=1");
    assert_eq!(part.headers()["host"], "users.test:3001");
    assert_eq!(part.headers()["x-migrated-by"], "gateway");
    let news = h.monolith.last();
    assert_eq!(news.uri(), "/news", "an upstream part has no route transforms");
    assert_eq!(news.headers()["host"], "monolith.test", "a request the gateway makes gets the url's host:port");
    assert!(!news.headers().contains_key("x-migrated-by"));
}

#[tokio::test]
async fn explain_and_the_data_plane_agree_on_each_sides_path() {
    let h = transforms("upstream", "monolith.internal", "");
    let route = &h.snapshot.routes[0];
    let target = "/api/users/7?fields=name";
    assert_eq!(super::upstream_target(&h.snapshot, route, Target::Service, target), "/v2/users/7?fields=name");
    assert_eq!(super::upstream_target(&h.snapshot, route, Target::Monolith, target), target);
    let response = h.get(target).await;
    assert_eq!(response.body(), "users /v2/users/7?fields=name");
}
