//! `[discovery] command`: run on the operator's machine with `sh -c` in the
//! config's directory, bounded by `timeout` (the whole process group is
//! killed past it); stdout is the JSON host list, stderr is shown when it
//! fails.

use crate::local_command::{self, LocalCommand};
use changeover_core::discovery::{inventory, DiscoveryError};
use changeover_core::unit::Host;
use std::path::Path;
use std::time::Duration;

pub async fn hosts(
    origin: &str,
    command: &str,
    dir: &Path,
    timeout: Duration,
    app: &str,
) -> Result<Vec<Host>, DiscoveryError> {
    let env = [("CHANGEOVER_APP".to_string(), app.to_string())];
    let out = local_command::run(LocalCommand {
        command,
        dir,
        env: &env,
        timeout,
    })
    .await
    .map_err(|e| {
        let mut message = e.to_string();
        if matches!(e, local_command::LocalFailure::Timeout(_)) {
            message.push_str("; raise [discovery] timeout if it is just slow");
        }
        DiscoveryError::new(origin, message)
    })?;
    inventory::parse(origin, &out)
}
