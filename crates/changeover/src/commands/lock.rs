//! `changeover lock acquire|release|status [NAME]`: locks by hand. A lock
//! taken here is a *manual* lock: it stays until released (unlike a deploy's
//! lock, which lives as long as the deploy's process).

use super::Ctx;
use crate::cli::LockAction;
use crate::exit;
use changeover_core::plan::DEFAULT_LOCK;
use changeover_core::state;
use changeover_core::store::{valid_key_segment, Acquired, LockKind, LockRecord, Store};
use std::collections::BTreeSet;

pub async fn run(ctx: &Ctx, action: LockAction) -> u8 {
    let store = match ctx.store().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let name_of = |n: Option<String>| n.unwrap_or_else(|| DEFAULT_LOCK.to_string());
    match action {
        LockAction::Acquire { name, message } => {
            acquire(ctx, store.as_ref(), &name_of(name), message).await
        }
        LockAction::Release { name, force } => {
            release(ctx, store.as_ref(), &name_of(name), force).await
        }
        LockAction::Status { name } => {
            let names: BTreeSet<String> = match name {
                Some(n) => [n].into(),
                None => known_locks(ctx),
            };
            status(ctx, store.as_ref(), &names).await
        }
    }
}

/// Every lock the config's targets name, and the default.
fn known_locks(ctx: &Ctx) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ctx
        .plan
        .targets
        .values()
        .filter_map(|t| t.lock.clone())
        .collect();
    names.insert(DEFAULT_LOCK.to_string());
    names
}

fn check_name(name: &str) -> Result<(), u8> {
    if valid_key_segment(name) {
        Ok(())
    } else {
        eprintln!("error: `{name}` is not a lock name (letters, digits, '-', '_', '.')");
        Err(exit::USAGE)
    }
}

async fn acquire(ctx: &Ctx, store: &dyn Store, name: &str, message: Option<String>) -> u8 {
    if let Err(code) = check_name(name) {
        return code;
    }
    let record = LockRecord {
        name: name.to_string(),
        holder: state::holder(),
        pid: std::process::id(),
        deploy_id: None,
        target: None,
        version: None,
        message,
        acquired_at: state::now_rfc3339(),
        kind: LockKind::Manual,
    };
    match store.acquire(&record).await {
        Ok(Acquired::Held(_manual)) => {
            if ctx.json {
                ctx.print_json("lock_acquired", serde_json::json!({ "lock": record }));
            }
            eprintln!("lock `{name}` taken; deploys that need it exit 4 until `changeover lock release {name}`");
            exit::OK
        }
        Ok(Acquired::Busy(other)) => {
            if ctx.json {
                ctx.print_json("lock_busy", serde_json::json!({ "lock": other }));
            }
            eprintln!("error: {}", other.describe());
            exit::LOCKED
        }
        Err(e) => {
            eprintln!("error: cannot take lock `{name}`: {e}");
            exit::FAILED
        }
    }
}

async fn release(ctx: &Ctx, store: &dyn Store, name: &str, force: bool) -> u8 {
    if let Err(code) = check_name(name) {
        return code;
    }
    let held = match store.lock_status(name).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot read lock `{name}`: {e}");
            return exit::FAILED;
        }
    };
    let Some(rec) = held else {
        if ctx.json {
            ctx.print_json(
                "lock_released",
                serde_json::json!({ "name": name, "was_held": false }),
            );
        }
        eprintln!("lock `{name}` is not held");
        return exit::OK;
    };
    if rec.holder != state::holder() && !force {
        eprintln!("error: {}", rec.describe());
        eprintln!("  it is not yours: add --force to take it away");
        return exit::LOCKED;
    }
    match store.break_lock(name).await {
        Ok(_) => {
            if ctx.json {
                ctx.print_json(
                    "lock_released",
                    serde_json::json!({ "name": name, "was_held": true, "forced": force, "lock": rec }),
                );
            }
            eprintln!("lock `{name}` released (was: {})", rec.describe());
            exit::OK
        }
        Err(e) => {
            eprintln!("error: cannot release lock `{name}`: {e}");
            exit::FAILED
        }
    }
}

async fn status(ctx: &Ctx, store: &dyn Store, names: &BTreeSet<String>) -> u8 {
    let mut locks = Vec::new();
    for name in names {
        if let Err(code) = check_name(name) {
            return code;
        }
        match store.lock_status(name).await {
            Ok(rec) => {
                match &rec {
                    Some(r) => eprintln!("{}", r.describe()),
                    None => eprintln!("lock `{name}` is free"),
                }
                locks.push(serde_json::json!({ "name": name, "held": rec.is_some(), "lock": rec }));
            }
            Err(e) => {
                eprintln!("error: cannot read lock `{name}`: {e}");
                return exit::FAILED;
            }
        }
    }
    if ctx.json {
        ctx.print_json("lock_status", serde_json::json!({ "locks": locks }));
    }
    exit::OK
}
