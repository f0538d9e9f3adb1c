//! A FAKE Rackspace: identity v2.0 (API-key sign-in) and Cloud Load
//! Balancers v1.0, in process on `127.0.0.1:<free port>`. Rackspace cannot
//! run here, so this is written from the providers' documentation
//! (rackerlabs/docs-cloud-load-balancers: "API behavior", "Nodes", "Update
//! node", "Limits", "Faults"; the identity v2.0 authentication guide) with
//! the error bodies rackerlabs/mimic records from the live service. It is
//! NOT Rackspace: what is not listed below it does not do.
//!
//! - `POST /v2.0/tokens` with `RAX-KSKEY:apiKeyCredentials`: 200 with a
//!   token and a service catalog whose `rax:load-balancer` entry has ORD
//!   and DFW endpoints on this server; wrong credentials: 401.
//! - Every `/v1.0/{tenant}/…` call needs a valid `X-Auth-Token` (401
//!   otherwise; [`RackspaceFake::expire_tokens`] invalidates every token).
//! - `GET /v1.0/{t}/loadbalancers/{id}`: status and nodes (condition,
//!   status ONLINE/OFFLINE, weight); unknown id: 404.
//! - `PUT /v1.0/{t}/loadbalancers/{id}/nodes/{node}` with `{"node":
//!   {"condition"?, "weight"?, "type"?}}`: 400 for bad JSON, an immutable
//!   attribute (address, port, id), an unknown condition or a weight
//!   outside 1–100; 404 for an unknown node; **422 "immutable"** while the
//!   balancer is not ACTIVE; otherwise **202 with no body**, and the
//!   balancer is `PENDING_UPDATE` for [`RackspaceFakeBuilder::pending`]
//!   (default 300 ms), after which the change is applied and the balancer
//!   is ACTIVE again (the stricter reading of "queued").
//! - Rate limits (off unless set): more than N requests in a second
//!   answers 413 overLimit with `Retry-After`.
//! - A "422 storm" ([`RackspaceFake::storm`]): the next N changes find
//!   another client's change accepted just before theirs: the balancer goes
//!   PENDING_UPDATE (for `pending`) and they get 422, as the docs say
//!   concurrent changes do.
//!
//! Everything received is logged with the balancer's status at that moment
//! (secrets are not logged), and every change applied is recorded in order.

use crate::fakehttp::{FakeRequest, FakeResponse, FakeServer};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TENANT: &str = "123456";

#[derive(Debug, Clone)]
pub struct FakeNode {
    pub id: u64,
    pub address: String,
    pub port: u16,
    pub condition: String,
    /// ONLINE / OFFLINE, as the balancer's health monitor says.
    pub status: String,
    pub weight: Option<u32>,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Since the fake started.
    pub at: Duration,
    pub method: String,
    pub path: String,
    /// The balancer's status when the request arrived.
    pub lb_status: String,
    /// What the fake answered.
    pub answer: u16,
    /// The body of a node change (nothing else is kept: sign-ins carry keys).
    pub change: Option<Value>,
}

/// One change the balancer applied.
#[derive(Debug, Clone)]
pub struct Applied {
    pub at: Duration,
    pub node: u64,
    pub address: String,
    pub condition: String,
    pub weight: Option<u32>,
}

struct Pending {
    until: Instant,
    /// `None`: another client's change (a storm).
    change: Option<(u64, Value)>,
}

struct State {
    started: Instant,
    username: String,
    api_key: String,
    lb_id: u64,
    /// The status when nothing is pending (ACTIVE, or what a test set).
    base_status: String,
    pending: Option<Pending>,
    pending_for: Duration,
    nodes: Vec<FakeNode>,
    tokens: Vec<String>,
    token_seq: u64,
    storm: u32,
    rate_limit: Option<u32>,
    window: (Instant, u32),
    log: Vec<Logged>,
    applied: Vec<Applied>,
    base_url: String,
}

impl State {
    /// Let time pass: a pending change whose time is up is applied.
    fn tick(&mut self) {
        let now = Instant::now();
        if self.pending.as_ref().is_some_and(|p| now >= p.until) {
            let p = self.pending.take().unwrap();
            if let Some((id, change)) = p.change {
                let at = self.started.elapsed();
                if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) {
                    if let Some(c) = change["condition"].as_str() {
                        n.condition = c.to_string();
                    }
                    if let Some(w) = change["weight"].as_u64() {
                        n.weight = Some(w as u32);
                    }
                    self.applied.push(Applied {
                        at,
                        node: id,
                        address: n.address.clone(),
                        condition: n.condition.clone(),
                        weight: n.weight,
                    });
                }
            }
        }
    }

    fn status(&self) -> String {
        if self.pending.is_some() {
            "PENDING_UPDATE".into()
        } else {
            self.base_status.clone()
        }
    }
}

pub struct RackspaceFakeBuilder {
    lb_id: u64,
    nodes: Vec<(String, u16, Option<u32>)>,
    pending: Duration,
    rate_limit: Option<u32>,
}

impl RackspaceFakeBuilder {
    /// A node (condition ENABLED, status ONLINE); ids are 1001, 1002, …
    pub fn node(mut self, address: &str, port: u16, weight: Option<u32>) -> Self {
        self.nodes.push((address.to_string(), port, weight));
        self
    }

    /// How long a change keeps the balancer PENDING_UPDATE.
    pub fn pending(mut self, d: Duration) -> Self {
        self.pending = d;
        self
    }

    /// At most `n` requests a second; beyond: 413 with Retry-After: 1.
    pub fn rate_limit(mut self, n: u32) -> Self {
        self.rate_limit = Some(n);
        self
    }

    pub fn start(self, username: &str, api_key: &str) -> RackspaceFake {
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, (a, p, w))| FakeNode {
                id: 1001 + i as u64,
                address: a.clone(),
                port: *p,
                condition: "ENABLED".into(),
                status: "ONLINE".into(),
                weight: *w,
            })
            .collect();
        let state = Arc::new(Mutex::new(State {
            started: Instant::now(),
            username: username.to_string(),
            api_key: api_key.to_string(),
            lb_id: self.lb_id,
            base_status: "ACTIVE".into(),
            pending: None,
            pending_for: self.pending,
            nodes,
            tokens: Vec::new(),
            token_seq: 0,
            storm: 0,
            rate_limit: self.rate_limit,
            window: (Instant::now(), 0),
            log: Vec::new(),
            applied: Vec::new(),
            base_url: String::new(),
        }));
        let s = state.clone();
        let server = FakeServer::start("rackspace", move |req| handle(&s, req));
        state.lock().unwrap().base_url = server.base_url();
        RackspaceFake { state, server }
    }
}

pub struct RackspaceFake {
    state: Arc<Mutex<State>>,
    server: FakeServer,
}

impl RackspaceFake {
    /// Load balancer `lb_id`, no nodes yet.
    pub fn builder(lb_id: u64) -> RackspaceFakeBuilder {
        RackspaceFakeBuilder {
            lb_id,
            nodes: Vec::new(),
            pending: Duration::from_millis(300),
            rate_limit: None,
        }
    }

    /// `http://127.0.0.1:PORT/v2.0` (the `identity_url`).
    pub fn identity_url(&self) -> String {
        format!("{}/v2.0", self.server.base_url())
    }

    /// Set the balancer's status (ACTIVE, ERROR, SUSPENDED, PENDING_UPDATE
    /// for ever, …).
    pub fn set_status(&self, status: &str) {
        self.state.lock().unwrap().base_status = status.to_string();
    }

    pub fn set_condition(&self, address: &str, condition: &str) {
        let mut st = self.state.lock().unwrap();
        for n in st.nodes.iter_mut().filter(|n| n.address == address) {
            n.condition = condition.to_string();
        }
    }

    pub fn set_weight(&self, address: &str, weight: u32) {
        let mut st = self.state.lock().unwrap();
        for n in st.nodes.iter_mut().filter(|n| n.address == address) {
            n.weight = Some(weight);
        }
    }

    pub fn set_node_status(&self, address: &str, status: &str) {
        let mut st = self.state.lock().unwrap();
        for n in st.nodes.iter_mut().filter(|n| n.address == address) {
            n.status = status.to_string();
        }
    }

    /// The next `n` changes collide with another client's (422).
    pub fn storm(&self, n: u32) {
        self.state.lock().unwrap().storm = n;
    }

    /// Every token issued so far stops being valid (401).
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    pub fn nodes(&self) -> Vec<FakeNode> {
        let mut st = self.state.lock().unwrap();
        st.tick();
        st.nodes.clone()
    }

    pub fn status(&self) -> String {
        let mut st = self.state.lock().unwrap();
        st.tick();
        st.status()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn applied(&self) -> Vec<Applied> {
        self.state.lock().unwrap().applied.clone()
    }
}

fn fault(status: u16, key: &str, message: &str) -> FakeResponse {
    let body = if key.is_empty() {
        json!({"message": message, "code": status})
    } else {
        json!({ key: {"message": message, "code": status} })
    };
    FakeResponse::json(status, &body)
}

fn handle(state: &Mutex<State>, req: FakeRequest) -> FakeResponse {
    let mut st = state.lock().unwrap();
    st.tick();
    let lb_status = st.status();
    let mut change = None;
    let answer = route(&mut st, &req, &mut change);
    let at = st.started.elapsed();
    st.log.push(Logged {
        at,
        method: req.method.clone(),
        path: req.path.clone(),
        lb_status,
        answer: answer.status,
        change,
    });
    answer
}

fn route(st: &mut State, req: &FakeRequest, change: &mut Option<Value>) -> FakeResponse {
    if let Some(limit) = st.rate_limit {
        let now = Instant::now();
        if now.duration_since(st.window.0) >= Duration::from_secs(1) {
            st.window = (now, 0);
        }
        st.window.1 += 1;
        if st.window.1 > limit {
            return fault(413, "overLimit", "OverLimit Retry...").header("Retry-After", "1");
        }
    }
    if req.method == "POST" && req.path == "/v2.0/tokens" {
        return sign_in(st, &req.body);
    }
    let Some(rest) = req.path.strip_prefix(&format!("/v1.0/{TENANT}/")) else {
        return fault(404, "itemNotFound", "Resource not found");
    };
    let token = req.headers.get("x-auth-token").cloned().unwrap_or_default();
    if !st.tokens.contains(&token) {
        return fault(
            401,
            "unauthorized",
            "No valid token provided. Please use the 'X-Auth-Token' header with a valid token.",
        );
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let lb = format!("{}", st.lb_id);
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["loadbalancers", id]) if *id == lb => {
            let nodes: Vec<Value> = st
                .nodes
                .iter()
                .map(|n| {
                    let mut v = json!({"id": n.id, "address": n.address, "port": n.port,
                        "condition": n.condition, "status": n.status, "type": "PRIMARY"});
                    if let Some(w) = n.weight {
                        v["weight"] = w.into();
                    }
                    v
                })
                .collect();
            FakeResponse::json(
                200,
                &json!({"loadBalancer": {"id": st.lb_id, "name": "fake-lb", "protocol": "HTTP",
                    "port": 80, "algorithm": "ROUND_ROBIN", "status": st.status(), "nodes": nodes}}),
            )
        }
        ("PUT", ["loadbalancers", id, "nodes", node]) if *id == lb => {
            let Ok(body) = serde_json::from_str::<Value>(&req.body) else {
                return fault(400, "badRequest", "Invalid JSON request body");
            };
            *change = Some(body.clone());
            let Some(n) = body.get("node").and_then(Value::as_object) else {
                return fault(
                    400,
                    "badRequest",
                    "Validation Failure: a node object is required",
                );
            };
            if ["address", "port", "id"].iter().any(|k| n.contains_key(*k)) {
                return fault(
                    400,
                    "badRequest",
                    "Validation Failure: Node address, port and id are immutable",
                );
            }
            if n.get("condition").is_some_and(|c| {
                !["ENABLED", "DISABLED", "DRAINING"].contains(&c.as_str().unwrap_or(""))
            }) {
                return fault(
                    400,
                    "badRequest",
                    "Validation Failure: condition must be ENABLED, DISABLED or DRAINING",
                );
            }
            if n.get("weight")
                .is_some_and(|w| !w.as_u64().is_some_and(|w| (1..=100).contains(&w)))
            {
                return fault(
                    400,
                    "badRequest",
                    "Validation Failure: weight must be between 1 and 100",
                );
            }
            if n.is_empty() {
                return fault(
                    400,
                    "badRequest",
                    "Validation Failure: condition, type or weight is required",
                );
            }
            let Some(node_id) = node
                .parse::<u64>()
                .ok()
                .filter(|id| st.nodes.iter().any(|n| n.id == *id))
            else {
                return fault(404, "itemNotFound", "Node not found");
            };
            if st.storm > 0 {
                st.storm -= 1;
                st.pending = Some(Pending {
                    until: Instant::now() + st.pending_for,
                    change: None,
                });
                return immutable(st);
            }
            if st.status() != "ACTIVE" {
                return immutable(st);
            }
            st.pending = Some(Pending {
                until: Instant::now() + st.pending_for,
                change: Some((node_id, Value::Object(n.clone()))),
            });
            FakeResponse::empty(202)
        }
        ("GET" | "PUT", ["loadbalancers", ..]) => {
            fault(404, "itemNotFound", "Load balancer not found")
        }
        _ => fault(405, "badMethod", "Method not allowed"),
    }
}

fn immutable(st: &State) -> FakeResponse {
    fault(
        422,
        "",
        &format!(
            "Load Balancer '{}' has a status of '{}' and is considered immutable.",
            st.lb_id,
            st.status()
        ),
    )
}

fn sign_in(st: &mut State, body: &str) -> FakeResponse {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let creds = &v["auth"]["RAX-KSKEY:apiKeyCredentials"];
    if creds["username"] != st.username.as_str() || creds["apiKey"] != st.api_key.as_str() {
        return fault(401, "unauthorized", "Username or api key is invalid.");
    }
    st.token_seq += 1;
    let token = format!(
        "fake-token-{:04}-{:x}",
        st.token_seq,
        st.started.elapsed().as_nanos()
    );
    st.tokens.push(token.clone());
    let endpoint = |region: &str| {
        json!({"region": region, "tenantId": TENANT,
               "publicURL": format!("{}/v1.0/{TENANT}", st.base_url)})
    };
    FakeResponse::json(
        200,
        &json!({"access": {
            "token": {"id": token, "expires": "2099-01-01T00:00:00.000Z",
                      "tenant": {"id": TENANT, "name": TENANT}},
            "serviceCatalog": [
                {"name": "cloudServersOpenStack", "type": "compute",
                 "endpoints": [{"region": "ORD", "tenantId": TENANT, "publicURL": "http://127.0.0.1:9/v2"}]},
                {"name": "cloudLoadBalancers", "type": "rax:load-balancer",
                 "endpoints": [endpoint("ORD"), endpoint("DFW")]}
            ],
            "user": {"id": "1", "name": st.username}
        }}),
    )
}
