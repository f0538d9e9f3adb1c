//! `[discovery] consul`: the service's instances from
//! `/v1/health/service/<service>` (with `?passing` for `passing_only`),
//! judged by [`changeover_core::discovery::consul`]. Also the Consul gate:
//! the same query once per look, for every unit at once.

use crate::consul::{path_escape, ConsulClient, ConsulError};
use async_trait::async_trait;
use changeover_core::discovery::consul::{self as judge, Instance};
use changeover_core::discovery::DiscoveryError;
use changeover_core::health::FleetHealth;
use changeover_core::plan::ConsulDiscovery;
use changeover_core::unit::{Host, Unit};
use std::sync::Arc;
use std::time::Duration;

/// Discovery retries an agent that is restarting or has no leader yet.
const ATTEMPTS: u32 = 3;

pub async fn hosts(origin: &str, spec: &ConsulDiscovery) -> Result<Vec<Host>, DiscoveryError> {
    let err = |e: ConsulError| DiscoveryError::new(origin, e.to_string());
    let client = ConsulClient::new(&spec.endpoint).map_err(err)?;
    let mut attempt = 1;
    let instances = loop {
        match instances(&client, spec, spec.passing_only, origin).await {
            Ok(i) => break i,
            Err(Fail::Consul(e)) if e.is_transient() && attempt < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(300 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(Fail::Consul(e)) => return Err(err(e)),
            Err(Fail::Answer(e)) => return Err(e),
        }
    };
    if instances.is_empty() {
        let hint = if spec.passing_only {
            " passing its checks (passing_only = true)"
        } else {
            ""
        };
        return Err(DiscoveryError::new(
            origin,
            format!(
                "Consul knows no instance of service `{}`{hint}; check the service name and the datacenter",
                spec.service
            ),
        ));
    }
    judge::hosts(origin, &instances, spec.host_address)
}

enum Fail {
    Consul(ConsulError),
    Answer(DiscoveryError),
}

async fn instances(
    client: &ConsulClient,
    spec: &ConsulDiscovery,
    passing: bool,
    origin: &str,
) -> Result<Vec<Instance>, Fail> {
    let mut query = Vec::new();
    if passing {
        query.push(("passing", String::new()));
    }
    let path = format!("/v1/health/service/{}", path_escape(&spec.service));
    let answer = client.get(&path, &query).await.map_err(Fail::Consul)?;
    if answer.status != 200 {
        return Err(Fail::Consul(client.unexpected(&answer)));
    }
    judge::parse(origin, &answer.body).map_err(Fail::Answer)
}

/// `[strategy] gate = "consul"`: one health query for the whole service per
/// look; a unit is healthy when every check of its instance passes.
pub struct ConsulGate {
    client: ConsulClient,
    spec: ConsulDiscovery,
    origin: String,
}

impl ConsulGate {
    pub fn new(spec: &ConsulDiscovery) -> Result<ConsulGate, ConsulError> {
        Ok(ConsulGate {
            client: ConsulClient::new(&spec.endpoint)?,
            spec: spec.clone(),
            origin: format!(
                "consul {} service `{}`",
                spec.endpoint.address, spec.service
            ),
        })
    }
}

#[async_trait]
impl FleetHealth for ConsulGate {
    async fn unhealthy(&self, units: &[Arc<Unit>]) -> Result<Vec<(usize, String)>, String> {
        match instances(&self.client, &self.spec, false, &self.origin).await {
            Ok(list) => Ok(judge::unhealthy(units, &list)),
            Err(Fail::Consul(e)) => Err(e.to_string()),
            Err(Fail::Answer(e)) => Err(e.message),
        }
    }

    fn describe(&self) -> String {
        self.origin.clone()
    }
}
