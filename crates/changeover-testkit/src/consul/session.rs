//! `/v1/session/*`: create (with Consul's validation), destroy, renew, info,
//! list, node; invalidation (release or delete of the held keys, then the
//! lock delay) and the TTL reaper.

use super::http::{block, blocking_params, permission_denied, Access, Req, Resp};
use super::state::{is_uuid, Session, Shared, State};
use super::{duration, kv, CheckStatus, AGENT_NODE};
use hyper::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Consul's bounds on a session TTL.
const TTL_MIN: Duration = Duration::from_secs(10);
const TTL_MAX: Duration = Duration::from_secs(86_400);
/// Lock delays are capped at this when applied.
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// What a create request asks for, after Consul's defaults.
struct Request {
    name: String,
    node: String,
    lock_delay: Duration,
    behavior: String,
    ttl: String,
    node_checks: Vec<String>,
    service_checks: Vec<String>,
}

pub(crate) fn create(shared: &Shared, req: &Req) -> Resp {
    let mut ask = match decode(req) {
        Ok(ask) => ask,
        Err(e) => {
            return Resp::text(
                StatusCode::BAD_REQUEST,
                format!("Request decode failed: {e}"),
            )
        }
    };
    let fail = |msg: String| Resp::text(StatusCode::INTERNAL_SERVER_ERROR, msg);
    if ask.node.is_empty() {
        return fail("Must provide Node".to_string());
    }
    if req.access == Access::Anonymous {
        return permission_denied("session", "write", &ask.node);
    }
    match ask.behavior.as_str() {
        "" => ask.behavior = "release".to_string(),
        "release" | "delete" => {}
        other => return fail(format!("Invalid Behavior setting '{other}'")),
    }
    let mut ttl_duration = None;
    if !ask.ttl.is_empty() {
        let ns = match duration::parse_go_duration(&ask.ttl) {
            Ok(ns) => ns,
            Err(e) => return fail(format!("Session TTL '{}' invalid: {e}", ask.ttl)),
        };
        if ns != 0 {
            let ttl = Duration::from_nanos(ns.max(0) as u64);
            if ns < 0 || ttl < TTL_MIN || ttl > TTL_MAX {
                return fail(format!(
                    "Invalid Session TTL '{ns}', must be between [10s=24h0m0s]"
                ));
            }
            ttl_duration = Some(ttl);
        }
    }
    let factor = shared.config.ttl_factor;
    let result = shared.write(|st| -> Result<String, String> {
        let idx = st.next_index();
        if !st.nodes.contains_key(&ask.node) {
            return Err("Missing node registration".to_string());
        }
        for check in ask.node_checks.iter().chain(&ask.service_checks) {
            match st.check_status(&ask.node, check) {
                None => return Err(format!("Missing check '{check}' registration")),
                Some(CheckStatus::Critical) => {
                    return Err(format!("Check '{check}' is in critical state"))
                }
                Some(_) => {}
            }
        }
        let id = st.new_uuid();
        let expires_at = ttl_duration.map(|ttl| Instant::now() + scaled(ttl, factor));
        st.sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                name: ask.name,
                node: ask.node,
                lock_delay: ask.lock_delay,
                behavior: ask.behavior,
                ttl: ask.ttl,
                ttl_duration,
                node_checks: ask.node_checks,
                service_checks: ask.service_checks,
                create_index: idx,
                modify_index: idx,
                expires_at,
            },
        );
        st.sessions_index = idx;
        Ok(id)
    });
    shared.sessions_changed.notify_one();
    match result {
        Ok(id) => Resp::json(req, &json!({ "ID": id })),
        Err(msg) => fail(msg),
    }
}

pub(crate) fn destroy(shared: &Shared, req: &Req, id: String) -> Resp {
    if id.is_empty() {
        return Resp::text(StatusCode::BAD_REQUEST, "Missing session");
    }
    if let Some(resp) = malformed(&id) {
        return resp;
    }
    if req.access == Access::Anonymous {
        let node = shared.lock().sessions.get(&id).map(|s| s.node.clone());
        return permission_denied("session", "write", &node.unwrap_or_default());
    }
    shared.write(|st| {
        let idx = st.next_index();
        invalidate(st, &id, idx, Instant::now());
    });
    shared.sessions_changed.notify_one();
    // Idempotent: an unknown (or already expired) session is still `true`.
    Resp::json(req, &Value::Bool(true))
}

pub(crate) fn renew(shared: &Shared, req: &Req, id: String) -> Resp {
    if id.is_empty() {
        return Resp::text(StatusCode::BAD_REQUEST, "Missing session");
    }
    if let Some(resp) = malformed(&id) {
        return resp;
    }
    let factor = shared.config.ttl_factor;
    let anonymous = req.access == Access::Anonymous;
    // A renew is no Raft write: the leader resets its timer, the index stays.
    let renewed = shared.write(|st| {
        let session = st.sessions.get_mut(&id)?;
        if anonymous {
            return Some(Err(session.node.clone()));
        }
        session.expires_at = session
            .ttl_duration
            .map(|ttl| Instant::now() + scaled(ttl, factor));
        Some(Ok(session_json(session)))
    });
    match renewed {
        None => Resp::text(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        ),
        Some(Err(node)) => permission_denied("session", "write", &node),
        Some(Ok(json)) => {
            shared.sessions_changed.notify_one();
            Resp::json(req, &json!([json]))
        }
    }
}

pub(crate) async fn info(shared: &Shared, req: &Req, id: String) -> Resp {
    if id.is_empty() {
        return Resp::text(StatusCode::BAD_REQUEST, "Missing session");
    }
    if let Some(resp) = malformed(&id) {
        return resp;
    }
    let blocking = match blocking_params(req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let anonymous = req.access == Access::Anonymous;
    let (index, sessions) = block(shared, &blocking, |st| {
        let found: Vec<Value> = st
            .sessions
            .get(&id)
            .filter(|_| !anonymous)
            .map(session_json)
            .into_iter()
            .collect();
        (st.sessions_index, found)
    })
    .await;
    Resp::json(req, &Value::Array(sessions)).with_index(index)
}

/// `/v1/session/list`, or `/v1/session/node/<node>` with `node`.
pub(crate) async fn list(shared: &Shared, req: &Req, node: Option<String>) -> Resp {
    if node.as_deref() == Some("") {
        return Resp::text(StatusCode::BAD_REQUEST, "Missing node name");
    }
    let blocking = match blocking_params(req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let anonymous = req.access == Access::Anonymous;
    let (index, sessions) = block(shared, &blocking, |st| {
        let found: Vec<Value> = st
            .sessions
            .values()
            .filter(|s| !anonymous && node.as_ref().is_none_or(|n| *n == s.node))
            .map(session_json)
            .collect();
        (st.sessions_index, found)
    })
    .await;
    Resp::json(req, &Value::Array(sessions)).with_index(index)
}

/// Invalidates session `id` at index `idx`: its held keys are released or
/// deleted (per its behavior) and then locked out for its lock delay.
pub(crate) fn invalidate(st: &mut State, id: &str, idx: u64, now: Instant) {
    let Some(session) = st.sessions.remove(id) else {
        return;
    };
    st.sessions_index = idx;
    let delay = session.lock_delay.min(MAX_LOCK_DELAY);
    let held: Vec<String> = st
        .kv
        .values()
        .filter(|e| e.session.as_deref() == Some(id))
        .map(|e| e.key.clone())
        .collect();
    for key in held {
        if session.behavior == "delete" {
            kv::remove(st, idx, &key);
        } else if let Some(entry) = st.kv.get(&key) {
            let mut entry = entry.clone();
            entry.session = None;
            kv::store(st, idx, entry);
        }
        if !delay.is_zero() {
            st.lock_delays.insert(key, now + delay);
        }
    }
}

/// The sessions that watch check `check_id` of `node`.
pub(crate) fn watching(st: &State, node: &str, check_id: &str) -> Vec<String> {
    st.sessions
        .values()
        .filter(|s| s.node == node && s.check_ids().any(|c| c == check_id))
        .map(|s| s.id.clone())
        .collect()
}

/// Invalidates every session whose TTL has run out, on time, with no
/// request needed; sleeps until the next expiry or a change of sessions.
pub(crate) async fn reaper(shared: std::sync::Arc<Shared>) {
    loop {
        let next = shared
            .lock()
            .sessions
            .values()
            .filter_map(|s| s.expires_at)
            .min();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    _ = shared.sessions_changed.notified() => {}
                }
            }
            None => shared.sessions_changed.notified().await,
        }
        let now = Instant::now();
        shared.write(|st| {
            let due: Vec<String> = st
                .sessions
                .values()
                .filter(|s| s.expires_at.is_some_and(|at| at <= now))
                .map(|s| s.id.clone())
                .collect();
            for id in due {
                let idx = st.next_index();
                invalidate(st, &id, idx, now);
            }
        });
    }
}

pub(crate) fn session_json(s: &Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": s.lock_delay.as_nanos() as u64,
        "Behavior": s.behavior,
        "TTL": s.ttl,
        "NodeChecks": s.node_checks,
        "ServiceChecks": if s.service_checks.is_empty() {
            Value::Null
        } else {
            s.service_checks.iter().map(|id| json!({ "ID": id, "Namespace": "" })).collect()
        },
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

fn scaled(ttl: Duration, factor: f64) -> Duration {
    Duration::from_secs_f64(ttl.as_secs_f64() * factor)
}

/// The 500 of Consul's session index for an ID that is not a UUID.
fn malformed(id: &str) -> Option<Resp> {
    (!is_uuid(id)).then(|| {
        Resp::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed session lookup: index error: UUID must be 36 characters",
        )
    })
}

/// The create body, decoded as Consul does: keys in any case, an empty body
/// for all defaults, `LockDelay` as a duration string or nanoseconds (under
/// 1000 meaning seconds), `Checks` as the old name of `NodeChecks`.
fn decode(req: &Req) -> Result<Request, String> {
    let mut ask = Request {
        name: String::new(),
        node: AGENT_NODE.to_string(),
        lock_delay: DEFAULT_LOCK_DELAY,
        behavior: "release".to_string(),
        ttl: String::new(),
        node_checks: vec!["serfHealth".to_string()],
        service_checks: Vec::new(),
    };
    if req.body.is_empty() {
        return Ok(ask);
    }
    let body: Value = serde_json::from_slice(&req.body).map_err(|e| e.to_string())?;
    let Value::Object(map) = body else {
        return Err("the body is not a JSON object".to_string());
    };
    let field = |name: &str| -> Option<&Value> {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let string = |name: &str| -> Result<Option<String>, String> {
        match field(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("'{name}' expected a string, got {other}")),
        }
    };
    if let Some(v) = string("Name")? {
        ask.name = v;
    }
    if let Some(v) = string("Node")? {
        ask.node = v;
    }
    if let Some(v) = string("Behavior")? {
        ask.behavior = v;
    }
    if let Some(v) = string("TTL")? {
        ask.ttl = v;
    }
    match field("LockDelay") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => ask.lock_delay = lock_delay(duration::parse_go_duration(s)?),
        Some(Value::Number(n)) => {
            let ns = n.as_f64().ok_or("'LockDelay' is not a number")? as i128;
            ask.lock_delay = lock_delay(ns);
        }
        Some(other) => return Err(format!("'LockDelay' expected a duration, got {other}")),
    }
    let has_checks = ["Checks", "NodeChecks", "ServiceChecks"]
        .iter()
        .any(|k| field(k).is_some());
    if has_checks {
        ask.node_checks = Vec::new();
        for name in ["Checks", "NodeChecks"] {
            for id in strings(field(name), name)? {
                if !ask.node_checks.contains(&id) {
                    ask.node_checks.push(id);
                }
            }
        }
        if let Some(Value::Array(items)) = field("ServiceChecks") {
            for item in items {
                let id = item
                    .as_object()
                    .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("ID")))
                    .and_then(|(_, v)| v.as_str())
                    .ok_or("'ServiceChecks' items need an \"ID\" string")?;
                ask.service_checks.push(id.to_string());
            }
        } else if !matches!(field("ServiceChecks"), None | Some(Value::Null)) {
            return Err("'ServiceChecks' expected an array".to_string());
        }
    }
    Ok(ask)
}

fn strings(v: Option<&Value>, name: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("'{name}' expected strings, got {i}"))
            })
            .collect(),
        Some(other) => Err(format!("'{name}' expected an array, got {other}")),
    }
}

/// Consul's fix-up: a delay under 1000 (ns) was meant in seconds.
fn lock_delay(ns: i128) -> Duration {
    let ns = ns.max(0) as u64;
    if ns < 1000 {
        Duration::from_secs(ns)
    } else {
        Duration::from_nanos(ns)
    }
}
