//! Commands on the operator's machine, for `local` steps and for fleets
//! that are not reached over SSH at all.

use async_trait::async_trait;
use changeover_core::remote::{CommandOutput, Remote, RemoteError, StepId, StepRecord};
use changeover_core::unit::Host;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};

/// [`Remote`] that runs `sh -c <command>` locally, with `CHANGEOVER_HOST`
/// and `CHANGEOVER_ADDRESS` set to the host's name and address.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalRemote;

impl LocalRemote {
    pub fn new() -> LocalRemote {
        LocalRemote
    }
}

#[async_trait]
impl Remote for LocalRemote {
    async fn connect_all(&self, hosts: &[&Host]) -> Vec<Result<(), RemoteError>> {
        hosts.iter().map(|_| Ok(())).collect()
    }

    async fn run(
        &self,
        host: &Host,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        self.execute(host, command, None, timeout).await
    }

    async fn run_with_input(
        &self,
        host: &Host,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        self.execute(host, command, Some(input), timeout).await
    }

    /// Detached, as `remote::step` describes.
    async fn run_step(
        &self,
        host: &Host,
        command: &str,
        step: &StepId,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        super::step::run_step(self, host, command, step, timeout).await
    }

    async fn wait_steps(
        &self,
        host: &Host,
        deploy_id: &str,
        unit: &str,
        timeout: Duration,
    ) -> Result<Vec<StepRecord>, RemoteError> {
        super::step::wait_steps(self, host, deploy_id, unit, timeout).await
    }
}

impl LocalRemote {
    async fn execute(
        &self,
        host: &Host,
        command: &str,
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        let started = std::time::Instant::now();
        let result = self.execute_untraced(host, command, input, timeout).await;
        crate::remote::log_command("local", &host.name, command, started, &result);
        result
    }

    async fn execute_untraced(
        &self,
        host: &Host,
        command: &str,
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        let env = [
            ("CHANGEOVER_HOST".to_string(), host.name.clone()),
            ("CHANGEOVER_ADDRESS".to_string(), host.address.clone()),
        ];
        match run_sh(command, None, &env, input, timeout).await {
            Ok(done) => Ok(CommandOutput {
                status: done.status,
                stdout: String::from_utf8_lossy(&done.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
            }),
            Err(ShError::TimedOut) => Err(RemoteError::Timeout {
                host: host.name.clone(),
                command: command.to_string(),
                timeout,
            }),
            Err(ShError::Failed(message)) => Err(RemoteError::Exec {
                host: host.name.clone(),
                command: command.to_string(),
                message,
            }),
        }
    }
}

/// What `sh -c` left: its exit status (`None`: killed by a signal), stdout
/// and stderr.
pub(crate) struct ShDone {
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub(crate) enum ShError {
    /// Past the timeout; the whole process group was killed.
    TimedOut,
    /// It could not be started or waited for.
    Failed(String),
}

/// `sh -c <command>` on this machine (in `dir`, with `env` added), in a
/// process group of its own that is killed on timeout or when the future
/// is dropped. The one local runner: `local` steps, discovery commands,
/// hooks, the artifact check and git all come through here.
pub(crate) async fn run_sh(
    command: &str,
    dir: Option<&std::path::Path>,
    env: &[(String, String)],
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<ShDone, ShError> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A process group of its own: the terminal's Ctrl-C must reach
        // changeover only (which lets steps in flight finish), and a
        // timeout must be able to kill what the step started, not just
        // its shell.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ShError::Failed(format!("cannot start `sh`: {e}")))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut running = ProcessGroup::new(child);

    let finished = async {
        let (_, stdout, stderr, status) = tokio::join!(
            write_all(stdin, input.unwrap_or_default()),
            read_all(stdout),
            read_all(stderr),
            running.child.wait()
        );
        (stdout, stderr, status)
    };
    match tokio::time::timeout(timeout, finished).await {
        Err(_) => Err(ShError::TimedOut),
        Ok((stdout, stderr, status)) => {
            running.reaped = true;
            let status =
                status.map_err(|e| ShError::Failed(format!("cannot wait for `sh`: {e}")))?;
            Ok(ShDone {
                status: status.code(),
                stdout,
                stderr,
            })
        }
    }
}

/// Feed `input` and close the pipe (EOF). A command that exits without
/// reading it all is not an error here; its exit status tells.
async fn write_all(pipe: Option<impl AsyncWrite + Unpin>, input: &[u8]) {
    if let Some(mut pipe) = pipe {
        let _ = pipe.write_all(input).await;
        let _ = pipe.shutdown().await;
    }
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        // A read error only truncates the output; the exit status still
        // says how the command went.
        let _ = pipe.read_to_end(&mut buf).await;
    }
    buf
}

/// Kills the command's whole process group unless it finished: on timeout,
/// and when the run is cancelled (its future dropped).
struct ProcessGroup {
    child: Child,
    reaped: bool,
}

impl ProcessGroup {
    fn new(child: Child) -> ProcessGroup {
        ProcessGroup {
            child,
            reaped: false,
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // The shell is not reaped yet (kill_on_drop does that after this),
        // so its pid still names the group and cannot have been reused.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("kill -KILL -{pid} 2>/dev/null"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
