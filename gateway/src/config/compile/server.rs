//! `[server]`: listeners, limits, timeouts, trusted proxies.

use super::*;

impl Checker<'_> {
    pub(super) fn check_server(
        &mut self,
        server: &FileServer,
        upstreams: &BTreeMap<Spanned<String>, FileUpstream>,
    ) -> Option<ServerSettings> {
        // Errors about keys that are absent point at `default_upstream`, the one key
        // [server] always has.
        let anchor = span(&server.default_upstream);
        let listen = match &server.listen {
            Some(listen) => self.socket_addr(listen).map(Some),
            None if server.tls_listen.is_some() => Some(None),
            None => {
                self.error(anchor.clone(), "give server.listen, server.tls_listen, or both");
                None
            }
        };
        let admin_listen = match &server.admin_listen {
            Some(admin) => self.socket_addr(admin),
            None => Some(DEFAULT_ADMIN_LISTEN.parse().expect("the default admin address parses")),
        };
        if let (Some(Some(l)), Some(a), Some(admin)) = (listen, admin_listen, &server.admin_listen)
            && l == a
            && l.port() != 0
        {
            self.error(span(admin), "must differ from server.listen");
        }
        let default_workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let workers = self.bounded(&server.workers, default_workers, 1, MAX_WORKERS, "threads");
        let max_header_bytes = self.bounded(
            &server.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
            MIN_MAX_HEADER_BYTES,
            MAX_MAX_HEADER_BYTES,
            "bytes",
        );
        let max_headers = self.bounded(&server.max_headers, DEFAULT_MAX_HEADERS, 1, MAX_MAX_HEADERS, "headers");
        let max_body_bytes = self.bounded(&server.max_body_bytes, DEFAULT_MAX_BODY_BYTES, 0, u64::MAX, "bytes");
        let header_read_timeout =
            self.bounded(&server.header_read_timeout_ms, DEFAULT_HEADER_READ_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
        let idle_timeout = self.bounded(&server.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
        let shutdown_grace =
            self.bounded(&server.shutdown_grace_ms, DEFAULT_SHUTDOWN_GRACE_MS, 0, MAX_TIMEOUT_MS, "ms");
        // The idle limit would close a stalled upload silently; the body timer must fire
        // first for the client to get its 408. Left unset, it is kept below the idle limit.
        let body_read_timeout = match &server.body_read_timeout_ms {
            Some(at) => {
                let value =
                    self.bounded(&server.body_read_timeout_ms, DEFAULT_BODY_READ_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
                if value >= idle_timeout {
                    self.error(
                        span(at),
                        format!(
                            "server.body_read_timeout_ms ({value}) must be shorter than server.idle_timeout_ms \
                             ({idle_timeout}), or a stalled upload is cut off without its 408"
                        ),
                    );
                }
                value
            }
            None => DEFAULT_BODY_READ_TIMEOUT_MS.min(idle_timeout.saturating_sub(1).max(1)),
        };
        let underscore_headers = match &server.underscore_headers {
            None => UnderscoreHeaders::default(),
            Some(text) => text.get_ref().parse().unwrap_or_else(|()| {
                self.error(
                    span(text),
                    format!("\"{}\" is not a choice: drop (default), reject or pass", text.get_ref()),
                );
                UnderscoreHeaders::default()
            }),
        };

        // An idle client connection is one with no bytes moving; while the gateway waits for
        // a slow upstream nothing moves, so the idle limit must outlast every upstream timeout.
        for (name, upstream) in upstreams {
            let timeout = upstream.timeout_ms.as_ref().map_or(DEFAULT_UPSTREAM_TIMEOUT_MS, |t| *t.get_ref());
            if timeout >= idle_timeout {
                let at = server.idle_timeout_ms.as_ref().map_or_else(|| anchor.clone(), span);
                self.error(
                    at,
                    format!(
                        "server.idle_timeout_ms ({idle_timeout}) must be longer than upstreams.{}.timeout_ms ({timeout}), \
                         or slow responses are cut off",
                        name.get_ref()
                    ),
                );
            }
        }
        // A running gateway cannot rebind its listeners or resize its runtime.
        if let Some(previous) = self.previous.map(|p| &p.server) {
            let fixed = [
                (
                    "server.listen",
                    listen.map(display_listen),
                    display_listen(previous.listen),
                    server.listen.as_ref().map(span),
                ),
                (
                    "server.admin_listen",
                    admin_listen.map(|a| a.to_string()),
                    previous.admin_listen.to_string(),
                    server.admin_listen.as_ref().map(span),
                ),
                (
                    "server.workers",
                    Some(workers.to_string()),
                    previous.workers.to_string(),
                    server.workers.as_ref().map(span),
                ),
            ];
            for (key, now, before, at) in fixed {
                if now.as_ref().is_some_and(|now| *now != before) {
                    self.error(
                        at.unwrap_or_else(|| anchor.clone()),
                        format!(
                            "{key} changed from {before} to {}: it cannot change while the gateway runs; \
                             restart to apply it (the running config keeps serving)",
                            now.unwrap_or_default()
                        ),
                    );
                }
            }
        }
        let tls_listen = server.tls_listen.as_ref().map(|addr| (self.socket_addr(addr), addr));
        match (&tls_listen, &server.tls) {
            (Some((_, at)), None) => self.error(span(at), "tls_listen needs [server.tls] with its certificates"),
            (None, Some(tls)) => self.error(span(tls), "[server.tls] is used only with server.tls_listen"),
            _ => {}
        }
        if let (Some(previous), Some(now)) =
            (self.previous.map(|p| &p.server), tls_listen.as_ref().map_or(Some(None), |(addr, _)| addr.map(Some)))
            && previous.tls_listen != now
        {
            let at = server.tls_listen.as_ref().map_or_else(|| anchor.clone(), span);
            self.error(at, "server.tls_listen cannot change while the gateway runs; restart to apply it");
        }
        let pid_file = match &server.pid_file {
            Some(path) if path.get_ref().trim().is_empty() => {
                self.error(span(path), "give a file path, e.g. \"/run/gateway/gateway.pid\"");
                None
            }
            Some(path) => Some(Some(self.config_dir.join(path.get_ref()))),
            None => Some(None),
        };
        let mut trusted_proxies = Vec::new();
        for entry in server.trusted_proxies.iter().flatten() {
            let text = entry.get_ref();
            let parsed = text.parse::<IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => self.error(span(entry), format!("\"{text}\" is not an IP address or CIDR (10.0.0.0/8)")),
            }
        }
        Some(ServerSettings {
            trusted_proxies,
            listen: listen?,
            admin_listen: admin_listen?,
            workers: workers as usize,
            max_header_bytes: max_header_bytes as usize,
            max_headers: max_headers as usize,
            max_body_bytes,
            header_read_timeout: Duration::from_millis(header_read_timeout),
            idle_timeout: Duration::from_millis(idle_timeout),
            shutdown_grace: Duration::from_millis(shutdown_grace),
            access_log: server.access_log.unwrap_or(true),
            underscore_headers,
            body_read_timeout: Duration::from_millis(body_read_timeout),
            tls_listen: match tls_listen {
                Some((addr, _)) => Some(addr?),
                None => None,
            },
            pid_file: pid_file?,
        })
    }

    /// `[server.tls]`: every pair read and checked now, so a broken or mismatched file is
    /// a config error at its key, and a reload with one keeps the running certificates.
    pub(super) fn check_tls(&mut self, server: &FileServer) -> Option<Option<Certificates>> {
        let Some(tls) = &server.tls else { return Some(None) };
        if tls.get_ref().certificates.is_empty() {
            self.error(span(tls), "give at least one certificate: certificates = [{ cert_file, key_file }]");
            return None;
        }
        let pairs: Vec<(PathBuf, PathBuf)> = tls
            .get_ref()
            .certificates
            .iter()
            .map(|c| {
                let c = c.get_ref();
                (self.config_dir.join(c.cert_file.get_ref()), self.config_dir.join(c.key_file.get_ref()))
            })
            .collect();
        match Certificates::load(&pairs) {
            Ok(certificates) => Some(Some(certificates)),
            Err((index, problem)) => {
                let entry = tls.get_ref().certificates[index].get_ref();
                let (at, message) = match problem {
                    PairError::Certificate(message) => (span(&entry.cert_file), message),
                    PairError::Key(message) => (span(&entry.key_file), message),
                };
                self.error(at, message);
                None
            }
        }
    }
}

/// A listener address as the reload error names it; "none" when it is not set.
fn display_listen(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "none".to_owned(), |addr| addr.to_string())
}
