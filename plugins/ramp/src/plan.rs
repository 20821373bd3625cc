//! The ramp's state machine, over an injected clock (Unix seconds) and injected evidence:
//! no sockets, no stats types, so every transition is unit tested.
//!
//! ```text
//!            boundary, enough requests, no worse ──► advance (+step) ──► complete at `to`
//!  climbing ─┤ boundary, too few requests ─────────► wait (once per step; evidence keeps adding up)
//!            └ any tick, enough requests, worse ───► rollback (dial = start) | hold ──► halted
//! ```

use std::fmt::Write as _;

/// What a failed check does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFail {
    /// Back to `rollout_percent`, and stop.
    Rollback,
    /// Keep the current step, and stop.
    Hold,
}

impl OnFail {
    /// As written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFail::Rollback => "rollback",
            OnFail::Hold => "hold",
        }
    }
}

/// A route's ramp, as configured (dials in basis points: 2550 is 25.5%).
#[derive(Clone, Debug, PartialEq)]
pub struct RampPlan {
    /// Where it starts: the route's `rollout_percent`.
    pub start: u32,
    /// Where it stops.
    pub to: u32,
    /// How far one step moves the dial.
    pub step: u32,
    /// Steps fall on multiples of this many seconds of wall-clock time.
    pub every_seconds: u64,
    /// Service requests a step must see before it may advance (or trip the guard).
    pub min_requests: u64,
    /// Most the service's error rate may exceed the monolith's, in percentage points.
    pub max_error_rate_increase: f64,
    /// Most the service's p99 may be, as a multiple of the monolith's.
    pub max_p99_ratio: f64,
    /// What a failed check does.
    pub on_fail: OnFail,
}

impl RampPlan {
    /// The dial after `steps` advances.
    pub fn dial_after(&self, steps: u32) -> u32 {
        self.start.saturating_add(self.step.saturating_mul(steps)).min(self.to)
    }

    /// Whether a running ramp keeps its position (and a halt) when a reload brings `next`:
    /// only when nothing about it changed, the route's dial (`start`) included.
    pub fn keeps_position_under(&self, next: &RampPlan) -> bool {
        self == next
    }

    /// Every dial the ramp passes through after its start, in order, ending at `to`.
    pub fn steps(&self) -> Vec<u32> {
        let mut dials = Vec::new();
        let mut dial = self.start;
        while dial < self.to {
            dial = dial.saturating_add(self.step).min(self.to);
            dials.push(dial);
        }
        dials
    }
}

/// One side of a route over a step: requests, 5xx, and its p99 as the bounds of the
/// histogram bucket it falls in (`(lower, upper)`, ms).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SideEvidence {
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// The p99's bucket, ms; `None` without requests.
    pub p99_ms: Option<(f64, f64)>,
}

impl SideEvidence {
    /// 5xx share, percent.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 * 100.0 / self.requests as f64 }
    }
}

/// Both sides of the route over the step so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Evidence {
    /// The service.
    pub service: SideEvidence,
    /// The monolith, on the same route over the same time.
    pub monolith: SideEvidence,
}

/// The kinds of audit event a ramp makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The dial moved up one step.
    Advance,
    /// A step ended with too few service requests: the dial stays.
    Wait,
    /// A check failed: back to the start, halted.
    Rollback,
    /// A check failed: the dial stays, halted.
    Hold,
    /// The dial reached `to`.
    Complete,
}

impl EventKind {
    /// Every kind, for zeroed metric series.
    pub const ALL: [EventKind; 5] =
        [EventKind::Advance, EventKind::Wait, EventKind::Rollback, EventKind::Hold, EventKind::Complete];

    /// The `event` label.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Advance => "advance",
            EventKind::Wait => "wait",
            EventKind::Rollback => "rollback",
            EventKind::Hold => "hold",
            EventKind::Complete => "complete",
        }
    }
}

/// An audit event, with its evidence in words.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// When (Unix seconds).
    pub at_unix: u64,
    /// The dial before, basis points.
    pub from: u32,
    /// The dial after.
    pub to: u32,
    /// "advanced 5% -> 10%: service errors 0.2% vs monolith 0.3%, p99 12 ms vs 10 ms over 600 s, 1,204 requests"
    pub message: String,
}

/// Where a ramp is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Moving up at each boundary the evidence allows.
    Climbing,
    /// A check failed; stays until the route's dial or ramp changes in the file.
    Halted,
    /// At `to`.
    Complete,
}

impl Phase {
    /// As `/admin/migration` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Climbing => "climbing",
            Phase::Halted => "halted",
            Phase::Complete => "complete",
        }
    }
}

/// A running ramp.
#[derive(Clone, Debug, PartialEq)]
pub struct Ramp {
    plan: RampPlan,
    effective: u32,
    phase: Phase,
    /// When the current step's evidence started (Unix seconds).
    step_started: u64,
    /// The next wall-clock boundary at which the step may end.
    next_boundary: u64,
    waited: bool,
    last_event: Option<Event>,
}

impl Ramp {
    /// A ramp starting at `plan.start` at `now`; its first step ends at the next multiple
    /// of `every_seconds`.
    pub fn new(plan: RampPlan, now: u64) -> Self {
        let every = plan.every_seconds.max(1);
        let phase = if plan.start >= plan.to { Phase::Complete } else { Phase::Climbing };
        Ramp {
            effective: plan.start,
            phase,
            step_started: now,
            next_boundary: (now / every + 1) * every,
            waited: false,
            last_event: None,
            plan,
        }
    }

    /// The plan.
    pub fn plan(&self) -> &RampPlan {
        &self.plan
    }

    /// The dial in force, basis points.
    pub fn effective(&self) -> u32 {
        self.effective
    }

    /// Climbing, halted or complete.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When the evidence of the current step started (Unix seconds).
    pub fn step_started(&self) -> u64 {
        self.step_started
    }

    /// When the current step may end, while climbing.
    pub fn next_step_at(&self) -> Option<u64> {
        (self.phase == Phase::Climbing).then_some(self.next_boundary)
    }

    /// The last audit event.
    pub fn last_event(&self) -> Option<&Event> {
        self.last_event.as_ref()
    }

    /// Looks at the step's evidence so far at `now`: trips the guard whenever the service
    /// is worse with enough requests, and at a boundary advances or waits.
    pub fn tick(&mut self, now: u64, evidence: &Evidence) -> Option<Event> {
        if self.phase != Phase::Climbing {
            return None;
        }
        let seconds = now.saturating_sub(self.step_started);
        if let Some(why) = self.worse(evidence) {
            let from = self.effective;
            let (kind, to) = match self.plan.on_fail {
                OnFail::Rollback => (EventKind::Rollback, self.plan.start),
                OnFail::Hold => (EventKind::Hold, self.effective),
            };
            let mut message = format!("halted at {}: {why} over {seconds} s, {} requests", pct(from), count(evidence));
            if kind == EventKind::Rollback {
                let _ = write!(message, "; rolled back to {}", pct(to));
            }
            self.effective = to;
            self.phase = Phase::Halted;
            return Some(self.record(Event { kind, at_unix: now, from, to, message }));
        }
        if now < self.next_boundary {
            return None;
        }
        let every = self.plan.every_seconds.max(1);
        let boundary = now / every * every;
        self.next_boundary = boundary + every;
        if evidence.service.requests < self.plan.min_requests {
            // The evidence keeps adding up into the next boundary; said once per step.
            if std::mem::replace(&mut self.waited, true) {
                return None;
            }
            let message = format!(
                "waiting at {}: {} service requests over {seconds} s, {} needed",
                pct(self.effective),
                thousands(evidence.service.requests),
                thousands(self.plan.min_requests)
            );
            let event =
                Event { kind: EventKind::Wait, at_unix: now, from: self.effective, to: self.effective, message };
            return Some(self.record(event));
        }
        let from = self.effective;
        self.effective = from.saturating_add(self.plan.step).min(self.plan.to);
        self.step_started = now;
        self.waited = false;
        let kind = if self.effective >= self.plan.to {
            self.phase = Phase::Complete;
            EventKind::Complete
        } else {
            EventKind::Advance
        };
        let verb = if kind == EventKind::Complete { "completed" } else { "advanced" };
        let message = format!(
            "{verb} {} -> {}: {} over {seconds} s, {} requests",
            pct(from),
            pct(self.effective),
            summary(evidence),
            count(evidence)
        );
        Some(self.record(Event { kind, at_unix: now, from, to: self.effective, message }))
    }

    fn record(&mut self, event: Event) -> Event {
        self.last_event = Some(event.clone());
        event
    }

    /// Why the service is worse than the monolith over `evidence`, if it is and the step
    /// has enough service requests to say so. A p99 is worse only when the lower bound of
    /// the service's bucket exceeds the ratio times the upper bound of the monolith's, so
    /// the histogram's coarseness never trips the guard.
    fn worse(&self, evidence: &Evidence) -> Option<String> {
        let (service, monolith) = (&evidence.service, &evidence.monolith);
        if service.requests < self.plan.min_requests {
            return None;
        }
        if service.error_rate() - monolith.error_rate() > self.plan.max_error_rate_increase {
            return Some(format!(
                "service errors {:.1}% vs monolith {:.1}%",
                service.error_rate(),
                monolith.error_rate()
            ));
        }
        if let (Some((service_low, service_high)), Some((_, monolith_high))) = (service.p99_ms, monolith.p99_ms)
            && service_low > self.plan.max_p99_ratio * monolith_high
        {
            return Some(format!("service p99 {} ms vs monolith {} ms", ms(service_high), ms(monolith_high)));
        }
        None
    }
}

fn summary(evidence: &Evidence) -> String {
    let mut text = format!(
        "service errors {:.1}% vs monolith {:.1}%",
        evidence.service.error_rate(),
        evidence.monolith.error_rate()
    );
    if let (Some((_, service)), Some((_, monolith))) = (evidence.service.p99_ms, evidence.monolith.p99_ms) {
        let _ = write!(text, ", p99 {} ms vs {} ms", ms(service), ms(monolith));
    }
    text
}

fn count(evidence: &Evidence) -> String {
    thousands(evidence.service.requests)
}

/// Basis points as a percentage: 2500 -> "25%", 1250 -> "12.5%".
pub fn pct(basis_points: u32) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => format!("{whole}%"),
        rest if rest.is_multiple_of(10) => format!("{whole}.{}%", rest / 10),
        rest => format!("{whole}.{rest:02}%"),
    }
}

fn ms(value: f64) -> String {
    if value.is_infinite() { "more than 30000".to_owned() } else { format!("{value}") }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(on_fail: OnFail) -> RampPlan {
        RampPlan {
            start: 500,
            to: 2000,
            step: 500,
            every_seconds: 600,
            min_requests: 200,
            max_error_rate_increase: 1.0,
            max_p99_ratio: 1.5,
            on_fail,
        }
    }

    fn side(requests: u64, errors: u64, p99: (f64, f64)) -> SideEvidence {
        SideEvidence { requests, errors, p99_ms: Some(p99) }
    }

    fn healthy(requests: u64) -> Evidence {
        Evidence { service: side(requests, 0, (5.0, 10.0)), monolith: side(requests * 3, 1, (5.0, 10.0)) }
    }

    #[test]
    fn steps_fall_on_wall_clock_multiples_and_climb_to_the_end() {
        let mut ramp = Ramp::new(plan(OnFail::Rollback), 1_000);
        assert_eq!(ramp.next_step_at(), Some(1_200), "the next multiple of 600");
        assert_eq!(ramp.tick(1_199, &healthy(500)), None, "not before the boundary");
        let event = ramp.tick(1_200, &healthy(500)).expect("an advance");
        assert_eq!((event.kind, event.from, event.to), (EventKind::Advance, 500, 1000));
        assert_eq!(
            event.message,
            "advanced 5% -> 10%: service errors 0.0% vs monolith 0.1%, p99 10 ms vs 10 ms over 200 s, 500 requests"
        );
        assert_eq!((ramp.effective(), ramp.step_started(), ramp.next_step_at()), (1000, 1_200, Some(1_800)));
        // A late tick still lands the next boundary on a multiple.
        assert_eq!(ramp.tick(1_950, &healthy(300)).unwrap().kind, EventKind::Advance);
        assert_eq!(ramp.next_step_at(), Some(2_400));
        let done = ramp.tick(2_400, &healthy(300)).unwrap();
        assert_eq!((done.kind, done.to, ramp.phase()), (EventKind::Complete, 2000, Phase::Complete));
        assert!(done.message.starts_with("completed 15% -> 20%"), "{}", done.message);
        assert_eq!(ramp.tick(3_000, &healthy(300)), None, "a complete ramp does nothing");
        assert_eq!(ramp.next_step_at(), None);
    }

    #[test]
    fn too_little_traffic_waits_once_and_keeps_counting() {
        let mut ramp = Ramp::new(plan(OnFail::Rollback), 0);
        let wait = ramp.tick(600, &healthy(150)).expect("a wait");
        assert_eq!((wait.kind, wait.from, wait.to), (EventKind::Wait, 500, 500));
        assert_eq!(wait.message, "waiting at 5%: 150 service requests over 600 s, 200 needed");
        assert_eq!(ramp.tick(1_200, &healthy(180)), None, "said once per step");
        assert_eq!(ramp.step_started(), 0, "the evidence keeps adding up from the step's start");
        let advance = ramp.tick(1_800, &healthy(250)).expect("enough now");
        assert_eq!((advance.kind, ramp.effective()), (EventKind::Advance, 1000));
        assert!(advance.message.contains("over 1800 s, 250 requests"), "{}", advance.message);
        assert_eq!(ramp.tick(2_400, &healthy(10)).unwrap().kind, EventKind::Wait, "a new step may wait again");
    }

    #[test]
    fn errors_roll_back_at_any_tick_and_halt() {
        let mut ramp = Ramp::new(plan(OnFail::Rollback), 0);
        ramp.tick(600, &healthy(300));
        ramp.tick(1_200, &healthy(300));
        assert_eq!(ramp.effective(), 1500);
        let bad = Evidence { service: side(1_204, 87, (5.0, 10.0)), monolith: side(3_000, 12, (5.0, 10.0)) };
        let event = ramp.tick(1_300, &bad).expect("a rollback between boundaries");
        assert_eq!((event.kind, event.from, event.to), (EventKind::Rollback, 1500, 500));
        assert_eq!(
            event.message,
            "halted at 15%: service errors 7.2% vs monolith 0.4% over 100 s, 1,204 requests; rolled back to 5%"
        );
        assert_eq!((ramp.phase(), ramp.effective(), ramp.next_step_at()), (Phase::Halted, 500, None));
        assert_eq!(ramp.tick(1_800, &healthy(1_000)), None, "halted until the file changes");
        assert_eq!(ramp.last_event(), Some(&event));
    }

    #[test]
    fn a_slow_service_holds_when_told_to() {
        let mut ramp = Ramp::new(plan(OnFail::Hold), 0);
        ramp.tick(600, &healthy(300));
        let slow = Evidence { service: side(300, 0, (250.0, 500.0)), monolith: side(900, 0, (5.0, 10.0)) };
        let event = ramp.tick(700, &slow).expect("a hold");
        assert_eq!((event.kind, event.from, event.to), (EventKind::Hold, 1000, 1000));
        assert_eq!(event.message, "halted at 10%: service p99 500 ms vs monolith 10 ms over 100 s, 300 requests");
        assert_eq!((ramp.phase(), ramp.effective()), (Phase::Halted, 1000));
    }

    #[test]
    fn the_guard_needs_enough_requests_and_ignores_one_bucket_of_coarseness() {
        let mut ramp = Ramp::new(plan(OnFail::Rollback), 0);
        let few_but_failing = Evidence { service: side(20, 20, (5.0, 10.0)), monolith: side(60, 0, (5.0, 10.0)) };
        assert_eq!(ramp.tick(10, &few_but_failing), None, "20 requests say nothing yet");
        // Service in the (1, 2.5] ms bucket, monolith in (0.5, 1]: 2.5 > 1.5 x 1, but 1 is not.
        let adjacent = Evidence { service: side(500, 0, (1.0, 2.5)), monolith: side(500, 0, (0.5, 1.0)) };
        assert_eq!(ramp.tick(20, &adjacent), None);
        // An error rate exactly at the allowance is no worse.
        let at_limit = Evidence { service: side(1000, 15, (1.0, 2.5)), monolith: side(1000, 5, (1.0, 2.5)) };
        assert_eq!(ramp.tick(30, &at_limit), None);
        assert_eq!(ramp.phase(), Phase::Climbing);
    }

    #[test]
    fn a_plan_lists_its_steps() {
        let plan = RampPlan { start: 500, to: 10_000, step: 500, ..plan(OnFail::Hold) };
        let steps = plan.steps();
        assert_eq!(steps.len(), 19);
        assert_eq!((steps[0], steps[18]), (1000, 10_000));
        let uneven = RampPlan { start: 0, to: 1000, step: 300, ..plan.clone() };
        assert_eq!(uneven.steps(), [300, 600, 900, 1000]);
        assert_eq!(uneven.dial_after(2), 600);
        assert_eq!(uneven.dial_after(9), 1000);
        assert_eq!(Ramp::new(RampPlan { start: 1000, ..uneven }, 0).phase(), Phase::Complete);
    }

    #[test]
    fn percentages_and_counts_read_well() {
        assert_eq!(
            (pct(2500), pct(1250), pct(1205), pct(0)),
            ("25%".into(), "12.5%".into(), "12.05%".into(), "0%".into())
        );
        assert_eq!(
            (thousands(7), thousands(1_204), thousands(1_234_567)),
            ("7".into(), "1,204".into(), "1,234,567".into())
        );
    }
}
