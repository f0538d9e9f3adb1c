//! `command` health probe: a shell command for the unit's host, run through
//! the [`Remote`] (over SSH on the host, or on the operator's machine).

use super::http::format_duration;
use changeover_core::health::HealthProbe;
use changeover_core::remote::{Remote, RemoteError};
use changeover_core::template::{Template, Vars};
use changeover_core::unit::Unit;
use std::sync::Arc;
use std::time::Duration;

/// Slack over the probe timeout before we stop waiting for the Remote
/// ourselves: the Remote kills the command at `timeout`, and this only
/// guards the engine against a Remote that fails to.
const REMOTE_SLACK: Duration = Duration::from_secs(5);

pub struct CommandProbe {
    remote: Arc<dyn Remote>,
    command: Template,
    timeout: Duration,
}

impl CommandProbe {
    pub fn new(remote: Arc<dyn Remote>, command: Template, timeout: Duration) -> CommandProbe {
        CommandProbe {
            remote,
            command,
            timeout,
        }
    }

    fn command_for(&self, unit: &Unit) -> String {
        self.command.render_shell(&Vars::for_unit(unit, "", "", ""))
    }

    fn timed_out(&self) -> String {
        format!("timed out after {}", format_duration(self.timeout))
    }
}

#[async_trait::async_trait]
impl HealthProbe for CommandProbe {
    async fn probe(&self, unit: &Unit) -> Result<(), String> {
        let command = self.command_for(unit);
        let run = self.remote.run(&unit.host, &command, self.timeout);
        let output = match tokio::time::timeout(self.timeout + REMOTE_SLACK, run).await {
            Err(_) | Ok(Err(RemoteError::Timeout { .. })) => return Err(self.timed_out()),
            Ok(Err(e)) => return Err(first_line(&e.to_string()).to_string()),
            Ok(Ok(output)) => output,
        };
        if output.success() {
            return Ok(());
        }
        let status = match output.status {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_string(),
        };
        match last_line(&output.stderr).or_else(|| last_line(&output.stdout)) {
            Some(line) => Err(format!("{status}: {line}")),
            None => Err(status),
        }
    }

    fn describe(&self, unit: &Unit) -> String {
        format!("`{}` for {}", self.command_for(unit), unit.host.name)
    }
}

/// The last non-blank line: where tools put their conclusion.
fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
