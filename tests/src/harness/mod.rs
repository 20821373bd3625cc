//! Test building blocks. Every network wait is bounded by [`IO_TIMEOUT`].

mod client;
mod dns;
mod gateway;
pub mod idp;
mod load;
mod process;
pub mod tokens;
mod upstream;

pub use client::{Reply, get, get_with, raw_exchange, send, send_h2};
pub use dns::TestDns;
pub use gateway::{TestGateway, base_config};
pub use load::{Load, LoadReport, Protocol};
pub use process::{GatewayProcess, gateway_binary};
pub use upstream::{MockUpstream, Recorded, RunningMock};

use std::time::Duration;

/// Longest any single test exchange may take before the test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A recording monolith and a recording `users` service behind the real gateway.
pub struct UsersWorld {
    /// The default upstream.
    pub monolith: RunningMock,
    /// `[upstreams.users]`.
    pub users: RunningMock,
    /// The gateway, serving [`base_config`] + `[upstreams.users]` + `rest`.
    pub gateway: TestGateway,
}

impl UsersWorld {
    /// Starts both mocks and a gateway whose config ends with `rest` (routes, `[auth]`).
    pub async fn start(rest: &str) -> Self {
        let monolith = MockUpstream::new("monolith").start().await;
        let users = MockUpstream::new("users").start().await;
        let config =
            format!("{}\n[upstreams.users]\nurl = \"{}\"\n{rest}", base_config(&monolith.url(), ""), users.url());
        UsersWorld { gateway: TestGateway::start(&config).await, monolith, users }
    }
}

/// An address on loopback where nothing listens (bound once, then released).
pub async fn closed_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
    listener.local_addr().expect("a bound listener has an address")
}

/// Polls `condition` every 10 ms until it holds, for at most [`IO_TIMEOUT`]; returns
/// whether it held.
pub async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Like [`eventually`], for a condition that has to await (an admin request).
pub async fn eventually_async<F: std::future::Future<Output = bool>>(mut condition: impl FnMut() -> F) -> bool {
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition().await
}
