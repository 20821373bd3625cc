//! `gateway demo`: a demo monolith and demo services on loopback, so a new user sees
//! routing work before wiring up real upstreams.
//!
//! Each demo upstream answers every request with a small JSON document naming itself and
//! echoing what it received (method, path, forwarding headers), which makes the routing
//! decision and the header hygiene visible from curl.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::snapshot::Snapshot;

/// The demo's signing key, relative to the config file's directory. Its public half is
/// `demo/keys/jwks.json`, which the bundled routes.toml trusts (demo only).
pub const DEMO_SIGNING_KEY: &str = "demo/keys/demo-signing-key.pem";
/// The `kid` of the demo key in `demo/keys/jwks.json`.
pub const DEMO_KEY_ID: &str = "demo-es256";

/// Why a demo upstream could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The configured url is not a loopback IP:PORT the demo can serve.
    #[error("upstream {name}: the demo serves only loopback IP:PORT urls, not {url}")]
    NotLocal {
        /// Upstream name.
        name: String,
        /// Its url.
        url: String,
    },
    /// The address is taken.
    #[error("upstream {name}: cannot listen on {addr}: {source} (is something else running there?)")]
    Bind {
        /// Upstream name.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Starts one echo server per configured upstream, on the address its url names.
pub async fn start_upstreams(snapshot: &Snapshot) -> Result<Vec<(String, SocketAddr)>, DemoError> {
    let mut started = Vec::new();
    for (name, upstream) in &snapshot.upstreams {
        let url = &upstream.settings.url;
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse::<SocketAddr>()
            .ok()
            .filter(|a| a.ip().is_loopback())
            .ok_or_else(|| DemoError::NotLocal { name: name.clone(), url: url.clone() })?;
        let listener =
            TcpListener::bind(addr).await.map_err(|source| DemoError::Bind { name: name.clone(), addr, source })?;
        tokio::spawn(serve_echo(listener, Arc::from(name.as_str())));
        started.push((name.clone(), addr));
    }
    Ok(started)
}

async fn serve_echo(listener: TcpListener, name: Arc<str>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let name = name.clone();
        let service = service_fn(move |request| {
            let response = echo(&name, &request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

fn echo(name: &str, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |n: &str| request.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = json!({
        "served_by": name,
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "query": request.uri().query(),
        "x_request_id": header("x-request-id"),
        "x_forwarded_for": header("x-forwarded-for"),
        "x_forwarded_proto": header("x-forwarded-proto"),
        "x_user_id": header("x-user-id"),
        "x_user_email": header("x-user-email"),
    });
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Where the printed curl lines send requests: the plain listener, or the HTTPS one (with
/// the trust curl needs) when the config has no plain listener.
pub struct Origin {
    /// curl options that must come before the URL (`--cacert FILE `), or empty.
    trust: String,
    /// `http://IP:PORT` or `https://localhost:PORT`.
    url: String,
}

impl Origin {
    /// The plain listener when there is one, else the HTTPS listener; `None` for neither.
    pub fn pick(snapshot: &Snapshot, listen: Option<SocketAddr>, tls: Option<SocketAddr>) -> Option<Origin> {
        match (listen, tls) {
            (Some(listen), _) => Some(Origin { trust: String::new(), url: format!("http://{listen}") }),
            (None, Some(tls)) => Some(Origin::https(snapshot, tls)),
            (None, None) => None,
        }
    }

    fn https(snapshot: &Snapshot, tls: SocketAddr) -> Origin {
        // The demo certificate's CA sits next to it; for other certificates curl uses the
        // system's trust.
        let ca = snapshot
            .tls
            .as_ref()
            .and_then(|certificates| certificates.first_certificate_file())
            .and_then(|cert| cert.parent())
            .map(|dir| dir.join("ca.pem"));
        let trust = match ca.filter(|ca| ca.exists()) {
            Some(ca) => format!("--cacert {} ", ca.display()),
            None => String::new(),
        };
        Origin { trust, url: format!("https://localhost:{}", tls.port()) }
    }

    /// `curl {flags} {trust}{url}{path}`, the URL quoted when `quote` is set.
    fn curl(&self, flags: &str, path: &str, quote: bool) -> String {
        let q = if quote { "'" } else { "" };
        format!("curl {flags} {}{q}{}{path}{q}", self.trust, self.url)
    }
}

/// The lines printed for the user to try: one per route, one unmatched (and the same over
/// HTTPS when `tls` is the TLS listener's address), the admin side.
pub fn try_lines(
    snapshot: &Snapshot,
    listen: Option<SocketAddr>,
    admin: SocketAddr,
    tls: Option<SocketAddr>,
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(origin) = Origin::pick(snapshot, listen, tls) {
        lines.extend(data_plane_lines(snapshot, &origin));
        if let (Some(_), Some(tls)) = (listen, tls) {
            let https = Origin::https(snapshot, tls);
            lines.push(format!(
                "{}   # the same over HTTPS (h2 or http/1.1 by ALPN)",
                https.curl("-s", "/some/legacy/page", false)
            ));
        }
    }
    lines.push(format!("curl -s http://{admin}/metrics | grep '^gateway_requests_total' | grep -v ' 0$'"));
    lines.push(format!("curl -s http://{admin}/admin/config"));
    lines
}

fn data_plane_lines(snapshot: &Snapshot, origin: &Origin) -> Vec<String> {
    let mut lines = Vec::new();
    for route in &snapshot.routes {
        if let (Some(prefix), Some(service)) = (&route.prefix, &route.service) {
            let note = match route.auth {
                gateway_plugin_auth::AuthMode::Required => ", 401 without the token below",
                gateway_plugin_auth::AuthMode::Optional => ", token optional",
                gateway_plugin_auth::AuthMode::Off => "",
            };
            lines.push(format!(
                "{}        # route {} -> service {}{note}",
                origin.curl("-s", &format!("{prefix}/42"), false),
                route.name,
                service.name
            ));
        }
    }
    lines.push(format!(
        "{}   # no route -> {}",
        origin.curl("-s", "/some/legacy/page", false),
        snapshot.default_route().monolith.name
    ));
    lines.push(format!("{}   # normalised to /admin before routing", origin.curl("-si", "/api/%2e%2e/admin", true)));
    for route in snapshot.routes.iter().filter(|r| r.aggregate.is_some()) {
        if let Some(aggregate) = &route.aggregate {
            lines.push(format!(
                "{}   # aggregate {}: {} parts in parallel",
                origin.curl("-s -H \"Authorization: Bearer $TOKEN\"", &aggregate.path, false),
                aggregate.name,
                aggregate.parts.len()
            ));
        }
    }
    lines
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// When the config checks tokens: a ready-to-paste token minted with the demo key, and
/// the curl lines that use it.
pub fn token_lines(snapshot: &Snapshot, origin: &Origin) -> Vec<String> {
    let Some(auth) = &snapshot.auth else {
        return Vec::new();
    };
    let Some(protected) = snapshot
        .routes
        .iter()
        .find(|route| route.prefix.is_some() && route.auth == gateway_plugin_auth::AuthMode::Required)
        .and_then(|route| route.prefix.clone())
    else {
        return Vec::new();
    };
    let config_dir = snapshot.meta.source.parent().unwrap_or(std::path::Path::new("."));
    let key = config_dir.join(DEMO_SIGNING_KEY);
    let request = crate::cli::token::TokenRequest {
        algorithm: "ES256".to_owned(),
        kid: Some(DEMO_KEY_ID.to_owned()),
        subject: Some("alice".to_owned()),
        issuer: auth.verifier().issuer().map(str::to_owned),
        audience: auth.verifier().audiences().first().cloned(),
        ttl_seconds: 3600,
        claims: vec!["email=alice@company.com".to_owned()],
    };
    let mint_command = format!(
        "gateway token --key {} --kid {DEMO_KEY_ID} --sub alice{}{}",
        key.display(),
        request.issuer.as_ref().map(|i| format!(" --iss {i}")).unwrap_or_default(),
        request.audience.as_ref().map(|a| format!(" --aud {a}")).unwrap_or_default(),
    );
    match crate::cli::token::mint(&key, &request, now_unix()) {
        Ok(token) => vec![
            format!("\n{protected} requires a token. One for alice, valid for an hour, signed with the demo key:"),
            format!("  export TOKEN={token}"),
            format!(
                "  {}   # the service sees x-user-id: alice",
                origin.curl("-s -H \"Authorization: Bearer $TOKEN\"", &format!("{protected}/42"), false)
            ),
            format!("  {}   # no token -> 401 jwt-missing", origin.curl("-si", &format!("{protected}/42"), false)),
            format!("Mint others with: {mint_command}"),
            format!(
                "Which side would bob get, and why? gateway explain --config {} GET {protected}/42 --claim sub=bob",
                snapshot.meta.source.display()
            ),
        ],
        Err(e) => vec![format!(
            "\n{protected} requires a token; the demo key is unavailable ({e}). Mint one with: {mint_command}"
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_config_gets_an_https_line_with_the_demo_ca() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../routes.toml");
        let snapshot = crate::config::load(&path, 1).unwrap_or_else(|e| panic!("{e}"));
        let (listen, admin, tls): (SocketAddr, SocketAddr, SocketAddr) =
            ("127.0.0.1:8080".parse().unwrap(), "127.0.0.1:9901".parse().unwrap(), "127.0.0.1:8443".parse().unwrap());
        let lines = try_lines(&snapshot, Some(listen), admin, Some(tls));
        let https: Vec<_> = lines.iter().filter(|l| l.contains("https://")).collect();
        assert_eq!(https.len(), 1, "{lines:#?}");
        assert!(https[0].contains("demo/tls/ca.pem https://localhost:8443/some/legacy/page"), "{}", https[0]);
        assert!(!try_lines(&snapshot, Some(listen), admin, None).iter().any(|l| l.contains("https://")));
    }

    #[test]
    fn without_a_plain_listener_every_data_plane_line_uses_https_with_the_demo_ca() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../routes.toml");
        let snapshot = crate::config::load(&path, 1).unwrap_or_else(|e| panic!("{e}"));
        let (admin, tls): (SocketAddr, SocketAddr) =
            ("127.0.0.1:9901".parse().unwrap(), "127.0.0.1:8443".parse().unwrap());
        let lines = try_lines(&snapshot, None, admin, Some(tls));
        let data_plane: Vec<_> = lines.iter().filter(|l| !l.contains("9901")).collect();
        assert!(data_plane.len() >= 3, "{lines:#?}");
        for line in data_plane {
            assert!(line.contains("--cacert ") && line.contains("https://localhost:8443/"), "{line}");
            assert!(!line.contains("http://"), "{line}");
        }
        let origin = Origin::pick(&snapshot, None, Some(tls)).expect("an origin");
        let tokens = token_lines(&snapshot, &origin);
        assert!(tokens.iter().any(|l| l.contains("--cacert ") && l.contains("https://localhost:8443/")), "{tokens:#?}");
    }
}
