//! Deploy locks: the lease, the keepalive task, the guard.

use super::gateway::{number, secs, Failure, Inner};
use async_trait::async_trait;
use changeover_core::store::{lock_key, LockGuard, StoreError};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

impl Inner {
    pub(super) async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        match self
            .call("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))
            .await
        {
            Ok(_) => Ok(()),
            Err(f) if f.is_not_found() => Ok(()),
            Err(f) => Err(self.error(f)),
        }
    }

    /// Renew `lease` once; the TTL etcd gives it now (0: gone).
    async fn keepalive_once(&self, lease: i64, timeout: Duration) -> Result<i64, Failure> {
        let answer = self
            .call_timeout(
                "/v3/lease/keepalive",
                &json!({ "ID": lease.to_string() }),
                Some(timeout),
            )
            .await?;
        Ok(answer.get("TTL").map(number).unwrap_or(0))
    }
}

/// What the keepalive task needs.
pub(super) struct Holding {
    pub(super) inner: Arc<Inner>,
    pub(super) name: String,
    pub(super) lease: i64,
    pub(super) create_revision: i64,
    pub(super) ttl: Duration,
    /// When the lease grant was sent: the lease runs from about then.
    pub(super) granted_at: Instant,
    pub(super) lost: CancellationToken,
    pub(super) stop: CancellationToken,
}

impl Holding {
    pub(super) async fn run(self) {
        use tokio::time::{sleep_until, Instant};
        let every = self.ttl / 3;
        // A renewal sent at `t` vouches for the lock until `t + TTL`: past
        // that the lease may be gone without our knowing.
        let mut vouched_until = Instant::from_std(self.granted_at) + self.ttl;
        let why = loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = sleep_until((Instant::now() + every).min(vouched_until)) => {}
            }
            if Instant::now() >= vouched_until {
                break format!(
                    "lock `{}`: its lease could not be renewed for {} (the TTL): etcd unreachable",
                    self.name,
                    secs(self.ttl)
                );
            }
            let sent = Instant::now();
            let limit = every
                .min(self.inner.timeout)
                .max(Duration::from_millis(200));
            let renewed = tokio::select! {
                _ = self.stop.cancelled() => return,
                // The loop's top says why.
                _ = sleep_until(vouched_until) => continue,
                r = self.inner.keepalive_once(self.lease, limit) => r,
            };
            match renewed {
                Ok(ttl) if ttl > 0 => vouched_until = sent + Duration::from_secs(ttl as u64),
                Ok(_) => break format!("lock `{}`: its lease expired or was revoked", self.name),
                Err(f) if f.is_not_found() => {
                    break format!("lock `{}`: its lease expired or was revoked", self.name)
                }
                // Tried again at the next tick, until the TTL runs out.
                Err(_) => continue,
            }
            // The lease lives; is the key still the one we created?
            let ours = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = tokio::time::timeout(every, self.still_ours()) => r,
            };
            if let Ok(Ok(false)) = ours {
                break format!(
                    "lock `{}` was taken away (its key is gone or someone else's)",
                    self.name
                );
            }
        };
        if !self.stop.is_cancelled() {
            tracing::warn!("{why}");
            self.lost.cancel();
        }
    }

    async fn still_ours(&self) -> Result<bool, StoreError> {
        Ok(match self.inner.range(&lock_key(&self.name)).await? {
            Some(kv) => kv.create_revision == self.create_revision && kv.lease == self.lease,
            None => false,
        })
    }
}

pub(super) struct EtcdGuard {
    pub(super) inner: Arc<Inner>,
    pub(super) name: String,
    pub(super) lease: Option<i64>,
    pub(super) create_revision: i64,
    pub(super) lost: CancellationToken,
    /// Stops the keepalive task when the guard goes, released or not.
    pub(super) stop_keepalive: Option<DropGuard>,
}

#[async_trait]
impl LockGuard for EtcdGuard {
    fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    async fn release(mut self: Box<Self>) -> Result<(), StoreError> {
        drop(self.stop_keepalive.take());
        let key = lock_key(&self.name);
        // Delete the key only if it is still the one we created.
        if let Some(kv) = self.inner.range(&key).await? {
            if kv.create_revision == self.create_revision {
                self.inner.delete_if(&key, kv.mod_revision).await?;
            }
        }
        if let Some(lease) = self.lease {
            self.inner.revoke(lease).await?;
        }
        Ok(())
    }
}
