//! `changeover status [TARGET]`: per unit, each balancer's state, a live
//! health probe and the recorded version; the pointer, the lock, a deploy in
//! progress. Read-only: nothing is written, no journal is opened.

use super::{read_only_deployment, Ctx};
use crate::exit;
use changeover_core::state;
use futures::future::join_all;
use serde_json::json;

pub async fn run(ctx: &Ctx, target: Option<String>) -> u8 {
    let target = match ctx.plan.target(target.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let store = match ctx.store().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let policy = &target.policy;
    let (pointer, _) = match state::read_pointer(store.as_ref(), &policy.pointer).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot read pointer {}: {e}", policy.pointer);
            return exit::FAILED;
        }
    };
    let recorded = match state::unit_versions(store.as_ref()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read the unit versions: {e}");
            return exit::FAILED;
        }
    };
    let lock = match &policy.lock {
        Some(name) => match store.lock_status(name).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot read lock `{name}`: {e}");
                return exit::FAILED;
            }
        },
        None => None,
    };
    let journal = changeover_adapters::store::journal(&ctx.plan.store, &ctx.plan.state_dir, &store);
    let unfinished = match super::recover::unfinished(journal.as_ref()).await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: cannot read the journal: {e}");
            return exit::FAILED;
        }
    };
    // Status reads every balancer even for an in-place target: it says
    // where each unit is.
    let mut full = target.clone();
    full.policy.lb_takeout = true;
    let dep = match read_only_deployment(ctx, &full, "status").await {
        Ok(d) => d,
        Err(code) => return code,
    };
    let units: Vec<&changeover_core::unit::Unit> = dep.units.iter().map(|u| u.as_ref()).collect();
    let mut per_lb = Vec::new();
    for lb in &dep.balancers {
        per_lb.push((lb.label(), lb.status(&units).await));
    }
    let health = match &dep.health {
        Some(probe) => Some(join_all(units.iter().map(|u| probe.probe(u))).await),
        None => None,
    };
    dep.remote.close().await;

    let mut rows = Vec::new();
    for (i, u) in dep.units.iter().enumerate() {
        let balancers: Vec<_> = per_lb
            .iter()
            .map(|(label, statuses)| match &statuses[i] {
                Ok(s) => json!({"balancer": label, "member": s.member, "state": s.raw, "serving": s.is_serving(), "weight": s.weight, "sessions": s.sessions}),
                Err(e) => json!({"balancer": label, "error": e.to_string(), "serving": false}),
            })
            .collect();
        let health = health.as_ref().map(|h| match &h[i] {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e}),
        });
        let rec = recorded.get(&u.name());
        rows.push(json!({
            "unit": u.name(),
            "host": u.host.name,
            "address": u.host.address,
            "instance": u.instance,
            "balancers": balancers,
            "health": health,
            "version": rec.map(|r| r.version.clone()),
            "deploy_id": rec.map(|r| r.deploy_id.clone()),
            "recorded_at": rec.map(|r| r.at.clone()),
        }));
    }
    if ctx.json {
        ctx.print_json(
            "status",
            json!({
                "target": target.name,
                "pointer_name": policy.pointer,
                "pointer": pointer,
                "lock": lock,
                "in_progress": pointer.in_progress,
                "unfinished": unfinished.iter().map(|u| json!({
                    "deploy_id": u.deploy_id,
                    "target": u.target,
                    "version": u.version,
                    "holder": u.holder,
                    "started_ms": u.started_ms,
                    "units_maybe_out": u.units.iter().filter(|(_, ms)| ms.iter().any(|m| m.may_be_out())).map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "units": rows,
            }),
        );
    }
    ctx.out(&format!(
        "pointer {}: current {}, previous {}{}",
        policy.pointer,
        pointer.current.as_deref().unwrap_or("none"),
        pointer.previous.as_deref().unwrap_or("none"),
        pointer
            .moved_at
            .as_ref()
            .map(|t| format!(
                " (moved {t} by {})",
                pointer.moved_by.as_deref().unwrap_or("?")
            ))
            .unwrap_or_default()
    ));
    if let Some(ip) = &pointer.in_progress {
        ctx.out(&format!(
            "in progress: deploy {} of {} to {} by {} since {}",
            ip.deploy_id,
            ip.target.as_deref().unwrap_or("(fleet)"),
            ip.version,
            ip.holder,
            ip.started_at
        ));
    }
    for u in &unfinished {
        ctx.out(&format!(
            "UNFINISHED: {}; run `changeover recover`",
            super::recover::describe(u)
        ));
    }
    match (&policy.lock, &lock) {
        (None, _) => ctx.out("lock: none (lock = false)"),
        (Some(name), None) => ctx.out(&format!("lock `{name}`: free")),
        (Some(_), Some(rec)) => ctx.out(&rec.describe()),
    }
    ctx.out(&format!(
        "{:<14} {:<10} {:<8} {}",
        "unit", "version", "health", "balancers"
    ));
    for r in &rows {
        let health = match &r["health"] {
            serde_json::Value::Null => "-".to_string(),
            h if h["ok"] == true => "ok".to_string(),
            _ => "failing".to_string(),
        };
        let lbs: Vec<String> = r["balancers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| match b.get("state") {
                Some(s) => format!(
                    "{} {}",
                    b["member"].as_str().unwrap_or("?"),
                    s.as_str().unwrap_or("?")
                ),
                None => format!("error: {}", b["error"].as_str().unwrap_or("?")),
            })
            .collect();
        ctx.out(&format!(
            "{:<14} {:<10} {:<8} {}",
            r["unit"].as_str().unwrap_or("?"),
            r["version"].as_str().unwrap_or("-"),
            health,
            lbs.join("; ")
        ));
    }
    exit::OK
}
