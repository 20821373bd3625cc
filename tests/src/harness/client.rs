//! HTTP clients for tests: a hyper client for ordinary requests and a raw socket for
//! requests that a well-behaved client library would refuse to send.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::IO_TIMEOUT;

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `request` over HTTP/1.1 and reads the whole response.
pub async fn send(request: Request<Full<Bytes>>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    exchange(client, request).await
}

/// Sends `request` over HTTP/2 with prior knowledge (h2c).
pub async fn send_h2(request: Request<Full<Bytes>>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
    exchange(client, request).await
}

async fn exchange(
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Reply {
    let response = tokio::time::timeout(IO_TIMEOUT, client.request(request))
        .await
        .expect("the response head arrives in time")
        .expect("the exchange succeeds");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(IO_TIMEOUT, body.collect())
        .await
        .expect("the body arrives in time")
        .expect("the body is complete")
        .to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// GET `url`.
pub async fn get(url: &str) -> Reply {
    send(Request::get(url).body(Full::default()).expect("a valid request")).await
}

/// GET `url` with these request headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::default()).expect("a valid request")).await
}

/// Writes `request` as raw bytes and reads until the server closes the connection or
/// [`IO_TIMEOUT`] passes; returns what was read as text.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the gateway");
    stream.write_all(request).await.expect("write the request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
