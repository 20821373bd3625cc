//! What a route's shadow has shown so far: how many answers were compared, how many
//! matched, which pointers differ most, which status pairs occur, both sides' latency,
//! and the last mismatches as samples an operator can read (never a secret).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::compare::{Comparison, Difference};

/// Mismatch samples kept per route.
pub const MAX_SAMPLES: usize = 20;
/// Pointers shown in the top list.
pub const TOP_POINTERS: usize = 10;
/// Distinct pointers (and status pairs) counted per route; more are counted as "other".
pub const MAX_COUNTED: usize = 1_000;
/// What replaces a secret of the request (its token, a cookie, an identity header value)
/// wherever it would appear in a sample.
pub const REDACTED: &str = "[redacted]";
/// Upper bounds (ms) of the latency histogram; the last bucket is open.
const LATENCY_BOUNDS_MS: [f64; 15] =
    [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0];

/// A latency histogram with p50/p99 read off its bucket bounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    counts: [u64; LATENCY_BOUNDS_MS.len() + 1],
}

impl Latency {
    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        let bucket = LATENCY_BOUNDS_MS.iter().position(|bound| ms <= *bound).unwrap_or(LATENCY_BOUNDS_MS.len());
        self.counts[bucket] += 1;
    }

    /// The upper bound (ms) of the bucket holding quantile `q` (0..=1); none when empty.
    /// The open last bucket reports the largest bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS[i.min(LATENCY_BOUNDS_MS.len() - 1)]);
            }
        }
        LATENCY_BOUNDS_MS.last().copied()
    }
}

/// One mismatch as `GET /admin/shadow/ROUTE` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The request's method.
    pub method: String,
    /// The path, without its query string.
    pub path: String,
    /// Both statuses, monolith first.
    pub statuses: (u16, u16),
    /// The differences, values cut and secrets redacted.
    pub differences: Vec<Difference>,
}

/// The shadow results of one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShadowReport {
    /// Answers compared.
    pub compared: u64,
    /// Of which matched.
    pub matched: u64,
    pointers: BTreeMap<String, u64>,
    status_pairs: BTreeMap<(u16, u16), u64>,
    /// Differences not counted by pointer because the table was full.
    pub uncounted: u64,
    /// Latency of the monolith's answers.
    pub primary_latency: Latency,
    /// Latency of the service's answers.
    pub shadow_latency: Latency,
    samples: VecDeque<Sample>,
}

impl ShadowReport {
    /// Records one comparison of the request `method path` (a query string is cut off);
    /// `secrets` are the request's values that must never appear in a sample.
    pub fn record(
        &mut self,
        comparison: &Comparison,
        method: &str,
        path: &str,
        latencies: (Duration, Duration),
        secrets: &[&str],
    ) {
        self.compared += 1;
        self.primary_latency.record(latencies.0);
        self.shadow_latency.record(latencies.1);
        let pairs = self.status_pairs.len();
        match self.status_pairs.get_mut(&comparison.statuses) {
            Some(count) => *count += 1,
            None if pairs < MAX_COUNTED => {
                self.status_pairs.insert(comparison.statuses, 1);
            }
            None => {}
        }
        if comparison.matched() {
            self.matched += 1;
            return;
        }
        for difference in &comparison.differences {
            let known = self.pointers.len();
            match self.pointers.get_mut(&difference.pointer) {
                Some(count) => *count += 1,
                None if known < MAX_COUNTED => {
                    self.pointers.insert(difference.pointer.clone(), 1);
                }
                None => self.uncounted += 1,
            }
        }
        let redact = |text: &str| {
            secrets
                .iter()
                .filter(|s| !s.is_empty())
                .fold(text.to_owned(), |text, secret| text.replace(secret, REDACTED))
        };
        let path = path.split('?').next().unwrap_or_default();
        let sample = Sample {
            method: method.to_owned(),
            path: redact(path),
            statuses: comparison.statuses,
            differences: comparison
                .differences
                .iter()
                .map(|d| Difference {
                    pointer: redact(&d.pointer),
                    primary: redact(&d.primary),
                    shadow: redact(&d.shadow),
                })
                .collect(),
        };
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// Matched ÷ compared; none before the first comparison.
    pub fn match_rate(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.matched as f64 / self.compared as f64)
    }

    /// The pointers that differ most often, at most [`TOP_POINTERS`], most frequent first.
    pub fn top_pointers(&self) -> Vec<(&str, u64)> {
        let mut top: Vec<(&str, u64)> = self.pointers.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(TOP_POINTERS);
        top
    }

    /// Every status pair seen (monolith, service) with its count.
    pub fn status_pairs(&self) -> impl Iterator<Item = ((u16, u16), u64)> + '_ {
        self.status_pairs.iter().map(|(pair, count)| (*pair, *count))
    }

    /// The last mismatches, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }
}

/// Width of one slot of the match-rate window.
pub const WINDOW_SLOT_SECONDS: u64 = 15;
/// Slots kept: 15 minutes.
const WINDOW_SLOTS: u64 = 60;

/// Comparisons per 15-second slot of wall-clock time over the last 15 minutes: what the
/// page's match-rate chart draws.
#[derive(Debug, Default)]
pub struct MatchWindow {
    /// (slot, compared, matched), oldest first, only slots that saw a comparison.
    slots: VecDeque<(u64, u64, u64)>,
}

/// One slot of the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MatchPoint {
    /// Answers compared in the slot.
    pub compared: u64,
    /// matched ÷ compared, percent; absent for a slot without comparisons.
    pub match_rate_percent: Option<f64>,
}

impl MatchWindow {
    /// Counts one comparison made at `now_unix` (seconds).
    pub fn record(&mut self, now_unix: u64, matched: bool) {
        let slot = now_unix / WINDOW_SLOT_SECONDS;
        match self.slots.back_mut() {
            Some(last) if last.0 == slot => {
                last.1 += 1;
                last.2 += u64::from(matched);
            }
            _ => self.slots.push_back((slot, 1, u64::from(matched))),
        }
        while self.slots.front().is_some_and(|first| first.0 + WINDOW_SLOTS <= slot) {
            self.slots.pop_front();
        }
    }

    /// The window ending at `now_unix`, one point per slot, oldest first.
    pub fn points(&self, now_unix: u64) -> Vec<MatchPoint> {
        let now = now_unix / WINDOW_SLOT_SECONDS;
        (0..WINDOW_SLOTS)
            .map(|back| now.checked_sub(WINDOW_SLOTS - 1 - back))
            .map(|slot| match slot.and_then(|slot| self.slots.iter().find(|s| s.0 == slot)) {
                Some(&(_, compared, matched)) => {
                    MatchPoint { compared, match_rate_percent: Some(matched as f64 * 100.0 / compared as f64) }
                }
                None => MatchPoint::default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Answer, Body, Ignore, Noise, compare};

    fn comparison(monolith: serde_json::Value, service: serde_json::Value, statuses: (u16, u16)) -> Comparison {
        let answer =
            |status, body| Answer { status, content_type: Some("application/json".into()), body: Body::Json(body) };
        compare(&answer(statuses.0, monolith), &answer(statuses.1, service), &Ignore::default(), &Noise::default())
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn counts_match_rate_top_pointers_and_status_pairs() {
        let mut report = ShadowReport::default();
        assert_eq!(report.match_rate(), None);
        report.record(&comparison(json!({"a": 1}), json!({"a": 1}), (200, 200)), "GET", "/u/1", (MS, MS), &[]);
        for i in 0..3 {
            report.record(
                &comparison(json!({"a": 1, "b": i}), json!({"a": 2, "b": 9}), (200, 200)),
                "GET",
                "/u",
                (MS, MS),
                &[],
            );
        }
        report.record(&comparison(json!({}), json!({}), (200, 500)), "GET", "/u", (MS, 40 * MS), &[]);
        assert_eq!((report.compared, report.matched), (5, 1));
        assert_eq!(report.match_rate(), Some(0.2));
        assert_eq!(report.top_pointers(), [("/a", 3), ("/b", 3), ("status", 1)]);
        assert_eq!(report.status_pairs().collect::<Vec<_>>(), [((200, 200), 4), ((200, 500), 1)]);
        assert_eq!(report.primary_latency.quantile_ms(0.99), Some(1.0));
        assert_eq!(report.shadow_latency.quantile_ms(0.99), Some(50.0));
        assert_eq!(report.shadow_latency.quantile_ms(0.5), Some(1.0));
    }

    #[test]
    fn samples_keep_the_last_twenty_without_query_strings_or_secrets() {
        let mut report = ShadowReport::default();
        let token = "eyJhbGciOiJSUzI1NiJ9.secret.sig";
        for i in 0..25 {
            let c = comparison(
                json!({"echo": format!("Bearer {token}"), "n": i}),
                json!({"echo": "x", "n": -1}),
                (200, 200),
            );
            report.record(&c, "GET", &format!("/u/{i}?access_token={token}"), (MS, MS), &[token, ""]);
        }
        let samples: Vec<&Sample> = report.samples().collect();
        assert_eq!(samples.len(), MAX_SAMPLES);
        assert_eq!(samples[0].path, "/u/5", "the oldest five were dropped; no query string");
        let shown = format!("{samples:?}");
        assert!(!shown.contains(token), "{shown}");
        assert!(samples[0].differences[0].primary.contains(REDACTED));
    }

    #[test]
    fn the_pointer_table_is_bounded() {
        let mut report = ShadowReport::default();
        let wide = |offset: i64| {
            serde_json::Value::Object((0..1_500).map(|i| (format!("k{i:04}"), json!(i + offset))).collect())
        };
        report.record(&comparison(wide(0), wide(1), (200, 200)), "GET", "/", (MS, MS), &[]);
        assert_eq!(report.top_pointers().len(), TOP_POINTERS);
        assert_eq!(report.uncounted, 500);
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn the_window_keeps_fifteen_minutes_slot_by_slot() {
        let mut window = MatchWindow::default();
        let start = 1_000_000 * WINDOW_SLOT_SECONDS;
        window.record(start, true);
        window.record(start + 3, false);
        window.record(start + WINDOW_SLOT_SECONDS, true);
        let points = window.points(start + WINDOW_SLOT_SECONDS);
        assert_eq!(points.len(), 60);
        assert_eq!(points[58], MatchPoint { compared: 2, match_rate_percent: Some(50.0) });
        assert_eq!(points[59], MatchPoint { compared: 1, match_rate_percent: Some(100.0) });
        assert_eq!(points[0], MatchPoint::default());
        // Fifteen minutes later the first slot has left the window.
        let later = start + 60 * WINDOW_SLOT_SECONDS;
        window.record(later, false);
        let points = window.points(later);
        assert!(points.iter().all(|p| p.compared <= 1), "{points:?}");
        assert_eq!(points[59].match_rate_percent, Some(0.0));
        assert_eq!(points[0].match_rate_percent, Some(100.0), "the slot after the first is the oldest left");
    }
}
