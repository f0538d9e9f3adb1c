//! One module per command, each a function readable top to bottom. Every
//! command that rolls units (deploy, rollback, unify, the auto-rollback and
//! the demo) goes through [`execute::execute`].

pub mod around;
pub mod check;
pub mod demo;
pub mod deploy;
pub mod execute;
pub mod history;
pub mod lock;
pub mod plan;
pub mod recover;
pub mod rollback;
pub mod status;
pub mod unify;

use crate::exit;
use changeover_adapters::store;
use changeover_adapters::wiring::{self, RolloutArgs};
use changeover_core::engine::{Deployment, Preflight};
use changeover_core::event::{Event, EventSink};
use changeover_core::plan::Plan;
use changeover_core::plan::Target;
use changeover_core::store::Store;
use std::collections::BTreeSet;
use std::sync::Arc;

/// What every command gets: the validated plan and how to report.
pub struct Ctx {
    pub plan: Arc<Plan>,
    /// Where the rollout's events go (the reporter; the demo's timeline).
    pub events: Arc<dyn EventSink>,
    pub json: bool,
    pub quiet: bool,
}

impl Ctx {
    /// One JSON document on stdout (the `--json` answer of a read-only
    /// command), with the schema version.
    pub fn print_json(&self, event: &str, mut value: serde_json::Value) {
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "schema".into(),
                changeover_core::event::SCHEMA_VERSION.into(),
            );
            map.insert("event".into(), event.into());
        }
        println!("{value}");
    }

    /// A line of a read-only command's human answer: stdout, or stderr when
    /// stdout carries the JSON.
    pub fn out(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// The store, or the exit code after saying why it cannot be opened.
    pub async fn store(&self) -> Result<Arc<dyn Store>, u8> {
        store::open(&self.plan.store).await.map_err(|e| {
            eprintln!("error: cannot open the store: {e}");
            eprintln!(
                "  check [store] in {} and that the store is reachable",
                self.plan.source.display()
            );
            exit::NO_GO
        })
    }
}

/// The adapters for a command that only reads (check, status): no journal,
/// no store, nothing written.
pub async fn read_only_deployment(
    ctx: &Ctx,
    target: &Target,
    what: &str,
) -> Result<Deployment, u8> {
    wiring::deployment(
        &ctx.plan,
        target,
        RolloutArgs {
            deploy_id: what.into(),
            version: String::new(),
            previous_version: String::new(),
            force: &[],
            events: ctx.events.clone(),
            journal: None,
        },
    )
    .await
    .map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

pub fn host_count(dep: &Deployment) -> usize {
    dep.units
        .iter()
        .map(|u| u.host.name.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

pub fn report_preflight(dep: &Deployment, pf: &Preflight) {
    dep.events.emit(
        dep.started.elapsed(),
        Event::Preflight {
            ok: pf.go(),
            hosts: host_count(dep),
            problems: pf.problems.clone(),
            skipped: pf.skipped.values().cloned().collect(),
        },
    );
    for note in &pf.notes {
        eprintln!("note: {note}");
    }
    if !pf.go() {
        eprintln!("preflight: no-go, {} problem(s):", pf.problems.len());
        for p in &pf.problems {
            eprintln!("  - {p}");
        }
    }
}
