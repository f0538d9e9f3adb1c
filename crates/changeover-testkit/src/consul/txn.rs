//! `PUT /v1/txn`, KV operations only: every verb of the docs' KV table,
//! applied atomically (all or nothing, one index for the whole
//! transaction), 200 with `Results` or 409 with `Errors` (`OpIndex`,
//! `What`), as the Transactions HTTP API page describes:
//!
//! - results only for verbs that leave an entry (`set`, `cas`, `lock`,
//!   `unlock`, `get`, `get-tree`, `get-or-empty` of an existing key), none
//!   for deletes and checks; `Value` is null except for the `get` verbs;
//! - the lock delay is checked before anything is applied, as Consul's
//!   pre-apply does ("failed to lock key … due to lock delay");
//! - more than 128 operations: 413.
//!
//! `Node`, `Service` and `Check` operations are not implemented (400).

use super::http::{permission_denied, Access, Req, Resp};
use super::kv::{check_session, entry_json, remove, store};
use super::state::{Shared, State};
use super::{KvEntry, MAX_VALUE_SIZE};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::time::Instant;

/// Consul's limit on operations in one transaction.
const MAX_OPS: usize = 128;

struct Op {
    verb: String,
    key: String,
    value: Vec<u8>,
    flags: u64,
    index: u64,
    session: String,
}

pub(crate) fn handle(shared: &Shared, req: &Req) -> Resp {
    let ops: Vec<Value> = match serde_json::from_slice(&req.body) {
        Ok(Value::Array(ops)) => ops,
        Ok(_) => return Resp::text(
            StatusCode::BAD_REQUEST,
            "Failed to parse body: json: cannot unmarshal object into Go value of type api.TxnOps",
        ),
        Err(e) => {
            return Resp::text(
                StatusCode::BAD_REQUEST,
                format!("Failed to parse body: {e}"),
            )
        }
    };
    if ops.len() > MAX_OPS {
        return Resp::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_OPS})",
                ops.len()
            ),
        );
    }
    let mut parsed = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        match parse(op) {
            Ok(op) => parsed.push(op),
            Err(why) => {
                return Resp::text(
                    StatusCode::BAD_REQUEST,
                    format!("Failed to parse body: operation {i}: {why}"),
                )
            }
        }
    }
    if req.access == Access::Anonymous {
        if let Some(op) = parsed.first() {
            return permission_denied("key", "write", &op.key);
        }
    }
    let now = Instant::now();
    let outcome = shared.write(|st| {
        // Pre-apply: the lock delay refuses before anything is written.
        let delayed: Vec<Value> = parsed
            .iter()
            .enumerate()
            .filter(|(_, op)| op.verb == "lock")
            .filter(|(_, op)| st.lock_delays.get(&op.key).is_some_and(|u| *u > now))
            .map(|(i, op)| {
                json!({"OpIndex": i, "What": format!("failed to lock key {} due to lock delay", json!(op.key))})
            })
            .collect();
        if !delayed.is_empty() {
            return Err(delayed);
        }
        let saved = (st.kv.clone(), st.tombstones.clone(), st.kv_index);
        let idx = st.next_index();
        let mut results = Vec::new();
        for (i, op) in parsed.iter().enumerate() {
            match apply(st, idx, op) {
                Ok(out) => results.extend(out.into_iter().map(|kv| json!({"KV": kv}))),
                Err(what) => {
                    (st.kv, st.tombstones, st.kv_index) = saved;
                    return Err(vec![json!({"OpIndex": i, "What": what})]);
                }
            }
        }
        Ok(results)
    });
    match outcome {
        Ok(results) => Resp::json(req, &json!({"Results": results, "Errors": null})),
        Err(errors) => {
            let mut resp = Resp::json(req, &json!({"Results": null, "Errors": errors}));
            resp.status = StatusCode::CONFLICT;
            resp
        }
    }
}

fn parse(op: &Value) -> Result<Op, String> {
    let kv = match op.get("KV") {
        Some(kv) => kv,
        None if op.get("Node").is_some()
            || op.get("Service").is_some()
            || op.get("Check").is_some() =>
        {
            return Err("Node, Service and Check operations are not implemented by the fake".into())
        }
        None => return Err("no KV operation".into()),
    };
    let text = |k: &str| kv.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let value = match kv.get("Value") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => B64
            .decode(s)
            .map_err(|e| format!("illegal base64 data: {e}"))?,
        Some(_) => return Err("Value is not a base64 string".into()),
    };
    if value.len() > MAX_VALUE_SIZE {
        return Err(format!("Value exceeds {MAX_VALUE_SIZE} byte limit"));
    }
    Ok(Op {
        verb: text("Verb"),
        key: text("Key"),
        value,
        flags: kv.get("Flags").and_then(Value::as_u64).unwrap_or(0),
        index: kv.get("Index").and_then(Value::as_u64).unwrap_or(0),
        session: text("Session"),
    })
}

/// One operation; the entries it contributes to `Results`, or why the
/// transaction rolls back.
fn apply(st: &mut State, idx: u64, op: &Op) -> Result<Vec<Value>, String> {
    let key = op.key.clone();
    let quoted = json!(key);
    let existing = st.kv.get(&key).cloned();
    let blank = |e: &KvEntry| {
        let mut v = entry_json(e);
        v["Value"] = Value::Null;
        v
    };
    let written = |st: &State| st.kv.get(&key).map(blank).into_iter().collect::<Vec<_>>();
    let entry = |session: Option<String>, lock_index: u64| KvEntry {
        key: key.clone(),
        value: op.value.clone(),
        flags: op.flags,
        create_index: 0,
        modify_index: 0,
        lock_index,
        session,
    };
    let keep_lock = existing.as_ref().map_or(0, |e| e.lock_index);
    let keep_session = existing.as_ref().and_then(|e| e.session.clone());
    match op.verb.as_str() {
        "set" => {
            store(st, idx, entry(keep_session, keep_lock));
            Ok(written(st))
        }
        "cas" => {
            let ok = match &existing {
                None => op.index == 0,
                Some(e) => op.index != 0 && op.index == e.modify_index,
            };
            if !ok {
                return Err(format!("failed to set key {quoted}, index is stale"));
            }
            store(st, idx, entry(keep_session, keep_lock));
            Ok(written(st))
        }
        "lock" => {
            check_session(st, &op.session)?;
            let lock_index = match &existing {
                Some(e) if e.session.as_deref() == Some(op.session.as_str()) => e.lock_index,
                Some(e) if e.session.is_some() => {
                    return Err(format!("failed to lock key {quoted}, lock is already held"))
                }
                Some(e) => e.lock_index + 1,
                None => 1,
            };
            store(st, idx, entry(Some(op.session.clone()), lock_index));
            Ok(written(st))
        }
        "unlock" => {
            match &existing {
                Some(e) if e.session.as_deref() == Some(op.session.as_str()) => {}
                _ => {
                    return Err(format!(
                    "failed to unlock key {quoted}, lock isn't held, or is held by another session"
                ))
                }
            }
            store(st, idx, entry(None, keep_lock));
            Ok(written(st))
        }
        "get" => match &existing {
            Some(e) => Ok(vec![entry_json(e)]),
            None => Err(format!("key {quoted} doesn't exist")),
        },
        "get-or-empty" => Ok(existing.iter().map(entry_json).collect()),
        "get-tree" => Ok(st
            .kv
            .range(key.clone()..)
            .take_while(|(k, _)| k.starts_with(&key))
            .map(|(_, e)| entry_json(e))
            .collect()),
        "check-index" => match &existing {
            Some(e) if e.modify_index == op.index => Ok(Vec::new()),
            Some(e) => Err(format!(
                "current modify index {} != {}",
                e.modify_index, op.index
            )),
            None => Err(format!("key {quoted} doesn't exist")),
        },
        "check-session" => match &existing {
            Some(e) if e.session.as_deref() == Some(op.session.as_str()) => Ok(Vec::new()),
            Some(_) => Err(format!(
                "key {quoted} is not currently locked by session {}",
                json!(op.session)
            )),
            None => Err(format!("key {quoted} doesn't exist")),
        },
        "check-not-exists" => match &existing {
            Some(_) => Err(format!("key {quoted} exists")),
            None => Ok(Vec::new()),
        },
        "delete" => {
            remove(st, idx, &key);
            Ok(Vec::new())
        }
        "delete-tree" => {
            let keys: Vec<String> = st
                .kv
                .range(key.clone()..)
                .take_while(|(k, _)| k.starts_with(&key))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                remove(st, idx, &k);
            }
            Ok(Vec::new())
        }
        // As in Consul's state store, a missing key counts as deleted.
        "delete-cas" => match &existing {
            None => Ok(Vec::new()),
            Some(e) if e.modify_index == op.index => {
                remove(st, idx, &key);
                Ok(Vec::new())
            }
            Some(_) => Err(format!("failed to delete key {quoted}, index is stale")),
        },
        other => Err(format!("unknown KV verb {}", json!(other))),
    }
}
