//! The journal: every balancer change is appended here *before* it is made
//! (invariant 5), so that after a crash `changeover recover` can read what
//! might be half-done and put the balancer back.
//!
//! A deploy starts with `begin` and ends with `end`; between them, every
//! `intent` names the balancer (by its label, recorded in `begin`), the
//! unit, the member, the action and the member's status before changeover
//! touched it, and a `done` follows once the change was applied. A deploy
//! without `end` is *unfinished*: [`fold`] turns its records into what
//! recovery must restore, unit by unit, without needing the config that
//! wrote them.
//!
//! Two journals:
//! - [`FileJournal`] (local store): NDJSON in `<state_dir>/journal.ndjson`,
//!   appended with `O_APPEND` and fsync'd per record; it is also the audit
//!   trail, so records stay after `end`.
//! - [`StoreJournal`] (a shared store such as etcd): one key per record,
//!   `journal/<deploy_id>/<n>`, so `recover` works from any machine; a deploy
//!   that ends cleanly deletes its keys (the history keeps the summary), so
//!   what is left under `journal/` is exactly what may need recovering.

use crate::lb::{LbAction, MemberStatus};
use crate::store::{Expect, Store, StoreError};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub const JOURNAL_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Begin {
        format: u32,
        deploy_id: String,
        app: String,
        version: String,
        target: Option<String>,
        /// Labels of the balancers, by index as used in `intent`.
        balancers: Vec<String>,
        /// The lock the deploy holds (for `recover`), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lock: Option<String>,
        /// `user@host` and pid of the deploying process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    Intent {
        deploy_id: String,
        seq: u64,
        balancer: usize,
        unit: String,
        member: String,
        action: LbAction,
        /// The member's status before changeover took it out (for restore).
        before: Option<MemberStatus>,
    },
    Done {
        deploy_id: String,
        seq: u64,
    },
    End {
        deploy_id: String,
        outcome: String,
    },
}

impl Record {
    pub fn deploy_id(&self) -> &str {
        match self {
            Record::Begin { deploy_id, .. }
            | Record::Intent { deploy_id, .. }
            | Record::Done { deploy_id, .. }
            | Record::End { deploy_id, .. } => deploy_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    #[serde(flatten)]
    pub record: Record,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the journal {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the journal in {0}")]
    Store(#[from] StoreError),
}

/// Somewhere records go. Writing must be durable before `append` returns.
#[async_trait]
pub trait Journal: Send + Sync {
    async fn append(&self, record: Record) -> Result<(), JournalError>;

    /// The records of every deploy without `end`, each in order, oldest
    /// deploy first.
    async fn unfinished(&self) -> Result<Vec<Vec<Stamped>>, JournalError> {
        Ok(Vec::new())
    }

    /// Where it is, for messages.
    fn describe(&self) -> String {
        "the journal".into()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Group records by deploy and keep those with no `end`, oldest first.
pub fn unfinished_of(records: impl IntoIterator<Item = Stamped>) -> Vec<Vec<Stamped>> {
    let mut by: BTreeMap<String, (usize, Vec<Stamped>, bool)> = BTreeMap::new();
    for (i, s) in records.into_iter().enumerate() {
        let e = by
            .entry(s.record.deploy_id().to_string())
            .or_insert((i, Vec::new(), false));
        if matches!(s.record, Record::End { .. }) {
            e.2 = true;
        }
        e.1.push(s);
    }
    let mut open: Vec<(usize, Vec<Stamped>)> = by
        .into_values()
        .filter(|(_, recs, ended)| {
            !ended
                && recs
                    .iter()
                    .any(|r| matches!(r.record, Record::Begin { .. }))
        })
        .map(|(i, recs, _)| (i, recs))
        .collect();
    open.sort_by_key(|(i, _)| *i);
    open.into_iter().map(|(_, r)| r).collect()
}

/// The file journal under `.changeover/`. The file is created at the first
/// append, so reading an empty journal leaves no trace.
pub struct FileJournal {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl FileJournal {
    pub fn new(dir: &Path) -> FileJournal {
        FileJournal {
            path: dir.join("journal.ndjson"),
            file: Mutex::new(None),
        }
    }

    /// Kept for callers that want the file opened at once.
    pub fn open(dir: &Path) -> Result<FileJournal, JournalError> {
        let j = FileJournal::new(dir);
        j.with_file(|_| Ok(()))?;
        Ok(j)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_file(
        &self,
        f: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<(), JournalError> {
        let wrap = |source| JournalError::File {
            path: self.path.clone(),
            source,
        };
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(wrap)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(wrap)?;
            *guard = Some(file);
        }
        f(guard.as_mut().expect("opened above")).map_err(wrap)
    }

    /// Read every record (for `recover` and tests). Unparseable lines (a torn
    /// last write after a crash) are skipped.
    pub fn read(path: &Path) -> std::io::Result<Vec<Stamped>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

#[async_trait]
impl Journal for FileJournal {
    async fn append(&self, record: Record) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(&Stamped {
            at_ms: now_ms(),
            record,
        })
        .expect("records serialize");
        line.push('\n');
        self.with_file(|file| {
            file.write_all(line.as_bytes())?;
            file.sync_data()
        })
    }

    async fn unfinished(&self) -> Result<Vec<Vec<Stamped>>, JournalError> {
        let records = FileJournal::read(&self.path).map_err(|source| JournalError::File {
            path: self.path.clone(),
            source,
        })?;
        Ok(unfinished_of(records))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// The journal in a shared store: `journal/<deploy_id>/<n>`, one record a
/// key, written with compare-and-set on absence (a record is never
/// overwritten).
pub struct StoreJournal {
    store: Arc<dyn Store>,
    next: AtomicU64,
}

impl StoreJournal {
    pub fn new(store: Arc<dyn Store>) -> StoreJournal {
        StoreJournal {
            store,
            // Time-based so that a second writer to the same deploy (recover
            // closing it) sorts after what is there.
            next: AtomicU64::new(now_ms() * 1000),
        }
    }
}

#[async_trait]
impl Journal for StoreJournal {
    async fn append(&self, record: Record) -> Result<(), JournalError> {
        let id = record.deploy_id().to_string();
        let ended = matches!(record, Record::End { .. });
        let value = serde_json::to_value(Stamped {
            at_ms: now_ms(),
            record,
        })
        .expect("records serialize");
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let key = format!("journal/{id}/{n:020}");
            if self
                .store
                .put(&key, &value, Expect::Absent)
                .await?
                .is_some()
            {
                break;
            }
        }
        if ended {
            // Clean end: nothing to recover any more; the history has it.
            for (key, _) in self.store.list(&format!("journal/{id}/")).await? {
                self.store.delete(&key).await?;
            }
        }
        Ok(())
    }

    async fn unfinished(&self) -> Result<Vec<Vec<Stamped>>, JournalError> {
        let mut records: Vec<Stamped> = Vec::new();
        for (key, v) in self.store.list("journal/").await? {
            match serde_json::from_value::<Stamped>(v.value) {
                Ok(s) => records.push(s),
                Err(e) => {
                    return Err(JournalError::Store(StoreError::Corrupt {
                        store: self.store.describe(),
                        key,
                        message: e.to_string(),
                    }))
                }
            }
        }
        // Keys sort by deploy id, then by record number: the order written.
        Ok(unfinished_of(records))
    }

    fn describe(&self) -> String {
        format!("journal/ in {}", self.store.describe())
    }
}

/// Keeps records in memory (benchmarks and unit tests).
#[derive(Default)]
pub struct MemoryJournal {
    pub records: Mutex<Vec<Record>>,
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn append(&self, record: Record) -> Result<(), JournalError> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
        Ok(())
    }

    async fn unfinished(&self) -> Result<Vec<Vec<Stamped>>, JournalError> {
        let records = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(unfinished_of(
            records
                .into_iter()
                .map(|record| Stamped { at_ms: 0, record }),
        ))
    }
}

/// What an unfinished deploy left, as recovery needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unfinished {
    pub deploy_id: String,
    pub app: String,
    pub version: String,
    pub target: Option<String>,
    pub balancers: Vec<String>,
    pub lock: Option<String>,
    pub holder: Option<String>,
    pub pid: Option<u32>,
    pub started_ms: u64,
    /// Per unit name, the members it may have left out.
    pub units: BTreeMap<String, Vec<MemberToRestore>>,
}

/// One balancer member a deploy touched and may not have put back.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberToRestore {
    /// Index into [`Unfinished::balancers`].
    pub balancer: usize,
    pub member: String,
    /// The status to restore (the one before the deploy).
    pub before: Option<MemberStatus>,
    /// The last change asked of it, and whether the journal says it was applied.
    pub last_action: LbAction,
    pub last_done: bool,
}

impl MemberToRestore {
    /// Whether this member may be out of rotation because of the deploy: its
    /// last change was a take-out, or a put-back that may not have happened.
    pub fn may_be_out(&self) -> bool {
        !(self.last_action == LbAction::Enable && self.last_done)
    }
}

/// The pure fold: one unfinished deploy's records → what to restore.
pub fn fold(records: &[Stamped]) -> Option<Unfinished> {
    let mut out: Option<Unfinished> = None;
    // (unit, balancer) → (seq of last intent, member)
    let mut last: BTreeMap<(String, usize), (u64, MemberToRestore)> = BTreeMap::new();
    let mut done: std::collections::BTreeSet<u64> = Default::default();
    for s in records {
        match &s.record {
            Record::Begin {
                deploy_id,
                app,
                version,
                target,
                balancers,
                lock,
                holder,
                pid,
                ..
            } => {
                out = Some(Unfinished {
                    deploy_id: deploy_id.clone(),
                    app: app.clone(),
                    version: version.clone(),
                    target: target.clone(),
                    balancers: balancers.clone(),
                    lock: lock.clone(),
                    holder: holder.clone(),
                    pid: *pid,
                    started_ms: s.at_ms,
                    units: BTreeMap::new(),
                })
            }
            Record::Intent {
                seq,
                balancer,
                unit,
                member,
                action,
                before,
                ..
            } => {
                let entry = last.entry((unit.clone(), *balancer)).or_insert_with(|| {
                    (
                        *seq,
                        MemberToRestore {
                            balancer: *balancer,
                            member: member.clone(),
                            before: before.clone(),
                            last_action: *action,
                            last_done: false,
                        },
                    )
                });
                entry.0 = *seq;
                entry.1.last_action = *action;
                entry.1.last_done = false;
                // Keep the first `before` seen: the status before the deploy.
                if entry.1.before.is_none() {
                    entry.1.before = before.clone();
                }
            }
            Record::Done { seq, .. } => {
                done.insert(*seq);
            }
            Record::End { .. } => return None,
        }
    }
    let mut u = out?;
    for ((unit, _), (seq, mut m)) in last {
        m.last_done = done.contains(&seq);
        u.units.entry(unit).or_default().push(m);
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::{AdminState, OperState};

    fn st(rec: Record) -> Stamped {
        Stamped {
            at_ms: 7,
            record: rec,
        }
    }

    fn before(weight: u32) -> Option<MemberStatus> {
        Some(MemberStatus {
            member: "app/web-1".into(),
            admin: AdminState::Ready,
            oper: OperState::Up,
            weight: Some(weight),
            sessions: Some(0),
            raw: "UP".into(),
        })
    }

    fn begin() -> Record {
        Record::Begin {
            format: 1,
            deploy_id: "d".into(),
            app: "shop".into(),
            version: "v2".into(),
            target: None,
            balancers: vec!["lb0".into(), "lb1".into()],
            lock: Some("deploy".into()),
            holder: None,
            pid: None,
        }
    }

    fn intent(seq: u64, lb: usize, unit: &str, action: LbAction, w: u32) -> Record {
        Record::Intent {
            deploy_id: "d".into(),
            seq,
            balancer: lb,
            unit: unit.into(),
            member: format!("app/{unit}"),
            action,
            before: before(w),
        }
    }

    fn done(seq: u64) -> Record {
        Record::Done {
            deploy_id: "d".into(),
            seq,
        }
    }

    #[test]
    fn a_unit_put_back_and_done_needs_nothing_one_taken_out_does() {
        let recs: Vec<Stamped> = [
            begin(),
            intent(0, 0, "web-1", LbAction::Drain, 37),
            done(0),
            intent(1, 0, "web-1", LbAction::Disable, 37),
            done(1),
            intent(2, 0, "web-1", LbAction::Enable, 37),
            done(2),
            intent(3, 0, "web-2", LbAction::Drain, 5),
            done(3),
            intent(4, 0, "web-3", LbAction::Drain, 5),
            intent(5, 0, "web-4", LbAction::Drain, 5),
            done(5),
            intent(6, 0, "web-4", LbAction::Enable, 5),
        ]
        .into_iter()
        .map(st)
        .collect();
        let u = fold(&recs).unwrap();
        assert_eq!(u.balancers, ["lb0", "lb1"]);
        assert_eq!(u.lock.as_deref(), Some("deploy"));
        let out = |name: &str| u.units[name].iter().any(|m| m.may_be_out());
        assert!(!out("web-1"), "put back and done");
        assert!(out("web-2"), "drained");
        assert!(out("web-3"), "drain asked, maybe applied");
        assert!(out("web-4"), "put-back asked, maybe not applied");
        assert_eq!(u.units["web-2"][0].before.as_ref().unwrap().weight, Some(5));
    }

    #[test]
    fn an_ended_deploy_folds_to_nothing_and_is_not_unfinished() {
        let recs: Vec<Stamped> = [
            begin(),
            intent(0, 0, "web-1", LbAction::Drain, 1),
            Record::End {
                deploy_id: "d".into(),
                outcome: "failed".into(),
            },
        ]
        .into_iter()
        .map(st)
        .collect();
        assert_eq!(fold(&recs), None);
        assert!(unfinished_of(recs).is_empty());
    }

    #[test]
    fn unfinished_groups_by_deploy_in_order() {
        let mut other = begin();
        if let Record::Begin { deploy_id, .. } = &mut other {
            *deploy_id = "e".into();
        }
        let recs: Vec<Stamped> = [
            begin(),
            other,
            Record::End {
                deploy_id: "e".into(),
                outcome: "success".into(),
            },
            intent(0, 1, "web-9", LbAction::Drain, 1),
        ]
        .into_iter()
        .map(st)
        .collect();
        let open = unfinished_of(recs);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].len(), 2);
        let u = fold(&open[0]).unwrap();
        assert_eq!(u.units["web-9"][0].balancer, 1);
    }
}
