//! One status read for every unit that asks at about the same time.
//!
//! Every status read dumps the whole of HAProxy's server tables (`show
//! servers state; show stat`): at 500 servers that is a few hundred KB, and
//! 50 units draining and confirming each ask every few tens of
//! milliseconds. Asked one by one, HAProxy's Runtime API falls behind, its
//! listen queue fills and the calls fail. So the reads are shared: at most
//! one is in flight per balancer, and every unit waiting when it finishes
//! takes its answer, provided the read *started after the unit asked*
//! (a read that began before the unit's take-out could show sessions from
//! before the drain). A unit that arrives during a read waits for the next
//! one, which it shares with everyone else who arrived meanwhile.

use super::stat::ServerView;
use super::{HaproxyLb, Member};
use changeover_core::lb::LbError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(super) type Snapshot = Arc<Result<HashMap<Member, ServerView>, LbError>>;

#[derive(Default)]
pub(super) struct SharedReads {
    /// Reads started (= sent to HAProxy) so far; a read's number is this
    /// count once it started.
    started: AtomicU64,
    /// The last read (its number and answer); held while a read runs, so
    /// there is only ever one.
    last: tokio::sync::Mutex<Option<(u64, Snapshot)>>,
}

impl std::fmt::Debug for SharedReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedReads")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl HaproxyLb {
    /// Both status views, from a read that started after this call did.
    pub(super) async fn snapshot(&self) -> Snapshot {
        let reads = &self.reads;
        let asked_after = reads.started.load(Ordering::SeqCst);
        let mut last = reads.last.lock().await;
        if let Some((number, snapshot)) = &*last {
            if *number > asked_after {
                return snapshot.clone();
            }
        }
        let number = reads.started.fetch_add(1, Ordering::SeqCst) + 1;
        let snapshot: Snapshot = Arc::new(self.read_snapshot().await);
        *last = Some((number, snapshot.clone()));
        snapshot
    }

    /// How many status reads were sent to HAProxy.
    pub fn status_reads(&self) -> u64 {
        self.reads.started.load(Ordering::SeqCst)
    }
}
