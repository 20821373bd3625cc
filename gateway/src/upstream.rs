//! Upstream handles: one pooled hyper client per `[upstreams.<name>]`.
//!
//! Each upstream keeps its own keep-alive pool and its own connect and response timeouts.
//! Errors say which of the two ran out, so the caller can answer 502 (could not connect)
//! or 504 (connected, no answer in time).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Body of a request sent upstream: the client's body streamed under the size limit, or
/// a body the gateway built itself.
pub type UpstreamBody = Either<Limited<Incoming>, Full<Bytes>>;

/// Settings of one upstream, as validated from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// Name from `[upstreams.<name>]`.
    pub name: String,
    /// The configured url, for display.
    pub url: String,
    /// Response-head timeout.
    pub timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled connection lifetime.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept.
    pub pool_max_idle: usize,
}

/// A named upstream with its connection pool.
pub struct Upstream {
    /// Name from `[upstreams.<name>]`, shared with logs and metric labels.
    pub name: Arc<str>,
    /// What it was built from.
    pub settings: UpstreamSettings,
    authority: Authority,
    client: Client<HttpConnector, UpstreamBody>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("url", &self.settings.url).finish()
    }
}

/// Why an upstream exchange failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No response head within the upstream's `timeout_ms`.
    #[error("upstream {upstream} sent no response within {timeout:?}")]
    Timeout {
        /// Upstream name.
        upstream: Arc<str>,
        /// The limit that ran out.
        timeout: Duration,
    },
    /// The TCP connection could not be opened (refused, unreachable, connect timeout).
    #[error("cannot connect to upstream {upstream}: {source}")]
    Connect {
        /// Upstream name.
        upstream: Arc<str>,
        /// The client's error.
        source: hyper_util::client::legacy::Error,
    },
    /// The client's body grew past `server.max_body_bytes` while it was being forwarded.
    #[error("request body exceeds the limit")]
    BodyTooLarge,
    /// The connection broke or the upstream sent something that is not HTTP.
    #[error("upstream {upstream} failed: {source}")]
    Exchange {
        /// Upstream name.
        upstream: Arc<str>,
        /// The client's error.
        source: hyper_util::client::legacy::Error,
    },
}

impl Upstream {
    /// Builds the upstream and its (empty) pool. `authority` comes from the validated url.
    pub fn new(settings: UpstreamSettings, authority: Authority) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Upstream { name: Arc::from(settings.name.as_str()), settings, authority, client }
    }

    /// The absolute URI for sending `path_and_query` to this upstream.
    pub fn uri_for(&self, path_and_query: PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).expect("scheme, authority and path are all set")
    }

    /// Sends the request and waits for the response head, within the upstream's timeout.
    /// The response body streams afterwards.
    pub async fn send(&self, request: Request<UpstreamBody>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.settings.timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout { upstream: self.name.clone(), timeout: self.settings.timeout }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is_connect() => {
                Err(UpstreamError::Connect { upstream: self.name.clone(), source: error })
            }
            Ok(Err(error)) if caused_by::<LengthLimitError>(&error) => Err(UpstreamError::BodyTooLarge),
            Ok(Err(error)) => Err(UpstreamError::Exchange { upstream: self.name.clone(), source: error }),
        }
    }
}

/// True when `E` is anywhere in the error's source chain.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}
