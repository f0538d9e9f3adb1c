//! Discovery: hosts that are not written out as `[[hosts]]`, from a command
//! (`[discovery] command`, a JSON array) or from Consul's catalog
//! (`[discovery] consul`). The adapters fetch; this module judges what came
//! back and merges it into the plan, so a discovered fleet obeys exactly the
//! rules of a written one (names, addresses, ports, targets).
//!
//! A bad answer is an error naming the entry and the field; nothing half
//! merged ever reaches the engine.

pub mod consul;
pub mod inventory;

use crate::plan::{FleetSource, Plan};
use crate::unit::{host_name_problem, Host};
use std::collections::HashMap;
use std::sync::Arc;

/// Why discovery failed. `Display` reads after "failed to discover the
/// fleet: ": it starts with where the fleet came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct DiscoveryError {
    /// `command `./inventory.sh``, `consul http://… service `shop``.
    pub origin: String,
    pub message: String,
}

impl DiscoveryError {
    pub fn new(origin: &str, message: impl Into<String>) -> DiscoveryError {
        DiscoveryError {
            origin: origin.to_string(),
            message: message.into(),
        }
    }
}

/// `plan` with `hosts` (what `origin` gave) added to the config's hosts,
/// checked as the config's hosts are, and the targets' host lists checked
/// against the whole fleet.
pub fn merge(mut plan: Plan, origin: &str, hosts: Vec<Host>) -> Result<Plan, DiscoveryError> {
    let err = |m: String| DiscoveryError::new(origin, m);
    let mut names: HashMap<String, String> = plan
        .hosts
        .iter()
        .map(|h| (h.name.clone(), "the config's [[hosts]]".to_string()))
        .collect();
    let mut addresses: HashMap<(String, Option<u16>), String> = plan
        .hosts
        .iter()
        .map(|h| {
            (
                (h.address.clone(), h.ssh_port),
                format!("host `{}` of the config", h.name),
            )
        })
        .collect();
    let count = hosts.len();
    for (i, h) in hosts.iter().enumerate() {
        let what = entry(i, &h.name);
        if let Some(hint) = host_name_problem(&h.name) {
            return Err(err(format!("{what}: the name is not usable: {hint}")));
        }
        if h.address.trim().is_empty() {
            return Err(err(format!("{what}: the address is empty")));
        }
        if let Some(problem) = plan.instances.ports_problem(h) {
            return Err(err(format!("{what}: {problem}")));
        }
        if let Some(first) = names.insert(h.name.clone(), what.clone()) {
            return Err(err(format!(
                "{what}: duplicate host name `{}` (also in {first})",
                h.name
            )));
        }
        if let Some(first) = addresses.insert((h.address.clone(), h.ssh_port), what.clone()) {
            return Err(err(format!(
                "{what}: duplicate address `{}` (also {first}); two hosts with one address would be deployed twice",
                h.address
            )));
        }
    }
    plan.hosts.extend(hosts.into_iter().map(Arc::new));
    if plan.hosts.is_empty() {
        return Err(err(
            "found no hosts, and the config lists none: nothing to deploy to".into(),
        ));
    }
    for (target, spec) in &plan.targets {
        for name in &spec.hosts {
            if !plan.hosts.iter().any(|h| &h.name == name) {
                return Err(err(format!(
                    "target `{target}` names host `{name}`, which is neither in the config's [[hosts]] nor discovered"
                )));
            }
        }
    }
    plan.fleet_sources.push(FleetSource {
        origin: origin.to_string(),
        hosts: count,
    });
    Ok(plan)
}

/// `entry 3 (`web-4`)`, or `entry 3` when the name is unknown.
pub(crate) fn entry(index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("entry {index}")
    } else {
        let short: String = name.chars().take(60).collect();
        format!("entry {index} (`{short}`)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    fn plan(extra: &str) -> Plan {
        let text = format!(
            "app = \"shop\"\n[[load_balancers]]\nkind = \"none\"\n[deploy]\nrun = \"true\"\n[discovery]\ncommand = \"./inv\"\n{extra}"
        );
        parse("t.toml", &text, Path::new("."))
            .unwrap_or_else(|e| panic!("{e:?}"))
            .plan
    }

    #[test]
    fn merges_and_counts_each_source() {
        let p = plan("[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n");
        let p = merge(p, "command `./inv`", vec![Host::new("b", "10.0.0.2")]).unwrap();
        assert_eq!(p.hosts.len(), 2);
        assert_eq!(
            p.fleet_sources,
            vec![
                FleetSource {
                    origin: "config".into(),
                    hosts: 1
                },
                FleetSource {
                    origin: "command `./inv`".into(),
                    hosts: 1
                }
            ]
        );
    }

    #[test]
    fn a_name_in_the_config_and_discovered_is_an_error() {
        let p = plan("[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n");
        let e = merge(p, "o", vec![Host::new("a", "10.0.0.2")]).unwrap_err();
        assert!(e.message.contains("duplicate host name `a`"), "{e}");
        assert!(e.message.contains("config's [[hosts]]"), "{e}");
    }

    #[test]
    fn duplicates_inside_discovery_name_both_entries() {
        let e = merge(
            plan(""),
            "o",
            vec![Host::new("a", "10.0.0.1"), Host::new("a", "10.0.0.2")],
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "entry 1 (`a`): duplicate host name `a` (also in entry 0 (`a`))"
        );
        let e = merge(
            plan(""),
            "o",
            vec![Host::new("a", "10.0.0.1"), Host::new("b", "10.0.0.1")],
        )
        .unwrap_err();
        assert!(e.message.contains("duplicate address `10.0.0.1`"), "{e}");
    }

    #[test]
    fn nothing_at_all_is_an_error() {
        let e = merge(plan(""), "o", vec![]).unwrap_err();
        assert!(e.message.contains("found no hosts"), "{e}");
    }

    #[test]
    fn target_host_names_are_checked_against_the_whole_fleet() {
        let p = plan("[targets.one]\nhosts = [\"b\"]\n");
        assert!(merge(p.clone(), "o", vec![Host::new("b", "10.0.0.2")]).is_ok());
        let e = merge(p, "o", vec![Host::new("c", "10.0.0.2")]).unwrap_err();
        assert!(e.message.contains("target `one` names host `b`"), "{e}");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "a b", "a,b", "a/b"] {
            let e = merge(plan(""), "o", vec![Host::new(bad, "10.0.0.2")]).unwrap_err();
            assert!(e.message.contains("not usable"), "{bad:?}: {e}");
        }
    }
}
