//! OpenTelemetry spans: one server span per traced request, a child span for each call
//! made for it (the upstream call, a fallback replay, each aggregate part, each shadow
//! copy), exported over OTLP/HTTP (protobuf) to `[telemetry] otlp_endpoint`.
//!
//! Sampling is parent-based: a caller's `traceparent` that says "sampled" is continued,
//! one that says "not sampled" is passed on untouched and nothing is recorded; a request
//! without one starts a new trace, recorded for `trace_sample_percent` of them (decided on
//! the trace id, as OpenTelemetry's ratio sampler does). A traced request's upstream gets
//! `traceparent` naming the gateway's client span as its parent.
//!
//! The data plane never waits for the export: a finished span goes into a bounded queue
//! (`try_send`); a full queue drops it and counts it. One task per config batches the
//! queue (up to [`BATCH`] spans, or every [`FLUSH_EVERY`]) and POSTs it over the same
//! hyper client and TLS stack the upstreams use; a collector that is down or slow costs
//! dropped spans (`gateway_trace_spans_dropped_total{reason}`), never latency.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gateway_plugin_api::TraceContext;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderMap, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as ProtoSpan, Status, span, status};
use prost::Message;
use tokio::sync::mpsc;

use crate::tls::UpstreamTls;

/// The W3C header.
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Spans waiting for export at most; more are dropped.
pub const QUEUE: usize = 4096;
/// Spans per export request at most.
pub const BATCH: usize = 512;
/// Longest a finished span waits for its batch.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Longest one export may take, connect to answer.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans exported.
pub const SPANS_EXPORTED_TOTAL: &str = "gateway_trace_spans_exported_total";
/// Spans dropped, by reason (`queue_full`, `export_failed`).
pub const SPANS_DROPPED_TOTAL: &str = "gateway_trace_spans_dropped_total";

/// `[telemetry]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// Where spans are POSTed (`{otlp_endpoint}/v1/traces`).
    pub url: Uri,
    /// How the collector is verified (`https://`).
    pub tls: Option<UpstreamTls>,
    /// Share of new traces recorded, basis points (10,000 = all).
    pub sample_basis_points: u32,
    /// `service.name`.
    pub service_name: String,
    /// More resource attributes.
    pub resource_attributes: Vec<(String, String)>,
}

/// The kind of a recorded span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request as the gateway served it.
    Server,
    /// A call the gateway made for it.
    Client,
}

/// One finished span, as the data plane hands it over.
#[derive(Debug)]
pub struct FinishedSpan {
    /// Its trace.
    pub trace_id: [u8; 16],
    /// Its id.
    pub span_id: [u8; 8],
    /// Its parent, if any (the caller's span for a server span).
    pub parent: Option<[u8; 8]>,
    /// What it was: `GET users`, `upstream users`, `fallback replay monolith`, ...
    pub name: String,
    /// Server or client.
    pub kind: Kind,
    /// Start and end, Unix nanoseconds.
    pub start_unix_nanos: u64,
    /// End, Unix nanoseconds.
    pub end_unix_nanos: u64,
    /// Attributes.
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// An error to report in the span's status.
    pub error: Option<String>,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    /// Text.
    Text(String),
    /// A number.
    Int(i64),
}

/// The exporter of one config: its settings and its queue.
pub struct Tracer {
    settings: TraceSettings,
    queue: mpsc::Sender<FinishedSpan>,
    /// Taken by [`Tracer::start`], which runs the export task.
    receiver: Mutex<Option<mpsc::Receiver<FinishedSpan>>>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("url", &self.settings.url).finish_non_exhaustive()
    }
}

impl Tracer {
    /// A tracer for `settings`; nothing is exported until [`Tracer::start`].
    pub fn new(settings: TraceSettings) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        Tracer { settings, queue, receiver: Mutex::new(Some(receiver)) }
    }

    /// Its settings.
    pub fn settings(&self) -> &TraceSettings {
        &self.settings
    }

    /// Starts the export task, once (it ends when the last snapshot holding this tracer
    /// is gone and the queue is drained).
    pub fn start(&self) {
        let receiver = self.receiver.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(receiver) = receiver {
            tokio::spawn(export(self.settings.clone(), receiver));
        }
    }

    /// The trace context for a request with these headers, when it is to be recorded;
    /// `None` leaves the request untraced (its `traceparent`, if any, passes on as is).
    pub fn begin(&self, headers: &HeaderMap) -> Option<Begun> {
        match headers.get(&TRACEPARENT).and_then(parse_traceparent) {
            Some(parent) if parent.sampled => Some(Begun {
                context: TraceContext { trace_id: parent.trace_id, span_id: new_span_id() },
                parent: Some(parent.span_id),
                start_unix_nanos: unix_nanos(),
            }),
            Some(_) => None,
            None => {
                if self.settings.sample_basis_points == 0 {
                    return None;
                }
                let trace_id = new_trace_id();
                sampled(&trace_id, self.settings.sample_basis_points).then(|| Begun {
                    context: TraceContext { trace_id, span_id: new_span_id() },
                    parent: None,
                    start_unix_nanos: unix_nanos(),
                })
            }
        }
    }

    /// Hands a finished span to the exporter; a full queue drops it (counted).
    pub fn record(&self, span: FinishedSpan) {
        if self.queue.try_send(span).is_err() {
            metrics::counter!(SPANS_DROPPED_TOTAL, "reason" => "queue_full").increment(1);
        }
    }
}

/// A request the tracer records.
#[derive(Clone, Copy, Debug)]
pub struct Begun {
    /// Its trace and the gateway's server span.
    pub context: TraceContext,
    /// The caller's span, when the trace came with the request.
    pub parent: Option<[u8; 8]>,
    /// When it started, Unix nanoseconds.
    pub start_unix_nanos: u64,
}

/// A call in progress, as a span.
#[derive(Debug)]
pub struct ChildSpan {
    trace_id: [u8; 16],
    parent: [u8; 8],
    span_id: [u8; 8],
    name: String,
    start_unix_nanos: u64,
}

impl ChildSpan {
    /// A child span of `parent` for a call, started now.
    pub fn start(parent: &TraceContext, name: String) -> Self {
        ChildSpan {
            trace_id: parent.trace_id,
            parent: parent.span_id,
            span_id: new_span_id(),
            name,
            start_unix_nanos: unix_nanos(),
        }
    }

    /// The `traceparent` the callee gets: this span as its parent, sampled.
    pub fn traceparent(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("00-{}-{}-01", hex(&self.trace_id), hex(&self.span_id)))
            .expect("hex digits are a valid header value")
    }

    /// Sets this span as the parent in `headers` (replacing a caller's).
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(&TRACEPARENT, self.traceparent());
    }

    /// Records the span as finished now, with its callee's status or its error.
    pub fn finish(
        self,
        tracer: &Tracer,
        mut attributes: Vec<(&'static str, AttributeValue)>,
        status: Option<u16>,
        error: Option<String>,
    ) {
        if let Some(status) = status {
            attributes.push(("http.response.status_code", AttributeValue::Int(i64::from(status))));
        }
        let error = error.or_else(|| status.filter(|s| *s >= 500).map(|s| format!("status {s}")));
        tracer.record(FinishedSpan {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: Some(self.parent),
            name: self.name,
            kind: Kind::Client,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: unix_nanos(),
            attributes,
            error,
        });
    }
}

/// A parsed `traceparent` (W3C Trace Context, version 00 or a later one read as 00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The caller's span.
    pub span_id: [u8; 8],
    /// The caller recorded it.
    pub sampled: bool,
}

/// Reads `00-<32 hex>-<16 hex>-<2 hex>`; `None` for anything else, all-zero ids included.
pub fn parse_traceparent(value: &HeaderValue) -> Option<TraceParent> {
    let text = value.to_str().ok()?.trim();
    let mut parts = text.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version ff is invalid; 00 has exactly four fields; a later version may have more,
    // and is read as 00.
    let _: [u8; 1] = unhex(version)?;
    if version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace_id: [u8; 16] = unhex(trace)?;
    let span_id: [u8; 8] = unhex(span)?;
    let flags: [u8; 1] = unhex(flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(TraceParent { trace_id, span_id, sampled: flags[0] & 1 == 1 })
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// Whether a new trace is recorded at `basis_points`: its id's last 8 bytes, read as a
/// number, fall in the lowest share (OpenTelemetry's TraceIdRatioBased rule), so every
/// replica decides the same for the same trace.
pub fn sampled(trace_id: &[u8; 16], basis_points: u32) -> bool {
    if basis_points >= 10_000 {
        return true;
    }
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
    let bound = (u128::from(u64::MAX) * u128::from(basis_points) / 10_000) as u64;
    low < bound
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Now, Unix nanoseconds.
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The export task: batches the queue and POSTs each batch.
async fn export(settings: TraceSettings, mut receiver: mpsc::Receiver<FinishedSpan>) {
    let resource = resource(&settings);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = match receiver.recv().await {
            Some(span) => span,
            None => return,
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        let body = encode(&resource, batch.drain(..));
        match tokio::time::timeout(EXPORT_TIMEOUT, post(&settings, body)).await {
            Ok(Ok(())) => metrics::counter!(SPANS_EXPORTED_TOTAL).increment(count),
            Ok(Err(reason)) => export_failed(count, &reason),
            Err(_) => export_failed(count, "timed out"),
        }
    }
}

fn export_failed(count: u64, reason: &str) {
    metrics::counter!(SPANS_DROPPED_TOTAL, "reason" => "export_failed").increment(count);
    tracing::debug!(spans = count, reason, "span export failed; the spans are dropped");
}

fn resource(settings: &TraceSettings) -> Resource {
    let mut attributes = vec![text_attribute("service.name", &settings.service_name)];
    for (key, value) in &settings.resource_attributes {
        attributes.push(text_attribute(key, value));
    }
    attributes.push(text_attribute("telemetry.sdk.name", "gateway"));
    Resource { attributes, ..Resource::default() }
}

fn text_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
        ..KeyValue::default()
    }
}

/// One OTLP export request of `spans`.
pub fn encode(resource: &Resource, spans: impl Iterator<Item = FinishedSpan>) -> Vec<u8> {
    let spans = spans
        .map(|s| ProtoSpan {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name,
            kind: match s.kind {
                Kind::Server => span::SpanKind::Server as i32,
                Kind::Client => span::SpanKind::Client as i32,
            },
            start_time_unix_nano: s.start_unix_nanos,
            end_time_unix_nano: s.end_unix_nanos.max(s.start_unix_nanos),
            attributes: s
                .attributes
                .into_iter()
                .map(|(key, value)| KeyValue {
                    key: key.to_owned(),
                    value: Some(AnyValue {
                        value: Some(match value {
                            AttributeValue::Text(text) => any_value::Value::StringValue(text),
                            AttributeValue::Int(n) => any_value::Value::IntValue(n),
                        }),
                    }),
                    ..KeyValue::default()
                })
                .collect(),
            status: s.error.map(|message| Status { message, code: status::StatusCode::Error as i32 }),
            ..ProtoSpan::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "gateway".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
}

async fn post(settings: &TraceSettings, body: Vec<u8>) -> Result<(), String> {
    let authority = settings.url.authority().ok_or("the URL has no host")?;
    let address = crate::upstream::connect_address(authority, settings.tls.is_some());
    let name: Arc<str> = Arc::from("otlp");
    let stream = crate::upstream::connect_upstream(&name, &address, EXPORT_TIMEOUT, settings.tls.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let mut request = Request::post(settings.url.path_and_query().map_or("/v1/traces", |p| p.as_str()))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    headers.insert(HOST, HeaderValue::from_str(authority.as_str()).map_err(|_| "the URL's host is not valid")?);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
    headers.insert(USER_AGENT, HeaderValue::from_static("gateway-otlp"));
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    connection.abort();
    if status.is_success() { Ok(()) } else { Err(format!("the collector answered {status}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_strictly() {
        let value = |s: &'static str| HeaderValue::from_static(s);
        let parent = parse_traceparent(&value("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")).unwrap();
        assert_eq!(hex(&parent.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&parent.span_id), "b7ad6b7169203331");
        assert!(parent.sampled);
        assert!(!parse_traceparent(&value("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")).unwrap().sampled);
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(&value(bad)), None, "{bad}");
        }
        // A later version may carry more fields after the flags.
        assert!(parse_traceparent(&value("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x")).is_some());
    }

    #[test]
    fn the_ratio_sampler_keeps_its_share_and_decides_by_the_trace_id() {
        let decided = |bp| (0..20_000).filter(|_| sampled(&new_trace_id(), bp)).count();
        assert_eq!(decided(0), 0);
        assert_eq!(decided(10_000), 20_000);
        let one_percent = decided(100);
        assert!((100..=320).contains(&one_percent), "about 200 of 20,000: {one_percent}");
        let id = new_trace_id();
        assert_eq!(sampled(&id, 2_500), sampled(&id, 2_500), "the same trace, the same decision");
    }

    #[test]
    fn a_child_span_names_itself_as_the_callees_parent() {
        let tracer = Tracer::new(TraceSettings {
            url: "http://127.0.0.1:1/v1/traces".parse().unwrap(),
            tls: None,
            sample_basis_points: 10_000,
            service_name: "gateway".to_owned(),
            resource_attributes: Vec::new(),
        });
        let mut headers = HeaderMap::new();
        headers
            .insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        let begun = tracer.begin(&headers).expect("a sampled caller is continued");
        assert_eq!(hex(&begun.context.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(begun.parent.map(|p| hex(&p)).as_deref(), Some("b7ad6b7169203331"));
        let child = ChildSpan::start(&begun.context, "upstream users".to_owned());
        let sent = parse_traceparent(&child.traceparent()).unwrap();
        assert_eq!((sent.trace_id, sent.sampled), (begun.context.trace_id, true));
        assert_ne!(sent.span_id, begun.context.span_id, "the callee's parent is the client span");
        headers
            .insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"));
        assert!(tracer.begin(&headers).is_none(), "an unsampled caller is not recorded");
    }

    #[test]
    fn spans_encode_as_an_otlp_export_request() {
        let span = FinishedSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: None,
            name: "GET users".to_owned(),
            kind: Kind::Server,
            start_unix_nanos: 10,
            end_unix_nanos: 20,
            attributes: vec![("http.route", AttributeValue::Text("users".to_owned()))],
            error: None,
        };
        let settings = TraceSettings {
            url: "http://c:4318/v1/traces".parse().unwrap(),
            tls: None,
            sample_basis_points: 100,
            service_name: "edge".to_owned(),
            resource_attributes: vec![("deployment.environment".to_owned(), "prod".to_owned())],
        };
        let bytes = encode(&resource(&settings), std::iter::once(span));
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let resource_spans = &decoded.resource_spans[0];
        let attributes = &resource_spans.resource.as_ref().unwrap().attributes;
        assert_eq!(attributes[0].key, "service.name");
        assert_eq!(attributes[1].key, "deployment.environment");
        let span = &resource_spans.scope_spans[0].spans[0];
        assert_eq!((span.name.as_str(), span.kind), ("GET users", span::SpanKind::Server as i32));
        assert_eq!((span.trace_id.len(), span.parent_span_id.len()), (16, 0));
    }
}
