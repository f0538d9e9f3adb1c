use super::*;

// ---------------------------------------------------------------------------
// Consul only (against the testkit's FAKE of Consul's HTTP API): the ACL
// token, an agent that stops answering, values it did not write.

fn consul_spec(h: &Harness) -> ConsulStoreSpec {
    h.config.consul_spec().unwrap()
}

#[tokio::test]
async fn consul_wrong_or_missing_token_is_denied_and_not_echoed() {
    let h = Harness::consul();
    let wrong = "not-the-T0ken-77";
    let mut spec = consul_spec(&h);
    let var = format!("{}_WRONG", spec.endpoint.token_env.as_ref().unwrap());
    std::env::set_var(&var, wrong);
    spec.endpoint.token_env = Some(var.clone());
    let err = match ConsulStore::connect(&spec).await {
        Err(e) => e,
        Ok(_) => panic!("a wrong token connected"),
    };
    let text = err.to_string();
    eprintln!("wrong token: {text}");
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    assert!(!text.contains(wrong), "the error shows the token: {text}");
    assert!(!text.contains(CONSUL_TOKEN), "{text}");
    assert!(
        text.contains(&format!("${var}")),
        "names the variable: {text}"
    );

    spec.endpoint.token_env = Some(format!("{var}_UNSET"));
    let err = ConsulStore::connect(&spec).await.expect_err("no token");
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    assert!(err.to_string().contains("which is not set"), "{err}");

    spec.endpoint.token_env = None;
    let err = ConsulStore::connect(&spec).await.expect_err("no token");
    eprintln!("no token: {err}");
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    assert!(err.to_string().contains("set token_env"), "{err}");
}

#[tokio::test]
async fn consul_unreachable_fires_lost_within_the_ttl() {
    let h = Harness::consul();
    let s = h.store().await;
    let g = held(
        s.acquire(&record("deploy", LockKind::Deploy))
            .await
            .unwrap(),
    );
    let lost = g.lost();
    let fake = h.consul.as_ref().unwrap();
    fake.set_outage(true);
    let down = Instant::now();
    tokio::time::timeout(CONSUL_TTL + Duration::from_secs(2), lost.cancelled())
        .await
        .expect("lost() fires once Consul has not answered for the TTL");
    let after = down.elapsed();
    eprintln!("lost() fired {after:?} after Consul stopped answering");
    assert!(
        after >= CONSUL_TTL * 2 / 3 - Duration::from_millis(100),
        "lost() fired before the session could have expired: {after:?}"
    );
    let err = s.get("pointers/p").await.expect_err("Consul is down");
    eprintln!("consul down: {err}");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    drop(g);
    fake.set_outage(false);
    s.put("pointers/p", &json!(1), Expect::Any).await.unwrap();
}

#[tokio::test]
async fn consul_values_it_did_not_write_are_corrupt() {
    let h = Harness::consul();
    let s = h.store().await;
    let fake = h.consul.as_ref().unwrap();
    let client = reqwest::Client::new();
    for (key, value) in [
        ("changeover/conformance/pointers/bad", "not json {"),
        ("changeover/conformance/lock/bad", "{\"name\": 1}"),
        ("changeover/conformancex/pointers/p", "1"),
    ] {
        let r = client
            .put(format!("{}/v1/kv/{key}", fake.address()))
            .header("X-Consul-Token", CONSUL_TOKEN)
            .body(value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
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
    assert!(s.list("units/").await.unwrap().is_empty());
    assert!(
        s.list("").await.is_err(),
        "pointers/bad is listed, and corrupt"
    );
}

#[tokio::test]
async fn consul_lock_sessions_are_as_documented() {
    let h = Harness::consul();
    let s = h.store().await;
    let g = held(
        s.acquire(&record("deploy", LockKind::Deploy))
            .await
            .unwrap(),
    );
    let fake = h.consul.as_ref().unwrap();
    let sessions = fake.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = &sessions[0];
    assert_eq!(session.ttl, Some(CONSUL_TTL));
    assert_eq!(session.behavior, "delete");
    assert_eq!(session.lock_delay, Duration::ZERO);
    let entry = fake.kv("changeover/conformance/lock/deploy").unwrap();
    assert_eq!(entry.session.as_deref(), Some(session.id.as_str()));
    g.release().await.unwrap();
    assert!(
        fake.sessions().is_empty(),
        "released: the session is destroyed"
    );
    assert!(fake.kv("changeover/conformance/lock/deploy").is_none());
    // A manual lock is a key with no session.
    let m = held(
        s.acquire(&record("deploy", LockKind::Manual))
            .await
            .unwrap(),
    );
    assert!(fake.sessions().is_empty());
    assert_eq!(
        fake.kv("changeover/conformance/lock/deploy")
            .unwrap()
            .session,
        None
    );
    m.release().await.unwrap();
    assert!(fake.kv("changeover/conformance/lock/deploy").is_none());
    // No request went without the token.
    assert!(fake.requests().iter().all(|r| r.had_token));
}
