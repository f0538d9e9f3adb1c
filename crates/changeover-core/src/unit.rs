//! Hosts and units: the things a deploy walks over.

use std::fmt;
use std::sync::Arc;

/// A machine reached over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub tags: Vec<String>,
    /// Per-host SSH user override (falls back to `[ssh] user`, then ssh config).
    pub ssh_user: Option<String>,
    /// Per-host SSH port override (falls back to ssh config).
    pub ssh_port: Option<u16>,
    /// The cloud instance behind the host (e.g. an EC2 instance id), from
    /// the config or discovery; shown by `plan`.
    pub instance_id: Option<String>,
    /// App instances on this host when it differs from `[instances] count`.
    pub instances: Option<u32>,
}

/// Why `name` cannot name a host, if it cannot: it is used in `--force`
/// lists and as a store key (`units/<host>`).
pub fn host_name_problem(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() || name.chars().any(|c| c.is_whitespace() || c == ',') {
        Some("host names are non-empty and contain no spaces or commas (they are used in --force lists)")
    } else if name.contains('/') || name.len() > 180 {
        Some("host names have no '/' and at most 180 bytes (each unit's version is recorded under units/<host>)")
    } else {
        None
    }
}

/// Most app instances a host may run.
pub const MAX_INSTANCES: u32 = 1000;

impl Host {
    /// A host with a name and an address, nothing else set.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Host {
        Host {
            name: name.into(),
            address: address.into(),
            tags: Vec::new(),
            ssh_user: None,
            ssh_port: None,
            instance_id: None,
            instances: None,
        }
    }
}

/// What a load balancer routes to: one instance on one host.
///
/// Units are numbered in their stable deploy order (`index`), sorted by
/// address, then instance, so that successive partial deploys extend each
/// other instead of picking different machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub index: usize,
    pub host: Arc<Host>,
    /// 1-based instance number on the host.
    pub instance: u32,
    /// The port of this instance, when `[instances] first_port` is set.
    pub port: Option<u16>,
}

impl Unit {
    /// Human name: the host name, or `host#instance` when a host has several.
    pub fn name(&self) -> String {
        if self.instance == 1 && self.port.is_none() {
            self.host.name.clone()
        } else {
            format!("{}#{}", self.host.name, self.instance)
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Sort key for the stable unit order: address (numerically for IPv4), then
/// host name, then instance.
pub fn address_sort_key(address: &str) -> (Vec<u32>, String) {
    let numeric: Option<Vec<u32>> = address.split('.').map(|p| p.parse::<u32>().ok()).collect();
    match numeric {
        Some(parts) if parts.len() == 4 => (parts, String::new()),
        _ => (vec![u32::MAX], address.to_string()),
    }
}
