//! `request_headers` / `response_headers = { set = { NAME = VALUE }, remove = [NAME] }`.
//!
//! Edits apply on both sides alike, so doing them again (a fallback replay) changes
//! nothing. Headers the gateway owns cannot be named: the config says which and why.

use std::collections::BTreeMap;
use std::ops::Range;

use gateway_plugin_api::config::ConfigErrors;
use gateway_plugin_api::headers::gateway_owned;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use toml::Spanned;

/// Most names one edit may set or remove: a guard against a config generated wrong.
const MAX_EDITS: usize = 64;

/// The file form of one header edit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeaderEdits {
    /// Headers to set, replacing any the message carries.
    #[serde(default)]
    pub set: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Headers to remove.
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

/// Header edits, validated: what to remove, then what to set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Applies the edits to `headers`. Idempotent.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// True when the edits change nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// The headers set, in name order.
    pub fn set(&self) -> &[(HeaderName, HeaderValue)] {
        &self.set
    }

    /// The headers removed, in file order.
    pub fn remove(&self) -> &[HeaderName] {
        &self.remove
    }

    /// Checks `file` (the value of `key`, at `whole` in the file). `claim_headers` are the
    /// headers the gateway fills from verified claims, owned like its other headers.
    pub fn compile(
        file: FileHeaderEdits,
        whole: Range<usize>,
        claim_headers: &[HeaderName],
        errors: &mut ConfigErrors,
    ) -> Option<HeaderEdits> {
        let mut problems = Vec::new();
        if file.set.len() + file.remove.len() > MAX_EDITS {
            problems.push((whole.clone(), format!("at most {MAX_EDITS} headers per edit")));
        }
        let mut edits = HeaderEdits::default();
        for (name, value) in &file.set {
            let Some(header) = editable(name, "set", claim_headers, &mut problems) else { continue };
            if edits.set.iter().any(|(seen, _)| *seen == header) {
                problems.push((name.span(), format!("\"{header}\" is set twice (header names ignore case)")));
                continue;
            }
            match HeaderValue::from_str(value.get_ref()) {
                Ok(value) => edits.set.push((header, value)),
                Err(_) => problems.push((
                    value.span(),
                    "a header value is visible ASCII, spaces and tabs only (no line breaks or control characters)"
                        .to_owned(),
                )),
            }
        }
        for name in &file.remove {
            let Some(header) = editable(name, "remove", claim_headers, &mut problems) else { continue };
            if edits.set.iter().any(|(set, _)| *set == header) {
                problems.push((
                    name.span(),
                    format!("\"{header}\" is both set and removed: set already replaces what the message carries"),
                ));
            } else if !edits.remove.contains(&header) {
                edits.remove.push(header);
            }
        }
        let valid = problems.is_empty();
        for (at, message) in problems {
            errors.error(at, message);
        }
        valid.then_some(edits)
    }
}

/// `name` as a header the config may edit, or a problem saying why not.
fn editable(
    name: &Spanned<String>,
    verb: &str,
    claim_headers: &[HeaderName],
    problems: &mut Vec<(Range<usize>, String)>,
) -> Option<HeaderName> {
    let text = name.get_ref();
    let Ok(header) = HeaderName::from_bytes(text.as_bytes()) else {
        problems.push((
            name.span(),
            format!("\"{text}\" is not a header name (letters, digits and - _ . ! # $ % & ' * + ^ ` | ~)"),
        ));
        return None;
    };
    let why = if claim_headers.contains(&header) {
        Some("the gateway fills it from the verified token (auth.claims_to_headers)")
    } else {
        gateway_owned(&header)
    };
    match why {
        Some(why) => {
            problems.push((name.span(), format!("cannot {verb} \"{header}\": {why}")));
            None
        }
        None => Some(header),
    }
}
