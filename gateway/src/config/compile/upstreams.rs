//! `[upstreams.<name>]`: urls, timeouts, pools, breakers, failure statuses and the `Host`
//! each expects (its vocabulary is the transform policy's, `HostHeader`).

use super::*;

impl Checker<'_> {
    pub(super) fn check_upstreams(
        &mut self,
        upstreams: &BTreeMap<Spanned<String>, FileUpstream>,
    ) -> Vec<UpstreamSettings> {
        let mut out = Vec::new();
        for (name, upstream) in upstreams {
            if !is_identifier(name.get_ref()) {
                self.error(span(name), "upstream names use only a-z, 0-9, '-' and '_'");
            }
            let endpoints = self.upstream_endpoints(name, upstream);
            let authority = endpoints.as_ref().map(|source| (source.authority.clone(), source.https));
            let balance = match &upstream.balance {
                None => Some(Balance::default()),
                Some(text) => text.get_ref().parse::<Balance>().ok().or_else(|| {
                    self.error(
                        span(text),
                        format!("\"{}\" is not a balance: least_request (default) or round_robin", text.get_ref()),
                    );
                    None
                }),
            };
            let timeout = self.bounded(&upstream.timeout_ms, DEFAULT_UPSTREAM_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
            let connect_timeout =
                self.bounded(&upstream.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
            let pool_idle_timeout =
                self.bounded(&upstream.pool_idle_timeout_ms, DEFAULT_POOL_IDLE_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
            let pool_max_idle = self.bounded(&upstream.pool_max_idle, DEFAULT_POOL_MAX_IDLE, 0, 65_536, "connections");
            let health_check = upstream.health_check.as_ref().and_then(|check| self.check_health_check(check));
            let eject = upstream.eject.as_ref().map(|eject| {
                let eject = eject.get_ref();
                let failures =
                    self.bounded(&eject.consecutive_failures, DEFAULT_EJECT_FAILURES, 1, 1_000_000, "failures");
                let seconds = self.bounded(&eject.seconds, DEFAULT_EJECT_SECONDS, 1, 3_600, "seconds");
                Ejection { consecutive_failures: failures as u32, duration: Duration::from_secs(seconds) }
            });
            let (breaker, failure_statuses) = match &upstream.breaker {
                Some(breaker) => self.check_breaker(breaker.get_ref()),
                None => (None, vec![(500, 599)]),
            };
            let host_header = match &upstream.host_header {
                None => Some(HostHeader::Client),
                Some(text) => match text.get_ref().parse::<HostHeader>() {
                    Ok(mode) => Some(mode),
                    Err(problem) => {
                        self.error(span(text), problem);
                        None
                    }
                },
            };
            let protocol = match upstream.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
                None | Some((_, "http1")) => Some(Protocol::Http1),
                Some((_, "http2")) => Some(Protocol::Http2),
                Some((text, other)) => {
                    self.error(span(text), format!("\"{other}\" is not a protocol: http1 (default) or http2"));
                    None
                }
            };
            let tls = match (&authority, protocol) {
                (Some((authority, true)), Some(protocol)) => self.upstream_tls(upstream, authority, protocol),
                (Some((_, false)), _) => {
                    for key in [
                        &upstream.ca_file,
                        &upstream.server_name,
                        &upstream.client_cert_file,
                        &upstream.client_key_file,
                    ]
                    .into_iter()
                    .flatten()
                    {
                        self.error(span(key), "TLS settings apply only to an https:// url");
                    }
                    Some(None)
                }
                _ => None,
            };
            if let (Some(endpoints), Some(host_header), Some(protocol), Some(tls), Some(balance)) =
                (endpoints, host_header, protocol, tls, balance)
            {
                let settings = UpstreamSettings {
                    name: name.get_ref().clone(),
                    url: upstream_url_text(upstream),
                    endpoints: endpoints.fixed,
                    discovery: endpoints.discovery,
                    balance,
                    health_check,
                    eject,
                    timeout: Duration::from_millis(timeout),
                    connect_timeout: Duration::from_millis(connect_timeout),
                    pool_idle_timeout: Duration::from_millis(pool_idle_timeout),
                    pool_max_idle: pool_max_idle as usize,
                    breaker,
                    failure_statuses,
                    host_header,
                    protocol,
                    tls,
                };
                out.push(settings);
            }
        }
        out
    }

    pub(super) fn check_breaker(&mut self, breaker: &FileBreaker) -> (Option<BreakerSettings>, Vec<(u16, u16)>) {
        let failures = self.bounded(&breaker.failures, DEFAULT_BREAKER_FAILURES, 1, 1_000_000, "failures");
        let window = self.bounded(&breaker.window_seconds, DEFAULT_BREAKER_WINDOW_SECONDS, 1, 3_600, "seconds");
        let open = self.bounded(&breaker.open_seconds, DEFAULT_BREAKER_OPEN_SECONDS, 1, 3_600, "seconds");
        let half_open =
            self.bounded(&breaker.half_open_requests, DEFAULT_BREAKER_HALF_OPEN_REQUESTS, 1, 10_000, "requests");
        let min_requests = self.bounded(&breaker.min_requests, DEFAULT_BREAKER_MIN_REQUESTS, 1, 1_000_000, "requests");
        let error_rate = breaker.error_rate_percent.as_ref().and_then(|rate| {
            let percent = *rate.get_ref();
            if percent > 0.0 && percent <= 100.0 {
                Some(ErrorRate { percent, min_requests: min_requests as u32 })
            } else {
                self.error(span(rate), format!("must be above 0 and at most 100, got {percent}"));
                None
            }
        });
        if breaker.min_requests.is_some() && breaker.error_rate_percent.is_none() {
            let at = breaker.min_requests.as_ref().map(span).expect("checked just above");
            self.error(at, "min_requests applies to error_rate_percent, which is not set");
        }
        let mut statuses = Vec::new();
        for entry in breaker.failure_statuses.iter().flatten() {
            let text = entry.get_ref();
            let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|code| (100..=599).contains(code));
            let range = match text.split_once('-') {
                Some((low, high)) => parse(low).zip(parse(high)).filter(|(l, h)| l <= h),
                None => parse(text).map(|code| (code, code)),
            };
            match range {
                Some(range) => statuses.push(range),
                None => {
                    self.error(span(entry), format!("\"{text}\" is not a status (\"503\") or a range (\"500-599\")"))
                }
            }
        }
        if breaker.failure_statuses.is_none() {
            statuses.push((500, 599));
        }
        let settings = BreakerSettings {
            failures: failures as u32,
            window: Duration::from_secs(window),
            open_for: Duration::from_secs(open),
            half_open_requests: half_open as u32,
            error_rate,
        };
        (Some(settings), statuses)
    }

    /// The TLS client of an `https://` upstream; `Some(None)` is never returned here.
    fn upstream_tls(
        &mut self,
        upstream: &FileUpstream,
        authority: &Authority,
        protocol: Protocol,
    ) -> Option<Option<crate::tls::UpstreamTls>> {
        use crate::tls::{UpstreamTls, UpstreamTlsError};
        let path = |file: &Spanned<String>| self.config_dir.join(file.get_ref());
        let ca_file = upstream.ca_file.as_ref().map(path);
        let client = match (&upstream.client_cert_file, &upstream.client_key_file) {
            (Some(cert), Some(key)) => Some((path(cert), path(key))),
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => {
                self.error(span(one), "mutual TLS needs both client_cert_file and client_key_file");
                return None;
            }
        };
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let server_name = upstream.server_name.as_ref().map_or(host, |n| n.get_ref().as_str());
        let alpn: &[u8] = match protocol {
            Protocol::Http1 => b"http/1.1",
            Protocol::Http2 => b"h2",
        };
        let client_refs = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        match UpstreamTls::new(ca_file.as_deref(), server_name, client_refs, alpn) {
            Ok(tls) => Some(Some(tls)),
            Err(problem) => {
                let fallback = match (&upstream.url, &upstream.endpoints) {
                    (Some(url), _) => span(url),
                    (None, Some(list)) => span(list),
                    (None, None) => 0..0,
                };
                let (at, message) = match problem {
                    UpstreamTlsError::CaFile(m) => (upstream.ca_file.as_ref().map_or(fallback, span), m),
                    UpstreamTlsError::ServerName(m) => (upstream.server_name.as_ref().map_or(fallback, span), m),
                    UpstreamTlsError::ClientCert(m) => (upstream.client_cert_file.as_ref().map_or(fallback, span), m),
                    UpstreamTlsError::ClientKey(m) => (upstream.client_key_file.as_ref().map_or(fallback, span), m),
                };
                self.error(at, message);
                None
            }
        }
    }

    /// `health_check`: a path the endpoint answers with 2xx, checked every `interval_ms`.
    fn check_health_check(&mut self, check: &Spanned<FileHealthCheck>) -> Option<ActiveCheck> {
        let file = check.get_ref();
        let interval = self.bounded(&file.interval_ms, DEFAULT_HEALTH_INTERVAL_MS, 50, MAX_TIMEOUT_MS, "ms");
        let timeout = self.bounded(&file.timeout_ms, DEFAULT_HEALTH_TIMEOUT_MS, 1, MAX_TIMEOUT_MS, "ms");
        let unhealthy_after = self.bounded(&file.unhealthy_after, DEFAULT_UNHEALTHY_AFTER, 1, 1_000, "checks");
        let healthy_after = self.bounded(&file.healthy_after, DEFAULT_HEALTHY_AFTER, 1, 1_000, "checks");
        let path = file.path.get_ref();
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            self.error(span(&file.path), format!("\"{path}\" is not a path: write it as /healthz"));
            return None;
        }
        if timeout >= interval {
            let at = file.timeout_ms.as_ref().map_or_else(|| span(check), span);
            self.error(at, format!("timeout_ms ({timeout}) must be shorter than interval_ms ({interval})"));
            return None;
        }
        Some(ActiveCheck {
            path: path.clone(),
            interval: Duration::from_millis(interval),
            timeout: Duration::from_millis(timeout),
            unhealthy_after: unhealthy_after as u32,
            healthy_after: healthy_after as u32,
        })
    }

    /// `url` (one endpoint) or `endpoints` (several), exactly one of them; every endpoint
    /// with its authority and whether it is https (all alike).
    fn upstream_endpoints(&mut self, name: &Spanned<String>, upstream: &FileUpstream) -> Option<EndpointSource> {
        let urls: Vec<&Spanned<String>> = match (&upstream.url, &upstream.endpoints, &upstream.discovery) {
            (Some(url), None, None) => vec![url],
            (None, Some(list), None) if !list.get_ref().is_empty() => list.get_ref().iter().collect(),
            (None, Some(list), None) => {
                self.error(span(list), "give at least one endpoint, or a url");
                return None;
            }
            (None, None, Some(discovery)) => return self.check_discovery(discovery),
            (None, None, None) => {
                self.error(
                    span(name),
                    "give url = \"http://HOST:PORT\", endpoints = [...] or discovery = { dns = ... }",
                );
                return None;
            }
            (url, endpoints, discovery) => {
                let at = [url.as_ref().map(span), endpoints.as_ref().map(span), discovery.as_ref().map(span)]
                    .into_iter()
                    .flatten()
                    .nth(1)
                    .expect("two of the three are given");
                self.error(at, "give one of url (one endpoint), endpoints (several) or discovery (DNS)");
                return None;
            }
        };
        let mut endpoints: Vec<(Authority, bool)> = Vec::with_capacity(urls.len());
        let mut valid = true;
        for url in &urls {
            match self.upstream_authority(url) {
                Some(endpoint) if endpoints.iter().any(|(seen, _)| seen == &endpoint.0) => {
                    self.error(span(url), format!("{} is listed twice", endpoint.0));
                    valid = false;
                }
                Some(endpoint) if endpoints.first().is_some_and(|(_, https)| *https != endpoint.1) => {
                    self.error(span(url), "endpoints are all http:// or all https://");
                    valid = false;
                }
                Some(endpoint) => endpoints.push(endpoint),
                None => valid = false,
            }
        }
        let (authority, https) = endpoints.first().cloned()?;
        valid.then(|| EndpointSource {
            authority,
            https,
            fixed: endpoints.into_iter().map(|(authority, _)| authority).collect(),
            discovery: None,
        })
    }

    /// `discovery = { dns, refresh_seconds, nameservers }`.
    fn check_discovery(&mut self, discovery: &Spanned<FileDiscovery>) -> Option<EndpointSource> {
        let file = discovery.get_ref();
        let text = file.dns.get_ref();
        let refresh = self.bounded(&file.refresh_seconds, DEFAULT_DISCOVERY_REFRESH_SECONDS, 1, 3_600, "seconds");
        let mut nameservers = Vec::new();
        for server in file.nameservers.iter().flatten() {
            match server.get_ref().parse::<std::net::SocketAddr>() {
                Ok(address) => nameservers.push(address),
                Err(_) => self.error(
                    span(server),
                    format!("\"{}\" is not a nameserver: write IP:PORT, for example 127.0.0.1:8600", server.get_ref()),
                ),
            }
        }
        // `NAME:PORT` is http; a scheme may be given (`https://NAME:PORT`).
        let url = if text.contains("://") { text.clone() } else { format!("http://{text}") };
        let spanned = Spanned::new(span(&file.dns), url);
        let (authority, https) = self.upstream_authority(&spanned)?;
        let host = authority.host();
        if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
            self.error(span(&file.dns), format!("\"{text}\" is an address, not a name: list it in endpoints instead"));
            return None;
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        if file.nameservers.as_ref().is_some_and(|list| list.len() != nameservers.len()) {
            return None;
        }
        Some(EndpointSource {
            discovery: Some(DnsDiscovery {
                name: host.to_owned(),
                port,
                refresh: Duration::from_secs(refresh),
                nameservers,
            }),
            authority,
            https,
            fixed: Vec::new(),
        })
    }

    /// The url's authority, and whether it is `https://`.
    pub(super) fn upstream_authority(&mut self, url: &Spanned<String>) -> Option<(Authority, bool)> {
        let text = url.get_ref();
        let uri = match text.parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => {
                self.error(span(url), format!("\"{text}\" is not a url ({e}); write it as http://HOST:PORT"));
                return None;
            }
        };
        let problem = match (uri.scheme_str(), uri.authority()) {
            (Some("http" | "https"), Some(a)) if a.as_str().contains('@') => {
                Some("credentials in the url are not allowed")
            }
            (Some("http" | "https"), Some(_)) if !matches!(uri.path(), "" | "/") || uri.query().is_some() => {
                Some("the url must not have a path or query: the upstream receives the path the client sent")
            }
            (Some("http" | "https"), Some(_)) => None,
            _ => Some("write the url as http://HOST:PORT or https://HOST:PORT"),
        };
        if let Some(problem) = problem {
            self.error(span(url), format!("\"{text}\": {problem}"));
            return None;
        }
        Some((uri.authority().cloned()?, uri.scheme_str() == Some("https")))
    }
}

/// The upstream's address as shown on `/admin/config` and compared across reloads (the
/// breaker survives while it is the same): the url, or the endpoints joined.
fn upstream_url_text(upstream: &FileUpstream) -> String {
    match (&upstream.url, &upstream.endpoints, &upstream.discovery) {
        (Some(url), _, _) => url.get_ref().clone(),
        (None, Some(list), _) => list.get_ref().iter().map(|u| u.get_ref().as_str()).collect::<Vec<_>>().join(", "),
        (None, None, Some(discovery)) => format!("dns {}", discovery.get_ref().dns.get_ref()),
        (None, None, None) => String::new(),
    }
}

/// Where an upstream's endpoints come from, validated.
pub(super) struct EndpointSource {
    /// The first fixed endpoint, or the DNS name and port: TLS name and default `Host`.
    authority: Authority,
    /// `https://`.
    https: bool,
    /// `url` or `endpoints`; empty with discovery.
    fixed: Vec<Authority>,
    /// `discovery`.
    discovery: Option<DnsDiscovery>,
}
