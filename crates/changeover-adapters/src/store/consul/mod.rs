//! `[store] kind = "consul"`: Consul's KV store and sessions.
//!
//! - Every key lives under the prefix (default `changeover/<app>/`); values
//!   are the JSON documents; a key's revision is its `ModifyIndex`.
//! - Writes go through `/v1/txn` (`cas` with `Index`, or `set`): one atomic
//!   call that says whether the compare held and gives the new
//!   `ModifyIndex` (a plain `PUT ?cas=` answers only `true`/`false`, and a
//!   read after it could see someone else's write).
//! - A **deploy lock** is `lock/<name>` acquired (`lock` verb, after a
//!   `check-not-exists` in the same transaction) by a session with the
//!   lock TTL, `Behavior = "delete"` and `LockDelay = "0s"`: the holder
//!   renews it at a third of the TTL; a killed holder's session runs out
//!   and Consul deletes the key (Consul may take up to twice the TTL).
//! - A **manual lock** is the key without a session (`check-not-exists` +
//!   `set`): it stays until `lock release`.
//!
//! See docs/design.md for why transactions and not `?cas=`/`?acquire=`
//! alone (acquire succeeds on an existing unlocked key, which would take
//! over a manual lock).

mod lock;

use crate::consul::{path_escape, ConsulClient, ConsulError};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use changeover_core::plan::ConsulStoreSpec;
use changeover_core::store::{
    Acquired, Expect, LockRecord, Revision, Store, StoreError, Versioned,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub struct ConsulStore {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    client: ConsulClient,
    prefix: String,
    lock_ttl: Duration,
}

/// One KV entry as Consul gives it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub value: Vec<u8>,
    pub modify_index: u64,
    pub session: Option<String>,
}

/// The answer of a transaction: done (with each result's KV entry), or
/// rolled back (a compare or check failed).
enum Txn {
    Done(Vec<Value>),
    RolledBack,
}

impl ConsulStore {
    /// Check that the agent answers (and the token is good) before use.
    pub async fn connect(spec: &ConsulStoreSpec) -> Result<ConsulStore, StoreError> {
        let inner = Inner {
            client: ConsulClient::new(&spec.endpoint).map_err(|e| to_store(&spec.prefix, e))?,
            prefix: spec.prefix.clone(),
            lock_ttl: spec.lock_ttl,
        };
        // A read of the prefix proves the address, the token and the ACL.
        inner.get(".changeover-probe").await?;
        Ok(ConsulStore {
            inner: Arc::new(inner),
        })
    }
}

/// Names the store, never the token.
impl std::fmt::Debug for ConsulStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.inner.describe())
    }
}

fn to_store(prefix: &str, e: ConsulError) -> StoreError {
    let store = match &e {
        ConsulError::Unreachable { address, .. }
        | ConsulError::Denied { address, .. }
        | ConsulError::Failed { address, .. }
        | ConsulError::Setup { address, .. } => format!("consul {address} {prefix}"),
    };
    let message = match &e {
        ConsulError::Unreachable { message, .. } => format!("unreachable: {message}"),
        ConsulError::Denied { message, .. } => format!("refused: {message}"),
        ConsulError::Failed {
            status, message, ..
        } => format!("answered {status}: {message}"),
        ConsulError::Setup { message, .. } => message.clone(),
    };
    match e {
        ConsulError::Denied { .. } | ConsulError::Setup { .. } => {
            StoreError::Denied { store, message }
        }
        _ => StoreError::Unavailable { store, message },
    }
}

impl Inner {
    fn describe(&self) -> String {
        format!("consul {} {}", self.client.address(), self.prefix)
    }

    fn err(&self, e: ConsulError) -> StoreError {
        to_store(&self.prefix, e)
    }

    fn corrupt(&self, key: &str, message: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            store: self.describe(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn url(&self, key: &str) -> String {
        format!("/v1/kv/{}", path_escape(&self.full(key)))
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let answer = self
            .client
            .get(&self.url(key), &[])
            .await
            .map_err(|e| self.err(e))?;
        match answer.status {
            404 => Ok(None),
            200 => {
                let list: Vec<Value> = serde_json::from_slice(&answer.body)
                    .map_err(|e| self.corrupt(key, format!("Consul's answer is not JSON: {e}")))?;
                match list.first() {
                    Some(v) => Ok(Some(self.entry(key, v)?)),
                    None => Ok(None),
                }
            }
            _ => Err(self.err(self.client.unexpected(&answer))),
        }
    }

    fn entry(&self, key: &str, v: &Value) -> Result<Entry, StoreError> {
        let value = match v.get("Value") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => B64
                .decode(s)
                .map_err(|e| self.corrupt(key, format!("the value is not base64: {e}")))?,
            Some(_) => return Err(self.corrupt(key, "the value is not a string")),
        };
        let modify_index = v
            .get("ModifyIndex")
            .and_then(Value::as_u64)
            .filter(|i| *i > 0)
            .ok_or_else(|| self.corrupt(key, "no ModifyIndex"))?;
        let session = v
            .get("Session")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok(Entry {
            value,
            modify_index,
            session,
        })
    }

    fn document(&self, key: &str, entry: &Entry) -> Result<Versioned, StoreError> {
        let value = serde_json::from_slice(&entry.value)
            .map_err(|e| self.corrupt(key, format!("not a JSON document: {e}")))?;
        Ok(Versioned {
            value,
            revision: entry.modify_index,
        })
    }

    /// Run `ops` (each `{"KV": {...}}`) as one transaction.
    async fn txn(&self, ops: Vec<Value>) -> Result<Txn, StoreError> {
        let body = serde_json::to_vec(&Value::Array(ops)).expect("JSON serialises");
        let answer = self
            .client
            .put("/v1/txn", &[], body)
            .await
            .map_err(|e| self.err(e))?;
        let doc: Value = match answer.status {
            200 | 409 => serde_json::from_slice(&answer.body).map_err(|e| {
                self.err(ConsulError::Failed {
                    address: self.client.address().to_string(),
                    status: answer.status,
                    message: format!("the transaction's answer is not JSON: {e}"),
                })
            })?,
            _ => return Err(self.err(self.client.unexpected(&answer))),
        };
        if answer.status == 409 {
            return Ok(Txn::RolledBack);
        }
        let results = doc["Results"]
            .as_array()
            .map(|r| r.iter().map(|x| x["KV"].clone()).collect())
            .unwrap_or_default();
        Ok(Txn::Done(results))
    }

    fn op(&self, verb: &str, key: &str) -> Value {
        json!({ "KV": { "Verb": verb, "Key": self.full(key) } })
    }

    fn op_value(&self, verb: &str, key: &str, value: &[u8]) -> Value {
        let mut op = self.op(verb, key);
        op["KV"]["Value"] = json!(B64.encode(value));
        op
    }

    /// The `ModifyIndex` of result `i` of a finished transaction.
    fn index_of(&self, key: &str, results: &[Value], i: usize) -> Result<u64, StoreError> {
        results
            .get(i)
            .and_then(|kv| kv["ModifyIndex"].as_u64())
            .ok_or_else(|| self.corrupt(key, "the transaction gave no ModifyIndex"))
    }

    /// Delete `key` if its `ModifyIndex` is still `index`.
    pub(super) async fn delete_if(&self, key: &str, index: u64) -> Result<bool, StoreError> {
        let mut op = self.op("delete-cas", key);
        op["KV"]["Index"] = json!(index);
        Ok(matches!(self.txn(vec![op]).await?, Txn::Done(_)))
    }

    pub(super) async fn session_destroy(&self, id: &str) -> Result<(), StoreError> {
        let answer = self
            .client
            .put(
                &format!("/v1/session/destroy/{}", path_escape(id)),
                &[],
                Vec::new(),
            )
            .await
            .map_err(|e| self.err(e))?;
        match answer.status {
            200 | 404 => Ok(()),
            _ => Err(self.err(self.client.unexpected(&answer))),
        }
    }
}

#[async_trait]
impl Store for ConsulStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        match self.inner.get(key).await? {
            Some(e) => Ok(Some(self.inner.document(key, &e)?)),
            None => Ok(None),
        }
    }

    async fn put(
        &self,
        key: &str,
        value: &Value,
        expect: Expect,
    ) -> Result<Option<Revision>, StoreError> {
        let inner = &self.inner;
        // A compare against revision 0 would mean "absent": never a value.
        if expect == Expect::Revision(0) {
            return Ok(None);
        }
        let bytes = serde_json::to_vec(value).expect("a JSON value serialises");
        let op = match expect {
            Expect::Any => inner.op_value("set", key, &bytes),
            Expect::Absent | Expect::Revision(_) => {
                let mut op = inner.op_value("cas", key, &bytes);
                op["KV"]["Index"] = json!(match expect {
                    Expect::Revision(r) => r,
                    _ => 0,
                });
                op
            }
        };
        match inner.txn(vec![op]).await? {
            Txn::Done(results) => Ok(Some(inner.index_of(key, &results, 0)?)),
            Txn::RolledBack => Ok(None),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let inner = &self.inner;
        let answer = inner
            .client
            .get(&inner.url(prefix), &[("recurse", String::new())])
            .await
            .map_err(|e| inner.err(e))?;
        let list: Vec<Value> = match answer.status {
            404 => return Ok(Vec::new()),
            200 => serde_json::from_slice(&answer.body)
                .map_err(|e| inner.corrupt(prefix, format!("Consul's answer is not JSON: {e}")))?,
            _ => return Err(inner.err(inner.client.unexpected(&answer))),
        };
        let mut out = Vec::with_capacity(list.len());
        for v in &list {
            let full = v["Key"].as_str().unwrap_or_default();
            let Some(key) = full.strip_prefix(&inner.prefix) else {
                continue;
            };
            let entry = inner.entry(key, v)?;
            out.push((key.to_string(), inner.document(key, &entry)?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        // `get` fails the transaction when the key is absent: "existed" and
        // "deleted" in one step.
        match inner
            .txn(vec![inner.op("get", key), inner.op("delete", key)])
            .await?
        {
            Txn::Done(_) => Ok(true),
            Txn::RolledBack => Ok(false),
        }
    }

    async fn acquire(&self, record: &LockRecord) -> Result<Acquired, StoreError> {
        lock::acquire(&self.inner, record).await
    }

    async fn lock_status(&self, name: &str) -> Result<Option<LockRecord>, StoreError> {
        lock::status(&self.inner, name).await
    }

    async fn break_lock(&self, name: &str) -> Result<bool, StoreError> {
        lock::break_lock(&self.inner, name).await
    }
}
