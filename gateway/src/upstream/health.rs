//! The active health checker: one task per upstream handle, off the data plane. Every
//! interval (jittered by up to a fifth, so replicas and upstreams do not check in step) it
//! sends `GET path` to every endpoint at once, through the endpoint's own pool, and
//! records a pass (a 2xx head within the timeout) or a failure. The task ends when the
//! handle is dropped, for example by a reload that replaced the upstream.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use gateway_plugin_endpoints::ActiveCheck;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Either, Full, Limited};

use super::{Endpoint, Upstream, random_u64};

/// Most of a health response's body read (so its connection can go back to the pool).
const MAX_CHECK_BODY_BYTES: usize = 64 * 1024;

pub(super) async fn run_checks(upstream: Weak<Upstream>, check: ActiveCheck) {
    let interval_ms = u64::try_from(check.interval.as_millis()).unwrap_or(u64::MAX).max(1);
    loop {
        let jitter = random_u64() % (interval_ms / 5 + 1);
        tokio::time::sleep(Duration::from_millis(interval_ms - interval_ms / 10 + jitter)).await;
        let Some(upstream) = upstream.upgrade() else { return };
        // This round's endpoints (a DNS answer may change them meanwhile).
        let endpoints = upstream.endpoints.load_full();
        let results =
            futures_util::future::join_all(endpoints.iter().map(|endpoint| probe(&upstream, endpoint, &check))).await;
        let now = crate::clock::now();
        for (endpoint, passed) in endpoints.iter().zip(results) {
            if let Some(state) = endpoint.health.record_check(passed, &check, now) {
                tracing::warn!(
                    upstream = %upstream.name,
                    endpoint = endpoint.address.to_str().unwrap_or_default(),
                    state = state.as_str(),
                    reason = endpoint.health.reason().unwrap_or_default(),
                    "endpoint health changed"
                );
            }
        }
        upstream.report_endpoint_states(now);
    }
}

/// One check of one endpoint: true for a 2xx head within the timeout.
async fn probe(upstream: &Upstream, endpoint: &Endpoint, check: &ActiveCheck) -> bool {
    let mut request = Request::new(Either::Right(Full::new(Bytes::new())));
    *request.uri_mut() = match check.path.parse() {
        Ok(uri) => uri,
        Err(_) => return false,
    };
    let host = upstream.settings.host_header.replacement(&endpoint.host).unwrap_or(&endpoint.host);
    request.headers_mut().insert(header::HOST, host.clone());
    request.headers_mut().insert(header::USER_AGENT, HeaderValue::from_static("gateway-health-check"));
    let exchange = async {
        let response = endpoint.exchange(&upstream.name, request).await.ok()?;
        let passed = response.status().is_success();
        // Read (a bounded part of) the body so the connection can be reused.
        let _ = Limited::new(response.into_body(), MAX_CHECK_BODY_BYTES).collect().await;
        Some(passed)
    };
    tokio::time::timeout(check.timeout, exchange).await.ok().flatten().unwrap_or(false)
}
