//! The report's model: the event stream (JSON values, schema 1) read into
//! rollouts, units, phase spans and the out-of-service curve. Tolerant by
//! design: unknown events are ignored, missing or mistyped fields become
//! `None`, and times that go backwards are clamped to the latest seen.

mod ingest;

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// The unit phases, in walk order (their JSON names).
pub const PHASES: [&str; 7] = [
    "take_out", "drain", "disable", "steps", "health", "put_back", "confirm",
];

/// Position of a phase in [`PHASES`] (unknown phases sort last).
pub fn phase_index(phase: &str) -> usize {
    PHASES
        .iter()
        .position(|p| *p == phase)
        .unwrap_or(PHASES.len())
}

/// One phase of one unit: from its `unit_phase` event to the unit's next
/// phase, its `unit_finished`, or (never finished) the end of the rollout.
#[derive(Debug, Clone)]
pub struct Span {
    pub phase: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// No later phase nor `unit_finished` closed it.
    pub open: bool,
}

/// How a unit ended, from its `unit_finished` event.
#[derive(Debug, Clone)]
pub struct UnitEnd {
    pub t_ms: u64,
    pub result: String,
    pub phase: Option<String>,
    pub error: Option<String>,
    pub in_rotation: Option<bool>,
    pub output: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Unit {
    pub name: String,
    pub host: Option<String>,
    /// The first wave whose `wave_started` listed the unit.
    pub wave: Option<u64>,
    pub spans: Vec<Span>,
    pub end: Option<UnitEnd>,
    /// From `deploy_finished.units`.
    pub state: Option<String>,
    pub detail: Option<String>,
    pub in_rotation: Option<bool>,
    pub drain_timeouts: u32,
    /// Failed and left out of rotation: it stays out of service after
    /// `unit_finished` (the engine counts it against the bound).
    pub left_out: bool,
}

impl Unit {
    /// The unit's result, or its final state when it has no `unit_finished`.
    pub fn outcome(&self) -> &str {
        match (&self.end, &self.state) {
            (Some(e), _) => &e.result,
            (None, Some(s)) => s,
            (None, None) if self.spans.is_empty() => "not started",
            (None, None) => "unfinished",
        }
    }

    pub fn started_ms(&self) -> Option<u64> {
        self.spans.first().map(|s| s.start_ms)
    }

    /// From the first phase to `unit_finished` (or the end of its last span).
    pub fn took_ms(&self) -> Option<u64> {
        let start = self.started_ms()?;
        let end = match &self.end {
            Some(e) => e.t_ms,
            None => self.spans.last().map_or(start, |s| s.end_ms),
        };
        Some(end.saturating_sub(start))
    }
}

#[derive(Debug, Clone)]
pub struct Wave {
    pub number: u64,
    pub t_ms: u64,
    /// Indices into [`Rollout::units`].
    pub units: Vec<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct Finished {
    pub t_ms: u64,
    pub outcome: Option<String>,
    /// updated, failed, reverted, skipped, untouched, current,
    /// max_out_of_service_seen: whichever are present.
    pub counts: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Preflight {
    pub ok: Option<bool>,
    pub hosts: Option<u64>,
    pub problems: Vec<String>,
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct WitnessSummary {
    pub requests: Option<u64>,
    pub failures: Option<u64>,
    pub p50_ms: Option<u64>,
    pub p90_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub failure_kinds: Vec<(String, u64)>,
}

/// Something worth a line in the report (and a mark on the timeline when
/// `mark` is set): halts, interrupts, gate changes, drain timeouts.
#[derive(Debug, Clone)]
pub struct Note {
    pub t_ms: u64,
    pub kind: &'static str,
    pub text: String,
    pub mark: bool,
}

/// One `deploy_started` … `deploy_finished` (a failed deploy with
/// `on_failure = "rollback"` is followed by a second one, the unify).
#[derive(Debug, Clone, Default)]
pub struct Rollout {
    pub started: bool,
    pub deploy_id: Option<String>,
    pub app: Option<String>,
    pub target: Option<String>,
    pub version: Option<String>,
    pub planned_units: Option<u64>,
    pub planned_waves: Option<u64>,
    pub max_out_of_service: Option<u64>,
    pub preflight: Option<Preflight>,
    pub waves: Vec<Wave>,
    pub units: Vec<Unit>,
    index: HashMap<String, usize>,
    pub finished: Option<Finished>,
    /// `witness_progress` (and the summary's final counts): (t, requests, failures).
    pub witness: Vec<(u64, u64, u64)>,
    pub witness_summary: Option<WitnessSummary>,
    pub notes: Vec<Note>,
    /// Periods the `wait_for_all_healthy` gate was closed (end `None`: still closed).
    pub gate_closed: Vec<(u64, Option<u64>)>,
    /// Out-of-service count after each change, in stream order: (t, count).
    pub out_of_service: Vec<(u64, u64)>,
    /// The latest time seen.
    pub end_ms: u64,
    out_now: u64,
    /// Per unit: taken out (and counting) right now.
    out: Vec<bool>,
    /// Raw phase starts per unit, closed into spans at the end.
    starts: Vec<Vec<(String, u64)>>,
}

/// Read the event stream into rollouts (at least one, possibly empty).
pub fn parse(events: &[Value]) -> Vec<Rollout> {
    let mut done = Vec::new();
    let mut cur = Rollout::default();
    for e in events {
        let Some(name) = e.get("event").and_then(Value::as_str) else {
            continue;
        };
        if name == "deploy_started" && (cur.started || cur.finished.is_some()) {
            done.push(std::mem::take(&mut cur).close());
        }
        cur.apply(name, e);
    }
    done.push(cur.close());
    done
}

impl Rollout {
    /// Close the phase spans and the out-of-service curve.
    fn close(mut self) -> Rollout {
        let end = self.end_ms;
        for (i, starts) in std::mem::take(&mut self.starts).into_iter().enumerate() {
            let finish = self.units[i].end.as_ref().map(|e| e.t_ms);
            let n = starts.len();
            let spans = (0..n)
                .map(|k| {
                    let (phase, start_ms) = starts[k].clone();
                    let (stop, open) = match (starts.get(k + 1), finish) {
                        (Some((_, next)), _) => (*next, false),
                        (None, Some(f)) => (f, false),
                        (None, None) => (end, true),
                    };
                    Span {
                        phase,
                        start_ms,
                        end_ms: stop.max(start_ms),
                        open,
                    }
                })
                .collect();
            self.units[i].spans = spans;
        }
        if self.out_of_service.is_empty() {
            self.out_of_service.push((0, 0));
        } else if self.out_of_service[0].0 > 0 {
            self.out_of_service.insert(0, (0, 0));
        }
        let last = self.out_now;
        if self.out_of_service.last().is_some_and(|p| p.0 < end) {
            self.out_of_service.push((end, last));
        }
        self
    }

    /// Counts by result: from `deploy_finished` when present, else tallied.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        if let Some(f) = &self.finished {
            if !f.counts.is_empty() {
                return f.counts.clone();
            }
        }
        let mut c = BTreeMap::new();
        for u in &self.units {
            *c.entry(u.outcome().to_string()).or_insert(0) += 1;
        }
        c
    }

    pub fn max_out_seen(&self) -> u64 {
        self.out_of_service.iter().map(|p| p.1).max().unwrap_or(0)
    }

    /// When the rollout ended (`deploy_finished`, else the last event).
    pub fn duration_ms(&self) -> u64 {
        self.finished.as_ref().map_or(self.end_ms, |f| f.t_ms)
    }
}
