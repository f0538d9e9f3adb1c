//! A FAKE Consul agent: an in-process HTTP/1 server on `127.0.0.1:<free
//! port>` that answers a subset of Consul's HTTP API. No Consul can be
//! installed where these tests run, so this is written from Consul's HTTP API
//! documentation (the `/kv`, `/session`, `/health`, `/catalog`, `/status`
//! pages, "Blocking Queries", "HTTP API Structure" and the sessions overview),
//! with error texts and edge cases read from Consul's source where the
//! documentation is silent. It is NOT Consul: what it does not list below, it
//! does not do.
//!
//! It runs on a thread of its own with its own tokio runtime, so synchronous
//! `#[test]`s, async tests and other processes (over TCP) can all use it;
//! dropping the [`ConsulFake`] stops the server and joins the thread.
//!
//! ```no_run
//! use changeover_testkit::consul::{CheckStatus, ConsulFake, ServiceInstance};
//! let consul = ConsulFake::builder().acl_token("s3cret").ttl_factor(0.1).start();
//! let mut web = ServiceInstance::new("node-1", "10.0.0.1", "web");
//! web.port = 8080;
//! consul.register(web);
//! // ... point the product at consul.address() with token "s3cret" ...
//! consul.set_status("web-node-1", CheckStatus::Critical);
//! assert!(consul.requests().iter().all(|r| r.had_token));
//! ```
//!
//! # What it implements
//!
//! - **One index**, like the Raft index: it starts at 10 and every write
//!   takes the next one: each KV `PUT`/`DELETE` that reaches the apply step
//!   (a failed CAS too, as a Raft apply; a lock refused by lock delay is not
//!   a write), session create/destroy, each TTL expiry, and
//!   `register`/`deregister`/`set_status`. A session renew is no write (the
//!   leader only resets its timer).
//! - **Per-endpoint `X-Consul-Index`**, as Consul's state store computes it,
//!   so it never goes backwards and changes whenever the answer does (and
//!   sometimes when it does not, which Consul allows too):
//!   a single key: its `ModifyIndex`, or the KV table's index when missing;
//!   `?recurse`/`?keys`: the newest `ModifyIndex` or deletion (tombstone)
//!   under the prefix, else the KV table's index; sessions: the sessions
//!   table's index; health/catalog of a service: the last change to any
//!   instance of that service (its node, service or check), or the catalog's
//!   index for a service never registered. Indexes are never below 1.
//!   Read answers carry `X-Consul-Index`, `X-Consul-KnownLeader: true` and
//!   `X-Consul-LastContact: 0`; every answer carries
//!   `X-Consul-Default-ACL-Policy` (`deny` with a token set, else `allow`).
//! - **Blocking queries** on every read endpoint: `?index=N&wait=D` (Go
//!   durations: "100ms", "5s", "1m30s"; default 5m, capped at 10m; a bad one
//!   is 400 "Invalid wait time" / "Invalid index") holds the request until
//!   the endpoint's index is above N, woken by each write through a tokio
//!   `watch` channel (no polling), or until the wait is over (then it
//!   answers the data as it is). Consul adds up to wait/16 of random
//!   jitter; the fake adds none.
//! - `GET /v1/status/leader`: `"127.0.0.1:8300"`; no token needed.
//! - `GET /v1/health/service/<s>` and `GET /v1/catalog/service/<s>`: the
//!   documented shapes (health: `Node`, `Service`, `Checks` with the service
//!   check `service:<id>` and the node's `serfHealth`, always passing);
//!   `?tag=` (repeatable, all must match, case-insensitive as in Consul),
//!   `?node-meta=k:v`, health's `?passing` (every check passing; a warning
//!   does not pass), blocking. Unknown service: `[]`. Sorted by node, then
//!   service ID. `Service.Address` may be empty: clients use the node's.
//! - **KV** `/v1/kv/<key>`: `GET` (404 with an empty body when missing),
//!   `?recurse` (404 when nothing), `?keys` with `?separator=` (404 when
//!   nothing under a non-empty prefix, `[]` for the root), `?raw`
//!   (`text/plain`). `PUT` answers `true`/`false`: `?flags=` (a write
//!   without it sets flags 0, as in Consul), `?cas=0` (only if absent),
//!   `?cas=N` (only if `ModifyIndex` is N), `?acquire=<session>` (needs an
//!   existing session: a missing one is 500 `invalid session "<id>"`, a
//!   malformed ID 500 "failed session lookup: index error: UUID must be 36
//!   characters", an empty one 500 "missing session"; takes an unheld lock,
//!   incrementing `LockIndex`; re-acquiring one's own lock only updates the
//!   value; `false` if another session holds it), `?release=<session>`
//!   (only the holder; clears `Session`, keeps `LockIndex`, and, as in
//!   Consul, stores the request body as the new value). A plain `PUT` on a
//!   locked key succeeds and keeps the lock. More than one of
//!   cas/acquire/release: 400 "Conflicting flags: ...". A body over 512 KiB:
//!   413 "Value exceeds 524288 byte limit" (older Consul's text; current
//!   versions say "Request body(N bytes) too large, max size: 524288
//!   bytes..."). A write that changes nothing keeps the key's
//!   `ModifyIndex`. `DELETE`: plain and `?recurse` answer `true`; `?cas=N`
//!   answers whether it deleted (a missing key counts as deleted, 0 never
//!   deletes). Boolean parameters count by presence, as in Consul
//!   (`?recurse=false` still recurses).
//! - **Keys with a leading `/`**: Go's ServeMux redirects a path that is not
//!   clean, so `/v1/kv//a` (like `/./`, `/../`) answers 301 with `Location:
//!   /v1/kv/a` and never reaches the KV handler (a client that follows it
//!   turns a `PUT` into a `GET`); a percent-encoded leading slash (`%2F`) is
//!   400 "key must not begin with a '/'" as in current Consul.
//! - **Sessions**: `PUT /v1/session/create` with `Name`, `Node` (default:
//!   the agent's node [`AGENT_NODE`]; an unknown node is 500 "Missing node
//!   registration"), `TTL` (10s to 86400s, else 500 "Invalid Session TTL
//!   '<ns>', must be between [10s=24h0m0s]"), `Behavior` ("release" default
//!   or "delete", else 500 "Invalid Behavior setting '<b>'"), `LockDelay`
//!   (default 15s; a string or nanoseconds, under 1000 meaning seconds;
//!   capped at 60s when applied; "0s" turns it off), `NodeChecks`/`Checks`
//!   (default `["serfHealth"]`), `ServiceChecks` (`[{"ID": ...}]`); each
//!   check must exist on the node and not be critical. Keys in any case; a
//!   body that does not decode is 400 "Request decode failed: ...".
//!   `PUT /v1/session/destroy/<id>` answers `true` (unknown too);
//!   `PUT /v1/session/renew/<id>` answers a one-element array, or 404
//!   "Session id '<id>' not found"; `GET /v1/session/info/<id>` (`[]` when
//!   unknown), `/v1/session/list`, `/v1/session/node/<node>`, blocking.
//! - **Invalidation** (destroy, TTL expiry, a watched check going critical
//!   or being deregistered): every key the session holds is released
//!   (`Session` cleared, key kept, `ModifyIndex` bumped) or deleted
//!   (behavior "delete"), and then the **lock delay** applies: `?acquire` on
//!   those keys answers `false` until it has passed (a voluntary
//!   `?release` starts no lock delay).
//! - **TTL**: Consul treats a TTL as a lower bound and may wait up to twice
//!   it; the fake invalidates at exactly TTL x [`ConsulBuilder::ttl_factor`]
//!   (default 1.0) after creation or the last renew, from a background task,
//!   with no request needed. The factor exists so that tests can use
//!   Consul's minimum TTL (10s) and still run fast; a factor below 1 makes
//!   the fake stricter than any Consul.
//! - **ACL**, with [`ConsulBuilder::acl_token`]: one token that may do
//!   everything, taken from `?token=`, `X-Consul-Token` or `Authorization:
//!   Bearer` (Consul's order). As in Consul: an unknown token is 403 "ACL
//!   not found" on every endpoint; no token means the anonymous token with
//!   default policy deny, which gets 403 "Permission denied: anonymous token
//!   lacks permission '<resource>:<level>' on "<name>". ..." for single-key
//!   reads and every write, while list reads are filtered instead of
//!   refused (health/catalog/session lists `[]`, `?recurse` 404, `?keys`
//!   404 or `[]`). `/v1/status/leader` needs no token.
//! - **Transactions** (`PUT /v1/txn`), KV operations only: every verb of the
//!   docs' table (`set`, `cas`, `lock`, `unlock`, `get`, `get-or-empty`,
//!   `get-tree`, `check-index`, `check-session`, `check-not-exists`,
//!   `delete`, `delete-tree`, `delete-cas`), all or nothing at one index;
//!   200 with `Results` (none for deletes and checks, `Value` null but for
//!   the `get` verbs) or 409 with `Errors` (`OpIndex`, `What`); the lock
//!   delay refuses a `lock` before anything applies; over 128 operations
//!   is 413.
//! - **HTTPS** with [`ConsulBuilder::tls`]: a certificate for 127.0.0.1
//!   signed by a CA generated for the fake ([`ConsulFake::ca_file`]); no
//!   client certificates (`verify_incoming` off).
//! - `?dc=<other>`: 500 "No path to datacenter".
//! - [`ConsulFake::set_outage`]: every request answers 500 "rpc error making
//!   call: No cluster leader" (what a client agent relays when the servers
//!   have no leader), except `/v1/status/leader`, which answers `""` (no
//!   leader) as Consul does. Blocking queries already waiting go on.
//! - Wrong method: 405 "method X not allowed" with `Allow`; unknown path:
//!   404 "404 page not found"; `?pretty`: indented JSON. Every request is
//!   logged ([`ConsulFake::requests`]), the token never (a `token=` value in
//!   the query is logged as `<hidden>`).
//!
//! # What it does not implement
//!
//! No Raft, servers, gossip or leader election (the outage switch stands in);
//! one datacenter (others only fail the name check); no ACL policies, roles
//! or token API beyond the one all-powerful token; no `?filter` expressions
//! (400, so a test cannot silently rely on one), no `?near` sorting, no
//! consistency modes (`?stale`, `?consistent` are accepted and ignored), no
//! agent caching, hash-based blocking or streaming; no namespaces,
//! partitions or peers (Enterprise); no `Node`/`Service`/`Check` operations in
//! `/v1/txn` (400), no `/v1/agent/*`,
//! `/v1/catalog/register`, other health or catalog endpoints, prepared
//! queries, events or Connect. Checks are set from the test, never run. A
//! node stays once registered; service IDs are unique across nodes. The
//! newest Consul sources also refuse KV keys outside `[A-Za-z0-9,-_./]` or
//! ending like a file name (`.json`, ...); the fake does not.

mod catalog;
mod duration;
mod http;
mod kv;
mod session;
mod state;
mod txn;
mod url;

use state::{Config, Shared};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// The name of the agent's own node: a session's node unless it names one.
pub const AGENT_NODE: &str = "consul-fake";
/// Consul's limit on a KV value (512 KiB).
pub const MAX_VALUE_SIZE: usize = 524_288;

/// A health check's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    /// As Consul spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }
}

/// One service instance on one node, with one service check.
#[derive(Clone, Debug)]
pub struct ServiceInstance {
    pub node: String,
    pub node_address: String,
    pub node_meta: BTreeMap<String, String>,
    pub service: String,
    pub id: String,
    /// May be empty: then clients use the node address.
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub status: CheckStatus,
}

impl ServiceInstance {
    /// ID `<service>-<node>`, port 0, empty address, passing.
    pub fn new(node: &str, node_address: &str, service: &str) -> Self {
        ServiceInstance {
            node: node.to_string(),
            node_address: node_address.to_string(),
            node_meta: BTreeMap::new(),
            service: service.to_string(),
            id: format!("{service}-{node}"),
            address: String::new(),
            port: 0,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            status: CheckStatus::Passing,
        }
    }
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    /// As received (percent-encoding kept).
    pub path: String,
    /// As received, except a `token=` value, logged as `<hidden>`.
    pub query: String,
    /// It carried the configured token (with no token configured: any
    /// token). The token itself is never logged.
    pub had_token: bool,
    /// The body (lossy UTF-8).
    pub body: String,
}

/// A KV entry, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    /// The session holding the lock.
    pub session: Option<String>,
}

/// A live session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: String,
    pub name: String,
    pub ttl: Option<Duration>,
    pub behavior: String,
    pub lock_delay: Duration,
}

/// Options for [`ConsulFake`]; [`ConsulBuilder::start`] runs it.
#[derive(Clone, Debug)]
pub struct ConsulBuilder {
    acl_token: Option<String>,
    datacenter: String,
    ttl_factor: f64,
    tls: bool,
}

impl ConsulBuilder {
    /// Turn ACLs on with this one token (see the module doc for what a
    /// request without it, or with another, gets).
    pub fn acl_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        assert!(!token.is_empty(), "an empty ACL token is no token");
        self.acl_token = Some(token);
        self
    }

    /// Serve HTTPS only, with a certificate for 127.0.0.1 signed by a CA
    /// generated for this fake ([`ConsulFake::ca_file`]), as an agent with
    /// `ports.https` and `verify_incoming = false` does.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// The datacenter's name (default "dc1"); `?dc=<other>` fails.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = dc.into();
        self
    }

    /// Sessions expire at TTL x `f` (default 1.0). For tests only: lets a
    /// test use Consul's minimum TTL (10s) and still be fast.
    pub fn ttl_factor(mut self, f: f64) -> Self {
        assert!(f.is_finite() && f > 0.0, "ttl_factor must be > 0, not {f}");
        self.ttl_factor = f;
        self
    }

    /// Binds a free loopback port and starts serving on a thread of its own.
    pub fn start(self) -> ConsulFake {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("consul fake: cannot bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("consul fake: cannot make the listener non-blocking");
        let port = listener.local_addr().expect("a bound address").port();
        let shared = Arc::new(Shared::new(Config {
            acl_token: self.acl_token,
            datacenter: self.datacenter,
            ttl_factor: self.ttl_factor,
        }));
        let (tls_dir, tls) = if self.tls {
            let dir = tempfile::Builder::new()
                .prefix("consul-fake-tls")
                .tempdir()
                .expect("consul fake: a temp dir for its TLS files");
            let files = crate::tls::TlsFiles::generate(dir.path());
            (Some(dir), Some(files))
        } else {
            (None, None)
        };
        let acceptor = tls.as_ref().map(http::tls_acceptor);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let server = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("consul-fake-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("consul fake: cannot build a tokio runtime");
                runtime.block_on(http::serve(listener, server, acceptor, shutdown_rx));
                // Dropping the runtime here ends every connection and
                // every blocking query still waiting.
            })
            .expect("consul fake: cannot spawn its thread");
        ConsulFake {
            shared,
            port,
            shutdown: Some(shutdown),
            thread: Some(thread),
            tls,
            _tls_dir: tls_dir,
        }
    }
}

/// The running fake; dropping it stops the server and its thread.
pub struct ConsulFake {
    shared: Arc<Shared>,
    port: u16,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    tls: Option<crate::tls::TlsFiles>,
    _tls_dir: Option<tempfile::TempDir>,
}

impl ConsulFake {
    pub fn builder() -> ConsulBuilder {
        ConsulBuilder {
            acl_token: None,
            datacenter: "dc1".to_string(),
            ttl_factor: 1.0,
            tls: false,
        }
    }

    /// `builder().start()`.
    pub fn start() -> ConsulFake {
        ConsulFake::builder().start()
    }

    /// The CA that signed the server's certificate ([`ConsulBuilder::tls`]).
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|t| t.ca_file.as_path())
    }

    /// `http://127.0.0.1:PORT` (`https://` with [`ConsulBuilder::tls`]).
    pub fn address(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Registers the instance in the catalog with one service check
    /// (`service:<id>`) in `instance.status`; the same ID again replaces it.
    pub fn register(&self, instance: ServiceInstance) {
        self.shared.write(|st| st.register(instance));
    }

    /// Removes the instance and its check (a no-op for an unknown ID);
    /// sessions watching the check are invalidated.
    pub fn deregister(&self, service_id: &str) {
        self.shared.write(|st| st.deregister(service_id));
    }

    /// Sets the instance's check status (a write: bumps the index); going
    /// critical invalidates the sessions watching the check. Panics for an
    /// ID never registered: that is a bug in the test.
    pub fn set_status(&self, service_id: &str, status: CheckStatus) {
        let known = self.shared.write(|st| st.set_status(service_id, status));
        assert!(known, "consul fake: no service instance {service_id:?}");
    }

    /// While on, every request answers 500 "rpc error making call: No
    /// cluster leader" (`/v1/status/leader` answers `""`).
    pub fn set_outage(&self, on: bool) {
        self.shared.lock().outage = on;
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.lock().log.clone()
    }

    /// One KV entry, without HTTP.
    pub fn kv(&self, key: &str) -> Option<KvEntry> {
        self.shared.lock().kv.get(key).cloned()
    }

    /// Every key, sorted.
    pub fn kv_keys(&self) -> Vec<String> {
        self.shared.lock().kv.keys().cloned().collect()
    }

    /// The live sessions, by ID.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.shared
            .lock()
            .sessions
            .values()
            .map(|s| SessionInfo {
                id: s.id.clone(),
                name: s.name.clone(),
                ttl: s.ttl_duration,
                behavior: s.behavior.clone(),
                lock_delay: s.lock_delay,
            })
            .collect()
    }
}

impl Drop for ConsulFake {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
