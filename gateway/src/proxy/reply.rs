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

use crate::proxy::headers::X_GATEWAY_ERROR;
use crate::routing::normalize::PathError;
use crate::upstream::UpstreamError;

/// Why the gateway answers a request itself.
#[derive(Debug)]
pub(crate) enum ProxyError {
    /// The path cannot be normalised without ambiguity.
    BadPath(PathError),
    /// The normalised path is not a valid request target.
    InvalidTarget,
    /// The request body is larger than `limit` bytes.
    BodyTooLarge { limit: u64 },
    /// The client's body could not be read.
    BodyReadFailed,
    /// The upstream failed before a response head.
    Upstream(UpstreamError),
    /// The upstream's breaker is open and nothing could stand in.
    BreakerOpen { retry_after: Duration },
    /// A policy kept asking the pipeline to wait.
    PolicyStalled { plugin: &'static str },
    /// A policy answered the request itself (401, 429, ...).
    Policy(Rejection),
}

impl ProxyError {
    /// The status, code, message and headers the client gets.
    pub(crate) fn into_rejection(self) -> Rejection {
        match self {
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
            ProxyError::BodyReadFailed => {
                Rejection::new(StatusCode::BAD_REQUEST, codes::BODY_READ_FAILED, "the request body could not be read")
            }
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
        }
    }
}

/// 502, 504 or 413 for an upstream exchange that failed before a response head.
fn upstream_failed(error: &UpstreamError) -> Rejection {
    let (status, code) = match error {
        UpstreamError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, codes::UPSTREAM_TIMEOUT),
        UpstreamError::Connect { .. } => (StatusCode::BAD_GATEWAY, codes::UPSTREAM_CONNECT_FAILED),
        UpstreamError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, codes::BODY_TOO_LARGE),
        UpstreamError::Exchange { .. } => (StatusCode::BAD_GATEWAY, codes::UPSTREAM_ERROR),
    };
    // The message names the upstream but not its address or the OS error: those go to
    // the log, not to the client.
    let message = match error {
        UpstreamError::Timeout { upstream, timeout } => {
            format!("upstream {upstream} sent no response within {} ms", timeout.as_millis())
        }
        UpstreamError::Connect { upstream, .. } => format!("cannot connect to upstream {upstream}"),
        UpstreamError::BodyTooLarge => "request body exceeds the limit".to_owned(),
        UpstreamError::Exchange { upstream, .. } => format!("upstream {upstream} broke the exchange"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_maps_to_its_status_and_code() {
        let cases = [
            (ProxyError::BadPath(PathError::EncodedNul), 400, "bad-path-encoded-nul"),
            (ProxyError::InvalidTarget, 400, codes::BAD_PATH),
            (ProxyError::BodyTooLarge { limit: 10 }, 413, codes::BODY_TOO_LARGE),
            (ProxyError::BodyReadFailed, 400, codes::BODY_READ_FAILED),
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
            (ProxyError::Upstream(UpstreamError::BodyTooLarge), 413, codes::BODY_TOO_LARGE),
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
