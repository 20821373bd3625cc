//! What a monolith already serves keeps working behind the gateway: server-sent events
//! stream event by event, and `Expect: 100-continue` uploads get their 100.

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::harness::*;

/// An HTTP/1.1 upstream that answers one request with an event stream: the first event,
/// then (after `go`) the second, then the end of the stream.
async fn event_stream_upstream(go: oneshot::Receiver<()>) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let task = tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        let first = "data: one\n\n";
        let _ = stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
                    first.len()
                )
                .as_bytes(),
            )
            .await;
        let _ = go.await;
        let second = "data: two\n\n";
        let _ = stream.write_all(format!("{:x}\r\n{second}\r\n0\r\n\r\n", second.len()).as_bytes()).await;
        let _ = stream.flush().await;
    });
    (addr, task)
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let (go, go_rx) = oneshot::channel();
    let (events, task) = event_stream_upstream(go_rx).await;
    let monolith = MockUpstream::new("monolith").start().await;
    let config = format!(
        "{}\n[upstreams.events]\nurl = \"http://{events}\"\n[[routes]]\nname = \"events\"\nprefix = \"/events\"\nservice = \"events\"\n",
        base_config(&monolith.url(), "")
    );
    let gateway = TestGateway::start(&config).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let request = http::Request::get(gateway.url("/events/feed")).body(Default::default()).expect("valid");
    let response =
        tokio::time::timeout(IO_TIMEOUT, client.request(request)).await.expect("in time").expect("a response");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    // The upstream sends its second event only once the client has the first: a gateway
    // that buffered the stream would time out here.
    let first = tokio::time::timeout(IO_TIMEOUT, body.frame()).await.expect("the first event in time");
    let first = first.expect("a frame").expect("data").into_data().expect("data");
    assert_eq!(first, Bytes::from_static(b"data: one\n\n"));
    go.send(()).expect("the upstream waits");
    let rest = tokio::time::timeout(IO_TIMEOUT, body.collect()).await.expect("in time").expect("the rest");
    assert_eq!(rest.to_bytes(), Bytes::from_static(b"data: two\n\n"));
    task.abort();
}

#[tokio::test]
async fn an_upload_that_expects_100_continue_gets_it_before_sending_its_body() {
    let w = UsersWorld::start("[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n").await;
    let mut client = TcpStream::connect(w.gateway.addr).await.expect("connect");
    client
        .write_all(b"POST /api/users/7/avatar HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("write the head");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(IO_TIMEOUT, client.read(&mut buf)).await.expect("the 100 in time").expect("read");
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    client.write_all(b"hello").await.expect("write the body");
    let mut reply = Vec::new();
    while !String::from_utf8_lossy(&reply).contains("\"served_by\"") {
        let n =
            tokio::time::timeout(IO_TIMEOUT, client.read(&mut buf)).await.expect("the reply in time").expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(reply.contains("HTTP/1.1 200 OK"), "{reply}");
    assert_eq!(w.users.requests()[0].body, Bytes::from_static(b"hello"));
}
