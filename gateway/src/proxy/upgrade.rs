//! WebSocket: an HTTP/1.1 `Upgrade: websocket` request goes through every phase like any
//! other (normalised, routed, authenticated, decided), and becomes a byte relay only after
//! the upstream answered 101 with `Upgrade: websocket`.
//!
//! - Only `GET` over HTTP/1.1 with `Connection: upgrade` and an `Upgrade` list naming
//!   `websocket` is an upgrade. Any other upgrade token (`h2c`, anything unknown) is
//!   stripped with the other hop-by-hop headers and never reaches an upstream.
//! - No byte is relayed before the upstream's 101: the relay starts when both sides have
//!   handed over their connections, which hyper does only after the 101 head was read from
//!   the upstream and written to the client. An upstream that answers 101 for anything but
//!   `websocket` gets a 502, and nothing is relayed.
//! - The client side keeps its idle timeout (the upgraded stream is still the
//!   [`crate::server`]'s `IdleTimeoutStream`). Open relays are counted in
//!   `gateway_upgraded_connections{route}`, and [`drained`] lets shutdown wait for them
//!   within the grace period.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_plugin_metrics::names;
use http::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use http::{Method, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// Relays open now, in every snapshot.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Woken when a relay ends.
static CLOSED: Notify = Notify::const_new();

/// True when the request asks for a WebSocket upgrade the gateway carries.
pub(crate) fn is_websocket(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    method == Method::GET
        && version == Version::HTTP_11
        && lists_token(headers, &CONNECTION, "upgrade")
        && lists_token(headers, &UPGRADE, "websocket")
}

/// True when some comma-separated value of header `name` is `token` (ASCII case ignored).
fn lists_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Puts back the two headers a WebSocket handshake needs (on the request to the upstream,
/// and on its 101 to the client), after hop-by-hop stripping removed them and every other
/// upgrade token with them.
pub(crate) fn restore_handshake_headers(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// The client connection waiting to be handed over, and the route it belongs to.
pub(crate) struct PendingUpgrade {
    pub(crate) client: OnUpgrade,
    pub(crate) route: Arc<str>,
}

/// Why an upstream's answer to an upgrade cannot be relayed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WrongUpgrade;

/// Given the upstream's response to a WebSocket request: a 101 for `websocket` starts the
/// relay (in its own task) and the response goes to the client with its `Upgrade` and
/// `Connection` headers; any other status passes on as a normal response.
pub(crate) fn accept<B>(pending: PendingUpgrade, response: &mut Response<B>) -> Result<(), WrongUpgrade> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(());
    }
    if !lists_token(response.headers(), &UPGRADE, "websocket") {
        return Err(WrongUpgrade);
    }
    let upstream = hyper::upgrade::on(&mut *response);
    tokio::spawn(relay(pending, upstream));
    Ok(())
}

async fn relay(pending: PendingUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(pending.client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(route = &*pending.route, error = %e, "upgrade did not complete");
            return;
        }
    };
    let gauge = metrics::gauge!(names::UPGRADED_CONNECTIONS, "route" => pending.route.to_string());
    gauge.increment(1.0);
    OPEN.fetch_add(1, Ordering::AcqRel);
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(route = &*pending.route, up, down, "websocket closed"),
        Err(e) => tracing::debug!(route = &*pending.route, error = %e, "websocket ended with an error"),
    }
    gauge.decrement(1.0);
    OPEN.fetch_sub(1, Ordering::AcqRel);
    CLOSED.notify_waiters();
}

/// Relays open now.
pub fn open_relays() -> usize {
    OPEN.load(Ordering::Acquire)
}

/// Resolves when no relay is open.
pub async fn drained() {
    loop {
        let closed = CLOSED.notified();
        if open_relays() == 0 {
            return;
        }
        closed.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn only_a_get_over_http1_naming_websocket_upgrades() {
        let ws = headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")]);
        assert!(is_websocket(&Method::GET, Version::HTTP_11, &ws));
        assert!(!is_websocket(&Method::POST, Version::HTTP_11, &ws), "RFC 6455 upgrades a GET");
        assert!(!is_websocket(&Method::GET, Version::HTTP_2, &ws), "HTTP/2 has no Upgrade");
        assert!(!is_websocket(&Method::GET, Version::HTTP_10, &ws));
        let h2c = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert!(!is_websocket(&Method::GET, Version::HTTP_11, &h2c), "h2c is never forwarded");
        let unknown = headers(&[("connection", "upgrade"), ("upgrade", "foo/1, websocketx")]);
        assert!(!is_websocket(&Method::GET, Version::HTTP_11, &unknown));
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert!(!is_websocket(&Method::GET, Version::HTTP_11, &no_connection), "Connection must nominate it");
        let split = headers(&[("connection", "keep-alive"), ("connection", "upgrade"), ("upgrade", "websocket")]);
        assert!(is_websocket(&Method::GET, Version::HTTP_11, &split), "tokens across header lines count");
    }

    proptest::proptest! {
        /// Whatever the spelling (case, spaces, commas, several header lines), a request
        /// upgrades exactly when Connection lists `upgrade` and Upgrade lists `websocket`;
        /// arbitrary bytes never panic.
        #[test]
        fn upgrade_detection_follows_the_token_lists(
            connection in proptest::collection::vec(proptest::collection::vec(
                proptest::sample::select(vec!["upgrade", "Upgrade", "keep-alive", "close", "x-hop", ""]), 0..3), 0..3),
            upgrade in proptest::collection::vec(proptest::collection::vec(
                proptest::sample::select(vec!["websocket", "WEBSOCKET", "h2c", "websocketx", "foo/1", ""]), 0..3), 0..3),
            spaces in "[ \t]{0,2}",
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let mut headers = HeaderMap::new();
            for (name, lines) in [(CONNECTION, &connection), (UPGRADE, &upgrade)] {
                for line in lines {
                    let value = line.join(&format!("{spaces},{spaces}"));
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.append(name.clone(), value);
                    }
                }
            }
            let listed = |name: &http::HeaderName, token: &str| {
                headers.get_all(name).iter().any(|v| {
                    v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
                })
            };
            let expected = listed(&CONNECTION, "upgrade") && listed(&UPGRADE, "websocket");
            proptest::prop_assert_eq!(is_websocket(&Method::GET, Version::HTTP_11, &headers), expected);
            if let Ok(value) = HeaderValue::from_bytes(&noise) {
                headers.append(UPGRADE, value);
                let _ = is_websocket(&Method::GET, Version::HTTP_11, &headers);
            }
        }
    }

    #[test]
    fn only_a_101_for_websocket_starts_a_relay() {
        // A request hyper did not serve has nothing to hand over.
        let pending = || PendingUpgrade { client: hyper::upgrade::on(http::Request::new(())), route: Arc::from("ws") };
        let mut ok = Response::builder().status(200).body(()).unwrap();
        assert_eq!(accept(pending(), &mut ok), Ok(()), "a normal answer passes on");
        let mut wrong = Response::builder().status(101).header("upgrade", "h2c").body(()).unwrap();
        assert_eq!(accept(pending(), &mut wrong), Err(WrongUpgrade));
        let mut missing = Response::builder().status(101).body(()).unwrap();
        assert_eq!(accept(pending(), &mut missing), Err(WrongUpgrade));
    }
}
