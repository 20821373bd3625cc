//! The comparison of two answers: status, content type, then the body as a JSON tree (or
//! bytes when either side is not JSON).

use serde_json::Value;

use crate::noise::Noise;
use crate::pointer::{Ignore, to_pointer};

/// Longest value shown for one side of a difference (characters); longer is cut.
pub const MAX_SHOWN_CHARS: usize = 200;

/// A body as the comparison sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// Parsed JSON.
    Json(Value),
    /// Anything else, or JSON that did not parse; compared byte for byte.
    Bytes(Vec<u8>),
    /// Larger than the cap: only status and content type are compared.
    TooLarge,
}

impl Body {
    /// `bytes` as JSON when the content type says JSON and they parse, else as bytes.
    pub fn read(content_type: Option<&str>, bytes: &[u8]) -> Body {
        let json = content_type.is_some_and(|t| {
            let essence = t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        });
        match json.then(|| serde_json::from_slice(bytes).ok()).flatten() {
            Some(value) => Body::Json(value),
            None => Body::Bytes(bytes.to_vec()),
        }
    }
}

/// One side's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// `content-type`, as sent.
    pub content_type: Option<String>,
    /// The body.
    pub body: Body,
}

/// Where the two answers differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// A JSON pointer into the body; `status`, `content-type` or `body` (non-JSON bodies)
    /// for the parts that are not a JSON field.
    pub pointer: String,
    /// The monolith's value, cut to [`MAX_SHOWN_CHARS`].
    pub primary: String,
    /// The service's value, cut the same way.
    pub shadow: String,
}

/// The outcome of one comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// Both statuses, monolith first.
    pub statuses: (u16, u16),
    /// Every difference left after ignore and noise, in a stable order.
    pub differences: Vec<Difference>,
}

impl Comparison {
    /// True when nothing differs.
    pub fn matched(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares the service's answer (`shadow`) with the monolith's (`primary`).
pub fn compare(primary: &Answer, shadow: &Answer, ignore: &Ignore, noise: &Noise) -> Comparison {
    let mut differences = Vec::new();
    if primary.status != shadow.status {
        differences.push(difference("status", &primary.status.to_string(), &shadow.status.to_string()));
    }
    let essence = |a: &Answer| {
        a.content_type.as_deref().map(|t| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
    };
    if essence(primary) != essence(shadow) {
        let shown = |a: &Answer| a.content_type.clone().unwrap_or_else(|| "(none)".to_owned());
        differences.push(difference("content-type", &shown(primary), &shown(shadow)));
    }
    match (&primary.body, &shadow.body) {
        (Body::Json(a), Body::Json(b)) => differences.extend(json_differences(a, b, ignore, noise)),
        (Body::TooLarge, _) | (_, Body::TooLarge) => {}
        (a, b) => {
            if body_bytes(a) != body_bytes(b) {
                let shown = |body: &Body| String::from_utf8_lossy(&body_bytes(body)).into_owned();
                differences.push(difference("body", &shown(a), &shown(b)));
            }
        }
    }
    Comparison { statuses: (primary.status, shadow.status), differences }
}

fn body_bytes(body: &Body) -> Vec<u8> {
    match body {
        Body::Json(value) => value.to_string().into_bytes(),
        Body::Bytes(bytes) => bytes.clone(),
        Body::TooLarge => Vec::new(),
    }
}

/// The differences between two JSON trees, by pointer, leaving out what `ignore` covers
/// and what `noise` has learned. Object keys are compared as sets (order never matters);
/// arrays index by index; numbers by value (`1` equals `1.0`).
pub fn json_differences(primary: &Value, shadow: &Value, ignore: &Ignore, noise: &Noise) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    walk(Some(primary), Some(shadow), &mut path, &mut |path, a, b| {
        if ignore.covers(path) {
            return;
        }
        let pointer = to_pointer(path);
        if noise.is_noise(&pointer) {
            return;
        }
        let shown = |v: Option<&Value>| v.map_or_else(|| "(absent)".to_owned(), Value::to_string);
        out.push(difference(&pointer, &shown(a), &shown(b)));
    });
    out
}

/// Calls `found` for every place where `a` and `b` differ: a leaf that differs, a key or
/// index present on one side only, or two values of different kinds.
pub(crate) fn walk(
    a: Option<&Value>,
    b: Option<&Value>,
    path: &mut Vec<String>,
    found: &mut impl FnMut(&[String], Option<&Value>, Option<&Value>),
) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))).collect();
            keys.sort_unstable();
            for key in keys {
                path.push(key.clone());
                walk(x.get(key), y.get(key), path, found);
                path.pop();
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                path.push(i.to_string());
                walk(x.get(i), y.get(i), path, found);
                path.pop();
            }
        }
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let same = x == y || x.as_f64().zip(y.as_f64()).is_some_and(|(p, q)| p == q);
            if !same {
                found(path, a, b);
            }
        }
        (a, b) if a == b => {}
        (a, b) => found(path, a, b),
    }
}

fn difference(pointer: &str, primary: &str, shadow: &str) -> Difference {
    Difference { pointer: pointer.to_owned(), primary: cut(primary), shadow: cut(shadow) }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn answer(status: u16, body: Value) -> Answer {
        Answer { status, content_type: Some("application/json".to_owned()), body: Body::Json(body) }
    }

    fn pointers(c: &Comparison) -> Vec<&str> {
        c.differences.iter().map(|d| d.pointer.as_str()).collect()
    }

    #[test]
    fn differences_are_named_by_pointer_with_both_values() {
        let monolith = json!({"id": 7, "name": "Ann", "tags": ["a", "b"], "address": {"city": "Oslo"}});
        let service = json!({"id": 7.0, "name": "Anne", "tags": ["a"], "address": {"city": "Oslo", "zip": "0150"}});
        let c = compare(&answer(200, monolith), &answer(200, service), &Ignore::default(), &Noise::default());
        assert_eq!(pointers(&c), ["/address/zip", "/name", "/tags/1"]);
        assert_eq!(c.differences[0].primary, "(absent)");
        assert_eq!(c.differences[0].shadow, "\"0150\"");
        assert_eq!(c.differences[1].primary, "\"Ann\"");
        assert!(!c.matched());
    }

    #[test]
    fn status_and_content_type_are_compared_before_the_body() {
        let mut service = answer(500, json!({"error": "boom"}));
        service.content_type = Some("text/plain".to_owned());
        let c = compare(&answer(200, json!({"ok": true})), &service, &Ignore::default(), &Noise::default());
        assert_eq!(c.statuses, (200, 500));
        assert_eq!(pointers(&c)[..2], ["status", "content-type"]);
        let charset =
            Answer { content_type: Some("application/json; charset=utf-8".to_owned()), ..answer(200, json!(1)) };
        assert!(compare(&answer(200, json!(1)), &charset, &Ignore::default(), &Noise::default()).matched());
    }

    #[test]
    fn non_json_bodies_compare_as_bytes_and_long_values_are_cut() {
        let text = |body: &str| Answer {
            status: 200,
            content_type: Some("text/html".to_owned()),
            body: Body::read(Some("text/html"), body.as_bytes()),
        };
        assert!(compare(&text("<p>hi</p>"), &text("<p>hi</p>"), &Ignore::default(), &Noise::default()).matched());
        let long = "x".repeat(500);
        let c = compare(&text("<p>hi</p>"), &text(&long), &Ignore::default(), &Noise::default());
        assert_eq!(pointers(&c), ["body"]);
        assert_eq!(c.differences[0].shadow.chars().count(), MAX_SHOWN_CHARS + 1, "cut, with an ellipsis");
        assert_eq!(Body::read(Some("application/problem+json"), b"{\"a\":1}"), Body::Json(json!({"a": 1})));
        assert_eq!(Body::read(Some("application/json"), b"{oops"), Body::Bytes(b"{oops".to_vec()));
    }

    #[test]
    fn too_large_bodies_compare_status_and_type_only() {
        let big = Answer { body: Body::TooLarge, ..answer(200, json!(null)) };
        assert!(compare(&answer(200, json!({"a": 1})), &big, &Ignore::default(), &Noise::default()).matched());
    }

    /// Arbitrary JSON trees, a few levels deep.
    fn tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The object's JSON text with every object's keys written in reverse order.
    fn reversed_text(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.reverse();
                let inner: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), reversed_text(v)))
                    .collect();
                format!("{{{}}}", inner.join(","))
            }
            Value::Array(items) => format!("[{}]", items.iter().map(reversed_text).collect::<Vec<_>>().join(",")),
            other => other.to_string(),
        }
    }

    /// Every pointer to a value inside `value`.
    fn all_paths(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    path.push(k.clone());
                    all_paths(v, path, out);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    path.push(i.to_string());
                    all_paths(v, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn replace_at(value: &mut Value, path: &[String], with: Value) {
        let mut at = value;
        for segment in path {
            at = match at {
                Value::Object(map) => map.get_mut(segment).expect("a path of the tree"),
                Value::Array(items) => &mut items[segment.parse::<usize>().expect("an index")],
                _ => unreachable!("paths end at leaves"),
            };
        }
        *at = with;
    }

    proptest! {
        #[test]
        fn a_tree_always_matches_itself(value in tree()) {
            prop_assert!(json_differences(&value, &value.clone(), &Ignore::default(), &Noise::default()).is_empty());
        }

        #[test]
        fn key_order_never_matters(value in tree()) {
            let reordered: Value = serde_json::from_str(&reversed_text(&value)).expect("valid JSON");
            let monolith = Body::read(Some("application/json"), value.to_string().as_bytes());
            let service = Body::read(Some("application/json"), reversed_text(&value).as_bytes());
            prop_assert_eq!(&monolith, &Body::Json(reordered));
            let a = Answer { status: 200, content_type: Some("application/json".into()), body: monolith };
            let b = Answer { body: service, ..a.clone() };
            prop_assert!(compare(&a, &b, &Ignore::default(), &Noise::default()).matched());
        }

        #[test]
        fn an_ignored_pointer_never_causes_a_mismatch(value in tree(), pick in any::<prop::sample::Index>(), with in tree()) {
            let mut paths = Vec::new();
            all_paths(&value, &mut Vec::new(), &mut paths);
            let path = pick.get(&paths).clone();
            prop_assume!(!path.is_empty());
            let mut changed = value.clone();
            replace_at(&mut changed, &path, with);
            let pointer = to_pointer(&path);
            let ignore = Ignore::new([pointer.as_str()]).expect("a pointer we wrote");
            prop_assert!(json_differences(&value, &changed, &ignore, &Noise::default()).is_empty());
            // And nothing else is hidden: every difference without the ignore is under it.
            for d in json_differences(&value, &changed, &Ignore::default(), &Noise::default()) {
                prop_assert!(d.pointer == pointer || d.pointer.starts_with(&format!("{pointer}/")), "{}", d.pointer);
            }
        }
    }
}
