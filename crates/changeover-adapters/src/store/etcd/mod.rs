//! The etcd store: an etcd v3 cluster, spoken to through its JSON gateway
//! (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/lease/keepalive`, …; keys and
//! values base64, 64-bit numbers as strings) over plain HTTP(S). Not the
//! gRPC API: that would need protoc at build time (docs/design.md, "etcd
//! store: the JSON gateway").
//!
//! - Every key lives under `spec.prefix`: `pointers/production` is
//!   `/changeover/shop/pointers/production`. A key's revision is its
//!   `mod_revision` (cluster-wide, so a key deleted and written again never
//!   reuses one).
//! - `put` with [`Expect::Absent`] is a txn comparing `create_revision == 0`,
//!   with [`Expect::Revision`] one comparing `mod_revision == r`.
//! - A deploy lock is the key `lock/<name>` attached to a lease of
//!   `spec.lock_ttl`, created by a txn only if the key does not exist; a task
//!   renews the lease every TTL/3 and cancels the guard's `lost()` when the
//!   lease is gone or etcd has not renewed it for a whole TTL. A holder
//!   killed with SIGKILL renews nothing: etcd drops the lease, and the key
//!   with it, within the TTL. A manual lock is the key with no lease.
//! - Endpoints are tried in order when one cannot be connected to (the one
//!   that answered last is tried first next time). With `username`, the
//!   password is read from the environment variable `password_env` at
//!   connect time, exchanged for a token (`/v3/auth/authenticate`) sent in
//!   the `Authorization` header, and exchanged again once when etcd says the
//!   token is no longer valid.

mod gateway;
mod kv;
mod lock;

use gateway::{number, Failure, Inner};
use kv::{header_revision, parse_kvs, prefix_end};
use lock::{EtcdGuard, Holding};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use changeover_core::plan::EtcdSpec;
use changeover_core::store::{
    lock_key, Acquired, Expect, LockKind, LockRecord, Revision, Store, StoreError, Versioned,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How many times a lock operation that raced another writer is tried.
const LOCK_ATTEMPTS: usize = 5;

/// A store in an etcd v3 cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password or the token.
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.prefix)
            .field("username", &self.inner.login.as_ref().map(|l| &l.username))
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Build the client (TLS roots, client identity), read the password from
    /// the environment, authenticate, and check that the cluster answers.
    pub async fn connect(spec: &EtcdSpec) -> Result<EtcdStore, StoreError> {
        let inner = Inner::new(spec)?;
        let inner = Arc::new(inner);
        if inner.login.is_some() {
            inner.authenticate().await.map_err(|f| inner.error(f))?;
        }
        // One cheap read: a wrong CA, a missing client certificate or a
        // missing permission shows up now, not in the middle of a deploy.
        inner
            .call(
                "/v3/kv/range",
                &json!({ "key": B64.encode(inner.prefix.as_bytes()), "keys_only": true, "limit": "1" }),
            )
            .await
            .map_err(|f| inner.error(f))?;
        Ok(EtcdStore { inner })
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        match self.inner.range(key).await? {
            Some(kv) => Ok(Some(self.inner.versioned(key, &kv)?)),
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
        let k = inner.key(key)?;
        let v = B64.encode(serde_json::to_vec(value).expect("a JSON value serialises"));
        let put = json!({ "key": k, "value": v });
        let compare = match expect {
            Expect::Any => {
                let answer = inner
                    .call("/v3/kv/put", &put)
                    .await
                    .map_err(|f| inner.error(f))?;
                return Ok(Some(header_revision(&answer) as Revision));
            }
            Expect::Absent => {
                json!({ "target": "CREATE", "result": "EQUAL", "key": k, "create_revision": "0" })
            }
            Expect::Revision(r) => {
                json!({ "target": "MOD", "result": "EQUAL", "key": k, "mod_revision": r.to_string() })
            }
        };
        match inner
            .txn(key, compare, json!({ "request_put": put }))
            .await?
        {
            Ok(revision) => Ok(Some(revision as Revision)),
            Err(_) => Ok(None),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let inner = &self.inner;
        let full = format!("{}{prefix}", inner.prefix);
        let answer = inner
            .call(
                "/v3/kv/range",
                &json!({
                    "key": B64.encode(full.as_bytes()),
                    "range_end": B64.encode(prefix_end(full.as_bytes())),
                }),
            )
            .await
            .map_err(|f| inner.error(f))?;
        let kvs = parse_kvs(&answer).map_err(|e| inner.corrupt(prefix, e))?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let Some(key) = kv
                .key
                .strip_prefix(inner.prefix.as_bytes())
                .and_then(|k| std::str::from_utf8(k).ok())
            else {
                continue;
            };
            let key = key.to_string();
            let v = inner.versioned(&key, &kv)?;
            out.push((key, v));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let answer = inner
            .call("/v3/kv/deleterange", &json!({ "key": inner.key(key)? }))
            .await
            .map_err(|f| inner.error(f))?;
        Ok(answer.get("deleted").map(number).unwrap_or(0) > 0)
    }

    async fn acquire(&self, record: &LockRecord) -> Result<Acquired, StoreError> {
        let inner = &self.inner;
        let key = lock_key(&record.name);
        let k = inner.key(&key)?;
        let value = B64.encode(serde_json::to_vec(record).expect("a lock record serialises"));
        for _ in 0..LOCK_ATTEMPTS {
            let mut granted_at = Instant::now();
            let lease = match record.kind {
                LockKind::Manual => None,
                LockKind::Deploy => {
                    // etcd leases are whole seconds.
                    let ttl = inner.lock_ttl.as_secs_f64().ceil().max(1.0) as i64;
                    granted_at = Instant::now();
                    let answer = inner
                        .call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))
                        .await
                        .map_err(|f| inner.error(f))?;
                    let id = answer.get("ID").map(number).unwrap_or(0);
                    // etcd may raise a TTL below its minimum: renew by what it granted.
                    let granted = answer.get("TTL").map(number).unwrap_or(0).max(ttl);
                    if id == 0 {
                        return Err(inner.error(Failure::Broken {
                            endpoint: inner.endpoints.join(","),
                            message: format!("/v3/lease/grant answered without a lease: {answer}"),
                        }));
                    }
                    Some((id, Duration::from_secs(granted as u64)))
                }
            };
            let mut put = json!({ "key": k, "value": value });
            if let Some((id, _)) = lease {
                put["lease"] = json!(id.to_string());
            }
            let outcome = inner
                .txn(
                    &key,
                    json!({ "target": "CREATE", "result": "EQUAL", "key": k, "create_revision": "0" }),
                    json!({ "request_put": put }),
                )
                .await;
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    if let Some((id, _)) = lease {
                        let _ = inner.revoke(id).await;
                    }
                    return Err(e);
                }
            };
            match outcome {
                Ok(create_revision) => {
                    let lost = CancellationToken::new();
                    let stop = CancellationToken::new();
                    if let Some((id, ttl)) = lease {
                        let holding = Holding {
                            inner: Arc::clone(inner),
                            name: record.name.clone(),
                            lease: id,
                            create_revision,
                            ttl,
                            granted_at,
                            lost: lost.clone(),
                            stop: stop.clone(),
                        };
                        tokio::spawn(holding.run());
                    }
                    return Ok(Acquired::Held(Box::new(EtcdGuard {
                        inner: Arc::clone(inner),
                        name: record.name.clone(),
                        lease: lease.map(|(id, _)| id),
                        create_revision,
                        lost,
                        stop_keepalive: Some(stop.drop_guard()),
                    })));
                }
                Err(current) => {
                    if let Some((id, _)) = lease {
                        inner.revoke(id).await?;
                    }
                    if let Some(kv) = current {
                        return Ok(Acquired::Busy(inner.record(&record.name, &kv)?));
                    }
                    // Freed between the compare and the read: try again.
                }
            }
        }
        Err(StoreError::Unavailable {
            store: inner.describe(),
            message: format!(
                "lock `{}` kept changing while taking it; retry",
                record.name
            ),
        })
    }

    async fn lock_status(&self, name: &str) -> Result<Option<LockRecord>, StoreError> {
        match self.inner.range(&lock_key(name)).await? {
            Some(kv) => Ok(Some(self.inner.record(name, &kv)?)),
            None => Ok(None),
        }
    }

    async fn break_lock(&self, name: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let key = lock_key(name);
        for _ in 0..LOCK_ATTEMPTS {
            let Some(kv) = inner.range(&key).await? else {
                return Ok(false);
            };
            if inner.delete_if(&key, kv.mod_revision).await? {
                // The holder's next keepalive finds no lease: its lost() fires.
                if kv.lease != 0 {
                    inner.revoke(kv.lease).await?;
                }
                return Ok(true);
            }
        }
        Err(StoreError::Unavailable {
            store: inner.describe(),
            message: format!("lock `{name}` kept changing while breaking it; retry"),
        })
    }
}
