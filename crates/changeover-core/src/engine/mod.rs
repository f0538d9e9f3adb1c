//! The engine: one dispatcher that owns every decision (which unit starts
//! next, whether the window has room, whether to halt) and one task per unit
//! in flight that walks the unit's phases and reports back over a channel.
//! No shared mutable counters: only the dispatcher counts.

mod dispatcher;
mod preflight;
mod walk;

pub use dispatcher::{run, Report};
pub use preflight::{preflight, Preflight};

use crate::event::{Event, EventSink};
use crate::health::HealthProbe;
use crate::journal::Journal;
use crate::lb::LoadBalancer;
use crate::plan::Plan;
use crate::remote::Remote;
use crate::unit::Unit;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::time::Instant;

/// Everything one deploy needs, wired by the binary (or a benchmark).
pub struct Deployment {
    pub plan: Arc<Plan>,
    /// The units to roll, in stable order (`Unit::index` = position).
    pub units: Vec<Arc<Unit>>,
    /// Take-out runs through them in order, put-back in reverse.
    pub balancers: Vec<Arc<dyn LoadBalancer>>,
    /// Runs `deploy.run`, drain and health commands on the host.
    pub remote: Arc<dyn Remote>,
    /// Runs `deploy.local` on the operator's machine.
    pub local: Arc<dyn Remote>,
    pub health: Option<Arc<dyn HealthProbe>>,
    pub journal: Arc<dyn Journal>,
    pub events: Arc<dyn EventSink>,
    pub deploy_id: String,
    pub version: String,
    pub previous_version: String,
    pub target: Option<String>,
    /// Host names that may be down or unreachable (`--force`).
    pub forced: BTreeSet<String>,
    pub started: Instant,
}

impl Deployment {
    pub(crate) fn emit(&self, event: Event) {
        self.events.emit(self.started.elapsed(), event);
    }
}
