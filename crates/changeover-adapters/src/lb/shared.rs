//! One status read for every unit that asks at about the same time.
//!
//! A balancer's status is read whole (HAProxy's server tables, a cloud
//! balancer's node list), and many units in flight ask for it every few
//! tens of milliseconds while they drain, are held out and are confirmed.
//! Asked one by one, HAProxy's Runtime API falls behind and a cloud API
//! throttles. So the reads are shared: at most one is in flight per
//! balancer, and every unit waiting when it finishes takes its answer,
//! provided the read *started after the unit asked* (a read that began
//! before a unit's take-out could show it from before the change). A unit
//! that arrives during a read waits for the next one, which it shares with
//! everyone else who arrived meanwhile.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) struct SharedReads<T> {
    /// Reads started (= sent to the balancer) so far; a read's number is
    /// this count once it started.
    started: AtomicU64,
    /// The last read (its number and answer); held while a read runs, so
    /// there is only ever one.
    last: tokio::sync::Mutex<Option<(u64, Arc<T>)>>,
}

impl<T> Default for SharedReads<T> {
    fn default() -> Self {
        SharedReads {
            started: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T> std::fmt::Debug for SharedReads<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedReads")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl<T> SharedReads<T> {
    /// The answer of a read that started after this call did: one already
    /// finished, or `read`, run now. `read` runs with the lock held, so it
    /// may also pace the reads (sleep first).
    pub(crate) async fn read<F, Fut>(&self, read: F) -> Arc<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let asked_after = self.started.load(Ordering::SeqCst);
        let mut last = self.last.lock().await;
        if let Some((number, answer)) = &*last {
            if *number > asked_after {
                return answer.clone();
            }
        }
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = Arc::new(read().await);
        *last = Some((number, answer.clone()));
        answer
    }

    /// How many reads were sent.
    pub(crate) fn count(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }
}
