//! Segments: whole groups of callers (employees, beta testers) that always get the service.

use std::sync::Arc;

use gateway_plugin_api::ClaimValue;
use http::HeaderName;

use crate::Caller;

/// How a claim is compared. Comparisons are exact (case-sensitive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimTest {
    /// The value equals this.
    Equals(String),
    /// The value ends with this (`@company.com`).
    EndsWith(String),
    /// The value contains this.
    Contains(String),
    /// The value is one of these.
    OneOf(Vec<String>),
}

impl ClaimTest {
    fn accepts(&self, value: &str) -> bool {
        match self {
            ClaimTest::Equals(expected) => value == expected,
            ClaimTest::EndsWith(suffix) => value.ends_with(suffix.as_str()),
            ClaimTest::Contains(part) => value.contains(part.as_str()),
            ClaimTest::OneOf(options) => options.iter().any(|o| o == value),
        }
    }
}

/// What puts a caller in a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentMatch {
    /// A claim of the verified token; for an array claim, any item.
    Claim {
        /// Claim name.
        claim: String,
        /// The comparison.
        test: ClaimTest,
    },
    /// A request header equal to a value. The caller controls headers, so this suits
    /// opt-in canaries (`x-canary: true`), not access control.
    Header {
        /// Header name.
        header: HeaderName,
        /// Required value.
        equals: String,
    },
}

/// A named segment, from `[segments.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The name, reported as the reason.
    pub name: Arc<str>,
    /// The rule.
    pub matcher: SegmentMatch,
}

impl Segment {
    /// Whether the caller belongs to this segment.
    pub fn matches(&self, caller: &Caller<'_>) -> bool {
        match &self.matcher {
            SegmentMatch::Claim { claim, test } => match caller.identity.and_then(|i| i.claims.get(claim)) {
                Some(ClaimValue::Text(value)) => test.accepts(value),
                Some(ClaimValue::List(items)) => items.iter().any(|item| test.accepts(item)),
                None => false,
            },
            SegmentMatch::Header { header, equals } => {
                caller.headers.get_all(header).iter().any(|v| v.as_bytes() == equals.as_bytes())
            }
        }
    }
}
