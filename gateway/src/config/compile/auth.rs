//! `[auth]` and the per-route `auth` mode.

use std::collections::HashMap;

use gateway_plugin_auth::{FixedSource, KeyRing, RemoteKeys, RemoteSettings, SourceKind};

use super::*;
use crate::upstream::jwks::{JwksSource, source_label};

/// `localhost`, `127.0.0.0/8` or `::1`: a key server on this machine (a sidecar).
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Checker<'_> {
    /// An `auth` mode; `required` and `optional` need an `[auth]` section to check with.
    pub(super) fn auth_mode(
        &mut self,
        mode: &Option<Spanned<FileAuthMode>>,
        has_auth: bool,
        default: AuthMode,
    ) -> AuthMode {
        let Some(mode) = mode else {
            return default;
        };
        match mode.get_ref() {
            FileAuthMode::Off => AuthMode::Off,
            FileAuthMode::Required | FileAuthMode::Optional if !has_auth => {
                self.error(span(mode), "checking tokens needs an [auth] section (algorithms and keys)");
                AuthMode::Off
            }
            FileAuthMode::Required => AuthMode::Required,
            FileAuthMode::Optional => AuthMode::Optional,
        }
    }

    /// `[auth]`: the authenticator and the `jwks_url` sources it verifies with.
    pub(super) fn check_auth(&mut self, auth: &Spanned<FileAuth>) -> Option<(Authenticator, Vec<Arc<JwksSource>>)> {
        let section = span(auth);
        let auth = auth.get_ref();
        let keys = self.load_keys(auth, section);
        let algorithms = self.check_algorithms(&auth.algorithms, keys.as_ref().map(|(ring, _)| ring));
        let leeway = self.bounded(&auth.leeway_seconds, DEFAULT_LEEWAY_SECONDS, 0, MAX_LEEWAY_SECONDS, "seconds");
        let cache_entries = self.bounded(&auth.cache_entries, DEFAULT_TOKEN_CACHE_ENTRIES, 0, 100_000_000, "entries");
        let audiences = match auth.audience.as_ref().map(|a| (a.get_ref(), span(a))) {
            None => Vec::new(),
            Some((FileAudience::One(one), _)) => vec![one.clone()],
            Some((FileAudience::Many(many), at)) => {
                if many.is_empty() {
                    self.error(at, "list at least one audience, or leave audience out to skip the check");
                }
                many.clone()
            }
        };
        let mut claims_to_headers = Vec::new();
        for (claim, header) in auth.claims_to_headers.iter().flatten() {
            let name = header.get_ref();
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(parsed) if RESERVED_CLAIM_HEADERS.contains(&parsed.as_str()) => {
                    self.error(
                        span(header),
                        format!("\"{name}\" cannot carry a claim: the gateway or HTTP relies on it"),
                    );
                }
                Ok(parsed) => claims_to_headers.push((claim.clone(), parsed)),
                Err(_) => self.error(span(header), format!("\"{name}\" is not a valid header name")),
            }
        }
        let (ring, sources) = keys?;
        let verifier =
            Verifier::new(ring, algorithms?, auth.issuer.as_ref().map(|i| i.get_ref().clone()), audiences, leeway);
        let cookie = auth.cookie.as_ref().map(|c| c.get_ref().clone());
        let authenticator =
            Authenticator::new(verifier, claims_to_headers, cookie, cache_entries, Arc::new(SystemClock));
        Some((authenticator, sources))
    }

    /// Every key source, merged: the files and the secret are read now; each `jwks_url` is
    /// only checked (fetching is the running gateway's job, so `gateway check` stays
    /// offline). A `kid` may come from one source only.
    pub(super) fn load_keys(
        &mut self,
        auth: &FileAuth,
        section: Range<usize>,
    ) -> Option<(KeyRing, Vec<Arc<JwksSource>>)> {
        if auth.jwks_url.is_none()
            && auth.jwks_file.is_none()
            && auth.public_key_file.is_none()
            && auth.hs256_secret_env.is_none()
        {
            self.error(
                section,
                "give at least one key source: jwks_url, jwks_file, public_key_file or hs256_secret_env",
            );
            return None;
        }
        let mut ok = true;
        let mut fixed = KeySet::empty();
        let mut fixed_sources = Vec::new();
        let mut add = |kind: SourceKind, name: &str, set: KeySet| {
            let kids = set.kids().map(str::to_owned).collect();
            fixed_sources.push(FixedSource { kind, name: name.to_owned(), kids });
            fixed = fixed.merged(&set);
        };
        // kid -> the source that provides it.
        let mut kids: HashMap<String, String> = HashMap::new();
        let read = |checker: &mut Self, file: &str, at: Range<usize>| -> Option<Vec<u8>> {
            let path = checker.config_dir.join(file);
            match std::fs::read(&path) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    checker.error(at, format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        };
        for (file, at) in auth.jwks_file.as_ref().map(|f| f.get_ref().values(span(f))).unwrap_or_default() {
            let Some(bytes) = read(self, &file, at.clone()) else {
                ok = false;
                continue;
            };
            let set = match KeySet::from_jwks(&String::from_utf8_lossy(&bytes)) {
                Ok(set) => set,
                Err(e) => {
                    self.error(at, format!("{file}: {e}"));
                    ok = false;
                    continue;
                }
            };
            for kid in set.kids() {
                if let Some(other) = kids.insert(kid.to_owned(), file.clone()) {
                    self.error(
                        at.clone(),
                        format!("kid \"{kid}\" is in {file} and in {other}: each kid must come from one key source"),
                    );
                    ok = false;
                }
            }
            add(SourceKind::JwksFile, &file, set);
        }
        if let Some(file) = &auth.public_key_file {
            match read(self, file.get_ref(), span(file)).map(|pem| KeySet::from_pem(&pem)) {
                Some(Ok(set)) => add(SourceKind::PublicKeyFile, file.get_ref(), set),
                Some(Err(e)) => {
                    self.error(span(file), e.to_string());
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(variable) = &auth.hs256_secret_env {
            match std::env::var(variable.get_ref()).map(|secret| KeySet::from_secret(secret.as_bytes())) {
                Ok(Ok(set)) => add(SourceKind::Hs256SecretEnv, variable.get_ref(), set),
                Ok(Err(e)) => {
                    self.error(span(variable), e.to_string());
                    ok = false;
                }
                Err(_) => {
                    self.error(span(variable), format!("environment variable {} is not set", variable.get_ref()));
                    ok = false;
                }
            }
        }
        let sources = self.check_jwks_urls(auth)?;
        let remote = sources.iter().map(|s| s.keys.clone()).collect();
        ok.then(|| (KeyRing::new(fixed, fixed_sources, remote), sources))
    }

    /// `jwks_url`, `jwks_refresh_seconds`, `jwks_ca_file`: each URL checked, never fetched.
    /// A source the serving config already fetches the same way is kept, with its keys.
    fn check_jwks_urls(&mut self, auth: &FileAuth) -> Option<Vec<Arc<JwksSource>>> {
        let Some(urls) = &auth.jwks_url else {
            for (key, at) in [
                ("jwks_refresh_seconds", auth.jwks_refresh_seconds.as_ref().map(span)),
                ("jwks_ca_file", auth.jwks_ca_file.as_ref().map(span)),
            ] {
                if let Some(at) = at {
                    self.error(at, format!("{key} applies to jwks_url, and there is none"));
                }
            }
            return Some(Vec::new());
        };
        let refresh = Duration::from_secs(self.bounded(
            &auth.jwks_refresh_seconds,
            DEFAULT_JWKS_REFRESH_SECONDS,
            1,
            MAX_JWKS_REFRESH_SECONDS,
            "seconds",
        ));
        let ca_file = auth.jwks_ca_file.as_ref().map(|f| (self.config_dir.join(f.get_ref()), span(f)));
        let mut ok = true;
        let mut sources: Vec<Arc<JwksSource>> = Vec::new();
        for (text, at) in urls.get_ref().values(span(urls)) {
            let url = match text.parse::<Uri>() {
                Ok(url) if url.authority().is_some() && matches!(url.scheme_str(), Some("https" | "http")) => url,
                _ => {
                    self.error(at, format!("\"{text}\" is not an https:// URL"));
                    ok = false;
                    continue;
                }
            };
            let authority = url.authority().expect("checked above");
            let host = authority.host().trim_start_matches('[').trim_end_matches(']');
            let tls = if url.scheme_str() == Some("https") {
                let ca = ca_file.as_ref().map(|(path, _)| path.as_path());
                match crate::tls::UpstreamTls::new(ca, host, None, b"http/1.1") {
                    Ok(tls) => Some(tls),
                    Err(problem) => {
                        let (at, message) = match problem {
                            crate::tls::UpstreamTlsError::CaFile(m) => (
                                ca_file.as_ref().map_or(at.clone(), |(_, at)| at.clone()),
                                m.replace("no ca_file", "no jwks_ca_file"),
                            ),
                            crate::tls::UpstreamTlsError::ServerName(m)
                            | crate::tls::UpstreamTlsError::ClientCert(m)
                            | crate::tls::UpstreamTlsError::ClientKey(m) => (at.clone(), m),
                        };
                        self.error(at, message);
                        ok = false;
                        continue;
                    }
                }
            } else if is_loopback_host(host) {
                None
            } else {
                self.error(
                    at,
                    format!("\"{text}\": keys are fetched over https:// (plain http:// only from a loopback address)"),
                );
                ok = false;
                continue;
            };
            if sources.iter().any(|s| s.url == url) {
                self.error(at, format!("\"{text}\" is listed twice"));
                ok = false;
                continue;
            }
            let kept =
                self.previous.and_then(|p| p.jwks_sources.iter().find(|s| s.same_as(&url, &tls, refresh))).cloned();
            sources.push(kept.unwrap_or_else(|| {
                let settings = RemoteSettings { source: source_label(&url), refresh };
                Arc::new(JwksSource { keys: Arc::new(RemoteKeys::new(settings)), url, tls })
            }));
        }
        ok.then_some(sources)
    }

    pub(super) fn check_algorithms(
        &mut self,
        list: &Spanned<Vec<Spanned<String>>>,
        keys: Option<&KeyRing>,
    ) -> Option<Vec<Algorithm>> {
        const SUPPORTED: &str = "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512";
        if list.get_ref().is_empty() {
            self.error(span(list), format!("list at least one algorithm ({SUPPORTED})"));
            return None;
        }
        let mut algorithms = Vec::new();
        let mut ok = true;
        for name in list.get_ref() {
            let text = name.get_ref();
            match text.parse::<Algorithm>() {
                _ if text.eq_ignore_ascii_case("none") => {
                    self.error(span(name), "\"none\" is never accepted: unsigned tokens prove nothing");
                    ok = false;
                }
                Ok(algorithm) => {
                    if keys.is_some_and(|k| !k.may_support(algorithm)) {
                        self.error(span(name), format!("no configured key can verify {text}"));
                        ok = false;
                    }
                    algorithms.push(algorithm);
                }
                Err(_) => {
                    self.error(span(name), format!("unknown algorithm \"{text}\" (supported: {SUPPORTED})"));
                    ok = false;
                }
            }
        }
        ok.then_some(algorithms)
    }
}
