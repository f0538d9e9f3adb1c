//! The health-check seam: one probe of one unit. Interval, threshold and
//! deadline are the engine's business, so that probes stay trivial to fake.

use crate::unit::Unit;
use async_trait::async_trait;
use std::sync::Arc;

#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// One probe. `Err` carries a one-line reason ("status 503", "connection refused").
    async fn probe(&self, unit: &Unit) -> Result<(), String>;

    /// What is probed, for messages (e.g. `http://127.0.1.3:8080/health`).
    fn describe(&self, unit: &Unit) -> String;
}

/// A whole-fleet health source for the gate (`[strategy] gate = "consul"`):
/// one query answers for every unit, instead of one probe per unit.
#[async_trait]
pub trait FleetHealth: Send + Sync {
    /// The units of `units` that are not healthy now, as `(position in
    /// units, one-line reason)`; `Err` when the source could not answer
    /// (the gate then stays closed).
    async fn unhealthy(&self, units: &[Arc<Unit>]) -> Result<Vec<(usize, String)>, String>;

    /// What is asked, for messages (e.g. `consul http://127.0.0.1:8500 service shop`).
    fn describe(&self) -> String;
}
