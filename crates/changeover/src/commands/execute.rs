//! The one path every rollout takes (deploy, rollback, unify, the
//! auto-rollback after a failure, the demo):
//!
//! lock → pointer → version → build the rollout → preflight → which units
//! are already current → in_progress → run → record units (as each is
//! confirmed back), pointer, history → (on_failure = "rollback": unify) →
//! release.

use super::{report_preflight, Ctx};
use crate::exit;
use crate::witnessing;
use changeover_adapters::hooks::{Hooks, RunInfo};
use changeover_adapters::wiring::{self, RolloutArgs};
use changeover_adapters::witness::WitnessReport;
use changeover_core::engine::{self, Deployment, Report};
use changeover_core::event::{Event, EventSink, Outcome};
use changeover_core::plan::{OnFailure, Target};
use changeover_core::state::{self, Counts, HistoryEntry, InProgress, Mover, UnitVersion};
use changeover_core::store::{Acquired, LockGuard, LockKind, LockRecord, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--version V` to the target.
    Deploy,
    /// The pointer's `previous`, then swap current and previous.
    Rollback,
    /// The pointer's `current` to every unit not recorded on it.
    Unify,
}

impl Kind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Rollback => "rollback",
            Kind::Unify => "unify",
        }
    }
}

pub struct Request {
    pub kind: Kind,
    pub target: Option<String>,
    /// Deploy only.
    pub version: Option<String>,
    /// The git ref the operator typed, when `version` is the sha it names.
    pub version_ref: Option<String>,
    pub message: Option<String>,
    pub force: Vec<String>,
    pub redeploy: bool,
    pub lock_wait: Option<Duration>,
    /// `--report FILE.html`.
    pub report: Option<std::path::PathBuf>,
    /// `--silent`: no `[[notify]]`.
    pub silent: bool,
}

/// How a rollout ended, for the caller (the demo reads the report).
pub struct Executed {
    pub exit: u8,
    pub report: Option<Report>,
    pub dep: Option<Arc<Deployment>>,
    pub witness: Option<WitnessReport>,
    pub wall: Duration,
}

impl Executed {
    pub(super) fn exit(code: u8) -> Executed {
        Executed {
            exit: code,
            report: None,
            dep: None,
            witness: None,
            wall: Duration::ZERO,
        }
    }
}

/// `rollback` and `unify`: the version comes from the pointer.
pub async fn roll(ctx: &Ctx, kind: Kind, target: Option<String>, run: crate::cli::RunArgs) -> u8 {
    let req = Request {
        kind,
        target,
        version: None,
        version_ref: None,
        message: run.message,
        force: Vec::new(),
        redeploy: false,
        lock_wait: run.lock_wait,
        report: run.report,
        silent: run.silent,
    };
    execute(ctx, req).await.exit
}

/// Run `req`, with its report and notifications (`around::with_extras`).
pub async fn execute(ctx: &Ctx, req: Request) -> Executed {
    super::around::with_extras(ctx, req).await
}

pub(super) async fn execute_run(ctx: &Ctx, req: Request) -> Executed {
    let target = match ctx.plan.target(req.target.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Executed::exit(exit::USAGE);
        }
    };
    let policy = &target.policy;
    let label = target.name.as_deref().unwrap_or("(whole fleet)");
    if let Some(v) = &req.version {
        if v.trim().is_empty() || v.starts_with('-') {
            eprintln!(
                "error: --version {v:?} is not a usable version: it must not be empty or start with '-' (a step would take it for an option); nothing was touched"
            );
            return Executed::exit(exit::USAGE);
        }
    }
    if policy.require_message && req.message.as_deref().is_none_or(|m| m.trim().is_empty()) {
        eprintln!(
            "error: target {label} requires a message: add --message \"why this {}\"; nothing was touched",
            req.kind.as_str()
        );
        return Executed::exit(exit::USAGE);
    }
    if req.kind == Kind::Unify && !policy.can_unify {
        eprintln!("error: target {label} has can_unify = false: unify is not allowed on it; nothing was touched");
        return Executed::exit(exit::USAGE);
    }
    let store = match ctx.store().await {
        Ok(s) => s,
        Err(code) => return Executed::exit(code),
    };
    let holder = state::holder();
    let deploy_id = state::new_deploy_id();
    let guard = match &policy.lock {
        None => None,
        Some(name) => {
            let record = LockRecord {
                name: name.clone(),
                holder: holder.clone(),
                pid: std::process::id(),
                deploy_id: Some(deploy_id.clone()),
                target: target.name.clone(),
                version: req.version.clone(),
                message: req.message.clone(),
                acquired_at: state::now_rfc3339(),
                kind: LockKind::Deploy,
            };
            match take_lock(store.as_ref(), &record, req.lock_wait).await {
                Ok(g) => g,
                Err(code) => return Executed::exit(code),
            }
        }
    };
    let lost = guard.as_ref().map(|g| g.lost());
    // A crashed deploy may have left units out: recover it first.
    let journal = changeover_adapters::store::journal(&ctx.plan.store, &ctx.plan.state_dir, &store);
    match super::recover::unfinished(journal.as_ref()).await {
        Ok(open) if open.is_empty() => {}
        Ok(open) => {
            for u in &open {
                eprintln!("error: {}", super::recover::describe(u));
            }
            eprintln!("  it may have left units out of the balancers; run `changeover recover` first; nothing was touched");
            if let Some(g) = guard {
                let _ = g.release().await;
            }
            return Executed::exit(exit::NO_GO);
        }
        Err(e) => {
            eprintln!("error: cannot read the journal: {e}");
            if let Some(g) = guard {
                let _ = g.release().await;
            }
            return Executed::exit(exit::NO_GO);
        }
    }

    let first = run_once(
        ctx,
        &store,
        &journal,
        &target,
        &req,
        &deploy_id,
        &holder,
        lost.clone(),
        None,
    )
    .await;
    let mut result = first.executed;
    if result.exit == exit::FAILED
        && req.kind == Kind::Deploy
        && first.ran
        && policy.strategy.on_failure == OnFailure::Rollback
    {
        eprintln!("on_failure = \"rollback\": bringing every unit of {label} back to the pointer's current version (unify)");
        let unify_id = state::new_deploy_id();
        // The units the failure left out go back too if the old version is
        // healthy there: for the unify they are "already out", as --force
        // says, not a reason for a no-go.
        let mut force = req.force.clone();
        force.extend(
            result
                .report
                .iter()
                .flat_map(|r| &r.units)
                .filter(|u| !u.in_rotation)
                .map(|u| u.host.clone()),
        );
        let again = Request {
            kind: Kind::Unify,
            target: req.target.clone(),
            version: None,
            version_ref: None,
            message: req.message.clone(),
            force,
            redeploy: false,
            lock_wait: None,
            report: None,
            silent: req.silent,
        };
        let second = run_once(
            ctx,
            &store,
            &journal,
            &target,
            &again,
            &unify_id,
            &holder,
            lost,
            Some(deploy_id.clone()),
        )
        .await;
        let outcome = if second.executed.exit == exit::OK {
            "success"
        } else {
            "failed"
        };
        if let Err(e) = mark_rolled_back(store.as_ref(), &deploy_id, &unify_id, outcome).await {
            eprintln!("warning: cannot note the rollback in the history: {e}");
        }
        // The deploy failed either way; the rollback's own result is in
        // its summary and the history.
        result.wall += second.executed.wall;
    }
    if let Some(g) = guard {
        if let Err(e) = g.release().await {
            eprintln!("warning: cannot release the lock: {e}");
        }
    }
    result
}

/// Take the run's lock: at once, or waiting up to `wait`. `Err(exit code)`
/// after saying who holds it.
async fn take_lock(
    store: &dyn Store,
    record: &LockRecord,
    wait: Option<Duration>,
) -> Result<Option<Box<dyn LockGuard>>, u8> {
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let mut said = false;
    loop {
        match store.acquire(record).await {
            Ok(Acquired::Held(g)) => return Ok(Some(g)),
            Ok(Acquired::Busy(other)) => {
                if other.kind == LockKind::Manual && other.holder == record.holder {
                    eprintln!(
                        "note: {}; it is yours, going ahead under it",
                        other.describe()
                    );
                    return Ok(None);
                }
                match deadline {
                    Some(d) if tokio::time::Instant::now() < d => {
                        if !said {
                            eprintln!("waiting for the lock: {}", other.describe());
                            said = true;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Some(_) => {
                        eprintln!("error: gave up waiting (--lock-wait): {}", other.describe());
                        return Err(exit::LOCKED);
                    }
                    None => {
                        eprintln!("error: {}", other.describe());
                        eprintln!("  nothing was touched; wait for it (--lock-wait 10m), or if it is stale, `changeover lock release {} --force`", record.name);
                        return Err(exit::LOCKED);
                    }
                }
            }
            Err(e) => {
                eprintln!("error: cannot take the lock `{}`: {e}", record.name);
                return Err(exit::NO_GO);
            }
        }
    }
}

struct Once {
    executed: Executed,
    /// The rollout started (preflight passed): something may have changed.
    ran: bool,
}

#[allow(clippy::too_many_arguments)]
async fn run_once(
    ctx: &Ctx,
    store: &Arc<dyn Store>,
    journal: &Arc<dyn changeover_core::journal::Journal>,
    target: &Target,
    req: &Request,
    deploy_id: &str,
    holder: &str,
    lost: Option<CancellationToken>,
    rollback_of: Option<String>,
) -> Once {
    let kind = req.kind;
    let no = |code| Once {
        executed: Executed::exit(code),
        ran: false,
    };
    let plan = &ctx.plan;
    let policy = &target.policy;
    let label = target.name.as_deref().unwrap_or("(whole fleet)");
    let (pointer, _) = match state::read_pointer(store.as_ref(), &policy.pointer).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot read pointer {}: {e}", policy.pointer);
            return no(exit::NO_GO);
        }
    };
    let version = match kind {
        Kind::Deploy => req.version.clone().unwrap_or_default(),
        Kind::Rollback => match &pointer.previous {
            Some(v) => v.clone(),
            None => {
                eprintln!(
                    "error: pointer {} has no previous version (current: {}): nothing to roll back to; nothing was touched",
                    policy.pointer,
                    pointer.current.as_deref().unwrap_or("none")
                );
                return no(exit::USAGE);
            }
        },
        Kind::Unify => match &pointer.current {
            Some(v) => v.clone(),
            None => {
                eprintln!(
                    "error: pointer {} has no current version yet: deploy one first (changeover deploy {} --version V); nothing was touched",
                    policy.pointer,
                    target.name.as_deref().unwrap_or("")
                );
                return no(exit::USAGE);
            }
        },
    };
    let uses_previous = policy
        .deploy
        .run
        .iter()
        .chain(&policy.deploy.local)
        .any(|t| t.placeholders().any(|p| p == "previous_version"));
    if uses_previous && pointer.current.is_none() {
        eprintln!(
            "error: a deploy step uses {{previous_version}}, but pointer {} has no version yet; deploy once without it, or set the pointer first; nothing was touched",
            policy.pointer
        );
        return no(exit::USAGE);
    }
    let (rec_tx, rec_rx) = mpsc::unbounded_channel::<String>();
    let recorder = Arc::new(Recorder {
        inner: ctx.events.clone(),
        confirmed: std::sync::Mutex::new(Some(rec_tx)),
    });
    let mut dep = match wiring::deployment(
        plan,
        target,
        RolloutArgs {
            deploy_id: deploy_id.to_string(),
            version: version.clone(),
            previous_version: pointer.current.clone().unwrap_or_default(),
            force: &req.force,
            events: recorder.clone(),
            journal: Some(journal.clone()),
        },
    )
    .await
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return no(exit::USAGE);
        }
    };
    let previous_version = pointer.current.clone().unwrap_or_default();
    let hooks = Arc::new(Hooks::new(
        &plan.hooks,
        &RunInfo {
            app: &plan.app,
            target: target.name.as_deref(),
            command: kind.as_str(),
            version: &version,
            version_ref: req.version_ref.as_deref(),
            previous_version: &previous_version,
            deploy_id,
            message: req.message.as_deref(),
            holder,
        },
    ));
    if plan.hooks.any_wave_hook() {
        dep.wave_hooks = Some(hooks.clone());
    }
    let dep = Arc::new(dep);
    let started_at = state::now_rfc3339();
    let mut pf = engine::preflight(&dep).await;
    if let Some(spec) = &plan.artifact {
        if let Err(problem) = changeover_adapters::version::check_artifact(
            spec,
            &version,
            &previous_version,
            target.name.as_deref().unwrap_or(""),
        )
        .await
        {
            pf.problems.push(problem);
        }
    }
    report_preflight(&dep, &pf);
    if !pf.go() {
        dep.remote.close().await;
        eprintln!("no-go: nothing was changed");
        return no(exit::NO_GO);
    }
    // Units already on the version and serving are not touched.
    if !req.redeploy {
        match state::unit_versions(store.as_ref()).await {
            Ok(recorded) => {
                for u in &dep.units {
                    let on_it = recorded
                        .get(&u.name())
                        .is_some_and(|r| r.version == version);
                    let serving = pf.before[u.index]
                        .iter()
                        .all(|s| s.as_ref().is_some_and(|s| s.is_serving()));
                    if on_it && serving && !pf.skipped.contains_key(&u.index) {
                        pf.current.insert(u.index);
                    }
                }
            }
            Err(e) => {
                dep.remote.close().await;
                eprintln!("error: cannot read the unit versions: {e}");
                return no(exit::NO_GO);
            }
        }
    }
    let unit_names: Vec<String> = dep.units.iter().map(|u| u.name()).collect();
    if let Err(e) = super::around::hook(
        &hooks,
        "pre_deploy",
        &unit_names,
        &[],
        dep.events.as_ref(),
        dep.started.elapsed(),
    )
    .await
    {
        dep.remote.close().await;
        eprintln!("error: the pre_deploy hook failed: {e}; nothing was changed");
        return no(exit::FAILED);
    }
    // `[deploy] prepare` on every unit, everything still in rotation.
    engine::prepare(&dep, &mut pf).await;
    if !pf.go() {
        report_preflight(&dep, &pf);
        dep.remote.close().await;
        eprintln!("no-go: prepare failed; nothing was taken out of a balancer");
        return no(exit::NO_GO);
    }
    for note in pf.notes.iter().filter(|n| n.contains("prepare")) {
        eprintln!("note: {note}");
    }
    let in_progress = InProgress {
        deploy_id: deploy_id.to_string(),
        target: target.name.clone(),
        version: version.clone(),
        started_at: started_at.clone(),
        holder: holder.to_string(),
    };
    if let Err(e) = state::update_pointer(store.as_ref(), &policy.pointer, |p| {
        let mut n = p.clone();
        n.in_progress = Some(in_progress.clone());
        Some(n)
    })
    .await
    {
        dep.remote.close().await;
        eprintln!("error: cannot write pointer {}: {e}", policy.pointer);
        return no(exit::NO_GO);
    }

    // Record each unit's version the moment it is confirmed back.
    let writer = {
        let store = Arc::clone(store);
        let version = version.clone();
        let deploy_id = deploy_id.to_string();
        tokio::spawn(record_units(store, rec_rx, version, deploy_id))
    };
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let signals = tokio::spawn(crate::watch_signals(stop.clone(), abort.clone()));
    let lock_watch = lost.map(|lost| {
        let halt = dep.external_halt.clone();
        tokio::spawn(async move {
            lost.cancelled().await;
            halt.trigger("lost the deploy lock (the store could not vouch for it any more)");
        })
    });
    let witness = match plan
        .witness
        .as_ref()
        .map(|w| witnessing::start(w, &dep))
        .transpose()
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    };
    let t0 = tokio::time::Instant::now();
    let report = engine::run(Arc::clone(&dep), &pf, stop, abort).await;
    let wall = t0.elapsed();
    let seen = match witness {
        Some(w) => Some(w.finish(&dep).await),
        None => None,
    };
    signals.abort();
    if let Some(w) = lock_watch {
        w.abort();
    }
    dep.remote.close().await;
    let succeeded = report.outcome == Outcome::Success
        && report
            .units
            .iter()
            .all(|u| u.state == "updated" || u.state == "current");

    let mover = Mover {
        holder: holder.to_string(),
        deploy_id: deploy_id.to_string(),
    };
    let moved = state::update_pointer(store.as_ref(), &policy.pointer, |p| {
        let mut n = match kind {
            Kind::Deploy => p.after_deploy(&version, succeeded, policy.partial, &mover),
            Kind::Rollback => p.after_rollback(succeeded, &mover),
            Kind::Unify => None,
        }
        .unwrap_or_else(|| p.clone());
        if n.in_progress
            .as_ref()
            .is_some_and(|ip| ip.deploy_id == deploy_id)
        {
            n.in_progress = None;
        }
        Some(n)
    })
    .await;
    match &moved {
        Ok(Some(p))
            if kind != Kind::Unify && succeeded && !(kind == Kind::Deploy && policy.partial) =>
        {
            eprintln!(
                "pointer {}: current {}, previous {}",
                policy.pointer,
                p.current.as_deref().unwrap_or("none"),
                p.previous.as_deref().unwrap_or("none")
            );
        }
        Ok(_) if kind == Kind::Deploy && policy.partial => {
            eprintln!("pointer {} unchanged (partial target)", policy.pointer)
        }
        Ok(_) => {}
        Err(e) => eprintln!(
            "error: cannot move pointer {} ({e}); the units are recorded, the pointer is not: run `changeover status {}` and deploy again once the store answers",
            policy.pointer,
            target.name.as_deref().unwrap_or("")
        ),
    }
    recorder.close();
    let failures_recording = writer.await.unwrap_or(1);

    let mut counts = Counts::default();
    for u in &report.units {
        match u.state.as_str() {
            "updated" => counts.updated += 1,
            "current" => counts.current += 1,
            "failed" | "unknown" => counts.failed += 1,
            "reverted" => counts.reverted += 1,
            "skipped" => counts.skipped += 1,
            _ => counts.untouched += 1,
        }
    }
    let outcome = match report.outcome {
        Outcome::Success => "success",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
    };
    let entry = HistoryEntry {
        deploy_id: deploy_id.to_string(),
        target: target.name.clone(),
        command: kind.as_str().to_string(),
        version: version.clone(),
        version_ref: req.version_ref.clone(),
        previous: pointer.current.clone(),
        pointer: policy.pointer.clone(),
        partial: policy.partial,
        message: req.message.clone(),
        holder: holder.to_string(),
        started_at,
        duration_ms: wall.as_millis() as u64,
        outcome: outcome.to_string(),
        counts,
        rolled_back_by: None,
        rollback_outcome: None,
        rollback_of,
    };
    if let Err(e) = state::write_history(store.as_ref(), &entry).await {
        eprintln!("error: cannot write the history of {deploy_id}: {e}");
    }
    if failures_recording > 0 {
        eprintln!(
            "warning: {failures_recording} unit version(s) could not be recorded in {}",
            store.describe()
        );
    }
    if !ctx.quiet && kind != Kind::Deploy {
        eprintln!("{} of {label} to {version}: {outcome}", kind.as_str());
    }
    // post_deploy always, on_failure once on a failure; their failures are
    // reported, never change the run's outcome.
    let outcome_env = [("OUTCOME", outcome.to_string())];
    let mut after = vec!["post_deploy"];
    if report.outcome == Outcome::Failed {
        after.push("on_failure");
    }
    for name in after {
        if let Err(e) = super::around::hook(
            &hooks,
            name,
            &unit_names,
            &outcome_env,
            dep.events.as_ref(),
            dep.started.elapsed(),
        )
        .await
        {
            eprintln!("warning: the {name} hook failed: {e}");
        }
    }
    let code = match report.outcome {
        // The hosts are done but the store does not say so: not a success.
        Outcome::Success if moved.is_err() => exit::FAILED,
        Outcome::Success => exit::OK,
        Outcome::Failed => exit::FAILED,
        Outcome::Interrupted => exit::INTERRUPTED,
    };
    Once {
        executed: Executed {
            exit: code,
            report: Some(report),
            dep: Some(dep),
            witness: seen,
            wall,
        },
        ran: true,
    }
}

async fn record_units(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<String>,
    version: String,
    deploy_id: String,
) -> usize {
    let mut failed = 0;
    while let Some(unit) = rx.recv().await {
        let rec = UnitVersion {
            version: version.clone(),
            deploy_id: deploy_id.clone(),
            at: state::now_rfc3339(),
        };
        if let Err(e) = state::record_unit(store.as_ref(), &unit, &rec).await {
            eprintln!("warning: cannot record {unit} on {version}: {e}");
            failed += 1;
        }
    }
    failed
}

async fn mark_rolled_back(
    store: &dyn Store,
    deploy_id: &str,
    by: &str,
    outcome: &str,
) -> Result<(), changeover_core::store::StoreError> {
    if let Some(mut h) = state::read_history(store, deploy_id).await? {
        h.rolled_back_by = Some(by.to_string());
        h.rollback_outcome = Some(outcome.to_string());
        state::write_history(store, &h).await?;
    }
    Ok(())
}

/// Forwards every event to the reporter, and the name of every unit
/// confirmed back on the new version to the unit-version writer.
struct Recorder {
    inner: Arc<dyn EventSink>,
    confirmed: std::sync::Mutex<Option<mpsc::UnboundedSender<String>>>,
}

impl Recorder {
    /// The rollout is over: the writer ends once it has written the rest.
    fn close(&self) {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

impl EventSink for Recorder {
    fn emit(&self, elapsed: Duration, event: Event) {
        if let Event::UnitFinished { unit, result, .. } = &event {
            if result.result == "updated" {
                if let Some(tx) = &*self.confirmed.lock().unwrap_or_else(|e| e.into_inner()) {
                    let _ = tx.send(unit.clone());
                }
            }
        }
        self.inner.emit(elapsed, event);
    }
}
