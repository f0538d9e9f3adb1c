//! The fake's whole state behind one lock, and the one Raft-like index.
//!
//! Every write takes the next index (as one Raft apply does) and then wakes
//! every blocking query through a `watch` channel; each query recomputes its
//! own index (see the module doc of `super` for which) and either answers or
//! waits again.

use super::{CheckStatus, KvEntry, LoggedRequest, ServiceInstance, AGENT_NODE};
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, Notify};

/// The first index the fake hands out (the agent's own node registration).
pub(crate) const FIRST_INDEX: u64 = 10;

pub(crate) struct Config {
    pub acl_token: Option<String>,
    pub datacenter: String,
    pub ttl_factor: f64,
}

/// What the server thread and the [`super::ConsulFake`] handle share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// The latest index; every blocking query holds a receiver.
    changes: watch::Sender<u64>,
    /// Wakes the TTL reaper when a session is created, renewed or destroyed.
    pub sessions_changed: Notify,
    pub config: Config,
}

impl Shared {
    pub fn new(config: Config) -> Shared {
        let state = State::new();
        let (changes, _) = watch::channel(state.index);
        Shared {
            state: Mutex::new(state),
            changes,
            sessions_changed: Notify::new(),
            config,
        }
    }

    /// The state, for reading or for changes that are no write (the log,
    /// the outage switch, a renew): nobody is woken.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write: if the index moved, every blocking query is woken once the
    /// lock is released.
    pub fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.lock();
        let before = state.index;
        let out = f(&mut state);
        let after = state.index;
        drop(state);
        if after != before {
            self.changes.send_replace(after);
        }
        out
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub name: String,
    pub id: String,
    pub address: String,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Service {
    pub instance: ServiceInstance,
    pub create_index: u64,
    pub modify_index: u64,
    pub check_create_index: u64,
    pub check_modify_index: u64,
}

impl Service {
    /// The service check's ID, as an agent names the check of a service.
    pub fn check_id(&self) -> String {
        format!("service:{}", self.instance.id)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub lock_delay: Duration,
    pub behavior: String,
    /// As given (Consul answers it back as given), "" for none.
    pub ttl: String,
    pub ttl_duration: Option<Duration>,
    pub node_checks: Vec<String>,
    pub service_checks: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
    /// TTL x ttl_factor after creation or the last renew.
    pub expires_at: Option<Instant>,
}

impl Session {
    pub fn check_ids(&self) -> impl Iterator<Item = &String> {
        self.node_checks.iter().chain(self.service_checks.iter())
    }
}

pub(crate) struct State {
    /// The Raft-like index: the index of the last write.
    pub index: u64,
    pub kv: BTreeMap<String, KvEntry>,
    /// Deleted key -> index of its deletion, so that a prefix listing's
    /// index does not go backwards when its newest key is deleted.
    pub tombstones: BTreeMap<String, u64>,
    /// Index of the last write that changed the KV table.
    pub kv_index: u64,
    /// Key -> until when `?acquire` is refused (lock delay).
    pub lock_delays: HashMap<String, Instant>,
    pub sessions: BTreeMap<String, Session>,
    pub sessions_index: u64,
    pub nodes: BTreeMap<String, Node>,
    /// By service ID (IDs are unique across nodes in the fake).
    pub services: BTreeMap<String, Service>,
    /// Service name -> index of the last change to any of its instances.
    pub service_index: HashMap<String, u64>,
    /// Index of the last change to the catalog (nodes, services, checks).
    pub catalog_index: u64,
    pub log: Vec<LoggedRequest>,
    pub outage: bool,
    id_counter: u64,
}

impl State {
    fn new() -> State {
        let mut state = State {
            index: FIRST_INDEX - 1,
            kv: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            kv_index: 0,
            lock_delays: HashMap::new(),
            sessions: BTreeMap::new(),
            sessions_index: 0,
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            service_index: HashMap::new(),
            catalog_index: 0,
            log: Vec::new(),
            outage: false,
            id_counter: 0,
        };
        // The agent the clients talk to is a node of its own, with its
        // serfHealth check: the default node of a session.
        let idx = state.next_index();
        state.nodes.insert(
            AGENT_NODE.to_string(),
            Node {
                name: AGENT_NODE.to_string(),
                id: node_id(AGENT_NODE),
                address: "127.0.0.1".to_string(),
                meta: BTreeMap::new(),
                create_index: idx,
                modify_index: idx,
            },
        );
        state.catalog_index = idx;
        state
    }

    /// The index of a new write (one Raft apply).
    pub fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// A fresh random UUID-formatted ID, as hashicorp/go-uuid makes them.
    pub fn new_uuid(&mut self) -> String {
        self.id_counter += 1;
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut words = [0u64; 2];
        for (i, word) in words.iter_mut().enumerate() {
            *word = RandomState::new().hash_one((self.id_counter, time, i));
        }
        uuid_format(words[0], words[1])
    }

    /// The status of check `check_id` on `node`, if registered.
    pub fn check_status(&self, node: &str, check_id: &str) -> Option<CheckStatus> {
        if !self.nodes.contains_key(node) {
            return None;
        }
        if check_id == "serfHealth" {
            return Some(CheckStatus::Passing);
        }
        self.services
            .values()
            .find(|s| s.instance.node == node && s.check_id() == check_id)
            .map(|s| s.instance.status)
    }

    /// The index a query on service `name` answers with: its last change,
    /// or the catalog's for a service never seen.
    pub fn service_query_index(&self, name: &str) -> u64 {
        self.service_index
            .get(name)
            .copied()
            .unwrap_or(self.catalog_index)
    }
}

/// A node's ID: stable for a node name (agents keep theirs across restarts).
pub(crate) fn node_id(name: &str) -> String {
    let mut a = DefaultHasher::new();
    (name, 1u8).hash(&mut a);
    let mut b = DefaultHasher::new();
    (name, 2u8).hash(&mut b);
    uuid_format(a.finish(), b.finish())
}

fn uuid_format(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// The 8-4-4-4-12 hex form that Consul's session index insists on.
pub(crate) fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}
