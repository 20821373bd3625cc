//! A DNS server on 127.0.0.1 for discovery tests: it answers every A query with the
//! addresses it is told (TTL 0), AAAA queries with no record, and SERVFAIL while it is
//! told to fail. UDP only, the way a resolver asks first; enough of RFC 1035 for that.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// A started DNS server; stops when dropped.
pub struct TestDns {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    answer: Arc<Mutex<Option<Vec<Ipv4Addr>>>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    /// Starts answering A queries with `addresses`.
    pub async fn start(addresses: &[Ipv4Addr]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind the test DNS server");
        let addr = socket.local_addr().expect("a bound socket has an address");
        let answer = Arc::new(Mutex::new(Some(addresses.to_vec())));
        let queries = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(socket, answer.clone(), queries.clone()));
        TestDns { addr, answer, queries, task }
    }

    /// Answers with `addresses` from now on.
    pub fn set_answer(&self, addresses: &[Ipv4Addr]) {
        *self.answer.lock().expect("never poisoned") = Some(addresses.to_vec());
    }

    /// Answers SERVFAIL from now on (the DNS server is broken).
    pub fn fail(&self) {
        *self.answer.lock().expect("never poisoned") = None;
    }

    /// Queries received so far (A and AAAA).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, answer: Arc<Mutex<Option<Vec<Ipv4Addr>>>>, queries: Arc<AtomicUsize>) {
    let mut buffer = [0u8; 1500];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buffer).await else { return };
        queries.fetch_add(1, Ordering::SeqCst);
        let addresses = answer.lock().expect("never poisoned").clone();
        if let Some(reply) = respond(&buffer[..len], addresses.as_deref()) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

/// The reply to one query: its id and question, then one A record per address (for an A
/// question), or SERVFAIL when `addresses` is `None`. `None` for what is not a query.
fn respond(query: &[u8], addresses: Option<&[Ipv4Addr]>) -> Option<Vec<u8>> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut end = 12;
    loop {
        let label = usize::from(*query.get(end)?);
        end += 1 + label;
        if label == 0 {
            break;
        }
    }
    let question = query.get(12..end + 4)?;
    let qtype = u16::from_be_bytes([question[question.len() - 4], question[question.len() - 3]]);
    let records: &[Ipv4Addr] = match addresses {
        Some(addresses) if qtype == 1 => addresses,
        _ => &[],
    };
    let rcode = if addresses.is_some() { 0 } else { 2 };
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[0..2]);
    // QR, opcode 0, AA, RD copied; RA; the rcode.
    reply.push(0x84 | (query[2] & 0x01));
    reply.push(0x80 | rcode);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&u16::try_from(records.len()).ok()?.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    for address in records {
        // A pointer to the question's name, type A, class IN, TTL 0, four bytes.
        reply.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}
