//! DNS discovery of an upstream's endpoints: `discovery = { dns, refresh_seconds }`.
//!
//! One task per upstream handle, off the data plane: every `refresh_seconds` it asks for
//! the name's A and AAAA records and makes every address an endpoint (same port). An
//! answer that changes swaps the endpoint list atomically: endpoints still in the answer
//! keep their pool, health and load; new ones start empty; removed ones are dropped once
//! the requests already sent to them finish (each request holds its endpoint). A failed
//! or empty lookup keeps the last answer. This is how Consul's DNS interface and
//! Kubernetes headless Services are used.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::Upstream;

/// `discovery = { dns = "NAME:PORT", refresh_seconds, nameservers }`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// The name asked for (A and AAAA records).
    pub name: String,
    /// Every discovered address is an endpoint on this port.
    pub port: u16,
    /// Between two lookups.
    pub refresh: Duration,
    /// The DNS servers asked (for example Consul's agent on 127.0.0.1:8600); empty: the
    /// system's (`/etc/resolv.conf`, with `/etc/hosts`).
    pub nameservers: Vec<SocketAddr>,
}

impl DnsDiscovery {
    /// `NAME:PORT`, as configured (the `Host` of `host_header = "upstream"`).
    pub fn name_and_port(&self) -> String {
        format!("{}:{}", self.name, self.port)
    }
}

/// Most time one lookup may take; past it the lookup counts as failed.
const MAX_LOOKUP_TIME: Duration = Duration::from_secs(5);

/// What the last lookups found, for `/admin/config` and `/ready`.
#[derive(Debug, Default)]
pub struct DiscoveryStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default, Clone)]
struct StatusInner {
    lookups: u64,
    /// Clock reading of the last answer that was used.
    last_answer_at: Option<Duration>,
    /// Why the last lookup failed, when it did.
    last_error: Option<String>,
}

impl DiscoveryStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True once the first lookup finished, answered or not.
    pub fn settled(&self) -> bool {
        self.lock().lookups > 0
    }

    /// `{lookups, last_answer_seconds_ago, last_error}` for `/admin/config`.
    pub fn to_json(&self, now: Duration) -> serde_json::Map<String, serde_json::Value> {
        let inner = self.lock().clone();
        let mut shown = serde_json::Map::new();
        shown.insert("lookups".into(), inner.lookups.into());
        shown.insert(
            "last_answer_seconds_ago".into(),
            inner.last_answer_at.map(|at| now.saturating_sub(at).as_secs()).into(),
        );
        shown.insert("last_error".into(), inner.last_error.into());
        shown
    }

    /// Takes over what the handle a reload replaced had found.
    pub(super) fn carry_over(&self, before: &DiscoveryStatus) {
        let inner = before.lock().clone();
        *self.lock() = inner;
    }

    fn record(&self, now: Duration, outcome: &Result<Vec<SocketAddr>, String>) {
        let mut inner = self.lock();
        inner.lookups += 1;
        match outcome {
            Ok(_) => {
                inner.last_answer_at = Some(now);
                inner.last_error = None;
            }
            Err(problem) => inner.last_error = Some(problem.clone()),
        }
    }
}

/// The endpoint addresses an answer gives: every address on `port`, sorted, without
/// duplicates. An empty answer is an error (it keeps the last one): a name that briefly
/// resolves to nothing must not take every instance away.
pub fn addresses_from_answer(answer: impl IntoIterator<Item = IpAddr>, port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut addresses: Vec<SocketAddr> = answer.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
    addresses.sort_unstable();
    addresses.dedup();
    if addresses.is_empty() {
        return Err("the answer has no A or AAAA record".to_owned());
    }
    Ok(addresses)
}

fn build_resolver(discovery: &DnsDiscovery) -> Result<TokioResolver, String> {
    let mut builder = if discovery.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
    } else {
        let servers = discovery
            .nameservers
            .iter()
            .map(|server| {
                let mut config = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut config.connections {
                    connection.port = server.port();
                }
                config
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        // Named servers answer alone: /etc/hosts is not consulted.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder
    };
    let options = builder.options_mut();
    // An answer is never reused past the next refresh, whatever its TTL.
    options.positive_max_ttl = Some(discovery.refresh);
    options.negative_max_ttl = Some(discovery.refresh);
    options.timeout = options.timeout.min(MAX_LOOKUP_TIME / 2);
    builder.build().map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// The discovery loop of one upstream handle; ends when the handle is dropped.
pub(super) async fn run_discovery(upstream: Weak<Upstream>, discovery: DnsDiscovery) {
    let resolver = build_resolver(&discovery);
    // A fully qualified name: no search domains are tried.
    let query = if discovery.name.ends_with('.') { discovery.name.clone() } else { format!("{}.", discovery.name) };
    loop {
        let outcome = match &resolver {
            Ok(resolver) => match tokio::time::timeout(MAX_LOOKUP_TIME, resolver.lookup_ip(query.as_str())).await {
                Ok(Ok(answer)) => addresses_from_answer(answer.iter(), discovery.port),
                Ok(Err(e)) => Err(format!("lookup of {} failed: {e}", discovery.name)),
                Err(_) => Err(format!("lookup of {} took longer than {MAX_LOOKUP_TIME:?}", discovery.name)),
            },
            Err(problem) => Err(problem.clone()),
        };
        let Some(upstream) = upstream.upgrade() else { return };
        upstream.apply_discovery(outcome);
        drop(upstream);
        tokio::time::sleep(discovery.refresh).await;
    }
}

impl Upstream {
    /// Uses one lookup's outcome: a changed answer replaces the endpoint list, a failure
    /// keeps it (logged and counted either way).
    fn apply_discovery(&self, outcome: Result<Vec<SocketAddr>, String>) {
        let now = crate::clock::now();
        self.discovery_status.record(now, &outcome);
        let result = match &outcome {
            Ok(_) => "ok",
            Err(_) => "error",
        };
        metrics::counter!(gateway_plugin_metrics::names::DISCOVERY_LOOKUPS, "upstream" => self.name.to_string(), "result" => result)
            .increment(1);
        match outcome {
            Ok(addresses) => {
                if self.replace_endpoints(&addresses) {
                    self.report_endpoint_states(now);
                }
            }
            Err(problem) => {
                tracing::warn!(upstream = %self.name, error = %problem, "DNS discovery failed; keeping the last answer");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_record_is_an_endpoint_on_the_port_in_a_stable_order() {
        let answer = [ip("10.0.0.12"), ip("10.0.0.11"), ip("::1"), ip("10.0.0.11")];
        let addresses = addresses_from_answer(answer, 3001).unwrap();
        let shown: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.11:3001", "10.0.0.12:3001", "[::1]:3001"]);
        // The same records in another order are the same endpoints.
        let again = addresses_from_answer([ip("::1"), ip("10.0.0.12"), ip("10.0.0.11")], 3001).unwrap();
        assert_eq!(addresses, again);
    }

    #[test]
    fn an_empty_answer_is_refused_so_the_last_one_is_kept() {
        assert!(addresses_from_answer([], 3001).is_err());
    }

    #[test]
    fn status_is_settled_after_the_first_lookup_and_keeps_the_last_answer_time() {
        let status = DiscoveryStatus::default();
        assert!(!status.settled());
        status.record(Duration::from_secs(10), &Ok(vec![]));
        status.record(Duration::from_secs(15), &Err("down".to_owned()));
        assert!(status.settled());
        let shown = status.to_json(Duration::from_secs(20));
        assert_eq!(shown["lookups"], 2);
        assert_eq!(shown["last_answer_seconds_ago"], 10);
        assert_eq!(shown["last_error"], "down");
    }
}
