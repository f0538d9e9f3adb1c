use super::{abbreviate, HaproxyLb, Member};
use changeover_core::lb::LbError;
use changeover_core::remote::Remote;
use changeover_core::unit::Host;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// HAProxy reads a command line into one buffer (`tune.bufsize`, 16 KiB by
/// default) and rejects longer lines, so long batches are split.
const MAX_LINE: usize = 8 * 1024;

/// Where the Runtime API listens.
#[derive(Clone)]
pub(super) enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
    /// A unix socket on a host, through SSH unix-socket forwarding over the
    /// host's connection (nothing needed on the host but sshd).
    Forwarded {
        remote: Arc<dyn Remote>,
        host: Arc<Host>,
        path: String,
    },
    /// A command whose stdin/stdout is the Runtime API (`socat stdio …`,
    /// `docker exec -i haproxy socat …`), run for each exchange: on the host
    /// over SSH, or here for a global balancer.
    Command {
        remote: Arc<dyn Remote>,
        host: Arc<Host>,
        command: String,
    },
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "Unix({p:?})"),
            Endpoint::Tcp(a) => write!(f, "Tcp({a:?})"),
            Endpoint::Forwarded { host, path, .. } => write!(f, "Forwarded({}:{path})", host.name),
            Endpoint::Command { host, command, .. } => {
                write!(f, "Command({}: {command})", host.name)
            }
        }
    }
}

#[cfg(test)]
impl PartialEq for Endpoint {
    fn eq(&self, other: &Endpoint) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

impl Endpoint {
    /// An address (`127.0.0.1:9999`, `[::1]:9999`) or `host:port` is TCP;
    /// anything else is a socket path. `host:port` is accepted too because
    /// taking `localhost:9999` for a file name would give a baffling error.
    pub(super) fn parse(s: &str) -> Endpoint {
        if s.parse::<SocketAddr>().is_ok() {
            return Endpoint::Tcp(s.to_string());
        }
        if !s.contains('/') {
            if let Some((host, port)) = s.rsplit_once(':') {
                if !host.is_empty() && port.parse::<u16>().is_ok() {
                    return Endpoint::Tcp(s.to_string());
                }
            }
        }
        Endpoint::Unix(PathBuf::from(s))
    }
}

impl HaproxyLb {
    fn unreachable(&self, message: impl Into<String>) -> LbError {
        LbError::Unreachable {
            endpoint: self.endpoint_text.clone(),
            message: message.into(),
        }
    }

    /// One connection: send `line`, return everything HAProxy answers.
    pub(super) async fn exchange(&self, line: &str) -> Result<String, LbError> {
        let started = std::time::Instant::now();
        let result = {
            let _permit = self
                .exchanges
                .acquire()
                .await
                .expect("the exchange semaphore is never closed");
            self.exchange_untraced(line).await
        };
        let ms = started.elapsed().as_millis() as u64;
        let sent = line.trim_end();
        match &result {
            Ok(answer) => {
                tracing::debug!(balancer = ?self.endpoint, ms, "haproxy `{sent}` -> {}", one_line(answer));
                tracing::trace!(balancer = ?self.endpoint, "haproxy answer to `{sent}`:\n{answer}");
            }
            Err(e) => {
                tracing::debug!(balancer = ?self.endpoint, ms, "haproxy `{sent}` failed: {e}")
            }
        }
        result
    }

    async fn exchange_untraced(&self, line: &str) -> Result<String, LbError> {
        let secs = humanize(self.timeout);
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = self.connect_unix(path).await?;
                self.talk(stream, line).await
            }
            Endpoint::Tcp(addr) => {
                let stream =
                    tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr))
                        .await
                        .map_err(|_| self.unreachable(format!("no connection after {secs}")))?
                        .map_err(|e| self.unreachable(e.to_string()))?;
                self.talk(stream, line).await
            }
            Endpoint::Forwarded { remote, host, path } => {
                let forward = |renew| async move {
                    remote
                        .forward_unix_socket(host, path, renew)
                        .await
                        .map_err(|e| self.unreachable(e.to_string()))
                };
                let local = forward(false).await?;
                // The forward dies with its SSH master; one fresh try.
                let stream = match self.connect_unix(&local).await {
                    Ok(stream) => stream,
                    Err(_) => self.connect_unix(&forward(true).await?).await?,
                };
                // ssh accepts the local end at once and only then tries the
                // host's socket: a missing socket shows up as a reset or an
                // empty answer, which deserves a plainer message.
                let hint = || {
                    self.unreachable(format!(
                        "the host's sshd could not connect to {path} (does the socket exist on {}, \
                         and is HAProxy running with `stats socket {path} level admin`?)",
                        host.name
                    ))
                };
                match self.talk(stream, line).await {
                    Ok(answer) if answer.is_empty() => Err(hint()),
                    Err(LbError::Unreachable { message, .. })
                        if message.contains("reset") || message.contains("Broken pipe") =>
                    {
                        Err(hint())
                    }
                    other => other,
                }
            }
            Endpoint::Command {
                remote,
                host,
                command,
            } => {
                let out = remote
                    .run_with_input(host, command, format!("{line}\n").as_bytes(), self.timeout)
                    .await
                    .map_err(|e| self.unreachable(e.to_string()))?;
                // A command that failed may have printed part of an answer
                // (a cut-off `show stat` would read as 0 sessions): only a
                // clean exit counts as HAProxy's whole answer.
                if !out.success() {
                    let why = out.stderr.lines().last().unwrap_or("").trim().to_string();
                    return Err(self.unreachable(format!(
                        "`{command}` exited with {}{}",
                        out.status
                            .map_or("a signal".to_string(), |c| format!("status {c}")),
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(": {why}")
                        }
                    )));
                }
                Ok(out.stdout)
            }
        }
    }

    /// A unix socket whose listen queue is full refuses with EAGAIN at
    /// once (another client, or an HAProxy slow to accept): tried again,
    /// a little later each time, within the timeout.
    async fn connect_unix(&self, path: &Path) -> Result<tokio::net::UnixStream, LbError> {
        let attempts = async {
            let mut pause = Duration::from_millis(2);
            loop {
                match tokio::net::UnixStream::connect(path).await {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                    other => return other,
                }
            }
        };
        tokio::time::timeout(self.timeout, attempts)
            .await
            .map_err(|_| {
                self.unreachable(format!(
                    "no connection after {} (the socket's queue stayed full)",
                    humanize(self.timeout)
                ))
            })?
            .map_err(|e| self.unreachable(e.to_string()))
    }

    async fn talk<S>(&self, mut stream: S, line: &str) -> Result<String, LbError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let io = async {
            stream.write_all(format!("{line}\n").as_bytes()).await?;
            stream.flush().await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(self.timeout, io)
            .await
            .map_err(|_| {
                self.unreachable(format!(
                    "no complete answer to `{}` after {}",
                    abbreviate(line),
                    humanize(self.timeout)
                ))
            })?
            .map_err(|e| self.unreachable(format!("while running `{}`: {e}", abbreviate(line))))?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    /// Run `set ...` commands, batched, and turn any non-empty answer into an
    /// error. HAProxy keeps going after a failed command in a batch, so a
    /// failure can leave the others applied; every command here is idempotent,
    /// so the engine may simply retry or put back.
    pub(super) async fn run_commands(&self, commands: &[(Member, String)]) -> Result<(), LbError> {
        let mut errors = Vec::new();
        for batch in batches(commands) {
            let line = batch
                .iter()
                .map(|(_, c)| c.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let answer = self.exchange(&line).await?;
            let answers = split_answers(&answer);
            if answers.len() != batch.len() {
                return Err(LbError::Protocol {
                    endpoint: self.endpoint_text.clone(),
                    request: abbreviate(&line),
                    detail: format!(
                        "expected {} answers, got {}: {}",
                        batch.len(),
                        answers.len(),
                        abbreviate(answer.trim())
                    ),
                });
            }
            for ((member, command), answer) in batch.iter().zip(answers) {
                if !answer.is_empty() {
                    errors.push(self.refusal(member, command, &answer));
                }
            }
        }
        let mut errors = errors.into_iter();
        match errors.next() {
            None => Ok(()),
            Some(first) => {
                for other in errors {
                    tracing::warn!("{other}");
                }
                Err(first)
            }
        }
    }

    fn refusal(&self, member: &Member, request: &str, answer: &str) -> LbError {
        let first = answer.lines().next().unwrap_or("").trim();
        if first == "No such server." || first == "No such backend." {
            return LbError::NoSuchMember {
                endpoint: self.endpoint_text.clone(),
                member: member.id(),
            };
        }
        LbError::Refused {
            endpoint: self.endpoint_text.clone(),
            request: request.to_string(),
            answer: message_of(answer),
        }
    }
}

/// The message in an error answer. "Unknown command" comes with the whole
/// help text; its first line is the message.
/// An answer on one line for `-v`: its first line and how many follow.
fn one_line(answer: &str) -> String {
    let mut lines = answer.trim().lines();
    let first = lines.next().unwrap_or("(empty)");
    match lines.count() {
        0 => first.to_string(),
        n => format!("{first} (+{n} lines)"),
    }
}

pub(super) fn message_of(answer: &str) -> String {
    let first = answer.lines().next().unwrap_or("").trim();
    first.trim_end_matches(':').to_string()
}

/// Commands grouped into lines HAProxy accepts.
fn batches(commands: &[(Member, String)]) -> Vec<&[(Member, String)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut len = 0;
    for (i, (_, c)) in commands.iter().enumerate() {
        if i > start && len + c.len() + 2 > MAX_LINE {
            out.push(&commands[start..i]);
            start = i;
            len = 0;
        }
        len += c.len() + 2;
    }
    if start < commands.len() {
        out.push(&commands[start..]);
    }
    out
}

/// Split a non-interactive answer into one answer per command: each ends with
/// an empty line, and none contains one. An unterminated tail (a cut-off
/// answer) comes back as a last answer of its own.
pub(super) fn split_answers(text: &str) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    // What follows the final newline is not a line.
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            out.push(current.join("\n"));
            current.clear();
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        out.push(current.join("\n"));
    }
    out
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn answers_split_on_empty_lines() {
        assert_eq!(split_answers("\n"), vec![""]);
        assert_eq!(
            split_answers("\nNo such server.\n\n\n"),
            vec!["", "No such server.", ""]
        );
        assert_eq!(
            split_answers("Unknown command:\n  help\n  quit\n\n"),
            vec!["Unknown command:\n  help\n  quit"]
        );
        assert_eq!(split_answers(""), Vec::<String>::new());
        assert_eq!(split_answers("cut off"), vec!["cut off"]);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("/run/haproxy/admin.sock"),
            Endpoint::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(
            Endpoint::parse("admin.sock"),
            Endpoint::Unix("admin.sock".into())
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1:9999"),
            Endpoint::Tcp("127.0.0.1:9999".into())
        );
        assert_eq!(
            Endpoint::parse("[::1]:9999"),
            Endpoint::Tcp("[::1]:9999".into())
        );
        assert_eq!(
            Endpoint::parse("localhost:9999"),
            Endpoint::Tcp("localhost:9999".into())
        );
        assert_eq!(Endpoint::parse("./odd:1"), Endpoint::Unix("./odd:1".into()));
    }

    #[test]
    fn long_batches_are_split() {
        let m = Member {
            backend: "app".into(),
            server: "s".into(),
        };
        let commands: Vec<_> = (0..1000)
            .map(|i| (m.clone(), format!("set server app/web-{i} state drain")))
            .collect();
        let batches = batches(&commands);
        assert!(batches.len() > 1);
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 1000);
        for b in batches {
            let line: usize = b.iter().map(|(_, c)| c.len() + 2).sum();
            assert!(line <= MAX_LINE);
        }
    }
}
