//! One unit's walk: take-out → drain → disable → steps → health → put-back →
//! confirm. Runs as its own task; reports phases to the dispatcher and returns
//! how the unit ended. Makes no decision about other units.

use super::Deployment;
use crate::event::{Event, Phase, UnitResult};
use crate::journal::Record;
use crate::lb::{LbAction, LbError, MemberStatus};
use crate::plan::{DrainMode, OnTimeout};
use crate::remote::{CommandOutput, Remote, StepId};
use crate::template::{Template, Vars};
use crate::unit::Unit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// How long one count of connections on a host may take (drain "host").
const COUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// A balancer change that finds the balancer unreachable is retried this
/// many times, waiting 250 ms, 500 ms, 1 s, 2 s (≈ 4 s in all).
const UNREACHABLE_RETRIES: u32 = 4;
const UNREACHABLE_RETRY_FIRST: Duration = Duration::from_millis(250);
/// How long a change is tried again while the balancer answers busy
/// (another change in progress) or throttled.
const BUSY_DEADLINE: Duration = Duration::from_secs(120);
const BUSY_RETRY_FIRST: Duration = Duration::from_millis(200);
const BUSY_RETRY_MAX: Duration = Duration::from_secs(5);

/// `base` scaled into [base/2, base) by a hash of the unit and the attempt,
/// so that units refused together do not all come back together.
fn jittered(base: Duration, unit: &str, attempt: u32) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (unit, attempt).hash(&mut h);
    let frac = (h.finish() % 1000) as f64 / 1000.0;
    base.mul_f64(0.5 + frac / 2.0)
}

/// What a unit task tells the dispatcher while it runs.
pub(crate) enum Msg {
    Phase(usize, Phase),
    Event(Event),
}

pub(crate) struct Walk {
    pub dep: Arc<Deployment>,
    pub unit: Arc<Unit>,
    /// Per balancer: the member's status before the deploy (restore target).
    pub before: Vec<Option<MemberStatus>>,
    /// Set on Ctrl-C or a failure elsewhere: finish the current phase, skip
    /// steps not yet started, go back in if healthy.
    pub halt: CancellationToken,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub seq: Arc<AtomicU64>,
}

/// How a walk ended, plus the output of a failed command.
pub(crate) struct Finished {
    pub index: usize,
    pub result: UnitResult,
    pub output: Option<String>,
}

pub(super) struct Failure {
    phase: Phase,
    error: String,
    output: Option<String>,
}

impl Walk {
    pub(crate) async fn run(self) -> Finished {
        let index = self.unit.index;
        let (result, output) = match self.walk().await {
            Ok(result) => (result, None),
            Err((f, in_rotation)) => (
                UnitResult::Failed {
                    phase: f.phase,
                    error: f.error,
                    in_rotation,
                },
                f.output,
            ),
        };
        Finished {
            index,
            result,
            output,
        }
    }

    fn phase(&self, phase: Phase) {
        let _ = self.tx.send(Msg::Phase(self.unit.index, phase));
    }

    fn vars(&self) -> Vars {
        Vars::for_unit(
            &self.unit,
            &self.dep.version,
            &self.dep.previous_version,
            self.dep.target.as_deref().unwrap_or(""),
        )
    }

    /// The walk proper. `Err((failure, in_rotation))`.
    async fn walk(&self) -> Result<UnitResult, (Failure, bool)> {
        // Take-out, in balancer order.
        self.phase(Phase::TakeOut);
        for li in 0..self.dep.balancers.len() {
            if let Err(f) = self.change(li, LbAction::Drain, Phase::TakeOut).await {
                let back = self.put_back_upto(li).await.is_ok();
                return Err((f, back));
            }
        }

        self.phase(Phase::Drain);
        if let Err(f) = self.drain().await {
            // Nothing was changed on the unit: put it back rather than lose capacity.
            let back = self.put_back_upto(self.dep.balancers.len()).await.is_ok();
            return Err((f, back));
        }

        self.phase(Phase::Disable);
        for (li, lb) in self.dep.balancers.iter().enumerate() {
            if lb.capabilities().distinct_disable {
                self.change(li, LbAction::Disable, Phase::Disable)
                    .await
                    .map_err(|f| (f, false))?;
            }
        }

        // A halt before the steps leaves the unit as it was: put it back.
        let skipped_steps = self.halt.is_cancelled();
        let work = async {
            if !skipped_steps {
                self.phase(Phase::Steps);
                self.steps().await?;
            }
            if self.dep.health.is_some() {
                self.phase(Phase::Health);
                self.health().await?;
            }
            Ok(())
        };
        // Out until put back, even if a balancer forgets it (a reload).
        tokio::select! {
            r = work => r.map_err(|f| (f, false))?,
            _ = self.hold_out() => unreachable!("hold_out runs until dropped"),
        }

        self.phase(Phase::PutBack);
        self.put_back_upto(self.dep.balancers.len())
            .await
            .map_err(|f| (f, false))?;

        self.phase(Phase::Confirm);
        if let Err(f) = self.confirm().await {
            // Back in but not serving: take it out again so it is not left
            // half-in, and report it.
            for li in 0..self.dep.balancers.len() {
                let _ = self.change(li, LbAction::Drain, Phase::Confirm).await;
            }
            return Err((f, false));
        }
        Ok(if skipped_steps {
            UnitResult::Reverted
        } else {
            UnitResult::Updated
        })
    }

    /// Journal, then apply one change on one balancer.
    pub(super) async fn change(
        &self,
        li: usize,
        action: LbAction,
        phase: Phase,
    ) -> Result<(), Failure> {
        let lb = &self.dep.balancers[li];
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let before = self.before.get(li).cloned().flatten();
        self.dep
            .journal
            .append(Record::Intent {
                deploy_id: self.dep.deploy_id.clone(),
                seq,
                balancer: li,
                unit: self.unit.name(),
                member: lb.member_name(&self.unit),
                action,
                before: before.clone(),
            })
            .await
            .map_err(|e| Failure {
                phase,
                error: e.to_string(),
                output: None,
            })?;
        let restore = before.map(|b| vec![b]);
        let restore = if action == LbAction::Enable {
            restore.as_deref()
        } else {
            None
        };
        // A balancer that cannot be reached for a moment (a socket being
        // recreated by a reload, a forward being renewed) is asked again,
        // bounded; one that is busy with another change or throttling is
        // asked again with backoff and jitter until BUSY_DEADLINE; any
        // other refusal fails the unit at once.
        let mut wait = UNREACHABLE_RETRY_FIRST;
        let mut tries = 0;
        let busy_until = Instant::now() + BUSY_DEADLINE;
        let mut backoff = BUSY_RETRY_FIRST;
        let mut busy_tries = 0;
        loop {
            match lb.apply(&[&self.unit], action, restore).await {
                Ok(()) => break,
                Err(LbError::Unreachable { .. }) if tries < UNREACHABLE_RETRIES => {
                    tries += 1;
                    sleep(wait).await;
                    wait *= 2;
                }
                Err(e) if e.is_transient() && Instant::now() < busy_until => {
                    let pause = e
                        .retry_after()
                        .unwrap_or_else(|| jittered(backoff, &self.unit.name(), busy_tries))
                        .min(busy_until.saturating_duration_since(Instant::now()))
                        .max(Duration::from_millis(1));
                    busy_tries += 1;
                    backoff = (backoff * 2).min(BUSY_RETRY_MAX);
                    sleep(pause).await;
                }
                Err(e) => {
                    return Err(Failure {
                        phase,
                        error: format!("{action} on {}: {e}", lb.label()),
                        output: None,
                    })
                }
            }
        }
        if let Err(e) = self
            .dep
            .journal
            .append(Record::Done {
                deploy_id: self.dep.deploy_id.clone(),
                seq,
            })
            .await
        {
            // The change is made; the next intent would fail too: no new
            // unit starts (units in flight stop at their next change).
            self.dep
                .external_halt
                .trigger(format!("{e}; the journal cannot be written"));
        }
        Ok(())
    }

    /// Put back into balancers `0..upto`, in reverse order.
    async fn put_back_upto(&self, upto: usize) -> Result<(), Failure> {
        for li in (0..upto).rev() {
            self.change(li, LbAction::Enable, Phase::PutBack).await?;
        }
        Ok(())
    }

    async fn drain(&self) -> Result<(), Failure> {
        let spec = &self.dep.policy.drain;
        let deadline = Instant::now() + spec.timeout;
        let mut last_sessions: Option<u64> = None;
        // Why the last count could not be taken (a slow or broken SSH
        // command): retried until the deadline, then reported.
        let mut last_error: Option<String> = None;
        loop {
            let drained = match &spec.mode {
                DrainMode::Fixed => {
                    sleep(spec.timeout).await;
                    return Ok(());
                }
                DrainMode::Lb => {
                    let mut total = 0u64;
                    let mut transient = None;
                    let unit: &Unit = &self.unit;
                    for lb in self
                        .dep
                        .balancers
                        .iter()
                        .filter(|l| l.capabilities().counts_sessions)
                    {
                        match lb.status(&[unit]).await.into_iter().next() {
                            Some(Ok(s)) => total += s.sessions.unwrap_or(0),
                            // Throttled or busy: count again at the next
                            // interval, within the drain's deadline.
                            Some(Err(e)) if e.is_transient() => {
                                transient = Some(format!("{}: {e}", lb.label()));
                            }
                            Some(Err(e)) => {
                                return Err(Failure {
                                    phase: Phase::Drain,
                                    error: format!("reading sessions from {}: {e}", lb.label()),
                                    output: None,
                                })
                            }
                            None => {}
                        }
                    }
                    match transient {
                        Some(e) => {
                            last_error = Some(e);
                            false
                        }
                        None => {
                            last_error = None;
                            last_sessions = Some(total);
                            total == 0
                        }
                    }
                }
                DrainMode::Host { local_address } => {
                    match self.count_on_host(local_address.as_ref(), deadline).await? {
                        Ok(n) => {
                            last_sessions = Some(n);
                            last_error = None;
                            n == 0
                        }
                        Err(e) => {
                            last_error = Some(e);
                            false
                        }
                    }
                }
                DrainMode::Command(t) => {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1));
                    match self
                        .dep
                        .remote
                        .run(&self.unit.host, &t.render_shell(&self.vars()), left)
                        .await
                    {
                        Ok(out) => out.success(),
                        Err(_) => false,
                    }
                }
            };
            if drained {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let proceeded = spec.on_timeout == OnTimeout::Proceed;
                let _ = self.tx.send(Msg::Event(Event::DrainTimeout {
                    unit: self.unit.name(),
                    sessions: last_sessions,
                    proceeded,
                }));
                if proceeded {
                    return Ok(());
                }
                return Err(Failure {
                    phase: Phase::Drain,
                    error: match (last_error, last_sessions) {
                        (Some(e), _) => format!(
                            "not drained after {:?} (drain.on_timeout = \"fail\"): the last count failed: {e}",
                            spec.timeout
                        ),
                        (None, Some(n)) => format!(
                            "still {n} open {} after {:?} (drain.on_timeout = \"fail\")",
                            if matches!(spec.mode, DrainMode::Host { .. }) {
                                "connection(s) on the host"
                            } else {
                                "session(s)"
                            },
                            spec.timeout
                        ),
                        (None, None) => format!(
                            "not drained after {:?} (drain.on_timeout = \"fail\")",
                            spec.timeout
                        ),
                    },
                    output: None,
                });
            }
            sleep(
                spec.interval
                    .min(deadline.saturating_duration_since(Instant::now()))
                    .max(Duration::from_millis(1)),
            )
            .await;
        }
    }

    /// Drain mode "host": established connections to the unit's port,
    /// read off the host's `/proc/net/tcp*`. `Ok(Err(why))`: this count
    /// could not be taken (SSH slow or down), try again; `Err`: it never
    /// can (a bad `local_address`, a host without the table).
    async fn count_on_host(
        &self,
        local_address: Option<&Template>,
        deadline: Instant,
    ) -> Result<Result<u64, String>, Failure> {
        let fail = |error: String| Failure {
            phase: Phase::Drain,
            error,
            output: None,
        };
        let port = self.unit.port.expect("validation requires first_port");
        let only = match local_address {
            None => None,
            Some(t) => {
                let text = t.render(&self.vars());
                Some(text.parse::<std::net::IpAddr>().map_err(|_| {
                    fail(format!(
                        "drain.local_address `{t}` gives `{text}` for {}, which is not an IP address",
                        self.unit
                    ))
                })?)
            }
        };
        // A count that runs over the deadline a little is better than one
        // cut short by it: a loaded host answers in seconds, not in the
        // milliseconds left.
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .max(COUNT_TIMEOUT);
        let out = match self
            .dep
            .remote
            .run(&self.unit.host, crate::netstat::PROC_NET_TCP, limit)
            .await
        {
            Ok(out) => out,
            Err(e) => return Ok(Err(format!("counting connections on the host: {e}"))),
        };
        crate::netstat::count_established(&out.stdout, port, only)
            .map(Ok)
            .map_err(|e| {
                fail(format!(
                    "counting connections to port {port} on the host: {e}"
                ))
            })
    }

    async fn steps(&self) -> Result<(), Failure> {
        let deploy = &self.dep.policy.deploy;
        let vars = self.vars();
        let local = deploy.local.iter().map(|t| (t, &self.dep.local, "local"));
        let remote = deploy.run.iter().map(|t| (t, &self.dep.remote, "run"));
        for (index, (template, executor, kind)) in local.chain(remote).enumerate() {
            let id = StepId::for_unit(&self.dep.deploy_id, &self.unit, index);
            self.step(
                template,
                executor.as_ref(),
                kind,
                &vars,
                &id,
                deploy.timeout,
            )
            .await?;
        }
        Ok(())
    }

    /// One step, detached on its executor (`Remote::run_step`): killed there
    /// at its timeout, and left to finish there if changeover dies.
    async fn step(
        &self,
        template: &Template,
        executor: &dyn Remote,
        kind: &str,
        vars: &Vars,
        id: &StepId,
        limit: Duration,
    ) -> Result<(), Failure> {
        let command = template.render_shell(vars);
        match executor
            .run_step(&self.unit.host, &command, id, limit)
            .await
        {
            Ok(out) if out.success() => Ok(()),
            Ok(out) => Err(Failure {
                phase: Phase::Steps,
                error: format!(
                    "{kind} step `{command}` {}",
                    match out.status {
                        Some(code) => format!("exited with status {code}"),
                        None => "was killed by a signal".into(),
                    }
                ),
                output: Some(output_tail(&out)),
            }),
            Err(e) => Err(Failure {
                phase: Phase::Steps,
                error: e.to_string(),
                output: None,
            }),
        }
    }

    async fn health(&self) -> Result<(), Failure> {
        let spec = self.dep.policy.health.as_ref().expect("checked by caller");
        let probe = self.dep.health.as_ref().expect("checked by caller");
        let deadline = Instant::now() + spec.deadline;
        let mut passes = 0;
        let mut last_error = String::from("no check completed");
        loop {
            let started = Instant::now();
            match timeout(spec.timeout, probe.probe(&self.unit)).await {
                Ok(Ok(())) => passes += 1,
                Ok(Err(e)) => {
                    passes = 0;
                    last_error = e;
                }
                Err(_) => {
                    passes = 0;
                    last_error = format!("timed out after {:?}", spec.timeout);
                }
            }
            if passes >= spec.healthy_threshold {
                return Ok(());
            }
            let next = started + spec.interval;
            if next >= deadline {
                return Err(Failure {
                    phase: Phase::Health,
                    error: format!(
                        "not healthy within {:?} ({}: {last_error})",
                        spec.deadline,
                        probe.describe(&self.unit)
                    ),
                    output: None,
                });
            }
            tokio::time::sleep_until(next).await;
        }
    }

    async fn confirm(&self) -> Result<(), Failure> {
        let limit = self
            .dep
            .policy
            .health
            .as_ref()
            .map_or(Duration::from_secs(60), |h| h.deadline);
        let deadline = Instant::now() + limit;
        let unit: &Unit = &self.unit;
        loop {
            let mut waiting = None;
            for lb in &self.dep.balancers {
                match lb.status(&[unit]).await.into_iter().next() {
                    Some(Ok(s)) if s.is_serving() => {}
                    Some(Ok(s)) => {
                        waiting = Some(format!(
                            "{} reports {} as \"{}\"",
                            lb.label(),
                            s.member,
                            s.raw
                        ))
                    }
                    Some(Err(e)) => waiting = Some(format!("{}: {e}", lb.label())),
                    None => {}
                }
            }
            let Some(why) = waiting else { return Ok(()) };
            if Instant::now() >= deadline {
                return Err(Failure {
                    phase: Phase::Confirm,
                    error: format!("not serving {limit:?} after put-back: {why}"),
                    output: None,
                });
            }
            sleep(CONFIRM_POLL).await;
        }
    }
}

/// How often `confirm` asks the balancers again: a status read is cheap,
/// and the unit's wave (or window slot) waits on the answer.
const CONFIRM_POLL: Duration = Duration::from_millis(25);

/// The last lines of a failed command's output, for the report.
fn output_tail(out: &CommandOutput) -> String {
    fn tail(s: &str) -> String {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
    let mut text = String::new();
    if !out.stdout.trim().is_empty() {
        text.push_str("--- stdout ---\n");
        text.push_str(&tail(&out.stdout));
        text.push('\n');
    }
    if !out.stderr.trim().is_empty() {
        text.push_str("--- stderr ---\n");
        text.push_str(&tail(&out.stderr));
        text.push('\n');
    }
    text
}
