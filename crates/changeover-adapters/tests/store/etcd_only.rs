use super::*;

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
        consul: None,
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
