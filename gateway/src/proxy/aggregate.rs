//! Serving an aggregate: fetch every part in parallel, merge, answer once.
//!
//! Each part is a GET to its upstream (through the upstream's pool and breaker), or to the
//! side its route picks for this caller (the same `Route::decide` as the data plane); a
//! route's part is prepared by the `upstream_exchange` plugins like any request of that
//! route (its service prefix, its header edits). Every part carries the caller's verified
//! identity headers, `x-request-id` and the trace context; the upstream sets `Host`. All parts share one deadline, the aggregate's `timeout_ms`, and a part's own
//! `timeout_ms` can only shorten it, so the whole call never takes longer than the
//! aggregate's limit.

use bytes::Bytes;
use gateway_plugin_aggregate::{Aggregate, Part, PartFailure, PartResult, PartSource, merge};
use gateway_plugin_api::{Exchange, RequestCtx, Target, codes};
use gateway_plugin_metrics::names;
use gateway_plugin_rollout::Caller;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use tokio::time::Instant;

use super::traced::traced_call;
use crate::proxy::headers::{X_GATEWAY_ERROR, X_REQUEST_ID};
use crate::snapshot::Snapshot;
use crate::upstream::call::CallFailure;
use crate::upstream::{ResponseBody, UpstreamError};

/// Set on a reply in which a non-required part failed.
pub(crate) static X_GATEWAY_PARTIAL: HeaderName = HeaderName::from_static("x-gateway-partial");

/// Headers passed from the caller's request to every part, besides the claim headers.
const FORWARDED_TO_PARTS: [&str; 3] = ["x-request-id", "traceparent", "tracestate"];

/// Answers an aggregate request. `request` is the caller's request head after the
/// authentication phase (claim headers set from the verified token only).
pub(crate) async fn serve(
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    request: &http::request::Parts,
    caller: &Caller<'_>,
    aggregate: &Aggregate,
) -> Response<ResponseBody> {
    ctx.target = Some(Target::Aggregate);
    let deadline = Instant::now() + aggregate.timeout;
    let mut shared = HeaderMap::new();
    let claim_headers = snapshot.auth.iter().flat_map(|auth| auth.claim_header_names());
    for name in claim_headers {
        if let Some(value) = request.headers.get(name) {
            shared.insert(name.clone(), value.clone());
        }
    }
    for name in FORWARDED_TO_PARTS {
        if let Some(value) = request.headers.get(name) {
            shared.insert(HeaderName::from_static(name), value.clone());
        }
    }
    shared.insert(&X_REQUEST_ID, ctx.request_id.clone());
    shared.insert(ACCEPT, HeaderValue::from_static("application/json"));

    let ctx: &RequestCtx = ctx;
    let fetches = aggregate.parts.iter().map(|part| fetch(snapshot, ctx, aggregate, part, &shared, caller, deadline));
    let results = futures_util::future::join_all(fetches).await;
    let merged = merge(aggregate, results);
    for part in &merged.failed_parts {
        metrics::counter!(
            names::AGGREGATE_PART_FAILURES_TOTAL,
            "aggregate" => aggregate.name.to_string(),
            "part" => part.to_string(),
        )
        .increment(1);
    }

    let mut body = merged.body;
    if merged.failed {
        body["request_id"] = serde_json::Value::String(ctx.request_id.to_str().unwrap_or("").to_owned());
    }
    let bytes = serde_json::to_vec(&body).expect("a JSON value serialises");
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(bytes))));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if merged.failed {
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        response.headers_mut().insert(&X_GATEWAY_ERROR, HeaderValue::from_static(codes::AGGREGATE_PART_FAILED));
    } else if merged.partial {
        response.headers_mut().insert(&X_GATEWAY_PARTIAL, HeaderValue::from_static("true"));
    }
    response
}

/// Fetches one part before `deadline` (or its own, earlier, limit).
async fn fetch(
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    aggregate: &Aggregate,
    part: &Part,
    shared: &HeaderMap,
    caller: &Caller<'_>,
    deadline: Instant,
) -> PartResult {
    let started = Instant::now();
    let part_deadline = deadline.min(started + part.timeout);
    // The upstream, and for a route's part the exchange its plugins prepare.
    let target = match &part.source {
        PartSource::Upstream(name) => snapshot.upstreams.get(&**name).map(|upstream| (upstream, None)),
        PartSource::Route(name) => snapshot.routes.iter().find(|r| r.name == *name).map(|route| {
            let decision = route.decide(caller, route.service_health());
            (decision.upstream, Some(Exchange { route: route.id, side: decision.target }))
        }),
    };
    let Some((upstream, exchange)) = target else {
        // Validation guarantees the reference; a missing one is reported, not a panic.
        return PartResult::Failed(PartFailure::UnknownSource);
    };
    let (mut head, body) = Request::new(Either::Right(Full::default())).into_parts();
    head.method = Method::GET;
    head.uri = part.path.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    head.headers = shared.clone();
    if let Some(exchange) = exchange {
        crate::proxy::run_exchange_hooks(&snapshot.plugins.upstream_exchange, ctx, exchange, &mut head);
    }
    let request = Request::from_parts(head, body);

    let max = aggregate.max_part_bytes;
    let exchange = async {
        let what = format!("aggregate part {} ->", part.name);
        let result = traced_call!(snapshot.tracer.as_ref(), ctx, &what, upstream, request);
        let response = match result {
            Ok(response) => response,
            Err(CallFailure::Refused { .. }) => return PartResult::Failed(PartFailure::BreakerOpen),
            Err(CallFailure::Failed { error, .. }) => {
                return PartResult::Failed(match error {
                    UpstreamError::Connect { .. } => PartFailure::ConnectError,
                    UpstreamError::Timeout { .. } => PartFailure::Timeout,
                    _ => PartFailure::ExchangeError,
                });
            }
        };
        if !response.status().is_success() {
            return PartResult::Failed(PartFailure::Status(response.status().as_u16()));
        }
        let body = match Limited::new(response.into_body(), max).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return PartResult::Failed(PartFailure::TooLarge),
            Err(_) => return PartResult::Failed(PartFailure::ExchangeError),
        };
        match serde_json::from_slice(&body) {
            Ok(value) => PartResult::Answered(value),
            Err(_) => PartResult::Failed(PartFailure::NotJson),
        }
    };
    let result =
        tokio::time::timeout_at(part_deadline, exchange).await.unwrap_or(PartResult::Failed(PartFailure::Timeout));
    metrics::histogram!(
        names::AGGREGATE_PART_DURATION_SECONDS,
        "aggregate" => aggregate.name.to_string(),
        "part" => part.name.to_string(),
    )
    .record(started.elapsed().as_secs_f64());
    result
}
