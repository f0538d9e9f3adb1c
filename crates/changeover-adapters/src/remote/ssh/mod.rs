//! Commands on the hosts over SSH, through the system OpenSSH.
//!
//! Driving the real `ssh` (via the `openssh` crate's native multiplexing)
//! rather than an SSH library means the operator's `~/.ssh/config`, agent,
//! `ProxyJump` and `known_hosts` work exactly as they do on the command line.
//! Each host gets one master connection, opened once and reused by every
//! command, so a deploy pays the handshake once per host, not once per step.

mod control_dir;

use async_trait::async_trait;
use changeover_core::remote::{CommandOutput, Remote, RemoteError, StepId, StepRecord};
use changeover_core::unit::Host;
use control_dir::{
    control_base, create_control_dir, random_suffix, remove_stale_control_dirs, stop_master,
};
use futures::future::join_all;
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use std::collections::HashMap;
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// Times a refused session is tried again (backing off from 50 ms, about
/// 3 s in all) before the command fails.
const SESSION_RETRIES: u32 = 6;

/// How an [`SshRemote`] connects. `Default` gives the values documented on
/// each field.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// `ssh -F`: an ssh client config used instead of `~/.ssh/config` (and
    /// of the system-wide one, as with ssh itself). A leading `~/` is the
    /// home directory. `None`: the user's usual ssh configuration.
    pub config_file: Option<PathBuf>,
    /// Login user for hosts without their own `ssh_user`; `None` leaves it
    /// to the ssh config.
    pub user: Option<String>,
    /// How many connections may be in the middle of being opened at once
    /// (default 64). Bounds connects only: open connections and the
    /// commands on them are not limited by this.
    pub max_connections: usize,
    /// ssh's `ConnectTimeout` (whole seconds, at least 1; default 10 s).
    /// The complete connect, handshake and login included, is abandoned
    /// after three times this.
    pub connect_timeout: Duration,
    /// ssh's `ServerAliveInterval` (default 15 s): how a master notices that
    /// its host went away, so the next command reconnects instead of hanging.
    pub server_alive_interval: Duration,
    /// Commands run at once on one host (default 8). sshd refuses more
    /// sessions per connection than its `MaxSessions` (default 10), and
    /// frees a slot a moment after a command ends, so staying below it
    /// keeps commands waiting their turn instead of being refused.
    pub max_sessions_per_host: usize,
    /// ssh's `ControlPersist` (whole seconds, at least 1; default 60 s): a
    /// master with no command and no forwarded connection running for this
    /// long exits. That bounds how long masters outlive a changeover that
    /// was killed (-9); during a run, the next command to a host whose master
    /// has gone opens a new one.
    pub control_persist: Duration,
    /// Where the control directories are made; `None` (the default): /tmp
    /// (the temp dir where there is no /tmp). Keep it short: a control
    /// socket's path must fit in about 100 bytes. Dead runs' directories
    /// are removed from here.
    pub control_base: Option<PathBuf>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            config_file: None,
            user: None,
            max_connections: 64,
            connect_timeout: Duration::from_secs(10),
            server_alive_interval: Duration::from_secs(15),
            max_sessions_per_host: 8,
            control_persist: Duration::from_secs(60),
            control_base: None,
        }
    }
}

/// [`Remote`] over SSH: one cached master connection per host.
///
/// Host keys are always checked strictly: a host that is missing from
/// `known_hosts`, or whose key differs, is refused.
pub struct SshRemote {
    options: SshOptions,
    connects: Semaphore,
    masters: Mutex<HashMap<Destination, Arc<Master>>>,
    /// Created on the first connect and removed by `close`, so a closed
    /// remote that is used again gets a fresh one.
    control_dir: Mutex<Option<PathBuf>>,
}

/// What identifies one SSH connection: two `Host`s that resolve to the same
/// destination share a master.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Destination {
    address: String,
    user: Option<String>,
    port: Option<u16>,
}

struct Master {
    /// An async lock, held while connecting, so that concurrent commands for
    /// a host wait for one connect instead of each opening their own.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    sessions: Semaphore,
    /// Unix-socket forwards by remote path: the master they were opened on
    /// and the local socket path.
    forwards: tokio::sync::Mutex<HashMap<String, (Arc<Session>, PathBuf)>>,
}

/// Why a command did not produce an output.
enum ExecFailure {
    /// The master could not be reached: the command never started.
    MasterGone(openssh::Error),
    /// sshd refused to open a session (its `MaxSessions`): the command
    /// never started.
    Refused(openssh::Error),
    /// Anything else; the command may or may not have run.
    Other(openssh::Error),
}

impl SshRemote {
    /// Also removes the control directories that runs killed before they
    /// could (their owner process is gone), stopping any master still in
    /// them.
    pub fn new(options: SshOptions) -> SshRemote {
        remove_stale_control_dirs(&control_base(&options));
        let permits = options.max_connections.max(1);
        SshRemote {
            options,
            connects: Semaphore::new(permits),
            masters: Mutex::new(HashMap::new()),
            control_dir: Mutex::new(None),
        }
    }

    pub fn options(&self) -> &SshOptions {
        &self.options
    }

    /// Where the masters' control sockets live (created on the first
    /// connect), for debugging a stuck connection with `ssh -S … -O check`.
    pub fn control_dir(&self) -> Option<PathBuf> {
        lock(&self.control_dir).clone()
    }

    fn destination(&self, host: &Host) -> Destination {
        Destination {
            address: host.address.clone(),
            user: host.ssh_user.clone().or_else(|| self.options.user.clone()),
            port: host.ssh_port,
        }
    }

    fn master(&self, destination: &Destination) -> Arc<Master> {
        let mut masters = lock(&self.masters);
        masters
            .entry(destination.clone())
            .or_insert_with(|| {
                Arc::new(Master {
                    session: tokio::sync::Mutex::new(None),
                    sessions: Semaphore::new(self.options.max_sessions_per_host.max(1)),
                    forwards: tokio::sync::Mutex::new(HashMap::new()),
                })
            })
            .clone()
    }

    /// The host's master, connecting first if there is none yet.
    async fn session(
        &self,
        host: &Host,
        destination: &Destination,
        master: &Master,
    ) -> Result<Arc<Session>, RemoteError> {
        let mut slot = master.session.lock().await;
        if let Some(session) = &*slot {
            return Ok(session.clone());
        }
        let session = Arc::new(self.connect(host, destination).await?);
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Replace a master that stopped answering, unless another task already
    /// did.
    async fn reconnect(
        &self,
        host: &Host,
        destination: &Destination,
        master: &Master,
        dead: &Arc<Session>,
    ) -> Result<Arc<Session>, RemoteError> {
        let mut slot = master.session.lock().await;
        match &*slot {
            Some(current) if !Arc::ptr_eq(current, dead) => return Ok(current.clone()),
            _ => *slot = None,
        }
        tracing::debug!(host = %host.name, "SSH master connection lost; reconnecting");
        let session = Arc::new(self.connect(host, destination).await?);
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Forget `dead` so that the next command reconnects.
    async fn discard(&self, master: &Master, dead: &Arc<Session>) {
        let mut slot = master.session.lock().await;
        if slot
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, dead))
        {
            *slot = None;
        }
    }

    async fn connect(
        &self,
        host: &Host,
        destination: &Destination,
    ) -> Result<Session, RemoteError> {
        let fail = |message: String| RemoteError::Connect {
            host: host.name.clone(),
            message,
        };
        check_address(&destination.address).map_err(fail)?;
        let _permit = self
            .connects
            .acquire()
            .await
            .expect("the connect semaphore is never closed");
        let control_dir = self.ensure_control_dir().map_err(fail)?;

        let mut builder = SessionBuilder::default();
        builder
            .known_hosts_check(KnownHosts::Strict)
            .control_directory(&control_dir)
            .control_persist(ControlPersist::IdleFor(
                NonZeroUsize::new(self.options.control_persist.as_secs().max(1) as usize)
                    .expect("at least 1"),
            ))
            .connect_timeout(self.options.connect_timeout.max(Duration::from_secs(1)))
            .server_alive_interval(
                self.options
                    .server_alive_interval
                    .max(Duration::from_secs(1)),
            );
        if let Some(config_file) = &self.options.config_file {
            builder.config_file(expand_home(config_file));
        }
        if let Some(user) = &destination.user {
            builder.user(user.clone());
        }
        if let Some(port) = destination.port {
            builder.port(port);
        }

        // ConnectTimeout covers the TCP connect and the banner; a server
        // that stalls later, in key exchange or login, needs this outer limit.
        let limit = self.options.connect_timeout.max(Duration::from_secs(1)) * 3;
        tracing::debug!(host = %host.name, address = %destination.address, "opening SSH master connection");
        match tokio::time::timeout(limit, builder.connect_mux(&destination.address)).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(err)) => Err(fail(connect_message(&err))),
            Err(_) => Err(fail(format!(
                "ssh did not finish connecting within {limit:?} (the handshake or login stalled)"
            ))),
        }
    }

    fn ensure_control_dir(&self) -> Result<PathBuf, String> {
        let mut dir = lock(&self.control_dir);
        if let Some(dir) = &*dir {
            return Ok(dir.clone());
        }
        let created = create_control_dir(&control_base(&self.options))?;
        *dir = Some(created.clone());
        Ok(created)
    }

    /// Like `run`, minus the single reconnect; `None` when it timed out.
    async fn run_once(
        session: &Session,
        remote_command: &str,
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Option<Result<CommandOutput, ExecFailure>> {
        let attempts = async {
            let mut backoff = Duration::from_millis(50);
            let mut refusals = 0;
            loop {
                match execute(session, remote_command, input).await {
                    // A session slot frees a moment after a command ends on
                    // the host; the command did not start, so try again.
                    Err(ExecFailure::Refused(_)) if refusals < SESSION_RETRIES => {
                        refusals += 1;
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                    result => return result,
                }
            }
        };
        tokio::time::timeout(timeout, attempts).await.ok()
    }
}

impl Default for SshRemote {
    fn default() -> Self {
        SshRemote::new(SshOptions::default())
    }
}

#[async_trait]
impl Remote for SshRemote {
    async fn connect_all(&self, hosts: &[&Host]) -> Vec<Result<(), RemoteError>> {
        join_all(hosts.iter().map(|host| async move {
            let destination = self.destination(host);
            let master = self.master(&destination);
            let cached = master.session.lock().await.is_some();
            let session = self.session(host, &destination, &master).await?;
            // A cached master may have died since it was opened; a check
            // that only proves an old connection would be worthless. A
            // master opened just now is proven by its login (and a check
            // would be one more ssh process per host).
            if cached && session.check().await.is_err() {
                self.reconnect(host, &destination, &master, &session)
                    .await?;
            }
            Ok(())
        }))
        .await
    }

    async fn run(
        &self,
        host: &Host,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        self.run_inner(host, command, None, timeout).await
    }

    async fn run_with_input(
        &self,
        host: &Host,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        self.run_inner(host, command, Some(input), timeout).await
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

    async fn forward_unix_socket(
        &self,
        host: &Host,
        path: &str,
        renew: bool,
    ) -> Result<PathBuf, RemoteError> {
        let destination = self.destination(host);
        let master = self.master(&destination);
        let mut session = self.session(host, &destination, &master).await?;
        if renew && session.check().await.is_err() {
            session = self
                .reconnect(host, &destination, &master, &session)
                .await?;
        }
        let mut forwards = master.forwards.lock().await;
        // A forward lives in its master: a new master needs a new one.
        if let Some((owner, local)) = forwards.get(path) {
            if Arc::ptr_eq(owner, &session) && !renew {
                return Ok(local.clone());
            }
        }
        let fail = |message: String| RemoteError::Connect {
            host: host.name.clone(),
            message,
        };
        // The old forward's listener goes, whether it still works or not.
        if let Some((owner, old)) = forwards.remove(path) {
            let _ = owner
                .close_port_forward(
                    openssh::ForwardType::Local,
                    old.clone(),
                    PathBuf::from(path),
                )
                .await;
            let _ = std::fs::remove_file(old);
        }
        let dir = self.ensure_control_dir().map_err(fail)?;
        let local = dir.join(format!("fwd-{}.sock", random_suffix()));
        let request = |session: Arc<Session>, local: PathBuf| async move {
            session
                .request_port_forward(openssh::ForwardType::Local, local, PathBuf::from(path))
                .await
        };
        if let Err(first) = request(Arc::clone(&session), local.clone()).await {
            // A master that died since it was opened cannot forward: one
            // fresh connection, then the error is the forward's own.
            if session.check().await.is_ok() {
                return Err(fail(forward_message(path, &first)));
            }
            session = self
                .reconnect(host, &destination, &master, &session)
                .await?;
            request(Arc::clone(&session), local.clone())
                .await
                .map_err(|e| fail(forward_message(path, &e)))?;
        }
        forwards.insert(path.to_string(), (session, local.clone()));
        Ok(local)
    }

    async fn close(&self) {
        let masters: Vec<Arc<Master>> = lock(&self.masters).drain().map(|(_, m)| m).collect();
        join_all(masters.into_iter().map(|master| async move {
            // Forwards hold the session too; they end with their master.
            master.forwards.lock().await.clear();
            let Some(session) = master.session.lock().await.take() else {
                return;
            };
            match Arc::try_unwrap(session) {
                Ok(session) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), session.close()).await;
                }
                // A command is still running on it: ask the master to exit
                // once its sessions end, before its socket disappears with
                // the control dir and nothing could reach it any more.
                Err(shared) => stop_master(shared.control_socket()).await,
            }
        }))
        .await;
        if let Some(dir) = lock(&self.control_dir).take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl SshRemote {
    async fn run_inner(
        &self,
        host: &Host,
        command: &str,
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        let started = std::time::Instant::now();
        let result = self.run_untraced(host, command, input, timeout).await;
        crate::remote::log_command("ssh", &host.name, command, started, &result);
        result
    }

    async fn run_untraced(
        &self,
        host: &Host,
        command: &str,
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        let exec_error = |message: String| RemoteError::Exec {
            host: host.name.clone(),
            command: command.to_string(),
            message,
        };
        let timed_out = || RemoteError::Timeout {
            host: host.name.clone(),
            command: command.to_string(),
            timeout,
        };
        // The remote sshd hands the command string to the login shell; the
        // quoted `sh -c` pins the command to a POSIX shell whatever that is.
        let quoted = shlex::try_quote(command).map_err(|e| exec_error(e.to_string()))?;
        let remote_command = format!("sh -c {quoted}");

        let destination = self.destination(host);
        let master = self.master(&destination);
        let _slot = master
            .sessions
            .acquire()
            .await
            .expect("the session semaphore is never closed");
        let session = self.session(host, &destination, &master).await?;

        let result = match Self::run_once(&session, &remote_command, input, timeout).await {
            None => return Err(timed_out()),
            Some(Err(ExecFailure::MasterGone(_))) => {
                // Nothing ran, so trying again cannot run the command twice.
                let session = self
                    .reconnect(host, &destination, &master, &session)
                    .await?;
                match Self::run_once(&session, &remote_command, input, timeout).await {
                    None => return Err(timed_out()),
                    Some(result) => result.map_err(|failure| (failure, session)),
                }
            }
            Some(result) => result.map_err(|failure| (failure, session)),
        };
        let (failure, session) = match result {
            Ok(output) => return Ok(output),
            Err(failed) => failed,
        };
        let message = match failure {
            ExecFailure::Refused(err) => {
                return Err(exec_error(format!(
                    "the host refused a new SSH session ({}); are more commands \
                     running on it at once than its sshd's MaxSessions allows?",
                    error_chain(&err)
                )))
            }
            ExecFailure::MasterGone(err) => {
                format!("the SSH connection is gone: {}", error_chain(&err))
            }
            ExecFailure::Other(err) => format!(
                "{} (the command may or may not have run)",
                error_chain(&err)
            ),
        };
        // Most likely the connection broke mid-command; whatever it was,
        // the next command is better off with a fresh master.
        self.discard(&master, &session).await;
        Err(exec_error(message))
    }
}

impl Drop for SshRemote {
    fn drop(&mut self) {
        // Dropping a Session asks its master to exit (openssh does that
        // synchronously); this must happen while the sockets still exist.
        lock(&self.masters).clear();
        if let Some(dir) = lock(&self.control_dir).take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Run one command on an open master and collect what it left.
async fn execute(
    session: &Session,
    remote_command: &str,
    input: Option<&[u8]>,
) -> Result<CommandOutput, ExecFailure> {
    let mut child = session
        .raw_command(remote_command)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .await
        .map_err(|err| match err {
            openssh::Error::Disconnected => ExecFailure::MasterGone(err),
            // openssh does not re-export the mux client's error type, so its
            // message is all there is to recognise a refusal by.
            openssh::Error::SshMux(ref mux)
                if mux.to_string().starts_with("Server refused the request") =>
            {
                ExecFailure::Refused(err)
            }
            other => ExecFailure::Other(other),
        })?;

    let stdin = child.stdin().take();
    let stdout = child.stdout().take();
    let stderr = child.stderr().take();
    let write_stdin = async move {
        if let Some(mut pipe) = stdin {
            // Closing stdin is the end of the input (EOF on the host).
            // A command that exits before reading everything is fine here.
            let _ = pipe.write_all(input.unwrap_or_default()).await;
            let _ = pipe.shutdown().await;
        }
        Ok::<_, io::Error>(())
    };
    let read_stdout = async move {
        let mut buf = Vec::new();
        if let Some(mut pipe) = stdout {
            pipe.read_to_end(&mut buf).await?;
        }
        Ok::<_, io::Error>(buf)
    };
    let read_stderr = async move {
        let mut buf = Vec::new();
        if let Some(mut pipe) = stderr {
            pipe.read_to_end(&mut buf).await?;
        }
        Ok::<_, io::Error>(buf)
    };
    // Drain both pipes before waiting: the exit status arrives only after
    // the output, and a full pipe would block the remote process.
    let (_, stdout, stderr) = tokio::try_join!(write_stdin, read_stdout, read_stderr)
        .map_err(|e| ExecFailure::Other(openssh::Error::ChildIo(e)))?;

    let status = match child.wait().await {
        Ok(status) => status.code(),
        // openssh turns exit status 127 into an error; for us it is an
        // exit status like any other ("command not found" is the step's
        // problem, and its stderr says so).
        Err(openssh::Error::Remote(e)) if e.kind() == io::ErrorKind::NotFound => Some(127),
        // The master sends no exit status when the process died of a signal.
        Err(openssh::Error::RemoteProcessTerminated) => None,
        Err(err) => return Err(ExecFailure::Other(err)),
    };
    Ok(CommandOutput {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

fn forward_message(path: &str, err: &openssh::Error) -> String {
    format!(
        "cannot forward the unix socket {path} over SSH: {} \
         (is AllowStreamLocalForwarding off in the host's sshd_config?)",
        error_chain(err)
    )
}

/// ssh takes a destination that starts with `-` as an option (think
/// `-oProxyCommand=…`), and openssh passes it without `--`; an inventory or
/// discovery value must never get that far.
fn check_address(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("the host has no address".to_string());
    }
    if address.starts_with('-') || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "refusing the address {address:?}: not a host name or IP address"
        ));
    }
    Ok(())
}

fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// What ssh said, reduced to what an operator needs: ssh's log for a
/// changed host key is a dozen lines of banner around one useful sentence.
fn connect_message(err: &openssh::Error) -> String {
    let openssh::Error::Connect(io_err) = err else {
        return error_chain(err);
    };
    if io_err.kind() == io::ErrorKind::NotFound {
        return format!(
            "cannot run the local `ssh` program (is openssh-client installed?): {io_err}"
        );
    }
    summarize_ssh_log(&io_err.to_string())
}

fn summarize_ssh_log(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(|line| line.trim().trim_start_matches("ssh: ").trim())
        .filter(|line| !line.is_empty() && !line.starts_with('@'))
        .collect();
    let Some(last) = lines.last() else {
        return "ssh failed without saying why".to_string();
    };
    let last = last.trim_end_matches('.');
    // The line before "Host key verification failed" says which check failed.
    let reason = lines
        .iter()
        .rev()
        .skip(1)
        .find(|line| line.contains("strict checking") || line.contains("host key"));
    match reason {
        Some(reason) if last.contains("Host key verification failed") => {
            format!("{last}: {}", reason.trim_end_matches('.'))
        }
        _ => last.to_string(),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The maps are only touched briefly and never across an await; a panic
/// while holding one leaves nothing half-done worth refusing to read.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_host_key_is_one_line() {
        let log = "@@@@@@@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n\
                   @@@@@@@@@@@\r\nIT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\n\
                   Host key for [127.0.1.1]:2222 has changed and you have requested strict checking.\r\n\
                   Host key verification failed.\r\n";
        assert_eq!(
            summarize_ssh_log(log),
            "Host key verification failed: Host key for [127.0.1.1]:2222 has changed \
             and you have requested strict checking"
        );
    }

    #[test]
    fn refused_connection_keeps_the_ssh_sentence() {
        let log = "ssh: connect to host 127.0.1.2 port 2222: Connection refused\n";
        assert_eq!(
            summarize_ssh_log(log),
            "connect to host 127.0.1.2 port 2222: Connection refused"
        );
    }

    #[test]
    fn option_like_addresses_are_refused() {
        assert!(check_address("-oProxyCommand=touch /tmp/x").is_err());
        assert!(check_address("host name").is_err());
        assert!(check_address("").is_err());
        assert!(check_address("10.0.0.1").is_ok());
        assert!(check_address("web-1.example.com").is_ok());
        assert!(check_address("::1").is_ok());
    }

    #[test]
    fn home_is_expanded() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(home) = home {
            assert_eq!(
                expand_home(Path::new("~/.ssh/config")),
                home.join(".ssh/config")
            );
        }
        assert_eq!(
            expand_home(Path::new("/etc/ssh/x")),
            PathBuf::from("/etc/ssh/x")
        );
    }
}
