//! Stores: where the lock, version pointers, unit versions and history live.
//!
//! - [`local`]: files under `state_dir` (the default)
//! - [`etcd`]: an etcd v3 cluster, spoken to through its JSON gateway
//! - [`consul`]: Consul's KV store and sessions

pub mod consul;
pub mod etcd;
mod keepalive;
pub mod local;

use changeover_core::plan::StoreSpec;
use changeover_core::store::{Store, StoreError};
use std::sync::Arc;

/// Build the store a plan names. Connecting (and authenticating) happens
/// here for remote stores; the local store touches nothing until written.
pub async fn open(spec: &StoreSpec) -> Result<Arc<dyn Store>, StoreError> {
    match spec {
        StoreSpec::Local { dir } => Ok(Arc::new(local::LocalStore::new(dir))),
        StoreSpec::Etcd(spec) => Ok(Arc::new(etcd::EtcdStore::connect(spec).await?)),
        StoreSpec::Consul(spec) => Ok(Arc::new(consul::ConsulStore::connect(spec).await?)),
    }
}

/// The crash journal that goes with a store: the NDJSON file in `state_dir`
/// for the local store; `journal/<deploy_id>/…` keys in a shared store, so
/// `recover` works from any machine.
pub fn journal(
    spec: &StoreSpec,
    state_dir: &std::path::Path,
    store: &Arc<dyn Store>,
) -> Arc<dyn changeover_core::journal::Journal> {
    match spec {
        StoreSpec::Local { .. } => Arc::new(changeover_core::journal::FileJournal::new(state_dir)),
        _ => Arc::new(changeover_core::journal::StoreJournal::new(Arc::clone(
            store,
        ))),
    }
}
