//! `[discovery]`: more hosts from a command or from Consul's catalog, and
//! the Consul endpoint settings shared with `[store] kind = "consul"`.

use super::{expand_home, Validator, P};
use crate::config::raw::{RawConsulDiscovery, RawDiscovery};
use crate::path;
use crate::plan::{ConsulAddress, ConsulDiscovery, ConsulEndpoint, DiscoverySpec};
use std::path::PathBuf;
use std::time::Duration;

/// The local Consul agent, as Consul's own tools default to.
pub(super) const DEFAULT_CONSUL: &str = "http://127.0.0.1:8500";

/// The Consul keys common to discovery and the store, as written.
pub(super) struct RawConsulEndpoint<'r> {
    pub address: Option<&'r String>,
    pub token_env: Option<&'r String>,
    pub ca_file: Option<&'r String>,
    pub datacenter: Option<&'r String>,
    pub timeout: Option<&'r String>,
}

impl Validator<'_> {
    pub(super) fn discovery(&mut self, raw: Option<RawDiscovery>) -> Option<DiscoverySpec> {
        let raw = raw?;
        let timeout = self.duration(
            path!["discovery", "timeout"],
            raw.timeout.as_ref(),
            Duration::from_secs(30),
            false,
        );
        match (raw.command, raw.consul) {
            (Some(_), Some(_)) => {
                self.err(
                    path!["discovery", "consul"],
                    "[discovery] has both command and consul",
                    "one of them",
                    "discover the fleet with a command or from Consul, not both; list extra hosts as [[hosts]]",
                );
                None
            }
            (None, None) => {
                self.err(
                    path!["discovery"],
                    "[discovery] has neither command nor consul",
                    "empty",
                    "write command = \"./inventory.sh\" (prints a JSON array of hosts) or consul = { address = \"http://127.0.0.1:8500\", service = \"shop\" }",
                );
                None
            }
            (Some(command), None) => {
                if command.trim().is_empty() {
                    self.err(
                        path!["discovery", "command"],
                        "the discovery command is empty",
                        "empty",
                        "give a command that prints a JSON array of hosts, e.g. command = \"./inventory.sh\"",
                    );
                    return None;
                }
                Some(DiscoverySpec::Command {
                    command,
                    dir: self.base_dir.to_path_buf(),
                    timeout,
                })
            }
            (None, Some(c)) => {
                if raw.timeout.is_some() {
                    self.err(
                        path!["discovery", "timeout"],
                        "[discovery] timeout is for the command; Consul's goes inside consul = { ... }",
                        "not for consul",
                        "write consul = { ..., timeout = \"5s\" } instead",
                    );
                }
                self.consul_discovery(c).map(DiscoverySpec::Consul)
            }
        }
    }

    fn consul_discovery(&mut self, c: RawConsulDiscovery) -> Option<ConsulDiscovery> {
        let base = path!["discovery", "consul"];
        let endpoint = self.consul_endpoint(
            &base,
            RawConsulEndpoint {
                address: c.address.as_ref(),
                token_env: c.token_env.as_ref(),
                ca_file: c.ca_file.as_ref(),
                datacenter: c.datacenter.as_ref(),
                timeout: c.timeout.as_ref(),
            },
        );
        let service = match c.service {
            Some(s) if !s.is_empty() && s.chars().all(service_char) => Some(s),
            Some(s) => {
                self.err(
                    sub(&base, "service"),
                    format!("`{s}` is not a Consul service name"),
                    "bad name",
                    "Consul service names use letters, digits and dashes",
                );
                None
            }
            None => {
                self.err(
                    base.clone(),
                    "consul discovery needs `service`",
                    "no service",
                    "name the service whose instances are the fleet, e.g. consul = { address = \"http://127.0.0.1:8500\", service = \"shop\" }",
                );
                None
            }
        };
        let host_address = match self.choice(
            sub(&base, "host_address"),
            c.host_address.as_ref(),
            &["service", "node"],
            "service",
        ) {
            "node" => ConsulAddress::Node,
            _ => ConsulAddress::Service,
        };
        Some(ConsulDiscovery {
            endpoint: endpoint?,
            service: service?,
            passing_only: c.passing_only.unwrap_or(false),
            host_address,
        })
    }

    /// `address`, `token_env`, `ca_file`, `datacenter`, `timeout` under `base`.
    pub(super) fn consul_endpoint(
        &mut self,
        base: &P,
        raw: RawConsulEndpoint<'_>,
    ) -> Option<ConsulEndpoint> {
        let mut ok = true;
        let address = raw
            .address
            .map_or(DEFAULT_CONSUL, String::as_str)
            .trim_end_matches('/');
        let rest = address
            .strip_prefix("http://")
            .or_else(|| address.strip_prefix("https://"));
        if !matches!(rest, Some(hp) if !hp.is_empty() && !hp.contains('/') && !hp.contains('@')) {
            // Credentials in the address: no span, the excerpt would show them.
            let at = if address.contains('@') {
                Vec::new()
            } else {
                sub(base, "address")
            };
            self.err(
                at,
                format!(
                    "`{}` is not a Consul address",
                    super::redact_url(address)
                ),
                "not http(s)://host:port",
                "write the agent's HTTP address as http(s)://host:port (default http://127.0.0.1:8500), without a path or credentials (the ACL token goes in token_env)",
            );
            ok = false;
        }
        if let Some(env) = raw.token_env {
            if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                self.err(
                    sub(base, "token_env"),
                    "token_env must name an environment variable",
                    "not a variable name",
                    "write the variable's name, e.g. token_env = \"CONSUL_HTTP_TOKEN\"; the token itself never goes in the config",
                );
                ok = false;
            }
        }
        let ca_file = raw.ca_file.map(|p| {
            let path = expand_home(p);
            let path: PathBuf = if path.is_relative() {
                self.base_dir.join(path)
            } else {
                path
            };
            if !path.is_file() {
                self.err(
                    sub(base, "ca_file"),
                    format!("ca_file `{}` is not a readable file", path.display()),
                    "no such file",
                    "give the path of a PEM CA bundle (relative paths are from the config's directory)",
                );
                ok = false;
            }
            if !address.starts_with("https://") {
                self.err(
                    sub(base, "ca_file"),
                    "ca_file is set but the address is not https://",
                    "TLS file without TLS",
                    "use an https:// address, or remove ca_file",
                );
                ok = false;
            }
            path
        });
        if let Some(dc) = raw.datacenter {
            if dc.is_empty() || !dc.chars().all(service_char) {
                self.err(
                    sub(base, "datacenter"),
                    format!("`{dc}` is not a datacenter name"),
                    "bad name",
                    "datacenter names use letters, digits, '-' and '_' (e.g. \"dc1\")",
                );
                ok = false;
            }
        }
        let timeout = self.duration(
            sub(base, "timeout"),
            raw.timeout,
            Duration::from_secs(5),
            false,
        );
        ok.then(|| ConsulEndpoint {
            address: address.to_string(),
            token_env: raw.token_env.cloned(),
            ca_file,
            datacenter: raw.datacenter.cloned(),
            timeout,
        })
    }
}

fn service_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn sub(base: &P, key: &str) -> P {
    let mut p = base.clone();
    p.push(crate::config::locate::Seg::Key(key.to_string()));
    p
}
