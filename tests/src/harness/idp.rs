//! A test identity provider: an HTTPS server (certificate `tests/fixtures/tls/idp.pem`,
//! for `127.0.0.1`, from the test CA) publishing a JWKS document the test can change,
//! counting the fetches, and able to fail them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The path the key set is published at.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// A key the test IdP can publish under any `kid`, and sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdpKey {
    /// The fixture RSA key (RS256).
    Rsa,
    /// The fixture P-256 key (ES256).
    Ec,
}

fn fixture(dir: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(dir).join(name)
}

/// The test CA's certificate, which the gateway's `jwks_ca_file` names.
pub fn idp_ca_file() -> String {
    fixture("tls", "ca.pem").display().to_string()
}

/// A JWKS document publishing `keys` under their kids.
pub fn jwks_document(keys: &[(&str, IdpKey)]) -> String {
    let fixture_set: Value =
        serde_json::from_slice(&std::fs::read(fixture("keys", "jwks.json")).expect("fixture JWKS")).expect("json");
    let template = |key: IdpKey| {
        let kid = match key {
            IdpKey::Rsa => "rsa-1",
            IdpKey::Ec => "ec-1",
        };
        fixture_set["keys"].as_array().expect("keys").iter().find(|k| k["kid"] == kid).expect("fixture key").clone()
    };
    let published: Vec<Value> = keys
        .iter()
        .map(|(kid, key)| {
            let mut jwk = template(*key);
            jwk["kid"] = json!(kid);
            jwk
        })
        .collect();
    json!({ "keys": published }).to_string()
}

/// A token with `claims`, signed by `key` and naming `kid`.
pub fn sign_as(key: IdpKey, kid: &str, claims: &Value) -> String {
    let (file, algorithm) = match key {
        IdpKey::Rsa => ("rsa-private.pem", Algorithm::RS256),
        IdpKey::Ec => ("ec-private.pem", Algorithm::ES256),
    };
    let pem = std::fs::read(fixture("keys", file)).expect("fixture key");
    let encoding = match key {
        IdpKey::Rsa => EncodingKey::from_rsa_pem(&pem),
        IdpKey::Ec => EncodingKey::from_ec_pem(&pem),
    }
    .expect("fixture key loads");
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &encoding).expect("signs")
}

#[derive(Default)]
struct IdpState {
    document: Mutex<String>,
    fetches: AtomicUsize,
    failing: AtomicBool,
}

/// The running test IdP; stops when dropped.
pub struct TestIdp {
    addr: SocketAddr,
    state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

impl TestIdp {
    /// Serves `document` at [`JWKS_PATH`] over HTTPS on 127.0.0.1.
    pub async fn start(document: String) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![CertificateDer::from_pem_file(fixture("tls", "idp.pem")).expect("cert")];
        let key = PrivateKeyDer::from_pem_file(fixture("tls", "idp.key")).expect("key");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let state = Arc::new(IdpState { document: Mutex::new(document), ..IdpState::default() });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let service = service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, &request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestIdp { addr, state, task }
    }

    /// The `jwks_url` to configure.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}{JWKS_PATH}", self.addr.port())
    }

    /// Publishes another document from now on.
    pub fn publish(&self, document: String) {
        *self.state.document.lock().expect("not poisoned") = document;
    }

    /// Fetches of the key set so far (failed ones included).
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// While `failing`, every fetch gets a 503.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(state: &IdpState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    if request.uri().path() != JWKS_PATH {
        *response.status_mut() = http::StatusCode::NOT_FOUND;
        return response;
    }
    state.fetches.fetch_add(1, Ordering::SeqCst);
    if state.failing.load(Ordering::SeqCst) {
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        return response;
    }
    let document = state.document.lock().expect("not poisoned").clone();
    *response.body_mut() = Full::new(Bytes::from(document));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
