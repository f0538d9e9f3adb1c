//! Sessions: validation, TTL expiry and behaviors, lock delay, renew.

use super::*;

// -------------------------------------------------------------- sessions

#[test]
fn session_create_is_validated_like_consul() {
    let consul = ConsulFake::start();
    let cases = [
        (
            json!({"TTL": "5s"}),
            500,
            "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]",
        ),
        (
            json!({"TTL": "86401s"}),
            500,
            "Invalid Session TTL '86401000000000', must be between [10s=24h0m0s]",
        ),
        (
            json!({"Behavior": "explode"}),
            500,
            "Invalid Behavior setting 'explode'",
        ),
        (json!({"Node": "nowhere"}), 500, "Missing node registration"),
        (
            json!({"NodeChecks": ["nope"]}),
            500,
            "Missing check 'nope' registration",
        ),
    ];
    for (body, status, text) in cases {
        let r = put(&consul, "/v1/session/create", body.to_string().as_bytes());
        assert_eq!((r.status, r.text()), (status, text.to_string()), "{body}");
    }
    let r = put(&consul, "/v1/session/create", b"{not json");
    assert_eq!(r.status, 400);
    assert!(
        r.text().starts_with("Request decode failed: "),
        "{}",
        r.text()
    );
    assert!(consul.sessions().is_empty());

    // The bounds themselves are valid, as is no TTL; keys in any case.
    for body in [json!({"TTL": "10s"}), json!({"ttl": "24h"}), json!({})] {
        create_session(&consul, body);
    }
    let id = create_session(&consul, json!({"behavior": "delete", "LockDelay": 5}));
    let s = consul.sessions().into_iter().find(|s| s.id == id).unwrap();
    assert_eq!(s.behavior, "delete");
    assert_eq!(
        s.lock_delay,
        Duration::from_secs(5),
        "a small number means seconds"
    );
    assert_eq!(s.ttl, None);
    assert_eq!(
        get(&consul, "/v1/session/list")
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // A session on a service check that goes critical is invalidated.
    consul.register(ServiceInstance::new("node-1", "10.0.0.1", "web"));
    let watched = create_session(
        &consul,
        json!({"Node": "node-1", "ServiceChecks": [{"ID": "service:web-node-1"}]}),
    );
    assert!(put_bool(
        &consul,
        &format!("/v1/kv/w?acquire={watched}"),
        b""
    ));
    consul.set_status("web-node-1", CheckStatus::Critical);
    assert!(consul.sessions().iter().all(|s| s.id != watched));
    assert_eq!(consul.kv("w").unwrap().session, None);
    let r = put(
        &consul,
        "/v1/session/create",
        br#"{"Node":"node-1","ServiceChecks":[{"ID":"service:web-node-1"}]}"#,
    );
    assert_eq!(
        (r.status, r.text()),
        (
            500,
            "Check 'service:web-node-1' is in critical state".to_string()
        )
    );
}

#[test]
fn ttl_expiry_with_behavior_delete_removes_the_key() {
    // TTL 10s (Consul's minimum) x 0.03 = 300 ms.
    let consul = ConsulFake::builder().ttl_factor(0.03).start();
    let id = create_session(
        &consul,
        json!({"TTL": "10s", "Behavior": "delete", "LockDelay": "0s"}),
    );
    assert!(put_bool(
        &consul,
        &format!("/v1/kv/ephemeral?acquire={id}"),
        b"mine"
    ));
    let idx = get(&consul, "/v1/kv/ephemeral").index();
    // No request but this blocking one, which the expiry itself wakes.
    let start = Instant::now();
    let r = get(&consul, &format!("/v1/kv/ephemeral?index={idx}&wait=30s"));
    let took = start.elapsed();
    assert_eq!(r.status, 404, "the key went with the session");
    assert!(r.index() > idx);
    assert!(took < Duration::from_secs(10), "expired late: {took:?}");
    assert!(consul.kv("ephemeral").is_none());
    assert!(consul.sessions().is_empty());
    let info = get(&consul, &format!("/v1/session/info/{id}"));
    assert_eq!((info.status, info.json()), (200, json!([])));
}

#[test]
fn ttl_expiry_with_behavior_release_keeps_the_key() {
    let consul = ConsulFake::builder().ttl_factor(0.03).start();
    let id = create_session(&consul, json!({"TTL": "10s", "LockDelay": "0s"}));
    assert!(put_bool(
        &consul,
        &format!("/v1/kv/kept?acquire={id}"),
        b"value"
    ));
    let before = consul.kv("kept").unwrap();
    let took = eventually(Duration::from_secs(10), "the session expires", || {
        consul.sessions().is_empty()
    });
    assert!(
        took >= Duration::from_millis(250),
        "expired early: {took:?}"
    );
    let after = consul.kv("kept").expect("release keeps the key");
    assert_eq!(after.session, None);
    assert_eq!(after.value, b"value");
    assert_eq!(after.lock_index, before.lock_index);
    assert!(
        after.modify_index > before.modify_index,
        "the release is a modification"
    );
}

#[test]
fn lock_delay_is_honoured_and_zero_opts_out() {
    let consul = ConsulFake::start();
    let other = create_session(&consul, json!({"Name": "other"}));

    let holder = create_session(&consul, json!({"LockDelay": "1500ms"}));
    assert!(put_bool(
        &consul,
        &format!("/v1/kv/delayed?acquire={holder}"),
        b""
    ));
    let destroyed = Instant::now();
    assert_eq!(
        put(&consul, &format!("/v1/session/destroy/{holder}"), b"").json(),
        json!(true)
    );
    assert_eq!(consul.kv("delayed").unwrap().session, None, "released");
    assert!(
        !put_bool(&consul, &format!("/v1/kv/delayed?acquire={other}"), b""),
        "refused during the lock delay"
    );
    eventually(Duration::from_secs(10), "the lock delay passes", || {
        put_bool(&consul, &format!("/v1/kv/delayed?acquire={other}"), b"")
    });
    assert!(
        destroyed.elapsed() >= Duration::from_millis(1500),
        "acquired before the delay was over"
    );

    let quick = create_session(&consul, json!({"LockDelay": "0s"}));
    assert!(put_bool(
        &consul,
        &format!("/v1/kv/undelayed?acquire={quick}"),
        b""
    ));
    put(&consul, &format!("/v1/session/destroy/{quick}"), b"");
    assert!(
        put_bool(&consul, &format!("/v1/kv/undelayed?acquire={other}"), b""),
        "LockDelay 0s opts out"
    );
}

#[test]
fn renew_keeps_a_session_alive_past_its_ttl() {
    // TTL 10s x 0.05 = 500 ms; renewed every 100 ms for 1.5 s.
    let consul = ConsulFake::builder().ttl_factor(0.05).start();
    let id = create_session(&consul, json!({"TTL": "10s", "LockDelay": "0s"}));
    assert!(put_bool(
        &consul,
        &format!("/v1/kv/alive?acquire={id}"),
        b""
    ));
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let r = put(&consul, &format!("/v1/session/renew/{id}"), b"");
        assert_eq!(r.status, 200, "renew failed after {:?}", start.elapsed());
        assert_eq!(r.json()[0]["ID"], id.as_str());
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(consul.sessions().len(), 1, "alive after 3 TTLs of renewing");
    assert_eq!(
        consul.kv("alive").unwrap().session.as_deref(),
        Some(id.as_str())
    );
    eventually(
        Duration::from_secs(10),
        "it expires once not renewed",
        || consul.sessions().is_empty(),
    );
    let r = put(&consul, &format!("/v1/session/renew/{id}"), b"");
    assert_eq!(
        (r.status, r.text()),
        (404, format!("Session id '{id}' not found"))
    );
}

#[test]
fn renew_and_destroy_of_a_gone_session() {
    let consul = ConsulFake::start();
    let id = create_session(&consul, json!({}));
    assert_eq!(
        put(&consul, &format!("/v1/session/destroy/{id}"), b"").json(),
        json!(true)
    );
    let r = put(&consul, &format!("/v1/session/renew/{id}"), b"");
    assert_eq!(
        (r.status, r.text()),
        (404, format!("Session id '{id}' not found"))
    );
    // Destroy is idempotent.
    assert_eq!(
        put(&consul, &format!("/v1/session/destroy/{id}"), b"").json(),
        json!(true)
    );
    assert_eq!(get(&consul, "/v1/session/list").json(), json!([]));
    let r = get(&consul, "/v1/session/create");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("PUT"));
}
