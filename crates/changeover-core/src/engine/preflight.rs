//! Go/no-go before any change: every host reachable, every balancer
//! reachable, every unit's member present, enabled and UP. `--force`d hosts
//! may fail these; they are skipped (unreachable) or deployed as already out.

use super::Deployment;
use crate::lb::{BalancerState, LbError, MemberStatus};
use crate::unit::Host;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub struct Preflight {
    /// What is wrong; empty means go.
    pub problems: Vec<String>,
    /// Units not deployed, by index, with why.
    pub skipped: BTreeMap<usize, String>,
    /// Units already out of service (forced): they do not count against the bound.
    pub already_out: BTreeSet<usize>,
    /// Per unit, per balancer: the member's status before we touched it.
    pub before: Vec<Vec<Option<MemberStatus>>>,
    /// Notes about forced hosts, for the report.
    pub notes: Vec<String>,
    /// Units already on the version being deployed and serving: not touched
    /// (filled by the caller from the store, after the preflight).
    pub current: BTreeSet<usize>,
}

impl Preflight {
    pub fn go(&self) -> bool {
        self.problems.is_empty()
    }
}

pub async fn preflight(dep: &Deployment) -> Preflight {
    let mut pf = Preflight {
        before: vec![vec![None; dep.balancers.len()]; dep.units.len()],
        ..Preflight::default()
    };
    for name in &dep.forced {
        if !dep.plan.hosts.iter().any(|h| &h.name == name) {
            pf.problems.push(format!(
                "--force names `{name}`, which is not a host in the config"
            ));
        }
    }
    if dep.units.is_empty() {
        pf.problems
            .push("no units selected: the target matches no host".into());
    }

    // The whole fleet's SSH first: one connect check per host, bounded by the
    // remote's own connection limit.
    if dep.policy.uses_ssh(&dep.plan.load_balancers) {
        let mut hosts: Vec<&Host> = Vec::new();
        let mut seen = BTreeSet::new();
        for u in &dep.units {
            if seen.insert(u.host.name.as_str()) {
                hosts.push(&u.host);
            }
        }
        let results = dep.remote.connect_all(&hosts).await;
        for (host, result) in hosts.iter().zip(results) {
            if let Err(e) = result {
                if dep.forced.contains(&host.name) {
                    pf.notes
                        .push(format!("{}: unreachable, skipped (forced): {e}", host.name));
                    for u in dep.units.iter().filter(|u| u.host.name == host.name) {
                        pf.skipped.insert(u.index, format!("unreachable: {e}"));
                    }
                } else {
                    pf.problems
                        .push(format!("{} ({}): {e}", host.name, host.address));
                }
            }
        }
    }

    let units: Vec<_> = dep.units.iter().map(|u| u.as_ref()).collect();
    for (li, lb) in dep.balancers.iter().enumerate() {
        // A balancer still applying a change (or broken) takes none of
        // ours: no-go, nothing touched.
        match lb.balancer_state().await {
            Ok(BalancerState::Ready) => {}
            Ok(BalancerState::Busy(raw)) => pf.problems.push(format!(
                "balancer {} is {raw}, still applying another change (expected ACTIVE): try again once it settles",
                lb.label()
            )),
            Ok(BalancerState::Broken(raw)) => pf.problems.push(format!(
                "balancer {} is {raw} (expected ACTIVE): it takes no changes",
                lb.label()
            )),
            Err(e) => pf.problems.push(format!("balancer {}: {e}", lb.label())),
        }
        let statuses = lb.status(&units).await;
        if !statuses.is_empty()
            && statuses
                .iter()
                .all(|s| matches!(s, Err(LbError::Unreachable { .. })))
        {
            if let Some(Err(e)) = statuses.into_iter().next() {
                pf.problems.push(format!("balancer {}: {e}", lb.label()));
            }
            continue;
        }
        for (unit, status) in dep.units.iter().zip(statuses) {
            if pf.skipped.contains_key(&unit.index) {
                continue;
            }
            let forced = dep.forced.contains(&unit.host.name);
            match status {
                Ok(s) => {
                    if !s.is_serving() {
                        let what = format!(
                            "{unit}: member {} is {} on {}",
                            s.member,
                            describe(&s),
                            lb.label()
                        );
                        if forced {
                            pf.notes
                                .push(format!("{what}; deploying it anyway (forced)"));
                            pf.already_out.insert(unit.index);
                        } else {
                            pf.problems.push(what);
                        }
                    }
                    pf.before[unit.index][li] = Some(s);
                }
                Err(e) if forced => {
                    pf.notes.push(format!("{unit}: {e}; skipped (forced)"));
                    pf.skipped.insert(unit.index, e.to_string());
                }
                Err(e) => pf.problems.push(format!("{unit}: {e}")),
            }
        }
    }

    // A fleet-wide gate source (Consul) must answer now: the gate asks it
    // before every start. Who it calls unhealthy is the gate's business.
    if let (Some(source), true) = (&dep.gate, dep.policy.strategy.wait_for_all_healthy) {
        let fleet = super::gate::watched(dep);
        match super::gate::ask_source(source.as_ref(), &fleet, &BTreeSet::new()).await {
            Ok(bad) if bad.is_empty() => {}
            Ok(bad) => {
                let names: Vec<String> = bad.iter().map(|g| g.unit.clone()).collect();
                pf.notes.push(format!(
                    "the gate ({}) will hold new starts until these pass: {}",
                    source.describe(),
                    names.join(", ")
                ));
            }
            Err(e) => pf.problems.push(format!("the health gate: {e}")),
        }
    }
    pf
}

fn describe(s: &MemberStatus) -> String {
    let mut parts = vec![format!("\"{}\"", s.raw)];
    if s.weight == Some(0) {
        parts.push("weight 0".into());
    }
    parts.push("(expected enabled and UP)".into());
    parts.join(" ")
}
