//! Shadow traffic: is the service's answer the monolith's answer?
//!
//! This crate holds the comparison, with no sockets: [`compare`] takes both answers
//! (status, content type, body) and says where they differ, as RFC 6901 JSON pointers,
//! after leaving out the pointers the route ignores ([`Ignore`]) and the fields learned
//! to differ between two answers of the monolith itself ([`Noise`], the way Diffy tells
//! noise from real differences). JSON bodies are compared as trees (object key order
//! never matters); other bodies byte for byte. [`ShadowReport`] keeps a route's results:
//! match rate, top pointers, status pairs, both sides' latency and the last mismatches,
//! with the request's secrets redacted.
//!
//! ```toml
//! [[routes]]
//! name = "users"
//! # ...
//! shadow = { percent = 10.0, methods = ["GET", "HEAD"], ignore = ["/updated_at"], learn_noise = true, max_in_flight = 64 }
//! ```
//!
//! [`ShadowPolicy`] owns that key; its [`ShadowPlugin`] takes part in the `mirror` phase:
//! for a request the monolith is chosen to answer on a shadowed route, of a listed method,
//! and picked by `percent`, it hands the gateway a copy to send to the route's service once
//! the monolith's head is in hand. The gateway streams the monolith's body to the client
//! and into the comparison (up to `max_body_bytes`), spawns the copy, and never waits for
//! it. Copies beyond `max_in_flight` are dropped and counted.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

mod compare;
mod noise;
mod plugin;
mod pointer;
mod policy;
mod report;

pub use compare::{Answer, Body, Comparison, Difference, MAX_SHOWN_CHARS, compare, json_differences};
pub use noise::{MAX_NOISE_POINTERS, Noise};
pub use plugin::{
    NOISE_FIRST_SAMPLES, NOISE_SAMPLE_EVERY, PointerCount, SHADOW_HEADER, SHADOW_REQUESTS_TOTAL, ShadowPlugin,
    ShadowSummary, StatusPair,
};
pub use pointer::{Ignore, PointerError, escape_segment};
pub use policy::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_IN_FLIGHT, FileShadow, MAX_BODY_BYTES_LIMIT, MAX_IN_FLIGHT_LIMIT, ROUTE_KEY,
    RouteShadow, ShadowPolicy,
};
pub use report::{
    Latency, MAX_SAMPLES, MatchPoint, MatchWindow, REDACTED, Sample, ShadowReport, TOP_POINTERS, WINDOW_SLOT_SECONDS,
};
