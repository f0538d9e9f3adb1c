//! The fleet-wide health gate (`strategy.wait_for_all_healthy`): a new unit
//! starts only when every unit of the fleet passes its health check, so a
//! rollout never stacks a deploy on top of a fleet that is already hurting.
//!
//! Excluded from the check: units in flight (they are out on purpose), units
//! left out after failing (already counted as failures), and every unit of a
//! `--force`d host (known broken, redeployed without waiting).
//!
//! The dispatcher owns the decisions; this file only knows how to ask.

use super::Deployment;
use crate::event::GateUnit;
use crate::health::FleetHealth;
use crate::unit::Unit;
use futures::stream::{self, StreamExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

/// Probes in flight at once during one gate check.
const GATE_CONCURRENCY: usize = 64;

/// What a unit is known by across a target and the whole fleet (indices
/// differ between the two).
pub(crate) type UnitKey = (String, u32);

pub(crate) fn key(unit: &Unit) -> UnitKey {
    (unit.host.name.clone(), unit.instance)
}

/// Every unit of the fleet that the gate watches (forced hosts left out).
pub(crate) fn watched(dep: &Deployment) -> Arc<Vec<Arc<Unit>>> {
    Arc::new(
        dep.plan
            .units()
            .into_iter()
            .filter(|u| !dep.forced.contains(&u.host.name))
            .collect(),
    )
}

/// One pass over the watched units after `delay`: one probe each (no
/// threshold: a gate asks "healthy now?"), bounded by the health timeout.
/// Returns the units that failed, in fleet order; empty means open.
pub(crate) async fn check(
    dep: Arc<Deployment>,
    fleet: Arc<Vec<Arc<Unit>>>,
    exclude: BTreeSet<UnitKey>,
    delay: Duration,
) -> Vec<GateUnit> {
    tokio::time::sleep(delay).await;
    if let Some(source) = dep.gate.clone() {
        return ask(source, &fleet, &exclude).await;
    }
    let (Some(probe), Some(spec)) = (dep.health.clone(), dep.policy.health.as_ref()) else {
        return Vec::new();
    };
    let limit = spec.timeout;
    let todo: Vec<(usize, Arc<Unit>)> = fleet
        .iter()
        .enumerate()
        .filter(|(_, u)| !exclude.contains(&key(u)))
        .map(|(i, u)| (i, Arc::clone(u)))
        .collect();
    let probes = todo.into_iter().map(|(i, unit)| {
        let probe = Arc::clone(&probe);
        async move {
            let error = match timeout(limit, probe.probe(&unit)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("timed out after {limit:?}")),
            };
            (i, error)
        }
    });
    let results: Vec<(usize, Option<String>)> = stream::iter(probes)
        .buffer_unordered(GATE_CONCURRENCY)
        .collect()
        .await;
    let mut failed: Vec<(usize, String)> = results
        .into_iter()
        .filter_map(|(i, e)| e.map(|e| (i, e)))
        .collect();
    failed.sort_by_key(|(i, _)| *i);
    failed
        .into_iter()
        .map(|(i, error)| GateUnit {
            unit: fleet[i].name(),
            error,
        })
        .collect()
}

/// How long one question to a fleet-wide source may take.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(30);

/// One question to the fleet-wide source for every watched unit not
/// excluded. A source that cannot answer keeps the gate closed.
async fn ask(
    source: Arc<dyn FleetHealth>,
    fleet: &[Arc<Unit>],
    exclude: &BTreeSet<UnitKey>,
) -> Vec<GateUnit> {
    ask_source(source.as_ref(), fleet, exclude)
        .await
        .unwrap_or_else(|error| {
            vec![GateUnit {
                unit: "(gate)".into(),
                error,
            }]
        })
}

/// The units the source calls unhealthy, or why it could not be asked.
pub(crate) async fn ask_source(
    source: &dyn FleetHealth,
    fleet: &[Arc<Unit>],
    exclude: &BTreeSet<UnitKey>,
) -> Result<Vec<GateUnit>, String> {
    let asked: Vec<Arc<Unit>> = fleet
        .iter()
        .filter(|u| !exclude.contains(&key(u)))
        .cloned()
        .collect();
    if asked.is_empty() {
        return Ok(Vec::new());
    }
    match timeout(SOURCE_TIMEOUT, source.unhealthy(&asked)).await {
        Ok(Ok(mut bad)) => {
            bad.sort_by_key(|(i, _)| *i);
            Ok(bad
                .into_iter()
                .filter_map(|(i, error)| {
                    asked.get(i).map(|u| GateUnit {
                        unit: u.name(),
                        error,
                    })
                })
                .collect())
        }
        Ok(Err(e)) => Err(format!("{} did not answer: {e}", source.describe())),
        Err(_) => Err(format!(
            "{} did not answer within {SOURCE_TIMEOUT:?}",
            source.describe()
        )),
    }
}
