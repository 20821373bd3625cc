//! Noise learning: fields that differ between two answers of the monolith itself to the
//! same request (timestamps, request ids, random orderings) are not the service's fault.
//! `learn_noise` sends a sampled request to the monolith twice; every pointer where the two
//! answers differ is learned, with a count, and left out of later comparisons.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::compare::walk;
use crate::pointer::to_pointer;

/// Most pointers learned per route: a monolith that answers differently everywhere (a
/// non-JSON page, a random document) cannot grow the table without bound.
pub const MAX_NOISE_POINTERS: usize = 1_000;

/// The noise learned for one route: pointer -> how many monolith pairs differed there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Noise {
    learned: BTreeMap<String, u64>,
    /// Pairs of monolith answers compared.
    samples: u64,
}

impl Noise {
    /// Learns from two monolith answers to the same request; returns how many pointers
    /// were new.
    pub fn learn(&mut self, first: &Value, second: &Value) -> usize {
        self.samples += 1;
        let mut new = 0;
        let learned = &mut self.learned;
        walk(Some(first), Some(second), &mut Vec::new(), &mut |path, _, _| {
            let pointer = to_pointer(path);
            if let Some(count) = learned.get_mut(&pointer) {
                *count += 1;
            } else if learned.len() < MAX_NOISE_POINTERS {
                learned.insert(pointer, 1);
                new += 1;
            }
        });
        new
    }

    /// True when the monolith itself was seen to differ at `pointer` (or above it: a
    /// subtree that differs as a whole, such as an array of different length).
    pub fn is_noise(&self, pointer: &str) -> bool {
        if self.learned.is_empty() {
            return false;
        }
        let mut at = pointer;
        loop {
            if self.learned.contains_key(at) {
                return true;
            }
            match at.rfind('/') {
                Some(cut) if cut > 0 => at = &at[..cut],
                _ => return false,
            }
        }
    }

    /// The learned pointers with their counts, most often seen first.
    pub fn fields(&self) -> Vec<(&str, u64)> {
        let mut fields: Vec<(&str, u64)> = self.learned.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        fields.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        fields
    }

    /// Pairs of monolith answers learned from.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Answer, Body, Ignore, compare};

    #[test]
    fn fields_that_differ_between_two_monolith_answers_are_learned_with_counts() {
        let mut noise = Noise::default();
        assert_eq!(
            noise.learn(&json!({"id": 1, "at": "10:00", "rid": "a"}), &json!({"id": 1, "at": "10:01", "rid": "b"})),
            2
        );
        assert_eq!(noise.learn(&json!({"id": 1, "at": "10:02"}), &json!({"id": 1, "at": "10:03"})), 0);
        assert_eq!(noise.fields(), [("/at", 2), ("/rid", 1)]);
        assert_eq!(noise.samples(), 2);
        assert!(noise.is_noise("/at") && !noise.is_noise("/id"));
    }

    #[test]
    fn learned_noise_suppresses_those_fields_and_nothing_else() {
        let mut noise = Noise::default();
        noise.learn(&json!({"at": 1, "list": [1, 2]}), &json!({"at": 2, "list": [1]}));
        let monolith = Answer {
            status: 200,
            content_type: Some("application/json".into()),
            body: Body::Json(json!({"at": 1, "name": "Ann", "list": [1, 2]})),
        };
        let service =
            Answer { body: Body::Json(json!({"at": 9, "name": "Bob", "list": [3, 2, 1]})), ..monolith.clone() };
        let c = compare(&monolith, &service, &Ignore::default(), &noise);
        let pointers: Vec<&str> = c.differences.iter().map(|d| d.pointer.as_str()).collect();
        // /at is noise; /list/1 was learned (the lengths differed) but is equal here; /list/0
        // and /list/2 were never learned, so they count.
        assert_eq!(pointers, ["/list/0", "/list/2", "/name"]);
        assert!(noise.is_noise("/list/1/deeper"), "below a learned pointer is noise too");
    }

    #[test]
    fn the_table_is_bounded() {
        let mut noise = Noise::default();
        let wide = |offset: u64| Value::Object((0..3_000).map(|i| (format!("k{i}"), json!(i + offset))).collect());
        noise.learn(&wide(0), &wide(1));
        assert_eq!(noise.fields().len(), MAX_NOISE_POINTERS);
    }
}
