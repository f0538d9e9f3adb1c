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

mod endpoint;
mod shared;
mod stat;

use async_trait::async_trait;
use changeover_core::lb::{LbAction, LbCapabilities, LbError, LoadBalancer, MemberStatus};
use changeover_core::remote::Remote;
use changeover_core::template::{Template, Vars};
use changeover_core::unit::{Host, Unit};
use endpoint::Endpoint;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// How long connecting, and then getting a whole answer, may take before the
/// balancer counts as unreachable: a hung socket must not hang the deploy.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Connections to the Runtime API at once. HAProxy serves 10 on a
    /// stats socket by default (`stats maxconn`) and lets the rest wait in
    /// a short listen queue; a unix socket whose queue is full refuses at
    /// once (EAGAIN). 50 units draining at once would get there.
    exchanges: Arc<tokio::sync::Semaphore>,
    /// Status reads shared by the units asking at about the same time.
    reads: Arc<shared::Reads>,
}

/// At most this many connections to one HAProxy's Runtime API at a time.
pub const MAX_EXCHANGES: usize = 8;

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
            exchanges: Arc::new(tokio::sync::Semaphore::new(MAX_EXCHANGES)),
            reads: Arc::default(),
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
        let snapshot = self.snapshot().await;
        let servers = snapshot.as_ref().as_ref().map_err(LbError::clone)?;
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
                let servers = snapshot.as_ref().as_ref().map_err(LbError::clone)?;
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
    #[test]
    fn names_that_could_inject_are_refused() {
        assert_eq!(name_problem("web-1.example:8080_a"), None);
        for bad in ["", "web 1", "web;quit", "a/b", "web\n", "wéb"] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
