//! Header hygiene between client and upstream: hop-by-hop headers, forwarding headers and
//! the request id.

use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use gateway_plugin_api::headers::HOP_BY_HOP;
pub use gateway_plugin_api::headers::{X_FORWARDED_FOR, X_FORWARDED_PROTO, X_GATEWAY_ERROR, X_REQUEST_ID};

/// Longest client-supplied request id kept (bytes).
const MAX_REQUEST_ID_LEN: usize = 128;

/// Removes hop-by-hop headers, including any the `Connection` header nominates.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_present(headers, hop_by_hop_present(headers));
}

/// Which hop-by-hop headers `headers` carries, as bits of their positions in the list.
///
/// One pass over the (few) headers present: most messages carry none, or only
/// `Connection: keep-alive`.
pub fn hop_by_hop_present(headers: &HeaderMap) -> HopByHop {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        }
    }
    HopByHop(present)
}

/// The hop-by-hop headers a message carries (see [`hop_by_hop_present`]).
#[derive(Clone, Copy, Debug)]
pub struct HopByHop(u16);

/// `Upgrade`'s position in [`HOP_BY_HOP`] (a test checks it).
const UPGRADE_INDEX: usize = 8;

impl HopByHop {
    /// True when an `Upgrade` header is among them.
    pub fn has_upgrade(self) -> bool {
        self.0 & (1 << UPGRADE_INDEX) != 0
    }
}

/// Removes the hop-by-hop headers `present` names, and any `Connection` nominates.
pub fn strip_present(headers: &mut HeaderMap, present: HopByHop) {
    let present = present.0;
    if present == 0 {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let nominated: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| !token.eq_ignore_ascii_case("keep-alive") && !token.eq_ignore_ascii_case("close"))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in nominated {
            headers.remove(&name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// `x-forwarded-proto` of a request that came in over plain HTTP.
pub static PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
/// `x-forwarded-proto` of a request that came in over TLS.
pub static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Appends the client address to `x-forwarded-for` and sets `x-forwarded-proto` to how
/// the client reached the gateway (`proto`: [`PROTO_HTTP`] or [`PROTO_HTTPS`]).
/// `client_ip` is formatted once per connection by the caller. Several incoming
/// `x-forwarded-for` lines are joined into one list, in order.
pub fn set_forwarding(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &HeaderValue) {
    let mut previous = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    let chain = if previous.peek().is_none() {
        client_ip.clone()
    } else {
        let mut joined = Vec::with_capacity(64);
        for value in previous {
            joined.extend_from_slice(value.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(client_ip.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone())
    };
    headers.insert(&X_FORWARDED_FOR, chain);
    headers.insert(&X_FORWARDED_PROTO, proto.clone());
}

/// The request id to use: the client's if it is short printable ASCII, else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(id) if is_sane_request_id(id) => id.clone(),
        _ => new_request_id(),
    }
}

fn is_sane_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// 32 hex digits: a random per-process prefix and a counter, unique without a syscall.
fn new_request_id() -> HeaderValue {
    static PROCESS_PREFIX: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(std::process::id()));
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    for (i, word) in [*PROCESS_PREFIX, count].into_iter().enumerate() {
        for nibble in 0..16 {
            buf[i * 16 + nibble] = HEX[((word >> (60 - nibble * 4)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are valid header bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_standard_and_nominated_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("traceparent"));
    }

    #[test]
    fn upgrade_is_found_among_the_hop_by_hop_headers() {
        assert_eq!(HOP_BY_HOP[UPGRADE_INDEX], header::UPGRADE);
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!hop_by_hop_present(&h).has_upgrade());
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(hop_by_hop_present(&h).has_upgrade());
    }

    #[test]
    fn forwarding_appends_to_the_chain() {
        let mut h = HeaderMap::new();
        let ip = HeaderValue::from_static("10.0.0.9");
        set_forwarding(&mut h, &ip, &PROTO_HTTP);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        set_forwarding(&mut h, &ip, &PROTO_HTTP);
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 10.0.0.9");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2, 3.3.3.3"));
        set_forwarding(&mut h, &ip, &PROTO_HTTP);
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1, "one line goes upstream");
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        let made = request_id(&h);
        assert_eq!(made.len(), 32);
        let other = request_id(&HeaderMap::new());
        assert_ne!(made, other);
    }
}
