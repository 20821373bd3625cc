//! OpenTelemetry end to end: a collector in the harness (a recording upstream at
//! `/v1/traces`) decodes the OTLP/HTTP protobuf the gateway exports and the tests check
//! the spans' structure: trace ids continued from the caller, parent relations (server
//! span -> upstream call, fallback replay, one span per aggregate part), the upstream's
//! `traceparent` naming an exported span, sampling at 0% and 100% and parent-based, and
//! a collector that is down costing only dropped spans.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;

use crate::harness::*;

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every span the collector received, with the resource attributes of its batch.
fn exported(collector: &RunningMock) -> (Vec<Span>, HashMap<String, String>) {
    let mut spans = Vec::new();
    let mut resource = HashMap::new();
    for request in collector.requests() {
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(request.headers["content-type"], "application/x-protobuf");
        let export = ExportTraceServiceRequest::decode(&request.body[..]).expect("an OTLP export request");
        for batch in export.resource_spans {
            for attribute in batch.resource.iter().flat_map(|r| r.attributes.iter()) {
                if let Some(Value::StringValue(text)) = attribute.value.as_ref().and_then(|v| v.value.clone()) {
                    resource.insert(attribute.key.clone(), text);
                }
            }
            spans.extend(batch.scope_spans.into_iter().flat_map(|scope| scope.spans));
        }
    }
    (spans, resource)
}

/// Waits for at least `count` spans (the exporter flushes every second).
async fn wait_for_spans(collector: &RunningMock, count: usize) -> Vec<Span> {
    assert!(
        eventually_async(|| async { exported(collector).0.len() >= count }).await,
        "{count} spans exported, got {:?}",
        exported(collector).0.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
    );
    exported(collector).0
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        Value::StringValue(text) => Some(text.clone()),
        Value::IntValue(n) => Some(n.to_string()),
        _ => None,
    })
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()))
}

struct World {
    monolith: RunningMock,
    users: RunningMock,
    collector: RunningMock,
    gateway: TestGateway,
}

async fn world(sample_percent: &str, users: MockUpstream, collector_url: Option<String>) -> World {
    world_with(sample_percent, users, collector_url, "rollout_percent = 100").await
}

async fn world_with(sample_percent: &str, users: MockUpstream, collector_url: Option<String>, dial: &str) -> World {
    let monolith = MockUpstream::new("monolith").start().await;
    let users = users.start().await;
    let collector = MockUpstream::new("collector").start().await;
    let config = format!(
        r#"{base}
[upstreams.users]
url = "{users}"

[[routes]]
name = "users"
prefix = "/api/users"
service = "users"
{dial}

[[aggregates]]
name = "dashboard"
path = "/api/dashboard"
parts = [
  {{ name = "profile", upstream = "users", path = "/profile" }},
  {{ name = "legacy", upstream = "monolith", path = "/legacy" }},
]

[telemetry]
otlp_endpoint = "{collector}"
trace_sample_percent = {sample_percent}
service_name = "edge"
resource_attributes = {{ "deployment.environment" = "test" }}
"#,
        base = base_config(&monolith.url(), ""),
        users = users.url(),
        collector = collector_url.unwrap_or_else(|| collector.url()),
    );
    let gateway = TestGateway::start(&config).await;
    World { monolith, users, collector, gateway }
}

#[tokio::test]
async fn a_request_is_a_server_span_whose_child_is_the_upstream_call() {
    let w = world("100", MockUpstream::new("users"), None).await;
    assert_eq!(get(&w.gateway.url("/api/users/7")).await.status, 200);
    let spans = wait_for_spans(&w.collector, 2).await;
    let server = named(&spans, "GET users");
    let call = named(&spans, "upstream users");
    assert_eq!((server.kind, call.kind), (SpanKind::Server as i32, SpanKind::Client as i32));
    assert!(server.parent_span_id.is_empty(), "a new trace: the server span is its root");
    assert_eq!(call.trace_id, server.trace_id);
    assert_eq!(call.parent_span_id, server.span_id, "the upstream call is the server span's child");
    assert!(server.start_time_unix_nano <= call.start_time_unix_nano);
    assert!(call.end_time_unix_nano <= server.end_time_unix_nano);
    for (key, value) in [
        ("http.route", "users"),
        ("gateway.side", "service"),
        ("gateway.upstream", "users"),
        ("http.response.status_code", "200"),
        ("url.path", "/api/users/7"),
    ] {
        assert_eq!(attribute(server, key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(attribute(call, "http.response.status_code").as_deref(), Some("200"));
    // The service was told the gateway's client span is its parent.
    let sent = w.users.requests()[0].headers["traceparent"].to_str().expect("text").to_owned();
    assert_eq!(sent, format!("00-{}-{}-01", hex(&server.trace_id), hex(&call.span_id)));
    let (_, resource) = exported(&w.collector);
    assert_eq!(resource.get("service.name").map(String::as_str), Some("edge"));
    assert_eq!(resource.get("deployment.environment").map(String::as_str), Some("test"));
}

#[tokio::test]
async fn sampling_is_parent_based_and_zero_percent_records_only_sampled_callers() {
    let w = world("0", MockUpstream::new("users"), None).await;
    // No caller trace at 0%: nothing recorded, nothing added.
    assert_eq!(get(&w.gateway.url("/api/users/1")).await.status, 200);
    // A caller that did not sample: passed on untouched, not recorded.
    let unsampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    assert_eq!(get_with(&w.gateway.url("/api/users/2"), &[("traceparent", &unsampled)]).await.status, 200);
    // A caller that sampled: continued even at 0%.
    let sampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    assert_eq!(get_with(&w.gateway.url("/api/users/3"), &[("traceparent", &sampled)]).await.status, 200);
    let spans = wait_for_spans(&w.collector, 2).await;
    assert!(spans.iter().all(|s| hex(&s.trace_id) == CALLER_TRACE), "only the sampled caller's trace is recorded");
    let server = named(&spans, "GET users");
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN, "the server span continues the caller's span");
    let received = w.users.requests();
    assert!(!received[0].headers.contains_key("traceparent"), "no trace invented at 0%");
    assert_eq!(received[1].headers["traceparent"], unsampled.as_str(), "an unsampled trace passes on as is");
    let call = named(&spans, "upstream users");
    assert_eq!(received[2].headers["traceparent"], format!("00-{CALLER_TRACE}-{}-01", hex(&call.span_id)).as_str());
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(exported(&w.collector).0.len(), 2, "nothing else was exported");
}

#[tokio::test]
async fn aggregate_parts_and_a_fallback_replay_are_child_spans_of_the_request() {
    let w = world("100", MockUpstream::new("users").status(503), None).await;
    assert_eq!(get(&w.gateway.url("/api/users/9")).await.status, 200, "the monolith answered instead");
    let spans = wait_for_spans(&w.collector, 3).await;
    let server = named(&spans, "GET users");
    let failed = named(&spans, "upstream users");
    let replay = named(&spans, "fallback replay monolith");
    assert_eq!((&failed.parent_span_id, &replay.parent_span_id), (&server.span_id, &server.span_id));
    assert_eq!(attribute(failed, "http.response.status_code").as_deref(), Some("503"));
    assert!(failed.status.as_ref().is_some_and(|s| s.code == 2), "the failed call is an error span");
    assert_eq!(attribute(server, "gateway.fallback").as_deref(), Some("status_5xx"));
    assert_eq!(attribute(server, "gateway.side").as_deref(), Some("monolith"));
    let replayed = w.monolith.requests();
    assert_eq!(
        replayed[0].headers["traceparent"],
        format!("00-{}-{}-01", hex(&server.trace_id), hex(&replay.span_id)).as_str()
    );

    w.users.set_status(200);
    assert_eq!(get(&w.gateway.url("/api/dashboard")).await.status, 200);
    let spans = wait_for_spans(&w.collector, 6).await;
    let aggregate = named(&spans, "GET dashboard");
    for part in ["aggregate part profile -> users", "aggregate part legacy -> monolith"] {
        let span = named(&spans, part);
        assert_eq!(span.parent_span_id, aggregate.span_id, "{part} is a child of the aggregate request");
        assert_eq!(span.trace_id, aggregate.trace_id);
    }
}

#[tokio::test]
async fn a_collector_that_is_down_costs_dropped_spans_not_requests() {
    let nowhere = format!("http://{}", closed_port().await);
    let w = world("100", MockUpstream::new("users"), Some(nowhere)).await;
    for i in 0..20 {
        assert_eq!(get(&w.gateway.url(&format!("/api/users/{i}"))).await.status, 200);
    }
    let dropped = || async {
        let text = String::from_utf8_lossy(&get(&w.gateway.admin_url("/metrics")).await.body).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("gateway_trace_spans_dropped_total{reason=\"export_failed\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(eventually_async(|| async { dropped().await >= 40 }).await, "40 spans dropped: {}", dropped().await);
    assert!(w.collector.requests().is_empty());
}

#[tokio::test]
async fn each_shadow_copy_is_a_child_span() {
    let shadowed = "rollout_percent = 0\nshadow = { percent = 100.0, ignore = [\"/served_by\"] }";
    let w = world_with("100", MockUpstream::new("users"), None, shadowed).await;
    assert_eq!(get(&w.gateway.url("/api/users/5")).await.status, 200);
    let spans = wait_for_spans(&w.collector, 3).await;
    let server = named(&spans, "GET users");
    let copy = named(&spans, "shadow copy users");
    assert_eq!(copy.parent_span_id, server.span_id);
    assert_eq!(named(&spans, "upstream monolith").parent_span_id, server.span_id);
    assert!(eventually(|| !w.users.requests().is_empty()).await);
    let sent = w.users.requests()[0].headers["traceparent"].to_str().expect("text").to_owned();
    assert_eq!(sent, format!("00-{}-{}-01", hex(&server.trace_id), hex(&copy.span_id)), "the copy names its span");
}
