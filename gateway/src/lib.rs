//! The strangler-fig gateway: the data plane, config, admin listener and CLI commands.
//!
//! # How to use
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let snapshot = gateway::config::load(std::path::Path::new("routes.toml"), 1)?;
//! let running = gateway::server::start(snapshot).await?;
//! println!("serving on {:?}", running.listen_addr);
//! running.shutdown();
//! running.wait().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

// Dependencies point one way (checked by `tests/src/tests/layout.rs`):
//   cli, server -> proxy -> upstream, snapshot, routing -> telemetry, clock
//   config -> snapshot, upstream, routing, policies
pub mod cli;
pub(crate) mod clock;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod migration;
pub(crate) mod policies;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
