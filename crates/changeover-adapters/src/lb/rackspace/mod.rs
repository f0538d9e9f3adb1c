//! Rackspace Cloud Load Balancers v1.0: a unit is a node of one load
//! balancer, taken out the way the pkgcloud script does it: condition
//! DRAINING (no new connections, open ones go on), then DISABLED once the
//! drain is over, deploy, then ENABLED (with the weight it had).
//!
//! The balancer takes one change at a time: every change is answered 202
//! and the balancer is `PENDING_UPDATE` until it is applied, answering 422
//! to any other change meanwhile. So changes to one balancer are made one
//! after another (a lock per balancer), each only once a read shows the
//! balancer ACTIVE, and each followed until a read shows it applied and
//! the balancer ACTIVE again, within `settle_timeout` (a balancer that
//! never settles fails the unit, which halts the deploy). A 422 all the
//! same (another client's change) is `Busy`, a 413 with Retry-After is
//! `Throttled`, 5xx is `Unavailable`: the engine asks again with backoff.
//!
//! Reads (`GET /loadbalancers/{id}`, which lists the nodes) are shared by
//! every unit asking at about the same time (`lb::shared`) and spaced at
//! least `poll_interval` apart, so units in flight cost one read per
//! interval, not one each. The balancer counts no sessions per node:
//! drain by `[drain] mode = "fixed"`, `"host"` or `"command"`.

mod api;

pub use api::Credentials;
use api::{Answer, Api, LbView, Node, Session};
use async_trait::async_trait;
use changeover_core::lb::{
    AdminState, BalancerState, LbAction, LbCapabilities, LbError, LoadBalancer, MemberStatus,
    OperState,
};
use changeover_core::template::{Template, Vars};
use changeover_core::unit::Unit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What one balancer is and how it is reached.
#[derive(Debug, Clone)]
pub struct RackspaceOptions {
    pub load_balancer_id: u64,
    pub region: String,
    pub identity_url: String,
    pub credentials: Credentials,
    pub member: Template,
    pub poll_interval: Duration,
    pub settle_timeout: Duration,
}

/// API calls made so far (for tests and the bench).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub sign_ins: u64,
    pub reads: u64,
    pub changes: u64,
}

pub struct RackspaceLb {
    opts: RackspaceOptions,
    api: Api,
    session: tokio::sync::Mutex<Option<Session>>,
    /// One change at a time to this balancer.
    changing: tokio::sync::Mutex<()>,
    reads: crate::lb::shared::SharedReads<Result<LbView, LbError>>,
    /// When the next read may start.
    next_read: Mutex<Instant>,
    sign_ins: AtomicU64,
    changes: AtomicU64,
}

impl std::fmt::Debug for RackspaceLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RackspaceLb")
            .field("label", &self.api.label)
            .finish_non_exhaustive()
    }
}

fn condition(action: LbAction) -> &'static str {
    match action {
        LbAction::Drain => "DRAINING",
        LbAction::Disable => "DISABLED",
        LbAction::Enable => "ENABLED",
    }
}

/// Still applying a change: wait. (BUILD is the older docs' word for a
/// balancer being created.)
fn settling(status: &str) -> bool {
    status.starts_with("PENDING_") || status == "BUILD"
}

impl RackspaceLb {
    /// Touches nothing: the first call signs in.
    pub fn new(opts: RackspaceOptions) -> RackspaceLb {
        let label = format!(
            "rackspace load balancer {} ({})",
            opts.load_balancer_id, opts.region
        );
        RackspaceLb {
            api: Api::new(
                opts.identity_url.clone(),
                opts.region.clone(),
                opts.credentials.clone(),
                label,
            ),
            opts,
            session: tokio::sync::Mutex::new(None),
            changing: tokio::sync::Mutex::new(()),
            reads: Default::default(),
            next_read: Mutex::new(Instant::now()),
            sign_ins: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        }
    }

    pub fn calls(&self) -> Calls {
        Calls {
            sign_ins: self.sign_ins.load(Ordering::SeqCst),
            reads: self.reads.count(),
            changes: self.changes.load(Ordering::SeqCst),
        }
    }

    async fn session(&self) -> Result<Session, LbError> {
        let mut held = self.session.lock().await;
        if let Some(s) = &*held {
            return Ok(s.clone());
        }
        self.sign_ins.fetch_add(1, Ordering::SeqCst);
        let s = self.api.sign_in().await?;
        *held = Some(s.clone());
        Ok(s)
    }

    /// The token was refused (expired): sign in again on the next call.
    async fn forget(&self, stale: &Session) {
        let mut held = self.session.lock().await;
        if held.as_ref().is_some_and(|s| s.same(stale)) {
            *held = None;
        }
    }

    fn fail(&self, a: Answer) -> LbError {
        match a {
            Answer::Failed(e) => e,
            Answer::Http(h) if h.status == 404 && h.request.starts_with("GET") => {
                LbError::Refused {
                    endpoint: h.endpoint,
                    request: h.request,
                    answer: format!(
                        "404: no load balancer {}: check load_balancer_id and region",
                        self.opts.load_balancer_id
                    ),
                }
            }
            Answer::Http(h) => self
                .api
                .error_for(h.status, h.retry_after, &h.body, &h.request),
        }
    }

    /// One `GET /loadbalancers/{id}`, signing in again once on a 401.
    async fn read_lb(&self) -> Result<LbView, LbError> {
        let mut again = true;
        loop {
            let s = self.session().await?;
            match self.api.get_lb(&s, self.opts.load_balancer_id).await {
                Ok(v) => return Ok(v),
                Err(Answer::Http(h)) if h.status == 401 && again => {
                    again = false;
                    self.forget(&s).await;
                }
                Err(a) => return Err(self.fail(a)),
            }
        }
    }

    /// The balancer from a read that started after this call, shared with
    /// every other caller, reads at least `poll_interval` apart.
    async fn view(&self) -> Arc<Result<LbView, LbError>> {
        self.reads
            .read(|| async {
                let at = *self.next_read.lock().unwrap();
                tokio::time::sleep_until(at).await;
                *self.next_read.lock().unwrap() = Instant::now() + self.opts.poll_interval;
                self.read_lb().await
            })
            .await
    }

    /// The balancer once a read shows it ACTIVE.
    async fn until_active(&self, deadline: Instant) -> Result<LbView, LbError> {
        loop {
            let v = self.view().await;
            match &*v {
                Ok(view) if view.status == "ACTIVE" => return Ok(view.clone()),
                Ok(view) if settling(&view.status) => {
                    if Instant::now() >= deadline {
                        return Err(LbError::Other(format!(
                            "{} stayed {} for longer than settle_timeout ({}): it does not settle; look at it in the control panel",
                            self.api.label,
                            view.status,
                            humantime(self.opts.settle_timeout)
                        )));
                    }
                }
                Ok(view) => {
                    return Err(LbError::Other(format!(
                        "{} is {} (expected ACTIVE): it takes no changes",
                        self.api.label, view.status
                    )))
                }
                Err(e) if e.is_transient() && Instant::now() < deadline => {}
                Err(e) => return Err(e.clone()),
            }
        }
    }

    /// The node a unit maps to: by address, and port when the member has one.
    fn node_for<'v>(&self, view: &'v LbView, unit: &Unit) -> Result<&'v Node, LbError> {
        let member = self.member_name(unit);
        let (address, port) = split_member(&member);
        let found: Vec<&Node> = view
            .nodes
            .iter()
            .filter(|n| n.address == address && port.is_none_or(|p| n.port == p))
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(LbError::NoSuchMember {
                endpoint: self.api.label.clone(),
                member,
            }),
            many => Err(LbError::Refused {
                endpoint: self.api.label.clone(),
                request: format!("find node {member}"),
                answer: format!(
                    "{} nodes have address {address} (ports {}): set member = \"{{address}}:{{port}}\"",
                    many.len(),
                    many.iter()
                        .map(|n| n.port.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// One `PUT …/nodes/{node}`, signing in again once on a 401.
    async fn put(&self, node: u64, body: &serde_json::Value) -> Result<(), LbError> {
        let mut again = true;
        loop {
            let s = self.session().await?;
            self.changes.fetch_add(1, Ordering::SeqCst);
            match self
                .api
                .put_node(&s, self.opts.load_balancer_id, node, body)
                .await
            {
                Ok(()) => return Ok(()),
                Err(Answer::Http(h)) if h.status == 401 && again => {
                    again = false;
                    self.forget(&s).await;
                }
                Err(a) => return Err(self.fail(a)),
            }
        }
    }

    /// Make one unit's node `target`, and follow the change until applied.
    async fn change(&self, unit: &Unit, target: &str, weight: Option<u32>) -> Result<(), LbError> {
        let deadline = Instant::now() + self.opts.settle_timeout;
        let view = self.until_active(deadline).await?;
        let node = self.node_for(&view, unit)?;
        let weight = weight.filter(|w| node.weight.is_some_and(|now| now != *w));
        if node.condition == target && weight.is_none() {
            return Ok(());
        }
        let mut change = serde_json::json!({ "condition": target });
        if let Some(w) = weight {
            change["weight"] = w.into();
        }
        self.put(node.id, &serde_json::json!({ "node": change }))
            .await?;
        loop {
            let view = self.until_active(deadline).await?;
            let node = self.node_for(&view, unit)?;
            if node.condition == target {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LbError::Other(format!(
                    "{}: node {} was accepted as {target} but is still {} after settle_timeout ({})",
                    self.api.label,
                    node.id,
                    node.condition,
                    humantime(self.opts.settle_timeout)
                )));
            }
        }
    }
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `10.0.0.1`, `10.0.0.1:8080`, `[::1]:8080` → (address, port).
fn split_member(member: &str) -> (&str, Option<u16>) {
    if let Some(rest) = member.strip_prefix('[') {
        if let Some((a, p)) = rest.split_once("]:") {
            return (a, p.parse().ok());
        }
        return (rest.trim_end_matches(']'), None);
    }
    match member.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') => match p.parse() {
            Ok(port) => (a, Some(port)),
            Err(_) => (member, None),
        },
        _ => (member, None),
    }
}

fn member_status(member: String, node: &Node) -> MemberStatus {
    let admin = match node.condition.as_str() {
        "ENABLED" => AdminState::Ready,
        "DRAINING" => AdminState::Drain,
        _ => AdminState::Maint,
    };
    let oper = match node.status.as_deref() {
        Some("ONLINE") => OperState::Up,
        Some("OFFLINE") => OperState::Down,
        _ => OperState::Unknown,
    };
    MemberStatus {
        member,
        admin,
        oper,
        weight: node.weight,
        sessions: None,
        raw: match &node.status {
            Some(s) => format!("{} {s}", node.condition),
            None => node.condition.clone(),
        },
    }
}

#[async_trait]
impl LoadBalancer for RackspaceLb {
    fn label(&self) -> String {
        self.api.label.clone()
    }

    fn capabilities(&self) -> LbCapabilities {
        LbCapabilities {
            counts_sessions: false,
            distinct_disable: true,
        }
    }

    fn member_name(&self, unit: &Unit) -> String {
        self.opts.member.render(&Vars::for_unit(unit, "", "", ""))
    }

    async fn balancer_state(&self) -> Result<BalancerState, LbError> {
        match &*self.view().await {
            Ok(v) if v.status == "ACTIVE" => Ok(BalancerState::Ready),
            Ok(v) if settling(&v.status) => Ok(BalancerState::Busy(v.status.clone())),
            Ok(v) => Ok(BalancerState::Broken(v.status.clone())),
            Err(e) => Err(e.clone()),
        }
    }

    async fn status(&self, units: &[&Unit]) -> Vec<Result<MemberStatus, LbError>> {
        let v = self.view().await;
        units
            .iter()
            .map(|u| match &*v {
                Ok(view) => self
                    .node_for(view, u)
                    .map(|n| member_status(self.member_name(u), n)),
                Err(e) => Err(e.clone()),
            })
            .collect()
    }

    async fn apply(
        &self,
        units: &[&Unit],
        action: LbAction,
        restore: Option<&[MemberStatus]>,
    ) -> Result<(), LbError> {
        let _one_at_a_time = self.changing.lock().await;
        for (i, unit) in units.iter().enumerate() {
            let weight = match action {
                LbAction::Enable => restore.and_then(|r| r.get(i)).and_then(|m| m.weight),
                _ => None,
            };
            self.change(unit, condition(action), weight).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::split_member;

    #[test]
    fn members_split_into_address_and_port() {
        assert_eq!(split_member("10.0.0.1"), ("10.0.0.1", None));
        assert_eq!(split_member("10.0.0.1:8080"), ("10.0.0.1", Some(8080)));
        assert_eq!(split_member("[fd00::1]:80"), ("fd00::1", Some(80)));
        assert_eq!(split_member("fd00::1"), ("fd00::1", None));
        assert_eq!(split_member("web-1:http"), ("web-1:http", None));
    }
}
