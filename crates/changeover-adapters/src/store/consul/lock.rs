//! Locks in Consul: sessions for deploy locks, plain keys for manual ones,
//! the renew task, the guard.

use super::{Inner, Txn};
use crate::consul::path_escape;
use crate::store::keepalive::{KeepAlive, Lease, Renewed};
use async_trait::async_trait;
use changeover_core::store::{lock_key, Acquired, LockGuard, LockKind, LockRecord, StoreError};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Tries when the lock changes between the transaction and the read.
const LOCK_ATTEMPTS: usize = 5;

pub(super) async fn acquire(
    inner: &Arc<Inner>,
    record: &LockRecord,
) -> Result<Acquired, StoreError> {
    let key = lock_key(&record.name);
    let value = serde_json::to_vec(record).expect("a lock record serialises");
    for _ in 0..LOCK_ATTEMPTS {
        let session = match record.kind {
            LockKind::Manual => None,
            LockKind::Deploy => Some(session_create(inner, &record.name).await?),
        };
        let ops = match &session {
            Some(id) => {
                let mut lock = inner.op_value("lock", &key, &value);
                lock["KV"]["Session"] = json!(id);
                // `lock` alone would succeed on an existing, unlocked key
                // (a manual lock): check it is absent in the same step.
                vec![inner.op("check-not-exists", &key), lock]
            }
            None => {
                // Manual: a plain key, created only where there is none.
                let mut create = inner.op_value("cas", &key, &value);
                create["KV"]["Index"] = json!(0);
                vec![create]
            }
        };
        let outcome = match inner.txn(ops).await {
            Ok(o) => o,
            Err(e) => {
                if let Some(id) = &session {
                    let _ = inner.session_destroy(id).await;
                }
                return Err(e);
            }
        };
        match outcome {
            Txn::Done(results) => {
                let index = inner.index_of(&key, &results, results.len().saturating_sub(1))?;
                let lost = CancellationToken::new();
                let stop = CancellationToken::new();
                if let Some(id) = &session {
                    tokio::spawn(
                        Renewing {
                            inner: Arc::clone(inner),
                            name: record.name.clone(),
                            session: id.clone(),
                            ttl: inner.lock_ttl,
                            lost: lost.clone(),
                            stop: stop.clone(),
                        }
                        .run(),
                    );
                }
                return Ok(Acquired::Held(Box::new(ConsulGuard {
                    inner: Arc::clone(inner),
                    name: record.name.clone(),
                    session,
                    index,
                    lost,
                    _stop_renewing: stop.drop_guard(),
                })));
            }
            Txn::RolledBack => {
                if let Some(id) = &session {
                    inner.session_destroy(id).await?;
                }
                if let Some(r) = status(inner, &record.name).await? {
                    return Ok(Acquired::Busy(r));
                }
                // Freed between the transaction and the read: try again.
            }
        }
    }
    Err(StoreError::Unavailable {
        store: inner.describe(),
        message: format!(
            "lock `{}` kept changing while taking it; retry",
            record.name
        ),
    })
}

pub(super) async fn status(inner: &Inner, name: &str) -> Result<Option<LockRecord>, StoreError> {
    let key = lock_key(name);
    let Some(entry) = inner.get(&key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&entry.value)
        .map(Some)
        .map_err(|e| inner.corrupt(&key, format!("not a lock record: {e}")))
}

pub(super) async fn break_lock(inner: &Inner, name: &str) -> Result<bool, StoreError> {
    let key = lock_key(name);
    for _ in 0..LOCK_ATTEMPTS {
        let Some(entry) = inner.get(&key).await? else {
            return Ok(false);
        };
        if inner.delete_if(&key, entry.modify_index).await? {
            // The holder's next renewal finds no session: its lost() fires.
            if let Some(id) = &entry.session {
                inner.session_destroy(id).await?;
            }
            return Ok(true);
        }
    }
    Err(StoreError::Unavailable {
        store: inner.describe(),
        message: format!("lock `{name}` kept changing while breaking it; retry"),
    })
}

async fn session_create(inner: &Inner, name: &str) -> Result<String, StoreError> {
    let body = json!({
        "Name": format!("changeover lock {name}"),
        "TTL": format!("{}s", inner.lock_ttl.as_secs().max(10)),
        // Gone with its holder: the key is deleted, not merely unlocked.
        "Behavior": "delete",
        // Consul's default 15 s lock delay would keep a killed holder's
        // lock from being taken again long after its session ran out.
        "LockDelay": "0s",
        // Tied to its TTL only, not to the health of whichever agent
        // answered (the operator's laptop is no Consul node).
        "NodeChecks": [],
    });
    let answer = inner
        .client
        .put(
            "/v1/session/create",
            &[],
            serde_json::to_vec(&body).expect("JSON serialises"),
        )
        .await
        .map_err(|e| inner.err(e))?;
    if answer.status != 200 {
        return Err(inner.err(inner.client.unexpected(&answer)));
    }
    let doc: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    doc["ID"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| StoreError::Unavailable {
            store: inner.describe(),
            message: "/v1/session/create answered without a session ID".into(),
        })
}

/// A deploy lock's session, renewed by [`KeepAlive`].
struct Renewing {
    inner: Arc<Inner>,
    name: String,
    session: String,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
}

impl Renewing {
    async fn run(self) {
        let keep = KeepAlive {
            name: self.name.clone(),
            ttl: self.ttl,
            granted_at: Instant::now(),
            what: "session",
            store: "Consul",
            request_timeout: self.ttl,
            lost: self.lost.clone(),
            stop: self.stop.clone(),
        };
        keep.run(self).await
    }
}

#[async_trait]
impl Lease for Renewing {
    async fn renew(&self, limit: Duration) -> Renewed {
        let renew = format!("/v1/session/renew/{}", path_escape(&self.session));
        match tokio::time::timeout(limit, self.inner.client.put(&renew, &[], Vec::new())).await {
            Ok(Ok(a)) if a.status == 200 => Renewed::For(self.ttl),
            Ok(Ok(a)) if a.status == 404 => Renewed::Gone,
            _ => Renewed::Failed,
        }
    }

    async fn still_ours(&self) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .get(&lock_key(&self.name))
            .await?
            .is_some_and(|e| e.session.as_deref() == Some(self.session.as_str())))
    }
}

struct ConsulGuard {
    inner: Arc<Inner>,
    name: String,
    session: Option<String>,
    /// The lock key's ModifyIndex when we took it.
    index: u64,
    lost: CancellationToken,
    _stop_renewing: DropGuard,
}

#[async_trait]
impl LockGuard for ConsulGuard {
    fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        let key = lock_key(&self.name);
        match &self.session {
            // Destroying the session deletes the key (Behavior = delete).
            Some(id) => self.inner.session_destroy(id).await,
            None => {
                self.inner.delete_if(&key, self.index).await?;
                Ok(())
            }
        }
    }
}
