//! TLS termination: the certificates of `[server.tls]`, picked by SNI, and the rustls
//! server config of the `tls_listen` listener (ALPN h2 and http/1.1, TLS 1.2 and 1.3).
//!
//! The certificates are part of the config snapshot: a reload (routes.toml changed, a
//! certificate or key file changed, SIGHUP) reads them again, and a broken or mismatched
//! pair fails that reload like any config error, so the running certificates keep
//! serving. Each handshake asks the snapshot serving now, so a swap needs no restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// The certificates to serve, in config order; the first is the default.
pub struct Certificates {
    entries: Vec<Entry>,
    /// Every certificate and key file, and the SHA-256 of their bytes together, so a
    /// reload notices a file that changed while routes.toml did not.
    files: Vec<PathBuf>,
    digest: Vec<u8>,
}

struct Entry {
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("count", &self.entries.len()).field("files", &self.files).finish()
    }
}

/// Why a certificate pair cannot be served, and which file to blame.
#[derive(Debug, PartialEq, Eq)]
pub enum PairError {
    /// The certificate file is unreadable or holds no PEM certificate.
    Certificate(String),
    /// The key file is unreadable, holds no supported key, or the key does not match.
    Key(String),
}

impl Certificates {
    /// Loads each `(cert_file, key_file)` pair; the first problem names its pair's index.
    pub fn load(pairs: &[(PathBuf, PathBuf)]) -> Result<Self, (usize, PairError)> {
        let mut entries = Vec::new();
        for (i, (cert_file, key_file)) in pairs.iter().enumerate() {
            entries.push(Entry { key: Arc::new(load_pair(cert_file, key_file).map_err(|e| (i, e))?) });
        }
        let files: Vec<PathBuf> = pairs.iter().flat_map(|(c, k)| [c.clone(), k.clone()]).collect();
        let digest = digest_of(&files).unwrap_or_default();
        Ok(Certificates { entries, files, digest })
    }

    /// The first (default) certificate's file.
    pub fn first_certificate_file(&self) -> Option<&Path> {
        self.files.first().map(PathBuf::as_path)
    }

    /// The directories the certificate and key files are in, each once.
    pub fn directories(&self) -> Vec<PathBuf> {
        let mut directories: Vec<PathBuf> = Vec::new();
        for dir in self.files.iter().filter_map(|f| f.parent()) {
            if !directories.iter().any(|d| d == dir) {
                directories.push(dir.to_owned());
            }
        }
        directories
    }

    /// True when every file still has the bytes these certificates were loaded from.
    pub fn unchanged_on_disk(&self) -> bool {
        digest_of(&self.files).is_some_and(|digest| digest == self.digest)
    }

    /// The certificate for `server_name`: the first whose names cover it, else the first.
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let wanted = server_name.and_then(|name| ServerName::try_from(name.to_owned()).ok());
        let matching = wanted.and_then(|name| {
            self.entries.iter().find(|entry| {
                entry.key.end_entity_cert().ok().is_some_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
        });
        matching.or_else(|| self.entries.first()).map(|entry| entry.key.clone())
    }
}

fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, PairError> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let cert_pem = read(cert_file).map_err(PairError::Certificate)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PairError::Certificate(format!("{} is not a PEM certificate chain: {e}", cert_file.display())))?;
    if chain.is_empty() {
        return Err(PairError::Certificate(format!("{} holds no certificate", cert_file.display())));
    }
    let key_pem = read(key_file).map_err(PairError::Key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| PairError::Key(format!("{} holds no private key: {e}", key_file.display())))?;
    let signing = provider::sign::any_supported_type(&key)
        .map_err(|e| PairError::Key(format!("{}: unsupported key: {e}", key_file.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| PairError::Key(format!("{} is not the key of {}", key_file.display(), cert_file.display())))?;
    Ok(certified)
}

fn digest_of(files: &[PathBuf]) -> Option<Vec<u8>> {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(std::fs::read(file).ok()?);
        hasher.update([0u8]);
    }
    Some(hasher.finalize().to_vec())
}

/// Picks, at every handshake, from the certificates `current` returns (the snapshot
/// serving now).
pub struct SniResolver<F> {
    current: F,
}

impl<F> std::fmt::Debug for SniResolver<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl<F: Fn() -> Option<Arc<Certificates>> + Send + Sync> ResolvesServerCert for SniResolver<F> {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        (self.current)()?.pick(hello.server_name())
    }
}

/// The server config of the TLS listener: ALPN h2 then http/1.1, TLS 1.2 and 1.3, the
/// certificate chosen per handshake by `current`.
pub fn server_config<F>(current: F) -> Arc<rustls::ServerConfig>
where
    F: Fn() -> Option<Arc<Certificates>> + Send + Sync + 'static,
{
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { current }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The `reason` label of a failed handshake; never the error's text, which may carry
/// details of the peer.
pub fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    if let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "malformed",
            rustls::Error::PeerIncompatible(_) => "incompatible",
            rustls::Error::NoApplicationProtocol => "no-alpn",
            rustls::Error::AlertReceived(_) => "alert",
            rustls::Error::General(_) => "no-certificate",
            _ => "protocol",
        };
    }
    match error.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => "closed",
        ErrorKind::InvalidData => "malformed",
        ErrorKind::TimedOut => "timeout",
        _ => "io",
    }
}

/// The TLS side of an `https://` upstream: whom to trust, the name to verify (and send as
/// SNI), and the client certificate for mutual TLS.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    /// The settings it was built from, so a reload can tell whether it changed.
    identity: TlsIdentity,
}

/// What an upstream's TLS client was built from: the files, the name, and the digest of
/// the files' bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TlsIdentity {
    ca_file: Option<PathBuf>,
    server_name: String,
    client: Option<(PathBuf, PathBuf)>,
    digest: Vec<u8>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.identity.server_name)
            .field("ca_file", &self.identity.ca_file)
            .finish()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

/// Which setting of an https upstream is unusable.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamTlsError {
    /// `ca_file`.
    CaFile(String),
    /// `server_name`.
    ServerName(String),
    /// `client_cert_file`.
    ClientCert(String),
    /// `client_key_file`.
    ClientKey(String),
}

impl UpstreamTls {
    /// Builds the client side: `ca_file` (PEM certificates) or the system's roots,
    /// `server_name` to verify and send, the client pair for mutual TLS, and ALPN `alpn`.
    pub fn new(
        ca_file: Option<&Path>,
        server_name: &str,
        client: Option<(&Path, &Path)>,
        alpn: &[u8],
    ) -> Result<Self, UpstreamTlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| UpstreamTlsError::CaFile(format!("cannot read {}: {e}", path.display())))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        UpstreamTlsError::CaFile(format!("{} is not PEM certificates: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        UpstreamTlsError::CaFile(format!("{}: not a usable CA certificate: {e}", path.display()))
                    })?;
                }
                if roots.is_empty() {
                    return Err(UpstreamTlsError::CaFile(format!("{} holds no certificate", path.display())));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(UpstreamTlsError::CaFile(
                        "no ca_file, and this machine has no system CA certificates to trust instead".to_owned(),
                    ));
                }
            }
        }
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| UpstreamTlsError::ServerName(format!("\"{server_name}\" is not a DNS name or IP address")))?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                // The same checks as a server pair (readable, PEM, matching), read once.
                let pair = load_pair(cert_file, key_file).map_err(|e| match e {
                    PairError::Certificate(m) => UpstreamTlsError::ClientCert(m),
                    PairError::Key(m) => UpstreamTlsError::ClientKey(m),
                })?;
                builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(pair)))
            }
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        // The bytes of every file it read, so a reload notices a renewed CA or client pair.
        let files: Vec<PathBuf> =
            ca_file.into_iter().chain(client.into_iter().flat_map(|(c, k)| [c, k])).map(Path::to_owned).collect();
        let identity = TlsIdentity {
            ca_file: ca_file.map(Path::to_owned),
            server_name: server_name.to_owned(),
            client: client.map(|(c, k)| (c.to_owned(), k.to_owned())),
            digest: digest_of(&files).unwrap_or_default(),
        };
        Ok(UpstreamTls { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), server_name: name, identity })
    }

    /// Runs the handshake on `stream`.
    pub async fn connect(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.connector.connect(self.server_name.clone(), stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tls").join(name)
    }

    fn pair(name: &str) -> (PathBuf, PathBuf) {
        (fixture(&format!("{name}.pem")), fixture(&format!("{name}.key")))
    }

    #[test]
    fn sni_picks_the_certificate_whose_names_match_and_the_first_is_the_default() {
        let certificates = Certificates::load(&[pair("api"), pair("admin")]).expect("valid pairs");
        let subject = |name: Option<&str>| {
            let key = certificates.pick(name).expect("a certificate");
            let der = key.end_entity_cert().expect("a leaf").to_vec();
            if der == CertificateDer::from_pem_file(fixture("api.pem")).unwrap().to_vec() { "api" } else { "admin" }
        };
        assert_eq!(subject(Some("api.test")), "api");
        assert_eq!(subject(Some("admin.test")), "admin");
        assert_eq!(subject(Some("eu.admin.test")), "admin", "a wildcard name matches");
        assert_eq!(subject(Some("other.example")), "api", "no match: the first");
        assert_eq!(subject(None), "api", "no SNI: the first");
    }

    #[test]
    fn broken_or_mismatched_pairs_name_the_file_to_blame() {
        let mismatched = (fixture("api.pem"), fixture("admin.key"));
        match Certificates::load(&[pair("api"), mismatched]) {
            Err((1, PairError::Key(message))) => assert!(message.contains("is not the key of"), "{message}"),
            other => panic!("expected a key mismatch, got {other:?}"),
        }
        let missing = (fixture("nope.pem"), fixture("api.key"));
        assert!(
            matches!(Certificates::load(&[missing]), Err((0, PairError::Certificate(m))) if m.contains("cannot read"))
        );
        let key_as_cert = (fixture("api.key"), fixture("api.key"));
        assert!(
            matches!(Certificates::load(&[key_as_cert]), Err((0, PairError::Certificate(m))) if m.contains("no certificate"))
        );
        let cert_as_key = (fixture("api.pem"), fixture("api.pem"));
        assert!(
            matches!(Certificates::load(&[cert_as_key]), Err((0, PairError::Key(m))) if m.contains("no private key"))
        );
    }

    #[test]
    fn a_changed_file_is_noticed() {
        let dir = std::env::temp_dir().join(format!("gateway-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::copy(fixture("api.pem"), &cert).unwrap();
        std::fs::copy(fixture("api.key"), &key).unwrap();
        let certificates = Certificates::load(&[(cert.clone(), key.clone())]).unwrap();
        assert!(certificates.unchanged_on_disk());
        std::fs::copy(fixture("admin.pem"), &cert).unwrap();
        assert!(!certificates.unchanged_on_disk());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failure_reasons_are_labels_not_messages() {
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer went away");
        assert_eq!(handshake_failure_reason(&eof), "closed");
        let tls = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::NoApplicationProtocol);
        assert_eq!(handshake_failure_reason(&tls), "no-alpn");
        let garbage = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(handshake_failure_reason(&garbage), "malformed");
    }
}
