//! TLS termination: the certificate chosen per SNI name, ALPN, `x-forwarded-proto: https`,
//! a certificate replaced on disk (and a broken replacement refused), and handshake
//! failures counted by reason.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls").join(name)
}

fn leaf(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(fixture(&format!("{name}.pem"))).expect("a fixture certificate")
}

/// A gateway with `api` (the default) and `admin` certificates, copied next to its config.
async fn world() -> (RunningMock, TestGateway) {
    world_with_plain_listener(true).await
}

async fn world_with_plain_listener(plain: bool) -> (RunningMock, TestGateway) {
    let monolith = MockUpstream::new("monolith").start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    for file in ["api.pem", "api.key", "admin.pem", "admin.key"] {
        std::fs::copy(fixture(file), dir.path().join(file)).expect("copy a fixture");
    }
    let config = base_config(&monolith.url(), "tls_listen = \"127.0.0.1:0\"").replace(
        "\n[upstreams.monolith]",
        "\n[server.tls]\ncertificates = [\n  { cert_file = \"api.pem\", key_file = \"api.key\" },\n  \
         { cert_file = \"admin.pem\", key_file = \"admin.key\" },\n]\n\n[upstreams.monolith]",
    );
    let config = if plain { config } else { config.replace("listen = \"127.0.0.1:0\"\nadmin_listen", "admin_listen") };
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, config).expect("write the config");
    (monolith, TestGateway::start_at(dir, path).await)
}

fn tls_addr(gateway: &TestGateway) -> std::net::SocketAddr {
    gateway.running.as_ref().expect("running").tls_addr.expect("a TLS listener")
}

/// Handshakes as `server_name` offering `alpn`; returns the stream, the leaf certificate the
/// gateway presented and the protocol it chose.
async fn handshake(
    gateway: &TestGateway,
    server_name: &'static str,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<TcpStream>, CertificateDer<'static>, Option<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).expect("the test CA")).expect("a CA certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(tls_addr(gateway)).await.expect("connect");
    let name = ServerName::try_from(server_name).expect("a DNS name");
    let stream =
        tokio::time::timeout(IO_TIMEOUT, connector.connect(name, tcp)).await.expect("in time").expect("a handshake");
    let (_, session) = stream.get_ref();
    let presented = session.peer_certificates().expect("a certificate")[0].clone().into_owned();
    let protocol = session.alpn_protocol().map(<[u8]>::to_vec);
    (stream, presented, protocol)
}

/// Accepts whatever certificate it is shown, so a test can see the default one (sent to a
/// client that gives no SNI name, which no certificate could verify for).
#[derive(Debug)]
struct SeeAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for SeeAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate the gateway presents to a client that sends no SNI name.
async fn default_certificate(gateway: &TestGateway) -> CertificateDer<'static> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SeeAnyCertificate(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(tls_addr(gateway)).await.expect("connect");
    // An IP address: rustls sends no SNI for it.
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let stream =
        tokio::time::timeout(IO_TIMEOUT, connector.connect(name, tcp)).await.expect("in time").expect("a handshake");
    stream.get_ref().1.peer_certificates().expect("a certificate")[0].clone().into_owned()
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_offers_h2_and_http1() {
    let (_monolith, gateway) = world().await;
    let (_, presented, protocol) = handshake(&gateway, "admin.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(presented, leaf("admin"), "SNI admin.test gets the admin certificate");
    assert_eq!(protocol.as_deref(), Some(&b"h2"[..]));
    let (_, presented, protocol) = handshake(&gateway, "api.test", &[b"http/1.1"]).await;
    assert_eq!(presented, leaf("api"));
    assert_eq!(protocol.as_deref(), Some(&b"http/1.1"[..]));
    let (_, presented, _) = handshake(&gateway, "x.admin.test", &[b"h2"]).await;
    assert_eq!(presented, leaf("admin"), "a wildcard name");
    assert_eq!(default_certificate(&gateway).await, leaf("api"), "no SNI: the first certificate");
}

#[tokio::test]
async fn requests_over_tls_are_proxied_as_https() {
    let (monolith, gateway) = world().await;
    proxies_over_tls_as_https(&monolith, &gateway).await;
}

#[tokio::test]
async fn a_gateway_without_a_plain_listener_serves_https_only() {
    let (monolith, gateway) = world_with_plain_listener(false).await;
    assert_eq!(gateway.running.as_ref().expect("running").listen_addr, None);
    proxies_over_tls_as_https(&monolith, &gateway).await;
}

async fn proxies_over_tls_as_https(monolith: &RunningMock, gateway: &TestGateway) {
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let (stream, _, _) = handshake(gateway, "api.test", &[alpn]).await;
        let io = TokioIo::new(stream);
        let request =
            http::Request::get("/orders/1").header("host", "api.test").body(Full::<Bytes>::default()).unwrap();
        let response = if alpn == b"h2" {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.expect("h2");
            tokio::spawn(conn);
            let mut request = request;
            *request.uri_mut() = "https://api.test/orders/1".parse().unwrap();
            sender.send_request(request).await.expect("a response")
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("http/1.1");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("a response")
        };
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await;
    }
    let seen = monolith.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.headers["x-forwarded-proto"], "https");
        assert_eq!(request.path, "/orders/1");
    }
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_and_a_broken_one_refused() {
    let (_monolith, gateway) = world().await;
    let dir = gateway.dir().to_owned();
    assert_eq!(default_certificate(&gateway).await, leaf("api"));
    // The first (default) pair's files now hold the admin certificate and key.
    std::fs::copy(fixture("admin.pem"), dir.join("api.pem")).expect("replace the certificate");
    std::fs::copy(fixture("admin.key"), dir.join("api.key")).expect("replace the key");
    assert!(gateway.wait_for_version(2).await, "the change was picked up");
    assert_eq!(default_certificate(&gateway).await, leaf("admin"), "the new certificate serves, no restart");

    // A key that does not match its certificate: refused, the running pair keeps serving.
    std::fs::copy(fixture("api.key"), dir.join("admin.key")).expect("break the admin pair");
    let mut refused = false;
    for _ in 0..100 {
        let config = get(&gateway.admin_url("/admin/config")).await.json();
        if config["last_reload_error"].to_string().contains("is not the key of") {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(refused, "the broken pair is reported on /admin/config");
    assert_eq!(gateway.config_version().await, 2, "the last good config keeps serving");
    let (_, presented, _) = handshake(&gateway, "admin.test", &[b"h2"]).await;
    assert_eq!(presented, leaf("admin"));
}

#[tokio::test]
async fn failed_handshakes_are_counted_by_reason() {
    let (_monolith, gateway) = world().await;
    let mut garbage = TcpStream::connect(tls_addr(&gateway)).await.expect("connect");
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut counted = false;
    for _ in 0..100 {
        let metrics = get(&gateway.admin_url("/metrics")).await;
        if String::from_utf8_lossy(&metrics.body)
            .contains("gateway_tls_handshake_failures_total{reason=\"malformed\"} 1")
        {
            counted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(counted, "a plain HTTP request on the TLS port is a malformed handshake");
}
