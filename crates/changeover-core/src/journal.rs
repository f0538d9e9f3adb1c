//! The journal: every balancer change is appended here *before* it is made
//! (invariant 5), so that after a crash `changeover recover` can read what
//! might be half-done and put the balancer back.
//!
//! Format: NDJSON, one [`Record`] per line, in `<state_dir>/journal.ndjson`,
//! appended with `O_APPEND` and fsync'd per record. A deploy starts with
//! `begin` and ends with `end`; between them, every `intent` names the
//! balancer, the unit, the action and the member's status before changeover
//! touched it, and a `done` follows once the change was applied. Recovery
//! looks at deploys without `end`: for each unit whose last intent was a
//! take-out (drain/disable) it restores `before`.

use crate::lb::{LbAction, MemberStatus};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamped {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    #[serde(flatten)]
    pub record: Record,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the journal {path}: {source}")]
pub struct JournalError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Somewhere records go. Writing must be durable before it returns.
pub trait Journal: Send + Sync {
    fn append(&self, record: Record) -> Result<(), JournalError>;
}

/// The file journal under `.changeover/`.
pub struct FileJournal {
    path: PathBuf,
    file: Mutex<File>,
}

impl FileJournal {
    pub fn open(dir: &Path) -> Result<FileJournal, JournalError> {
        let path = dir.join("journal.ndjson");
        let wrap = |source| JournalError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(wrap)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(wrap)?;
        Ok(FileJournal {
            path,
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read every record (for `recover` and tests). Unparseable lines (a torn
    /// last write after a crash) are skipped.
    pub fn read(path: &Path) -> std::io::Result<Vec<Stamped>> {
        let text = std::fs::read_to_string(path)?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

impl Journal for FileJournal {
    fn append(&self, record: Record) -> Result<(), JournalError> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut line =
            serde_json::to_string(&Stamped { at_ms, record }).expect("records serialize");
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let wrap = |source| JournalError {
            path: self.path.clone(),
            source,
        };
        file.write_all(line.as_bytes()).map_err(wrap)?;
        file.sync_data().map_err(wrap)
    }
}

/// Keeps records in memory (benchmarks and unit tests).
#[derive(Default)]
pub struct MemoryJournal {
    pub records: Mutex<Vec<Record>>,
}

impl Journal for MemoryJournal {
    fn append(&self, record: Record) -> Result<(), JournalError> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
        Ok(())
    }
}
