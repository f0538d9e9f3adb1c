//! Deploy locks: the lease, the keepalive task, the guard.

use super::gateway::{number, Failure, Inner};
use crate::store::keepalive::{KeepAlive, Lease, Renewed};
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
    /// Renew the lease until stopped or lost.
    pub(super) async fn run(self) {
        let keep = KeepAlive {
            name: self.name.clone(),
            ttl: self.ttl,
            granted_at: tokio::time::Instant::from_std(self.granted_at),
            what: "lease",
            store: "etcd",
            request_timeout: self.inner.timeout,
            lost: self.lost.clone(),
            stop: self.stop.clone(),
        };
        keep.run(self).await
    }
}

#[async_trait]
impl Lease for Holding {
    async fn renew(&self, limit: Duration) -> Renewed {
        match self.inner.keepalive_once(self.lease, limit).await {
            Ok(ttl) if ttl > 0 => Renewed::For(Duration::from_secs(ttl as u64)),
            Ok(_) => Renewed::Gone,
            Err(f) if f.is_not_found() => Renewed::Gone,
            Err(_) => Renewed::Failed,
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
