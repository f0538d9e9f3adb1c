//! Consul's `/v1/health/service/<service>` answer, judged: the hosts it
//! describes (discovery) and whether each unit passes its checks (the
//! gate). The adapter only fetches.
//!
//! - One host per Consul **node** (`Node.Node` is the host name); several
//!   instances of the service on one node make a host with that many
//!   instances (matched to units by port when `[instances] first_port` is
//!   set, else in port order).
//! - The host's address: the service's `Address`, or the node's when the
//!   service has none (Consul's own rule), or always the node's
//!   (`host_address = "node"`).
//! - The service's tags become the host's tags; `instance_id`, `ssh_user`
//!   and `ssh_port` come from the service's `Meta`, else the node's.
//! - A unit is healthy when every check of its instance (the node's
//!   `serfHealth` included) is `passing`; `warning` and `critical` hold the
//!   gate, as Consul's own `?passing` does.

use super::{entry, DiscoveryError};
use crate::plan::ConsulAddress;
use crate::unit::{Host, Unit};
use serde_json::Value;
use std::collections::BTreeMap;

/// One service instance in Consul's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub node: String,
    pub node_address: String,
    pub service_id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub node_meta: BTreeMap<String, String>,
    /// The first check that is not passing, as `name: status (output)`.
    pub failing: Option<String>,
}

/// Read the instances in a `/v1/health/service/<service>` answer.
pub fn parse(origin: &str, body: &[u8]) -> Result<Vec<Instance>, DiscoveryError> {
    let err = |m: String| DiscoveryError::new(origin, m);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| err(format!("answered with invalid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(err("answered with something other than a JSON array".into()));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| instance(item).map_err(|m| err(format!("{}: {m}", entry(i, "")))))
        .collect()
}

fn instance(item: &Value) -> Result<Instance, String> {
    let node = item.get("Node").ok_or("no `Node`")?;
    let service = item.get("Service").ok_or("no `Service`")?;
    let text = |v: &Value, key: &str| -> Result<String, String> {
        match v.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Ok(String::new()),
            Some(_) => Err(format!("`{key}` is not a string")),
        }
    };
    let name = text(node, "Node")?;
    if name.is_empty() {
        return Err("`Node.Node` is missing".into());
    }
    let port = match service.get("Port") {
        None | Some(Value::Null) => 0,
        Some(p) => p
            .as_u64()
            .filter(|p| *p <= 65535)
            .ok_or("`Service.Port` is not a port")? as u16,
    };
    let tags = match service.get("Tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(t)) => t
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or("a tag is not a string")
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`Service.Tags` is not an array".into()),
    };
    let meta = |v: &Value| -> BTreeMap<String, String> {
        v.get("Meta")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut failing = None;
    if let Some(Value::Array(checks)) = item.get("Checks") {
        for c in checks {
            let status = c.get("Status").and_then(Value::as_str).unwrap_or("");
            if status != "passing" {
                let name = c
                    .get("Name")
                    .or_else(|| c.get("CheckID"))
                    .and_then(Value::as_str)
                    .unwrap_or("a check");
                let output = c.get("Output").and_then(Value::as_str).unwrap_or("").trim();
                let output: String = output.chars().take(200).collect();
                failing = Some(if output.is_empty() {
                    format!("Consul check `{name}` is {status}")
                } else {
                    format!("Consul check `{name}` is {status}: {output}")
                });
                break;
            }
        }
    }
    Ok(Instance {
        node: name,
        node_address: text(node, "Address")?,
        service_id: text(service, "ID")?,
        address: text(service, "Address")?,
        port,
        tags,
        meta: meta(service),
        node_meta: meta(node),
        failing,
    })
}

/// The hosts the instances describe, one per node, in node-name order.
pub fn hosts(
    origin: &str,
    instances: &[Instance],
    host_address: ConsulAddress,
) -> Result<Vec<Host>, DiscoveryError> {
    let mut by_node: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    for i in instances {
        by_node.entry(&i.node).or_default().push(i);
    }
    let mut out = Vec::with_capacity(by_node.len());
    for (node, list) in by_node {
        let first = list[0];
        let err = |m: String| DiscoveryError::new(origin, format!("node `{node}`: {m}"));
        let address = match host_address {
            ConsulAddress::Service if !first.address.is_empty() => first.address.clone(),
            _ => first.node_address.clone(),
        };
        if address.is_empty() {
            return Err(err("neither the service nor the node has an address".into()));
        }
        let mut tags: Vec<String> = Vec::new();
        for t in list.iter().flat_map(|i| &i.tags) {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        // The service's meta (any instance on the node), else the node's.
        let meta = |key: &str| {
            let non_empty =
                |m: &BTreeMap<String, String>| m.get(key).filter(|v| !v.is_empty()).cloned();
            list.iter()
                .find_map(|i| non_empty(&i.meta))
                .or_else(|| list.iter().find_map(|i| non_empty(&i.node_meta)))
        };
        let ssh_port = match meta("ssh_port") {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| err(format!("meta ssh_port = `{p}` is not a TCP port")))?,
            ),
        };
        out.push(Host {
            name: node.to_string(),
            address,
            tags,
            ssh_user: meta("ssh_user"),
            ssh_port,
            instance_id: meta("instance_id"),
            instances: (list.len() > 1).then_some(list.len() as u32),
        });
    }
    Ok(out)
}

/// Why each of `units` is not healthy according to `instances` (a unit
/// absent from Consul is not healthy): `(position in units, reason)`.
pub fn unhealthy(units: &[std::sync::Arc<Unit>], instances: &[Instance]) -> Vec<(usize, String)> {
    let mut by_node: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    for i in instances {
        by_node.entry(&i.node).or_default().push(i);
    }
    for list in by_node.values_mut() {
        list.sort_by(|a, b| (a.port, &a.service_id).cmp(&(b.port, &b.service_id)));
    }
    let mut out = Vec::new();
    for (pos, unit) in units.iter().enumerate() {
        let list = by_node.get(unit.host.name.as_str());
        let found = list.and_then(|l| match unit.port {
            Some(p) if l.iter().any(|i| i.port == p) => l.iter().find(|i| i.port == p),
            _ if l.len() == 1 => l.first(),
            _ => l.get(unit.instance as usize - 1),
        });
        match found {
            None => out.push((pos, "not registered in Consul".to_string())),
            Some(i) => {
                if let Some(why) = &i.failing {
                    out.push((pos, why.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The shape of Consul's documented `/v1/health/service` sample.
    const ANSWER: &str = r#"[
      {"Node": {"ID": "x", "Node": "web-1", "Address": "10.1.10.12", "Datacenter": "dc1",
                "Meta": {"ssh_user": "deploy"}},
       "Service": {"ID": "shop-1", "Service": "shop", "Tags": ["primary", "canary"],
                   "Address": "", "Meta": {"instance_id": "i-1"}, "Port": 8000},
       "Checks": [{"Node": "web-1", "CheckID": "serfHealth", "Name": "Serf Health Status",
                   "Status": "passing", "Output": ""},
                  {"Node": "web-1", "CheckID": "service:shop-1", "Name": "http",
                   "Status": "passing", "Output": "HTTP GET: 200 OK"}]},
      {"Node": {"Node": "web-2", "Address": "10.1.10.13"},
       "Service": {"ID": "shop-2", "Service": "shop", "Tags": ["production"],
                   "Address": "10.9.9.9", "Port": 8000},
       "Checks": [{"CheckID": "service:shop-2", "Name": "http", "Status": "critical",
                   "Output": "HTTP GET: 503"}]}
    ]"#;

    #[test]
    fn instances_become_hosts() {
        let inst = parse("o", ANSWER.as_bytes()).unwrap();
        let hosts = hosts("o", &inst, ConsulAddress::Service).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].name, "web-1");
        assert_eq!(
            hosts[0].address, "10.1.10.12",
            "empty service address: the node's"
        );
        assert_eq!(hosts[0].tags, vec!["primary", "canary"]);
        assert_eq!(hosts[0].ssh_user.as_deref(), Some("deploy"));
        assert_eq!(hosts[0].instance_id.as_deref(), Some("i-1"));
        assert_eq!(hosts[1].address, "10.9.9.9");
        let by_node = super::hosts("o", &inst, ConsulAddress::Node).unwrap();
        assert_eq!(by_node[1].address, "10.1.10.13");
    }

    #[test]
    fn the_gate_reads_every_check() {
        let inst = parse("o", ANSWER.as_bytes()).unwrap();
        let units: Vec<Arc<Unit>> = ["web-1", "web-2", "web-3"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Arc::new(Unit {
                    index: i,
                    host: Arc::new(Host::new(*n, "x")),
                    instance: 1,
                    port: None,
                })
            })
            .collect();
        let bad = unhealthy(&units, &inst);
        assert_eq!(
            bad,
            vec![
                (
                    1,
                    "Consul check `http` is critical: HTTP GET: 503".to_string()
                ),
                (2, "not registered in Consul".to_string())
            ]
        );
    }

    #[test]
    fn odd_answers_are_errors() {
        assert!(parse("o", b"{}").is_err());
        assert!(parse("o", br#"[{"Node": {}}]"#)
            .unwrap_err()
            .to_string()
            .contains("entry 0: no `Service`"));
        assert!(parse(
            "o",
            br#"[{"Node": {"Node": "a"}, "Service": {"Port": 70000}}]"#
        )
        .is_err());
    }
}
