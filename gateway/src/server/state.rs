//! The state the data plane, the reloader and the admin listener share: the config being
//! served (one `ArcSwap`), readiness, the metrics handle, the reload audit and the
//! migration statistics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use gateway_plugin_metrics::names;
use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::config::audit::ReloadState;
use crate::migration::MigrationStats;
use crate::snapshot::Snapshot;

/// State shared by the data plane, the reloader and the admin listener.
pub struct Gateway {
    config: ArcSwap<Snapshot>,
    ready: AtomicBool,
    /// Set when the drain starts: HTTP/1 responses then carry `Connection: close`.
    draining: Arc<AtomicBool>,
    pub(crate) metrics: PrometheusHandle,
    reload: ReloadState,
    migration: MigrationStats,
}

impl Gateway {
    pub(crate) fn new(snapshot: Snapshot) -> Self {
        let metrics = crate::telemetry::metrics_handle();
        gauge!(names::CONFIG_VERSION).set(snapshot.meta.version as f64);
        let migration = MigrationStats::default();
        let _ = snapshot.route_stats.set(migration.table_for(&snapshot));
        start_health_checks(&snapshot);
        crate::migration::publish_effective_dials(&snapshot);
        Gateway {
            config: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            draining: Arc::new(AtomicBool::new(false)),
            metrics,
            reload: ReloadState::default(),
            migration,
        }
    }

    /// The `/admin/migration` report for the config serving now.
    pub fn migration_report(&self) -> crate::migration::MigrationReport {
        let snapshot = self.snapshot();
        let table = snapshot.route_stats.get_or_init(|| self.migration.table_for(&snapshot));
        self.migration.report(&snapshot, table)
    }

    /// The config snapshot new requests start with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.load_full()
    }

    /// Serves `next` from now on: one atomic swap; requests in flight keep the snapshot
    /// they started with.
    pub(crate) fn install(&self, next: Snapshot) {
        let version = next.meta.version;
        let _ = next.route_stats.set(self.migration.table_for(&next));
        start_health_checks(&next);
        crate::migration::publish_effective_dials(&next);
        self.config.store(Arc::new(next));
        gauge!(names::CONFIG_VERSION).set(version as f64);
    }

    /// Reload errors and the history of applied changes.
    pub fn reload_state(&self) -> &ReloadState {
        &self.reload
    }

    /// Marks the gateway ready (both listeners bound).
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The drain has begun: `/ready` answers 503 from now on.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The flag each connection reads.
    pub(crate) fn draining_flag(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    /// True once the config is loaded, both listeners are bound, every upstream found
    /// through DNS has had its first lookup (answered or not) and every `jwks_url` has
    /// given keys.
    pub fn is_ready(&self) -> bool {
        let config = self.config.load();
        self.ready.load(Ordering::Acquire)
            && !self.is_draining()
            && config.upstreams.values().all(|u| u.discovery_status().is_none_or(|d| d.settled()))
            && config.jwks_sources.iter().all(|s| s.keys.current().0.is_some())
    }

    /// Prometheus text of every metric.
    pub fn render_metrics(&self) -> String {
        // Ages are measured when asked, so they grow while an identity provider is down.
        let now = gateway_plugin_auth::Clock::now_unix(&gateway_plugin_auth::SystemClock);
        for source in &self.config.load().jwks_sources {
            if let Some(age) = source.keys.age_seconds(now) {
                gauge!(names::JWKS_AGE_SECONDS, "source" => source.keys.settings().source.clone()).set(age as f64);
            }
        }
        self.metrics.render()
    }
}

/// Resolves once shutdown has been requested (also if it already was).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here, inside this future.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Starts the health checks of the snapshot's upstreams and the fetches of its key
/// sources; one kept from the previous snapshot already runs its own (once per handle).
fn start_health_checks(snapshot: &Snapshot) {
    for upstream in snapshot.upstreams.values() {
        upstream.start_background_tasks();
    }
    for source in &snapshot.jwks_sources {
        source.start();
    }
    if let Some(tracer) = &snapshot.tracer {
        tracer.start();
    }
}
