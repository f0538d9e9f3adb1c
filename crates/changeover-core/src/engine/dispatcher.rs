//! The dispatcher: owns the counts and every decision. Starts units while the
//! out-of-service bound has room, waits for them, halts on too many failures
//! or on a stop, and writes the summary.

use super::gate;
use super::preflight::Preflight;
use super::walk::{Finished, Msg, Walk};
use super::Deployment;
use crate::event::{Event, GateUnit, Outcome, Phase, UnitResult, UnitResultJson, UnitSummary};
use crate::journal::Record;
use crate::planner;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The end of a deploy.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    pub units: Vec<UnitSummary>,
    pub max_out_of_service_seen: usize,
    pub halt_reason: Option<String>,
}

#[derive(Debug, Clone)]
enum State {
    Untouched,
    InFlight(Phase),
    Done(UnitResult),
}

/// Run the rollout. `stop` (first Ctrl-C): no new unit starts, units in
/// flight finish their phase and go back in if healthy. `abort` (second
/// Ctrl-C): stop at once, report what is where.
pub async fn run(
    dep: Arc<Deployment>,
    pf: &Preflight,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Report {
    let total = dep.units.len();
    let planner::Schedule {
        waves,
        bound,
        one_per_host,
    } = planner::Schedule::new(&dep.units, &dep.policy.strategy.rollout);
    let max_failures = dep.policy.strategy.max_failures.of_allow_zero(total);

    dep.emit(Event::DeployStarted {
        deploy_id: dep.deploy_id.clone(),
        app: dep.plan.app.clone(),
        target: dep.target.clone(),
        version: dep.version.clone(),
        units: total,
        waves: waves.len(),
        max_out_of_service: bound,
    });
    // A journal that cannot be written stops the deploy before any change.
    let begun = dep
        .journal
        .append(Record::Begin {
            format: crate::journal::JOURNAL_FORMAT,
            deploy_id: dep.deploy_id.clone(),
            app: dep.plan.app.clone(),
            version: dep.version.clone(),
            target: dep.target.clone(),
            balancers: dep.balancers.iter().map(|b| b.label()).collect(),
            lock: dep.policy.lock.clone(),
            holder: Some(crate::state::holder()),
            pid: Some(std::process::id()),
        })
        .await;

    let mut d = Dispatch {
        dep: Arc::clone(&dep),
        states: vec![State::Untouched; total],
        in_flight: 0,
        out: 0,
        max_out_seen: 0,
        failures: 0,
        halt: CancellationToken::new(),
        halt_reason: None,
        interrupted: false,
        hard: false,
        seq: Arc::new(AtomicU64::new(0)),
        already_out: pf.already_out.clone(),
        bound,
        done: pf.skipped.len()
            + pf.current
                .iter()
                .filter(|i| !pf.skipped.contains_key(i))
                .count(),
        out_names: std::collections::BTreeSet::new(),
        gate: (dep.policy.strategy.wait_for_all_healthy
            && (dep.health.is_some() || dep.gate.is_some()))
        .then(|| {
            let interval = dep
                .policy
                .health
                .as_ref()
                .or(dep.plan.health.as_ref())
                .map_or(Duration::from_millis(500), |h| h.interval);
            GateState::new(gate::watched(&dep), interval)
        }),
    };
    if let Err(e) = begun {
        d.halt_with(format!("{e}; nothing was changed"));
    }
    for &i in &pf.current {
        d.states[i] = State::Done(UnitResult::Current);
    }
    for (&i, reason) in &pf.skipped {
        d.states[i] = State::Done(UnitResult::Skipped {
            reason: reason.clone(),
        });
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let mut tasks: JoinSet<Finished> = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    'waves: for (wi, wave) in waves.iter().enumerate() {
        if d.halt.is_cancelled() {
            break;
        }
        if wi > 0 && !dep.policy.strategy.pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(dep.policy.strategy.pause) => {}
                _ = stop.cancelled() => { d.interrupt(false); break 'waves; }
                _ = abort.cancelled() => { d.interrupt(true); break 'waves; }
            }
        }
        let mut queue: VecDeque<usize> = wave
            .iter()
            .copied()
            .filter(|i| matches!(d.states[*i], State::Untouched))
            .collect();
        if queue.is_empty() {
            continue;
        }
        let wave_units: Vec<String> = queue.iter().map(|&i| dep.units[i].name()).collect();
        if let Some(hooks) = dep.wave_hooks.clone() {
            let t = Instant::now();
            let ran = hooks.before_wave(wi + 1, &wave_units).await;
            if let Some(error) = hook_event(&dep, "pre_wave", wi + 1, t, &ran) {
                d.halt_with(format!(
                    "the pre_wave hook failed before wave {}: {error}; its units were not touched",
                    wi + 1
                ));
                break;
            }
        }
        let failures_before = d.failures;
        dep.emit(Event::WaveStarted {
            wave: wi + 1,
            units: wave_units.clone(),
        });
        loop {
            if dep.external_halt.is_triggered() && !d.halt.is_cancelled() {
                d.halt_with(dep.external_halt.reason());
            }
            // Start what the bound (and the health gate) allows. Forced
            // units that were already out do not take a place.
            let mut gate_wanted = false;
            while let Some(&next) = queue.front() {
                if d.halt.is_cancelled() {
                    break;
                }
                if one_per_host {
                    if let Some(out) = d.out_on_host(next) {
                        // Groups never take two units of a host out: this
                        // host's earlier unit failed and is left out.
                        queue.pop_front();
                        d.skip(
                            next,
                            format!("{out} on the same host failed and is left out of rotation; with groups a host never has two units out"),
                        );
                        continue;
                    }
                }
                let counts = !d.already_out.contains(&next);
                if counts && d.out >= bound {
                    break;
                }
                if d.gate.as_ref().is_some_and(|g| !g.open()) {
                    gate_wanted = true;
                    break;
                }
                queue.pop_front();
                d.start(next, counts, pf, &tx, &mut tasks);
            }
            if gate_wanted {
                d.ensure_gate_check();
            }
            let gate_pending =
                !d.halt.is_cancelled() && d.gate.as_ref().is_some_and(|g| g.check.is_some());
            let gate_deadline = d
                .gate
                .as_ref()
                .and_then(|g| g.held_since)
                .map(|since| since + dep.policy.strategy.gate_timeout);
            if tasks.is_empty() && !gate_pending {
                if queue.is_empty() || d.halt.is_cancelled() {
                    break;
                }
                // Failed units fill the whole bound: going on would exceed it.
                d.halt_with(format!(
                    "{} failed unit(s) are out of service, which fills the allowed {bound}; no further unit can start",
                    d.out
                ));
                break;
            }
            tokio::select! {
                biased;
                _ = abort.cancelled(), if !d.hard => {
                    d.interrupt(true);
                    tasks.abort_all();
                    break 'waves;
                }
                _ = stop.cancelled(), if !d.interrupted => d.interrupt(false),
                reason = dep.external_halt.triggered(), if !d.halt.is_cancelled() => d.halt_with(reason),
                Some(msg) = rx.recv() => d.on_msg(msg),
                unhealthy = gate_result(&mut d.gate), if gate_pending => d.on_gate(unhealthy),
                _ = tokio::time::sleep_until(gate_deadline.unwrap_or_else(Instant::now)), if gate_pending && gate_deadline.is_some() => d.gate_timed_out(),
                Some(joined) = tasks.join_next() => {
                    match joined {
                        Ok(finished) => d.finish(finished, max_failures),
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => d.halt_with(format!("a unit task crashed: {e}")),
                    }
                }
                _ = ticker.tick() => d.progress(),
            }
        }
        if let Some(hooks) = dep.wave_hooks.clone() {
            if !d.hard {
                let t = Instant::now();
                let ran = hooks
                    .after_wave(wi + 1, &wave_units, d.failures > failures_before)
                    .await;
                hook_event(&dep, "post_wave", wi + 1, t, &ran);
            }
        }
    }
    // A check still in flight is aborted (dropping it aborts the task).
    if let Some(g) = d.gate.as_mut() {
        g.check = None;
    }
    // Drain phase messages that arrived after the last join.
    while let Ok(msg) = rx.try_recv() {
        d.on_msg(msg);
    }
    d.summary().await
}

/// Report a wave hook that ran; its error, if it failed.
fn hook_event(
    dep: &Deployment,
    hook: &str,
    wave: usize,
    started: Instant,
    ran: &Result<bool, String>,
) -> Option<String> {
    let error = match ran {
        Ok(false) => return None,
        Ok(true) => None,
        Err(e) => Some(e.clone()),
    };
    dep.emit(Event::HookFinished {
        hook: hook.to_string(),
        wave: Some(wave),
        ok: error.is_none(),
        duration_ms: started.elapsed().as_millis() as u64,
        error: error.clone(),
    });
    error
}

/// The health gate's state, owned by the dispatcher.
struct GateState {
    /// The units it watches (the whole fleet but forced hosts).
    fleet: Arc<Vec<Arc<crate::unit::Unit>>>,
    /// When the last check that passed answered: it admits every start
    /// for one health interval from then (one sweep per interval, shared
    /// by every start, not a fresh sweep before each).
    passed_at: Option<Instant>,
    /// When the last check started (the next waits one interval after it).
    checked_at: Option<Instant>,
    /// `health.interval`.
    interval: Duration,
    /// The check in flight.
    check: Option<GateCheck>,
    /// Since when a start has been held back by the gate; `gate_timeout`
    /// counts from here. Cleared when the gate opens.
    held_since: Option<Instant>,
    /// What failed in the last check (empty when it passed, or none yet).
    unhealthy: Vec<GateUnit>,
}

impl GateState {
    fn new(fleet: Arc<Vec<Arc<crate::unit::Unit>>>, interval: Duration) -> GateState {
        GateState {
            fleet,
            passed_at: None,
            checked_at: None,
            interval,
            check: None,
            held_since: None,
            unhealthy: Vec::new(),
        }
    }

    /// A check that passed less than one interval ago vouches for now.
    fn open(&self) -> bool {
        self.passed_at.is_some_and(|t| t.elapsed() < self.interval)
    }
}

/// A gate check task, aborted when dropped: probes must not outlive the
/// rollout (they hold the deployment and its connections).
struct GateCheck(JoinHandle<Vec<GateUnit>>);

impl Drop for GateCheck {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The result of the gate check in flight (pending forever if there is none;
/// the select arm is disabled then anyway).
async fn gate_result(gate: &mut Option<GateState>) -> Vec<GateUnit> {
    let Some(check) = gate.as_mut().and_then(|g| g.check.as_mut()) else {
        return std::future::pending().await;
    };
    let result = (&mut check.0).await;
    if let Some(g) = gate.as_mut() {
        g.check = None;
    }
    // A check that did not finish proves nothing: the gate stays closed.
    result.unwrap_or_else(|e| {
        vec![GateUnit {
            unit: "(gate)".into(),
            error: format!("the health gate's check did not finish: {e}"),
        }]
    })
}

struct Dispatch {
    dep: Arc<Deployment>,
    states: Vec<State>,
    in_flight: usize,
    /// Units out of service that count against the bound: in flight or failed
    /// and left out.
    out: usize,
    max_out_seen: usize,
    failures: usize,
    halt: CancellationToken,
    halt_reason: Option<String>,
    interrupted: bool,
    hard: bool,
    seq: Arc<AtomicU64>,
    already_out: std::collections::BTreeSet<usize>,
    bound: usize,
    done: usize,
    /// Indices of units out of service right now (in flight, or failed and left out).
    out_names: std::collections::BTreeSet<usize>,
    /// `wait_for_all_healthy`.
    gate: Option<GateState>,
}

impl Dispatch {
    fn start(
        &mut self,
        i: usize,
        counts: bool,
        pf: &Preflight,
        tx: &mpsc::UnboundedSender<Msg>,
        tasks: &mut JoinSet<Finished>,
    ) {
        self.in_flight += 1;
        if counts {
            self.out += 1;
            self.max_out_seen = self.max_out_seen.max(self.out);
        }
        self.states[i] = State::InFlight(Phase::TakeOut);
        self.out_names.insert(i);
        let walk = Walk {
            dep: Arc::clone(&self.dep),
            unit: Arc::clone(&self.dep.units[i]),
            before: pf.before.get(i).cloned().unwrap_or_default(),
            halt: self.halt.clone(),
            tx: tx.clone(),
            seq: Arc::clone(&self.seq),
        };
        tasks.spawn(walk.run());
    }

    /// Start a gate check unless one is running: at once, or one health
    /// interval after a check that failed.
    fn ensure_gate_check(&mut self) {
        let exclude = self
            .out_names
            .iter()
            .map(|&i| gate::key(&self.dep.units[i]))
            .collect();
        let Some(g) = self.gate.as_mut() else { return };
        g.held_since.get_or_insert_with(Instant::now);
        if g.check.is_some() {
            return;
        }
        // At most one sweep per interval: after a failed check wait the
        // interval; after a passed one that has expired, what is left of it.
        let interval = g.interval;
        let delay = if g.unhealthy.is_empty() {
            g.checked_at
                .map_or(Duration::ZERO, |t| interval.saturating_sub(t.elapsed()))
        } else {
            interval
        };
        g.checked_at = Some(Instant::now() + delay);
        g.check = Some(GateCheck(tokio::spawn(gate::check(
            Arc::clone(&self.dep),
            Arc::clone(&g.fleet),
            exclude,
            delay,
        ))));
    }

    fn on_gate(&mut self, unhealthy: Vec<GateUnit>) {
        let gate_timeout = self.dep.policy.strategy.gate_timeout;
        let Some(g) = self.gate.as_mut() else { return };
        let held = g.held_since.map_or(Duration::ZERO, |t| t.elapsed());
        if unhealthy.is_empty() {
            // From when the answer came: a sweep slower than the interval
            // still admits the starts waiting for it.
            g.passed_at = Some(Instant::now());
            g.held_since = None;
            if !g.unhealthy.is_empty() {
                g.unhealthy.clear();
                self.dep.emit(Event::GateOpened {
                    closed_ms: held.as_millis() as u64,
                });
                self.progress();
            }
            return;
        }
        let names = |v: &[GateUnit]| v.iter().map(|u| u.unit.clone()).collect::<Vec<_>>();
        let changed = names(&g.unhealthy) != names(&unhealthy);
        g.unhealthy = unhealthy;
        if changed {
            self.dep.emit(Event::GateClosed {
                unhealthy: g.unhealthy.clone(),
                closed_ms: held.as_millis() as u64,
                gate_timeout_ms: gate_timeout.as_millis() as u64,
            });
            self.progress();
        }
        if held >= gate_timeout {
            self.gate_timed_out();
        }
    }

    /// The gate held starts back for `gate_timeout`: halt, naming what was
    /// unhealthy at the last check.
    fn gate_timed_out(&mut self) {
        let gate_timeout = self.dep.policy.strategy.gate_timeout;
        let Some(g) = self.gate.as_ref() else { return };
        let held = g.held_since.map_or(Duration::ZERO, |t| t.elapsed());
        let what = if g.unhealthy.is_empty() {
            "its health check of the fleet did not finish".to_string()
        } else {
            let list = g
                .unhealthy
                .iter()
                .take(10)
                .map(|u| format!("{} ({})", u.unit, u.error))
                .collect::<Vec<_>>()
                .join(", ");
            let more = g.unhealthy.len().saturating_sub(10);
            format!(
                "not healthy: {list}{}",
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        };
        self.halt_with(format!(
            "the health gate stayed closed for {:?} (strategy.gate_timeout = {gate_timeout:?}): {what}; \
             fix them, or name their hosts with --force to deploy past them",
            Duration::from_millis(held.as_millis() as u64),
        ));
    }

    /// Another unit of `i`'s host that is out of service (in flight, or
    /// failed and left out), by name.
    fn out_on_host(&self, i: usize) -> Option<String> {
        let host = &self.dep.units[i].host.name;
        self.out_names
            .iter()
            .map(|&o| &self.dep.units[o])
            .find(|u| &u.host.name == host)
            .map(|u| u.name())
    }

    /// Mark a unit skipped without touching it.
    fn skip(&mut self, i: usize, reason: String) {
        let unit = &self.dep.units[i];
        let result = UnitResult::Skipped { reason };
        self.dep.emit(Event::UnitFinished {
            unit: unit.name(),
            host: unit.host.name.clone(),
            result: UnitResultJson::from(&result),
            output: None,
        });
        self.states[i] = State::Done(result);
        self.done += 1;
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Phase(i, phase) => {
                if matches!(self.states[i], State::InFlight(_)) {
                    self.states[i] = State::InFlight(phase);
                }
                let unit = &self.dep.units[i];
                self.dep.emit(Event::UnitPhase {
                    unit: unit.name(),
                    host: unit.host.name.clone(),
                    phase,
                });
            }
            Msg::Event(e) => self.dep.emit(e),
        }
    }

    fn finish(&mut self, f: Finished, max_failures: usize) {
        self.in_flight -= 1;
        let counts = !self.already_out.contains(&f.index);
        let stays_out = matches!(
            f.result,
            UnitResult::Failed {
                in_rotation: false,
                ..
            }
        );
        if counts && !stays_out {
            self.out -= 1;
        }
        if !stays_out {
            self.out_names.remove(&f.index);
        }
        self.done += 1;
        let unit = &self.dep.units[f.index];
        self.dep.emit(Event::UnitFinished {
            unit: unit.name(),
            host: unit.host.name.clone(),
            result: UnitResultJson::from(&f.result),
            output: f.output,
        });
        if let UnitResult::Failed { error, .. } = &f.result {
            self.failures += 1;
            if self.failures > max_failures {
                self.halt_with(format!(
                    "{unit} failed ({error}); {} failure(s) exceed max_failures = {max_failures}",
                    self.failures
                ));
            }
        }
        self.states[f.index] = State::Done(f.result);
        self.progress();
    }

    fn halt_with(&mut self, reason: String) {
        if self.halt_reason.is_none() && !self.interrupted {
            self.dep.emit(Event::Halted {
                reason: reason.clone(),
            });
            self.halt_reason = Some(reason);
        }
        self.halt.cancel();
    }

    fn interrupt(&mut self, hard: bool) {
        self.interrupted = true;
        self.hard |= hard;
        self.dep.emit(Event::Interrupted { hard });
        self.halt.cancel();
    }

    fn progress(&self) {
        let out_of_service = self
            .out_names
            .iter()
            .map(|&i| self.dep.units[i].name())
            .collect();
        self.dep.emit(Event::Progress {
            done: self.done,
            total: self.states.len(),
            failed: self.failures,
            in_flight: self.in_flight,
            max_in_flight: self.bound,
            out_of_service,
            gated_on: self
                .gate
                .as_ref()
                .map(|g| g.unhealthy.iter().map(|u| u.unit.clone()).collect())
                .unwrap_or_default(),
        });
    }

    async fn summary(self) -> Report {
        let mut counts = [0usize; 6];
        let units: Vec<UnitSummary> = self
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let unit = &self.dep.units[i];
                let (state, in_rotation, detail, slot) = match s {
                    State::Untouched => ("untouched", true, None, 4),
                    State::InFlight(p) => (
                        "unknown",
                        false,
                        Some(format!("stopped during {}", p.as_str())),
                        1,
                    ),
                    State::Done(UnitResult::Updated) => ("updated", true, None, 0),
                    State::Done(UnitResult::Reverted) => ("reverted", true, None, 2),
                    State::Done(UnitResult::Current) => ("current", true, None, 5),
                    State::Done(UnitResult::Skipped { reason }) => {
                        ("skipped", false, Some(reason.clone()), 3)
                    }
                    State::Done(UnitResult::Failed {
                        phase,
                        error,
                        in_rotation,
                    }) => (
                        "failed",
                        *in_rotation,
                        Some(format!("{}: {error}", phase.as_str())),
                        1,
                    ),
                };
                counts[slot] += 1;
                UnitSummary {
                    unit: unit.name(),
                    host: unit.host.name.clone(),
                    state: state.into(),
                    in_rotation,
                    detail,
                }
            })
            .collect();
        let mut outcome = if self.interrupted {
            Outcome::Interrupted
        } else if self.failures > 0 || self.halt_reason.is_some() {
            Outcome::Failed
        } else {
            Outcome::Success
        };
        // After a hard stop units may be half-way: no `end`, so `recover`
        // treats this deploy as unfinished.
        let mut halt_reason = self.halt_reason;
        if !self.hard {
            if let Err(e) = self
                .dep
                .journal
                .append(Record::End {
                    deploy_id: self.dep.deploy_id.clone(),
                    outcome: format!("{outcome:?}").to_lowercase(),
                })
                .await
            {
                // Then `recover` will find this deploy unfinished: say so.
                let note = format!("cannot close the journal ({e}); run `changeover recover`");
                halt_reason = Some(match halt_reason {
                    Some(r) => format!("{r}; {note}"),
                    None => note,
                });
                if outcome == Outcome::Success {
                    outcome = Outcome::Failed;
                }
            }
        }
        self.dep.emit(Event::DeployFinished {
            outcome,
            updated: counts[0],
            failed: counts[1],
            reverted: counts[2],
            skipped: counts[3],
            untouched: counts[4],
            current: counts[5],
            max_out_of_service_seen: self.max_out_seen,
            units: units.clone(),
        });
        Report {
            outcome,
            units,
            max_out_of_service_seen: self.max_out_seen,
            halt_reason,
        }
    }
}
