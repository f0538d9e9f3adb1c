//! `changeover check [TARGET]`: validate, resolve the fleet, reach every host
//! and balancer, go/no-go. Writes nothing (no journal, no store).

use super::{host_count, read_only_deployment, report_preflight, Ctx};
use crate::exit;
use changeover_core::engine;

pub async fn run(ctx: &Ctx, target: Option<String>) -> u8 {
    let target = match ctx.plan.target(target.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    eprintln!("fleet: {}", crate::plan_view::fleet_sources(&ctx.plan));
    let dep = match read_only_deployment(ctx, &target, "check").await {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut pf = engine::preflight(&dep).await;
    dep.remote.close().await;
    // The store too: reachable, and no crashed deploy waiting for `recover`.
    match ctx.store().await {
        Ok(store) => {
            let journal =
                changeover_adapters::store::journal(&ctx.plan.store, &ctx.plan.state_dir, &store);
            match super::recover::unfinished(journal.as_ref()).await {
                Ok(open) => {
                    for u in &open {
                        pf.problems.push(format!(
                            "{}; run `changeover recover`",
                            super::recover::describe(u)
                        ));
                    }
                }
                Err(e) => pf.problems.push(format!("cannot read the journal: {e}")),
            }
        }
        Err(code) => return code,
    }
    report_preflight(&dep, &pf);
    if pf.go() {
        eprintln!(
            "go: {} unit(s) on {} host(s) ready to deploy",
            dep.units.len() - pf.skipped.len(),
            host_count(&dep)
        );
        exit::OK
    } else {
        exit::NO_GO
    }
}
