//! The health-check seam: one probe of one unit. Interval, threshold and
//! deadline are the engine's business, so that probes stay trivial to fake.

use crate::unit::Unit;
use async_trait::async_trait;

#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// One probe. `Err` carries a one-line reason ("status 503", "connection refused").
    async fn probe(&self, unit: &Unit) -> Result<(), String>;

    /// What is probed, for messages (e.g. `http://127.0.1.3:8080/health`).
    fn describe(&self, unit: &Unit) -> String;
}
