//! A mock upstream that records every request and answers as told.
//!
//! ```text
//! let users = MockUpstream::new("users").latency(Duration::from_millis(50)).start().await;
//! // ... send traffic ...
//! assert_eq!(users.requests()[0].path, "/api/users/7");
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What the mock received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Request method.
    pub method: String,
    /// Path as received (without the query).
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Headers as received.
    pub headers: HeaderMap,
    /// The whole body, when it arrived complete.
    pub body: Bytes,
    /// Why the body did not arrive complete.
    pub body_error: Option<String>,
}

/// Builder for a mock upstream.
pub struct MockUpstream {
    name: String,
    /// Changeable while running, through [`RunningMock::set_status`].
    status: AtomicU16,
    latency: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
    keep_alive: Option<Duration>,
}

impl MockUpstream {
    /// A mock that answers 200 with `{"served_by": name, "path": ...}`.
    pub fn new(name: &str) -> Self {
        MockUpstream {
            name: name.to_owned(),
            status: AtomicU16::new(200),
            latency: Duration::ZERO,
            headers: Vec::new(),
            body: None,
            keep_alive: None,
        }
    }

    /// Waits this long (after reading the request body) before answering.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Answers with this status.
    pub fn status(self, status: u16) -> Self {
        StatusCode::from_u16(status).expect("a valid status");
        self.status.store(status, Ordering::SeqCst);
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((HeaderName::from_static(name), HeaderValue::from_static(value)));
        self
    }

    /// Answers with this body instead of the JSON document.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Closes a kept-alive connection after it has been idle this long, like a server
    /// with a short keep-alive timeout.
    pub fn keep_alive(mut self, idle: Duration) -> Self {
        self.keep_alive = Some(idle);
        self
    }

    /// Starts serving on 127.0.0.1:0.
    pub async fn start(self) -> RunningMock {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the mock upstream");
        self.serve(listener)
    }

    /// Starts serving on `addr` (DNS discovery tests: several loopback addresses, one
    /// port); `None` when the address is taken.
    pub async fn start_at(self, addr: SocketAddr) -> Option<RunningMock> {
        let listener = TcpListener::bind(addr).await.ok()?;
        Some(self.serve(listener))
    }

    fn serve(self, listener: TcpListener) -> RunningMock {
        let addr = listener.local_addr().expect("a bound listener has an address");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(self);
        let task = tokio::spawn(accept_loop(listener, behaviour.clone(), recorded.clone(), connections.clone()));
        RunningMock { addr, recorded, connections, behaviour, task }
    }
}

/// A started mock upstream; stops when dropped.
pub struct RunningMock {
    /// Where it listens.
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
    behaviour: Arc<MockUpstream>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningMock {
    /// `http://127.0.0.1:PORT`, for a config's `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("the recorder lock is never poisoned").clone()
    }

    /// Answers with `status` from now on (a service failing, or healing).
    pub fn set_status(&self, status: u16) {
        self.behaviour.status.store(status, Ordering::SeqCst);
    }

    /// How many TCP connections were accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.recorded.lock().expect("the recorder lock is never poisoned").len()
    }
}

impl Drop for RunningMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    behaviour: Arc<MockUpstream>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(idle) = behaviour.keep_alive {
        // hyper's header-read timer also runs while a kept-alive connection waits for
        // its next request, so it doubles as a keep-alive timeout.
        builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        connections.fetch_add(1, Ordering::SeqCst);
        let behaviour = behaviour.clone();
        let recorded = recorded.clone();
        let service = service_fn(move |request| answer(behaviour.clone(), recorded.clone(), request));
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

async fn answer(
    behaviour: Arc<MockUpstream>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let (body, body_error) = match body.collect().await {
        Ok(collected) => (collected.to_bytes(), None),
        Err(e) => (Bytes::new(), Some(e.to_string())),
    };
    let path = parts.uri.path().to_owned();
    recorded.lock().expect("the recorder lock is never poisoned").push(Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
        body_error,
    });
    if !behaviour.latency.is_zero() {
        tokio::time::sleep(behaviour.latency).await;
    }
    let body = behaviour
        .body
        .clone()
        .unwrap_or_else(|| Bytes::from(serde_json::json!({ "served_by": behaviour.name, "path": path }).to_string()));
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(behaviour.status.load(Ordering::SeqCst)).expect("validated");
    for (name, value) in &behaviour.headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    Ok(response)
}
