//! `[auth]` and the per-route `auth` mode.

use super::*;

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

    pub(super) fn check_auth(&mut self, auth: &Spanned<FileAuth>) -> Option<Authenticator> {
        let section = span(auth);
        let auth = auth.get_ref();
        let keys = self.load_keys(auth, section);
        let algorithms = self.check_algorithms(&auth.algorithms, keys.as_ref());
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
        let verifier =
            Verifier::new(keys?, algorithms?, auth.issuer.as_ref().map(|i| i.get_ref().clone()), audiences, leeway);
        let cookie = auth.cookie.as_ref().map(|c| c.get_ref().clone());
        Some(Authenticator::new(verifier, claims_to_headers, cookie, cache_entries, Arc::new(SystemClock)))
    }

    pub(super) fn load_keys(&mut self, auth: &FileAuth, section: Range<usize>) -> Option<KeySet> {
        let sources = [&auth.jwks_file, &auth.public_key_file, &auth.hs256_secret_env];
        let given: Vec<&Spanned<String>> = sources.iter().filter_map(|s| s.as_ref()).collect();
        if given.len() != 1 {
            let at = given.get(1).map_or(section, |second| span(second));
            self.error(at, "give exactly one key source: jwks_file, public_key_file or hs256_secret_env");
            return None;
        }
        let read = |checker: &mut Self, file: &Spanned<String>| -> Option<Vec<u8>> {
            let path = checker.config_dir.join(file.get_ref());
            match std::fs::read(&path) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    checker.error(span(file), format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        };
        let (result, at) = if let Some(file) = &auth.jwks_file {
            let bytes = read(self, file)?;
            (KeySet::from_jwks(&String::from_utf8_lossy(&bytes)), span(file))
        } else if let Some(file) = &auth.public_key_file {
            (KeySet::from_pem(&read(self, file)?), span(file))
        } else {
            let variable = auth.hs256_secret_env.as_ref().expect("exactly one source is set");
            match std::env::var(variable.get_ref()) {
                Ok(secret) => (KeySet::from_secret(secret.as_bytes()), span(variable)),
                Err(_) => {
                    self.error(span(variable), format!("environment variable {} is not set", variable.get_ref()));
                    return None;
                }
            }
        };
        result.map_err(|e| self.error(at, e.to_string())).ok()
    }

    pub(super) fn check_algorithms(
        &mut self,
        list: &Spanned<Vec<Spanned<String>>>,
        keys: Option<&KeySet>,
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
                    if keys.is_some_and(|k| !k.supports(algorithm)) {
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
