//! Request metrics, recorded once per request at `on_complete`.
//!
//! [`RequestMetrics`] is built when a config is compiled. A route's handles (one counter
//! per target and status class, one histogram per target) are registered the first time
//! the route answers from that side. After that, the hot path does an array index, an
//! atomic load and an atomic add, never a label lookup or a format. Registering lazily
//! keeps a reload of a 10,000-route file from registering 190,000 series up front. Handles
//! are keyed by their labels in the global recorder, so a reload that rebuilds this
//! plugin keeps counting into the same series.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod names;

use gateway_plugin_api::{Outcome, Phases, Plugin, RequestCtx, RouteId, Target};
use std::sync::OnceLock;

use metrics::{Counter, Histogram, counter, gauge, histogram};

/// Status classes in label order; index = status / 100 - 1.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Target slots: the three targets, then "none" for requests rejected before a decision.
const TARGET_SLOTS: usize = Target::ALL.len() + 1;
const NONE_SLOT: usize = Target::ALL.len();

/// The labels the metrics plugin needs to know about one route.
#[derive(Clone, Debug)]
pub struct RouteLabels {
    /// Route name, or [`gateway_plugin_api::DEFAULT_ROUTE_LABEL`] for unmatched traffic.
    pub route: String,
    /// Upstream that serves the route's monolith side.
    pub monolith_upstream: String,
    /// Upstream that serves the route's service side, if the route has one.
    pub service_upstream: Option<String>,
    /// The dial, in percent, for routes with a service side.
    pub rollout_percent: Option<f64>,
    /// An aggregate endpoint (its requests have `target="aggregate"`).
    pub aggregate: bool,
}

/// Handles for one (route, target) pair.
struct SlotHandles {
    requests: [Counter; STATUS_CLASSES.len()],
    duration: Histogram,
}

/// Per target slot: the upstream label where the route can send traffic there (no
/// series is ever exported for a side the route does not have), and the handles once
/// the route has answered from that side.
struct RouteHandles {
    route: String,
    upstreams: [Option<String>; TARGET_SLOTS],
    slots: [OnceLock<SlotHandles>; TARGET_SLOTS],
}

/// Records `gateway_requests_total` and `gateway_request_duration_seconds`.
pub struct RequestMetrics {
    /// Indexed by [`RouteId`]: routes in file order, then the default route.
    routes: Vec<RouteHandles>,
}

impl RequestMetrics {
    /// Registers the handles for every route; `routes` is indexed like [`RouteId`].
    pub fn new(routes: &[RouteLabels]) -> Self {
        let routes = routes.iter().map(register_route).collect();
        RequestMetrics { routes }
    }
}

fn register_route(labels: &RouteLabels) -> RouteHandles {
    let mut upstreams: [Option<String>; TARGET_SLOTS] = Default::default();
    upstreams[Target::Monolith.index()] = Some(labels.monolith_upstream.clone());
    upstreams[Target::Service.index()] = labels.service_upstream.clone();
    upstreams[NONE_SLOT] = Some(names::UPSTREAM_NONE.to_owned());
    if labels.aggregate {
        upstreams[Target::Aggregate.index()] = Some(names::UPSTREAM_NONE.to_owned());
    }
    if let Some(percent) = labels.rollout_percent {
        gauge!(names::ROLLOUT_PERCENT, "route" => labels.route.clone()).set(percent);
    }
    RouteHandles { route: labels.route.clone(), upstreams, slots: Default::default() }
}

impl RouteHandles {
    fn slot(&self, slot: usize) -> Option<&SlotHandles> {
        let upstream = self.upstreams[slot].as_ref()?;
        Some(self.slots[slot].get_or_init(|| {
            let target = Target::ALL.get(slot).map_or(names::TARGET_NONE, |t| t.as_str());
            SlotHandles {
                requests: std::array::from_fn(|class| {
                    counter!(
                        names::REQUESTS_TOTAL,
                        "route" => self.route.clone(),
                        "target" => target,
                        "upstream" => upstream.clone(),
                        "status_class" => STATUS_CLASSES[class],
                    )
                }),
                duration: histogram!(names::REQUEST_DURATION_SECONDS, "route" => self.route.clone(), "target" => target),
            }
        }))
    }
}

/// `gateway_upstream_requests_total{upstream,endpoint,status_class}` of one endpoint,
/// registered on its first request (like the route handles).
#[derive(Debug, Default)]
pub struct EndpointCounters {
    handles: std::sync::OnceLock<[Counter; STATUS_CLASSES.len() + 1]>,
}

impl EndpointCounters {
    /// Counts one request: its response status, or `None` when no response head came
    /// (class `error`). `labels` (upstream, endpoint) is called on the first request only.
    pub fn record(&self, status: Option<u16>, labels: impl FnOnce() -> (String, String)) {
        let handles = self.handles.get_or_init(|| {
            let (upstream, endpoint) = labels();
            std::array::from_fn(|class| {
                counter!(
                    names::UPSTREAM_REQUESTS_TOTAL,
                    "upstream" => upstream.clone(),
                    "endpoint" => endpoint.clone(),
                    "status_class" => STATUS_CLASSES.get(class).copied().unwrap_or("error"),
                )
            })
        });
        handles[status.map_or(STATUS_CLASSES.len(), status_class_index)].increment(1);
    }
}

fn status_class_index(status: u16) -> usize {
    (usize::from(status) / 100).clamp(1, STATUS_CLASSES.len()) - 1
}

impl Plugin for RequestMetrics {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn phases(&self) -> Phases {
        Phases { on_complete: true, ..Phases::default() }
    }

    fn on_complete(&self, ctx: &RequestCtx, outcome: &Outcome) {
        let route = ctx.route.unwrap_or(RouteId(self.routes.len() - 1));
        let Some(handles) = self.routes.get(route.0) else {
            return;
        };
        if let Some(reason) = ctx.auth_failure {
            // Refusals are the slow path; a label lookup here costs nothing that matters.
            counter!(names::AUTH_FAILURES_TOTAL, "route" => handles.route.clone(), "reason" => reason).increment(1);
        }
        if let Some(reason) = ctx.fallback {
            counter!(names::FALLBACKS_TOTAL, "route" => handles.route.clone(), "reason" => reason.as_str())
                .increment(1);
        }
        let Some(slot) = handles.slot(ctx.target.map_or(NONE_SLOT, Target::index)) else {
            return;
        };
        slot.requests[status_class_index(outcome.status.as_u16())].increment(1);
        slot.duration.record(outcome.duration.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_runs_at_on_complete_only() {
        let plugin = RequestMetrics::new(&[]);
        assert_eq!(plugin.name(), "metrics");
        assert_eq!(plugin.phases(), Phases { on_complete: true, ..Phases::default() });
    }
    use gateway_plugin_api::DEFAULT_ROUTE_LABEL;
    use http::{HeaderValue, StatusCode};
    use metrics_exporter_prometheus::PrometheusBuilder;
    use std::time::Duration;

    #[test]
    fn status_classes() {
        assert_eq!(status_class_index(100), 0);
        assert_eq!(status_class_index(204), 1);
        assert_eq!(status_class_index(404), 3);
        assert_eq!(status_class_index(599), 4);
        assert_eq!(status_class_index(999), 4);
    }

    #[test]
    fn records_one_series_per_route_target_and_class() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(names::REQUEST_DURATION_SECONDS.into()),
                names::REQUEST_DURATION_BUCKETS,
            )
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let plugin = RequestMetrics::new(&[
                RouteLabels {
                    route: "users".into(),
                    monolith_upstream: "monolith".into(),
                    service_upstream: Some("users".into()),
                    rollout_percent: Some(25.5),
                    aggregate: false,
                },
                RouteLabels {
                    route: DEFAULT_ROUTE_LABEL.into(),
                    monolith_upstream: "monolith".into(),
                    service_upstream: None,
                    rollout_percent: None,
                    aggregate: false,
                },
            ]);
            let mut ctx = RequestCtx::new(HeaderValue::from_static("r1"), std::time::Duration::ZERO);
            ctx.route = Some(RouteId(0));
            ctx.target = Some(Target::Service);
            let ok = Outcome { status: StatusCode::OK, duration: Duration::from_millis(3), gateway_error: None };
            plugin.on_complete(&ctx, &ok);
            plugin.on_complete(&ctx, &ok);
            let unrouted = RequestCtx::new(HeaderValue::from_static("r2"), std::time::Duration::ZERO);
            let bad =
                Outcome { status: StatusCode::BAD_REQUEST, duration: Duration::ZERO, gateway_error: Some("bad-path") };
            plugin.on_complete(&unrouted, &bad);
        });
        let text = handle.render();
        assert!(
            text.contains(
                r#"gateway_requests_total{route="users",target="service",upstream="users",status_class="2xx"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"gateway_requests_total{route="_default",target="none",upstream="none",status_class="4xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_request_duration_seconds_bucket{route="users",target="service",le="0.005"} 2"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"route="_default",target="service""#),
            "the default route has no service side: {text}"
        );
    }
}
