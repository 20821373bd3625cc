//! Header hygiene between client and upstream: hop-by-hop headers, forwarding headers and
//! the request id.

use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use gateway_plugin_api::headers::HOP_BY_HOP;

use crate::snapshot::UnderscoreHeaders;
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

/// What one pass over a request's header names found: its hop-by-hop headers, and which
/// of the names the screening phase looks at more closely are present.
#[derive(Clone, Copy, Debug)]
pub struct RequestScan {
    /// The hop-by-hop headers present.
    pub hop_by_hop: HopByHop,
    /// `Host` is present (once or more).
    pub host: bool,
    /// `Content-Length` is present (once or more).
    pub content_length: bool,
    /// Some name contains `_`.
    pub underscore: bool,
}

/// One pass over the header names of a request; standard names are compared by their
/// interned form, and only other names are searched for `_`.
pub fn scan_request(headers: &HeaderMap) -> RequestScan {
    let mut scan = RequestScan { hop_by_hop: HopByHop(0), host: false, content_length: false, underscore: false };
    for name in headers.keys() {
        if name == header::HOST {
            scan.host = true;
        } else if name == header::CONTENT_LENGTH {
            scan.content_length = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            scan.hop_by_hop.0 |= 1 << i;
        } else if name.as_str().as_bytes().contains(&b'_') {
            scan.underscore = true;
        }
    }
    scan
}

/// Why a request head is refused before anything else looks at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadProblem {
    /// Two `Host` headers (RFC 9112 §3.2: 400).
    DuplicateHost,
    /// `Host` names another authority than the absolute-form target or `:authority`.
    HostMismatch,
    /// `Host` is not a valid authority.
    InvalidHost,
    /// A header name with `_`, under `underscore_headers = "reject"`.
    UnderscoreName(HeaderName),
    /// `Content-Length` that is not one non-negative number.
    InvalidContentLength,
}

/// Checks `Host`: at most one, a valid authority, and the same authority (ASCII case
/// ignored, the scheme's default port filled in) as the target's when it has one.
pub fn check_host(headers: &HeaderMap, uri: &http::Uri) -> Result<(), HeadProblem> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else { return Ok(()) };
    if hosts.next().is_some() {
        return Err(HeadProblem::DuplicateHost);
    }
    let host = http::uri::Authority::try_from(host.as_bytes()).map_err(|_| HeadProblem::InvalidHost)?;
    let Some(target) = uri.authority() else { return Ok(()) };
    let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) { 443 } else { 80 };
    let same = host.host().eq_ignore_ascii_case(target.host())
        && host.port_u16().unwrap_or(default_port) == target.port_u16().unwrap_or(default_port);
    if same { Ok(()) } else { Err(HeadProblem::HostMismatch) }
}

/// Applies `server.underscore_headers` to a request that has names with `_`.
pub fn apply_underscore_policy(headers: &mut HeaderMap, policy: UnderscoreHeaders) -> Result<(), HeadProblem> {
    let with_underscore = || headers.keys().filter(|name| name.as_str().as_bytes().contains(&b'_')).cloned();
    match policy {
        UnderscoreHeaders::Pass => Ok(()),
        UnderscoreHeaders::Reject => match with_underscore().next() {
            Some(name) => Err(HeadProblem::UnderscoreName(name)),
            None => Ok(()),
        },
        UnderscoreHeaders::Drop => {
            let names: Vec<HeaderName> = with_underscore().collect();
            for name in names {
                headers.remove(&name);
            }
            Ok(())
        }
    }
}

/// Rewrites `Content-Length` to the number it was understood as (`0112` and `112, 112`
/// become `112`), so the upstream cannot read a different length than the gateway did.
/// A canonical single value is left alone, without allocating.
pub fn canonicalise_content_length(headers: &mut HeaderMap) -> Result<(), HeadProblem> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else { return Ok(()) };
    let bytes = first.as_bytes();
    // At most 19 digits always fits a u64.
    let canonical = (1..=19).contains(&bytes.len())
        && bytes.iter().all(u8::is_ascii_digit)
        && (bytes.len() == 1 || bytes[0] != b'0')
        && values.next().is_none();
    if canonical {
        return Ok(());
    }
    // hyper has already refused lists whose items disagree; read them again anyway.
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| HeadProblem::InvalidContentLength)?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadProblem::InvalidContentLength);
            }
            let parsed: u64 = item.parse().map_err(|_| HeadProblem::InvalidContentLength)?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(HeadProblem::InvalidContentLength);
            }
            length = Some(parsed);
        }
    }
    let length = length.ok_or(HeadProblem::InvalidContentLength)?;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(())
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

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn the_scan_finds_host_length_underscores_and_hop_by_hop_in_one_pass() {
        let scan =
            scan_request(&map(&[("host", "a"), ("content-length", "1"), ("x_user_id", "x"), ("upgrade", "h2c")]));
        assert!(scan.host && scan.content_length && scan.underscore && scan.hop_by_hop.has_upgrade());
        let scan = scan_request(&map(&[("accept", "*/*"), ("x-user-id", "x")]));
        assert!(!scan.host && !scan.content_length && !scan.underscore && !scan.hop_by_hop.has_upgrade());
    }

    #[test]
    fn host_must_be_single_valid_and_agree_with_the_target() {
        let origin: http::Uri = "/x".parse().unwrap();
        let absolute: http::Uri = "http://api.example:80/x".parse().unwrap();
        let https: http::Uri = "https://api.example/x".parse().unwrap();
        assert_eq!(check_host(&map(&[("host", "a.example")]), &origin), Ok(()));
        assert_eq!(check_host(&HeaderMap::new(), &absolute), Ok(()));
        assert_eq!(check_host(&map(&[("host", "a"), ("host", "b")]), &origin), Err(HeadProblem::DuplicateHost));
        assert_eq!(check_host(&map(&[("host", "a"), ("host", "a")]), &origin), Err(HeadProblem::DuplicateHost));
        assert_eq!(check_host(&map(&[("host", "a b")]), &origin), Err(HeadProblem::InvalidHost));
        assert_eq!(check_host(&map(&[("host", "API.example")]), &absolute), Ok(()), "case and default port");
        assert_eq!(check_host(&map(&[("host", "api.example:443")]), &https), Ok(()));
        assert_eq!(check_host(&map(&[("host", "evil.example")]), &absolute), Err(HeadProblem::HostMismatch));
        assert_eq!(check_host(&map(&[("host", "api.example:8080")]), &absolute), Err(HeadProblem::HostMismatch));
    }

    #[test]
    fn underscore_names_are_dropped_rejected_or_passed() {
        let sent = || map(&[("transfer_encoding", "chunked"), ("x_user_id", "admin"), ("x-user-id", "alice")]);
        let mut dropped = sent();
        apply_underscore_policy(&mut dropped, UnderscoreHeaders::Drop).unwrap();
        assert_eq!(dropped.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-user-id"]);
        let mut rejected = sent();
        assert!(matches!(
            apply_underscore_policy(&mut rejected, UnderscoreHeaders::Reject),
            Err(HeadProblem::UnderscoreName(_))
        ));
        let mut passed = sent();
        apply_underscore_policy(&mut passed, UnderscoreHeaders::Pass).unwrap();
        assert_eq!(passed.len(), 3);
    }

    #[test]
    fn content_length_goes_on_as_the_number_it_was_read_as() {
        for (sent, forwarded) in [("112", "112"), ("0", "0"), ("000112", "112"), ("00", "0"), ("112, 112", "112")] {
            let mut h = map(&[("content-length", sent)]);
            canonicalise_content_length(&mut h).unwrap();
            assert_eq!(h.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), [forwarded], "{sent}");
        }
        let mut twice = map(&[("content-length", "5"), ("content-length", "05")]);
        canonicalise_content_length(&mut twice).unwrap();
        assert_eq!(twice.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["5"]);
        for bad in ["1, 2", "-1", "+5", "", "1 2", "99999999999999999999999"] {
            let mut h = map(&[("content-length", bad)]);
            assert_eq!(canonicalise_content_length(&mut h), Err(HeadProblem::InvalidContentLength), "{bad}");
        }
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
