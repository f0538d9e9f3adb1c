//! `changeover recover`: after a crash, put every balancer member back as it
//! was before the unfinished deploy, where the unit is healthy.
//!
//! For each unfinished deploy in the journal (oldest first): take its lock
//! (a dead holder's lock is free: at once locally, within the lease TTL on
//! etcd; a live holder means it is not a crash, and recover stops) → fold
//! the journal into what each unit may have left out ([`journal::fold`]) →
//! match the journal's balancers and members with the config (a balancer the
//! config no longer has stops it, naming it) → per unit that may be out:
//! probe it; healthy → restore every member (the state and weight from
//! before the deploy, journaled like any change); unhealthy → leave it out
//! and name it → close the journal (`end`, outcome `recovered`) → clear the
//! pointer's `in_progress` → history → release. A second run finds nothing
//! and says so. Exit 1 when a unit had to be left out.

use super::Ctx;
use crate::exit;
use changeover_adapters::wiring::{self, RolloutArgs};
use changeover_core::health::HealthProbe;
use changeover_core::journal::{self, Journal, JournalError, Record, Unfinished};
use changeover_core::lb::{AdminState, LbAction, LoadBalancer, MemberStatus};
use changeover_core::plan::{HealthSpec, StoreSpec};
use changeover_core::state::{self, Counts, HistoryEntry};
use changeover_core::store::{Acquired, LockKind, LockRecord, Store};
use changeover_core::unit::Unit;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The unfinished deploys of a journal, folded.
pub async fn unfinished(journal: &dyn Journal) -> Result<Vec<Unfinished>, JournalError> {
    Ok(journal
        .unfinished()
        .await?
        .iter()
        .filter_map(|records| journal::fold(records))
        .collect())
}

/// "deploy X of target T (v2) by alice@laptop, started …, is unfinished".
pub fn describe(u: &Unfinished) -> String {
    format!(
        "deploy {} of {} ({}) by {}, started {}, did not finish",
        u.deploy_id,
        u.target
            .as_deref()
            .map_or("the whole fleet".to_string(), |t| format!("target {t}")),
        u.version,
        u.holder.as_deref().unwrap_or("?"),
        state::rfc3339(u.started_ms / 1000, (u.started_ms % 1000) as u32)
    )
}

/// What recovering one deploy did.
struct Recovered {
    deploy_id: String,
    restored: Vec<String>,
    left_out: Vec<(String, String)>,
}

pub async fn run(ctx: &Ctx) -> u8 {
    let store = match ctx.store().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let journal = changeover_adapters::store::journal(&ctx.plan.store, &ctx.plan.state_dir, &store);
    let open = match unfinished(journal.as_ref()).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: cannot read the journal: {e}");
            return exit::FAILED;
        }
    };
    if open.is_empty() {
        ctx.out(&format!(
            "nothing to recover: no unfinished deploy in {}",
            journal.describe()
        ));
        if ctx.json {
            ctx.print_json("recover", json!({ "deploys": [] }));
        }
        return exit::OK;
    }
    let mut done = Vec::new();
    let mut code = exit::OK;
    for u in &open {
        eprintln!("recovering: {}", describe(u));
        match recover_one(ctx, &store, &journal, u).await {
            Ok(r) => {
                for name in &r.restored {
                    ctx.out(&format!(
                        "  {name:<14} back in rotation as before the deploy"
                    ));
                }
                for (name, why) in &r.left_out {
                    ctx.out(&format!("  {name:<14} LEFT OUT: {why}"));
                }
                if !r.left_out.is_empty() {
                    let hosts: std::collections::BTreeSet<&str> = r
                        .left_out
                        .iter()
                        .map(|(n, _)| n.split('#').next().unwrap_or(n))
                        .collect();
                    eprintln!(
                        "the unit(s) left out stay out of rotation; once fixed, `changeover deploy --version V --force {}` deploys and puts them back",
                        hosts.into_iter().collect::<Vec<_>>().join(",")
                    );
                }
                if r.restored.is_empty() && r.left_out.is_empty() {
                    ctx.out("  every unit was already back in rotation");
                }
                if !r.left_out.is_empty() {
                    code = exit::FAILED;
                }
                done.push(r);
            }
            Err(stop) => {
                eprintln!("error: {}", stop.message);
                if ctx.json {
                    ctx.print_json("recover", json!({ "deploys": report(&done), "stopped": {"deploy_id": u.deploy_id, "error": stop.message} }));
                }
                return stop.code;
            }
        }
    }
    if ctx.json {
        ctx.print_json("recover", json!({ "deploys": report(&done) }));
    }
    code
}

fn report(done: &[Recovered]) -> Vec<serde_json::Value> {
    done.iter()
        .map(|r| {
            json!({
                "deploy_id": r.deploy_id,
                "restored": r.restored,
                "left_out": r.left_out.iter().map(|(u, why)| json!({"unit": u, "error": why})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

struct Stop {
    code: u8,
    message: String,
}

fn stop(code: u8, message: impl Into<String>) -> Stop {
    Stop {
        code,
        message: message.into(),
    }
}

async fn recover_one(
    ctx: &Ctx,
    store: &Arc<dyn Store>,
    journal: &Arc<dyn Journal>,
    u: &Unfinished,
) -> Result<Recovered, Stop> {
    let plan = &ctx.plan;
    let started = tokio::time::Instant::now();
    let started_at = state::now_rfc3339();
    // The deploy's lock: free once its holder is dead.
    let guard = match &u.lock {
        None => None,
        Some(name) => Some(take_dead_lock(plan.store.clone(), store.as_ref(), name, u).await?),
    };
    let result = restore(ctx, journal, u).await;
    let (restored, left_out) = match result {
        Ok(r) => r,
        Err(s) => {
            if let Some(g) = guard {
                let _ = g.release().await;
            }
            return Err(s);
        }
    };
    let outcome = if left_out.is_empty() {
        "recovered"
    } else {
        "recovered_with_units_out"
    };
    if let Err(e) = journal
        .append(Record::End {
            deploy_id: u.deploy_id.clone(),
            outcome: outcome.into(),
        })
        .await
    {
        if let Some(g) = guard {
            let _ = g.release().await;
        }
        return Err(stop(
            exit::FAILED,
            format!("cannot close the journal of {}: {e}", u.deploy_id),
        ));
    }
    // The pointer's in_progress, if it is still this deploy's.
    let pointer = plan
        .target(u.target.as_deref())
        .map(|t| t.policy.pointer)
        .unwrap_or_else(|_| u.target.clone().unwrap_or_else(|| "fleet".into()));
    if let Err(e) = state::update_pointer(store.as_ref(), &pointer, |p| {
        if p.in_progress
            .as_ref()
            .is_some_and(|ip| ip.deploy_id == u.deploy_id)
        {
            let mut n = p.clone();
            n.in_progress = None;
            Some(n)
        } else {
            None
        }
    })
    .await
    {
        eprintln!("warning: cannot clear pointer {pointer}'s in_progress: {e}");
    }
    let entry = HistoryEntry {
        deploy_id: format!("{}-recover", u.deploy_id),
        target: u.target.clone(),
        command: "recover".into(),
        version: u.version.clone(),
        version_ref: None,
        previous: None,
        pointer,
        partial: false,
        message: Some(format!("recovered deploy {}", u.deploy_id)),
        holder: state::holder(),
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        outcome: if left_out.is_empty() {
            "success"
        } else {
            "failed"
        }
        .into(),
        counts: Counts {
            updated: restored.len(),
            failed: left_out.len(),
            ..Counts::default()
        },
        rolled_back_by: None,
        rollback_outcome: None,
        rollback_of: Some(u.deploy_id.clone()),
    };
    if let Err(e) = state::write_history(store.as_ref(), &entry).await {
        eprintln!("warning: cannot write the history: {e}");
    }
    if let Some(g) = guard {
        if let Err(e) = g.release().await {
            eprintln!("warning: cannot release the lock: {e}");
        }
    }
    Ok(Recovered {
        deploy_id: u.deploy_id.clone(),
        restored,
        left_out,
    })
}

/// Take the crashed deploy's lock. A holder that is still alive means the
/// deploy is running, not crashed: stop. On etcd a dead holder's lease runs
/// out within the TTL (Consul: twice the TTL), so wait that long.
async fn take_dead_lock(
    spec: StoreSpec,
    store: &dyn Store,
    name: &str,
    u: &Unfinished,
) -> Result<Box<dyn changeover_core::store::LockGuard>, Stop> {
    let wait = match &spec {
        StoreSpec::Etcd(e) => e.lock_ttl + Duration::from_secs(2),
        // Consul may wait up to twice the TTL before it ends a session.
        StoreSpec::Consul(c) => c.lock_ttl * 2 + Duration::from_secs(2),
        StoreSpec::Local { .. } => Duration::ZERO,
    };
    let record = LockRecord {
        name: name.to_string(),
        holder: state::holder(),
        pid: std::process::id(),
        deploy_id: Some(format!("{}-recover", u.deploy_id)),
        target: u.target.clone(),
        version: Some(u.version.clone()),
        message: Some(format!("recovering deploy {}", u.deploy_id)),
        acquired_at: state::now_rfc3339(),
        kind: LockKind::Deploy,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut said = false;
    loop {
        match store.acquire(&record).await {
            Ok(Acquired::Held(g)) => return Ok(g),
            Ok(Acquired::Busy(other)) => {
                let same = other.deploy_id.as_deref() == Some(u.deploy_id.as_str());
                if tokio::time::Instant::now() >= deadline {
                    return Err(stop(
                        exit::NO_GO,
                        if same {
                            format!("{}: that deploy is still running (its holder is alive), not crashed; let it finish, or stop it with Ctrl-C", other.describe())
                        } else {
                            format!(
                                "{}; recover needs that lock: wait for it, or release it",
                                other.describe()
                            )
                        },
                    ));
                }
                if !said {
                    eprintln!(
                        "waiting up to {} for the crashed holder's lock to expire: {}",
                        humantime::format_duration(wait),
                        other.describe()
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(stop(exit::NO_GO, format!("cannot take lock `{name}`: {e}"))),
        }
    }
}

/// Put back what can be put back. (restored units, left-out units with why)
async fn restore(
    ctx: &Ctx,
    journal: &Arc<dyn Journal>,
    u: &Unfinished,
) -> Result<(Vec<String>, Vec<(String, String)>), Stop> {
    let plan = &ctx.plan;
    let target = plan.target(u.target.as_deref()).map_err(|e| {
        stop(
            exit::USAGE,
            format!("the journal of deploy {} names {e}; put the target back in the config to recover it", u.deploy_id),
        )
    })?;
    // Every balancer the journal names, from today's config, by label.
    let mut full = target.clone();
    full.policy.lb_takeout = true;
    let all_units = plan.units();
    full.units = all_units.clone();
    let dep = wiring::deployment(
        plan,
        &full,
        RolloutArgs {
            deploy_id: u.deploy_id.clone(),
            version: u.version.clone(),
            previous_version: String::new(),
            force: &[],
            events: ctx.events.clone(),
            journal: Some(Arc::clone(journal)),
        },
    )
    .await
    .map_err(|e| stop(exit::USAGE, e))?;
    let mut lbs: Vec<Arc<dyn LoadBalancer>> = Vec::new();
    for label in &u.balancers {
        match dep.balancers.iter().find(|b| &b.label() == label) {
            Some(b) => lbs.push(Arc::clone(b)),
            None => {
                dep.remote.close().await;
                return Err(stop(
                    exit::USAGE,
                    format!(
                        "the journal of deploy {} names balancer `{label}`, which the config no longer has (it has: {}); put it back in the config (or put its members back by hand) and run recover again",
                        u.deploy_id,
                        dep.balancers.iter().map(|b| b.label()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    // Units and members as the journal names them.
    let mut work: Vec<(Arc<Unit>, Vec<journal::MemberToRestore>)> = Vec::new();
    for (name, members) in &u.units {
        if !members.iter().any(|m| m.may_be_out()) {
            continue;
        }
        let Some(unit) = all_units.iter().find(|x| &x.name() == name) else {
            dep.remote.close().await;
            return Err(stop(
                exit::USAGE,
                format!("the journal of deploy {} names unit {name}, which the config no longer has; put the host back in the config and run recover again", u.deploy_id),
            ));
        };
        for m in members {
            let have = lbs[m.balancer].member_name(unit);
            if have != m.member {
                dep.remote.close().await;
                return Err(stop(
                    exit::USAGE,
                    format!(
                        "the journal of deploy {} says {name} is member `{}` of `{}`, the config now maps it to `{have}`; restore the old server template and run recover again",
                        u.deploy_id, m.member, u.balancers[m.balancer]
                    ),
                ));
            }
        }
        work.push((Arc::clone(unit), members.clone()));
    }
    let mut restored = Vec::new();
    let mut left_out = Vec::new();
    let hosts: Vec<&changeover_core::unit::Host> = {
        let mut seen = std::collections::BTreeSet::new();
        work.iter()
            .map(|(unit, _)| unit.host.as_ref())
            .filter(|h| seen.insert(h.name.clone()))
            .collect()
    };
    if target.policy.uses_ssh(&plan.load_balancers) && !hosts.is_empty() {
        let _ = dep.remote.connect_all(&hosts).await;
    }
    // A step the crashed deploy started may still be running on the host
    // (steps outlive changeover): wait for it, bounded by the step
    // timeout, and say how it ended, before probing the unit.
    let step_limit = target.policy.deploy.timeout;
    let waits = futures::future::join_all(work.iter().map(|(unit, _)| {
        let (remote, local) = (Arc::clone(&dep.remote), Arc::clone(&dep.local));
        let (deploy_id, name) = (u.deploy_id.clone(), unit.name());
        let host = Arc::clone(&unit.host);
        async move {
            let mut ended = local.wait_steps(&host, &deploy_id, &name, step_limit).await;
            if !Arc::ptr_eq(&remote, &local) {
                let far = remote
                    .wait_steps(&host, &deploy_id, &name, step_limit)
                    .await;
                ended = match (ended, far) {
                    (Ok(mut a), Ok(b)) => {
                        a.extend(b);
                        Ok(a)
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                };
            }
            (name, ended)
        }
    }))
    .await;
    for (name, ended) in &waits {
        match ended {
            Ok(records) => {
                for r in records {
                    eprintln!(
                        "  {name}: step {} ({}) {}",
                        r.index + 1,
                        r.command,
                        match (&r.end, r.output.status) {
                            (changeover_core::remote::StepEnd::Exited, Some(0)) =>
                                "had finished: exit 0".to_string(),
                            (changeover_core::remote::StepEnd::Exited, Some(c)) =>
                                format!("had finished: exit {c}"),
                            (changeover_core::remote::StepEnd::TimedOut, _) =>
                                "ran past its timeout and was killed".to_string(),
                            (other, _) => format!("{other:?}"),
                        }
                    );
                }
            }
            Err(e) => eprintln!("  {name}: cannot read its steps on the host: {e}"),
        }
    }
    // Probe every unit at once: each may take up to the health deadline.
    let health =
        futures::future::join_all(work.iter().map(|(unit, _)| {
            unhealthy(dep.health.as_deref(), target.policy.health.as_ref(), unit)
        }))
        .await;
    let seq = std::sync::atomic::AtomicU64::new(1_000_000);
    for ((unit, members), sick) in work.iter().zip(health) {
        if let Some(why) = sick {
            left_out.push((unit.name(), why));
            continue;
        }
        // Put back in reverse balancer order, as a put-back does.
        let mut failed = None;
        let mut ordered: Vec<&journal::MemberToRestore> =
            members.iter().filter(|m| m.may_be_out()).collect();
        ordered.sort_by_key(|m| std::cmp::Reverse(m.balancer));
        for m in ordered {
            let lb = &lbs[m.balancer];
            let (action, restore) = restore_action(m.before.as_ref());
            let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let intent = Record::Intent {
                deploy_id: u.deploy_id.clone(),
                seq: n,
                balancer: m.balancer,
                unit: unit.name(),
                member: m.member.clone(),
                action,
                before: m.before.clone(),
            };
            if let Err(e) = journal.append(intent).await {
                failed = Some(format!("cannot write the journal: {e}"));
                break;
            }
            let r = lb
                .apply(
                    &[unit.as_ref()],
                    action,
                    restore.as_ref().map(std::slice::from_ref),
                )
                .await;
            if let Err(e) = r {
                failed = Some(format!("{action} on {}: {e}", lb.label()));
                break;
            }
            let _ = journal
                .append(Record::Done {
                    deploy_id: u.deploy_id.clone(),
                    seq: n,
                })
                .await;
        }
        match failed {
            Some(why) => left_out.push((unit.name(), why)),
            None => restored.push(unit.name()),
        }
    }
    dep.remote.close().await;
    Ok((restored, left_out))
}

/// The change that brings a member back to `before`.
fn restore_action(before: Option<&MemberStatus>) -> (LbAction, Option<MemberStatus>) {
    match before.map(|b| b.admin) {
        Some(AdminState::Maint) => (LbAction::Disable, None),
        Some(AdminState::Drain) => (LbAction::Drain, None),
        _ => (LbAction::Enable, before.cloned()),
    }
}

/// `None` when the unit passes its health check (`healthy_threshold` in a
/// row within the deadline); the reason otherwise. No check configured: the
/// unit is taken as healthy.
async fn unhealthy(
    probe: Option<&dyn HealthProbe>,
    spec: Option<&HealthSpec>,
    unit: &Unit,
) -> Option<String> {
    let (Some(probe), Some(spec)) = (probe, spec) else {
        return None;
    };
    let deadline = tokio::time::Instant::now() + spec.deadline;
    let mut passes = 0;
    let mut last = String::new();
    loop {
        match probe.probe(unit).await {
            Ok(()) => {
                passes += 1;
                if passes >= spec.healthy_threshold {
                    return None;
                }
            }
            Err(e) => {
                passes = 0;
                last = e;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Some(format!(
                "{} fails its health check: {last}",
                probe.describe(unit)
            ));
        }
        tokio::time::sleep(spec.interval).await;
    }
}
