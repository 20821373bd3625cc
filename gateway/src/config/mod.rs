//! `routes.toml`: raw file types ([`file`]) -> validation and compilation ([`compile`]) ->
//! an immutable [`crate::snapshot::Snapshot`].

mod compile;
pub mod defaults;
mod error;
pub mod file;

pub use compile::{compile, load, load_next};
pub use error::{ConfigError, Diagnostic};
