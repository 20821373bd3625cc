//! The real binary under SIGTERM: it finishes the request in flight, then exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// An upstream that answers one request after `delay`, reporting when the request arrived.
fn slow_upstream(delay: Duration) -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let addr = listener.local_addr().expect("a bound listener has an address");
    let (arrived, arrived_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the gateway connects");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        arrived.send(()).expect("the test is waiting");
        std::thread::sleep(delay);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ndrained");
    });
    (addr, arrived_rx)
}

/// Starts `gateway run --config PATH`; its stderr (JSON log lines) arrives on the channel.
fn spawn_gateway(config: &std::path::Path) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["run", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the gateway binary");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

#[test]
fn sigterm_drains_the_in_flight_request_and_exits_zero() {
    let (upstream, arrived) = slow_upstream(Duration::from_millis(700));
    let dir = std::env::temp_dir().join(format!("gateway-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let config = dir.join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndefault_upstream = \"monolith\"\n\
             workers = 1\nshutdown_grace_ms = 5000\n[upstreams.monolith]\nurl = \"http://{upstream}\"\n"
        ),
    )
    .expect("write the config");

    let (mut child, lines) = spawn_gateway(&config);
    let started = lines.recv_timeout(Duration::from_secs(10)).expect("the gateway logs its start");
    let started: serde_json::Value = serde_json::from_str(&started).expect("logs are JSON lines");
    assert_eq!(started["message"], "gateway started", "{started}");
    let listen: SocketAddr =
        started["listen"].as_str().expect("the listen address is logged").parse().expect("an address");

    let mut client = TcpStream::connect(listen).expect("connect to the gateway");
    client.set_read_timeout(Some(Duration::from_secs(10))).expect("set a read timeout");
    client.write_all(b"GET /report HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("send the request");
    arrived.recv_timeout(Duration::from_secs(10)).expect("the request reaches the upstream");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
    assert!(status.success());

    let mut reply = String::new();
    client.read_to_string(&mut reply).expect("read the reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "the in-flight request completes during the drain: {reply}");
    assert!(reply.ends_with("drained"), "{reply}");

    let exit = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            child.try_wait().expect("poll the child")
        })
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("the gateway did not exit within 10 s of SIGTERM")
        });
    assert_eq!(exit.code(), Some(0), "exit 0 after a clean drain");
    assert!(TcpStream::connect(listen).is_err(), "nothing listens after exit");

    // The request's access line was written before the exit (the log thread is flushed).
    let access: Vec<serde_json::Value> = lines
        .try_iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .filter(|line| line["message"] == "access")
        .collect();
    assert_eq!(access.len(), 1, "one access line: {access:?}");
    let line = &access[0];
    assert_eq!((line["method"].as_str(), line["path"].as_str()), (Some("GET"), Some("/report")), "{line}");
    assert_eq!((line["status"].as_u64(), line["level"].as_str()), (Some(200), Some("INFO")), "{line}");
    assert_eq!((line["target"].as_str(), line["upstream"].as_str()), (Some("monolith"), Some("monolith")), "{line}");
    assert!(line["duration_ms"].as_f64().is_some_and(|ms| ms >= 700.0), "the upstream took 700 ms: {line}");
    assert!(line["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{line}");
    assert!(line["timestamp"].as_str().is_some_and(|t| t.len() == 27 && t.ends_with('Z')), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// GET `path` on `addr` with a bare HTTP/1.1 client; returns the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set a read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    reply.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

#[test]
fn sighup_rereads_the_config() {
    let (upstream, _arrived) = slow_upstream(Duration::ZERO);
    let base = std::env::temp_dir().join(format!("gateway-sighup-{}", std::process::id()));
    let (watched, elsewhere) = (base.join("watched"), base.join("elsewhere"));
    std::fs::create_dir_all(&watched).expect("mkdir");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let target = elsewhere.join("routes.toml");
    let config = |percent: u32| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndefault_upstream = \"monolith\"\nworkers = 1\n\
             [upstreams.monolith]\nurl = \"http://{upstream}\"\n\
             [[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"monolith\"\n\
             rollout_percent = {percent}\nsticky = \"header:x-user\"\n"
        )
    };
    std::fs::write(&target, config(10)).expect("write");
    // A symlink into a directory the gateway does not watch: only SIGHUP sees edits.
    let link = watched.join("routes.toml");
    std::os::unix::fs::symlink(&target, &link).expect("link");

    let (mut child, lines) = spawn_gateway(&link);
    let started: serde_json::Value =
        serde_json::from_str(&lines.recv_timeout(Duration::from_secs(10)).expect("a start line")).expect("JSON");
    let admin: SocketAddr = started["admin"].as_str().expect("admin address").parse().expect("an address");
    let version = || -> u64 {
        let body = http_get(admin, "/admin/config");
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON")["version"].as_u64().expect("a version")
    };
    assert_eq!(version(), 1);

    std::fs::write(&target, config(60)).expect("rewrite the target");
    let status = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().expect("run kill");
    assert!(status.success());
    let reloaded = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        version() == 2
    });
    let body = http_get(admin, "/admin/config");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&base);
    assert!(reloaded, "SIGHUP applied the edit: {body}");
    assert!(body.contains(r#""trigger":"sighup""#), "{body}");
    assert!(body.contains(r#""to":"60.00%""#), "{body}");
}
