//! The strangler-fig gateway: the data plane, config, admin listener and CLI commands.
//!
//! # How to use
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let snapshot = gateway::config::load(std::path::Path::new("routes.toml"), 1)?;
//! let running = gateway::server::start(snapshot).await?;
//! println!("serving on {}", running.listen_addr);
//! running.shutdown();
//! running.wait().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod admin;
pub mod aggregate;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod explain;
pub mod headers;
pub mod idle;
pub mod migration;
pub mod normalize;
pub mod pipeline;
pub mod preview;
pub mod reload;
pub mod report;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod token;
pub mod upstream;
