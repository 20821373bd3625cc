//! gRPC clients get the gateway's own answers in gRPC's form: HTTP 200, `grpc-status`,
//! `grpc-message` and `x-gateway-error`, in a trailers-only response over h2c.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::harness::tokens::*;
use crate::harness::*;

fn grpc_call(url: String) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        // One empty length-prefixed message: compressed flag 0, length 0.
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("a valid request")
}

#[tokio::test]
async fn a_grpc_call_without_a_token_is_unauthenticated_in_grpc_form() {
    let w = UsersWorld::start(&format!(
        "[[routes]]\nname = \"users\"\nprefix = \"/users.v1.Users\"\nservice = \"users\"\n{}",
        auth_section()
    ))
    .await;
    let reply = send_h2(grpc_call(w.gateway.url("/users.v1.Users/Get"))).await;
    assert_eq!(reply.status, 200, "gRPC carries its status in grpc-status");
    assert_eq!(reply.header("grpc-status"), Some("16"), "UNAUTHENTICATED");
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(reply.header("x-gateway-error"), Some("jwt-missing"));
    assert!(reply.header("grpc-message").is_some_and(|m| !m.is_empty()));
    assert!(reply.header("www-authenticate").is_some(), "the rejection's own headers stay");
    assert!(reply.body.is_empty(), "trailers only: no message");
    assert_eq!(w.users.count(), 0);

    // The same refusal to a plain HTTP/2 client stays JSON with its HTTP status.
    let plain = send_h2(Request::get(w.gateway.url("/users.v1.Users/Get")).body(Full::default()).expect("valid")).await;
    assert_eq!(plain.status, 401);
    assert_eq!(plain.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable_and_a_bad_path_invalid_argument() {
    let down = closed_port().await;
    let monolith = MockUpstream::new("monolith").start().await;
    let config = format!(
        "{}\n[upstreams.users]\nurl = \"http://{down}\"\n[[routes]]\nname = \"users\"\nprefix = \"/users.v1.Users\"\nservice = \"users\"\nfallback = \"never\"\n",
        base_config(&monolith.url(), "")
    );
    let gateway = TestGateway::start(&config).await;
    let reply = send_h2(grpc_call(gateway.url("/users.v1.Users/Get"))).await;
    assert_eq!((reply.status.as_u16(), reply.header("grpc-status")), (200, Some("14")), "UNAVAILABLE");
    assert_eq!(reply.header("x-gateway-error"), Some("upstream-connect-failed"));
    let reply = send_h2(grpc_call(gateway.url("/users.v1.Users/..%2fGet"))).await;
    assert_eq!((reply.status.as_u16(), reply.header("grpc-status")), (200, Some("3")), "INVALID_ARGUMENT");
}
