//! The event stream: what the engine reports, rendered by the binary as
//! human lines on stderr or as NDJSON on stdout (`--json`).
//!
//! The JSON form is a stable, versioned interface: every line is an object
//! with `"schema": SCHEMA_VERSION`, `"event": <name>`, `"elapsed_ms"` and the
//! fields of the variant. Fields are only ever added within a schema version;
//! renaming or removing one bumps it. docs/events.md documents every event.

use serde::Serialize;
use std::time::Duration;

pub const SCHEMA_VERSION: u32 = 1;

/// Where a unit is in its walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Taking the unit out of the balancer(s): no new connections.
    TakeOut,
    /// Waiting for open connections to finish.
    Drain,
    /// Cutting the unit off (maint).
    Disable,
    /// Running the deploy steps.
    Steps,
    /// Waiting for the unit to pass its health check.
    Health,
    /// Putting the unit back into the balancer(s).
    PutBack,
    /// Waiting until the balancer reports the unit serving.
    Confirm,
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::TakeOut => "take-out",
            Phase::Drain => "drain",
            Phase::Disable => "disable",
            Phase::Steps => "steps",
            Phase::Health => "health",
            Phase::PutBack => "put-back",
            Phase::Confirm => "confirm",
        }
    }
}

/// How a unit ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitResult {
    /// On the new version and serving.
    Updated,
    /// Failed; `in_rotation` says whether it is back in the balancer (only
    /// when nothing had been changed on it yet).
    Failed {
        phase: Phase,
        error: String,
        in_rotation: bool,
    },
    /// Taken out but put back unchanged (the deploy stopped before its steps).
    Reverted,
    /// Not touched (forced and unreachable).
    Skipped { reason: String },
    /// Not touched: already on the version and serving.
    Current,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnitSummary {
    pub unit: String,
    pub host: String,
    /// "updated", "failed", "reverted", "skipped", "current", "untouched", "unknown".
    pub state: String,
    /// Whether the unit is in the balancer's rotation as far as we know.
    pub in_rotation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failed,
    Interrupted,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    DeployStarted {
        deploy_id: String,
        app: String,
        target: Option<String>,
        version: String,
        units: usize,
        waves: usize,
        max_out_of_service: usize,
    },
    Preflight {
        ok: bool,
        hosts: usize,
        problems: Vec<String>,
        skipped: Vec<String>,
    },
    WaveStarted {
        wave: usize,
        units: Vec<String>,
    },
    UnitPhase {
        unit: String,
        host: String,
        phase: Phase,
    },
    /// A drain hit its timeout with sessions still open.
    DrainTimeout {
        unit: String,
        sessions: Option<u64>,
        proceeded: bool,
    },
    UnitFinished {
        unit: String,
        host: String,
        #[serde(flatten)]
        result: UnitResultJson,
        /// Output of a failed step (stdout/stderr tails), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<String>,
    },
    Progress {
        done: usize,
        total: usize,
        failed: usize,
        in_flight: usize,
        max_in_flight: usize,
        out_of_service: Vec<String>,
        /// With `wait_for_all_healthy`: the units whose failing health check
        /// holds the next start back (absent when nothing is waiting).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        gated_on: Vec<String>,
    },
    /// `wait_for_all_healthy`: the gate is closed because these units fail
    /// their health check; emitted when the set changes.
    GateClosed {
        unhealthy: Vec<GateUnit>,
        /// How long the gate has been closed.
        closed_ms: u64,
        gate_timeout_ms: u64,
    },
    /// The gate opened again after being closed.
    GateOpened {
        closed_ms: u64,
    },
    Halted {
        reason: String,
    },
    /// A member changeover holds out was serving again on its own (an
    /// HAProxy reload forgets the runtime state): taken out again at once.
    MemberBack {
        unit: String,
        balancer: String,
        member: String,
        /// The status it was seen in.
        state: String,
        taken_out_again: bool,
    },
    Interrupted {
        hard: bool,
    },
    /// Live counts of the traffic witness (every 2 s while it runs).
    WitnessProgress {
        requests: u64,
        failures: u64,
    },
    /// The traffic witness's final figures.
    WitnessSummary {
        requests: u64,
        failures: u64,
        p50_ms: u64,
        p90_ms: u64,
        p99_ms: u64,
        max_ms: u64,
        failure_kinds: std::collections::BTreeMap<String, u64>,
    },
    /// `[deploy] prepare` ran on every unit, before anything was taken out.
    Prepared {
        units: usize,
        duration_ms: u64,
        /// Units whose prepare failed, with why.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        failed: Vec<GateUnit>,
    },
    /// A `[hooks]` command ran (`pre_deploy`, `pre_wave`, …).
    HookFinished {
        hook: String,
        /// For `pre_wave`/`post_wave`.
        #[serde(skip_serializing_if = "Option::is_none")]
        wave: Option<usize>,
        ok: bool,
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    DeployFinished {
        outcome: Outcome,
        updated: usize,
        failed: usize,
        reverted: usize,
        skipped: usize,
        untouched: usize,
        /// Already on the version and serving: not touched.
        current: usize,
        max_out_of_service_seen: usize,
        units: Vec<UnitSummary>,
    },
}

/// `UnitResult` flattened for JSON: `{"result": "failed", "phase": ..., "error": ...}`.
/// A unit that holds the gate closed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateUnit {
    pub unit: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnitResultJson {
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub in_rotation: bool,
}

impl From<&UnitResult> for UnitResultJson {
    fn from(r: &UnitResult) -> Self {
        match r {
            UnitResult::Updated => UnitResultJson {
                result: "updated",
                phase: None,
                error: None,
                in_rotation: true,
            },
            UnitResult::Failed {
                phase,
                error,
                in_rotation,
            } => UnitResultJson {
                result: "failed",
                phase: Some(*phase),
                error: Some(error.clone()),
                in_rotation: *in_rotation,
            },
            UnitResult::Reverted => UnitResultJson {
                result: "reverted",
                phase: None,
                error: None,
                in_rotation: true,
            },
            UnitResult::Current => UnitResultJson {
                result: "current",
                phase: None,
                error: None,
                in_rotation: true,
            },
            UnitResult::Skipped { reason } => UnitResultJson {
                result: "skipped",
                phase: None,
                error: Some(reason.clone()),
                in_rotation: false,
            },
        }
    }
}

/// Receives events. The binary renders them; the benchmark drops them.
pub trait EventSink: Send + Sync {
    fn emit(&self, elapsed: Duration, event: Event);
}

/// One NDJSON line for an event.
/// The `event` name of every event (for `[[notify]] events`).
pub const EVENT_NAMES: &[&str] = &[
    "deploy_started",
    "preflight",
    "wave_started",
    "unit_phase",
    "drain_timeout",
    "unit_finished",
    "progress",
    "gate_closed",
    "gate_opened",
    "halted",
    "member_back",
    "interrupted",
    "witness_progress",
    "witness_summary",
    "hook_finished",
    "prepared",
    "deploy_finished",
];

impl Event {
    /// Its `event` name in the JSON form.
    pub fn name(&self) -> &'static str {
        match self {
            Event::DeployStarted { .. } => "deploy_started",
            Event::Preflight { .. } => "preflight",
            Event::WaveStarted { .. } => "wave_started",
            Event::UnitPhase { .. } => "unit_phase",
            Event::DrainTimeout { .. } => "drain_timeout",
            Event::UnitFinished { .. } => "unit_finished",
            Event::Progress { .. } => "progress",
            Event::GateClosed { .. } => "gate_closed",
            Event::GateOpened { .. } => "gate_opened",
            Event::Halted { .. } => "halted",
            Event::MemberBack { .. } => "member_back",
            Event::Interrupted { .. } => "interrupted",
            Event::WitnessProgress { .. } => "witness_progress",
            Event::WitnessSummary { .. } => "witness_summary",
            Event::HookFinished { .. } => "hook_finished",
            Event::Prepared { .. } => "prepared",
            Event::DeployFinished { .. } => "deploy_finished",
        }
    }
}

pub fn to_json_line(elapsed: Duration, event: &Event) -> String {
    let mut value = serde_json::to_value(event).expect("events serialize");
    if let Some(map) = value.as_object_mut() {
        map.insert("schema".into(), SCHEMA_VERSION.into());
        map.insert("elapsed_ms".into(), (elapsed.as_millis() as u64).into());
    }
    value.to_string()
}

/// Discards everything (benchmarks, tests that only look at the outcome).
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _: Duration, _: Event) {}
}

#[cfg(test)]
mod names {
    use super::*;

    #[test]
    fn name_is_the_json_tag() {
        let e = Event::Interrupted { hard: false };
        let v: serde_json::Value = serde_json::from_str(&to_json_line(Duration::ZERO, &e)).unwrap();
        assert_eq!(v["event"], e.name());
        assert!(EVENT_NAMES.contains(&e.name()));
        let e = Event::GateOpened { closed_ms: 1 };
        let v: serde_json::Value = serde_json::from_str(&to_json_line(Duration::ZERO, &e)).unwrap();
        assert_eq!(v["event"], e.name());
    }
}
