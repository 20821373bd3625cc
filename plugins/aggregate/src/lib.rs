//! Dashboard aggregation: one call, several parts fetched in parallel, one JSON reply.
//!
//! This crate holds the pure half: what an aggregate is ([`Aggregate`], [`Part`]) and how
//! part results merge into the reply ([`merge`]). The gateway does the fan-out (through
//! each upstream's pool and breaker) and hands the results here.
//!
//! The reply is a JSON object keyed by part name:
//! - a part that answered 2xx with JSON contributes that JSON;
//! - a non-required part that failed contributes its `default` (or `null`), is named with
//!   its reason in `"_errors"`, and marks the reply partial (`x-gateway-partial: true`);
//! - a required part that failed makes the whole reply a 502 that lists the errors.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

/// Where a part is fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartSource {
    /// A named upstream, always.
    Upstream(Arc<str>),
    /// The side (monolith or service) that this route picks for the caller, so one user
    /// sees one side everywhere.
    Route(Arc<str>),
}

/// One part of an aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// Key in the reply.
    pub name: Arc<str>,
    /// Where it comes from.
    pub source: PartSource,
    /// Path (and query) requested with GET.
    pub path: String,
    /// A failure fails the whole reply (502).
    pub required: bool,
    /// This part's own time limit (never beyond the aggregate's).
    pub timeout: Duration,
    /// Used in place of the part when a non-required part fails; `null` when absent.
    pub default: Option<Value>,
}

/// An aggregate endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// Name: metric label and log field.
    pub name: Arc<str>,
    /// The exact (normalised) path it answers.
    pub path: String,
    /// The whole call never takes longer than this.
    pub timeout: Duration,
    /// Largest part body read (bytes); larger is a failure.
    pub max_part_bytes: usize,
    /// The parts, fetched in parallel.
    pub parts: Vec<Part>,
}

/// How one part went.
#[derive(Clone, Debug, PartialEq)]
pub enum PartResult {
    /// 2xx with a JSON body.
    Answered(Value),
    /// Anything else, with the reason.
    Failed(PartFailure),
}

/// Why a part has no answer; its text is what the reply's `_errors` says for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartFailure {
    /// The part names an upstream or route the config does not have.
    UnknownSource,
    /// The part's upstream has an open circuit breaker.
    BreakerOpen,
    /// The part's upstream could not be connected to.
    ConnectError,
    /// No answer before the part's (or the aggregate's) deadline.
    Timeout,
    /// The exchange broke, or the body could not be read.
    ExchangeError,
    /// A status other than 2xx.
    Status(u16),
    /// The body was larger than `max_part_bytes`.
    TooLarge,
    /// The body was not JSON.
    NotJson,
}

impl std::fmt::Display for PartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartFailure::UnknownSource => f.write_str("unknown_source"),
            PartFailure::BreakerOpen => f.write_str("breaker_open"),
            PartFailure::ConnectError => f.write_str("connect_error"),
            PartFailure::Timeout => f.write_str("timeout"),
            PartFailure::ExchangeError => f.write_str("exchange_error"),
            PartFailure::Status(status) => write!(f, "status {status}"),
            PartFailure::TooLarge => f.write_str("too_large"),
            PartFailure::NotJson => f.write_str("not_json"),
        }
    }
}

/// The merged reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    /// Whether a required part failed (the reply is a 502).
    pub failed: bool,
    /// Whether a non-required part failed (`x-gateway-partial: true`).
    pub partial: bool,
    /// The JSON object: parts by name, and `_errors` when any part failed.
    pub body: Value,
    /// Names of the parts that failed, for metrics.
    pub failed_parts: Vec<Arc<str>>,
}

/// Merges part results (in the aggregate's part order) into the reply.
pub fn merge(aggregate: &Aggregate, results: Vec<PartResult>) -> Merged {
    let mut body = Map::new();
    let mut errors = Map::new();
    let (mut failed, mut partial) = (false, false);
    let mut failed_parts = Vec::new();
    for (part, result) in aggregate.parts.iter().zip(results) {
        match result {
            PartResult::Answered(value) => {
                body.insert(part.name.to_string(), value);
            }
            PartResult::Failed(reason) => {
                failed_parts.push(part.name.clone());
                errors.insert(part.name.to_string(), Value::String(reason.to_string()));
                if part.required {
                    failed = true;
                } else {
                    partial = true;
                    body.insert(part.name.to_string(), part.default.clone().unwrap_or(Value::Null));
                }
            }
        }
    }
    if failed {
        let mut reply = Map::new();
        reply.insert("error".to_owned(), Value::String("aggregate-part-failed".to_owned()));
        reply.insert("message".to_owned(), Value::String(format!("a required part of {} failed", aggregate.name)));
        reply.insert("_errors".to_owned(), Value::Object(errors));
        return Merged { failed, partial, body: Value::Object(reply), failed_parts };
    }
    if !errors.is_empty() {
        body.insert("_errors".to_owned(), Value::Object(errors));
    }
    Merged { failed, partial, body: Value::Object(body), failed_parts }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn part(name: &str, required: bool, default: Option<Value>) -> Part {
        Part {
            name: Arc::from(name),
            source: PartSource::Upstream(Arc::from("up")),
            path: "/stats".to_owned(),
            required,
            timeout: Duration::from_secs(1),
            default,
        }
    }

    fn dashboard(parts: Vec<Part>) -> Aggregate {
        Aggregate {
            name: Arc::from("dashboard"),
            path: "/api/dashboard".to_owned(),
            timeout: Duration::from_secs(2),
            max_part_bytes: 1024,
            parts,
        }
    }

    #[test]
    fn answered_parts_are_keyed_by_name() {
        let agg = dashboard(vec![part("user", true, None), part("orders", false, None)]);
        let merged = merge(&agg, vec![PartResult::Answered(json!({"id": 1})), PartResult::Answered(json!([1, 2]))]);
        assert_eq!(merged.body, json!({"user": {"id": 1}, "orders": [1, 2]}));
        assert!(!merged.failed && !merged.partial);
    }

    #[test]
    fn an_optional_failure_is_its_default_or_null_and_is_named() {
        let agg =
            dashboard(vec![part("user", true, None), part("orders", false, None), part("ads", false, Some(json!([])))]);
        let merged = merge(
            &agg,
            vec![
                PartResult::Answered(json!({"id": 1})),
                PartResult::Failed(PartFailure::Timeout),
                PartResult::Failed(PartFailure::Status(503)),
            ],
        );
        assert!(merged.partial && !merged.failed);
        assert_eq!(
            merged.body,
            json!({"user": {"id": 1}, "orders": null, "ads": [], "_errors": {"orders": "timeout", "ads": "status 503"}})
        );
        assert_eq!(merged.failed_parts.len(), 2);
    }

    #[test]
    fn a_required_failure_fails_the_reply_with_every_error() {
        let agg = dashboard(vec![part("user", true, None), part("orders", false, None)]);
        let merged =
            merge(&agg, vec![PartResult::Failed(PartFailure::ConnectError), PartResult::Failed(PartFailure::NotJson)]);
        assert!(merged.failed);
        assert_eq!(merged.body["_errors"], json!({"user": "connect_error", "orders": "not_json"}));
        assert_eq!(merged.body["error"], "aggregate-part-failed");
    }
}
