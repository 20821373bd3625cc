//! HTTP/2 upstreams (`protocol = "http2"`, h2c): gRPC-shaped calls with trailers both
//! ways, a server-streaming response that arrives frame by frame, and the breaker and
//! fallback rules as on HTTP/1.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::harness::*;

type FrameStream = StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// What the HTTP/2 upstream saw of one call.
#[derive(Clone, Debug)]
struct Seen {
    version: http::Version,
    path: String,
    authority: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// An HTTP/2-only (h2c) server. `/stream` answers a first message, waits for the test's
/// go-ahead, then a second one and trailers; every other path answers one message and
/// trailers with `grpc-status: 0` and custom metadata.
struct H2Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    go_ahead: mpsc::UnboundedSender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
}

async fn h2_upstream() -> H2Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (go_ahead, go_rx) = mpsc::unbounded_channel::<()>();
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            let go_rx = go_rx.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let record = record.clone();
                let go_rx = go_rx.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let collected = body.collect().await.expect("a whole request");
                    let trailers_in = collected.trailers().cloned();
                    record.lock().unwrap().push(Seen {
                        version: parts.version,
                        path: parts.uri.path().to_owned(),
                        authority: parts.uri.authority().map(ToString::to_string),
                        headers: parts.headers,
                        body: collected.to_bytes(),
                        trailers: trailers_in,
                    });
                    let frames: futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>> =
                        if parts.uri.path() == "/chat.v1.Chat/Stream" {
                            Box::pin(futures_util::stream::unfold(0, move |step| {
                                let go_rx = go_rx.clone();
                                async move {
                                    let frame = match step {
                                        0 => Frame::data(Bytes::from_static(b"\0\0\0\0\x01A")),
                                        1 => {
                                            go_rx.lock().await.recv().await;
                                            Frame::data(Bytes::from_static(b"\0\0\0\0\x01B"))
                                        }
                                        2 => Frame::trailers(trailers(&[("grpc-status", "0")])),
                                        _ => return None,
                                    };
                                    Some((Ok(frame), step + 1))
                                }
                            }))
                        } else {
                            Box::pin(futures_util::stream::iter([
                                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02ok"))),
                                Ok(Frame::trailers(trailers(&[("grpc-status", "0"), ("x-meta-shard", "7")]))),
                            ]))
                        };
                    let response = Response::builder()
                        .header("content-type", "application/grpc")
                        .body(StreamBody::new(frames))
                        .expect("a valid response");
                    Ok::<Response<FrameStream>, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    H2Upstream { addr, seen, go_ahead, task }
}

async fn world(upstream: &H2Upstream, extra: &str) -> (RunningMock, TestGateway) {
    let monolith = MockUpstream::new("monolith").start().await;
    let config = format!(
        "{}\n[upstreams.chat]\nurl = \"http://{}\"\nprotocol = \"http2\"\nhost_header = \"chat.internal\"\n{extra}\n\
         [[routes]]\nname = \"chat\"\nprefix = \"/chat.v1.Chat\"\nservice = \"chat\"\nfallback = \"never\"\n",
        base_config(&monolith.url(), ""),
        upstream.addr
    );
    let gateway = TestGateway::start(&config).await;
    (monolith, gateway)
}

/// A gRPC-shaped call over h2c whose request ends with trailers.
fn call(gateway: &TestGateway, method: &str) -> Request<FrameStream> {
    let frames: futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>> =
        Box::pin(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x03hey"))),
            Ok(Frame::trailers(trailers(&[("x-client-done", "yes")]))),
        ]));
    Request::post(gateway.url(&format!("/chat.v1.Chat/{method}")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(frames))
        .expect("a valid request")
}

fn h2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, FrameStream> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

#[tokio::test]
async fn a_unary_call_carries_trailers_both_ways() {
    let upstream = h2_upstream().await;
    let (_monolith, gateway) = world(&upstream, "").await;
    let response = tokio::time::timeout(IO_TIMEOUT, h2_client().request(call(&gateway, "Send")))
        .await
        .expect("in time")
        .expect("a response");
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.expect("a whole body");
    let trailers = collected.trailers().cloned().expect("the upstream's trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-meta-shard"], "7", "custom trailing metadata");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\x02ok"));

    let seen = upstream.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.path, "/chat.v1.Chat/Send");
    assert_eq!(seen.authority.as_deref(), Some("chat.internal"), "host_header becomes :authority");
    assert_eq!(seen.headers["te"], "trailers");
    assert!(seen.headers.contains_key("x-forwarded-for"));
    assert_eq!(seen.body, Bytes::from_static(b"\0\0\0\0\x03hey"));
    assert_eq!(seen.trailers.as_ref().map(|t| t["x-client-done"].clone()), Some(HeaderValue::from_static("yes")));
}

#[tokio::test]
async fn a_server_stream_arrives_frame_by_frame() {
    let upstream = h2_upstream().await;
    let (_monolith, gateway) = world(&upstream, "").await;
    let response = tokio::time::timeout(IO_TIMEOUT, h2_client().request(call(&gateway, "Stream")))
        .await
        .expect("in time")
        .expect("a response");
    let mut body = response.into_body();
    // The upstream holds its second message until the client has the first: a gateway that
    // buffered the stream would never deliver it, and this would time out.
    let first = tokio::time::timeout(IO_TIMEOUT, body.frame()).await.expect("the first message in time");
    assert_eq!(first.expect("a frame").expect("data").into_data().ok(), Some(Bytes::from_static(b"\0\0\0\0\x01A")));
    upstream.go_ahead.send(()).expect("the upstream waits");
    let rest = tokio::time::timeout(IO_TIMEOUT, body.collect()).await.expect("the rest in time").expect("a body");
    assert_eq!(rest.trailers().map(|t| t["grpc-status"].clone()), Some(HeaderValue::from_static("0")));
    assert_eq!(rest.to_bytes(), Bytes::from_static(b"\0\0\0\0\x01B"));
}

#[tokio::test]
async fn calls_share_one_connection_and_a_dead_upstream_is_unavailable() {
    let upstream = h2_upstream().await;
    let (_monolith, gateway) = world(&upstream, "").await;
    let calls = (0..8).map(|_| h2_client().request(call(&gateway, "Send")));
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.expect("a response").status(), 200);
    }
    assert_eq!(upstream.seen.lock().unwrap().len(), 8);

    let down = closed_port().await;
    let monolith = MockUpstream::new("monolith").start().await;
    let config = format!(
        "{}\n[upstreams.chat]\nurl = \"http://{down}\"\nprotocol = \"http2\"\n\
         [[routes]]\nname = \"chat\"\nprefix = \"/chat.v1.Chat\"\nservice = \"chat\"\nfallback = \"never\"\n",
        base_config(&monolith.url(), "")
    );
    let gateway = TestGateway::start(&config).await;
    let reply = send_h2(
        Request::post(gateway.url("/chat.v1.Chat/Send"))
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .expect("valid"),
    )
    .await;
    assert_eq!(reply.header("grpc-status"), Some("14"), "UNAVAILABLE, in gRPC's form");
    assert_eq!(reply.header("x-gateway-error"), Some("upstream-connect-failed"));
}

#[tokio::test]
async fn an_http1_client_reaches_an_http2_upstream() {
    let upstream = h2_upstream().await;
    let (_monolith, gateway) = world(&upstream, "").await;
    let reply = get(&gateway.url("/chat.v1.Chat/Send")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, Bytes::from_static(b"\0\0\0\0\x02ok"));
    assert_eq!(upstream.seen.lock().unwrap()[0].version, http::Version::HTTP_2);
}
