//! WebSocket through the gateway: routed, authenticated and decided like any request, and
//! relayed only after the upstream's 101; other upgrade tokens are never forwarded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use gateway::cli::explain::{ExplainRequest, explain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::harness::tokens::*;
use crate::harness::*;

/// A WebSocket server that answers every message with `NAME: message` (text) or the same
/// bytes reversed (binary), and records each handshake's path and headers.
struct EchoServer {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_server(name: &'static str) -> EchoServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let handshakes: Arc<Mutex<Vec<(String, http::HeaderMap)>>> = Arc::default();
    let seen = handshakes.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                // The callback's type is tungstenite's, error response and all.
                #[allow(clippy::result_large_err)]
                let record = |request: &Request, response: Response| {
                    seen.lock().unwrap().push((request.uri().to_string(), request.headers().clone()));
                    Ok(response)
                };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, record).await else { return };
                while let Some(Ok(message)) = socket.next().await {
                    let reply = match message {
                        Message::Text(text) => Message::text(format!("{name}: {text}")),
                        Message::Binary(bytes) => Message::binary(bytes.iter().rev().copied().collect::<Vec<u8>>()),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if socket.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    EchoServer { addr, handshakes, task }
}

struct World {
    monolith: EchoServer,
    service: EchoServer,
    gateway: TestGateway,
}

async fn world() -> World {
    let monolith = echo_server("monolith").await;
    let service = echo_server("service").await;
    let config = format!(
        r#"{base}
[upstreams.chat]
url = "http://{service}"

[[routes]]
name = "chat"
prefix = "/chat"
service = "chat"
auth = "off"
rollout_percent = 50
sticky = "header:x-user"

[[routes]]
name = "private"
prefix = "/private"
service = "chat"
auth = "required"
{auth}"#,
        base = base_config(&format!("http://{}", monolith.addr), ""),
        service = service.addr,
        auth = auth_section(),
    );
    World { gateway: TestGateway::start(&config).await, monolith, service }
}

fn ws_url(w: &World, path: &str) -> String {
    format!("ws://{}{path}", w.gateway.addr)
}

async fn connect(
    url: &str,
    headers: &[(&'static str, String)],
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>, WsError> {
    let mut request = url.into_client_request().expect("a ws url");
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().expect("a header value"));
    }
    let (socket, _) =
        tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::connect_async(request)).await.expect("in time")?;
    Ok(socket)
}

async fn round_trip<S>(socket: &mut S, message: Message) -> Message
where
    S: futures_util::Sink<Message, Error = WsError> + futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    socket.send(message).await.expect("send a frame");
    tokio::time::timeout(IO_TIMEOUT, socket.next()).await.expect("a reply in time").expect("open").expect("a frame")
}

#[tokio::test]
async fn text_and_binary_frames_go_both_ways_after_the_upgrade() {
    let w = world().await;
    let user = [("x-user", "user-1".to_owned())];
    let mut socket = connect(&ws_url(&w, "/chat/./room/7?x=1"), &user).await.expect("the upgrade succeeds");
    let side = match round_trip(&mut socket, Message::text("hello")).await {
        Message::Text(text) if text.as_str() == "service: hello" => "service",
        Message::Text(text) if text.as_str() == "monolith: hello" => "monolith",
        other => panic!("unexpected reply {other:?}"),
    };
    assert_eq!(round_trip(&mut socket, Message::binary(vec![1u8, 2, 3])).await, Message::binary(vec![3u8, 2, 1]));
    let metrics = get(&w.gateway.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("gateway_upgraded_connections{route=\"chat\"} 1"), "{text}");
    socket.close(None).await.expect("close");
    drop(socket);

    let server = if side == "service" { &w.service } else { &w.monolith };
    let (path, headers) = server.handshakes.lock().unwrap()[0].clone();
    assert_eq!(path, "/chat/room/7?x=1", "normalised like any request");
    assert!(headers.contains_key("x-forwarded-for"), "the handshake went through the pipeline");
    assert!(headers.contains_key("sec-websocket-key"));
    let mut closed = false;
    for _ in 0..100 {
        let metrics = get(&w.gateway.admin_url("/metrics")).await;
        if String::from_utf8_lossy(&metrics.body).contains("gateway_upgraded_connections{route=\"chat\"} 0") {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(closed, "the gauge falls back when the socket closes");
}

#[tokio::test]
async fn a_socket_goes_to_the_side_the_users_plain_calls_get() {
    let w = world().await;
    let snapshot = w.gateway.running.as_ref().expect("running").gateway.snapshot();
    let mut sides = std::collections::BTreeSet::new();
    for i in 0..16 {
        let user = format!("user-{i}");
        let request = ExplainRequest {
            method: "GET".to_owned(),
            path: "/chat/room".to_owned(),
            headers: vec![("x-user".to_owned(), user.clone())],
            ..ExplainRequest::default()
        };
        let expected = explain(&snapshot, &request).expect("explainable").side;
        let mut socket = connect(&ws_url(&w, "/chat/room"), &[("x-user", user.clone())]).await.expect("upgrade");
        let reply = round_trip(&mut socket, Message::text("hi")).await;
        assert_eq!(reply, Message::text(format!("{expected}: hi")), "{user}");
        sides.insert(expected);
    }
    assert_eq!(sides.len(), 2, "a 50% route sends some users each way");
}

#[tokio::test]
async fn the_upgrade_is_authenticated_like_any_request() {
    let w = world().await;
    match connect(&ws_url(&w, "/private/feed"), &[]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|_| "a socket")),
    }
    assert!(w.service.handshakes.lock().unwrap().is_empty(), "nothing reached the upstream");
    let token = sign(jsonwebtoken::Algorithm::RS256, &claims_for("alice"));
    let auth = [("authorization", format!("Bearer {token}"))];
    let mut socket = connect(&ws_url(&w, "/private/feed"), &auth).await.expect("a valid token upgrades");
    assert_eq!(round_trip(&mut socket, Message::text("hi")).await, Message::text("service: hi"));
    let (_, headers) = w.service.handshakes.lock().unwrap()[0].clone();
    assert_eq!(headers["x-user-id"], "alice", "claim headers are set on the handshake");
}

#[tokio::test]
async fn other_upgrade_tokens_are_never_forwarded() {
    let w = UsersWorld::start("[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n").await;
    let reply = raw_exchange(
        w.gateway.addr,
        b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = &w.users.requests()[0];
    assert!(!seen.headers.contains_key("upgrade"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("http2-settings"), "a header Connection nominates is stripped");
    // A websocket request to an upstream that does not switch: a plain answer, and bytes
    // sent after the request head are read as the next request, not relayed raw.
    let reply = raw_exchange(
        w.gateway.addr,
        b"GET /api/users/2 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\
          GET /admin/secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply}");
    let requests = w.users.requests();
    assert_eq!(requests[1].path, "/api/users/2");
    let smuggled = w.monolith.requests();
    assert_eq!(smuggled.len(), 1, "the second request was routed on its own");
    assert_eq!(smuggled[0].path, "/admin/secret");
    assert!(smuggled[0].headers.contains_key("x-forwarded-for"), "it went through the pipeline");
}

#[tokio::test]
async fn an_upstream_that_switches_to_another_protocol_gets_a_502() {
    // An upstream that answers every request with a 101 to h2c.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let relayed = Arc::new(Mutex::new(Vec::new()));
    let seen = relayed.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
                    .await;
                let mut rest = Vec::new();
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(500), stream.read_to_end(&mut rest)).await;
                seen.lock().unwrap().extend_from_slice(&rest);
            });
        }
    });
    let monolith = MockUpstream::new("monolith").start().await;
    let config = format!(
        "{}\n[upstreams.odd]\nurl = \"http://{addr}\"\n[[routes]]\nname = \"odd\"\nprefix = \"/odd\"\nservice = \"odd\"\nfallback = \"never\"\n",
        base_config(&monolith.url(), "")
    );
    let gateway = TestGateway::start(&config).await;
    let mut client = TcpStream::connect(gateway.addr).await.expect("connect");
    client
        .write_all(
            b"GET /odd HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nRAW-BYTES",
        )
        .await
        .expect("write");
    // The 502 head and its short JSON body arrive in one read or a few.
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&reply).contains("\"request_id\"") {
        let n = tokio::time::timeout(IO_TIMEOUT, client.read(&mut buf)).await.expect("in time").expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    assert!(reply.contains("x-gateway-error: upstream-error"), "{reply}");
    let bytes = String::from_utf8_lossy(&relayed.lock().unwrap()).into_owned();
    assert!(!bytes.contains("RAW-BYTES"), "nothing is relayed: {bytes}");
    task.abort();
}

#[tokio::test]
async fn shutdown_waits_for_an_open_socket_within_the_grace_period() {
    let mut w = world().await;
    let user = [("x-user", "user-1".to_owned())];
    let mut socket = connect(&ws_url(&w, "/chat/room"), &user).await.expect("upgrade");
    let first = round_trip(&mut socket, Message::text("before")).await;
    let running = w.gateway.running.take().expect("running");
    running.shutdown();
    let stopped = tokio::spawn(running.wait());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!stopped.is_finished(), "the open socket holds the drain");
    let side = if first == Message::text("service: before") { "service" } else { "monolith" };
    assert_eq!(round_trip(&mut socket, Message::text("during")).await, Message::text(format!("{side}: during")));
    socket.close(None).await.expect("close");
    drop(socket);
    tokio::time::timeout(IO_TIMEOUT, stopped).await.expect("the gateway stops once the socket closed").expect("joined");
}
