//! The store conformance suite: one set of checks, run against every store
//! the same way — the local store (a temp dir), a REAL etcd plain, over
//! TLS with client certificates, and with user/password authentication,
//! and Consul. Consul cannot be installed here: its harness is the
//! testkit's in-process FAKE (`changeover_testkit::consul`, written from
//! Consul's HTTP API docs: KV, transactions, sessions with TTL expiry and
//! `Behavior`, ACL tokens), with an ACL token required.
//!
//! "Another process" is this test binary run again
//! (`--exact holder::holder_process --nocapture`) with `CHANGEOVER_STORE_HOLDER`
//! naming the store and the lock: it takes the lock, prints `HELD <pid>` (or
//! `BUSY <record>`), then sleeps until killed or exits, as asked. Without
//! that variable `holder_process` returns at once.
//!
//! etcd missing is a failure with an install hint (`etcd-server`), never a
//! skip.

mod conformance;
mod consul_only;
mod etcd_only;
mod holder;

use changeover_adapters::store::consul::ConsulStore;
use changeover_adapters::store::etcd::EtcdStore;
use changeover_adapters::store::local::LocalStore;
use changeover_core::plan::{ConsulEndpoint, ConsulStoreSpec, EtcdSpec};
use changeover_core::store::{
    lock_key, Acquired, Expect, LockGuard, LockKind, LockRecord, Store, StoreError,
};
use changeover_testkit::consul::ConsulFake;
use changeover_testkit::etcd::Etcd;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holder::{Holder, Then};

/// The etcd deploy locks' TTL in these tests: short, so a killed holder's
/// lock frees quickly, but long enough to tell "at once" from "by lease".
const LOCK_TTL: Duration = Duration::from_secs(2);
/// Consul's session TTLs start at 10 s.
const CONSUL_TTL: Duration = Duration::from_secs(10);
/// The ACL token the Consul harness demands.
const CONSUL_TOKEN: &str = "c0nsul-acl-t0ken-for-conformance";
/// Every wait for a holder process's line.
const HOLDER_DEADLINE: Duration = Duration::from_secs(30);
const HOLDER_ENV: &str = "CHANGEOVER_STORE_HOLDER";

// ---------------------------------------------------------------------------
// The stores under test

/// How to open a store, in a form a holder process can be handed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoreConfig {
    Local {
        dir: PathBuf,
    },
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        username: Option<String>,
        password_env: Option<String>,
        /// Set in the holder's environment under `password_env`.
        password: Option<String>,
        lock_ttl_ms: u64,
    },
    Consul {
        address: String,
        prefix: String,
        token_env: String,
        /// Set in the holder's environment under `token_env`.
        token: String,
        lock_ttl_ms: u64,
    },
}

impl StoreConfig {
    fn consul_spec(&self) -> Option<ConsulStoreSpec> {
        match self {
            StoreConfig::Consul {
                address,
                prefix,
                token_env,
                lock_ttl_ms,
                ..
            } => Some(ConsulStoreSpec {
                endpoint: ConsulEndpoint {
                    address: address.clone(),
                    token_env: Some(token_env.clone()),
                    ca_file: None,
                    datacenter: None,
                    timeout: Duration::from_secs(5),
                },
                prefix: prefix.clone(),
                lock_ttl: Duration::from_millis(*lock_ttl_ms),
            }),
            _ => None,
        }
    }

    fn etcd_spec(&self) -> Option<EtcdSpec> {
        match self {
            StoreConfig::Local { .. } | StoreConfig::Consul { .. } => None,
            StoreConfig::Etcd {
                endpoints,
                prefix,
                ca_file,
                cert_file,
                key_file,
                username,
                password_env,
                lock_ttl_ms,
                ..
            } => Some(EtcdSpec {
                endpoints: endpoints.clone(),
                prefix: prefix.clone(),
                ca_file: ca_file.clone(),
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                username: username.clone(),
                password_env: password_env.clone(),
                lock_ttl: Duration::from_millis(*lock_ttl_ms),
                timeout: Duration::from_secs(5),
            }),
        }
    }

    /// The secret variable this config reads (etcd password, Consul
    /// token), with its value.
    fn password_var(&self) -> Option<(String, String)> {
        match self {
            StoreConfig::Etcd {
                password_env: Some(var),
                password: Some(pw),
                ..
            } => Some((var.clone(), pw.clone())),
            StoreConfig::Consul {
                token_env, token, ..
            } => Some((token_env.clone(), token.clone())),
            _ => None,
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        match self {
            StoreConfig::Local { dir } => Arc::new(LocalStore::new(dir)),
            StoreConfig::Etcd { .. } => {
                let spec = self.etcd_spec().unwrap();
                Arc::new(
                    EtcdStore::connect(&spec)
                        .await
                        .unwrap_or_else(|e| panic!("connect to etcd: {e}")),
                )
            }
            StoreConfig::Consul { .. } => {
                let spec = self.consul_spec().unwrap();
                Arc::new(
                    ConsulStore::connect(&spec)
                        .await
                        .unwrap_or_else(|e| panic!("connect to the Consul fake: {e}")),
                )
            }
        }
    }
}

/// One store under test, and what keeps it alive.
struct Harness {
    config: StoreConfig,
    etcd: Option<Etcd>,
    consul: Option<ConsulFake>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    fn local() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        Harness {
            config: StoreConfig::Local {
                dir: dir.path().join("state"),
            },
            etcd: None,
            consul: None,
            _dir: Some(dir),
        }
    }

    /// The Consul fake with an ACL token required.
    fn consul() -> Harness {
        let consul = ConsulFake::builder().acl_token(CONSUL_TOKEN).start();
        Harness {
            config: StoreConfig::Consul {
                address: consul.address(),
                prefix: "changeover/conformance/".into(),
                token_env: format!("CHANGEOVER_TEST_CONSUL_TOKEN_{}", consul.port()),
                token: CONSUL_TOKEN.into(),
                lock_ttl_ms: CONSUL_TTL.as_millis() as u64,
            },
            etcd: None,
            consul: Some(consul),
            _dir: None,
        }
    }

    fn etcd_plain() -> Harness {
        Harness::etcd(Etcd::builder().start())
    }

    fn etcd_tls() -> Harness {
        Harness::etcd(Etcd::builder().tls().start())
    }

    fn etcd_auth() -> Harness {
        Harness::etcd(Etcd::builder().auth().start())
    }

    fn etcd(etcd: Etcd) -> Harness {
        Harness {
            config: etcd_config(&etcd, &[etcd.endpoint()]),
            etcd: Some(etcd),
            consul: None,
            _dir: None,
        }
    }

    /// The deploy lock's TTL when locks live by lease/session (etcd,
    /// Consul); `None` for the local store (an OS file lock).
    fn lease_ttl(&self) -> Option<Duration> {
        match self.config {
            StoreConfig::Local { .. } => None,
            StoreConfig::Etcd { .. } => Some(LOCK_TTL),
            StoreConfig::Consul { .. } => Some(CONSUL_TTL),
        }
    }

    /// How long after its holder died a deploy lock may still be held:
    /// etcd frees it within the TTL (it checks twice a second); Consul
    /// documents it may wait up to twice the TTL.
    fn frees_within(&self) -> Duration {
        match self.config {
            StoreConfig::Consul { .. } => CONSUL_TTL * 2 + Duration::from_secs(2),
            _ => LOCK_TTL + Duration::from_secs(2),
        }
    }

    /// Long enough that a lock without renewals would have expired: etcd
    /// two TTLs; Consul one TTL and a second (its TTLs are long).
    fn past_the_ttl(&self) -> Duration {
        match self.config {
            StoreConfig::Consul { .. } => CONSUL_TTL + Duration::from_secs(1),
            _ => LOCK_TTL * 2,
        }
    }

    fn etcd_fixture(&mut self) -> &mut Etcd {
        self.etcd.as_mut().expect("an etcd harness")
    }

    async fn store(&self) -> Arc<dyn Store> {
        if let Some((var, pw)) = self.config.password_var() {
            // Each test is a process of its own under nextest; the variable
            // is per etcd (per port) under `cargo test`.
            std::env::set_var(var, pw);
        }
        self.config.open().await
    }

    /// Start a holder process taking lock `name` of `kind`.
    fn holder(&self, name: &str, kind: LockKind, then: Then) -> Holder {
        Holder::start(&self.config, name, kind, then)
    }
}

/// The store config of `etcd` (prefix `/changeover/conformance/`).
fn etcd_config(etcd: &Etcd, endpoints: &[String]) -> StoreConfig {
    let tls = etcd.tls_files();
    let auth = etcd.auth();
    StoreConfig::Etcd {
        endpoints: endpoints.to_vec(),
        prefix: "/changeover/conformance/".into(),
        ca_file: tls.map(|t| t.ca_file.clone()),
        cert_file: tls.map(|t| t.client_cert.clone()),
        key_file: tls.map(|t| t.client_key.clone()),
        username: auth.map(|a| a.username.clone()),
        password_env: auth.map(|_| format!("CHANGEOVER_TEST_ETCD_PASSWORD_{}", etcd.client_port())),
        password: auth.map(|a| a.password.clone()),
        lock_ttl_ms: LOCK_TTL.as_millis() as u64,
    }
}

fn record(name: &str, kind: LockKind) -> LockRecord {
    LockRecord {
        name: name.to_string(),
        holder: "tester@conformance".into(),
        pid: std::process::id(),
        deploy_id: (kind == LockKind::Deploy).then(|| format!("d-{}", std::process::id())),
        target: Some("production".into()),
        version: Some("v2".into()),
        message: Some("conformance".into()),
        acquired_at: "2026-12-02T10:00:00Z".into(),
        kind,
    }
}

fn held(a: Acquired) -> Box<dyn LockGuard> {
    match a {
        Acquired::Held(g) => g,
        Acquired::Busy(r) => panic!("expected to take the lock, it is busy: {}", r.describe()),
    }
}

fn busy(a: Acquired) -> LockRecord {
    match a {
        Acquired::Busy(r) => r,
        Acquired::Held(_) => panic!("expected the lock to be busy, it was taken"),
    }
}
