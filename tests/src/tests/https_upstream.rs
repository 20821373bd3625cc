//! `https://` upstreams: verified against a private CA (`ca_file`, `server_name`), mutual
//! TLS, HTTP/2 chosen by ALPN, and an upstream whose certificate does not verify getting
//! a 502 `upstream-tls-failed` with nothing sent to it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::harness::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls").join(name)
}

/// What the TLS upstream saw: each request's HTTP version and whether the client showed a
/// certificate.
type Seen = Arc<Mutex<Vec<(http::Version, bool)>>>;

/// An HTTPS server with the `api.test` certificate; with `require_client`, only clients
/// with a certificate from the test CA get in.
async fn tls_upstream(require_client: bool) -> (SocketAddr, Seen, tokio::task::JoinHandle<()>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = if require_client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).expect("CA")).expect("a CA");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("a client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let chain = vec![CertificateDer::from_pem_file(fixture("api.pem")).expect("cert")];
    let key = PrivateKeyDer::from_pem_file(fixture("api.key")).expect("key");
    let mut config = builder.with_single_cert(chain, key).expect("a server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let client_cert = stream.get_ref().1.peer_certificates().is_some();
                let service = service_fn(move |request: Request<Incoming>| {
                    record.lock().unwrap().push((request.version(), client_cert));
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"served_by\":\"tls\"}"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen, task)
}

async fn gateway_to(addr: SocketAddr, upstream: &str) -> (RunningMock, TestGateway) {
    let monolith = MockUpstream::new("monolith").start().await;
    let config = format!(
        "{}\n[upstreams.secure]\nurl = \"https://{addr}\"\n{upstream}\n\
         [[routes]]\nname = \"secure\"\nprefix = \"/secure\"\nservice = \"secure\"\nfallback = \"never\"\n",
        base_config(&monolith.url(), "")
    );
    (monolith, TestGateway::start(&config).await)
}

fn trust(extra: &str) -> String {
    format!("ca_file = \"{}\"\nserver_name = \"api.test\"\n{extra}", fixture("ca.pem").display())
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_its_ca() {
    let (addr, seen, task) = tls_upstream(false).await;
    let (_monolith, gateway) = gateway_to(addr, &trust("")).await;
    let reply = get(&gateway.url("/secure/1")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["served_by"], "tls");
    assert_eq!(seen.lock().unwrap()[0], (http::Version::HTTP_11, false));
    task.abort();
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502_and_nothing_is_sent() {
    let (addr, seen, task) = tls_upstream(false).await;
    // The system's roots do not know the test CA.
    let (_monolith, gateway) = gateway_to(addr, "server_name = \"api.test\"").await;
    let reply = get(&gateway.url("/secure/1")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-gateway-error"), Some("upstream-tls-failed"));
    // The right CA but a name the certificate does not cover: refused too.
    let (_monolith, wrong_name) =
        gateway_to(addr, &format!("ca_file = \"{}\"\nserver_name = \"other.test\"", fixture("ca.pem").display())).await;
    let reply = get(&wrong_name.url("/secure/1")).await;
    assert_eq!(reply.header("x-gateway-error"), Some("upstream-tls-failed"));
    assert!(seen.lock().unwrap().is_empty(), "no request reached the upstream");
    task.abort();
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let (addr, seen, task) = tls_upstream(true).await;
    let client = format!(
        "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        fixture("client.pem").display(),
        fixture("client.key").display()
    );
    let (_monolith, gateway) = gateway_to(addr, &trust(&client)).await;
    let reply = get(&gateway.url("/secure/1")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(seen.lock().unwrap()[0], (http::Version::HTTP_11, true));

    let (_monolith, without) = gateway_to(addr, &trust("")).await;
    let reply = get(&without.url("/secure/1")).await;
    assert_eq!(reply.status, 502, "the upstream refuses a client without a certificate");
    assert_eq!(seen.lock().unwrap().len(), 1, "nothing more reached it");
    task.abort();
}

#[tokio::test]
async fn http2_over_tls_is_chosen_by_alpn() {
    let (addr, seen, task) = tls_upstream(false).await;
    let (_monolith, gateway) = gateway_to(addr, &trust("protocol = \"http2\"")).await;
    for _ in 0..3 {
        assert_eq!(get(&gateway.url("/secure/1")).await.status, 200);
    }
    assert!(seen.lock().unwrap().iter().all(|(version, _)| *version == http::Version::HTTP_2));
    task.abort();
}
