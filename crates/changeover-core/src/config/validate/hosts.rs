//! `[[hosts]]` and `[instances]`: the fleet and the app instances on each host.

use super::Validator;
use crate::config::raw::{RawHost, RawInstances};
use crate::path;
use crate::plan::Instances;
use crate::unit::{host_name_problem, Host, MAX_INSTANCES};
use std::collections::HashMap;
use std::sync::Arc;

impl Validator<'_> {
    pub(super) fn hosts(&mut self, raw: Vec<RawHost>) -> Vec<Arc<Host>> {
        if raw.is_empty() && !self.has_discovery {
            self.err(
                vec![],
                "no hosts in the config",
                "",
                "add at least one [[hosts]] table with name and address, or a [discovery] section",
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<(String, Option<i64>), usize> = HashMap::new();
        let mut hosts = Vec::with_capacity(raw.len());
        for (i, h) in raw.into_iter().enumerate() {
            if let Some(hint) = host_name_problem(&h.name) {
                self.err(
                    path!["hosts", i, "name"],
                    format!(
                        "host name `{}` is not usable",
                        h.name.chars().take(60).collect::<String>()
                    ),
                    "bad name",
                    hint,
                );
            }
            if h.address.trim().is_empty() {
                self.err(
                    path!["hosts", i, "address"],
                    "host address is empty",
                    "empty",
                    "give the host's IP address or DNS name",
                );
            }
            if let Some(first) = names.insert(h.name.clone(), i) {
                self.err(
                    path!["hosts", i, "name"],
                    format!("duplicate host name `{}` (also hosts[{first}])", h.name),
                    "duplicate",
                    "every host needs a unique name",
                );
            }
            if let Some(first) = addresses.insert((h.address.clone(), h.ssh_port), i) {
                self.err(path!["hosts", i, "address"], format!("duplicate host address `{}` (also hosts[{first}])", h.address), "duplicate", "two hosts with one address would be deployed twice; remove one or use [instances] for several app instances per host");
            }
            let ssh_port = match h.ssh_port {
                None => None,
                Some(p) if (1..=65535).contains(&p) => Some(p as u16),
                Some(p) => {
                    self.err(
                        path!["hosts", i, "ssh_port"],
                        format!("{p} is not a TCP port"),
                        "out of range",
                        "ports are 1 to 65535",
                    );
                    None
                }
            };
            let instances = match h.instances {
                None => None,
                Some(n) if (1..=MAX_INSTANCES as i64).contains(&n) => Some(n as u32),
                Some(n) => {
                    self.err(
                        path!["hosts", i, "instances"],
                        format!("{n} instances on one host is not allowed"),
                        "out of range",
                        "instances is 1 to 1000 (it overrides [instances] count for this host)",
                    );
                    None
                }
            };
            if h.instance_id
                .as_deref()
                .is_some_and(|id| id.trim().is_empty())
            {
                self.err(
                    path!["hosts", i, "instance_id"],
                    "instance_id is empty",
                    "empty",
                    "give the cloud instance's id (e.g. i-0abc123) or remove the key",
                );
            }
            hosts.push(Arc::new(Host {
                name: h.name,
                address: h.address,
                tags: h.tags,
                ssh_user: h.ssh_user,
                ssh_port,
                instance_id: h.instance_id,
                instances,
            }));
        }
        hosts
    }

    pub(super) fn instances(&mut self, raw: Option<RawInstances>) -> Instances {
        let Some(raw) = raw else {
            return Instances {
                count: 1,
                first_port: None,
            };
        };
        let count = match raw.count {
            None => 1,
            Some(n) if (1..=1000).contains(&n) => n as u32,
            Some(n) => {
                self.err(
                    path!["instances", "count"],
                    format!("{n} instances per host is not allowed"),
                    "out of range",
                    "count is 1 to 1000",
                );
                1
            }
        };
        // Saturating: a huge first_port must be refused, not overflow.
        let last_port = |p: i64| p.saturating_add(count as i64 - 1);
        let first_port = match raw.first_port {
            None => None,
            Some(p) if p >= 1 && last_port(p) <= 65535 => Some(p as u16),
            Some(p) => {
                self.err(
                    path!["instances", "first_port"],
                    format!("ports {p}..{} are not all valid TCP ports", last_port(p)),
                    "out of range",
                    "instance k listens on first_port + k - 1, which must be 1 to 65535",
                );
                None
            }
        };
        Instances { count, first_port }
    }
}
