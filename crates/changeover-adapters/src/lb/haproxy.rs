//! HAProxy through its Runtime API (the "stats socket").
//!
//! Transport: a unix socket path, or TCP `host:port`. Every exchange is one
//! connection in non-interactive mode: write one line, read to EOF. Several
//! commands share a line, separated by `;`, to save round trips; HAProxy runs
//! each and ends each answer with an empty line, which is how the answers are
//! told apart again.
//!
//! Changes need a socket at `level admin`: HAProxy answers "Permission denied"
//! to `set server` at `operator` level, and that becomes [`LbError::Refused`].
//!
//! Status comes from two views read in one exchange, because neither is
//! enough alone:
//! - `show stat` (CSV): sessions (`scur` + `qcur`) and the status word for
//!   messages. Its status column folds admin and operational state into one
//!   word: a drained server whose check fails shows "DOWN" (the drain is
//!   invisible) and a server in maintenance shows "MAINT" (its health is
//!   invisible).
//! - `show servers state`: the admin bits (`srv_admin_state`), the
//!   operational state (`srv_op_state`), the user weight (`srv_uweight`) and
//!   the configured weight (`srv_iweight`), each on its own.
//!
//! Both are parsed by header names, never by position, since columns have
//! been added in nearly every HAProxy release.

use async_trait::async_trait;
use changeover_core::lb::{
    AdminState, LbAction, LbCapabilities, LbError, LoadBalancer, MemberStatus, OperState,
};
use changeover_core::remote::Remote;
use changeover_core::template::{Template, Vars};
use changeover_core::unit::{Host, Unit};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long connecting, and then getting a whole answer, may take before the
/// balancer counts as unreachable: a hung socket must not hang the deploy.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// HAProxy reads a command line into one buffer (`tune.bufsize`, 16 KiB by
/// default) and rejects longer lines, so long batches are split.
const MAX_LINE: usize = 8 * 1024;

/// How changeover takes a server out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `set server <b>/<s> state drain|maint|ready`.
    State,
    /// `set server <b>/<s> weight 0`, then back to the weight it had: for
    /// setups where the admin state belongs to someone else (an agent check,
    /// another tool).
    Weight,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::State => "state",
            Method::Weight => "weight",
        })
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Method, String> {
        match s {
            "state" => Ok(Method::State),
            "weight" => Ok(Method::Weight),
            other => Err(format!(
                "unknown haproxy method `{other}`; expected \"state\" or \"weight\""
            )),
        }
    }
}

/// Where the Runtime API listens.
#[derive(Clone)]
enum Endpoint {
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
    fn parse(s: &str) -> Endpoint {
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

/// One server in one backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Member {
    backend: String,
    server: String,
}

impl Member {
    fn id(&self) -> String {
        format!("{}/{}", self.backend, self.server)
    }
}

/// An HAProxy instance reached through its Runtime API.
#[derive(Debug, Clone)]
pub struct HaproxyLb {
    endpoint_text: String,
    endpoint: Endpoint,
    backend: Template,
    server: Template,
    method: Method,
    timeout: Duration,
}

impl HaproxyLb {
    /// `endpoint` is a unix socket path or a TCP `host:port`; `backend` and
    /// `server` are rendered per unit, without quoting, into the member name.
    pub fn new(endpoint: String, backend: Template, server: Template, method: Method) -> HaproxyLb {
        let parsed = Endpoint::parse(&endpoint);
        HaproxyLb::with_endpoint(endpoint, parsed, backend, server, method)
    }

    /// An HAProxy on `host`, its Runtime API at the unix socket `path` there,
    /// reached through `remote`'s connection to the host.
    pub fn forwarded(
        remote: Arc<dyn Remote>,
        host: Arc<Host>,
        path: String,
        backend: Template,
        server: Template,
        method: Method,
    ) -> HaproxyLb {
        let text = format!("{}:{path}", host.name);
        HaproxyLb::with_endpoint(
            text,
            Endpoint::Forwarded { remote, host, path },
            backend,
            server,
            method,
        )
    }

    /// An HAProxy whose Runtime API is the stdin/stdout of `command`, run
    /// for `host` by `remote` (already rendered and quoted).
    pub fn command(
        remote: Arc<dyn Remote>,
        host: Arc<Host>,
        command: String,
        backend: Template,
        server: Template,
        method: Method,
    ) -> HaproxyLb {
        let text = format!("{}:`{command}`", host.name);
        HaproxyLb::with_endpoint(
            text,
            Endpoint::Command {
                remote,
                host,
                command,
            },
            backend,
            server,
            method,
        )
    }

    fn with_endpoint(
        endpoint_text: String,
        endpoint: Endpoint,
        backend: Template,
        server: Template,
        method: Method,
    ) -> HaproxyLb {
        HaproxyLb {
            endpoint_text,
            endpoint,
            backend,
            server,
            method,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Replace [`DEFAULT_TIMEOUT`] (applies to connecting and, separately, to
    /// reading a whole answer).
    pub fn with_timeout(mut self, timeout: Duration) -> HaproxyLb {
        self.timeout = timeout;
        self
    }

    pub fn method(&self) -> Method {
        self.method
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint_text
    }

    fn render(&self, unit: &Unit) -> (String, String) {
        let vars = Vars::for_unit(unit, "", "", "");
        (self.backend.render(&vars), self.server.render(&vars))
    }

    /// The member for `unit`, refusing names HAProxy could not have: the
    /// names go into a command line unquoted, so a space or `;` from the
    /// inventory would otherwise become a second command.
    fn member(&self, unit: &Unit) -> Result<Member, LbError> {
        let (backend, server) = self.render(unit);
        for (what, name, template) in [
            ("backend", &backend, &self.backend),
            ("server", &server, &self.server),
        ] {
            if let Some(problem) = name_problem(name) {
                return Err(LbError::Other(format!(
                    "haproxy {}: {what} name `{name}` for unit {unit} (from `{template}`) {problem}",
                    self.endpoint_text
                )));
            }
        }
        Ok(Member { backend, server })
    }

    /// The weight each member had before it was taken out; without a record
    /// of it (or when it was 0, which would make "enable" a no-op the engine
    /// then waits on forever), the weight from HAProxy's config.
    async fn weights_to_restore(
        &self,
        members: &[Member],
        restore: Option<&[MemberStatus]>,
    ) -> Result<Vec<u32>, LbError> {
        let remembered: Vec<Option<u32>> = members
            .iter()
            .map(|m| {
                let id = m.id();
                restore
                    .and_then(|r| r.iter().find(|s| s.member == id))
                    .and_then(|s| s.weight)
                    .filter(|w| *w > 0)
            })
            .collect();
        if remembered.iter().all(Option::is_some) {
            return Ok(remembered.into_iter().flatten().collect());
        }
        let servers = self.snapshot().await?;
        members
            .iter()
            .zip(remembered)
            .map(|(m, w)| {
                if let Some(w) = w {
                    return Ok(w);
                }
                let view = servers.get(m).ok_or_else(|| LbError::NoSuchMember {
                    endpoint: self.endpoint_text.clone(),
                    member: m.id(),
                })?;
                match view.iweight {
                    Some(w) if w > 0 => Ok(w),
                    _ => Err(LbError::Other(format!(
                        "haproxy {}: cannot put {} back by weight: no weight was recorded \
                         before it was taken out and its configured weight is 0",
                        self.endpoint_text,
                        m.id()
                    ))),
                }
            })
            .collect()
    }

    fn unreachable(&self, message: impl Into<String>) -> LbError {
        LbError::Unreachable {
            endpoint: self.endpoint_text.clone(),
            message: message.into(),
        }
    }

    /// One connection: send `line`, return everything HAProxy answers.
    async fn exchange(&self, line: &str) -> Result<String, LbError> {
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

    async fn connect_unix(&self, path: &Path) -> Result<tokio::net::UnixStream, LbError> {
        tokio::time::timeout(self.timeout, tokio::net::UnixStream::connect(path))
            .await
            .map_err(|_| {
                self.unreachable(format!("no connection after {}", humanize(self.timeout)))
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
    async fn run_commands(&self, commands: &[(Member, String)]) -> Result<(), LbError> {
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

    /// Both status views, in one exchange.
    async fn snapshot(&self) -> Result<HashMap<Member, ServerView>, LbError> {
        const REQUEST: &str = "show servers state; show stat -1 4 -1";
        let answer = self.exchange(REQUEST).await?;
        let blocks = split_answers(&answer);
        let protocol = |detail: String| LbError::Protocol {
            endpoint: self.endpoint_text.clone(),
            request: REQUEST.to_string(),
            detail,
        };
        // Anything not shaped like the dumps is HAProxy saying no (e.g.
        // "Permission denied" on a restricted socket).
        let mut dumps = Vec::new();
        for (i, marker, request) in [
            (0, "# be_id", "show servers state"),
            (1, "# pxname", "show stat -1 4 -1"),
        ] {
            match blocks.get(i) {
                Some(block) if block.lines().any(|l| l.starts_with(marker)) => dumps.push(block),
                Some(block) if !block.trim().is_empty() => {
                    return Err(LbError::Refused {
                        endpoint: self.endpoint_text.clone(),
                        request: request.to_string(),
                        answer: message_of(block),
                    })
                }
                _ => {
                    return Err(protocol(format!(
                        "no answer to `{request}` in: {}",
                        abbreviate(answer.trim())
                    )))
                }
            }
        }
        // Every answer ends with an empty line; without it the answer was
        // cut off, and a cut inside the last field would still parse.
        if !(answer.ends_with("\n\n") || answer.ends_with("\n\r\n")) {
            return Err(protocol(format!(
                "the answer to `show stat` is cut off (no empty line at its end): …{}",
                tail(&answer)
            )));
        }
        let (state_block, stat_block) = (dumps[0], dumps[1]);
        let states = parse_servers_state(state_block).map_err(protocol)?;
        let stats = parse_stat_csv(stat_block).map_err(protocol)?;
        Ok(merge(stats, states))
    }
}

/// The message in an error answer. "Unknown command" comes with the whole
/// help text; its first line is the message.
fn message_of(answer: &str) -> String {
    let first = answer.lines().next().unwrap_or("").trim();
    first.trim_end_matches(':').to_string()
}

/// Why HAProxy could not have a proxy or server called `name`, if so.
/// HAProxy itself only allows letters, digits and `-_.:` in these names.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".to_string());
    }
    let bad = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c)))?;
    Some(format!(
        "contains {bad:?}; HAProxy names may only hold letters, digits and -_.:"
    ))
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
fn split_answers(text: &str) -> Vec<String> {
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

/// One server row of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatRow {
    backend: String,
    server: String,
    status: String,
    weight: Option<u32>,
    iweight: Option<u32>,
    sessions: u64,
}

/// One server row of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StateRow {
    backend: String,
    server: String,
    op_state: u32,
    admin_state: u32,
    uweight: u32,
    iweight: u32,
}

/// What `status` reports about a server, from both views.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerView {
    admin: AdminState,
    oper: OperState,
    weight: Option<u32>,
    iweight: Option<u32>,
    sessions: u64,
    raw: String,
}

// `srv_admin_state` bits, from HAProxy's server-t.h.
const ADMF_MAINT: u32 = 0x01 | 0x02 | 0x20; // forced, inherited, DNS resolution
const ADMF_CMAINT: u32 = 0x04; // `disabled` in the config
const ADMF_DRAIN: u32 = 0x08 | 0x10; // forced, inherited

/// Parse `show stat` CSV by header name; only server rows are kept.
fn parse_stat_csv(text: &str) -> Result<Vec<StatRow>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or_else(|| "show stat: no `# pxname,...` header line".to_string())?;
    let names = csv_fields(header.trim_start());
    let col = |name: &str| names.iter().position(|n| n == name);
    let need = |name: &str| col(name).ok_or_else(|| format!("show stat: no `{name}` column"));
    let (px, sv, status) = (need("pxname")?, need("svname")?, need("status")?);
    let (scur, qcur) = (need("scur")?, col("qcur"));
    let (weight, iweight) = (col("weight"), col("iweight"));

    let mut rows = Vec::new();
    for line in lines {
        let fields = csv_fields(line);
        // A row cut short or with a field too many would put values under
        // the wrong columns (a lost scur reads as 0 sessions).
        if fields.len() != names.len() {
            return Err(format!(
                "show stat: a row has {} fields, the header {}: {}",
                fields.len(),
                names.len(),
                abbreviate(line)
            ));
        }
        let get = |i: Option<usize>| i.and_then(|i| fields.get(i)).map_or("", |s| s.as_str());
        let server = get(Some(sv));
        if server == "FRONTEND" || server == "BACKEND" {
            continue;
        }
        let number = |i: Option<usize>| -> Result<u64, String> {
            let v = get(i);
            if v.is_empty() {
                return Ok(0);
            }
            v.parse()
                .map_err(|_| format!("show stat: `{v}` is not a number (server {server})"))
        };
        rows.push(StatRow {
            backend: get(Some(px)).to_string(),
            server: server.to_string(),
            status: get(Some(status)).to_string(),
            weight: get(weight).parse().ok(),
            iweight: get(iweight).parse().ok(),
            sessions: number(Some(scur))?
                .checked_add(number(qcur)?)
                .ok_or_else(|| format!("show stat: scur + qcur overflow (server {server})"))?,
        });
    }
    Ok(rows)
}

/// Split one CSV line; HAProxy quotes fields holding a comma or a quote.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// Parse `show servers state` (a format version line, a `# ` header, rows
/// separated by spaces) by header name.
fn parse_servers_state(text: &str) -> Result<Vec<StateRow>, String> {
    let mut lines = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .skip_while(|l| !l.starts_with('#'));
    let header = lines
        .next()
        .ok_or_else(|| "show servers state: no `# be_id ...` header line".to_string())?;
    let names: Vec<&str> = header.trim_start_matches('#').split_whitespace().collect();
    let need = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| format!("show servers state: no `{name}` column"))
    };
    let (be, sv) = (need("be_name")?, need("srv_name")?);
    let (op, admin) = (need("srv_op_state")?, need("srv_admin_state")?);
    let (uw, iw) = (need("srv_uweight")?, need("srv_iweight")?);

    let mut rows = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != names.len() {
            return Err(format!(
                "show servers state: a row has {} fields, the header {}: {}",
                fields.len(),
                names.len(),
                abbreviate(line)
            ));
        }
        let get = |i: usize| fields.get(i).copied().unwrap_or("");
        let number = |i: usize, name: &str| -> Result<u32, String> {
            get(i).parse().map_err(|_| {
                format!(
                    "show servers state: {name} `{}` is not a number (server {}/{})",
                    get(i),
                    get(be),
                    get(sv)
                )
            })
        };
        rows.push(StateRow {
            backend: get(be).to_string(),
            server: get(sv).to_string(),
            op_state: number(op, "srv_op_state")?,
            admin_state: number(admin, "srv_admin_state")?,
            uweight: number(uw, "srv_uweight")?,
            iweight: number(iw, "srv_iweight")?,
        });
    }
    Ok(rows)
}

/// Read the status word of `show stat` alone, for when `show servers state`
/// has no row for the server. Admin maint and drain hide part of the truth
/// there (see the module docs).
fn states_from_word(word: &str) -> (AdminState, OperState) {
    let head = word.split_whitespace().next().unwrap_or("");
    match head {
        "MAINT" => (AdminState::Maint, OperState::Down),
        // "DRAIN" only shows while the server runs.
        "DRAIN" => (AdminState::Drain, OperState::Up),
        "UP" => (AdminState::Ready, OperState::Up),
        // No health check: HAProxy sends traffic to it as if it were up.
        "no" if word == "no check" => (AdminState::Ready, OperState::Up),
        // NOLB: the server asked for no new traffic (disable-on-404, agent),
        // so it is not serving in the sense `is_serving` means.
        "DOWN" | "NOLB" => (AdminState::Ready, OperState::Down),
        _ => (AdminState::Ready, OperState::Unknown),
    }
}

fn admin_from_bits(bits: u32) -> AdminState {
    if bits & (ADMF_MAINT | ADMF_CMAINT) != 0 {
        AdminState::Maint
    } else if bits & ADMF_DRAIN != 0 {
        AdminState::Drain
    } else {
        AdminState::Ready
    }
}

/// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping (NOLB).
fn oper_from_state(op: u32) -> OperState {
    match op {
        1 | 2 => OperState::Up,
        0 | 3 => OperState::Down,
        _ => OperState::Unknown,
    }
}

fn merge(stats: Vec<StatRow>, states: Vec<StateRow>) -> HashMap<Member, ServerView> {
    let mut states: HashMap<Member, StateRow> = states
        .into_iter()
        .map(|s| {
            let key = Member {
                backend: s.backend.clone(),
                server: s.server.clone(),
            };
            (key, s)
        })
        .collect();
    stats
        .into_iter()
        .map(|stat| {
            let key = Member {
                backend: stat.backend,
                server: stat.server,
            };
            let view = match states.remove(&key) {
                Some(state) => ServerView {
                    admin: admin_from_bits(state.admin_state),
                    oper: oper_from_state(state.op_state),
                    // The user weight, not show stat's effective weight: slow
                    // start scales the latter, and putting back a scaled
                    // weight would keep the server light for good.
                    weight: Some(state.uweight),
                    iweight: Some(state.iweight),
                    sessions: stat.sessions,
                    raw: stat.status,
                },
                None => {
                    let (admin, oper) = states_from_word(&stat.status);
                    ServerView {
                        admin,
                        oper,
                        weight: stat.weight,
                        iweight: stat.iweight,
                        sessions: stat.sessions,
                        raw: stat.status,
                    }
                }
            };
            (key, view)
        })
        .collect()
}

/// LbError is not Clone; status reports one failed snapshot to every unit.
fn duplicate(e: &LbError) -> LbError {
    match e {
        LbError::Unreachable { endpoint, message } => LbError::Unreachable {
            endpoint: endpoint.clone(),
            message: message.clone(),
        },
        LbError::Refused {
            endpoint,
            request,
            answer,
        } => LbError::Refused {
            endpoint: endpoint.clone(),
            request: request.clone(),
            answer: answer.clone(),
        },
        LbError::NoSuchMember { endpoint, member } => LbError::NoSuchMember {
            endpoint: endpoint.clone(),
            member: member.clone(),
        },
        LbError::Protocol {
            endpoint,
            request,
            detail,
        } => LbError::Protocol {
            endpoint: endpoint.clone(),
            request: request.clone(),
            detail: detail.clone(),
        },
        LbError::Other(m) => LbError::Other(m.clone()),
    }
}

/// The last line of an answer, for messages.
fn tail(text: &str) -> String {
    abbreviate(text.trim_end().lines().last().unwrap_or(""))
}

fn abbreviate(text: &str) -> String {
    const MAX: usize = 120;
    let first = text.lines().next().unwrap_or("");
    if first.len() <= MAX && !text.contains('\n') {
        return first.to_string();
    }
    let mut cut = first.len().min(MAX);
    while !first.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &first[..cut])
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[async_trait]
impl LoadBalancer for HaproxyLb {
    fn label(&self) -> String {
        format!("haproxy {}", self.endpoint_text)
    }

    fn capabilities(&self) -> LbCapabilities {
        LbCapabilities {
            counts_sessions: true,
            // With weights there is nothing stronger than weight 0.
            distinct_disable: self.method == Method::State,
        }
    }

    fn member_name(&self, unit: &Unit) -> String {
        let (backend, server) = self.render(unit);
        format!("{backend}/{server}")
    }

    async fn status(&self, units: &[&Unit]) -> Vec<Result<MemberStatus, LbError>> {
        if units.is_empty() {
            return Vec::new();
        }
        let snapshot = self.snapshot().await;
        units
            .iter()
            .map(|unit| {
                let member = self.member(unit)?;
                let servers = snapshot.as_ref().map_err(duplicate)?;
                let view = servers.get(&member).ok_or_else(|| LbError::NoSuchMember {
                    endpoint: self.endpoint_text.clone(),
                    member: member.id(),
                })?;
                Ok(MemberStatus {
                    member: member.id(),
                    admin: view.admin,
                    oper: view.oper,
                    weight: view.weight,
                    sessions: Some(view.sessions),
                    raw: view.raw.clone(),
                })
            })
            .collect()
    }

    /// HAProxy applies `set server` before it answers, so success here means
    /// applied.
    ///
    /// With [`Method::Weight`], `Disable` sets weight 0 again rather than
    /// nothing: weight 0 is already as far out as weights go, and repeating it
    /// makes `Disable` stand on its own (e.g. when `recover` replays only the
    /// last journaled step).
    async fn apply(
        &self,
        units: &[&Unit],
        action: LbAction,
        restore: Option<&[MemberStatus]>,
    ) -> Result<(), LbError> {
        // Every name is checked before anything is sent, so a bad one cannot
        // leave half the units changed.
        let members = units
            .iter()
            .map(|u| self.member(u))
            .collect::<Result<Vec<_>, _>>()?;
        if members.is_empty() {
            return Ok(());
        }
        let commands = match (self.method, action) {
            (Method::State, _) => {
                let state = match action {
                    LbAction::Drain => "drain",
                    LbAction::Disable => "maint",
                    LbAction::Enable => "ready",
                };
                members
                    .into_iter()
                    .map(|m| {
                        let c = format!("set server {} state {state}", m.id());
                        (m, c)
                    })
                    .collect::<Vec<_>>()
            }
            (Method::Weight, LbAction::Drain | LbAction::Disable) => members
                .into_iter()
                .map(|m| {
                    let c = format!("set server {} weight 0", m.id());
                    (m, c)
                })
                .collect(),
            (Method::Weight, LbAction::Enable) => {
                let weights = self.weights_to_restore(&members, restore).await?;
                members
                    .into_iter()
                    .zip(weights)
                    .map(|(m, w)| {
                        let c = format!("set server {} weight {w}", m.id());
                        (m, c)
                    })
                    .collect()
            }
        };
        self.run_commands(&commands).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `show stat -1 4 -1` header from HAProxy 2.6 (trimmed after the
    /// columns that matter, which HAProxy never does, but parsing must not
    /// care).
    const STAT_26: &str = "\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,
app,web-1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,1,1,,1,3,1,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,1,1,0,,,,127.0.0.1:1,,http,,
app,web-2,2,0,3,0,,0,0,0,,0,,0,0,0,0,UP 1/3,37,1,0,1,1,1,1,,1,3,2,,0,,2,0,,0,L4OK,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,\"Layer4 check passed, fine\",,1,1,0,,,,127.0.0.1:2,,http,,
app,web-3,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,5,1,0,,,2,,,1,3,3,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:3,,http,,
app,BACKEND,0,0,0,0,999,0,0,0,0,0,,0,0,0,0,UP,5,1,0,,0,2,0,,1,3,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,
";

    const STATE_26: &str = "\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 app 1 web-1 127.0.0.1 0 8 0 1 38 8 2 0 6 0 0 0 - 1 - 0 0 - - 0
3 app 2 web-2 127.0.0.1 2 0 37 37 36 8 2 0 6 0 0 0 - 2 - 0 0 - - 0
3 app 3 web-3 127.0.0.1 0 1 5 5 37 1 0 2 0 0 0 0 - 3 - 0 0 - - 0
";

    #[test]
    fn stat_rows_by_header_name() {
        let rows = parse_stat_csv(STAT_26).unwrap();
        assert_eq!(rows.len(), 3, "FRONTEND/BACKEND rows are skipped");
        assert_eq!(
            rows[1],
            StatRow {
                backend: "app".into(),
                server: "web-2".into(),
                status: "UP 1/3".into(),
                weight: Some(37),
                iweight: None,
                sessions: 5,
            }
        );
        assert_eq!(rows[2].status, "MAINT");
    }

    #[test]
    fn stat_columns_in_any_order() {
        let text = "# status,qcur,iweight,svname,weight,scur,pxname\n\
                    MAINT (via other/web-1),1,10,web-1,3,4,app\n\
                    DRAIN (agent),,10,web-2,3,,app\n";
        let rows = parse_stat_csv(text).unwrap();
        assert_eq!(rows[0].backend, "app");
        assert_eq!(rows[0].server, "web-1");
        assert_eq!(rows[0].status, "MAINT (via other/web-1)");
        assert_eq!(rows[0].sessions, 5);
        assert_eq!(rows[0].weight, Some(3));
        assert_eq!(rows[0].iweight, Some(10));
        assert_eq!(rows[1].sessions, 0, "empty counters count as 0");
    }

    #[test]
    fn stat_without_needed_column_is_an_error() {
        let err = parse_stat_csv("# pxname,svname,status\napp,web-1,UP\n").unwrap_err();
        assert!(err.contains("scur"), "{err}");
        let err = parse_stat_csv("Permission denied\n").unwrap_err();
        assert!(err.contains("header"), "{err}");
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(
            csv_fields(r#"a,"b, c","say ""hi""",,"#),
            vec!["a", "b, c", r#"say "hi""#, "", ""]
        );
    }

    #[test]
    fn status_words() {
        use AdminState::*;
        use OperState::*;
        for (word, expect) in [
            ("UP", (Ready, Up)),
            ("UP 1/3", (Ready, Up)),
            ("no check", (Ready, Up)),
            ("DOWN", (Ready, Down)),
            ("DOWN 1/2", (Ready, Down)),
            ("DOWN (agent)", (Ready, Down)),
            ("NOLB", (Ready, Down)),
            ("NOLB 1/2", (Ready, Down)),
            ("MAINT", (Maint, Down)),
            ("MAINT (via app/web-9)", (Maint, Down)),
            ("MAINT (resolution)", (Maint, Down)),
            ("DRAIN", (Drain, Up)),
            ("DRAIN (agent)", (Drain, Up)),
            ("DRAIN 1/3", (Drain, Up)),
            ("something new", (Ready, Unknown)),
        ] {
            assert_eq!(states_from_word(word), expect, "{word}");
        }
    }

    #[test]
    fn servers_state_by_header_name() {
        let rows = parse_servers_state(STATE_26).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            StateRow {
                backend: "app".into(),
                server: "web-1".into(),
                op_state: 0,
                admin_state: 8,
                uweight: 0,
                iweight: 1,
            }
        );
        let reordered =
            "1\n# srv_iweight srv_name srv_uweight be_name srv_admin_state srv_op_state\n\
                         7 web-9 3 api 0 2\n";
        let rows = parse_servers_state(reordered).unwrap();
        assert_eq!(rows[0].server, "web-9");
        assert_eq!((rows[0].uweight, rows[0].iweight), (3, 7));
    }

    #[test]
    fn merged_view_sees_drain_behind_down() {
        let views = merge(
            parse_stat_csv(STAT_26).unwrap(),
            parse_servers_state(STATE_26).unwrap(),
        );
        let get = |s: &str| {
            views[&Member {
                backend: "app".into(),
                server: s.into(),
            }]
                .clone()
        };
        // Shown as "DOWN", but drained and at weight 0.
        let web1 = get("web-1");
        assert_eq!(
            (web1.admin, web1.oper),
            (AdminState::Drain, OperState::Down)
        );
        assert_eq!((web1.weight, web1.iweight), (Some(0), Some(1)));
        assert_eq!(web1.raw, "DOWN");
        let web2 = get("web-2");
        assert_eq!((web2.admin, web2.oper), (AdminState::Ready, OperState::Up));
        assert_eq!(web2.sessions, 5);
        let web3 = get("web-3");
        assert_eq!(
            (web3.admin, web3.oper),
            (AdminState::Maint, OperState::Down)
        );
        assert_eq!(web3.weight, Some(5), "maintenance keeps the user weight");
    }

    #[test]
    fn admin_bits() {
        assert_eq!(admin_from_bits(0), AdminState::Ready);
        assert_eq!(
            admin_from_bits(0x40),
            AdminState::Ready,
            "fqdn changed only"
        );
        assert_eq!(admin_from_bits(0x08), AdminState::Drain);
        assert_eq!(admin_from_bits(0x10), AdminState::Drain);
        assert_eq!(admin_from_bits(0x05), AdminState::Maint);
        assert_eq!(admin_from_bits(0x09), AdminState::Maint, "maint wins");
        assert_eq!(admin_from_bits(0x20), AdminState::Maint);
    }

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
    fn names_that_could_inject_are_refused() {
        assert_eq!(name_problem("web-1.example:8080_a"), None);
        for bad in ["", "web 1", "web;quit", "a/b", "web\n", "wéb"] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
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
