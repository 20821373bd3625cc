//! Operations without a dropped request, on the real binary: a binary upgrade with
//! `kill -USR2` under keep-alive load of both protocols, a failed upgrade that leaves the
//! old process serving, a SIGTERM drain that completes every request sent before it, and
//! systemd socket activation (`LISTEN_FDS`).

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn process_config(monolith: &RunningMock, server_extra: &str) -> String {
    base_config(&monolith.url(), &format!("shutdown_grace_ms = 5000\npid_file = \"gateway.pid\"\n{server_extra}"))
}

/// Lets the load run until the clients have made `more` further successful requests.
async fn until_more_requests(load: &Load, more: u64) {
    let target = load.ok() + more;
    assert!(eventually(|| load.ok() >= target).await, "the clients kept being served");
}

#[tokio::test]
async fn a_usr2_upgrade_hands_over_the_sockets_and_loses_no_request() {
    let monolith = MockUpstream::new("monolith").start().await;
    let mut gateway = GatewayProcess::start(&process_config(&monolith, "")).await;
    let old_pid = gateway.pid;
    let pid_file = gateway.dir().join("gateway.pid");
    assert_eq!(std::fs::read_to_string(&pid_file).expect("pid file").trim(), old_pid.to_string());

    let http1 = Load::start(gateway.listen, "/api/anything", 4, Protocol::Http1);
    let http2 = Load::start(gateway.listen, "/api/anything", 2, Protocol::Http2);
    until_more_requests(&http1, 200).await;
    until_more_requests(&http2, 100).await;

    gateway.signal("USR2");
    let upgraded = gateway
        .wait_for_log(|line| line["message"] == "upgrade: the new process serves; draining this one")
        .await
        .unwrap_or_else(|| panic!("no upgrade:\n{}", gateway.log()));
    let new_pid = upgraded["new_pid"].as_u64().expect("the new pid") as u32;
    assert_ne!(new_pid, old_pid);
    let exit = gateway.wait_exit(Duration::from_secs(10)).await.expect("the old process exits after its drain");
    assert!(exit.success(), "the old process exits 0: {exit:?}");
    gateway.follow(new_pid);
    // The new process serves the same sockets: the clients reconnect to it.
    until_more_requests(&http1, 200).await;
    until_more_requests(&http2, 100).await;
    let (http1, http2) = (http1.stop().await, http2.stop().await);
    assert_eq!((http1.failed(), http2.failed()), (0, 0), "not one request failed: {http1:?}\n{http2:?}");
    assert!(http1.told_to_close >= 4, "draining HTTP/1.1 connections were told to close: {http1:?}");

    assert!(GatewayProcess::is_running(new_pid), "the new process runs");
    let started = gateway.log_lines();
    let new = started
        .iter()
        .find(|line| line["message"] == "gateway started" && line["pid"] == new_pid)
        .expect("the new process logged its start");
    assert_eq!(new["upgraded_from"], old_pid);
    assert_eq!(new["listen"], gateway.listen.to_string(), "the same address, the same socket");
    let inherited = started.iter().filter(|line| line["message"] == "listening on an inherited socket").count();
    assert_eq!(inherited, 2, "the proxy and admin sockets were handed over");
    assert_eq!(std::fs::read_to_string(&pid_file).expect("pid file").trim(), new_pid.to_string(), "it follows");
    let reply = get(&format!("http://{}/ready", gateway.admin)).await;
    assert_eq!(reply.status, 200, "the new process answers on the inherited admin socket");

    // And the new process can be upgraded in turn.
    gateway.signal("USR2");
    let second = gateway
        .wait_for_log(|line| {
            line["message"] == "upgrade: the new process serves; draining this one" && line["new_pid"] != new_pid
        })
        .await;
    assert!(second.is_some(), "a second upgrade:\n{}", gateway.log());
    let third_pid = second.expect("checked")["new_pid"].as_u64().expect("pid") as u32;
    gateway.follow(third_pid);
    assert!(eventually(|| !GatewayProcess::is_running(new_pid)).await, "the second process exited after its drain");
    assert_eq!(get(&format!("http://{}/api/x", gateway.listen)).await.status, 200);
}

#[tokio::test]
async fn a_failed_upgrade_leaves_the_old_process_serving() {
    let monolith = MockUpstream::new("monolith").start().await;
    let config = process_config(&monolith, "");
    let gateway = GatewayProcess::start(&config).await;
    // The new binary would read a broken file (the running one refuses it too).
    std::fs::write(&gateway.config_path, config.replace("[server]", "[server")).expect("break the config");
    gateway.signal("USR2");
    let failed = gateway
        .wait_for_log(|line| line["message"] == "upgrade failed; this process keeps serving")
        .await
        .unwrap_or_else(|| panic!("no failure logged:\n{}", gateway.log()));
    let error = failed["error"].as_str().expect("the reason");
    assert!(error.contains("did not start") && error.contains("routes.toml:"), "the reason names the file: {error}");
    assert!(GatewayProcess::is_running(gateway.pid));
    let load = Load::start(gateway.listen, "/api/still", 2, Protocol::Http1);
    until_more_requests(&load, 50).await;
    assert_eq!(load.stop().await.failed(), 0, "the old process serves on");
    let pid_file = gateway.dir().join("gateway.pid");
    assert_eq!(std::fs::read_to_string(pid_file).expect("pid file").trim(), gateway.pid.to_string());
}

#[tokio::test]
async fn sigterm_completes_every_request_sent_before_it() {
    let monolith = MockUpstream::new("monolith").latency(Duration::from_millis(700)).start().await;
    let mut gateway = GatewayProcess::start(&process_config(&monolith, "")).await;
    // An idle keep-alive connection, and ten slow requests in flight.
    let idle = tokio::net::TcpStream::connect(gateway.listen).await.expect("connect");
    let url = format!("http://{}/slow", gateway.listen);
    let in_flight: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    assert!(eventually(|| monolith.count() == 10).await, "all ten reached the monolith");
    gateway.signal("TERM");
    for request in in_flight {
        let reply = request.await.expect("the request task");
        assert_eq!(reply.status, 200, "a request sent before SIGTERM completes");
        assert_eq!(reply.header("connection"), Some("close"), "and its connection is told to close");
    }
    let exit = gateway.wait_exit(Duration::from_secs(10)).await.expect("the gateway exits after the drain");
    assert!(exit.success(), "exit 0 after a drain: {exit:?}");
    assert!(!gateway.dir().join("gateway.pid").exists(), "the pid file is removed");
    drop(idle);
    let log = gateway.log();
    assert!(log.contains("stopped accepting; draining") && log.contains("gateway stopped"), "{log}");
}

/// Runs the gateway the way systemd does with a .socket unit: the sockets bound by
/// someone else, passed as descriptors 3 and 4 with LISTEN_FDS, LISTEN_PID and
/// LISTEN_FDNAMES. Python binds them and then becomes the gateway (exec keeps the pid).
#[tokio::test]
async fn systemd_socket_activation_serves_the_passed_sockets() {
    let monolith = MockUpstream::new("monolith").start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config_path = dir.path().join("routes.toml");
    std::fs::write(&config_path, process_config(&monolith, "")).expect("write the config");
    let script = r#"
import os, socket, sys
sockets = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    sockets.append(s)
for fd, s in zip((3, 4), sockets):
    os.dup2(s.fileno(), fd)
    os.set_inheritable(fd, True)
os.environ.update(LISTEN_FDS="2", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="listen:admin_listen")
os.execv(sys.argv[1], [sys.argv[1], "run", "--config", sys.argv[2]])
"#;
    let mut command = Command::new("python3");
    command.arg("-c").arg(script).arg(gateway_binary()).arg(&config_path);
    let gateway = GatewayProcess::spawn(dir, config_path, command).await;
    let inherited: Vec<String> = gateway
        .log_lines()
        .iter()
        .filter(|line| line["message"] == "listening on an inherited socket")
        .map(|line| format!("{} {}", line["listener"].as_str().unwrap_or(""), line["from"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(inherited, ["server.listen systemd", "server.admin_listen systemd"], "{}", gateway.log());
    assert_eq!(get(&format!("http://{}/api/activated", gateway.listen)).await.status, 200);
    assert_eq!(get(&format!("http://{}/ready", gateway.admin)).await.status, 200);
}
