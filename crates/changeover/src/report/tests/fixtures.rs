//! Event streams for the tests, built from real `Event`s through
//! `to_json_line`.

use changeover_core::event::{
    to_json_line, Event, GateUnit, Outcome, Phase, UnitResult, UnitResultJson, UnitSummary,
};
use serde_json::Value;
use std::time::Duration;

const WALK: [Phase; 7] = [
    Phase::TakeOut,
    Phase::Drain,
    Phase::Disable,
    Phase::Steps,
    Phase::Health,
    Phase::PutBack,
    Phase::Confirm,
];

#[derive(Default)]
pub(super) struct Stream {
    pub(super) events: Vec<Value>,
}

impl Stream {
    pub(super) fn push(&mut self, ms: u64, e: Event) {
        let line = to_json_line(Duration::from_millis(ms), &e);
        self.events.push(serde_json::from_str(&line).unwrap());
    }

    pub(super) fn started(&mut self, units: usize, waves: usize, bound: usize) {
        self.push(
            0,
            Event::DeployStarted {
                deploy_id: "20261202T100000.000Z-4242".into(),
                app: "shop".into(),
                target: Some("prod".into()),
                version: "v2".into(),
                units,
                waves,
                max_out_of_service: bound,
            },
        );
    }

    pub(super) fn wave(&mut self, ms: u64, wave: usize, units: &[String]) {
        self.push(
            ms,
            Event::WaveStarted {
                wave,
                units: units.to_vec(),
            },
        );
    }

    /// Walk `unit` from `t0`, one phase per `step` ms, ending with `result`
    /// (a failure stops in its phase). Returns the finish time.
    pub(super) fn walk(&mut self, t0: u64, step: u64, unit: &str, result: UnitResult) -> u64 {
        let stop = match &result {
            UnitResult::Failed { phase, .. } => WALK.iter().position(|p| p == phase).unwrap() + 1,
            _ => WALK.len(),
        };
        for (k, phase) in WALK[..stop].iter().enumerate() {
            self.push(
                t0 + step * k as u64,
                Event::UnitPhase {
                    unit: unit.into(),
                    host: unit.into(),
                    phase: *phase,
                },
            );
        }
        let t = t0 + step * stop as u64;
        self.finish(t, unit, &result, None);
        t
    }

    pub(super) fn finish(
        &mut self,
        ms: u64,
        unit: &str,
        result: &UnitResult,
        output: Option<String>,
    ) {
        self.push(
            ms,
            Event::UnitFinished {
                unit: unit.into(),
                host: unit.into(),
                result: UnitResultJson::from(result),
                output,
            },
        );
    }

    pub(super) fn done(
        &mut self,
        ms: u64,
        outcome: Outcome,
        units: Vec<(String, &str)>,
        seen: usize,
    ) {
        let n = |s: &str| units.iter().filter(|u| u.1 == s).count();
        self.push(
            ms,
            Event::DeployFinished {
                outcome,
                updated: n("updated"),
                failed: n("failed"),
                reverted: n("reverted"),
                skipped: n("skipped"),
                untouched: n("untouched"),
                current: n("current"),
                max_out_of_service_seen: seen,
                units: units
                    .iter()
                    .map(|(u, s)| UnitSummary {
                        unit: u.clone(),
                        host: u.clone(),
                        state: s.to_string(),
                        in_rotation: *s != "failed",
                        detail: None,
                    })
                    .collect(),
            },
        );
    }
}

pub(super) const NASTY: &str = "health check: <script>alert('x')</script> & \"co\"";

/// 3 units, 2 waves, bound 2: web-2 fails its health check and is left out;
/// a witness watches.
pub(super) fn three_units() -> Vec<Value> {
    let names: Vec<String> = (1..=3).map(|i| format!("web-{i}")).collect();
    let mut s = Stream::default();
    s.started(3, 2, 2);
    s.wave(0, 1, &names[..2]);
    s.walk(1, 300, "web-1", UnitResult::Updated);
    let fail = UnitResult::Failed {
        phase: Phase::Health,
        error: NASTY.into(),
        in_rotation: false,
    };
    for (k, phase) in WALK[..5].iter().enumerate() {
        s.push(
            20 + 250 * k as u64,
            Event::UnitPhase {
                unit: "web-2".into(),
                host: "web-2".into(),
                phase: *phase,
            },
        );
    }
    s.finish(1900, "web-2", &fail, Some("stderr: <b>boom</b>".into()));
    s.push(
        2000,
        Event::WitnessProgress {
            requests: 400,
            failures: 0,
        },
    );
    s.push(
        650,
        Event::DrainTimeout {
            unit: "web-1".into(),
            sessions: Some(3),
            proceeded: true,
        },
    );
    s.push(
        1500,
        Event::GateClosed {
            unhealthy: vec![GateUnit {
                unit: "web-2".into(),
                error: "503 from /health".into(),
            }],
            closed_ms: 480,
            gate_timeout_ms: 30_000,
        },
    );
    s.push(2350, Event::GateOpened { closed_ms: 1330 });
    s.wave(2400, 2, &names[2..]);
    s.walk(2400, 200, "web-3", UnitResult::Updated);
    s.push(
        4000,
        Event::WitnessProgress {
            requests: 800,
            failures: 3,
        },
    );
    let units = vec![
        (names[0].clone(), "updated"),
        (names[1].clone(), "failed"),
        (names[2].clone(), "updated"),
    ];
    s.done(4100, Outcome::Failed, units, 2);
    s.events.sort_by_key(|e| e["elapsed_ms"].as_u64());
    s.push(
        4150,
        Event::WitnessSummary {
            requests: 820,
            failures: 3,
            p50_ms: 4,
            p90_ms: 9,
            p99_ms: 31,
            max_ms: 120,
            failure_kinds: [("status 503".to_string(), 2), ("<reset>".to_string(), 1)]
                .into_iter()
                .collect(),
        },
    );
    s.events
}

/// `n` units in waves of `wave_size`, `bound` at a time; every
/// `fail_every`-th unit fails in its steps (and is put back).
pub(super) fn many(n: usize, wave_size: usize, bound: usize, fail_every: usize) -> Vec<Value> {
    let names: Vec<String> = (0..n).map(|i| format!("web-{i:05}")).collect();
    let mut s = Stream::default();
    s.started(n, n.div_ceil(wave_size), bound);
    let mut t = 0;
    let mut states = Vec::new();
    for (w, wave) in names.chunks(wave_size).enumerate() {
        s.wave(t, w + 1, wave);
        for batch in wave.chunks(bound) {
            for (j, u) in batch.iter().enumerate() {
                let k = states.len();
                let r = if fail_every > 0 && k % fail_every == fail_every - 1 {
                    UnitResult::Failed {
                        phase: Phase::Steps,
                        error: format!("step 1 exited 1 on {u}"),
                        in_rotation: true,
                    }
                } else {
                    UnitResult::Updated
                };
                let st = if matches!(r, UnitResult::Updated) {
                    "updated"
                } else {
                    "failed"
                };
                let _ = s.walk(t + j as u64, 10, u, r);
                states.push((u.clone(), st));
            }
            t += 80;
        }
    }
    s.done(t, Outcome::Failed, states, bound);
    s.events.sort_by_key(|e| e["elapsed_ms"].as_u64());
    s.events
}
