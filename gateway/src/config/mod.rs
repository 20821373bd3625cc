//! `routes.toml`: raw file types ([`file`]) -> validation and compilation ([`compile`],
//! one submodule per section; per-route policies validate their own keys) -> an immutable
//! [`crate::snapshot::Snapshot`]. [`watch`] turns file changes into reload triggers and
//! [`audit`] records what each reload changed.

pub(crate) mod audit;
mod compile;
pub mod defaults;
mod error;
pub mod file;
pub(crate) mod watch;

pub use compile::{compile, load, load_next};
pub use error::{ConfigError, Diagnostic};
