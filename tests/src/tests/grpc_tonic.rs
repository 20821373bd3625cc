//! gRPC through the gateway with a real gRPC stack on both ends: tonic's client (`Channel`,
//! h2c) and tonic's server codec behind a `protocol = "http2"` upstream. Unary and
//! server-streaming calls with custom trailing metadata, a service's own error status,
//! and the gateway's refusals as tonic decodes them (UNAUTHENTICATED, UNAVAILABLE).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use http::HeaderMap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use tokio::net::TcpListener;
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, ServerStreamingService, UnaryService};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::harness::tokens::*;
use crate::harness::*;

const SAY_HELLO: &str = "/greet.v1.Greeter/SayHello";
const COUNT_UP: &str = "/greet.v1.Greeter/CountUp";
const MISSING: &str = "/greet.v1.Greeter/Missing";

#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint32, tag = "2")]
    count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    index: u32,
}

/// Replies stream: `count` messages, then an OK status carrying custom trailing metadata
/// (tonic sends a stream's final status, metadata included, as the HTTP/2 trailers).
fn replies(request: &HelloRequest, count: u32) -> BoxStream<'static, Result<HelloReply, Status>> {
    let name = request.name.clone();
    let messages = (1..=count).map(move |index| Ok(HelloReply { message: format!("hello {name}"), index }));
    let mut trailing = MetadataMap::new();
    trailing.insert("x-served-by", "greeter-1".parse().expect("ASCII metadata"));
    trailing.insert("x-reply-count", count.to_string().parse().expect("ASCII metadata"));
    let status = Status::with_metadata(Code::Ok, "", trailing);
    Box::pin(stream::iter(messages).chain(stream::iter([Err(status)])))
}

/// `SayHello` (unary on the wire: one message, then trailers) and `CountUp` (server
/// streaming: `count` messages) share the reply stream.
#[derive(Clone)]
struct Greeter {
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl ServerStreamingService<HelloRequest> for Greeter {
    type Response = HelloReply;
    type ResponseStream = BoxStream<'static, Result<HelloReply, Status>>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        self.seen.lock().expect("not poisoned").push(request.metadata().clone().into_headers());
        let count = request.get_ref().count.max(1);
        std::future::ready(Ok(tonic::Response::new(replies(request.get_ref(), count))))
    }
}

/// A unary method that fails with the service's own status and details metadata.
struct Missing;

impl UnaryService<HelloRequest> for Missing {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, Status>>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        let mut metadata = MetadataMap::new();
        metadata.insert("x-missing-name", request.get_ref().name.parse().expect("ASCII metadata"));
        std::future::ready(Err(Status::with_metadata(Code::NotFound, "no such greeting", metadata)))
    }
}

struct GreeterServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GreeterServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tonic server over h2c, routed by method path as tonic's generated code routes.
async fn greeter_server() -> GreeterServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let greeter = Greeter { seen: seen.clone() };
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let greeter = greeter.clone();
            let service = service_fn(move |request: http::Request<Incoming>| {
                let greeter = greeter.clone();
                async move {
                    let mut grpc = Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
                    let response = match request.uri().path() {
                        SAY_HELLO | COUNT_UP => grpc.server_streaming(greeter, request).await,
                        MISSING => grpc.unary(Missing, request).await,
                        _ => Status::unimplemented("no such method").into_http(),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    GreeterServer { addr, seen, task }
}

/// A gateway whose `/greet.v1.Greeter` route needs a token and goes to `greeter_url`.
async fn gateway_for(greeter_url: &str) -> (RunningMock, TestGateway) {
    let monolith = MockUpstream::new("monolith").start().await;
    let config = format!(
        "{}\n[upstreams.greeter]\nurl = \"{greeter_url}\"\nprotocol = \"http2\"\n\
         [[routes]]\nname = \"greeter\"\nprefix = \"/greet.v1.Greeter\"\nservice = \"greeter\"\nfallback = \"never\"\n{}",
        base_config(&monolith.url(), ""),
        auth_section()
    );
    (monolith, TestGateway::start(&config).await)
}

/// tonic's client over one h2c connection to the gateway.
async fn client(gateway: &TestGateway) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.addr))
        .expect("a valid endpoint")
        .timeout(IO_TIMEOUT)
        .connect()
        .await
        .expect("connect to the gateway");
    tonic::client::Grpc::new(channel)
}

fn hello(name: &str, count: u32, token: Option<&str>) -> tonic::Request<HelloRequest> {
    let mut request = tonic::Request::new(HelloRequest { name: name.to_owned(), count });
    request.metadata_mut().insert("x-client-tag", "tonic-test".parse().expect("ASCII metadata"));
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ASCII metadata"));
    }
    request
}

async fn unary(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    request: tonic::Request<HelloRequest>,
) -> Result<tonic::Response<HelloReply>, Status> {
    client.ready().await.expect("the channel is ready");
    let codec = ProstCodec::<HelloRequest, HelloReply>::default();
    client.unary(request, http::uri::PathAndQuery::from_static(path), codec).await
}

#[tokio::test]
async fn a_unary_call_carries_request_metadata_and_custom_trailing_metadata() {
    let greeter = greeter_server().await;
    let (_monolith, gateway) = gateway_for(&format!("http://{}", greeter.addr)).await;
    let mut client = client(&gateway).await;
    let token = sign(Algorithm::ES256, &claims_for("alice"));

    let response = unary(&mut client, SAY_HELLO, hello("alice", 1, Some(&token))).await.expect("an OK call");
    assert_eq!(response.get_ref(), &HelloReply { message: "hello alice".to_owned(), index: 1 });
    // tonic merges the trailers of a unary call into its metadata.
    assert_eq!(response.metadata().get("x-served-by").and_then(|v| v.to_str().ok()), Some("greeter-1"));
    assert_eq!(response.metadata().get("x-reply-count").and_then(|v| v.to_str().ok()), Some("1"));

    let seen = greeter.seen.lock().expect("not poisoned").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["x-client-tag"], "tonic-test", "request metadata reaches the service");
    assert_eq!(seen[0]["x-user-id"], "alice", "the token's subject reaches the service");
    assert_eq!(seen[0]["te"], "trailers");
    assert!(seen[0].get("x-request-id").is_some());
}

#[tokio::test]
async fn a_server_streaming_call_delivers_every_message_then_the_trailers() {
    let greeter = greeter_server().await;
    let (_monolith, gateway) = gateway_for(&format!("http://{}", greeter.addr)).await;
    let mut client = client(&gateway).await;
    let token = sign(Algorithm::ES256, &claims_for("bob"));

    client.ready().await.expect("the channel is ready");
    let codec = ProstCodec::<HelloRequest, HelloReply>::default();
    let response = client
        .server_streaming(hello("bob", 5, Some(&token)), http::uri::PathAndQuery::from_static(COUNT_UP), codec)
        .await
        .expect("the call starts");
    let mut messages = response.into_inner();
    let mut indexes = Vec::new();
    while let Some(reply) = messages.message().await.expect("a message or the end") {
        assert_eq!(reply.message, "hello bob");
        indexes.push(reply.index);
    }
    assert_eq!(indexes, [1, 2, 3, 4, 5]);
    let trailers = messages.trailers().await.expect("trailers").expect("trailing metadata");
    assert_eq!(trailers.get("x-served-by").and_then(|v| v.to_str().ok()), Some("greeter-1"));
    assert_eq!(trailers.get("x-reply-count").and_then(|v| v.to_str().ok()), Some("5"));
}

#[tokio::test]
async fn the_services_own_error_status_and_metadata_pass_through() {
    let greeter = greeter_server().await;
    let (_monolith, gateway) = gateway_for(&format!("http://{}", greeter.addr)).await;
    let mut client = client(&gateway).await;
    let token = sign(Algorithm::ES256, &claims_for("carol"));

    let status = unary(&mut client, MISSING, hello("carol", 1, Some(&token))).await.expect_err("NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such greeting");
    assert_eq!(status.metadata().get("x-missing-name").and_then(|v| v.to_str().ok()), Some("carol"));
    assert!(status.metadata().get("x-gateway-error").is_none(), "the gateway did not answer this one");
}

#[tokio::test]
async fn a_call_without_a_token_is_unauthenticated_and_never_reaches_the_service() {
    let greeter = greeter_server().await;
    let (_monolith, gateway) = gateway_for(&format!("http://{}", greeter.addr)).await;
    let mut client = client(&gateway).await;

    let status = unary(&mut client, SAY_HELLO, hello("mallory", 1, None)).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(!status.message().is_empty());
    assert_eq!(status.metadata().get("x-gateway-error").and_then(|v| v.to_str().ok()), Some("jwt-missing"));

    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.";
    let status = unary(&mut client, SAY_HELLO, hello("mallory", 1, Some(forged))).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(greeter.seen.lock().expect("not poisoned").is_empty(), "nothing reached the service");
}

#[tokio::test]
async fn an_unreachable_service_is_unavailable_to_the_client() {
    let down = closed_port().await;
    let (_monolith, gateway) = gateway_for(&format!("http://{down}")).await;
    let mut client = client(&gateway).await;
    let token = sign(Algorithm::ES256, &claims_for("dave"));

    let status = unary(&mut client, SAY_HELLO, hello("dave", 1, Some(&token))).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.metadata().get("x-gateway-error").and_then(|v| v.to_str().ok()), Some("upstream-connect-failed"));
}
