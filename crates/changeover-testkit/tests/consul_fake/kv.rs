//! KV: reads, writes, CAS, locks by session, limits.

use super::*;

// ------------------------------------------------------------------- KV

#[test]
fn kv_get_put_delete_and_listing() {
    let consul = ConsulFake::start();
    let r = get(&consul, "/v1/kv/missing");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty(), "a 404 with an empty body");
    assert!(r.index() >= 1, "even a 404 carries an index");

    assert!(put_bool(&consul, "/v1/kv/app/a?flags=42", b"one"));
    assert!(put_bool(&consul, "/v1/kv/app/b", b""));
    let a = &get(&consul, "/v1/kv/app/a").json()[0];
    assert_eq!(a["Flags"], 42);
    assert_eq!(a["CreateIndex"], a["ModifyIndex"]);
    let b = &get(&consul, "/v1/kv/app/b").json()[0];
    assert_eq!(b["Value"], Value::Null, "an empty value is null");
    assert!(b.get("Session").is_none(), "Session only when locked");

    let raw = get(&consul, "/v1/kv/app/a?raw");
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, b"one");
    assert_eq!(raw.header("Content-Type"), Some("text/plain"));

    let list = get(&consul, "/v1/kv/app/?recurse");
    let keys: Vec<String> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["app/a", "app/b"]);
    assert_eq!(get(&consul, "/v1/kv/nothing/?recurse").status, 404);
    assert_eq!(
        get(&consul, "/v1/kv/?keys").json(),
        json!(["app/a", "app/b"])
    );

    // Rewriting the same value and flags changes nothing.
    let before = consul.kv("app/a").unwrap();
    assert!(put_bool(&consul, "/v1/kv/app/a?flags=42", b"one"));
    assert_eq!(consul.kv("app/a").unwrap(), before);

    // Deleting the newest key of a prefix moves the listing's index on.
    let idx = list.index();
    assert_eq!(delete(&consul, "/v1/kv/app/b").json(), json!(true));
    let after = get(&consul, "/v1/kv/app/?recurse");
    assert!(after.index() > idx, "the index never goes backwards");
    assert_eq!(delete(&consul, "/v1/kv/app/?recurse").json(), json!(true));
    assert!(consul.kv_keys().is_empty());
    assert_eq!(delete(&consul, "/v1/kv/gone").json(), json!(true));
}

#[test]
fn cas_semantics() {
    let consul = ConsulFake::start();
    assert!(put_bool(&consul, "/v1/kv/k?cas=0", b"v1"), "cas=0 creates");
    assert!(
        !put_bool(&consul, "/v1/kv/k?cas=0", b"v2"),
        "cas=0 only if absent"
    );
    let m = consul.kv("k").unwrap().modify_index;
    assert!(put_bool(&consul, &format!("/v1/kv/k?cas={m}"), b"v3"));
    assert_eq!(consul.kv("k").unwrap().value, b"v3");
    assert!(
        !put_bool(&consul, &format!("/v1/kv/k?cas={m}"), b"v4"),
        "a stale index fails"
    );
    assert!(!put_bool(&consul, "/v1/kv/absent?cas=5", b"x"));
    assert_eq!(consul.kv("k").unwrap().value, b"v3");

    let m = consul.kv("k").unwrap().modify_index;
    assert_eq!(delete(&consul, "/v1/kv/k?cas=0").json(), json!(false));
    assert_eq!(
        delete(&consul, &format!("/v1/kv/k?cas={}", m - 1)).json(),
        json!(false)
    );
    assert!(consul.kv("k").is_some());
    assert_eq!(
        delete(&consul, &format!("/v1/kv/k?cas={m}")).json(),
        json!(true)
    );
    assert!(consul.kv("k").is_none());

    let r = put(&consul, "/v1/kv/k?cas=0&acquire=x", b"");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Conflicting flags: "), "{}", r.text());
    assert_eq!(put(&consul, "/v1/kv/k?cas=abc", b"").status, 500);
}

#[test]
fn acquire_and_release() {
    let consul = ConsulFake::start();
    let s1 = create_session(&consul, json!({"Name": "one"}));
    assert!(put_bool(
        &consul,
        &format!("/v1/kv/lock?acquire={s1}"),
        b"held"
    ));
    let e = consul.kv("lock").unwrap();
    assert_eq!((e.lock_index, e.session.as_deref()), (1, Some(s1.as_str())));

    // The holder may update the value without re-incrementing LockIndex.
    assert!(put_bool(
        &consul,
        &format!("/v1/kv/lock?acquire={s1}"),
        b"again"
    ));
    let e = consul.kv("lock").unwrap();
    assert_eq!((e.lock_index, e.value.as_slice()), (1, &b"again"[..]));

    // A plain write proceeds and keeps the lock.
    assert!(put_bool(&consul, "/v1/kv/lock", b"plain"));
    assert_eq!(
        consul.kv("lock").unwrap().session.as_deref(),
        Some(s1.as_str())
    );

    let s2 = create_session(&consul, json!({"Name": "two"}));
    assert!(!put_bool(
        &consul,
        &format!("/v1/kv/lock?release={s2}"),
        b""
    ));
    assert!(put_bool(
        &consul,
        &format!("/v1/kv/lock?release={s1}"),
        b"free"
    ));
    let e = consul.kv("lock").unwrap();
    assert_eq!(e.session, None);
    assert_eq!(e.lock_index, 1, "release keeps LockIndex");
    assert_eq!(e.value, b"free", "release stores the body, as Consul does");

    // A voluntary release starts no lock delay.
    assert!(put_bool(&consul, &format!("/v1/kv/lock?acquire={s2}"), b""));
    assert_eq!(consul.kv("lock").unwrap().lock_index, 2);

    // Unknown, malformed and empty sessions are Consul's 500s.
    let unknown = "adf4238a-882b-9ddc-4a9d-5b6758e4159e";
    let r = put(&consul, &format!("/v1/kv/other?acquire={unknown}"), b"");
    assert_eq!(
        (r.status, r.text()),
        (500, format!("invalid session \"{unknown}\""))
    );
    let r = put(&consul, "/v1/kv/other?acquire=not-a-uuid", b"");
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("UUID must be 36 characters"),
        "{}",
        r.text()
    );
    assert_eq!(put(&consul, "/v1/kv/other?acquire=", b"").status, 500);
    assert!(consul.kv("other").is_none());
}

#[test]
fn a_second_session_cannot_acquire_a_held_lock() {
    let consul = ConsulFake::start();
    let s1 = create_session(&consul, json!({}));
    let s2 = create_session(&consul, json!({}));
    assert!(put_bool(
        &consul,
        &format!("/v1/kv/leader?acquire={s1}"),
        b"s1"
    ));
    assert!(!put_bool(
        &consul,
        &format!("/v1/kv/leader?acquire={s2}"),
        b"s2"
    ));
    let e = consul.kv("leader").unwrap();
    assert_eq!(
        (e.session.as_deref(), e.value.as_slice()),
        (Some(s1.as_str()), &b"s1"[..])
    );
}

#[test]
fn values_over_512_kib_are_refused() {
    let consul = ConsulFake::start();
    let limit = vec![b'x'; 524_288];
    assert!(put_bool(&consul, "/v1/kv/big", &limit));
    let r = put(&consul, "/v1/kv/big", &vec![b'x'; 524_289]);
    assert_eq!(
        (r.status, r.text()),
        (413, "Value exceeds 524288 byte limit".to_string())
    );
    assert_eq!(consul.kv("big").unwrap().value.len(), 524_288);
}

#[test]
fn keys_with_a_leading_slash() {
    let consul = ConsulFake::start();
    // Go's ServeMux redirects the unclean path before Consul sees it.
    let r = put(&consul, "/v1/kv//a?flags=1", b"v");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("Location"), Some("/v1/kv/a?flags=1"));
    assert!(consul.kv_keys().is_empty());
    let r = put(&consul, "/v1/kv/%2Fa", b"v");
    assert_eq!(
        (r.status, r.text()),
        (400, "key must not begin with a '/'".to_string())
    );
}
