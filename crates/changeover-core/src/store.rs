//! The store seam: where the deploy lock, the version pointers, each unit's
//! version, the history and (later) the shared journal live.
//!
//! Every store (local files, etcd, Consul) offers the same two things, and
//! nothing more, so that one conformance suite can hold them to the same
//! contract:
//!
//! - a small **key-value space** under the store's prefix, with a revision
//!   per key and compare-and-set ([`Store::get`], [`Store::put`],
//!   [`Store::list`], [`Store::delete`]); values are JSON documents;
//! - **named locks** ([`Store::acquire`]): a *deploy* lock lives exactly as
//!   long as its holder (the local store holds an OS file lock, which the
//!   kernel frees on kill -9; etcd and Consul tie the key to a lease/session
//!   with a TTL the holder keeps alive), a *manual* lock (`changeover lock
//!   acquire`) stays until `changeover lock release`.
//!
//! The typed records (pointers, units, history) and their rules are in
//! [`crate::state`], written once on top of this seam.
//!
//! Key layout under the prefix (the same for every store; docs/design.md):
//! `lock/<name>`, `pointers/<pointer>`, `units/<unit>`,
//! `history/<deploy_id>`, `journal/<deploy_id>`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A key's revision: changes on every write. `0` never names a stored value.
pub type Revision = u64;

/// A value with the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub value: serde_json::Value,
    pub revision: Revision,
}

/// What a compare-and-set expects of the key before it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// Only if the key does not exist.
    Absent,
    /// Only if the key is still at this revision.
    Revision(Revision),
}

/// Why a store call failed. `Display` reads after "failed to …".
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered nonsense; retrying later
    /// may work.
    #[error("{store}: {message}")]
    Unavailable { store: String, message: String },
    /// The store refused us (authentication, permission): retrying won't help.
    #[error("{store}: {message}")]
    Denied { store: String, message: String },
    /// A stored value is not what this version of changeover wrote.
    #[error("{store}: key {key} holds something unexpected: {message}")]
    Corrupt {
        store: String,
        key: String,
        message: String,
    },
}

/// Who holds a lock, and for what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub name: String,
    /// `user@hostname`.
    pub holder: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339, UTC.
    pub acquired_at: String,
    /// `deploy`: lives as long as the holding process; `manual`: until
    /// released by hand.
    pub kind: LockKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    Deploy,
    Manual,
}

impl LockRecord {
    /// "held by alice@laptop since 2026-12-02T10:00:00Z for deploy 17… of
    /// production (v2): \"message\"" — for the exit-4 message.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "lock `{}` is held by {} (pid {}) since {}",
            self.name, self.holder, self.pid, self.acquired_at
        );
        match (&self.deploy_id, &self.target, &self.version) {
            (Some(id), target, version) => {
                s.push_str(&format!(" for deploy {id}"));
                if let Some(t) = target {
                    s.push_str(&format!(" of target {t}"));
                }
                if let Some(v) = version {
                    s.push_str(&format!(" ({v})"));
                }
            }
            (None, _, _) if self.kind == LockKind::Manual => {
                s.push_str(" (taken with `changeover lock acquire`)")
            }
            _ => {}
        }
        if let Some(m) = &self.message {
            s.push_str(&format!(": \"{m}\""));
        }
        s
    }
}

/// The answer to [`Store::acquire`].
pub enum Acquired {
    /// Ours now; hold the guard for as long as the lock must be held.
    Held(Box<dyn LockGuard>),
    /// Someone else holds it.
    Busy(LockRecord),
}

/// A held lock. Dropping the guard without [`LockGuard::release`] frees a
/// deploy lock as soon as the store notices (local: at once; etcd/Consul:
/// when the lease/session runs out); a manual lock stays.
#[async_trait]
pub trait LockGuard: Send + Sync {
    /// Cancelled when the store can no longer vouch for the lock (lease
    /// expired, store unreachable past the TTL): the deploy must halt as on
    /// a failure.
    fn lost(&self) -> CancellationToken;
    /// Give the lock up (a manual lock is deleted from the store).
    async fn release(self: Box<Self>) -> Result<(), StoreError>;
}

#[async_trait]
pub trait Store: Send + Sync {
    /// For messages: `local .changeover/`, `etcd https://10.0.0.5:2379 /changeover/shop/`.
    fn describe(&self) -> String;

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Write `value` if `expect` holds; `Ok(None)` when it did not (someone
    /// else wrote first), `Ok(Some(revision))` with the new revision.
    async fn put(
        &self,
        key: &str,
        value: &serde_json::Value,
        expect: Expect,
    ) -> Result<Option<Revision>, StoreError>;

    /// Every key under `prefix` (e.g. `history/`), in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// Remove a key; `true` when it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Take lock `record.name` (its key is `lock/<name>`) for `record.kind`.
    /// A deploy lock whose holder died is free (the store's own mechanism
    /// says so); a manual lock is busy until released. A lock held by the
    /// same `holder` as `record` is still busy: the caller decides.
    async fn acquire(&self, record: &LockRecord) -> Result<Acquired, StoreError>;

    /// Who holds lock `name`, if anyone (a dead deploy holder is no one).
    async fn lock_status(&self, name: &str) -> Result<Option<LockRecord>, StoreError>;

    /// Take lock `name` away from whoever holds it (`lock release --force`);
    /// `true` when something was released. A live deploy holder notices
    /// (its `lost()` fires) when its store can tell it.
    async fn break_lock(&self, name: &str) -> Result<bool, StoreError>;
}

/// The key of lock `name`.
pub fn lock_key(name: &str) -> String {
    format!("lock/{name}")
}

/// Whether a key segment (lock, pointer, unit or deploy id) is safe to use
/// in every store: a file name, an etcd key and a Consul KV path alike.
pub fn valid_key_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '#' | '@' | ':'))
}
