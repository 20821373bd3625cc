//! Fetching the key sets identity providers publish (`[auth] jwks_url`).
//!
//! One loop per source, off the data plane, started when a snapshot that holds the source
//! is installed and ended when no snapshot holds it. It fetches at once (the gateway is
//! not ready until every source has keys), then every `jwks_refresh_seconds`, sooner when
//! the answer's `Cache-Control: max-age` is shorter (never sooner than every 30 s on that
//! account), and at once when a token names an unknown `kid` (the auth crate rate-limits
//! those requests per source). A failed fetch keeps the last good keys and is retried
//! with backoff (1 s doubling, at most 30 s or the refresh interval). Requests never wait
//! for a fetch: the new set is swapped in whole when it is parsed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use gateway_plugin_auth::{Applied, Clock as _, KeySet, RemoteKeys};
use gateway_plugin_metrics::names;
use http::header::{ACCEPT, CACHE_CONTROL, HOST, USER_AGENT};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::connect_upstream;
use crate::tls::UpstreamTls;

/// Most time one fetch may take, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest key set document read (bytes).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// A `max-age` shorter than this does not make the refresh more frequent.
const MIN_MAX_AGE: Duration = Duration::from_secs(30);
/// Longest wait before retrying a failed fetch.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One `jwks_url` as configured, with the keys it has given.
pub struct JwksSource {
    /// The keys, shared with the authenticator that verifies with them.
    pub keys: Arc<RemoteKeys>,
    /// Where the set is published.
    pub url: Uri,
    /// How the server is verified (`https://`); none for a loopback `http://` URL.
    pub tls: Option<UpstreamTls>,
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksSource").field("url", &self.keys.settings().source).finish_non_exhaustive()
    }
}

impl JwksSource {
    /// True when `other` fetches the same URL the same way, every `refresh` apart: a
    /// reload then keeps this source, its keys and its fetch loop.
    pub fn same_as(&self, url: &Uri, tls: &Option<UpstreamTls>, refresh: Duration) -> bool {
        self.url == *url && self.tls == *tls && self.keys.settings().refresh == refresh
    }

    /// Starts the fetch loop unless it already runs (a source kept by a reload).
    pub fn start(self: &Arc<Self>) {
        if self.keys.claim_fetching() {
            tokio::spawn(run(Arc::downgrade(self), self.keys.refetch_signal()));
        }
    }
}

/// What one fetch brought: the document and the `max-age` the server allowed.
struct Fetched {
    body: Bytes,
    max_age: Option<Duration>,
}

async fn run(source: Weak<JwksSource>, refetch: Arc<tokio::sync::Notify>) {
    let mut failures = 0u32;
    loop {
        let Some(current) = source.upgrade() else { return };
        let label = current.keys.settings().source.clone();
        let refresh = current.keys.settings().refresh;
        let outcome = match tokio::time::timeout(FETCH_TIMEOUT, fetch(&current)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no complete answer within {FETCH_TIMEOUT:?}")),
        };
        let parsed = match outcome {
            // Building 50 keys takes about 0.35 ms (`cargo bench -p gateway-bench --
            // jwks_refresh`): off the worker threads, so no request waits behind it.
            Ok(fetched) => tokio::task::spawn_blocking(move || {
                let text = std::str::from_utf8(&fetched.body).map_err(|_| "the answer is not UTF-8".to_owned())?;
                let (keys, skipped) = KeySet::from_published_jwks(text).map_err(|e| e.to_string())?;
                Ok((keys, skipped, fetched.max_age))
            })
            .await
            .unwrap_or_else(|e| Err(format!("parsing the key set failed: {e}"))),
            Err(problem) => Err(problem),
        };
        let wait = match parsed {
            Ok((keys, skipped, max_age)) => {
                failures = 0;
                for problem in &skipped {
                    tracing::warn!(source = %label, problem = %problem, "a published key cannot be used; skipped");
                }
                let kids: Vec<String> = keys.kids().map(str::to_owned).collect();
                match current.keys.apply(keys, skipped, gateway_plugin_auth::SystemClock.now_unix()) {
                    Applied::First => tracing::info!(source = %label, kids = ?kids, "key set fetched"),
                    Applied::Unchanged => tracing::debug!(source = %label, "key set unchanged"),
                    Applied::Changed { added, removed } => {
                        tracing::info!(source = %label, added = ?added, removed = ?removed, "key set changed")
                    }
                }
                metrics::counter!(names::JWKS_REFRESH_TOTAL, "source" => label, "result" => "ok").increment(1);
                max_age.map_or(refresh, |age| refresh.min(age.max(MIN_MAX_AGE)))
            }
            Err(problem) => {
                failures = failures.saturating_add(1);
                tracing::warn!(source = %label, error = %problem, "key set fetch failed; keeping the last good keys");
                current.keys.record_failure(problem);
                metrics::counter!(names::JWKS_REFRESH_TOTAL, "source" => label, "result" => "error").increment(1);
                retry_after(failures, refresh)
            }
        };
        drop(current);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = refetch.notified() => {}
        }
    }
}

/// Backoff after `failures` failed fetches in a row: 1 s, 2 s, 4 s ... at most 30 s, and
/// never longer than the refresh interval.
fn retry_after(failures: u32, refresh: Duration) -> Duration {
    let doubled = Duration::from_secs(1u64 << failures.saturating_sub(1).min(5));
    doubled.min(MAX_RETRY).min(refresh)
}

/// One GET of the document, on a connection of its own.
async fn fetch(source: &JwksSource) -> Result<Fetched, String> {
    let name: Arc<str> = Arc::from(source.keys.settings().source.as_str());
    let authority = source.url.authority().ok_or("the URL has no host")?;
    let address = super::connect_address(authority, source.tls.is_some());
    let stream =
        connect_upstream(&name, &address, FETCH_TIMEOUT, source.tls.as_ref()).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let path = source.url.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.uri_mut() = path.parse().map_err(|_| "the URL's path is not valid".to_owned())?;
    let headers = request.headers_mut();
    headers.insert(HOST, HeaderValue::from_str(authority.as_str()).map_err(|_| "the URL's host is not valid")?);
    headers.insert(ACCEPT, HeaderValue::from_static("application/jwk-set+json, application/json"));
    headers.insert(USER_AGENT, HeaderValue::from_static("gateway-jwks"));
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let max_age = response.headers().get(CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(max_age);
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            format!("the answer is larger than {MAX_JWKS_BYTES} bytes")
        } else {
            e.to_string()
        }
    });
    connection.abort();
    if !status.is_success() {
        return Err(format!("the server answered {status}"));
    }
    Ok(Fetched { body: body?.to_bytes(), max_age })
}

/// `max-age` of a `Cache-Control` value; `no-cache`/`no-store` count as 0.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        let seconds = lower.strip_prefix("max-age=")?.trim_matches('"');
        seconds.parse::<u64>().ok().map(Duration::from_secs)
    })
}

/// `jwks_url` as a metric label: scheme, host and path (a query string or user info
/// could carry a credential).
pub fn source_label(url: &Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("https");
    let host = url.authority().map_or("", |a| a.as_str().rsplit('@').next().unwrap_or_default());
    format!("{scheme}://{host}{}", url.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("Max-Age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn retries_back_off_to_thirty_seconds_or_the_refresh() {
        let refresh = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=8).map(|n| retry_after(n, refresh).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_after(4, Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn labels_leave_out_query_and_user_info() {
        let url: Uri = "https://user:pw@idp.example.com:8443/keys?token=secret".parse().unwrap();
        assert_eq!(source_label(&url), "https://idp.example.com:8443/keys");
    }
}
