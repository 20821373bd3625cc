//! One place that turns every failure into the response the client gets.
//!
//! Each failure names its source, like pingora's `ErrorSource`: the client's request
//! (4xx), the upstream (502/504) or the gateway itself (500). Every response the gateway
//! makes has a short JSON body and `x-gateway-error`, so nobody confuses it with an
//! upstream's own answer.

use bytes::Bytes;
use gateway_plugin_api::Rejection;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::headers::X_GATEWAY_ERROR;
use crate::normalize::PathError;
use crate::upstream::UpstreamError;

/// 400 for a path that cannot be normalised without ambiguity.
pub fn bad_path(error: PathError) -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, error.code(), error.to_string())
}

/// 502, 504 or 413 for an upstream exchange that failed before a response head.
pub fn upstream_failed(error: &UpstreamError) -> Rejection {
    let (status, code) = match error {
        UpstreamError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"),
        UpstreamError::Connect { .. } => (StatusCode::BAD_GATEWAY, "upstream-connect-failed"),
        UpstreamError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large"),
        UpstreamError::Exchange { .. } => (StatusCode::BAD_GATEWAY, "upstream-error"),
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

/// 413 for a body whose declared length is over the limit.
pub fn body_too_large(limit: u64) -> Rejection {
    Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", format!("request body exceeds {limit} bytes"))
}

/// Renders a rejection: JSON `{"error": code, "message": ..., "request_id": ...}`.
pub fn render(rejection: Rejection, request_id: &HeaderValue) -> Response<Full<Bytes>> {
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
