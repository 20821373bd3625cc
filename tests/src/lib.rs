//! End-to-end tests: real mock upstreams and the real gateway on 127.0.0.1:0, real HTTP.
//!
//! [`harness`] holds the building blocks (mock upstreams that record what they receive,
//! a gateway started from a TOML string, an HTTP client and a raw-socket client for
//! requests a well-behaved client would never send). The tests live in `tests/` behind
//! `#[cfg(test)]`, so they all link into one binary.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod harness;

#[cfg(test)]
mod tests;
