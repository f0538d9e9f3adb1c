//! The store conformance suite: one set of checks, run against every store
//! the same way — the local store (a temp dir), and a REAL etcd plain, over
//! TLS with client certificates, and with user/password authentication.
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
mod etcd_only;
mod holder;

use changeover_adapters::store::etcd::EtcdStore;
use changeover_adapters::store::local::LocalStore;
use changeover_core::plan::EtcdSpec;
use changeover_core::store::{
    lock_key, Acquired, Expect, LockGuard, LockKind, LockRecord, Store, StoreError,
};
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
}

impl StoreConfig {
    fn etcd_spec(&self) -> Option<EtcdSpec> {
        match self {
            StoreConfig::Local { .. } => None,
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

    /// The password variable this config reads, with its value.
    fn password_var(&self) -> Option<(String, String)> {
        match self {
            StoreConfig::Etcd {
                password_env: Some(var),
                password: Some(pw),
                ..
            } => Some((var.clone(), pw.clone())),
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
        }
    }
}

/// One store under test, and what keeps it alive.
struct Harness {
    config: StoreConfig,
    etcd: Option<Etcd>,
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
            _dir: Some(dir),
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
            _dir: None,
        }
    }

    fn is_etcd(&self) -> bool {
        self.etcd.is_some()
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
