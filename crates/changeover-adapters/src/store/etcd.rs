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

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use changeover_core::plan::EtcdSpec;
use changeover_core::store::{
    lock_key, Acquired, Expect, LockGuard, LockKind, LockRecord, Revision, Store, StoreError,
    Versioned,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

/// gRPC status codes etcd puts in its error answers.
const CODE_INVALID_ARGUMENT: i64 = 3;
const CODE_NOT_FOUND: i64 = 5;
const CODE_PERMISSION_DENIED: i64 = 7;
const CODE_UNAUTHENTICATED: i64 = 16;

/// How many times a lock operation that raced another writer is tried.
const LOCK_ATTEMPTS: usize = 5;

/// A store in an etcd v3 cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    endpoints: Vec<String>,
    prefix: String,
    login: Option<Login>,
    token: Mutex<Option<String>>,
    lock_ttl: Duration,
    timeout: Duration,
    /// The endpoint that answered last: tried first.
    current: AtomicUsize,
}

struct Login {
    username: String,
    password: String,
}

/// Why one call failed, before it becomes a [`StoreError`].
#[derive(Debug)]
enum Failure {
    /// No endpoint could be connected to.
    Unreachable(String),
    /// `endpoint` answered with an error.
    Etcd {
        endpoint: String,
        status: u16,
        code: i64,
        message: String,
    },
    /// `endpoint` was connected to but gave no usable answer (timeout,
    /// cut connection, not JSON).
    Broken { endpoint: String, message: String },
    /// `endpoint` refused us before any answer (the TLS client certificate).
    Refused { endpoint: String, message: String },
    /// The password variable is missing, the TLS files are unreadable, …
    Setup(String),
}

impl Failure {
    fn is_not_found(&self) -> bool {
        matches!(self, Failure::Etcd { code, .. } if *code == CODE_NOT_FOUND)
    }

    /// The token expired, or etcd restarted and forgot it.
    fn is_stale_token(&self) -> bool {
        match self {
            Failure::Etcd { code, message, .. } => {
                *code == CODE_UNAUTHENTICATED
                    || message.contains("invalid auth token")
                    || message.contains("auth store is old")
            }
            _ => false,
        }
    }
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

impl Inner {
    fn new(spec: &EtcdSpec) -> Result<Inner, StoreError> {
        let name = format!("etcd {}", spec.endpoints.join(","));
        let setup = |message: String| StoreError::Denied {
            store: name.clone(),
            message,
        };
        if spec.endpoints.is_empty() {
            return Err(setup("no endpoints".into()));
        }
        let mut builder = reqwest::Client::builder()
            // The cluster is on a private network; a proxy from the
            // operator's environment would not reach it.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(spec.timeout)
            .connect_timeout(spec.timeout)
            .user_agent(concat!("changeover/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &spec.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| setup(format!("cannot read ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                setup(format!(
                    "ca_file {} is not PEM certificates: {}",
                    ca.display(),
                    error_chain(&e)
                ))
            })?;
            builder = builder.tls_certs_only(certs);
        }
        match (&spec.cert_file, &spec.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert)
                    .map_err(|e| setup(format!("cannot read cert_file {}: {e}", cert.display())))?;
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(key).map_err(|e| {
                        setup(format!("cannot read key_file {}: {e}", key.display()))
                    })?,
                );
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    setup(format!(
                        "cert_file {} + key_file {} are not a PEM certificate and key: {}",
                        cert.display(),
                        key.display(),
                        error_chain(&e)
                    ))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(setup(
                    "a client certificate needs both cert_file and key_file".into(),
                ))
            }
        }
        let client = builder.build().map_err(|e| {
            setup(format!(
                "cannot set up the HTTP client: {}",
                error_chain(&e)
            ))
        })?;
        let login = match (&spec.username, &spec.password_env) {
            (Some(username), Some(var)) => {
                let password = std::env::var(var).map_err(|_| {
                    setup(format!(
                        "the environment variable {var} (password_env, the password of etcd user {username}) is not set"
                    ))
                })?;
                Some(Login {
                    username: username.clone(),
                    password,
                })
            }
            (None, None) => None,
            _ => {
                return Err(setup(
                    "etcd authentication needs both username and password_env".into(),
                ))
            }
        };
        let prefix = if spec.prefix.ends_with('/') {
            spec.prefix.clone()
        } else {
            format!("{}/", spec.prefix)
        };
        Ok(Inner {
            client,
            endpoints: spec
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            prefix,
            login,
            token: Mutex::new(None),
            lock_ttl: spec.lock_ttl,
            timeout: spec.timeout,
            current: AtomicUsize::new(0),
        })
    }

    fn describe(&self) -> String {
        format!("etcd {} {}", self.endpoints.join(","), self.prefix)
    }

    /// Never lets the password (or the token) through, whatever a library
    /// put in a message.
    fn redact(&self, text: String) -> String {
        let mut text = text;
        if let Some(login) = &self.login {
            if !login.password.is_empty() {
                text = text.replace(&login.password, "<password>");
            }
        }
        if let Some(token) = self.token.lock().unwrap().as_ref() {
            if !token.is_empty() {
                text = text.replace(token.as_str(), "<token>");
            }
        }
        text
    }

    fn error(&self, failure: Failure) -> StoreError {
        match failure {
            Failure::Unreachable(message) => StoreError::Unavailable {
                store: format!("etcd {}", self.endpoints.join(",")),
                message: self.redact(message),
            },
            Failure::Setup(message) => StoreError::Denied {
                store: format!("etcd {}", self.endpoints.join(",")),
                message: self.redact(message),
            },
            Failure::Broken { endpoint, message } => StoreError::Unavailable {
                store: format!("etcd {endpoint}"),
                message: self.redact(message),
            },
            Failure::Refused { endpoint, message } => StoreError::Denied {
                store: format!("etcd {endpoint}"),
                message: self.redact(message),
            },
            Failure::Etcd {
                endpoint,
                status,
                code,
                message,
            } => {
                let store = format!("etcd {endpoint}");
                let denied = status == 401
                    || status == 403
                    || code == CODE_UNAUTHENTICATED
                    || code == CODE_PERMISSION_DENIED
                    || (code == CODE_INVALID_ARGUMENT
                        && (message.contains("authentication failed")
                            || message.contains("user name is empty")));
                let message = if code == CODE_PERMISSION_DENIED {
                    match &self.login {
                        Some(l) => format!(
                            "{message} (etcd user {} may not use keys under {})",
                            l.username, self.prefix
                        ),
                        None => format!("{message} (keys under {})", self.prefix),
                    }
                } else if message.contains("user name is empty") {
                    format!("{message}: this cluster requires authentication; set username and password_env in [store]")
                } else {
                    message
                };
                let message = self.redact(message);
                if denied {
                    StoreError::Denied { store, message }
                } else {
                    StoreError::Unavailable { store, message }
                }
            }
        }
    }

    fn corrupt(&self, key: &str, message: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            store: self.describe(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// The full etcd key of a relative one, base64.
    fn key(&self, key: &str) -> Result<String, StoreError> {
        if key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(StoreError::Unavailable {
                store: self.describe(),
                message: format!("invalid key `{key}`"),
            });
        }
        Ok(B64.encode(format!("{}{key}", self.prefix)))
    }

    /// One call, with the token, re-authenticating once when it went stale.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call_timeout(path, body, None).await
    }

    async fn call_timeout(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value, Failure> {
        let token = self.token.lock().unwrap().clone();
        match self.send(path, body, token.as_deref(), timeout).await {
            Err(f) if f.is_stale_token() && self.login.is_some() => {
                self.authenticate().await?;
                let token = self.token.lock().unwrap().clone();
                self.send(path, body, token.as_deref(), timeout).await
            }
            other => other,
        }
    }

    async fn authenticate(&self) -> Result<(), Failure> {
        let Some(login) = &self.login else {
            return Ok(());
        };
        let body = json!({ "name": login.username, "password": login.password });
        let answer = self
            .send("/v3/auth/authenticate", &body, None, None)
            .await?;
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::Setup(
                    "etcd accepted the login but sent no token: is authentication enabled on the cluster?"
                        .into(),
                )
            })?;
        *self.token.lock().unwrap() = Some(token.to_string());
        Ok(())
    }

    /// POST `body` to `path` on the first endpoint that can be connected to.
    async fn send(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Value, Failure> {
        let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut unreachable = Vec::new();
        for i in 0..n {
            let index = (first + i) % n;
            let endpoint = &self.endpoints[index];
            let mut request = self
                .client
                .post(format!("{endpoint}{path}"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.clone());
            if let Some(token) = token {
                request = request.header(reqwest::header::AUTHORIZATION, token);
            }
            let limit = timeout.unwrap_or(self.timeout);
            if let Some(t) = timeout {
                request = request.timeout(t);
            }
            let response = match request.send().await {
                Ok(r) => r,
                // Nothing was sent: the next endpoint may do.
                Err(e) if e.is_connect() => {
                    unreachable.push(format!("{endpoint}: {}", reason(&e)));
                    continue;
                }
                // Sent, perhaps applied: trying elsewhere could apply it twice.
                Err(e) if e.is_timeout() => {
                    return Err(Failure::Broken {
                        endpoint: endpoint.clone(),
                        message: format!("no answer to {path} within {}", secs(limit)),
                    })
                }
                Err(e) => {
                    let why = reason(&e);
                    // TLS 1.3: a refused client certificate only shows on
                    // the first read, as an alert from the server.
                    if CLIENT_CERT_ALERTS.iter().any(|a| why.contains(a)) {
                        return Err(Failure::Refused {
                            endpoint: endpoint.clone(),
                            message: format!(
                                "etcd refused the client certificate (cert_file, key_file): {why}"
                            ),
                        });
                    }
                    return Err(Failure::Broken {
                        endpoint: endpoint.clone(),
                        message: format!("{path}: {why}"),
                    });
                }
            };
            self.current.store(index, Ordering::Relaxed);
            let status = response.status();
            let body = response.bytes().await.map_err(|e| Failure::Broken {
                endpoint: endpoint.clone(),
                message: if e.is_timeout() {
                    format!("no answer to {path} within {}", secs(limit))
                } else {
                    format!("{path}: {}", reason(&e))
                },
            })?;
            // A streaming call (keepalive) answers `{"result": …}` or
            // `{"error": …}`; take the first document.
            let parsed: Option<Value> = serde_json::Deserializer::from_slice(&body)
                .into_iter::<Value>()
                .next()
                .and_then(Result::ok);
            let parsed = match parsed {
                Some(Value::Object(mut o)) if o.contains_key("result") && o.len() == 1 => {
                    o.remove("result").unwrap_or(Value::Null)
                }
                Some(Value::Object(mut o))
                    if o.len() == 1 && o.get("error").is_some_and(Value::is_object) =>
                {
                    o.remove("error").unwrap_or(Value::Null)
                }
                Some(v) => v,
                None => {
                    let text = String::from_utf8_lossy(&body);
                    return Err(Failure::Broken {
                        endpoint: endpoint.clone(),
                        message: format!(
                            "{path} answered HTTP {status} with something that is not JSON: {}",
                            text.chars().take(200).collect::<String>()
                        ),
                    });
                }
            };
            let code = parsed.get("code").map(number).unwrap_or(0);
            if status.is_success() && code == 0 {
                return Ok(parsed);
            }
            let message = parsed
                .get("message")
                .or_else(|| parsed.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(Failure::Etcd {
                endpoint: endpoint.clone(),
                status: status.as_u16(),
                code,
                message: format!("{path}: {message}"),
            });
        }
        Err(Failure::Unreachable(format!(
            "cannot connect to any endpoint ({})",
            unreachable.join("; ")
        )))
    }

    async fn range(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let k = self.key(key)?;
        let answer = self
            .call("/v3/kv/range", &json!({ "key": k }))
            .await
            .map_err(|f| self.error(f))?;
        let kvs = parse_kvs(&answer).map_err(|e| self.corrupt(key, e))?;
        Ok(kvs.into_iter().next())
    }

    fn versioned(&self, key: &str, kv: &Kv) -> Result<Versioned, StoreError> {
        let value = serde_json::from_slice(&kv.value)
            .map_err(|e| self.corrupt(key, format!("not JSON: {e}")))?;
        Ok(Versioned {
            value,
            revision: kv.mod_revision as Revision,
        })
    }

    fn record(&self, name: &str, kv: &Kv) -> Result<LockRecord, StoreError> {
        serde_json::from_slice(&kv.value)
            .map_err(|e| self.corrupt(&lock_key(name), format!("not a lock record: {e}")))
    }

    /// A txn: `compare` → `success`, else read `key`. `Ok(Ok(revision))`
    /// when it succeeded, `Ok(Err(current))` with what is there instead.
    async fn txn(
        &self,
        key: &str,
        compare: Value,
        success: Value,
    ) -> Result<Result<i64, Option<Kv>>, StoreError> {
        let k = self.key(key)?;
        let answer = self
            .call(
                "/v3/kv/txn",
                &json!({
                    "compare": [compare],
                    "success": [success],
                    "failure": [{ "request_range": { "key": k } }],
                }),
            )
            .await
            .map_err(|f| self.error(f))?;
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(Ok(header_revision(&answer)));
        }
        let range = answer
            .get("responses")
            .and_then(|r| r.get(0))
            .and_then(|r| r.get("response_range"))
            .cloned()
            .unwrap_or(Value::Null);
        let kvs = parse_kvs(&range).map_err(|e| self.corrupt(key, e))?;
        Ok(Err(kvs.into_iter().next()))
    }

    async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        match self
            .call("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))
            .await
        {
            Ok(_) => Ok(()),
            Err(f) if f.is_not_found() => Ok(()),
            Err(f) => Err(self.error(f)),
        }
    }

    /// Delete `key` if it is still at `mod_revision`; `true` when it was.
    async fn delete_if(&self, key: &str, mod_revision: i64) -> Result<bool, StoreError> {
        let k = self.key(key)?;
        let outcome = self
            .txn(
                key,
                json!({ "target": "MOD", "result": "EQUAL", "key": k, "mod_revision": mod_revision.to_string() }),
                json!({ "request_delete_range": { "key": k } }),
            )
            .await?;
        Ok(outcome.is_ok())
    }

    /// Renew `lease` once; the TTL etcd gives it now (0: gone).
    async fn keepalive_once(&self, lease: i64, timeout: Duration) -> Result<i64, Failure> {
        let answer = self
            .call_timeout(
                "/v3/lease/keepalive",
                &json!({ "ID": lease.to_string() }),
                Some(timeout),
            )
            .await?;
        Ok(answer.get("TTL").map(number).unwrap_or(0))
    }
}

/// What the keepalive task needs.
struct Holding {
    inner: Arc<Inner>,
    name: String,
    lease: i64,
    create_revision: i64,
    ttl: Duration,
    /// When the lease grant was sent: the lease runs from about then.
    granted_at: Instant,
    lost: CancellationToken,
    stop: CancellationToken,
}

impl Holding {
    async fn run(self) {
        use tokio::time::{sleep_until, Instant};
        let every = self.ttl / 3;
        // A renewal sent at `t` vouches for the lock until `t + TTL`: past
        // that the lease may be gone without our knowing.
        let mut vouched_until = Instant::from_std(self.granted_at) + self.ttl;
        let why = loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = sleep_until((Instant::now() + every).min(vouched_until)) => {}
            }
            if Instant::now() >= vouched_until {
                break format!(
                    "lock `{}`: its lease could not be renewed for {} (the TTL): etcd unreachable",
                    self.name,
                    secs(self.ttl)
                );
            }
            let sent = Instant::now();
            let limit = every
                .min(self.inner.timeout)
                .max(Duration::from_millis(200));
            let renewed = tokio::select! {
                _ = self.stop.cancelled() => return,
                // The loop's top says why.
                _ = sleep_until(vouched_until) => continue,
                r = self.inner.keepalive_once(self.lease, limit) => r,
            };
            match renewed {
                Ok(ttl) if ttl > 0 => vouched_until = sent + Duration::from_secs(ttl as u64),
                Ok(_) => break format!("lock `{}`: its lease expired or was revoked", self.name),
                Err(f) if f.is_not_found() => {
                    break format!("lock `{}`: its lease expired or was revoked", self.name)
                }
                // Tried again at the next tick, until the TTL runs out.
                Err(_) => continue,
            }
            // The lease lives; is the key still the one we created?
            let ours = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = tokio::time::timeout(every, self.still_ours()) => r,
            };
            if let Ok(Ok(false)) = ours {
                break format!(
                    "lock `{}` was taken away (its key is gone or someone else's)",
                    self.name
                );
            }
        };
        if !self.stop.is_cancelled() {
            tracing::warn!("{why}");
            self.lost.cancel();
        }
    }

    async fn still_ours(&self) -> Result<bool, StoreError> {
        Ok(match self.inner.range(&lock_key(&self.name)).await? {
            Some(kv) => kv.create_revision == self.create_revision && kv.lease == self.lease,
            None => false,
        })
    }
}

struct EtcdGuard {
    inner: Arc<Inner>,
    name: String,
    lease: Option<i64>,
    create_revision: i64,
    lost: CancellationToken,
    /// Stops the keepalive task when the guard goes, released or not.
    stop_keepalive: Option<DropGuard>,
}

#[async_trait]
impl LockGuard for EtcdGuard {
    fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    async fn release(mut self: Box<Self>) -> Result<(), StoreError> {
        drop(self.stop_keepalive.take());
        let key = lock_key(&self.name);
        // Delete the key only if it is still the one we created.
        if let Some(kv) = self.inner.range(&key).await? {
            if kv.create_revision == self.create_revision {
                self.inner.delete_if(&key, kv.mod_revision).await?;
            }
        }
        if let Some(lease) = self.lease {
            self.inner.revoke(lease).await?;
        }
        Ok(())
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

/// One key-value of a range answer, decoded.
#[derive(Debug)]
struct Kv {
    key: Vec<u8>,
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    lease: i64,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    create_revision: Value,
    #[serde(default)]
    mod_revision: Value,
    #[serde(default)]
    lease: Value,
}

/// The `kvs` of a range answer (absent when empty).
fn parse_kvs(answer: &Value) -> Result<Vec<Kv>, String> {
    let Some(kvs) = answer.get("kvs") else {
        return Ok(Vec::new());
    };
    let raw: Vec<RawKv> =
        serde_json::from_value(kvs.clone()).map_err(|e| format!("unexpected range answer: {e}"))?;
    raw.into_iter()
        .map(|r| {
            Ok(Kv {
                key: B64
                    .decode(&r.key)
                    .map_err(|e| format!("key is not base64: {e}"))?,
                value: B64
                    .decode(&r.value)
                    .map_err(|e| format!("value is not base64: {e}"))?,
                create_revision: number(&r.create_revision),
                mod_revision: number(&r.mod_revision),
                lease: number(&r.lease),
            })
        })
        .collect()
}

/// The gateway writes 64-bit numbers as strings, and leaves zeros out.
fn number(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn header_revision(answer: &Value) -> i64 {
    answer
        .get("header")
        .and_then(|h| h.get("revision"))
        .map(number)
        .unwrap_or(0)
}

/// The smallest key after every key starting with `prefix` (etcd's
/// `range_end` for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the key space.
    vec![0]
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// TLS alerts a server sends when it does not accept our certificate.
const CLIENT_CERT_ALERTS: &[&str] = &[
    "received fatal alert: BadCertificate",
    "received fatal alert: CertificateRequired",
    "received fatal alert: UnknownCA",
    "received fatal alert: CertificateUnknown",
    "received fatal alert: CertificateExpired",
    "received fatal alert: AccessDenied",
];

/// Why a request failed, without reqwest's "error sending request for url
/// (…)" (the endpoint is named beside it anyway), with a hint for a server
/// certificate the client does not trust.
fn reason(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    let mut text = if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    };
    text = text.replace('\n', " ");
    if text.contains("invalid peer certificate") {
        text.push_str(" (is ca_file the CA that signed etcd's certificate?)");
    }
    text
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    fn inner(password: &str) -> Inner {
        let spec = EtcdSpec {
            endpoints: vec!["http://127.0.0.1:9".into()],
            prefix: "/changeover/shop/".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_env: None,
            lock_ttl: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        };
        let mut inner = Inner::new(&spec).expect("a client");
        inner.login = Some(Login {
            username: "deployer".into(),
            password: password.into(),
        });
        inner
    }

    fn etcd_failure(status: u16, code: i64, message: &str) -> Failure {
        Failure::Etcd {
            endpoint: "http://127.0.0.1:9".into(),
            status,
            code,
            message: message.into(),
        }
    }

    #[test]
    fn refusals_are_denied_and_outages_unavailable() {
        let inner = inner("pw");
        let denied = [
            etcd_failure(
                400,
                3,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            etcd_failure(401, 16, "etcdserver: invalid auth token"),
            etcd_failure(403, 7, "etcdserver: permission denied"),
            etcd_failure(400, 3, "etcdserver: user name is empty"),
        ];
        for f in denied {
            let e = inner.error(f);
            assert!(matches!(e, StoreError::Denied { .. }), "{e:?}");
            assert!(
                e.to_string().starts_with("etcd http://127.0.0.1:9: "),
                "{e}"
            );
        }
        let unavailable = [
            etcd_failure(503, 14, "etcdserver: no leader"),
            etcd_failure(500, 2, "etcdserver: request timed out"),
        ];
        for f in unavailable {
            let e = inner.error(f);
            assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        }
        let e = inner.error(Failure::Unreachable("cannot connect".into()));
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    }

    #[test]
    fn errors_never_carry_the_password_or_the_token() {
        let inner = inner("hunter2-secret");
        *inner.token.lock().unwrap() = Some("tok.en-123".into());
        let e = inner.error(etcd_failure(
            400,
            3,
            "echoing hunter2-secret and tok.en-123 back",
        ));
        let text = e.to_string();
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(!text.contains("tok.en-123"), "{text}");
        assert!(
            text.contains("<password>") && text.contains("<token>"),
            "{text}"
        );
        let debug = format!(
            "{:?}",
            EtcdStore {
                inner: Arc::new(inner)
            }
        );
        assert!(
            !debug.contains("hunter2-secret") && !debug.contains("tok.en-123"),
            "{debug}"
        );
    }

    #[test]
    fn a_missing_password_variable_is_denied_by_name() {
        let spec = EtcdSpec {
            endpoints: vec!["http://127.0.0.1:9".into()],
            prefix: "/changeover/shop/".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: Some("deployer".into()),
            password_env: Some("CHANGEOVER_UNIT_TEST_NO_SUCH_VARIABLE".into()),
            lock_ttl: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        };
        let Err(e) = Inner::new(&spec) else {
            panic!("connected without a password");
        };
        assert!(matches!(e, StoreError::Denied { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("CHANGEOVER_UNIT_TEST_NO_SUCH_VARIABLE"),
            "{e}"
        );
    }

    #[test]
    fn keys_are_under_the_prefix_and_checked() {
        let inner = inner("pw");
        let k = inner.key("pointers/production").unwrap();
        assert_eq!(
            B64.decode(k).unwrap(),
            b"/changeover/shop/pointers/production"
        );
        for bad in ["", "/abs", "a//b", "a/../b", "trailing/"] {
            assert!(inner.key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numbers_come_as_strings_or_not_at_all() {
        assert_eq!(number(&json!("42")), 42);
        assert_eq!(number(&json!(7)), 7);
        assert_eq!(number(&Value::Null), 0);
    }
}
