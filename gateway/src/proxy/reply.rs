//! One place that turns every failure into the response the client gets.
//!
//! Each [`ProxyError`] names its source, like pingora's `ErrorSource`: the client's request
//! (4xx), the upstream (502/503/504), a policy's own answer (a [`Rejection`]) or the
//! gateway itself. [`ProxyError::into_rejection`] is the only mapping from failure to
//! status and `x-gateway-error` code (the codes are constants in
//! [`gateway_plugin_api::codes`]); [`render`] makes the short JSON body every gateway-made
//! response has, so nobody confuses it with an upstream's own answer.

use std::time::Duration;

use bytes::Bytes;
use gateway_plugin_api::{Rejection, codes};
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::proxy::headers::{HeadProblem, X_GATEWAY_ERROR};
use crate::routing::normalize::PathError;
use crate::upstream::{ClientFault, UpstreamError};

/// Why the gateway answers a request itself.
#[derive(Debug)]
pub(crate) enum ProxyError {
    /// The request head can be read two ways (see the screen phase).
    BadHead(HeadProblem),
    /// The path cannot be normalised without ambiguity.
    BadPath(PathError),
    /// The normalised path is not a valid request target.
    InvalidTarget,
    /// The request body is larger than `limit` bytes.
    BodyTooLarge { limit: u64 },
    /// The client's body was too large, stalled or malformed.
    ClientBody(ClientFault),
    /// The upstream failed before a response head.
    Upstream(UpstreamError),
    /// The upstream's breaker is open and nothing could stand in.
    BreakerOpen { retry_after: Duration },
    /// A policy kept asking the pipeline to wait.
    PolicyStalled { plugin: &'static str },
    /// A policy answered the request itself (401, 429, ...).
    Policy(Rejection),
    /// The upstream answered 101 for a protocol the gateway does not relay.
    WrongUpgrade,
}

impl ProxyError {
    /// The status, code, message and headers the client gets.
    pub(crate) fn into_rejection(self) -> Rejection {
        match self {
            ProxyError::BadHead(problem) => bad_head(problem),
            ProxyError::BadPath(error) => Rejection::new(StatusCode::BAD_REQUEST, error.code(), error.to_string()),
            ProxyError::InvalidTarget => Rejection::new(
                StatusCode::BAD_REQUEST,
                codes::BAD_PATH,
                "the normalised path is not a valid request target",
            ),
            ProxyError::BodyTooLarge { limit } => Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::BODY_TOO_LARGE,
                format!("request body exceeds {limit} bytes"),
            ),
            ProxyError::ClientBody(fault) => client_body_failed(fault),
            ProxyError::Upstream(error) => upstream_failed(&error),
            ProxyError::BreakerOpen { retry_after } => {
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    codes::BREAKER_OPEN,
                    "the upstream's circuit breaker is open",
                )
                .with_header(RETRY_AFTER, HeaderValue::from(seconds.max(1)))
            }
            ProxyError::PolicyStalled { plugin } => Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::POLICY_STALLED,
                format!("the {plugin} policy could not decide in time"),
            ),
            ProxyError::Policy(rejection) => rejection,
            ProxyError::WrongUpgrade => Rejection::new(
                StatusCode::BAD_GATEWAY,
                codes::UPSTREAM_ERROR,
                "the upstream switched to a protocol other than the websocket asked for",
            ),
        }
    }
}

/// 400 for a head the screen phase refused.
fn bad_head(problem: HeadProblem) -> Rejection {
    let (code, message) = match problem {
        HeadProblem::DuplicateHost => (codes::BAD_HOST, "the request has more than one Host header".to_owned()),
        HeadProblem::HostMismatch => {
            (codes::BAD_HOST, "the Host header disagrees with the request target's authority".to_owned())
        }
        HeadProblem::InvalidHost => (codes::BAD_HOST, "the Host header is not a valid host[:port]".to_owned()),
        HeadProblem::UnderscoreName(name) => {
            (codes::BAD_HEADER_NAME, format!("the header name {name} contains '_', which this gateway refuses"))
        }
        HeadProblem::InvalidContentLength => {
            (codes::BAD_REQUEST_BODY, "Content-Length is not one non-negative number".to_owned())
        }
    };
    Rejection::new(StatusCode::BAD_REQUEST, code, message)
}

/// 413, 408 or 400 for a client body that failed while it was read or forwarded.
fn client_body_failed(fault: ClientFault) -> Rejection {
    match fault {
        ClientFault::TooLarge => {
            Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, codes::BODY_TOO_LARGE, "request body exceeds the limit")
        }
        ClientFault::Stalled => Rejection::new(
            StatusCode::REQUEST_TIMEOUT,
            codes::BODY_TIMEOUT,
            "the request body stopped arriving (server.body_read_timeout_ms)",
        ),
        ClientFault::Malformed => {
            Rejection::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY, "the request body's framing is malformed")
        }
    }
}

/// 502 or 504 for an upstream exchange that failed before a response head (or the
/// client's answer when its body was what failed).
fn upstream_failed(error: &UpstreamError) -> Rejection {
    // The message names the upstream but not its address or the OS error: those go to
    // the log, not to the client.
    let (status, code, message) = match error {
        UpstreamError::Client(fault) => return client_body_failed(*fault),
        UpstreamError::Timeout { upstream, timeout } => (
            StatusCode::GATEWAY_TIMEOUT,
            codes::UPSTREAM_TIMEOUT,
            format!("upstream {upstream} sent no response within {} ms", timeout.as_millis()),
        ),
        UpstreamError::Connect { upstream, .. } => {
            (StatusCode::BAD_GATEWAY, codes::UPSTREAM_CONNECT_FAILED, format!("cannot connect to upstream {upstream}"))
        }
        UpstreamError::Tls { upstream, .. } => (
            StatusCode::BAD_GATEWAY,
            codes::UPSTREAM_TLS_FAILED,
            format!("the TLS handshake with upstream {upstream} failed"),
        ),
        UpstreamError::Exchange { upstream, .. } => {
            (StatusCode::BAD_GATEWAY, codes::UPSTREAM_ERROR, format!("upstream {upstream} broke the exchange"))
        }
        UpstreamError::NoHealthyEndpoint { upstream } => (
            StatusCode::SERVICE_UNAVAILABLE,
            codes::NO_HEALTHY_ENDPOINT,
            format!("upstream {upstream} has no healthy endpoint"),
        ),
    };
    Rejection::new(status, code, message)
}

/// Renders a rejection: JSON `{"error": code, "message": ..., "request_id": ...}`.
pub(crate) fn render(rejection: Rejection, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: &'a str,
        message: &'a str,
        request_id: &'a str,
    }
    let body = serde_json::to_vec(&Body {
        error: rejection.code,
        message: &rejection.message,
        request_id: request_id.to_str().unwrap_or(""),
    })
    .expect("a struct of strings serialises");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = rejection.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(&X_GATEWAY_ERROR, HeaderValue::from_static(rejection.code));
    for (name, value) in rejection.headers {
        headers.append(name, value);
    }
    response
}

/// True for a gRPC request: HTTP/2 with `content-type: application/grpc` (or `+proto`,
/// `+json`, ...). Only HTTP/2 requests are looked at: gRPC needs it, so an HTTP/1.1
/// request costs no header lookup.
pub(crate) fn is_grpc(version: http::Version, headers: &http::HeaderMap) -> bool {
    version == http::Version::HTTP_2 && crate::upstream::is_grpc_content_type(headers)
}

/// The gRPC status for a gateway reply of HTTP status `status` (the SPEC's five, and the
/// usual mapping for the rest).
fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 3,             // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        404 => 12,            // UNIMPLEMENTED
        413 | 429 | 431 => 8, // RESOURCE_EXHAUSTED
        499 => 1,             // CANCELLED
        502 | 503 => 14,      // UNAVAILABLE
        408 | 504 => 4,       // DEADLINE_EXCEEDED
        500..=599 => 13,      // INTERNAL
        _ => 2,               // UNKNOWN
    }
}

/// `grpc-message` is percent-encoded UTF-8 (gRPC over HTTP/2, "Responses").
fn grpc_message(message: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&encoded).expect("percent-encoded ASCII is a valid header value")
}

/// The same reply in gRPC's form, for a gRPC client: HTTP 200, a trailers-only response
/// (`grpc-status`, `grpc-message`) and `x-gateway-error` as always.
pub(crate) fn render_grpc(rejection: Rejection) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(grpc_status(rejection.status))));
    headers.insert("grpc-message", grpc_message(&rejection.message));
    headers.insert(&X_GATEWAY_ERROR, HeaderValue::from_static(rejection.code));
    for (name, value) in rejection.headers {
        headers.append(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_http2_with_a_grpc_content_type() {
        let headers = |ct: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            h
        };
        for ct in ["application/grpc", "application/grpc+proto", "Application/GRPC+json", "application/grpc;x=1"] {
            assert!(is_grpc(http::Version::HTTP_2, &headers(ct)), "{ct}");
        }
        assert!(!is_grpc(http::Version::HTTP_11, &headers("application/grpc")), "gRPC needs HTTP/2");
        for ct in ["application/grpc-web", "application/json", "application/grp"] {
            assert!(!is_grpc(http::Version::HTTP_2, &headers(ct)), "{ct}");
        }
        assert!(!is_grpc(http::Version::HTTP_2, &http::HeaderMap::new()));
    }

    proptest::proptest! {
        /// Any content type: gRPC exactly when it is `application/grpc` (any case) alone or
        /// followed by `+subtype` or `;parameters`, and only over HTTP/2; never a panic.
        #[test]
        fn grpc_detection_never_panics_and_follows_the_prefix_rule(value in proptest::collection::vec(proptest::num::u8::ANY, 0..40), suffix in "[+;a-z0-9=]{0,8}", upper in proptest::bool::ANY) {
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                headers.insert(CONTENT_TYPE, v);
                let _ = is_grpc(http::Version::HTTP_2, &headers);
            }
            let base = if upper { "APPLICATION/GRPC" } else { "application/grpc" };
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(&format!("{base}{suffix}")).unwrap());
            let expected = suffix.is_empty() || suffix.starts_with('+') || suffix.starts_with(';');
            proptest::prop_assert_eq!(is_grpc(http::Version::HTTP_2, &headers), expected);
            proptest::prop_assert!(!is_grpc(http::Version::HTTP_11, &headers));
        }
    }

    #[test]
    fn gateway_replies_to_grpc_clients_are_trailers_only_with_the_specs_statuses() {
        for (status, grpc) in [(401, "16"), (502, "14"), (503, "14"), (504, "4"), (400, "3"), (413, "8"), (429, "8")] {
            let rejection = Rejection::new(StatusCode::from_u16(status).unwrap(), codes::RATE_LIMITED, "no token 100%");
            let response = render_grpc(rejection.with_header(RETRY_AFTER, HeaderValue::from_static("1")));
            assert_eq!(response.status(), StatusCode::OK, "{status}");
            assert_eq!(response.headers()["grpc-status"], grpc, "{status}");
            assert_eq!(response.headers()["grpc-message"], "no token 100%25");
            assert_eq!(response.headers()["content-type"], "application/grpc");
            assert_eq!(response.headers()[&X_GATEWAY_ERROR], codes::RATE_LIMITED);
            assert_eq!(response.headers()[RETRY_AFTER], "1");
            assert!(http_body::Body::is_end_stream(response.body()), "no message: trailers only");
        }
        assert_eq!(grpc_message("caf\u{e9}\n"), "caf%C3%A9%0A");
        assert_eq!(grpc_status(StatusCode::INTERNAL_SERVER_ERROR), 13);
        assert_eq!(grpc_status(StatusCode::IM_A_TEAPOT), 2);
    }

    #[test]
    fn every_failure_maps_to_its_status_and_code() {
        let cases = [
            (ProxyError::BadPath(PathError::EncodedNul), 400, "bad-path-encoded-nul"),
            (ProxyError::InvalidTarget, 400, codes::BAD_PATH),
            (ProxyError::BodyTooLarge { limit: 10 }, 413, codes::BODY_TOO_LARGE),
            (ProxyError::ClientBody(ClientFault::Malformed), 400, codes::BAD_REQUEST_BODY),
            (ProxyError::ClientBody(ClientFault::Stalled), 408, codes::BODY_TIMEOUT),
            (ProxyError::ClientBody(ClientFault::TooLarge), 413, codes::BODY_TOO_LARGE),
            (ProxyError::BadHead(HeadProblem::DuplicateHost), 400, codes::BAD_HOST),
            (ProxyError::BadHead(HeadProblem::HostMismatch), 400, codes::BAD_HOST),
            (
                ProxyError::BadHead(HeadProblem::UnderscoreName(http::HeaderName::from_static("a_b"))),
                400,
                codes::BAD_HEADER_NAME,
            ),
            (ProxyError::BadHead(HeadProblem::InvalidContentLength), 400, codes::BAD_REQUEST_BODY),
            (
                ProxyError::Upstream(UpstreamError::Timeout { upstream: "u".into(), timeout: Duration::from_secs(1) }),
                504,
                codes::UPSTREAM_TIMEOUT,
            ),
            (
                ProxyError::Upstream(UpstreamError::Connect { upstream: "u".into(), reason: "refused".into() }),
                502,
                codes::UPSTREAM_CONNECT_FAILED,
            ),
            (ProxyError::Upstream(UpstreamError::Client(ClientFault::TooLarge)), 413, codes::BODY_TOO_LARGE),
            (ProxyError::Upstream(UpstreamError::Client(ClientFault::Stalled)), 408, codes::BODY_TIMEOUT),
            (
                ProxyError::Upstream(UpstreamError::Exchange { upstream: "u".into(), source: "reset".into() }),
                502,
                codes::UPSTREAM_ERROR,
            ),
            (ProxyError::BreakerOpen { retry_after: Duration::from_millis(1500) }, 503, codes::BREAKER_OPEN),
            (ProxyError::PolicyStalled { plugin: "auth" }, 503, codes::POLICY_STALLED),
        ];
        for (error, status, code) in cases {
            let rejection = error.into_rejection();
            assert_eq!((rejection.status.as_u16(), rejection.code), (status, code));
        }
    }

    #[test]
    fn breaker_refusals_round_retry_after_up_to_whole_seconds() {
        let retry = |ms| {
            let rejection = ProxyError::BreakerOpen { retry_after: Duration::from_millis(ms) }.into_rejection();
            rejection.headers.iter().find(|(n, _)| n == RETRY_AFTER).map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(retry(1500).as_deref(), Some("2"));
        assert_eq!(retry(2000).as_deref(), Some("2"));
        assert_eq!(retry(0).as_deref(), Some("1"), "never 0: that would invite a hot retry loop");
    }

    #[tokio::test]
    async fn rendered_replies_carry_the_code_twice_and_the_request_id() {
        use http_body_util::BodyExt;
        let response = render(
            Rejection::new(StatusCode::TOO_MANY_REQUESTS, codes::RATE_LIMITED, "slow down"),
            &HeaderValue::from_static("req-1"),
        );
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[&X_GATEWAY_ERROR], "rate-limited");
        let bytes = response.into_body().collect().await.expect("a full body").to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(body["error"], "rate-limited");
        assert_eq!(body["message"], "slow down");
        assert_eq!(body["request_id"], "req-1");
    }
}
