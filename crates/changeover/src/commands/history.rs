//! `changeover history [TARGET] [-n N]`: past runs, newest first. Read-only.

use super::Ctx;
use crate::exit;
use changeover_core::state;

pub async fn run(ctx: &Ctx, target: Option<String>, n: usize) -> u8 {
    if let Some(t) = &target {
        if !ctx.plan.targets.contains_key(t) {
            eprintln!("error: no target `{t}`");
            return exit::USAGE;
        }
    }
    let store = match ctx.store().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let entries = match state::history(store.as_ref()).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot read the history: {e}");
            return exit::FAILED;
        }
    };
    let entries: Vec<_> = entries
        .into_iter()
        .filter(|e| target.is_none() || e.target == target)
        .take(n)
        .collect();
    if ctx.json {
        ctx.print_json("history", serde_json::json!({ "entries": entries }));
    }
    if entries.is_empty() {
        ctx.out(&format!("no runs recorded yet in {}", store.describe()));
    }
    for e in &entries {
        let c = &e.counts;
        let mut line = format!(
            "{}  {:<8} {:<14} {} (was {})  {:<11} {:>6.1}s  {} updated, {} current, {} failed  by {}",
            e.started_at,
            e.command,
            e.target.as_deref().unwrap_or("(fleet)"),
            e.version,
            e.previous.as_deref().unwrap_or("none"),
            e.outcome,
            e.duration_ms as f64 / 1000.0,
            c.updated,
            c.current,
            c.failed,
            e.holder
        );
        if let Some(m) = &e.message {
            line.push_str(&format!("  \"{m}\""));
        }
        if let Some(by) = &e.rolled_back_by {
            line.push_str(&format!(
                "  [rolled back by {by}: {}]",
                e.rollback_outcome.as_deref().unwrap_or("?")
            ));
        }
        if let Some(of) = &e.rollback_of {
            line.push_str(&format!("  [rollback of {of}]"));
        }
        ctx.out(&format!("{line}  ({})", e.deploy_id));
    }
    exit::OK
}
