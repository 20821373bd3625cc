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
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

mod compare;
mod noise;
mod pointer;
mod report;

pub use compare::{Answer, Body, Comparison, Difference, MAX_SHOWN_CHARS, compare, json_differences};
pub use noise::{MAX_NOISE_POINTERS, Noise};
pub use pointer::{Ignore, PointerError, escape_segment};
pub use report::{Latency, MAX_SAMPLES, REDACTED, Sample, ShadowReport, TOP_POINTERS};
