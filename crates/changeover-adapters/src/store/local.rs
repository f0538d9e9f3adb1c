//! The local store: files under `state_dir` (default `.changeover/`).
//!
//! - Every key is one file at `<dir>/<key>` (so `pointers/production` is
//!   `.changeover/pointers/production`), holding `{"revision": N, "value":
//!   …}` as pretty JSON an operator can read.
//! - Writes go to a temp file in the same directory, are fsync'd, renamed
//!   over the old file, and the directory is fsync'd: a crash leaves the old
//!   value or the new one, never half of either.
//! - Compare-and-set is serialised between processes by an OS file lock on
//!   `<dir>/.store.lock`, held only for the read-compare-write. Revisions
//!   come from one store-wide counter (`<dir>/.revision`) so a key deleted
//!   and written again never reuses a revision a reader may still hold.
//! - A deploy lock is an OS file lock on `<dir>/lock/<name>.flock`, held by
//!   the process for the life of the guard: the kernel frees it when the
//!   process dies, kill -9 included. The record beside it (`lock/<name>`)
//!   says who; a record whose flock is free is stale and counts as no lock.
//!   A manual lock is only the record.

use async_trait::async_trait;
use changeover_core::store::{
    lock_key, Acquired, Expect, LockGuard, LockKind, LockRecord, Revision, Store, StoreError,
    Versioned,
};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    revision: Revision,
    value: serde_json::Value,
}

impl LocalStore {
    /// A store rooted at `dir`. Nothing is created until the first write, so
    /// read-only commands leave no trace.
    pub fn new(dir: &Path) -> LocalStore {
        LocalStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Inner {
    fn err(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            store: format!("local store {}", self.dir.display()),
            message: message.to_string(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let mut p = self.dir.clone();
        for seg in key.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(self.err(format!("invalid key `{key}`")));
            }
            p.push(seg);
        }
        Ok(p)
    }

    fn read(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let path = self.path(key)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => return Ok(None),
            Err(e) => return Err(self.err(format!("cannot read {}: {e}", path.display()))),
        };
        let d: OnDisk = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            store: format!("local store {}", self.dir.display()),
            key: key.to_string(),
            message: format!("{}: {e}", path.display()),
        })?;
        Ok(Some(Versioned {
            value: d.value,
            revision: d.revision,
        }))
    }

    /// Hold the store-wide write lock for `f`.
    fn exclusive<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| self.err(format!("cannot create {}: {e}", self.dir.display())))?;
        let path = self.dir.join(".store.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| self.err(format!("cannot open {}: {e}", path.display())))?;
        file.lock()
            .map_err(|e| self.err(format!("cannot lock {}: {e}", path.display())))?;
        let out = f();
        let _ = file.unlock();
        out
    }

    fn next_revision(&self) -> Result<Revision, StoreError> {
        let path = self.dir.join(".revision");
        let last: Revision = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(self.err(format!("cannot read {}: {e}", path.display()))),
        };
        let next = last + 1;
        self.write_atomic(&path, format!("{next}\n").as_bytes())?;
        Ok(next)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| self.err(format!("cannot create {}: {e}", dir.display())))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("value");
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let wrap = |e: std::io::Error| self.err(format!("cannot write {}: {e}", path.display()));
        {
            let mut f = File::create(&tmp).map_err(wrap)?;
            f.write_all(bytes).map_err(wrap)?;
            f.sync_all().map_err(wrap)?;
        }
        std::fs::rename(&tmp, path).map_err(wrap)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(wrap)?;
        Ok(())
    }

    fn put(
        &self,
        key: &str,
        value: &serde_json::Value,
        expect: Expect,
    ) -> Result<Option<Revision>, StoreError> {
        let path = self.path(key)?;
        self.exclusive(|| {
            let now = self.read(key)?;
            let ok = match (expect, &now) {
                (Expect::Any, _) => true,
                (Expect::Absent, None) => true,
                (Expect::Absent, Some(_)) => false,
                (Expect::Revision(r), Some(v)) => v.revision == r,
                (Expect::Revision(_), None) => false,
            };
            if !ok {
                return Ok(None);
            }
            let revision = self.next_revision()?;
            let body = serde_json::to_vec_pretty(&OnDisk {
                revision,
                value: value.clone(),
            })
            .map_err(|e| self.err(e))?;
            self.write_atomic(&path, &body)?;
            Ok(Some(revision))
        })
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        self.exclusive(|| match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err(format!("cannot remove {}: {e}", path.display()))),
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        // `history/` → the directory `<dir>/history`, every file in it.
        let (dir_part, name_prefix) = match prefix.rfind('/') {
            Some(i) => (&prefix[..i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let dir = if dir_part.is_empty() {
            self.dir.clone()
        } else {
            self.path(dir_part)?
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(format!("cannot list {}: {e}", dir.display()))),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.err(e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') || name.ends_with(".flock") || !name.starts_with(name_prefix) {
                continue;
            }
            if !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                continue;
            }
            let key = if dir_part.is_empty() {
                name
            } else {
                format!("{dir_part}/{name}")
            };
            if let Some(v) = self.read(&key)? {
                out.push((key, v));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn flock_file(&self, name: &str) -> Result<File, StoreError> {
        let path = self.path(&format!("lock/{name}.flock"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| self.err(format!("cannot create {}: {e}", dir.display())))?;
        }
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| self.err(format!("cannot open {}: {e}", path.display())))
    }

    /// `Some(file)` holding the flock when no live process holds it.
    fn try_flock(&self, name: &str) -> Result<Option<File>, StoreError> {
        let file = self.flock_file(name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(self.err(format!("cannot lock {name}: {e}"))),
        }
    }

    fn record(&self, name: &str) -> Result<Option<(LockRecord, Revision)>, StoreError> {
        let Some(v) = self.read(&lock_key(name))? else {
            return Ok(None);
        };
        let rec: LockRecord = serde_json::from_value(v.value).map_err(|e| StoreError::Corrupt {
            store: format!("local store {}", self.dir.display()),
            key: lock_key(name),
            message: e.to_string(),
        })?;
        Ok(Some((rec, v.revision)))
    }

    /// A live holder's record. The flock is taken before the record is
    /// written, so a reader may catch the moment between: wait for it.
    fn live_record(&self, name: &str) -> Result<LockRecord, StoreError> {
        for _ in 0..50 {
            if let Some((rec, _)) = self.record(name)? {
                if rec.kind == LockKind::Deploy {
                    return Ok(rec);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(LockRecord {
            name: name.to_string(),
            holder: "an unknown process".into(),
            pid: 0,
            deploy_id: None,
            target: None,
            version: None,
            message: None,
            acquired_at: "?".into(),
            kind: LockKind::Deploy,
        })
    }

    fn acquire(self: &Arc<Self>, record: &LockRecord) -> Result<Acquired, StoreError> {
        let name = &record.name;
        let Some(flock) = self.try_flock(name)? else {
            return Ok(Acquired::Busy(self.live_record(name)?));
        };
        let value = serde_json::to_value(record).map_err(|e| self.err(e))?;
        let expect = match self.record(name)? {
            Some((rec, _)) if rec.kind == LockKind::Manual => return Ok(Acquired::Busy(rec)),
            // A deploy record whose holder died: stale, ours to overwrite.
            Some((_, rev)) => Expect::Revision(rev),
            None => Expect::Absent,
        };
        if self.put(&lock_key(name), &value, expect)?.is_none() {
            // Someone took a manual lock between our read and write.
            return match self.record(name)? {
                Some((rec, _)) => Ok(Acquired::Busy(rec)),
                None => Err(self.err(format!("lock {name} changed while taking it; retry"))),
            };
        }
        let lock = match record.kind {
            // A manual lock is the record alone: the flock goes with this call.
            LockKind::Manual => None,
            LockKind::Deploy => Some(flock),
        };
        Ok(Acquired::Held(Box::new(LocalGuard {
            inner: Arc::clone(self),
            record: record.clone(),
            flock: lock,
            lost: CancellationToken::new(),
        })))
    }

    /// Whether a live process holds the flock of lock `name`. Creates
    /// nothing: a lock file that does not exist was never held (read-only
    /// commands leave no trace).
    fn holder_alive(&self, name: &str) -> Result<bool, StoreError> {
        let path = self.path(&format!("lock/{name}.flock"))?;
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.err(format!("cannot open {}: {e}", path.display()))),
        };
        match file.try_lock() {
            Ok(()) => Ok(false),
            Err(TryLockError::WouldBlock) => Ok(true),
            Err(TryLockError::Error(e)) => Err(self.err(format!("cannot lock {name}: {e}"))),
        }
    }

    fn lock_status(&self, name: &str) -> Result<Option<LockRecord>, StoreError> {
        let Some((rec, _)) = self.record(name)? else {
            return match self.holder_alive(name)? {
                false => Ok(None),
                true => Ok(Some(self.live_record(name)?)),
            };
        };
        if rec.kind == LockKind::Manual {
            return Ok(Some(rec));
        }
        match self.holder_alive(name)? {
            false => Ok(None),
            true => Ok(Some(rec)),
        }
    }

    fn break_lock(&self, name: &str) -> Result<bool, StoreError> {
        match self.record(name)? {
            Some((rec, _)) if rec.kind == LockKind::Deploy => {
                if self.try_flock(name)?.is_none() {
                    return Err(StoreError::Denied {
                        store: format!("local store {}", self.dir.display()),
                        message: format!(
                            "{}; that process is running on this machine: stop it (Ctrl-C, or kill {}) instead",
                            rec.describe(),
                            rec.pid
                        ),
                    });
                }
                // Stale: clear the record.
                self.delete(&lock_key(name))?;
                Ok(false)
            }
            Some(_) => self.delete(&lock_key(name)),
            None => Ok(false),
        }
    }
}

struct LocalGuard {
    inner: Arc<Inner>,
    record: LockRecord,
    /// The OS file lock (deploy locks); released when dropped.
    flock: Option<File>,
    lost: CancellationToken,
}

#[async_trait]
impl LockGuard for LocalGuard {
    fn lost(&self) -> CancellationToken {
        // The kernel keeps a file lock as long as the process lives: it
        // cannot be lost.
        self.lost.clone()
    }

    async fn release(mut self: Box<Self>) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let record = self.record.clone();
        let flock = self.flock.take();
        blocking(move || {
            // Remove the record only if it is still ours.
            if let Some((rec, rev)) = inner.record(&record.name)? {
                if rec == record {
                    let key = lock_key(&record.name);
                    let path = inner.path(&key)?;
                    inner.exclusive(|| match inner.read(&key)? {
                        Some(v) if v.revision == rev => std::fs::remove_file(&path).map_err(|e| {
                            inner.err(format!("cannot remove {}: {e}", path.display()))
                        }),
                        _ => Ok(()),
                    })?;
                }
            }
            drop(flock);
            Ok(())
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Unavailable {
            store: "local store".into(),
            message: format!("store task failed: {e}"),
        })
    })
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local store {}", self.inner.dir.display())
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let key = key.to_string();
        blocking(move || inner.read(&key)).await
    }

    async fn put(
        &self,
        key: &str,
        value: &serde_json::Value,
        expect: Expect,
    ) -> Result<Option<Revision>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let (key, value) = (key.to_string(), value.clone());
        blocking(move || inner.put(&key, &value, expect)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.to_string();
        blocking(move || inner.list(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let inner = Arc::clone(&self.inner);
        let key = key.to_string();
        blocking(move || inner.delete(&key)).await
    }

    async fn acquire(&self, record: &LockRecord) -> Result<Acquired, StoreError> {
        let inner = Arc::clone(&self.inner);
        let record = record.clone();
        blocking(move || inner.acquire(&record)).await
    }

    async fn lock_status(&self, name: &str) -> Result<Option<LockRecord>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let name = name.to_string();
        blocking(move || inner.lock_status(&name)).await
    }

    async fn break_lock(&self, name: &str) -> Result<bool, StoreError> {
        let inner = Arc::clone(&self.inner);
        let name = name.to_string();
        blocking(move || inner.break_lock(&name)).await
    }
}
