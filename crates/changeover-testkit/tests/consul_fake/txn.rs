//! Transactions (`PUT /v1/txn`), KV operations: atomicity, 200/409 with
//! `Results`/`Errors` as the Transactions page documents.

use super::*;

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn txn(c: &ConsulFake, ops: Value) -> Reply {
    put(c, "/v1/txn", ops.to_string().as_bytes())
}

#[test]
fn a_write_answers_with_its_entry_and_no_value() {
    let c = ConsulFake::start();
    let r = txn(
        &c,
        json!([{"KV": {"Verb": "set", "Key": "app/a", "Value": b64("one")}}]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["Errors"], Value::Null);
    let kv = &doc["Results"][0]["KV"];
    // The keys of the docs' sample KV result.
    let keys: BTreeSet<&str> = kv.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "CreateIndex",
            "Flags",
            "Key",
            "LockIndex",
            "ModifyIndex",
            "Value"
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(kv["Value"], Value::Null, "null but for the get verbs");
    assert_eq!(
        kv["ModifyIndex"].as_u64(),
        Some(c.kv("app/a").unwrap().modify_index)
    );
    // get returns the value.
    let r = txn(&c, json!([{"KV": {"Verb": "get", "Key": "app/a"}}]));
    assert_eq!(r.json()["Results"][0]["KV"]["Value"], json!(b64("one")));
}

#[test]
fn cas_and_checks_roll_the_whole_transaction_back() {
    let c = ConsulFake::start();
    let r = txn(
        &c,
        json!([{"KV": {"Verb": "cas", "Key": "p", "Value": b64("1"), "Index": 0}}]),
    );
    assert_eq!(r.status, 200);
    let index = r.json()["Results"][0]["KV"]["ModifyIndex"]
        .as_u64()
        .unwrap();
    // A stale index: 409, and the set before it is undone.
    let r = txn(
        &c,
        json!([
            {"KV": {"Verb": "set", "Key": "q", "Value": b64("x")}},
            {"KV": {"Verb": "cas", "Key": "p", "Value": b64("2"), "Index": index + 100}}
        ]),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["Results"], Value::Null);
    assert_eq!(doc["Errors"][0]["OpIndex"], 1);
    assert!(doc["Errors"][0]["What"]
        .as_str()
        .unwrap()
        .contains("index is stale"));
    assert!(c.kv("q").is_none(), "rolled back: q was not written");
    assert_eq!(c.kv("p").unwrap().value, b"1");
    // cas with Index 0 on an existing key fails; the right index works.
    let r = txn(
        &c,
        json!([{"KV": {"Verb": "cas", "Key": "p", "Value": b64("3"), "Index": 0}}]),
    );
    assert_eq!(r.status, 409);
    let r = txn(
        &c,
        json!([{"KV": {"Verb": "cas", "Key": "p", "Value": b64("3"), "Index": index}}]),
    );
    assert_eq!(r.status, 200);
    // get of a missing key fails; delete-cas of a missing key succeeds.
    let r = txn(&c, json!([{"KV": {"Verb": "get", "Key": "nope"}}]));
    assert_eq!(r.status, 409);
    assert!(r.text().contains("doesn't exist"), "{}", r.text());
    let r = txn(
        &c,
        json!([{"KV": {"Verb": "delete-cas", "Key": "nope", "Index": 5}}]),
    );
    assert_eq!(r.status, 200);
    // get + delete: no result for the delete.
    let r = txn(
        &c,
        json!([{"KV": {"Verb": "get", "Key": "p"}}, {"KV": {"Verb": "delete", "Key": "p"}}]),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["Results"].as_array().unwrap().len(), 1);
    assert!(c.kv("p").is_none());
}

#[test]
fn check_not_exists_and_lock_take_a_key_once() {
    let c = ConsulFake::start();
    let s1 = create_session(
        &c,
        json!({"TTL": "10s", "Behavior": "delete", "LockDelay": "0s"}),
    );
    let s2 = create_session(&c, json!({"TTL": "10s", "LockDelay": "0s"}));
    let take = |s: &str| {
        txn(
            &c,
            json!([
                {"KV": {"Verb": "check-not-exists", "Key": "lock/deploy"}},
                {"KV": {"Verb": "lock", "Key": "lock/deploy", "Value": b64("me"), "Session": s}}
            ]),
        )
    };
    let r = take(&s1);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["Results"].as_array().unwrap().len(),
        1,
        "no result for the check"
    );
    assert_eq!(
        c.kv("lock/deploy").unwrap().session.as_deref(),
        Some(s1.as_str())
    );
    let r = take(&s2);
    assert_eq!(r.status, 409);
    assert!(r.text().contains("exists"), "{}", r.text());
    // A key without a session (a manual lock) is not taken by `lock` after the check.
    put_bool(&c, "/v1/kv/lock/manual", b"by hand");
    let r = txn(
        &c,
        json!([
            {"KV": {"Verb": "check-not-exists", "Key": "lock/manual"}},
            {"KV": {"Verb": "lock", "Key": "lock/manual", "Value": b64("me"), "Session": s2}}
        ]),
    );
    assert_eq!(r.status, 409);
    assert_eq!(c.kv("lock/manual").unwrap().session, None);
    // Destroying the holder's session deletes its key (Behavior delete).
    put(&c, &format!("/v1/session/destroy/{s1}"), b"");
    assert!(c.kv("lock/deploy").is_none());
    assert_eq!(take(&s2).status, 200);
    // An unknown session is an error of the operation.
    let r = txn(
        &c,
        json!([{"KV": {"Verb": "lock", "Key": "x", "Value": b64("v"), "Session": "00000000-0000-0000-0000-000000000000"}}]),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("invalid session"), "{}", r.text());
}

#[test]
fn the_lock_delay_applies_to_txn_locks() {
    let c = ConsulFake::start();
    let s1 = create_session(&c, json!({"TTL": "10s", "LockDelay": "30s"}));
    let s2 = create_session(&c, json!({"TTL": "10s"}));
    assert!(put_bool(&c, &format!("/v1/kv/k?acquire={s1}"), b"v"));
    put(&c, &format!("/v1/session/destroy/{s1}"), b"");
    let r = txn(
        &c,
        json!([{"KV": {"Verb": "lock", "Key": "k", "Value": b64("v"), "Session": s2}}]),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("due to lock delay"), "{}", r.text());
}

#[test]
fn malformed_and_oversized_transactions() {
    let c = ConsulFake::start();
    assert_eq!(put(&c, "/v1/txn", b"{}").status, 400);
    assert_eq!(put(&c, "/v1/txn", b"not json").status, 400);
    let many: Vec<Value> = (0..129)
        .map(|i| json!({"KV": {"Verb": "get-or-empty", "Key": format!("k{i}")}}))
        .collect();
    let r = txn(&c, Value::Array(many));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(get(&c, "/v1/txn").status, 405);
    // With an ACL token set, no token is refused.
    let c = ConsulFake::builder().acl_token("t").start();
    let r = txn(
        &c,
        json!([{"KV": {"Verb": "set", "Key": "a", "Value": b64("1")}}]),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(c.kv("a").is_none());
}
