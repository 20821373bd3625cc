//! Several instances per upstream: `endpoints` spreads requests over every instance, with
//! the power of two choices or in turn, and the `Host` of each is its own endpoint's.

use crate::harness::*;

async fn three_instances_behind(balance: &str) -> ([RunningMock; 3], TestGateway, RunningMock) {
    three_instances_with(&format!("balance = \"{balance}\"")).await
}

async fn three_instances_with(upstream_extra: &str) -> ([RunningMock; 3], TestGateway, RunningMock) {
    let monolith = MockUpstream::new("monolith").start().await;
    let instances = [
        MockUpstream::new("users-a").start().await,
        MockUpstream::new("users-b").start().await,
        MockUpstream::new("users-c").start().await,
    ];
    let list: Vec<String> = instances.iter().map(|i| format!("\"{}\"", i.url())).collect();
    let config = format!(
        "{}\n[upstreams.users]\nendpoints = [{}]\n{upstream_extra}\nhost_header = \"upstream\"\n\
         [[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n",
        base_config(&monolith.url(), ""),
        list.join(", ")
    );
    let gateway = TestGateway::start(&config).await;
    (instances, gateway, monolith)
}

#[tokio::test]
async fn least_request_spreads_load_over_every_instance() {
    let (instances, gateway, monolith) = three_instances_behind("least_request").await;
    for i in 0..60 {
        let reply = get(&gateway.url(&format!("/api/users/{i}"))).await;
        assert_eq!(reply.status, 200);
    }
    let counts: Vec<usize> = instances.iter().map(RunningMock::count).collect();
    assert_eq!(counts.iter().sum::<usize>(), 60, "{counts:?}");
    assert!(counts.iter().all(|&n| n >= 5), "every instance takes a share: {counts:?}");
    assert_eq!(monolith.count(), 0);
    for instance in &instances {
        for request in instance.requests() {
            assert_eq!(request.headers["host"], instance.addr.to_string(), "each instance gets its own Host");
        }
    }
}

#[tokio::test]
async fn round_robin_takes_turns() {
    let (instances, gateway, _monolith) = three_instances_behind("round_robin").await;
    for i in 0..30 {
        assert_eq!(get(&gateway.url(&format!("/api/users/{i}"))).await.status, 200);
    }
    let counts: Vec<usize> = instances.iter().map(RunningMock::count).collect();
    assert_eq!(counts, [10, 10, 10]);
    let metrics = get(&format!("http://{}/metrics", gateway.admin)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for instance in &instances {
        let series = format!(
            r#"gateway_upstream_requests_total{{upstream="users",endpoint="{}",status_class="2xx"}} 10"#,
            instance.addr
        );
        assert!(text.contains(&series), "{series} in\n{text}");
    }
    let config = get(&format!("http://{}/admin/config", gateway.admin)).await.json();
    let endpoints = config["upstreams"]["users"]["endpoints"].as_array().expect("a list").clone();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints[0]["address"], instances[0].addr.to_string());
    assert_eq!(config["upstreams"]["users"]["balance"], "round_robin");
}

/// Requests to `/api/users/...` an instance got (health checks left out).
fn served(instance: &RunningMock) -> usize {
    instance.requests().iter().filter(|r| r.path.starts_with("/api/users")).count()
}

/// One field of each of `users`' endpoints on `/admin/config`.
async fn endpoint_field(gateway: &TestGateway, field: &str) -> Vec<String> {
    let config = get(&gateway.admin_url("/admin/config")).await.json();
    config["upstreams"]["users"]["endpoints"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn endpoint_states(gateway: &TestGateway) -> Vec<String> {
    endpoint_field(gateway, "state").await
}

const HEALTH: &str = "health_check = { path = \"/healthz\", interval_ms = 100, timeout_ms = 80, unhealthy_after = 2, healthy_after = 2 }";

#[tokio::test]
async fn an_instance_failing_its_health_check_gets_no_requests_until_it_passes_again() {
    let (instances, gateway, _monolith) = three_instances_with(HEALTH).await;
    instances[1].set_status(503);
    assert!(
        eventually_async(|| async { endpoint_states(&gateway).await[1] == "unhealthy" }).await,
        "b is taken out after two failed checks"
    );
    let before = served(&instances[1]);
    for i in 0..30 {
        assert_eq!(get(&gateway.url(&format!("/api/users/{i}"))).await.status, 200);
    }
    assert_eq!(served(&instances[1]), before, "no request reached the unhealthy instance");
    let metrics = get(&format!("http://{}/metrics", gateway.admin)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains(r#"gateway_upstream_endpoints{upstream="users",state="unhealthy"} 1"#), "{text}");

    instances[1].set_status(200);
    assert!(
        eventually_async(|| async { endpoint_states(&gateway).await[1] == "healthy" }).await,
        "b comes back after two passed checks"
    );
    for i in 0..30 {
        get(&gateway.url(&format!("/api/users/{i}"))).await;
    }
    assert!(served(&instances[1]) > before, "b serves again");
}

#[tokio::test]
async fn an_instance_answering_5xx_is_ejected_passively() {
    let (instances, gateway, _monolith) =
        three_instances_with("eject = { consecutive_failures = 2, seconds = 60 }\nbalance = \"round_robin\"").await;
    instances[2].set_status(500);
    for i in 0..12 {
        get(&gateway.url(&format!("/api/users/{i}"))).await;
    }
    let failures_seen = served(&instances[2]);
    assert_eq!(failures_seen, 2, "ejected after its second failure in a row");
    assert_eq!(endpoint_states(&gateway).await, ["healthy", "healthy", "ejected"]);
    for i in 0..12 {
        assert_eq!(get(&gateway.url(&format!("/api/users/{i}"))).await.status, 200);
    }
    assert_eq!(served(&instances[2]), failures_seen, "no request reached the ejected instance");
}

#[tokio::test]
async fn with_no_healthy_endpoint_the_monolith_answers_and_the_fallback_is_counted() {
    let (instances, gateway, monolith) = three_instances_with(HEALTH).await;
    for instance in &instances {
        instance.set_status(503);
    }
    assert!(
        eventually_async(|| async { endpoint_states(&gateway).await.iter().all(|s| s == "unhealthy") }).await,
        "all three are taken out"
    );
    let reply = get(&gateway.url("/api/users/1")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["served_by"], "monolith");
    assert_eq!(monolith.count(), 1);
    let metrics = get(&format!("http://{}/metrics", gateway.admin)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains(r#"gateway_fallbacks_total{route="users",reason="no_healthy_endpoint"} 1"#), "{text}");
}

/// Polls an async condition for up to five seconds.
async fn eventually_async<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if condition().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Mock instances on one port at 127.0.0.2, 127.0.0.3, ... (A records carry no port, so
/// discovered instances share one; these are loopback addresses, like 127.0.0.1).
async fn on_one_port(count: u8, make: impl Fn(usize) -> MockUpstream) -> Vec<RunningMock> {
    'attempt: for _ in 0..20 {
        let Some(first) = make(0).start_at(std::net::SocketAddr::from(([127, 0, 0, 2], 0))).await else { continue };
        let port = first.addr.port();
        let mut instances = vec![first];
        for i in 1..count {
            match make(usize::from(i)).start_at(std::net::SocketAddr::from(([127, 0, 0, 2 + i], port))).await {
                Some(instance) => instances.push(instance),
                None => continue 'attempt,
            }
        }
        return instances;
    }
    panic!("no port free on every loopback address after 20 attempts");
}

fn ipv4(instance: &RunningMock) -> std::net::Ipv4Addr {
    match instance.addr.ip() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(ip) => panic!("the instances listen on IPv4, not {ip}"),
    }
}

/// A gateway whose `users` upstream is discovered through `dns`, refreshed every second.
async fn discovered_behind(dns: &TestDns, port: u16, monolith: &RunningMock) -> TestGateway {
    let config = format!(
        "{}\n[upstreams.users]\ndiscovery = {{ dns = \"users.service.test:{port}\", refresh_seconds = 1, nameservers = [\"{}\"] }}\n\
         balance = \"round_robin\"\nhost_header = \"upstream\"\n\
         [[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n",
        base_config(&monolith.url(), ""),
        dns.addr
    );
    let gateway = TestGateway::start(&config).await;
    assert!(
        eventually_async(|| async { get(&gateway.admin_url("/ready")).await.status == 200 }).await,
        "ready once the first lookup is done"
    );
    gateway
}

async fn discovered_addresses(gateway: &TestGateway) -> Vec<String> {
    endpoint_field(gateway, "address").await
}

#[tokio::test]
async fn dns_discovery_follows_a_changed_answer_and_keeps_the_last_one_when_a_lookup_fails() {
    let monolith = MockUpstream::new("monolith").start().await;
    let instances = on_one_port(3, |i| MockUpstream::new(["users-a", "users-b", "users-c"][i])).await;
    let port = instances[0].addr.port();
    let dns = TestDns::start(&[ipv4(&instances[0]), ipv4(&instances[1])]).await;
    let gateway = discovered_behind(&dns, port, &monolith).await;
    let addresses: Vec<String> = instances.iter().map(|i| i.addr.to_string()).collect();
    assert_eq!(discovered_addresses(&gateway).await, addresses[..2]);

    let send_30 = || async {
        for i in 0..30 {
            assert_eq!(get(&gateway.url(&format!("/api/users/{i}"))).await.status, 200);
        }
    };
    let counts = || instances.iter().map(served).collect::<Vec<_>>();
    send_30().await;
    assert_eq!(counts(), [15, 15, 0], "two records, two endpoints");
    for request in instances[0].requests() {
        assert_eq!(request.headers["host"], format!("users.service.test:{port}"), "the name is the Host");
    }

    // Two addresses become three: the third starts receiving requests.
    dns.set_answer(&instances.iter().map(ipv4).collect::<Vec<_>>());
    assert!(
        eventually_async(|| async { discovered_addresses(&gateway).await == addresses }).await,
        "the third address becomes an endpoint"
    );
    send_30().await;
    assert_eq!(counts(), [25, 25, 10]);

    // The DNS server breaks: the last answer stays.
    dns.fail();
    let lookups_failed = r#"gateway_discovery_lookups_total{upstream="users",result="error"}"#;
    assert!(
        eventually_async(|| async {
            String::from_utf8_lossy(&get(&gateway.admin_url("/metrics")).await.body).contains(lookups_failed)
        })
        .await,
        "the failed lookup is counted"
    );
    send_30().await;
    assert_eq!(counts(), [35, 35, 20], "every endpoint of the last answer still serves");
    let config = get(&gateway.admin_url("/admin/config")).await.json();
    let discovery = &config["upstreams"]["users"]["discovery"];
    assert_eq!(discovery["dns"], format!("users.service.test:{port}"));
    assert!(discovery["last_error"].as_str().is_some_and(|e| e.contains("users.service.test")), "{discovery}");
    assert!(dns.queries() >= 4, "asked again and again: {}", dns.queries());
    assert_eq!(monolith.count(), 0);
}

#[tokio::test]
async fn an_endpoint_dropped_from_the_answer_finishes_the_requests_it_has() {
    let monolith = MockUpstream::new("monolith").start().await;
    let instances = on_one_port(2, |i| match i {
        0 => MockUpstream::new("users-old").latency(std::time::Duration::from_millis(1500)),
        _ => MockUpstream::new("users-new"),
    })
    .await;
    let dns = TestDns::start(&[ipv4(&instances[0])]).await;
    let gateway = discovered_behind(&dns, instances[0].addr.port(), &monolith).await;
    let url = gateway.url("/api/users/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    assert!(
        eventually_async(|| async { instances[0].count() == 1 }).await,
        "the slow request reached the old instance"
    );

    dns.set_answer(&[ipv4(&instances[1])]);
    assert!(
        eventually_async(|| async { discovered_addresses(&gateway).await == [instances[1].addr.to_string()] }).await,
        "the old instance is gone from the endpoints"
    );
    let reply = get(&gateway.url("/api/users/fast")).await;
    assert_eq!(reply.json()["served_by"], "users-new");
    let reply = in_flight.await.expect("the request task ran");
    assert_eq!(reply.status, 200, "the request sent before the change finished");
    assert_eq!(reply.json()["served_by"], "users-old");
}
