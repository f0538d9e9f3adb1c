//! The remote-execution seam: run a shell command for a host.

use crate::unit::{Host, Unit};
use async_trait::async_trait;
use std::time::Duration;

/// What a command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status; `None` when killed by a signal.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Names one deploy step of one unit: where its record lives on the host
/// (see [`Remote::run_step`]). `wait_steps` finds a unit's steps by the
/// same `deploy_id` and `unit`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StepId {
    pub deploy_id: String,
    /// The unit's name, [`Unit::name`] (`web-1`, `web-1#2`).
    pub unit: String,
    /// The step's position among the unit's steps (`deploy.local` first,
    /// then `deploy.run`), from 0.
    pub index: usize,
}

impl StepId {
    pub fn for_unit(deploy_id: &str, unit: &Unit, index: usize) -> StepId {
        StepId {
            deploy_id: deploy_id.to_string(),
            unit: unit.name(),
            index,
        }
    }
}

/// How a step found by [`Remote::wait_steps`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd {
    /// It ran to its end; `output.status` is its exit status (a step
    /// killed by signal N reports 128 + N, as `sh` does).
    Exited,
    /// It reached its timeout (its own, enforced on the host, or the bound
    /// given to `wait_steps`) and its whole process group was killed.
    TimedOut,
    /// Neither a result nor a live process: the host rebooted, or the step's
    /// runner itself was killed. Whether the command ran is unknown.
    Vanished,
}

/// A step's result as kept on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// [`StepId::index`].
    pub index: usize,
    /// The command as it was run (substituted and quoted).
    pub command: String,
    pub end: StepEnd,
    /// Exit status and the tails of stdout and stderr (each bounded; empty
    /// for a vanished step).
    pub output: CommandOutput,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {host}: {message}")]
    Connect { host: String, message: String },
    #[error("`{command}` on {host} did not finish within {timeout:?}")]
    Timeout {
        host: String,
        command: String,
        timeout: Duration,
    },
    #[error("running `{command}` on {host} failed: {message}")]
    Exec {
        host: String,
        command: String,
        message: String,
    },
}

/// Runs shell commands for a host: over SSH on the host itself, or on the
/// operator's machine (`local`). Commands arrive fully substituted and
/// quoted; the executor passes them to `sh -c` unchanged.
#[async_trait]
pub trait Remote: Send + Sync {
    /// Check that every host can be reached (opens and keeps the connection
    /// for later use where that applies). One result per host, same order.
    async fn connect_all(&self, hosts: &[&Host]) -> Vec<Result<(), RemoteError>>;

    /// Run `command` for `host`, killed after `timeout`. A non-zero exit is
    /// not an error here: it is in the returned output.
    async fn run(
        &self,
        host: &Host,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError>;

    /// Run a deploy step: like `run`, but the command is detached from this
    /// process and from the connection, so that it is killed when it reaches
    /// `timeout` (its whole process group, TERM then KILL) and keeps running
    /// to its end when changeover itself dies; its exit status and output
    /// tails are then kept for [`Remote::wait_steps`]. On timeout the result
    /// is `RemoteError::Timeout` and nothing of the step is left running.
    ///
    /// The default runs the command with `run` (for executors that have
    /// nothing to detach from, such as the simulator).
    async fn run_step(
        &self,
        host: &Host,
        command: &str,
        step: &StepId,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        let _ = step;
        self.run(host, command, timeout).await
    }

    /// After a crash: the steps of `deploy_id` for `unit` whose result
    /// nobody read (a step still running when changeover died, or finished
    /// since). Waits up to `timeout` for those still running; any still
    /// running then is killed (as `run_step`'s timeout does) and reported
    /// [`StepEnd::TimedOut`]. The records returned are removed from the
    /// host, so a second call returns only what ended since. Sorted by
    /// index; empty when there is nothing.
    async fn wait_steps(
        &self,
        host: &Host,
        deploy_id: &str,
        unit: &str,
        timeout: Duration,
    ) -> Result<Vec<StepRecord>, RemoteError> {
        let _ = (host, deploy_id, unit, timeout);
        Ok(Vec::new())
    }

    /// Like `run`, with `input` written to the command's stdin, which is then
    /// closed (for a socket client such as `socat stdio …`, the HAProxy
    /// Runtime API behind `socket_command`).
    async fn run_with_input(
        &self,
        host: &Host,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        let _ = (input, timeout);
        Err(RemoteError::Exec {
            host: host.name.clone(),
            command: command.to_string(),
            message: "this executor cannot feed a command's stdin".into(),
        })
    }

    /// A path on this machine that connects to the unix socket `path` on the
    /// host (SSH unix-socket forwarding over the host's connection). `renew`
    /// asks for a fresh forward when the last one stopped answering. An
    /// executor whose "host" is this machine returns `path` itself.
    async fn forward_unix_socket(
        &self,
        host: &Host,
        path: &str,
        renew: bool,
    ) -> Result<std::path::PathBuf, RemoteError> {
        let _ = (host, renew);
        Ok(std::path::PathBuf::from(path))
    }

    /// Close connections (SSH masters). Idempotent.
    async fn close(&self) {}
}
