//! `/v1/kv/<key>`: read (single, `?recurse`, `?keys`, `?raw`, blocking),
//! write (`?flags`, `?cas`, `?acquire`, `?release`) and delete (`?recurse`,
//! `?cas`), with the semantics of Consul's KV state store.

use super::http::{block, blocking_params, permission_denied, Access, Req, Resp};
use super::state::{is_uuid, Shared, State};
use super::{KvEntry, MAX_VALUE_SIZE};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Instant;

pub(crate) async fn handle(shared: &Shared, req: &Req, key: String) -> Resp {
    // Current Consul refuses a key that begins with '/' (it can only get
    // here percent-encoded: a literal `//` is redirected by the mux).
    if key.starts_with('/') {
        return Resp::text(StatusCode::BAD_REQUEST, "key must not begin with a '/'");
    }
    match req.method {
        Method::GET => get(shared, req, key).await,
        Method::PUT => put(shared, req, key),
        _ => delete(shared, req, key),
    }
}

async fn get(shared: &Shared, req: &Req, key: String) -> Resp {
    let blocking = match blocking_params(req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    // The anonymous token may read nothing: lists come back filtered
    // (empty), a single key is refused.
    let anonymous = req.access == Access::Anonymous;
    if req.has("keys") {
        let separator = req
            .get("separator")
            .or_else(|| req.get("seperator"))
            .unwrap_or("")
            .to_string();
        let (index, keys) = block(shared, &blocking, |st| {
            let keys = if anonymous {
                Vec::new()
            } else {
                list_keys(st, &key, &separator)
            };
            (list_index(st, &key), keys)
        })
        .await;
        if keys.is_empty() && !key.is_empty() {
            return Resp::empty(StatusCode::NOT_FOUND).with_index(index);
        }
        return Resp::json(req, &json!(keys)).with_index(index);
    }
    if req.has("recurse") {
        let (index, entries) = block(shared, &blocking, |st| {
            let entries: Vec<Value> = if anonymous {
                Vec::new()
            } else {
                with_prefix(st, &key).map(entry_json).collect()
            };
            (list_index(st, &key), entries)
        })
        .await;
        if entries.is_empty() {
            return Resp::empty(StatusCode::NOT_FOUND).with_index(index);
        }
        return Resp::json(req, &Value::Array(entries)).with_index(index);
    }
    if key.is_empty() {
        return Resp::text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if anonymous {
        return permission_denied("key", "read", &key);
    }
    let (index, entry) = block(shared, &blocking, |st| match st.kv.get(&key) {
        Some(e) => (e.modify_index, Some(e.clone())),
        None => (st.kv_index, None),
    })
    .await;
    let Some(entry) = entry else {
        return Resp::empty(StatusCode::NOT_FOUND).with_index(index);
    };
    if req.has("raw") {
        let mut resp = Resp::empty(StatusCode::OK).with_index(index);
        resp.content_type = Some("text/plain");
        resp.headers
            .push(("X-Content-Type-Options", "nosniff".to_string()));
        resp.headers
            .push(("Content-Security-Policy", "sandbox".to_string()));
        resp.body = entry.value;
        return resp;
    }
    Resp::json(req, &json!([entry_json(&entry)])).with_index(index)
}

enum PutOp {
    Set,
    Cas(u64),
    Lock(String),
    Unlock(String),
}

fn put(shared: &Shared, req: &Req, key: String) -> Resp {
    if key.is_empty() {
        return Resp::text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if let Some(resp) = conflicting_flags(req, &["cas", "acquire", "release"]) {
        return resp;
    }
    let flags = match parse_uint(req, "flags") {
        Ok(f) => f.unwrap_or(0),
        Err(resp) => return resp,
    };
    let mut op = PutOp::Set;
    match parse_uint(req, "cas") {
        Ok(Some(cas)) => op = PutOp::Cas(cas),
        Ok(None) => {}
        Err(resp) => return resp,
    }
    if let Some(session) = req.get("acquire") {
        op = PutOp::Lock(session.to_string());
    }
    if let Some(session) = req.get("release") {
        op = PutOp::Unlock(session.to_string());
    }
    if req.body.len() > MAX_VALUE_SIZE {
        return Resp::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Value exceeds {MAX_VALUE_SIZE} byte limit"),
        );
    }
    if req.access == Access::Anonymous {
        return permission_denied("key", "write", &key);
    }
    let value = req.body.to_vec();
    let now = Instant::now();
    let result = shared.write(|st| -> Result<bool, String> {
        if let PutOp::Lock(_) = op {
            // Enforced before the Raft apply, so a refusal is no write.
            if st.lock_delays.get(&key).is_some_and(|until| *until > now) {
                return Ok(false);
            }
        }
        let idx = st.next_index();
        let existing = st.kv.get(&key).cloned();
        let mut entry = KvEntry {
            key: key.clone(),
            value,
            flags,
            create_index: 0,
            modify_index: 0,
            lock_index: existing.as_ref().map_or(0, |e| e.lock_index),
            // A plain write keeps whatever lock the key has.
            session: existing.as_ref().and_then(|e| e.session.clone()),
        };
        match op {
            PutOp::Set => {}
            PutOp::Cas(cas) => {
                let ok = match &existing {
                    None => cas == 0,
                    Some(e) => cas != 0 && cas == e.modify_index,
                };
                if !ok {
                    return Ok(false);
                }
            }
            PutOp::Lock(session) => {
                check_session(st, &session)?;
                match &existing {
                    Some(e) if e.session.as_deref() == Some(session.as_str()) => {}
                    Some(e) if e.session.is_some() => return Ok(false),
                    Some(e) => entry.lock_index = e.lock_index + 1,
                    None => entry.lock_index = 1,
                }
                entry.session = Some(session);
            }
            PutOp::Unlock(session) => {
                if session.is_empty() {
                    return Err("missing session".to_string());
                }
                match &existing {
                    Some(e) if e.session.as_deref() == Some(session.as_str()) => {}
                    _ => return Ok(false),
                }
                entry.session = None;
            }
        }
        store(st, idx, entry);
        Ok(true)
    });
    match result {
        Ok(done) => Resp::json(req, &Value::Bool(done)),
        Err(msg) => Resp::text(StatusCode::INTERNAL_SERVER_ERROR, msg),
    }
}

fn delete(shared: &Shared, req: &Req, key: String) -> Resp {
    if let Some(resp) = conflicting_flags(req, &["recurse", "cas"]) {
        return resp;
    }
    let recurse = req.has("recurse");
    if !recurse && key.is_empty() {
        return Resp::text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let cas = match parse_uint(req, "cas") {
        Ok(cas) => cas,
        Err(resp) => return resp,
    };
    if req.access == Access::Anonymous {
        return permission_denied("key", "write", &key);
    }
    let done = shared.write(|st| {
        let idx = st.next_index();
        if let Some(cas) = cas {
            // Unlike PUT, 0 never deletes; a missing key counts as deleted.
            return match st.kv.get(&key) {
                None => true,
                Some(e) if e.modify_index == cas => {
                    remove(st, idx, &key);
                    true
                }
                Some(_) => false,
            };
        }
        if recurse {
            let keys: Vec<String> = with_prefix(st, &key).map(|e| e.key.clone()).collect();
            for k in keys {
                remove(st, idx, &k);
            }
        } else {
            remove(st, idx, &key);
        }
        true
    });
    Resp::json(req, &Value::Bool(done))
}

/// Writes `entry` at `idx` unless it equals what is stored (then nothing
/// changes, as in Consul's `kvsSetTxn`).
pub(crate) fn store(st: &mut State, idx: u64, mut entry: KvEntry) {
    match st.kv.get(&entry.key) {
        Some(e) => {
            if e.value == entry.value
                && e.flags == entry.flags
                && e.session == entry.session
                && e.lock_index == entry.lock_index
            {
                return;
            }
            entry.create_index = e.create_index;
        }
        None => entry.create_index = idx,
    }
    entry.modify_index = idx;
    st.kv_index = idx;
    st.kv.insert(entry.key.clone(), entry);
}

/// Deletes `key` at `idx`, leaving a tombstone.
pub(crate) fn remove(st: &mut State, idx: u64, key: &str) {
    if st.kv.remove(key).is_some() {
        st.tombstones.insert(key.to_string(), idx);
        st.kv_index = idx;
    }
}

/// The errors of Consul's lock for a bad session ID (500s).
pub(crate) fn check_session(st: &State, session: &str) -> Result<(), String> {
    if session.is_empty() {
        return Err("missing session".to_string());
    }
    if !is_uuid(session) {
        return Err("failed session lookup: index error: UUID must be 36 characters".to_string());
    }
    if !st.sessions.contains_key(session) {
        return Err(format!("invalid session {}", json!(session)));
    }
    Ok(())
}

fn with_prefix<'a>(st: &'a State, prefix: &'a str) -> impl Iterator<Item = &'a KvEntry> + 'a {
    st.kv
        .range(prefix.to_string()..)
        .take_while(move |(k, _)| k.starts_with(prefix))
        .map(|(_, e)| e)
}

/// A listing's index: the newest entry or tombstone under the prefix, or
/// the KV table's index (for an empty prefix, or nothing under it).
fn list_index(st: &State, prefix: &str) -> u64 {
    if prefix.is_empty() {
        return st.kv_index;
    }
    let entries = with_prefix(st, prefix).map(|e| e.modify_index).max();
    let stones = st
        .tombstones
        .range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(_, i)| *i)
        .max();
    match entries.max(stones) {
        Some(i) if i > 0 => i,
        _ => st.kv_index,
    }
}

/// `?keys`, cut after the first separator past the prefix (deduplicated).
fn list_keys(st: &State, prefix: &str, separator: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for e in with_prefix(st, prefix) {
        let key = if separator.is_empty() {
            e.key.clone()
        } else {
            match e.key[prefix.len()..].find(separator) {
                Some(i) => e.key[..prefix.len() + i + separator.len()].to_string(),
                None => e.key.clone(),
            }
        };
        if keys.last() != Some(&key) {
            keys.push(key);
        }
    }
    keys
}

pub(crate) fn entry_json(e: &KvEntry) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        "Value": if e.value.is_empty() { Value::Null } else { Value::String(B64.encode(&e.value)) },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let Some(session) = &e.session {
        v["Session"] = Value::String(session.clone());
    }
    v
}

/// Consul's 400 for flags that do not compose.
fn conflicting_flags(req: &Req, flags: &[&str]) -> Option<Resp> {
    let present = flags.iter().filter(|f| req.has(f)).count();
    (present > 1).then(|| {
        Resp::text(
            StatusCode::BAD_REQUEST,
            format!("Conflicting flags: {}\n", req.encode_params()),
        )
    })
}

/// A `u64` query parameter; a bad one is Go's `strconv` error, a 500.
fn parse_uint(req: &Req, name: &str) -> Result<Option<u64>, Resp> {
    let Some(raw) = req.get(name) else {
        return Ok(None);
    };
    raw.parse::<u64>().map(Some).map_err(|_| {
        let why = if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
            "value out of range"
        } else {
            "invalid syntax"
        };
        Resp::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("strconv.ParseUint: parsing {}: {why}", json!(raw)),
        )
    })
}
