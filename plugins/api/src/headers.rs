//! The headers the gateway owns: it sets or strips them itself on every request it sends
//! and every response it returns, so neither a policy nor the config may edit them.
//!
//! The gateway's own header hygiene uses these names, and a policy that edits headers
//! refuses them with [`gateway_owned`]'s reason, so the two cannot drift apart.

use http::header::{self, HeaderName};

/// Request id header: kept from the client when sane, otherwise made; always returned.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Client address chain; the gateway appends the peer address.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Scheme the client used to reach the gateway.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Names the reason on every response the gateway makes itself.
pub static X_GATEWAY_ERROR: HeaderName = HeaderName::from_static("x-gateway-error");

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1), plus the
/// non-standard `keep-alive` and `proxy-connection`.
pub static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Why the gateway owns `name`, or `None` when config may edit it. Claim headers
/// (`auth.claims_to_headers`) are owned too; the config knows their names, this does not.
pub fn gateway_owned(name: &HeaderName) -> Option<&'static str> {
    let text = name.as_str();
    if *name == header::HOST {
        Some("the gateway sets Host per upstream: use host_header on the upstream")
    } else if *name == header::CONTENT_LENGTH {
        Some("it frames the body, which the gateway sets from the body it sends")
    } else if HOP_BY_HOP.contains(name) {
        Some("it is a hop-by-hop header: it describes one connection and the gateway never forwards it")
    } else if *name == X_REQUEST_ID {
        Some("the gateway keeps or makes the request id and returns it on every response")
    } else if text.starts_with("x-forwarded-") || *name == header::FORWARDED {
        Some("the gateway sets the forwarding headers from the connection it accepted")
    } else if text.starts_with("x-gateway-") {
        Some("the gateway's own signals to clients (x-gateway-error, x-gateway-partial) come only from it")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_headers_come_with_a_reason() {
        for name in ["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "keep-alive"] {
            assert!(gateway_owned(&HeaderName::from_static(name)).is_some(), "{name}");
        }
        for name in ["x-request-id", "x-forwarded-for", "x-forwarded-host", "forwarded", "x-gateway-error"] {
            assert!(gateway_owned(&HeaderName::from_static(name)).is_some(), "{name}");
        }
        assert!(gateway_owned(&header::HOST).is_some_and(|why| why.contains("host_header")));
        for name in ["x-debug", "cache-control", "server", "x-forwarded", "authorization", "cookie"] {
            assert_eq!(gateway_owned(&HeaderName::from_static(name)), None, "{name}");
        }
    }
}
