//! `[deploy] prepare`: the slow part of a release (pulling an image,
//! unpacking a tarball, warming a cache) run on every unit before the
//! rollout, in parallel, while everything is still in rotation, so the
//! out-of-service window holds only the switch. A unit whose prepare fails
//! is a no-go before anything is taken out; on a `--force`d host it is
//! skipped instead.

use super::preflight::Preflight;
use super::Deployment;
use crate::event::{Event, GateUnit};
use crate::template::Vars;
use futures::stream::{self, StreamExt};
use tokio::time::Instant;

/// Run the prepare commands on every unit not already skipped; failures go
/// into `pf` (problems, or skips for forced hosts). Emits `prepared`.
pub async fn prepare(dep: &Deployment, pf: &mut Preflight) {
    let commands = &dep.policy.deploy.prepare;
    if commands.is_empty() || !pf.go() {
        return;
    }
    let started = Instant::now();
    let parallel = dep
        .policy
        .deploy
        .prepare_parallel
        .unwrap_or(dep.plan.ssh.max_connections)
        .max(1);
    let timeout = dep.policy.deploy.timeout;
    let todo: Vec<_> = dep
        .units
        .iter()
        .filter(|u| !pf.skipped.contains_key(&u.index) && !pf.current.contains(&u.index))
        .cloned()
        .collect();
    let count = todo.len();
    let runs = todo.into_iter().map(|unit| async move {
        let vars = Vars::for_unit(
            &unit,
            &dep.version,
            &dep.previous_version,
            dep.target.as_deref().unwrap_or(""),
        );
        for t in commands {
            let command = t.render_shell(&vars);
            match dep.remote.run(&unit.host, &command, timeout).await {
                Ok(out) if out.success() => {}
                Ok(out) => {
                    let tail: String = out
                        .stderr
                        .trim()
                        .lines()
                        .last()
                        .unwrap_or("")
                        .chars()
                        .take(300)
                        .collect();
                    return (
                        unit,
                        Some(format!(
                            "prepare `{command}` exited with {}{}",
                            out.status
                                .map_or("a signal".into(), |c| format!("status {c}")),
                            if tail.is_empty() {
                                String::new()
                            } else {
                                format!(": {tail}")
                            }
                        )),
                    );
                }
                Err(e) => return (unit, Some(format!("prepare: {e}"))),
            }
        }
        (unit, None)
    });
    let results: Vec<_> = stream::iter(runs)
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut failed = Vec::new();
    for (unit, error) in results {
        let Some(error) = error else { continue };
        if dep.forced.contains(&unit.host.name) {
            pf.notes.push(format!("{unit}: {error}; skipped (forced)"));
            pf.skipped.insert(unit.index, error.clone());
        } else {
            pf.problems.push(format!("{unit}: {error}"));
        }
        failed.push(GateUnit {
            unit: unit.name(),
            error,
        });
    }
    failed.sort_by(|a, b| a.unit.cmp(&b.unit));
    dep.emit(Event::Prepared {
        units: count,
        duration_ms: started.elapsed().as_millis() as u64,
        failed,
    });
}
