//! The store conformance suite: one set of checks, run against every store
//! the same way — the local store (a temp dir), and a REAL etcd plain, over
//! TLS with client certificates, and with user/password authentication.
//!
//! "Another process" is this test binary run again
//! (`--exact holder_process --nocapture`) with `CHANGEOVER_STORE_HOLDER`
//! naming the store and the lock: it takes the lock, prints `HELD <pid>` (or
//! `BUSY <record>`), then sleeps until killed or exits, as asked. Without
//! that variable `holder_process` returns at once.
//!
//! etcd missing is a failure with an install hint (`etcd-server`), never a
//! skip.

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

// ---------------------------------------------------------------------------
// The holder process

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Then {
    /// Hold until killed (at most 2 min).
    Sleep,
    /// Exit at once (dropping the guard, not releasing it).
    Exit,
}

#[derive(Serialize, Deserialize)]
struct HolderJob {
    store: StoreConfig,
    lock: String,
    kind: LockKind,
    then: Then,
}

/// Not a check: the body of the holder process (see the top of the file).
#[test]
fn holder_process() {
    let Ok(job) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let job: HolderJob = serde_json::from_str(&job).expect("holder job");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let store = job.store.open().await;
        let outcome = store.acquire(&record(&job.lock, job.kind)).await;
        let guard = match outcome {
            Ok(Acquired::Held(g)) => {
                println!("\nHELD {}", std::process::id());
                g
            }
            Ok(Acquired::Busy(r)) => {
                println!("\nBUSY {}", serde_json::to_string(&r).unwrap());
                return;
            }
            Err(e) => {
                println!("\nERROR {e}");
                std::process::exit(3);
            }
        };
        if job.then == Then::Sleep {
            let lost = guard.lost();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(120)) => {}
                _ = lost.cancelled() => println!("\nLOST"),
            }
        }
        drop(guard);
    });
}

/// A holder process; killed on drop.
struct Holder {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Holder {
    fn start(store: &StoreConfig, lock: &str, kind: LockKind, then: Then) -> Holder {
        let job = HolderJob {
            store: store.clone(),
            lock: lock.to_string(),
            kind,
            then,
        };
        let exe = std::env::current_exe().expect("the test binary");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "holder_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, serde_json::to_string(&job).unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some((var, pw)) = store.password_var() {
            cmd.env(var, pw);
        }
        let mut child = cmd.spawn().expect("start the holder process");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out_tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Whatever the holder says on stderr (a panic) is kept for the
        // failure message.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(format!("stderr: {line}")).is_err() {
                    break;
                }
            }
        });
        Holder { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The holder's first `HELD`/`BUSY`/`ERROR` line.
    fn outcome(&self) -> String {
        let deadline = Instant::now() + HOLDER_DEADLINE;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line)
                    if line.starts_with("HELD ")
                        || line.starts_with("BUSY ")
                        || line.starts_with("ERROR ") =>
                {
                    return line
                }
                Ok(line) => said.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "holder process {} gave no answer within {HOLDER_DEADLINE:?}; it said:\n{}",
                    self.pid(),
                    said.join("\n")
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "holder process {} ended without an answer; it said:\n{}",
                    self.pid(),
                    said.join("\n")
                ),
            }
        }
    }

    fn expect_held(&self) {
        let line = self.outcome();
        assert_eq!(
            line,
            format!("HELD {}", self.pid()),
            "the holder process should hold the lock"
        );
    }

    fn expect_busy(&self) -> LockRecord {
        let line = self.outcome();
        let rec = line.strip_prefix("BUSY ").unwrap_or_else(|| {
            panic!("the holder process should find the lock busy, said {line:?}")
        });
        serde_json::from_str(rec).expect("a lock record")
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn wait_exit(&mut self) {
        let deadline = Instant::now() + HOLDER_DEADLINE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll the holder") {
                assert!(status.success(), "holder exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "holder process {} did not exit within {HOLDER_DEADLINE:?}",
            self.pid()
        );
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// The checks

async fn kv_basics(h: Harness) {
    let s = h.store().await;
    assert_eq!(s.get("pointers/production").await.unwrap(), None);
    assert!(s.list("pointers/").await.unwrap().is_empty());

    let v1 = json!({"current": "v1", "previous": null});
    let r1 = s
        .put("pointers/production", &v1, Expect::Any)
        .await
        .unwrap()
        .expect("written");
    assert!(r1 > 0);
    let got = s.get("pointers/production").await.unwrap().expect("stored");
    assert_eq!((got.value, got.revision), (v1, r1));

    let v2 = json!({"current": "v2", "previous": "v1", "note": "ünïcode ✓"});
    let r2 = s
        .put("pointers/production", &v2, Expect::Any)
        .await
        .unwrap()
        .expect("written");
    assert!(r2 > r1, "a write moves the revision up: {r1} then {r2}");
    let got = s.get("pointers/production").await.unwrap().unwrap();
    assert_eq!((got.value, got.revision), (v2.clone(), r2));

    // Key order, prefixes, and the key characters every store must take.
    for key in [
        "pointers/staging",
        "pointers/canary",
        "units/web-1#2",
        "history/2026-12-02T10:00:00Z@x.1",
        "pointersx/other",
    ] {
        s.put(key, &json!({"key": key}), Expect::Any)
            .await
            .unwrap()
            .unwrap();
    }
    let keys = |l: Vec<(String, changeover_core::store::Versioned)>| {
        l.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(s.list("pointers/").await.unwrap()),
        ["pointers/canary", "pointers/production", "pointers/staging"]
    );
    assert_eq!(
        keys(s.list("pointers/p").await.unwrap()),
        ["pointers/production"]
    );
    assert_eq!(keys(s.list("units/").await.unwrap()), ["units/web-1#2"]);
    assert_eq!(
        keys(s.list("history/").await.unwrap()),
        ["history/2026-12-02T10:00:00Z@x.1"]
    );
    assert!(s.list("journal/").await.unwrap().is_empty());
    let listed = s.list("pointers/").await.unwrap();
    assert_eq!(listed[1].1.value, v2);
    assert_eq!(listed[1].1.revision, r2);
    let unit = s.get("units/web-1#2").await.unwrap().unwrap();
    assert_eq!(unit.value, json!({"key": "units/web-1#2"}));

    assert!(s.delete("pointers/staging").await.unwrap());
    assert!(
        !s.delete("pointers/staging").await.unwrap(),
        "a second delete finds nothing"
    );
    assert_eq!(s.get("pointers/staging").await.unwrap(), None);
    assert_eq!(
        keys(s.list("pointers/").await.unwrap()),
        ["pointers/canary", "pointers/production"]
    );

    // A second handle on the same store sees the same thing.
    let other = h.store().await;
    assert_eq!(
        other
            .get("pointers/production")
            .await
            .unwrap()
            .unwrap()
            .revision,
        r2
    );
}

async fn compare_and_set(h: Harness) {
    let s = h.store().await;
    let key = "pointers/cas";
    let r1 = s
        .put(key, &json!(1), Expect::Absent)
        .await
        .unwrap()
        .expect("absent: written");
    assert_eq!(
        s.put(key, &json!(99), Expect::Absent).await.unwrap(),
        None,
        "exists: refused"
    );
    let r2 = s
        .put(key, &json!(2), Expect::Revision(r1))
        .await
        .unwrap()
        .expect("at r1: written");
    assert!(r2 > r1);
    assert_eq!(
        s.put(key, &json!(99), Expect::Revision(r1)).await.unwrap(),
        None,
        "a stale revision is refused"
    );
    let now = s.get(key).await.unwrap().unwrap();
    assert_eq!(
        (now.value, now.revision),
        (json!(2), r2),
        "a refused write changes nothing"
    );
    assert_eq!(
        s.put("pointers/missing", &json!(1), Expect::Revision(r2))
            .await
            .unwrap(),
        None,
        "a revision on a missing key is refused"
    );
    assert_eq!(s.get("pointers/missing").await.unwrap(), None);

    // Deleted and written again: a new revision, never an old one.
    assert!(s.delete(key).await.unwrap());
    assert_eq!(
        s.put(key, &json!(3), Expect::Revision(r2)).await.unwrap(),
        None
    );
    let r3 = s
        .put(key, &json!(3), Expect::Absent)
        .await
        .unwrap()
        .expect("absent again");
    assert!(r3 > r2, "recreated at {r3}, after {r2}");
    assert_eq!(
        s.put(key, &json!(99), Expect::Revision(r2)).await.unwrap(),
        None
    );
    assert_eq!(
        s.put(key, &json!(99), Expect::Revision(r1)).await.unwrap(),
        None
    );
    assert_eq!(s.get(key).await.unwrap().unwrap().value, json!(3));
}

async fn concurrent_writers(h: Harness) {
    const TASKS: usize = 8;
    const EACH: u64 = 25;
    let key = "units/counter";
    // A store of its own per writer (for etcd: its own connection and
    // login), all connected before any writes, so that they all race.
    let mut stores = Vec::new();
    for _ in 0..TASKS {
        stores.push(h.store().await);
    }
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in stores {
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let (n, expect) = match s.get(key).await.unwrap() {
                        Some(v) => (v.value["n"].as_u64().unwrap(), Expect::Revision(v.revision)),
                        None => (0, Expect::Absent),
                    };
                    if s.put(key, &json!({"n": n + 1}), expect)
                        .await
                        .unwrap()
                        .is_some()
                    {
                        break;
                    }
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(tasks))
        .await
        .expect("8 writers x 25 increments within 2 min");
    let conflicts: u64 = all.into_iter().map(|r| r.expect("writer task")).sum();
    let s = h.store().await;
    let n = s.get(key).await.unwrap().unwrap().value["n"]
        .as_u64()
        .unwrap();
    eprintln!(
        "{}: concurrent writers: {n} increments, {conflicts} refused writes retried, {:?}",
        s.describe(),
        started.elapsed()
    );
    assert_eq!(n, TASKS as u64 * EACH, "every increment counted once");
}

async fn lock_excludes_other_processes(h: Harness) {
    let s = h.store().await;
    let a = h.holder("deploy", LockKind::Deploy, Then::Sleep);
    a.expect_held();

    let rec = busy(
        s.acquire(&record("deploy", LockKind::Deploy))
            .await
            .unwrap(),
    );
    assert_eq!(rec.pid, a.pid(), "the record names the holder process");
    assert_eq!(rec.kind, LockKind::Deploy);
    assert_eq!(rec.holder, "tester@conformance");
    assert_eq!(
        s.lock_status("deploy").await.unwrap().map(|r| r.pid),
        Some(a.pid())
    );
    let manual = busy(
        s.acquire(&record("deploy", LockKind::Manual))
            .await
            .unwrap(),
    );
    assert_eq!(
        manual.pid,
        a.pid(),
        "a manual lock cannot be taken over a deploy lock"
    );

    // A third process is refused too.
    let b = h.holder("deploy", LockKind::Deploy, Then::Sleep);
    assert_eq!(b.expect_busy().pid, a.pid());

    // Another lock name is independent.
    let other = held(s.acquire(&record("other", LockKind::Deploy)).await.unwrap());
    // The same holder asking twice is still busy (the caller decides).
    let again = busy(s.acquire(&record("other", LockKind::Deploy)).await.unwrap());
    assert_eq!(again.pid, std::process::id());
    other.release().await.unwrap();
    assert_eq!(s.lock_status("other").await.unwrap(), None);
    held(s.acquire(&record("other", LockKind::Deploy)).await.unwrap())
        .release()
        .await
        .unwrap();
}

async fn killed_holder_frees_deploy_lock(h: Harness) {
    let s = h.store().await;
    let mut a = h.holder("deploy", LockKind::Deploy, Then::Sleep);
    a.expect_held();
    assert_eq!(
        s.lock_status("deploy").await.unwrap().map(|r| r.pid),
        Some(a.pid())
    );
    let pid = a.pid();
    if h.is_etcd() {
        // A live holder process keeps its lease past the TTL.
        tokio::time::sleep(LOCK_TTL * 2).await;
        assert_eq!(
            s.lock_status("deploy").await.unwrap().map(|r| r.pid),
            Some(pid),
            "the live holder renewed its lease"
        );
    }
    a.kill9();
    let killed = Instant::now();

    if !h.is_etcd() {
        // The kernel drops the file lock with the process.
        assert_eq!(s.lock_status("deploy").await.unwrap(), None, "free at once");
        held(
            s.acquire(&record("deploy", LockKind::Deploy))
                .await
                .unwrap(),
        )
        .release()
        .await
        .unwrap();
        return;
    }

    // etcd: the lease outlives the process for what is left of its TTL (at
    // least 2/3 of it, renewed every TTL/3): not free at once...
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rec = s.lock_status("deploy").await.unwrap();
    assert_eq!(
        rec.map(|r| r.pid),
        Some(pid),
        "right after the kill the lease still holds the lock"
    );
    assert_eq!(
        busy(
            s.acquire(&record("deploy", LockKind::Deploy))
                .await
                .unwrap()
        )
        .pid,
        pid
    );
    // ...and free within the TTL (+2 s: etcd checks for expired leases twice a second).
    let limit = LOCK_TTL + Duration::from_secs(2);
    loop {
        if s.lock_status("deploy").await.unwrap().is_none() {
            break;
        }
        assert!(
            killed.elapsed() < limit,
            "a SIGKILLed holder's lock is still held {:?} after the kill (TTL {LOCK_TTL:?})",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let freed = killed.elapsed();
    eprintln!(
        "{}: killed holder's deploy lock freed {freed:?} after SIGKILL (TTL {LOCK_TTL:?})",
        s.describe()
    );
    assert!(freed >= Duration::from_millis(300));
    held(
        s.acquire(&record("deploy", LockKind::Deploy))
            .await
            .unwrap(),
    )
    .release()
    .await
    .unwrap();
}

async fn manual_lock_outlives_its_process(h: Harness) {
    let s = h.store().await;
    let mut a = h.holder("deploy", LockKind::Manual, Then::Exit);
    a.expect_held();
    let pid = a.pid();
    a.wait_exit();
    if h.is_etcd() {
        // Longer than any lease: a manual lock has none.
        tokio::time::sleep(LOCK_TTL + Duration::from_secs(1)).await;
    }
    let rec = s
        .lock_status("deploy")
        .await
        .unwrap()
        .expect("a manual lock stays");
    assert_eq!((rec.pid, rec.kind), (pid, LockKind::Manual));
    assert_eq!(
        busy(
            s.acquire(&record("deploy", LockKind::Deploy))
                .await
                .unwrap()
        )
        .pid,
        pid
    );
    assert_eq!(
        busy(
            s.acquire(&record("deploy", LockKind::Manual))
                .await
                .unwrap()
        )
        .pid,
        pid
    );
    let b = h.holder("deploy", LockKind::Deploy, Then::Exit);
    assert_eq!(b.expect_busy().pid, pid);

    assert!(
        s.break_lock("deploy").await.unwrap(),
        "break_lock released it"
    );
    assert_eq!(s.lock_status("deploy").await.unwrap(), None);
    assert!(
        !s.break_lock("deploy").await.unwrap(),
        "nothing left to break"
    );

    // Taken here and dropped without release: still there; released: gone.
    let g = held(
        s.acquire(&record("deploy", LockKind::Manual))
            .await
            .unwrap(),
    );
    drop(g);
    assert_eq!(
        s.lock_status("deploy").await.unwrap().map(|r| r.kind),
        Some(LockKind::Manual),
        "dropping a manual lock's guard leaves the lock"
    );
    assert!(s.break_lock("deploy").await.unwrap());
    let g = held(
        s.acquire(&record("deploy", LockKind::Manual))
            .await
            .unwrap(),
    );
    g.release().await.unwrap();
    assert_eq!(s.lock_status("deploy").await.unwrap(), None);
    held(
        s.acquire(&record("deploy", LockKind::Deploy))
            .await
            .unwrap(),
    )
    .release()
    .await
    .unwrap();
}

async fn lock_status_reports_holder(h: Harness) {
    let s = h.store().await;
    assert_eq!(s.lock_status("deploy").await.unwrap(), None);
    for kind in [LockKind::Deploy, LockKind::Manual] {
        let mut rec = record("deploy", kind);
        rec.message = Some("hotfix \"quoted\" ✓".into());
        let g = held(s.acquire(&rec).await.unwrap());
        let other = h.store().await;
        assert_eq!(
            other.lock_status("deploy").await.unwrap().as_ref(),
            Some(&rec)
        );
        // The record is a value like any other under lock/<name>.
        let raw = other
            .get(&lock_key("deploy"))
            .await
            .unwrap()
            .expect("the lock key");
        assert_eq!(
            serde_json::from_value::<LockRecord>(raw.value).unwrap(),
            rec
        );
        assert_eq!(
            busy(other.acquire(&record("deploy", kind)).await.unwrap()),
            rec
        );
        assert!(!g.lost().is_cancelled());
        g.release().await.unwrap();
        assert_eq!(other.lock_status("deploy").await.unwrap(), None);
    }
}

async fn break_lock_of_live_deploy_holder(h: Harness) {
    let s = h.store().await;
    let g = held(
        s.acquire(&record("deploy", LockKind::Deploy))
            .await
            .unwrap(),
    );
    let lost = g.lost();
    let breaker = h.store().await;
    if !h.is_etcd() {
        // The local store knows the holder is alive on this machine, and
        // refuses: stop that process instead.
        match breaker.break_lock("deploy").await {
            Err(StoreError::Denied { message, .. }) => {
                assert!(message.contains("kill"), "{message}")
            }
            other => panic!("expected Denied, got {other:?}"),
        }
        assert!(!lost.is_cancelled());
        g.release().await.unwrap();
        return;
    }
    let broken = Instant::now();
    assert!(breaker.break_lock("deploy").await.unwrap());
    assert_eq!(
        breaker.lock_status("deploy").await.unwrap(),
        None,
        "free at once"
    );
    // Someone else may take it at once...
    let next = held(
        breaker
            .acquire(&record("deploy", LockKind::Deploy))
            .await
            .unwrap(),
    );
    // ...and the old holder learns it lost the lock within the TTL.
    tokio::time::timeout(LOCK_TTL + Duration::from_secs(2), lost.cancelled())
        .await
        .expect("the broken holder's lost() fires within the TTL");
    eprintln!(
        "{}: broken holder's lost() fired {:?} after break_lock",
        s.describe(),
        broken.elapsed()
    );
    // Releasing the old guard does not free the new holder's lock.
    g.release().await.unwrap();
    assert_eq!(
        breaker.lock_status("deploy").await.unwrap().map(|r| r.pid),
        Some(std::process::id())
    );
    assert!(!next.lost().is_cancelled());
    next.release().await.unwrap();
    assert_eq!(breaker.lock_status("deploy").await.unwrap(), None);
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::Harness::local()).await
                }
            )*
        }
        mod etcd_plain {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::Harness::etcd_plain()).await
                }
            )*
        }
        mod etcd_tls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::Harness::etcd_tls()).await
                }
            )*
        }
        mod etcd_auth {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::Harness::etcd_auth()).await
                }
            )*
        }
    };
}

conformance!(
    kv_basics,
    compare_and_set,
    concurrent_writers,
    lock_excludes_other_processes,
    killed_holder_frees_deploy_lock,
    manual_lock_outlives_its_process,
    lock_status_reports_holder,
    break_lock_of_live_deploy_holder,
);

// ---------------------------------------------------------------------------
// etcd only: login, TLS, endpoints, a lost cluster

#[tokio::test]
async fn etcd_wrong_password_is_denied_and_not_echoed() {
    let etcd = Etcd::builder().auth().start();
    let wrong = "not-the-Password-42";
    let var = format!("CHANGEOVER_TEST_WRONG_PASSWORD_{}", etcd.client_port());
    std::env::set_var(&var, wrong);
    let mut spec = etcd_config(&etcd, &[etcd.endpoint()]).etcd_spec().unwrap();
    spec.password_env = Some(var.clone());
    let err = match EtcdStore::connect(&spec).await {
        Err(e) => e,
        Ok(_) => panic!("a wrong password connected"),
    };
    let text = err.to_string();
    eprintln!("wrong password: {text}");
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    assert!(
        !text.contains(wrong),
        "the error shows the password: {text}"
    );
    assert!(!text.contains(&etcd.auth().unwrap().password), "{text}");
    assert!(
        text.contains(&etcd.endpoint()),
        "the error names the endpoint: {text}"
    );
    assert!(text.contains("authentication failed"), "{text}");

    // No such variable: Denied, naming the variable.
    spec.password_env = Some(format!("{var}_UNSET"));
    let err = EtcdStore::connect(&spec).await.expect_err("no password");
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("{var}_UNSET")), "{err}");

    // No login at all on a cluster that wants one: Denied, saying so.
    spec.username = None;
    spec.password_env = None;
    let err = EtcdStore::connect(&spec).await.expect_err("no login");
    eprintln!("no login: {err}");
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    assert!(err.to_string().contains("username"), "{err}");

    // A prefix the user may not touch: Denied.
    let mut spec = etcd_config(&etcd, &[etcd.endpoint()]).etcd_spec().unwrap();
    let (pvar, pw) = etcd_config(&etcd, &[]).password_var().unwrap();
    std::env::set_var(&pvar, &pw);
    spec.prefix = "/elsewhere/".into();
    let err = EtcdStore::connect(&spec)
        .await
        .expect_err("forbidden prefix");
    eprintln!("forbidden prefix: {err}");
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert!(!err.to_string().contains(&pw), "{err}");
}

#[tokio::test]
async fn etcd_expired_token_is_renewed() {
    let etcd = Etcd::builder().auth().auth_token_ttl(1).start();
    let h = Harness {
        config: etcd_config(&etcd, &[etcd.endpoint()]),
        etcd: Some(etcd),
        _dir: None,
    };
    let s = h.store().await;
    s.put("pointers/p", &json!(1), Expect::Any).await.unwrap();
    // Idle past the token's TTL: etcd forgets it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.get("pointers/p").await.unwrap().unwrap().value, json!(1));
    s.put("pointers/p", &json!(2), Expect::Any).await.unwrap();
    assert_eq!(s.get("pointers/p").await.unwrap().unwrap().value, json!(2));
}

#[tokio::test]
async fn etcd_tls_needs_the_client_certificate_and_the_ca() {
    let etcd = Etcd::builder().tls().start();
    let good = etcd_config(&etcd, &[etcd.endpoint()]).etcd_spec().unwrap();
    EtcdStore::connect(&good)
        .await
        .expect("with CA and client certificate");

    let mut no_cert = good.clone();
    no_cert.cert_file = None;
    no_cert.key_file = None;
    let err = EtcdStore::connect(&no_cert)
        .await
        .expect_err("no client certificate");
    eprintln!("no client certificate: {err}");
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    assert!(err.to_string().contains(&etcd.endpoint()), "{err}");
    assert!(err.to_string().contains("client certificate"), "{err}");

    let mut no_ca = good.clone();
    no_ca.ca_file = None;
    let err = EtcdStore::connect(&no_ca)
        .await
        .expect_err("an untrusted server certificate");
    eprintln!("no CA: {err}");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains(&etcd.endpoint()), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn etcd_endpoints_are_tried_in_order() {
    let etcd = Etcd::builder().start();
    // Nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let config = etcd_config(&etcd, &[dead.clone(), etcd.endpoint()]);
    let s = config.open().await;
    s.put("pointers/p", &json!(1), Expect::Any).await.unwrap();
    assert_eq!(s.get("pointers/p").await.unwrap().unwrap().value, json!(1));
    assert!(s.describe().contains(&dead) && s.describe().contains(&etcd.endpoint()));

    let only_dead = etcd_config(&etcd, std::slice::from_ref(&dead))
        .etcd_spec()
        .unwrap();
    let err = EtcdStore::connect(&only_dead)
        .await
        .expect_err("nothing to connect to");
    eprintln!("unreachable: {err}");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains(&dead), "{err}");
}

#[tokio::test]
async fn etcd_lost_cluster_fires_lost_within_the_ttl() {
    let mut h = Harness::etcd_plain();
    let s = h.store().await;
    let g = held(
        s.acquire(&record("deploy", LockKind::Deploy))
            .await
            .unwrap(),
    );
    let lost = g.lost();
    // Renewals keep it past several TTLs.
    tokio::time::sleep(LOCK_TTL * 2).await;
    assert!(!lost.is_cancelled(), "a live holder keeps its lock");
    assert!(s.lock_status("deploy").await.unwrap().is_some());

    h.etcd_fixture().kill();
    let killed = Instant::now();
    tokio::time::timeout(LOCK_TTL + Duration::from_secs(2), lost.cancelled())
        .await
        .expect("lost() fires once etcd has been unreachable for the TTL");
    eprintln!("lost() fired {:?} after etcd was killed", killed.elapsed());
    let err = s.get("pointers/p").await.expect_err("etcd is down");
    eprintln!("etcd down: {err}");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&h.etcd.as_ref().unwrap().endpoint()),
        "{err}"
    );
    drop(g);

    // Back up: the store works again.
    h.etcd_fixture().restart();
    s.put("pointers/p", &json!(1), Expect::Any).await.unwrap();
}

#[tokio::test]
async fn etcd_undecodable_value_is_corrupt() {
    let etcd = Etcd::builder().start();
    let s = etcd_config(&etcd, &[etcd.endpoint()]).open().await;
    etcd.etcdctl(&["put", "/changeover/conformance/pointers/bad", "not json {"]);
    etcd.etcdctl(&["put", "/changeover/conformance/lock/bad", "{\"name\": 1}"]);
    let err = s.get("pointers/bad").await.expect_err("not JSON");
    assert!(
        matches!(err, StoreError::Corrupt { ref key, .. } if key == "pointers/bad"),
        "{err:?}"
    );
    let err = s.lock_status("bad").await.expect_err("not a lock record");
    assert!(
        matches!(err, StoreError::Corrupt { ref key, .. } if key == "lock/bad"),
        "{err:?}"
    );
    // Keys outside the prefix are not ours.
    etcd.etcdctl(&["put", "/changeover/conformancex/pointers/p", "1"]);
    let all = s.list("").await;
    assert!(all.is_err(), "pointers/bad is listed, and corrupt");
    assert!(s.list("units/").await.unwrap().is_empty());
}
