use super::*;

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
    if h.lease_ttl().is_some() {
        // A live holder process keeps its lease past the TTL.
        tokio::time::sleep(h.past_the_ttl()).await;
        assert_eq!(
            s.lock_status("deploy").await.unwrap().map(|r| r.pid),
            Some(pid),
            "the live holder renewed its lease"
        );
    }
    a.kill9();
    let killed = Instant::now();

    let Some(ttl) = h.lease_ttl() else {
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
    };

    // etcd, Consul: the lease/session outlives the process for what is left of its TTL (at
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
    // ...and free within the TTL (etcd; +2 s: it checks for expired leases
    // twice a second), or twice the TTL (Consul's documented bound).
    let limit = h.frees_within();
    loop {
        if s.lock_status("deploy").await.unwrap().is_none() {
            break;
        }
        assert!(
            killed.elapsed() < limit,
            "a SIGKILLed holder's lock is still held {:?} after the kill (TTL {ttl:?})",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let freed = killed.elapsed();
    eprintln!(
        "{}: killed holder's deploy lock freed {freed:?} after SIGKILL (TTL {ttl:?})",
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
    if let Some(ttl) = h.lease_ttl() {
        // Longer than any lease: a manual lock has none.
        tokio::time::sleep(ttl + Duration::from_secs(1)).await;
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
    let Some(ttl) = h.lease_ttl() else {
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
    };
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
    tokio::time::timeout(ttl + Duration::from_secs(2), lost.cancelled())
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
        mod consul {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::Harness::consul()).await
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
