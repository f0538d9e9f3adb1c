//! The remote-execution seam: run a shell command for a host.

use crate::unit::Host;
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
