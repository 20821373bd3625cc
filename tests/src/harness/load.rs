//! A load generator for the operations tests: keep-alive clients sending GETs back to
//! back for as long as the test runs, counting every refused connect, reset, read error
//! and non-2xx.
//!
//! A client reconnects when the gateway says `Connection: close` (HTTP/1.1) or sends a
//! GOAWAY (HTTP/2), as a well-behaved client does; a connection the gateway closed while
//! a request was on it is a read error. The count of each kind is what a user would have
//! seen fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest a single exchange may take before it counts as a read error.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Failures described in full, at most.
const KEPT_FAILURES: usize = 10;

/// Which protocol the clients speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// 2xx responses read whole.
    pub ok: u64,
    /// Connects refused.
    pub refused: u64,
    /// Connections reset, or other connect failures.
    pub reset: u64,
    /// Requests sent whose response did not arrive whole.
    pub read_errors: u64,
    /// Responses other than 2xx.
    pub non_2xx: u64,
    /// Responses with `Connection: close` (not failures).
    pub told_to_close: u64,
    /// The first failures, described.
    pub failures: Vec<String>,
}

impl LoadReport {
    /// Every failure a user would have seen.
    pub fn failed(&self) -> u64 {
        self.refused + self.reset + self.read_errors + self.non_2xx
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    read_errors: AtomicU64,
    non_2xx: AtomicU64,
    told_to_close: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().expect("failures lock");
        if failures.len() < KEPT_FAILURES {
            failures.push(what);
        }
    }
}

/// Clients running against one address.
pub struct Load {
    stop: watch::Sender<bool>,
    tally: Arc<Tally>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients of `protocol` sending `GET path` to `addr`.
    pub fn start(addr: SocketAddr, path: &str, clients: usize, protocol: Protocol) -> Load {
        let (stop, stopped) = watch::channel(false);
        let tally = Arc::new(Tally::default());
        let clients = (0..clients)
            .map(|_| tokio::spawn(client(addr, path.to_owned(), protocol, stopped.clone(), tally.clone())))
            .collect();
        Load { stop, tally, clients }
    }

    /// Successful responses so far.
    pub fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients (each finishes its exchange) and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.send_replace(true);
        for client in self.clients {
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT * 2, client).await;
        }
        let t = &self.tally;
        LoadReport {
            ok: t.ok.load(Ordering::Relaxed),
            refused: t.refused.load(Ordering::Relaxed),
            reset: t.reset.load(Ordering::Relaxed),
            read_errors: t.read_errors.load(Ordering::Relaxed),
            non_2xx: t.non_2xx.load(Ordering::Relaxed),
            told_to_close: t.told_to_close.load(Ordering::Relaxed),
            failures: t.failures.lock().expect("failures lock").clone(),
        }
    }
}

/// A sender over one connection, of either protocol.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn ready(&mut self) -> bool {
        match self {
            Sender::Http1(s) => s.ready().await.is_ok(),
            Sender::Http2(s) => s.ready().await.is_ok(),
        }
    }

    async fn send(&mut self, request: Request<Empty<Bytes>>) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        match self {
            Sender::Http1(s) => s.send_request(request).await,
            Sender::Http2(s) => s.send_request(request).await,
        }
    }
}

async fn connect(addr: SocketAddr, protocol: Protocol, tally: &Tally) -> Option<Sender> {
    let stream = match tokio::time::timeout(EXCHANGE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tally.fail(&tally.refused, format!("connect refused: {e}"));
            return None;
        }
        Ok(Err(e)) => {
            tally.fail(&tally.reset, format!("connect failed: {e}"));
            return None;
        }
        Err(_) => {
            tally.fail(&tally.reset, "connect timed out".to_owned());
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    let sender = match protocol {
        Protocol::Http1 => hyper::client::conn::http1::handshake(io).await.map(|(sender, connection)| {
            tokio::spawn(connection);
            Sender::Http1(sender)
        }),
        Protocol::Http2 => {
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map(|(sender, connection)| {
                tokio::spawn(connection);
                Sender::Http2(sender)
            })
        }
    };
    match sender {
        Ok(sender) => Some(sender),
        Err(e) => {
            tally.fail(&tally.reset, format!("handshake failed: {e}"));
            None
        }
    }
}

async fn client(addr: SocketAddr, path: String, protocol: Protocol, stopped: watch::Receiver<bool>, tally: Arc<Tally>) {
    let uri = format!("http://{addr}{path}");
    while !*stopped.borrow() {
        let Some(mut sender) = connect(addr, protocol, &tally).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        loop {
            if *stopped.borrow() {
                return;
            }
            // A connection the gateway closed (after Connection: close, a GOAWAY, or idle)
            // is not ready: reconnect without having sent anything on it.
            if !sender.ready().await {
                break;
            }
            let mut request = Request::get(&uri);
            if protocol == Protocol::Http1 {
                request = request.header(http::header::HOST, addr.to_string());
            }
            let request = request.body(Empty::new()).expect("a valid request");
            let response = match tokio::time::timeout(EXCHANGE_TIMEOUT, sender.send(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    tally.fail(&tally.read_errors, format!("request failed: {e}"));
                    break;
                }
                Err(_) => {
                    tally.fail(&tally.read_errors, "no response head in time".to_owned());
                    break;
                }
            };
            let status = response.status();
            let close = response
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            match tokio::time::timeout(EXCHANGE_TIMEOUT, response.into_body().collect()).await {
                Ok(Ok(_)) if status.is_success() => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(body)) => {
                    let text = String::from_utf8_lossy(&body.to_bytes()).chars().take(200).collect::<String>();
                    tally.fail(&tally.non_2xx, format!("{status}: {text}"));
                }
                Ok(Err(e)) => {
                    tally.fail(&tally.read_errors, format!("body failed: {e}"));
                    break;
                }
                Err(_) => {
                    tally.fail(&tally.read_errors, "body not complete in time".to_owned());
                    break;
                }
            }
            if close {
                tally.told_to_close.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}
