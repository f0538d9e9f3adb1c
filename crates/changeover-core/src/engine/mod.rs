//! The engine: one dispatcher that owns every decision (which unit starts
//! next, whether the window has room, whether to halt) and one task per unit
//! in flight that walks the unit's phases and reports back over a channel.
//! No shared mutable counters: only the dispatcher counts.

mod dispatcher;
mod gate;
mod hold;
mod preflight;
mod prepare;
mod walk;

pub use dispatcher::{run, Report};
pub use preflight::{preflight, Preflight};
pub use prepare::prepare;

use crate::event::{Event, EventSink};
use crate::health::{FleetHealth, HealthProbe};
use crate::journal::Journal;
use crate::lb::LoadBalancer;
use crate::plan::{Plan, Policy};
use crate::remote::Remote;
use crate::unit::Unit;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::time::Instant;

/// Everything one deploy needs, wired by the binary (or a benchmark).
pub struct Deployment {
    pub plan: Arc<Plan>,
    /// How this rollout behaves: the target's policy (the top-level
    /// sections with the target's overrides). The engine reads this, never
    /// `plan.strategy` and the like.
    pub policy: Policy,
    /// The units to roll, in stable order (`Unit::index` = position).
    pub units: Vec<Arc<Unit>>,
    /// Take-out runs through them in order, put-back in reverse.
    pub balancers: Vec<Arc<dyn LoadBalancer>>,
    /// Runs `deploy.run`, drain and health commands on the host.
    pub remote: Arc<dyn Remote>,
    /// Runs `deploy.local` on the operator's machine.
    pub local: Arc<dyn Remote>,
    pub health: Option<Arc<dyn HealthProbe>>,
    /// Asked by the fleet-wide gate instead of probing every unit with
    /// `health` (`[strategy] gate = "consul"`).
    pub gate: Option<Arc<dyn FleetHealth>>,
    /// `[hooks] pre_wave` / `post_wave`, run around each wave.
    pub wave_hooks: Option<Arc<dyn WaveHooks>>,
    pub journal: Arc<dyn Journal>,
    pub events: Arc<dyn EventSink>,
    pub deploy_id: String,
    pub version: String,
    pub previous_version: String,
    pub target: Option<String>,
    /// Host names that may be down or unreachable (`--force`).
    pub forced: BTreeSet<String>,
    pub started: Instant,
    /// Lets something outside the engine halt the rollout as a failure
    /// would (the traffic witness seeing too many failed requests).
    pub external_halt: HaltSignal,
}

/// Local commands around each wave (`[hooks] pre_wave`, `post_wave`).
#[async_trait::async_trait]
pub trait WaveHooks: Send + Sync {
    /// Before wave `wave` (1-based) starts its `units`; `Err` halts the
    /// rollout before any of them is touched. `Ok(false)`: no such hook.
    async fn before_wave(&self, wave: usize, units: &[String]) -> Result<bool, String>;
    /// After every unit of the wave finished; `failed` if any failed.
    /// `Err` is reported, nothing more. `Ok(false)`: no such hook.
    async fn after_wave(&self, wave: usize, units: &[String], failed: bool)
        -> Result<bool, String>;
}

/// A halt requested from outside the engine, with its reason.
#[derive(Clone, Default)]
pub struct HaltSignal {
    token: tokio_util::sync::CancellationToken,
    reason: Arc<std::sync::Mutex<Option<String>>>,
}

impl HaltSignal {
    /// Ask the dispatcher to halt; the first reason wins.
    pub fn trigger(&self, reason: impl Into<String>) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason.into());
        }
        drop(r);
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    pub(crate) async fn triggered(&self) -> String {
        self.token.cancelled().await;
        self.reason()
    }
}

impl Deployment {
    pub(crate) fn emit(&self, event: Event) {
        self.events.emit(self.started.elapsed(), event);
    }
}
