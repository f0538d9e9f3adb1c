//! Discovery: fetch the hosts `[discovery]` names (a command's output, or
//! Consul's catalog) and merge them into the plan with the core's checks
//! ([`changeover_core::discovery`]).

pub mod command;
pub mod consul;

use changeover_core::discovery::{self, DiscoveryError};
use changeover_core::plan::{DiscoverySpec, Plan};

/// `plan` with the discovered hosts merged in; the plan as it is without
/// `[discovery]`.
pub async fn discover(plan: Plan) -> Result<Plan, DiscoveryError> {
    let Some(spec) = plan.discovery.clone() else {
        return Ok(plan);
    };
    let origin = spec.origin();
    let hosts = match &spec {
        DiscoverySpec::Command {
            command,
            dir,
            timeout,
        } => command::hosts(&origin, command, dir, *timeout, &plan.app).await?,
        DiscoverySpec::Consul(c) => consul::hosts(&origin, c).await?,
    };
    discovery::merge(plan, &origin, hosts)
}
