//! Keeping a deploy lock alive in a store whose locks live by a TTL (an
//! etcd lease, a Consul session): renew every TTL/3, check the key is still
//! ours, and fire `lost` when the store says the lease is gone, the key was
//! taken away, or no renewal got through for a whole TTL (past that the
//! lease may have expired without our knowing).

use async_trait::async_trait;
use changeover_core::store::StoreError;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// What one renewal found.
pub(crate) enum Renewed {
    /// Alive; the store vouches for it this long from when it was sent.
    For(Duration),
    /// The store no longer knows it (expired, revoked, destroyed).
    Gone,
    /// No answer: tried again at the next tick, until the TTL runs out.
    Failed,
}

/// A store's lease (or session) behind one lock.
#[async_trait]
pub(crate) trait Lease: Send + Sync + 'static {
    /// Renew once, within `limit`.
    async fn renew(&self, limit: Duration) -> Renewed;
    /// Whether the lock's key is still the one this lease holds.
    async fn still_ours(&self) -> Result<bool, StoreError>;
}

pub(crate) struct KeepAlive {
    /// The lock's name, for the message.
    pub name: String,
    pub ttl: Duration,
    /// When the lease was granted (it runs from about then).
    pub granted_at: Instant,
    /// `lease` (etcd) or `session` (Consul), and the store's name.
    pub what: &'static str,
    pub store: &'static str,
    /// Per-request bound of a renewal.
    pub request_timeout: Duration,
    pub lost: CancellationToken,
    pub stop: CancellationToken,
}

impl KeepAlive {
    pub(crate) async fn run(self, lease: impl Lease) {
        let every = self.ttl / 3;
        let mut vouched_until = self.granted_at + self.ttl;
        let why = loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = sleep_until((Instant::now() + every).min(vouched_until)) => {}
            }
            if Instant::now() >= vouched_until {
                break format!(
                    "lock `{}`: its {} could not be renewed for {}s (the TTL): {} unreachable",
                    self.name,
                    self.what,
                    self.ttl.as_secs(),
                    self.store
                );
            }
            let sent = Instant::now();
            let limit = every
                .min(self.request_timeout)
                .max(Duration::from_millis(200));
            let renewed = tokio::select! {
                _ = self.stop.cancelled() => return,
                // The loop's top says why.
                _ = sleep_until(vouched_until) => continue,
                r = lease.renew(limit) => r,
            };
            match renewed {
                Renewed::For(ttl) => vouched_until = sent + ttl,
                Renewed::Gone => {
                    break format!(
                        "lock `{}`: its {} expired or was revoked",
                        self.name, self.what
                    )
                }
                Renewed::Failed => continue,
            }
            // The lease lives; is the key still the one it holds?
            let ours = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = tokio::time::timeout(every, lease.still_ours()) => r,
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
}
