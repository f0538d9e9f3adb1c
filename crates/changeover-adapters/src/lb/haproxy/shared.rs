//! HAProxy's status reads, shared (see [`crate::lb::shared`]): every status
//! read dumps the whole of HAProxy's server tables (`show servers state;
//! show stat`), a few hundred KB at 500 servers.

use super::stat::ServerView;
use super::{HaproxyLb, Member};
use changeover_core::lb::LbError;
use std::collections::HashMap;
use std::sync::Arc;

pub(super) type Snapshot = Arc<Result<HashMap<Member, ServerView>, LbError>>;
pub(super) type Reads =
    crate::lb::shared::SharedReads<Result<HashMap<Member, ServerView>, LbError>>;

impl HaproxyLb {
    /// Both status views, from a read that started after this call did.
    pub(super) async fn snapshot(&self) -> Snapshot {
        self.reads.read(|| self.read_snapshot()).await
    }

    /// How many status reads were sent to HAProxy.
    pub fn status_reads(&self) -> u64 {
        self.reads.count()
    }
}
