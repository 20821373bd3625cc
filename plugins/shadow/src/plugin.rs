//! The plugin: picks the requests to copy at the `mirror` phase, and compares the copy's
//! answer with the monolith's once both are in.
//!
//! Per route it keeps one [`Shared`] (results, learned noise, copies in flight), carried
//! across reloads while the route keeps its name and its `ignore` list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join3;
use gateway_plugin_api::config::PerRoute;
use gateway_plugin_api::side::{
    Mirror, MirrorSkipped, PrimaryAnswer, PrimaryBodyError, RouteSides, SideError, SideTask,
};
use gateway_plugin_api::{Phases, Plugin, RequestCtx, RouteId, Target};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use serde::Serialize;

use crate::compare::{Answer, Body, compare};
use crate::noise::Noise;
use crate::policy::RouteShadow;
use crate::report::{MatchPoint, MatchWindow, Sample, ShadowReport};

/// Counter: copies by `route` and `result` (`match`, `mismatch`, `error`, `dropped`).
pub const SHADOW_REQUESTS_TOTAL: &str = "gateway_shadow_requests_total";
/// Header every copy carries, so the service (and the monolith's noise sample) can tell.
pub const SHADOW_HEADER: &str = "x-gateway-shadow";
/// With `learn_noise`, the first this many copies of a route also ask the monolith twice;
/// after that one copy in [`NOISE_SAMPLE_EVERY`].
pub const NOISE_FIRST_SAMPLES: u64 = 20;
/// See [`NOISE_FIRST_SAMPLES`].
pub const NOISE_SAMPLE_EVERY: u64 = 10;

/// What one route's copies have found; outlives reloads that keep the route's comparison.
#[derive(Debug)]
struct Shared {
    results: Mutex<Results>,
    /// Requests the sampler has looked at.
    seen: AtomicU64,
    /// Copies started (for noise sampling).
    copies: AtomicU64,
    in_flight: AtomicUsize,
    errors: AtomicU64,
    dropped: AtomicU64,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Results {
    report: ShadowReport,
    noise: Noise,
    window: MatchWindow,
}

#[derive(Debug)]
struct Counters {
    matched: metrics::Counter,
    mismatched: metrics::Counter,
    error: metrics::Counter,
    dropped: metrics::Counter,
}

impl Shared {
    fn new(route: &str) -> Self {
        let counter = |result: &'static str| metrics::counter!(SHADOW_REQUESTS_TOTAL, "route" => route.to_owned(), "result" => result);
        Shared {
            results: Mutex::default(),
            seen: AtomicU64::new(0),
            copies: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            counters: Counters {
                matched: counter("match"),
                mismatched: counter("mismatch"),
                error: counter("error"),
                dropped: counter("dropped"),
            },
        }
    }

    fn results(&self) -> MutexGuard<'_, Results> {
        self.results.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn drop_copy(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.counters.dropped.increment(1);
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.counters.error.increment(1);
    }
}

/// One route's settings and what its copies found.
#[derive(Debug)]
struct RouteState {
    config: RouteShadow,
    shared: Arc<Shared>,
}

impl RouteState {
    /// True for the requests the dial of `percent` picks: exactly `basis_points` of every
    /// 10,000 in arrival order (a counter, not a random draw, so 10% is one in ten).
    fn sampled(&self) -> bool {
        let bp = u64::from(self.config.basis_points);
        if bp == 0 {
            return false;
        }
        let n = self.shared.seen.fetch_add(1, Ordering::Relaxed);
        (n + 1) * bp / 10_000 != n * bp / 10_000
    }

    /// Takes a place among the copies in flight, if one is free.
    fn take_slot(self: &Arc<Self>) -> Option<Slot> {
        let taken = self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if taken >= self.config.max_in_flight {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.shared.clone()))
    }

    fn noise_sample(&self) -> bool {
        if !self.config.learn_noise {
            return false;
        }
        let n = self.shared.copies.fetch_add(1, Ordering::Relaxed);
        n < NOISE_FIRST_SAMPLES || n.is_multiple_of(NOISE_SAMPLE_EVERY)
    }
}

/// A copy's place among the route's copies in flight, given back when dropped.
#[derive(Debug)]
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The plugin: every shadowed route's state, indexed by route.
#[derive(Debug)]
pub struct ShadowPlugin {
    routes: PerRoute<Arc<RouteState>>,
}

impl ShadowPlugin {
    /// Builds the plugin; a route of `previous` with the same name and `ignore` list keeps
    /// its results, noise and copies in flight.
    pub(crate) fn new(routes: PerRoute<RouteShadow>, previous: Option<&ShadowPlugin>) -> Self {
        let kept: HashMap<&str, &Arc<RouteState>> = previous
            .map(|p| p.routes.iter().map(|(_, state)| (state.config.route.as_str(), state)).collect())
            .unwrap_or_default();
        let routes = routes.map(|_, config| {
            let shared = match kept.get(config.route.as_str()) {
                Some(before) if before.config.ignore_pointers == config.ignore_pointers => before.shared.clone(),
                _ => Arc::new(Shared::new(&config.route)),
            };
            Arc::new(RouteState { config, shared })
        });
        ShadowPlugin { routes }
    }

    /// The shadow summary of route `id`, if it has a shadow.
    pub fn summary(&self, id: RouteId) -> Option<ShadowSummary> {
        let state = self.routes.get(id)?;
        let results = state.shared.results();
        let report = &results.report;
        Some(ShadowSummary {
            percent: state.config.percent(),
            methods: state.config.methods.iter().map(ToString::to_string).collect(),
            ignore: state.config.ignore_pointers.clone(),
            learn_noise: state.config.learn_noise,
            max_in_flight: state.config.max_in_flight,
            in_flight: state.shared.in_flight.load(Ordering::Relaxed),
            compared: report.compared,
            matched: report.matched,
            match_rate_percent: report.match_rate().map(|rate| rate * 100.0),
            errors: state.shared.errors.load(Ordering::Relaxed),
            dropped: state.shared.dropped.load(Ordering::Relaxed),
            mismatched_pointers: report
                .top_pointers()
                .into_iter()
                .map(|(pointer, count)| PointerCount { pointer: pointer.to_owned(), count })
                .collect(),
            status_pairs: report
                .status_pairs()
                .map(|((monolith, service), count)| StatusPair { monolith, service, count })
                .collect(),
            monolith_p50_ms: report.primary_latency.quantile_ms(0.5),
            monolith_p99_ms: report.primary_latency.quantile_ms(0.99),
            service_p50_ms: report.shadow_latency.quantile_ms(0.5),
            service_p99_ms: report.shadow_latency.quantile_ms(0.99),
            noise_samples: results.noise.samples(),
            noise_fields: results
                .noise
                .fields()
                .into_iter()
                .map(|(pointer, count)| PointerCount { pointer: pointer.to_owned(), count })
                .collect(),
            chart: results.window.points(unix_now()),
        })
    }

    /// The last mismatches of route `id` (oldest first), if it has a shadow.
    pub fn samples(&self, id: RouteId) -> Option<Vec<Sample>> {
        let state = self.routes.get(id)?;
        Some(state.shared.results().report.samples().cloned().collect())
    }
}

/// A route's shadow results, as `/admin/migration` shows them.
#[derive(Clone, Debug, Serialize)]
pub struct ShadowSummary {
    /// Configured share copied.
    pub percent: f64,
    /// Methods copied.
    pub methods: Vec<String>,
    /// Pointers left out of the comparison.
    pub ignore: Vec<String>,
    /// Whether noise is learned.
    pub learn_noise: bool,
    /// Copies in flight at most.
    pub max_in_flight: usize,
    /// Copies in flight now.
    pub in_flight: usize,
    /// Answers compared.
    pub compared: u64,
    /// Of which matched.
    pub matched: u64,
    /// matched ÷ compared, percent; absent before the first comparison.
    pub match_rate_percent: Option<f64>,
    /// Copies that got no answer.
    pub errors: u64,
    /// Copies not made: `max_in_flight` reached, or a body that could not be buffered.
    pub dropped: u64,
    /// The pointers that differ most often (at most 10).
    pub mismatched_pointers: Vec<PointerCount>,
    /// (monolith status, service status) pairs with counts.
    pub status_pairs: Vec<StatusPair>,
    /// Monolith latency to its answer's head, ms.
    pub monolith_p50_ms: Option<f64>,
    /// Same, 99th percentile.
    pub monolith_p99_ms: Option<f64>,
    /// Service latency to its whole answer (the copy), ms.
    pub service_p50_ms: Option<f64>,
    /// Same, 99th percentile.
    pub service_p99_ms: Option<f64>,
    /// Pairs of monolith answers compared for noise.
    pub noise_samples: u64,
    /// Fields learned as noise, with how many pairs differed there.
    pub noise_fields: Vec<PointerCount>,
    /// The match rate of the last 15 minutes, one point per 15-second slot, oldest first.
    pub chart: Vec<MatchPoint>,
}

/// A JSON pointer with a count.
#[derive(Clone, Debug, Serialize)]
pub struct PointerCount {
    /// The pointer.
    pub pointer: String,
    /// How often.
    pub count: u64,
}

/// Statuses of the two sides for one request, with how often the pair was seen.
#[derive(Clone, Debug, Serialize)]
pub struct StatusPair {
    /// The monolith's status.
    pub monolith: u16,
    /// The service's.
    pub service: u16,
    /// How often.
    pub count: u64,
}

impl Plugin for ShadowPlugin {
    fn name(&self) -> &'static str {
        "shadow"
    }

    fn phases(&self) -> Phases {
        Phases { mirror: true, ..Phases::default() }
    }

    fn mirror(&self, ctx: &RequestCtx, request: &http::request::Parts) -> Option<Box<dyn Mirror>> {
        let state = self.routes.get(ctx.route?)?;
        if !state.config.methods.contains(&request.method) || !state.sampled() {
            return None;
        }
        let Some(slot) = state.take_slot() else {
            state.shared.drop_copy();
            return None;
        };
        let mut headers = request.headers.clone();
        headers.insert(SHADOW_HEADER, HeaderValue::from_static("1"));
        Some(Box::new(Copy {
            secrets: secrets(&request.headers, &state.config.secret_headers),
            state: state.clone(),
            method: request.method.clone(),
            uri: request.uri.clone(),
            headers,
            path: ctx.path.clone(),
            _slot: slot,
        }))
    }
}

/// The values that must never appear in a sample: each secret header's value, and the
/// parts a body could echo on their own (a bearer token, each cookie's value).
fn secrets(headers: &HeaderMap, names: &[http::HeaderName]) -> Vec<String> {
    let mut out = Vec::new();
    for name in names {
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else { continue };
            out.push(text.to_owned());
            if let Some((_, credentials)) = text.split_once(' ') {
                out.push(credentials.trim().to_owned());
            }
            if name == http::header::COOKIE {
                out.extend(text.split(';').filter_map(|pair| Some(pair.split_once('=')?.1.trim().to_owned())));
            }
        }
    }
    // Longest first, so a token is redacted whole before a part of it would be.
    out.retain(|s| !s.is_empty());
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// One copy, chosen and waiting for the monolith's answer head.
struct Copy {
    state: Arc<RouteState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// The normalised path (no query), for the sample.
    path: String,
    secrets: Vec<String>,
    /// Held until the copy is done: its place among the copies in flight.
    _slot: Slot,
}

impl Copy {
    fn request(&self, body: Bytes) -> Request<Bytes> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

impl Mirror for Copy {
    fn max_body_bytes(&self) -> usize {
        self.state.config.max_body_bytes
    }

    fn wants_request_body(&self) -> bool {
        // Only a method the operator listed (a read has no body to speak of) gets here.
        true
    }

    fn start(self: Box<Self>, primary: PrimaryAnswer, sides: &dyn RouteSides) -> SideTask {
        let cap = self.state.config.max_body_bytes;
        let now = primary.now;
        let copy_started = now();
        let to_service = sides.send(Target::Service, self.request(primary.request_body.clone()), cap);
        let second = self
            .state
            .noise_sample()
            .then(|| sides.send(Target::Monolith, self.request(primary.request_body.clone()), cap));
        let PrimaryAnswer { status, content_type, latency, body, .. } = primary;
        Box::pin(async move {
            let service = async {
                let answer = to_service.await;
                (answer, now().saturating_sub(copy_started))
            };
            let second = async {
                match second {
                    Some(second) => Some(second.await),
                    None => None,
                }
            };
            let (primary_body, (service, service_latency), second) = join3(body, service, second).await;
            let primary = Primary { status: status.as_u16(), content_type, latency, body: primary_body };
            (*self).finish(primary, service, service_latency, second);
        })
    }

    fn skip(self: Box<Self>, why: MirrorSkipped) {
        match why {
            MirrorSkipped::BodyNotBuffered => self.state.shared.drop_copy(),
        }
    }
}

/// The monolith's side of one comparison.
struct Primary {
    status: u16,
    content_type: Option<HeaderValue>,
    latency: Duration,
    body: Result<Bytes, PrimaryBodyError>,
}

type SideAnswer = Result<http::Response<Bytes>, SideError>;

impl Copy {
    fn finish(self, primary: Primary, service: SideAnswer, service_latency: Duration, second: Option<SideAnswer>) {
        let shared = &self.state.shared;
        let primary_type = primary.content_type.as_ref().and_then(|v| v.to_str().ok()).map(str::to_owned);
        let primary_body = match primary.body {
            Ok(bytes) => Body::read(primary_type.as_deref(), &bytes),
            Err(PrimaryBodyError::TooLarge) => Body::TooLarge,
            // The client went away or the monolith broke off: nothing whole to compare.
            Err(PrimaryBodyError::Incomplete) => return,
        };
        let primary_answer = Answer { status: primary.status, content_type: primary_type, body: primary_body };
        let Some(service_answer) = answer(service) else {
            shared.error();
            return;
        };
        let mut results = shared.results();
        if let (Some(Some(second)), Body::Json(first)) = (second.map(answer), &primary_answer.body)
            && primary_answer.status == second.status
            && let Body::Json(second) = &second.body
        {
            results.noise.learn(first, second);
        }
        let comparison = compare(&primary_answer, &service_answer, &self.state.config.ignore, &results.noise);
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        results.report.record(
            &comparison,
            self.method.as_str(),
            &self.path,
            (primary.latency, service_latency),
            &secrets,
        );
        results.window.record(unix_now(), comparison.matched());
        drop(results);
        if comparison.matched() {
            shared.counters.matched.increment(1);
        } else {
            shared.counters.mismatched.increment(1);
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A side's answer for the comparison; `None` when it got none.
fn answer(result: SideAnswer) -> Option<Answer> {
    let text = |value: Option<&HeaderValue>| value.and_then(|v| v.to_str().ok()).map(str::to_owned);
    match result {
        Ok(response) => {
            let content_type = text(response.headers().get(http::header::CONTENT_TYPE));
            let body = Body::read(content_type.as_deref(), response.body());
            Some(Answer { status: response.status().as_u16(), content_type, body })
        }
        Err(SideError::TooLarge { status, content_type }) => {
            Some(Answer { status: status.as_u16(), content_type: text(content_type.as_ref()), body: Body::TooLarge })
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests;
