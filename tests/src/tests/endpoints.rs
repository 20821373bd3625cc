//! Several instances per upstream: `endpoints` spreads requests over every instance, with
//! the power of two choices or in turn, and the `Host` of each is its own endpoint's.

use crate::harness::*;

async fn three_instances_behind(balance: &str) -> ([RunningMock; 3], TestGateway, RunningMock) {
    let monolith = MockUpstream::new("monolith").start().await;
    let instances = [
        MockUpstream::new("users-a").start().await,
        MockUpstream::new("users-b").start().await,
        MockUpstream::new("users-c").start().await,
    ];
    let list: Vec<String> = instances.iter().map(|i| format!("\"{}\"", i.url())).collect();
    let config = format!(
        "{}\n[upstreams.users]\nendpoints = [{}]\nbalance = \"{balance}\"\nhost_header = \"upstream\"\n\
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
    let config = get(&format!("http://{}/admin/config", gateway.admin)).await.json();
    let endpoints = config["upstreams"]["users"]["endpoints"].as_array().expect("a list").clone();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints[0]["address"], instances[0].addr.to_string());
    assert_eq!(config["upstreams"]["users"]["balance"], "round_robin");
}
