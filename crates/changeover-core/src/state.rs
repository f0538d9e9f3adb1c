//! What changeover remembers, written once on top of the [`Store`] seam:
//! version pointers, each unit's version, the history. The rules of SPEC.md
//! "Version pointers" are the pure functions here ([`Pointer::after_deploy`],
//! [`Pointer::after_rollback`]); the I/O helpers only read, compare-and-set
//! and retry.

use crate::store::{Expect, Revision, Store, StoreError, Versioned};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// A version pointer: `{current, previous}`, who moved it, when, in which
/// deploy, and the deploy rolling out right now, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub previous: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_id: Option<String>,
    /// Set while a deploy of this pointer's units runs (hosts that pull
    /// their version themselves can read what is rolling out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<InProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InProgress {
    pub deploy_id: String,
    pub target: Option<String>,
    pub version: String,
    pub started_at: String,
    pub holder: String,
}

/// Who moved a pointer, for the record.
#[derive(Debug, Clone)]
pub struct Mover {
    pub holder: String,
    pub deploy_id: String,
}

impl Pointer {
    /// After a deploy of `version` that ended with every selected unit on
    /// it: `previous := current` (unless it already was `version`),
    /// `current := version`. `None`: the pointer does not move (partial, or
    /// the deploy did not succeed).
    pub fn after_deploy(
        &self,
        version: &str,
        succeeded: bool,
        partial: bool,
        by: &Mover,
    ) -> Option<Pointer> {
        if !succeeded || partial {
            return None;
        }
        let mut p = self.clone();
        if p.current.as_deref() != Some(version) {
            p.previous = p.current.take();
            p.current = Some(version.to_string());
        }
        p.stamp(by);
        Some(p)
    }

    /// After a rollback to `previous` succeeded: the two swap.
    pub fn after_rollback(&self, succeeded: bool, by: &Mover) -> Option<Pointer> {
        if !succeeded {
            return None;
        }
        let mut p = self.clone();
        std::mem::swap(&mut p.current, &mut p.previous);
        p.stamp(by);
        Some(p)
    }

    fn stamp(&mut self, by: &Mover) {
        self.moved_by = Some(by.holder.clone());
        self.moved_at = Some(now_rfc3339());
        self.deploy_id = Some(by.deploy_id.clone());
    }
}

/// The version a unit runs, recorded the moment it was confirmed back in
/// rotation on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitVersion {
    pub version: String,
    pub deploy_id: String,
    pub at: String,
}

/// Counts of how the units of a run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub updated: usize,
    /// Already on the version and serving: not touched.
    pub current: usize,
    pub failed: usize,
    pub reverted: usize,
    pub skipped: usize,
    pub untouched: usize,
}

/// One run in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub deploy_id: String,
    pub target: Option<String>,
    /// `deploy`, `rollback` or `unify`.
    pub command: String,
    pub version: String,
    /// The git ref the operator typed, when `[version] git` resolved it to
    /// `version` (a sha).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_ref: Option<String>,
    /// The pointer's current before the run.
    pub previous: Option<String>,
    pub pointer: String,
    pub partial: bool,
    pub message: Option<String>,
    pub holder: String,
    pub started_at: String,
    pub duration_ms: u64,
    /// `success`, `failed`, `interrupted`, `no_go`.
    pub outcome: String,
    pub counts: Counts,
    /// Set on a failed deploy that `on_failure = "rollback"` followed with a
    /// unify: that run's id and outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_outcome: Option<String>,
    /// For a unify run after a failure: the deploy it rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
}

pub fn pointer_key(name: &str) -> String {
    format!("pointers/{name}")
}
pub fn unit_key(unit: &str) -> String {
    format!("units/{unit}")
}
pub fn history_key(deploy_id: &str) -> String {
    format!("history/{deploy_id}")
}

fn decode<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &str,
    v: Versioned,
) -> Result<T, StoreError> {
    serde_json::from_value(v.value).map_err(|e| StoreError::Corrupt {
        store: store.describe(),
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("state records serialize")
}

/// The pointer and the revision it was read at (`None`: never written).
pub async fn read_pointer(
    store: &dyn Store,
    name: &str,
) -> Result<(Pointer, Option<Revision>), StoreError> {
    let key = pointer_key(name);
    match store.get(&key).await? {
        None => Ok((Pointer::default(), None)),
        Some(v) => {
            let rev = v.revision;
            Ok((decode(store, &key, v)?, Some(rev)))
        }
    }
}

/// Read-modify-write a pointer with compare-and-set, retrying when another
/// writer got there first. `change` returns `None` to leave it as it is.
pub async fn update_pointer(
    store: &dyn Store,
    name: &str,
    mut change: impl FnMut(&Pointer) -> Option<Pointer>,
) -> Result<Option<Pointer>, StoreError> {
    let key = pointer_key(name);
    for _ in 0..100 {
        let (now, rev) = read_pointer(store, name).await?;
        let Some(next) = change(&now) else {
            return Ok(None);
        };
        let expect = rev.map_or(Expect::Absent, Expect::Revision);
        if store.put(&key, &encode(&next), expect).await?.is_some() {
            return Ok(Some(next));
        }
    }
    Err(StoreError::Unavailable {
        store: store.describe(),
        message: format!("pointer {name} kept changing under us (100 attempts); try again"),
    })
}

pub async fn record_unit(
    store: &dyn Store,
    unit: &str,
    version: &UnitVersion,
) -> Result<(), StoreError> {
    store
        .put(&unit_key(unit), &encode(version), Expect::Any)
        .await
        .map(|_| ())
}

/// Every recorded unit version, by unit name.
pub async fn unit_versions(store: &dyn Store) -> Result<BTreeMap<String, UnitVersion>, StoreError> {
    let mut out = BTreeMap::new();
    for (key, v) in store.list("units/").await? {
        let name = key.trim_start_matches("units/").to_string();
        out.insert(name, decode(store, &key, v)?);
    }
    Ok(out)
}

pub async fn write_history(store: &dyn Store, entry: &HistoryEntry) -> Result<(), StoreError> {
    store
        .put(&history_key(&entry.deploy_id), &encode(entry), Expect::Any)
        .await
        .map(|_| ())
}

pub async fn read_history(
    store: &dyn Store,
    deploy_id: &str,
) -> Result<Option<HistoryEntry>, StoreError> {
    let key = history_key(deploy_id);
    match store.get(&key).await? {
        None => Ok(None),
        Some(v) => decode(store, &key, v).map(Some),
    }
}

/// The history, newest first.
pub async fn history(store: &dyn Store) -> Result<Vec<HistoryEntry>, StoreError> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (key, v) in store.list("history/").await? {
        out.push(decode(store, &key, v)?);
    }
    out.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| b.deploy_id.cmp(&a.deploy_id))
    });
    Ok(out)
}

/// `user@hostname` of this process.
pub fn holder() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// A deploy id that sorts by start time: `20261202T003455.123Z-<pid>`.
pub fn new_deploy_id() -> String {
    let (secs, millis) = now_parts();
    let t = civil(secs);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{millis:03}Z-{}",
        t.0,
        t.1,
        t.2,
        t.3,
        t.4,
        t.5,
        std::process::id()
    )
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let (secs, millis) = now_parts();
    rfc3339(secs, millis)
}

pub fn rfc3339(secs: u64, millis: u32) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{millis:03}Z")
}

fn now_parts() -> (u64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_millis())
}

/// Unix seconds to (year, month, day, hour, minute, second), UTC
/// (Howard Hinnant's days-to-civil).
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by() -> Mover {
        Mover {
            holder: "alice@laptop".into(),
            deploy_id: "d1".into(),
        }
    }

    fn at(current: Option<&str>, previous: Option<&str>) -> Pointer {
        Pointer {
            current: current.map(str::to_string),
            previous: previous.map(str::to_string),
            ..Pointer::default()
        }
    }

    #[test]
    fn a_deploy_moves_current_to_previous() {
        let p = at(Some("v1"), None)
            .after_deploy("v2", true, false, &by())
            .unwrap();
        assert_eq!(
            (p.current.as_deref(), p.previous.as_deref()),
            (Some("v2"), Some("v1"))
        );
        assert_eq!(p.deploy_id.as_deref(), Some("d1"));
        assert_eq!(p.moved_by.as_deref(), Some("alice@laptop"));
    }

    #[test]
    fn the_first_deploy_has_no_previous() {
        let p = Pointer::default()
            .after_deploy("v1", true, false, &by())
            .unwrap();
        assert_eq!((p.current.as_deref(), p.previous), (Some("v1"), None));
    }

    #[test]
    fn the_same_version_again_keeps_previous() {
        let p = at(Some("v2"), Some("v1"))
            .after_deploy("v2", true, false, &by())
            .unwrap();
        assert_eq!(
            (p.current.as_deref(), p.previous.as_deref()),
            (Some("v2"), Some("v1"))
        );
    }

    #[test]
    fn partial_and_failed_deploys_move_nothing() {
        let p = at(Some("v1"), None);
        assert_eq!(p.after_deploy("v2", true, true, &by()), None, "partial");
        assert_eq!(p.after_deploy("v2", false, false, &by()), None, "failed");
        assert_eq!(p.after_rollback(false, &by()), None, "failed rollback");
    }

    #[test]
    fn a_rollback_swaps() {
        let p = at(Some("v2"), Some("v1"))
            .after_rollback(true, &by())
            .unwrap();
        assert_eq!(
            (p.current.as_deref(), p.previous.as_deref()),
            (Some("v1"), Some("v2"))
        );
    }

    #[test]
    fn civil_time() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_913_695, 0), "2026-11-29T00:54:55.000Z");
    }
}
