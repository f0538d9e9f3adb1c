//! The catalog: nodes, service instances and their checks (changed only
//! through [`super::ConsulFake`]'s methods), and the two read endpoints
//! `/v1/health/service/<service>` and `/v1/catalog/service/<service>`.

use super::http::{block, blocking_params, Access, Req, Resp};
use super::state::{node_id, Node, Service, Shared, State};
use super::{session, CheckStatus, ServiceInstance};
use hyper::StatusCode;
use serde_json::{json, Value};
use std::time::Instant;

impl State {
    /// Registers (or re-registers) an instance and its one service check.
    pub(crate) fn register(&mut self, instance: ServiceInstance) {
        let idx = self.next_index();
        let now = Instant::now();
        let node_changed = match self.nodes.get_mut(&instance.node) {
            Some(node) => {
                let changed =
                    node.address != instance.node_address || node.meta != instance.node_meta;
                if changed {
                    node.address = instance.node_address.clone();
                    node.meta = instance.node_meta.clone();
                    node.modify_index = idx;
                }
                changed
            }
            None => {
                self.nodes.insert(
                    instance.node.clone(),
                    Node {
                        name: instance.node.clone(),
                        id: node_id(&instance.node),
                        address: instance.node_address.clone(),
                        meta: instance.node_meta.clone(),
                        create_index: idx,
                        modify_index: idx,
                    },
                );
                false
            }
        };
        if node_changed {
            // Every service on the node answers differently now.
            let names: Vec<String> = self
                .services
                .values()
                .filter(|s| s.instance.node == instance.node)
                .map(|s| s.instance.service.clone())
                .collect();
            for name in names {
                self.service_index.insert(name, idx);
            }
        }
        let previous = self.services.remove(&instance.id);
        if let Some(old) = &previous {
            self.service_index.insert(old.instance.service.clone(), idx);
            // Moving to another node deregisters the old check.
            if old.instance.node != instance.node {
                self.invalidate_watchers(&old.instance.node, &old.check_id(), idx, now);
            }
        }
        let service = Service {
            create_index: previous.as_ref().map_or(idx, |s| s.create_index),
            modify_index: idx,
            check_create_index: previous.as_ref().map_or(idx, |s| s.check_create_index),
            check_modify_index: idx,
            instance,
        };
        if service.instance.status == CheckStatus::Critical {
            self.invalidate_watchers(&service.instance.node, &service.check_id(), idx, now);
        }
        self.service_index
            .insert(service.instance.service.clone(), idx);
        self.catalog_index = idx;
        self.services.insert(service.instance.id.clone(), service);
    }

    /// Removes an instance (and its check); `false` if there was none.
    pub(crate) fn deregister(&mut self, service_id: &str) -> bool {
        let Some(old) = self.services.remove(service_id) else {
            return false;
        };
        let idx = self.next_index();
        self.service_index.insert(old.instance.service.clone(), idx);
        self.catalog_index = idx;
        self.invalidate_watchers(&old.instance.node, &old.check_id(), idx, Instant::now());
        true
    }

    /// Sets an instance's check status; `false` if there is no such instance.
    pub(crate) fn set_status(&mut self, service_id: &str, status: CheckStatus) -> bool {
        if !self.services.contains_key(service_id) {
            return false;
        }
        let idx = self.next_index();
        let service = self.services.get_mut(service_id).expect("checked above");
        if service.instance.status == status {
            // An update to the same status changes nothing that is read.
            return true;
        }
        service.instance.status = status;
        service.check_modify_index = idx;
        let (name, node, check) = (
            service.instance.service.clone(),
            service.instance.node.clone(),
            service.check_id(),
        );
        self.service_index.insert(name, idx);
        self.catalog_index = idx;
        if status == CheckStatus::Critical {
            self.invalidate_watchers(&node, &check, idx, Instant::now());
        }
        true
    }

    /// A check gone critical or deregistered invalidates its sessions.
    fn invalidate_watchers(&mut self, node: &str, check_id: &str, idx: u64, now: Instant) {
        for id in session::watching(self, node, check_id) {
            session::invalidate(self, &id, idx, now);
        }
    }
}

/// What both read endpoints share: name, filters, blocking, ACL filtering.
async fn query(
    shared: &Shared,
    req: &Req,
    service: &str,
    passing_only: bool,
    render: fn(&State, &Service, &str) -> Value,
) -> Resp {
    if service.is_empty() {
        return Resp::text(StatusCode::BAD_REQUEST, "Missing service name");
    }
    if req.has("filter") {
        return Resp::text(
            StatusCode::BAD_REQUEST,
            "the Consul fake does not implement ?filter expressions",
        );
    }
    let blocking = match blocking_params(req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let tags: Vec<String> = req.all("tag").iter().map(|t| t.to_lowercase()).collect();
    let node_meta: Vec<(String, String)> = req
        .all("node-meta")
        .iter()
        .map(|kv| match kv.split_once(':') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    // The anonymous token may read no service: the answer is filtered empty.
    let anonymous = req.access == Access::Anonymous;
    let dc = shared.config.datacenter.clone();
    let (index, entries) = block(shared, &blocking, |st| {
        let mut matching: Vec<&Service> = st
            .services
            .values()
            .filter(|s| !anonymous && s.instance.service == service)
            .filter(|s| {
                tags.iter()
                    .all(|t| s.instance.tags.iter().any(|have| have.to_lowercase() == *t))
            })
            .filter(|s| {
                let meta = &st.nodes[&s.instance.node].meta;
                node_meta.iter().all(|(k, v)| meta.get(k) == Some(v))
            })
            // The node's serfHealth is always passing: only the service
            // check can fail the filter.
            .filter(|s| !passing_only || s.instance.status == CheckStatus::Passing)
            .collect();
        matching.sort_by(|a, b| {
            (&a.instance.node, &a.instance.id).cmp(&(&b.instance.node, &b.instance.id))
        });
        let entries: Vec<Value> = matching.iter().map(|s| render(st, s, &dc)).collect();
        (st.service_query_index(service), entries)
    })
    .await;
    Resp::json(req, &Value::Array(entries)).with_index(index)
}

pub(crate) async fn health_service(shared: &Shared, req: &Req, service: String) -> Resp {
    let passing = match req.get("passing") {
        None => false,
        Some("") => true,
        Some(v) => match parse_go_bool(v) {
            Some(b) => b,
            None => return Resp::text(StatusCode::BAD_REQUEST, "Invalid value for ?passing"),
        },
    };
    query(shared, req, &service, passing, health_entry).await
}

pub(crate) async fn catalog_service(shared: &Shared, req: &Req, service: String) -> Resp {
    query(shared, req, &service, false, catalog_entry).await
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The address clients should use: the service's, else its node's.
fn effective_address<'a>(node: &'a Node, instance: &'a ServiceInstance) -> &'a str {
    if instance.address.is_empty() {
        &node.address
    } else {
        &instance.address
    }
}

fn health_entry(st: &State, s: &Service, dc: &str) -> Value {
    let node = &st.nodes[&s.instance.node];
    let i = &s.instance;
    let addr = effective_address(node, i);
    json!({
        "Node": {
            "ID": node.id,
            "Node": node.name,
            "Address": node.address,
            "Datacenter": dc,
            "TaggedAddresses": { "lan": node.address, "wan": node.address },
            "Meta": node.meta,
            "CreateIndex": node.create_index,
            "ModifyIndex": node.modify_index,
        },
        "Service": {
            "ID": i.id,
            "Service": i.service,
            "Tags": i.tags,
            "Address": i.address,
            "TaggedAddresses": {
                "lan": { "address": addr, "port": i.port },
                "wan": { "address": addr, "port": i.port },
            },
            "Meta": i.meta,
            "Port": i.port,
            "Weights": { "Passing": 1, "Warning": 1 },
            "EnableTagOverride": false,
            "CreateIndex": s.create_index,
            "ModifyIndex": s.modify_index,
        },
        "Checks": [
            {
                "Node": node.name,
                "CheckID": s.check_id(),
                "Name": format!("Service '{}' check", i.service),
                "Status": i.status.as_str(),
                "Notes": "",
                "Output": "",
                "ServiceID": i.id,
                "ServiceName": i.service,
                "ServiceTags": i.tags,
                "Type": "",
                "CreateIndex": s.check_create_index,
                "ModifyIndex": s.check_modify_index,
            },
            {
                "Node": node.name,
                "CheckID": "serfHealth",
                "Name": "Serf Health Status",
                "Status": "passing",
                "Notes": "",
                "Output": "Agent alive and reachable",
                "ServiceID": "",
                "ServiceName": "",
                "ServiceTags": [],
                "Type": "",
                "CreateIndex": node.create_index,
                "ModifyIndex": node.create_index,
            },
        ],
    })
}

fn catalog_entry(st: &State, s: &Service, dc: &str) -> Value {
    let node = &st.nodes[&s.instance.node];
    let i = &s.instance;
    let addr = effective_address(node, i);
    json!({
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": dc,
        "TaggedAddresses": { "lan": node.address, "wan": node.address },
        "NodeMeta": node.meta,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
        "ServiceAddress": i.address,
        "ServiceEnableTagOverride": false,
        "ServiceID": i.id,
        "ServiceName": i.service,
        "ServicePort": i.port,
        "ServiceMeta": i.meta,
        "ServiceTaggedAddresses": {
            "lan": { "address": addr, "port": i.port },
            "wan": { "address": addr, "port": i.port },
        },
        "ServiceTags": i.tags,
        "ServiceProxy": {
            "DestinationServiceName": "",
            "DestinationServiceID": "",
            "LocalServiceAddress": "",
            "LocalServicePort": 0,
            "Config": null,
            "Upstreams": null,
        },
        "ServiceConnect": { "Native": false, "Proxy": null },
        "ServiceKind": "",
        "ServiceWeights": { "Passing": 1, "Warning": 1 },
    })
}
