//! The load balancer seam.
//!
//! Designed for every kind in SPEC.md, not HAProxy alone:
//! - calls take several members at once (the AWS APIs register and deregister
//!   lists; HAProxy simply loops);
//! - a change may be asynchronous (Rackspace answers 202 and stays
//!   PENDING_UPDATE, a change while pending gets 422): `apply` returns only
//!   when the balancer has accepted *and* applied the change, retrying
//!   conflicts inside the adapter;
//! - not every balancer can count sessions: `sessions` is `None` then, and the
//!   engine refuses `drain.mode = "lb"` for it at validation time.

use crate::unit::Unit;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A change the engine asks of a balancer for a set of units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbAction {
    /// Stop sending new connections; let open ones finish
    /// (HAProxy `state drain` or weight 0; AWS deregister; Rackspace DRAINING).
    Drain,
    /// Cut the member off entirely (HAProxy `state maint`; Rackspace DISABLED).
    Disable,
    /// Put the member back into rotation (HAProxy `state ready` or the weight
    /// it had before; AWS register; Rackspace ENABLED).
    Enable,
}

impl fmt::Display for LbAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LbAction::Drain => "drain",
            LbAction::Disable => "disable",
            LbAction::Enable => "enable",
        })
    }
}

/// The administrative state the operator (or changeover) set on a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

/// What the balancer's own checks say about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperState {
    /// Serving (HAProxy "UP", AWS "healthy", Rackspace ONLINE).
    Up,
    /// Not serving according to the balancer's checks.
    Down,
    /// The balancer does not check or does not say.
    Unknown,
}

/// One member as the balancer reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The balancer's name for the member (e.g. `app/web-1`).
    pub member: String,
    pub admin: AdminState,
    pub oper: OperState,
    /// Current weight, where the balancer has weights.
    pub weight: Option<u32>,
    /// Open sessions plus queued requests, where the balancer can count them.
    pub sessions: Option<u64>,
    /// The balancer's raw status word, for messages (e.g. "UP 1/3", "MAINT").
    pub raw: String,
}

impl MemberStatus {
    /// In rotation and serving: what "back in" means. A balancer that does
    /// not check its members (`Unknown`) is taken at its word.
    pub fn is_serving(&self) -> bool {
        self.admin == AdminState::Ready
            && self.oper != OperState::Down
            && self.weight.is_none_or(|w| w > 0)
    }
}

/// What a balancer can do, so the engine can choose a strategy and so
/// validation can reject configs that ask the impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbCapabilities {
    /// `status` returns `sessions` (drain mode "lb" works).
    pub counts_sessions: bool,
    /// `Disable` is distinct from `Drain` (AWS has only deregister).
    pub distinct_disable: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LbError {
    /// The balancer could not be reached at all.
    #[error("cannot reach {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    /// The balancer answered with an error of its own (e.g. HAProxy's "No such server.").
    #[error("{endpoint} refused `{request}`: {answer}")]
    Refused {
        endpoint: String,
        request: String,
        answer: String,
    },
    /// The member a unit maps to does not exist on the balancer.
    #[error("{endpoint} has no member {member}")]
    NoSuchMember { endpoint: String, member: String },
    /// An answer the adapter could not make sense of.
    #[error("{endpoint} gave an unexpected answer to `{request}`: {detail}")]
    Protocol {
        endpoint: String,
        request: String,
        detail: String,
    },
    /// The balancer will not take a change now because it is still
    /// applying another (Rackspace 422 "immutable" while PENDING_UPDATE,
    /// Octavia 409): asked again later, within the change's deadline.
    #[error("{endpoint} is busy applying another change: {detail}")]
    Busy {
        endpoint: String,
        detail: String,
        /// When the balancer said to come back, if it did.
        retry_after: Option<Duration>,
    },
    /// Too many requests (AWS Throttling, Rackspace 413 overLimit): asked
    /// again later, within the change's deadline.
    #[error("{endpoint} is throttling requests: {detail}")]
    Throttled {
        endpoint: String,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// A server-side error the balancer's API says is temporary (HTTP
    /// 500/502/503/504): asked again later, within the change's deadline.
    #[error("{endpoint} answered a temporary error: {detail}")]
    Unavailable {
        endpoint: String,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{0}")]
    Other(String),
}

impl LbError {
    /// Busy, throttled or temporarily unavailable: the same request may
    /// succeed later. (An
    /// unreachable balancer is retried too, but only a few times: it may
    /// be gone for good.)
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LbError::Busy { .. } | LbError::Throttled { .. } | LbError::Unavailable { .. }
        )
    }

    /// How long the balancer asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LbError::Busy { retry_after, .. }
            | LbError::Throttled { retry_after, .. }
            | LbError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The balancer as a whole, where it has such a state (Rackspace's and
/// Octavia's load balancer status; HAProxy and AWS target groups are always
/// `Ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalancerState {
    /// Taking changes (ACTIVE).
    Ready,
    /// Applying a change; takes none until it is done (PENDING_UPDATE).
    Busy(String),
    /// Not usable: ERROR, SUSPENDED, PENDING_DELETE, … (the raw word).
    Broken(String),
}

/// A load balancer in front of (part of) the fleet.
///
/// The adapter maps a unit to its member itself (server name template,
/// instance id, address:port), so the engine only ever talks about units.
#[async_trait]
pub trait LoadBalancer: Send + Sync {
    /// A short label for messages and the journal, e.g. `haproxy /run/haproxy/admin.sock`.
    fn label(&self) -> String;

    fn capabilities(&self) -> LbCapabilities;

    /// The member name a unit maps to (for plan output and messages).
    fn member_name(&self, unit: &Unit) -> String;

    /// The balancer's own state. Preflight refuses to start unless every
    /// balancer is `Ready`.
    async fn balancer_state(&self) -> Result<BalancerState, LbError> {
        Ok(BalancerState::Ready)
    }

    /// Current status of the members behind `units`, in the same order.
    /// A unit whose member does not exist gives `Err(NoSuchMember)` for the
    /// whole call only if the balancer cannot tell otherwise; adapters that
    /// list members return per-unit results.
    async fn status(&self, units: &[&Unit]) -> Vec<Result<MemberStatus, LbError>>;

    /// Make `action` true for every unit in `units`; returns once the
    /// balancer has applied it. `restore` carries, per unit, the status the
    /// member had before changeover took it out (so weight-based balancers put
    /// back the weight it had, not a constant); it is `None` for take-out.
    async fn apply(
        &self,
        units: &[&Unit],
        action: LbAction,
        restore: Option<&[MemberStatus]>,
    ) -> Result<(), LbError>;
}
