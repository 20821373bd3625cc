//! Logs (JSON lines on stderr), the process-wide Prometheus recorder, and the per-route
//! statistics behind the migration report ([`stats`]).

pub mod access;
pub(crate) mod stats;
pub mod trace;

use std::sync::OnceLock;

use gateway_plugin_metrics::names;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Environment variable with the log filter, e.g. `info` or `warn,gateway=debug`.
pub const LOG_FILTER_ENV: &str = "GATEWAY_LOG";

/// Installs the JSON log subscriber. Lines are written by a background thread so a slow
/// stderr reader never blocks the data plane (lines are dropped instead); keep the guard
/// alive until exit so the last lines are flushed.
pub fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    // Buffered: the writer thread flushes whenever its queue runs dry, so a busy second
    // costs a few large writes instead of one write per line.
    let (writer, guard) =
        tracing_appender::non_blocking(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let requested = std::env::var(LOG_FILTER_ENV).unwrap_or_else(|_| "info".to_owned());
    let (filter, bad_filter) = match requested.parse::<Targets>() {
        Ok(filter) => (filter, None),
        Err(e) => ("info".parse::<Targets>().expect("'info' is a valid filter"), Some(e)),
    };
    if filter.would_enable("gateway::access", &tracing::Level::INFO) {
        access::install(writer.clone());
    }
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_target(false)
                .with_writer(writer),
        )
        .with(filter)
        .init();
    if let Some(e) = bad_filter {
        tracing::warn!(filter = %requested, error = %e, "ignoring invalid {LOG_FILTER_ENV}; logging at info");
    }
    guard
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// Config compilation registers metric handles, so this runs before the first config is
/// compiled; every later snapshot (and every gateway in a test process) shares it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::REQUEST_DURATION_SECONDS.to_owned()),
                    names::REQUEST_DURATION_BUCKETS,
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}
