//! `[store]`: where the lock, pointers, unit versions and history live.

use super::discovery::RawConsulEndpoint;
use super::{expand_home, Validator};
use crate::config::raw::RawStore;
use crate::path;
use crate::plan::{ConsulStoreSpec, EtcdSpec, StoreSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

const KINDS: &[&str] = &["local", "etcd", "consul"];

impl Validator<'_> {
    pub(super) fn store(
        &mut self,
        raw: Option<RawStore>,
        app: &str,
        state_dir: &Path,
    ) -> StoreSpec {
        let Some(raw) = raw else {
            return StoreSpec::Local {
                dir: state_dir.to_path_buf(),
            };
        };
        let kind = self.choice(path!["store", "kind"], raw.kind.as_ref(), KINDS, "local");
        let etcd_only: [(&str, bool); 8] = [
            ("endpoints", raw.endpoints.is_some()),
            ("ca_file", raw.ca_file.is_some()),
            ("cert_file", raw.cert_file.is_some()),
            ("key_file", raw.key_file.is_some()),
            ("username", raw.username.is_some()),
            ("password_env", raw.password_env.is_some()),
            ("lock_ttl", raw.lock_ttl.is_some()),
            ("timeout", raw.timeout.is_some()),
        ];
        let consul_only: [(&str, bool); 3] = [
            ("address", raw.address.is_some()),
            ("token_env", raw.token_env.is_some()),
            ("datacenter", raw.datacenter.is_some()),
        ];
        if kind != "consul" {
            for (key, set) in consul_only {
                if set {
                    self.err(
                        path!["store", key],
                        format!(
                            "`{key}` is for kind = \"consul\"; the {kind} store does not use it"
                        ),
                        "not for this store",
                        "remove it, or set kind = \"consul\"",
                    );
                }
            }
        }
        match kind {
            "consul" => {
                for (key, set) in etcd_only
                    .iter()
                    .filter(|(k, _)| !matches!(*k, "ca_file" | "lock_ttl" | "timeout"))
                {
                    if *set {
                        self.err(
                            path!["store", *key],
                            format!("`{key}` is for kind = \"etcd\"; the consul store does not use it"),
                            "not for consul",
                            "the consul store takes address, prefix, token_env, ca_file, datacenter, lock_ttl and timeout",
                        );
                    }
                }
                self.consul_store(raw, app).map_or_else(
                    || StoreSpec::Local {
                        dir: state_dir.to_path_buf(),
                    },
                    StoreSpec::Consul,
                )
            }
            "etcd" => self.etcd(raw, app).map_or_else(
                || StoreSpec::Local {
                    dir: state_dir.to_path_buf(),
                },
                StoreSpec::Etcd,
            ),
            _ => {
                for (key, set) in etcd_only
                    .iter()
                    .chain([("prefix", raw.prefix.is_some())].iter())
                {
                    if *set {
                        self.err(
                            path!["store", *key],
                            format!("`{key}` is for kind = \"etcd\"; the local store does not use it"),
                            "not for the local store",
                            "remove it, or set kind = \"etcd\"; the local store lives in state_dir (default .changeover/ beside the config)",
                        );
                    }
                }
                StoreSpec::Local {
                    dir: state_dir.to_path_buf(),
                }
            }
        }
    }

    fn consul_store(&mut self, raw: RawStore, app: &str) -> Option<ConsulStoreSpec> {
        let endpoint = self.consul_endpoint(
            &path!["store"],
            RawConsulEndpoint {
                address: raw.address.as_ref(),
                token_env: raw.token_env.as_ref(),
                ca_file: raw.ca_file.as_ref(),
                datacenter: raw.datacenter.as_ref(),
                timeout: raw.timeout.as_ref(),
            },
        );
        // Consul KV keys have no leading '/'.
        let prefix = match &raw.prefix {
            Some(p) => {
                let p = p.trim_start_matches('/');
                if p.is_empty()
                    || p.split('/')
                        .filter(|s| !s.is_empty())
                        .any(|s| s == "." || s == "..")
                {
                    self.err(
                        path!["store", "prefix"],
                        format!("prefix `{p}` is not a usable KV prefix"),
                        "bad prefix",
                        "write a KV path such as \"changeover/shop/\"",
                    );
                }
                if p.ends_with('/') {
                    p.to_string()
                } else {
                    format!("{p}/")
                }
            }
            None => format!("changeover/{app}/"),
        };
        let lock_ttl = self.duration(
            path!["store", "lock_ttl"],
            raw.lock_ttl.as_ref(),
            Duration::from_secs(15),
            false,
        );
        if !(Duration::from_secs(10)..=Duration::from_secs(86400)).contains(&lock_ttl) {
            self.err(
                path!["store", "lock_ttl"],
                "lock_ttl must be 10s to 24h for Consul",
                "out of range",
                "Consul's session TTLs are 10s to 86400s; the holder renews at a third of it, and Consul may take up to twice the TTL to free a killed holder's lock",
            );
        }
        Some(ConsulStoreSpec {
            endpoint: endpoint?,
            prefix,
            lock_ttl,
        })
    }

    fn etcd(&mut self, raw: RawStore, app: &str) -> Option<EtcdSpec> {
        let mut endpoints = Vec::new();
        match &raw.endpoints {
            None => self.err(
                path!["store"],
                "kind = \"etcd\" needs `endpoints`",
                "no endpoints",
                "list the cluster's client URLs, e.g. endpoints = [\"https://10.0.0.5:2379\"]",
            ),
            Some(list) if list.is_empty() => self.err(
                path!["store", "endpoints"],
                "`endpoints` is empty",
                "empty",
                "list the cluster's client URLs, e.g. endpoints = [\"https://10.0.0.5:2379\"]",
            ),
            Some(list) => {
                for (i, e) in list.iter().enumerate() {
                    let e = e.trim_end_matches('/');
                    let rest = e
                        .strip_prefix("http://")
                        .or_else(|| e.strip_prefix("https://"));
                    match rest {
                        Some(hp) if !hp.is_empty() && !hp.contains('/') && !hp.contains('@') => {
                            endpoints.push(e.to_string())
                        }
                        // Credentials: no span, the excerpt would show them.
                        _ if e.contains('@') => self.err(
                            vec![],
                            format!("[store] endpoints[{i}]: `{}` is not an etcd endpoint", super::redact_url(e)),
                            "",
                            "write the client URL as http(s)://host:port, without credentials (they go in username and password_env)",
                        ),
                        _ => self.err(
                            path!["store", "endpoints", i],
                            format!("`{}` is not an etcd endpoint", super::redact_url(e)),
                            "not http(s)://host:port",
                            "write the client URL as http(s)://host:port, without a path or credentials (credentials go in username and password_env)",
                        ),
                    }
                }
            }
        }
        let prefix = match &raw.prefix {
            Some(p) if p.starts_with('/') => {
                if p.ends_with('/') {
                    p.clone()
                } else {
                    format!("{p}/")
                }
            }
            Some(p) => {
                self.err(
                    path!["store", "prefix"],
                    format!("prefix `{p}` does not start with `/`"),
                    "relative prefix",
                    "write an absolute key prefix such as \"/changeover/shop/\"",
                );
                String::new()
            }
            None => format!("/changeover/{app}/"),
        };
        let tls = endpoints.iter().any(|e| e.starts_with("https://"));
        let file = |v: &mut Self, key: &str, value: &Option<String>| -> Option<PathBuf> {
            let p = value.as_ref()?;
            let path = expand_home(p);
            let path = if path.is_relative() {
                v.base_dir.join(path)
            } else {
                path
            };
            if !path.is_file() {
                v.err(
                    path!["store", key],
                    format!("{key} `{}` is not a readable file", path.display()),
                    "no such file",
                    "give the path of a PEM file (relative paths are from the config's directory)",
                );
            }
            if !tls {
                v.err(
                    path!["store", key],
                    format!("{key} is set but no endpoint is https://"),
                    "TLS file without TLS",
                    "use https:// endpoints, or remove the TLS files",
                );
            }
            Some(path)
        };
        let ca_file = file(self, "ca_file", &raw.ca_file);
        let cert_file = file(self, "cert_file", &raw.cert_file);
        let key_file = file(self, "key_file", &raw.key_file);
        if cert_file.is_some() != key_file.is_some() {
            let missing = if cert_file.is_some() {
                "key_file"
            } else {
                "cert_file"
            };
            self.err(
                path!["store"],
                format!("a client certificate needs both cert_file and key_file; `{missing}` is missing"),
                "half a client certificate",
                "give both the certificate and its private key (PEM), or neither",
            );
        }
        if raw.username.is_some() != raw.password_env.is_some() {
            let missing = if raw.username.is_some() {
                "password_env"
            } else {
                "username"
            };
            self.err(
                path!["store"],
                format!("etcd authentication needs both username and password_env; `{missing}` is missing"),
                "half a login",
                "set username = \"deploy\" and password_env = \"ETCD_PASSWORD\" (the name of an environment variable holding the password; never the password itself)",
            );
        }
        if let Some(env) = &raw.password_env {
            if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                self.err(
                    path!["store", "password_env"],
                    "password_env must name an environment variable",
                    "not a variable name",
                    "write the variable's name, e.g. password_env = \"ETCD_PASSWORD\"; the password itself never goes in the config",
                );
            }
        }
        let lock_ttl = self.duration(
            path!["store", "lock_ttl"],
            raw.lock_ttl.as_ref(),
            Duration::from_secs(15),
            false,
        );
        if lock_ttl < Duration::from_secs(2) {
            self.err(
                path!["store", "lock_ttl"],
                "lock_ttl must be at least 2s",
                "too short",
                "etcd leases are whole seconds and the holder renews at a third of the TTL; 10s to 60s is usual",
            );
        }
        let timeout = self.duration(
            path!["store", "timeout"],
            raw.timeout.as_ref(),
            Duration::from_secs(5),
            false,
        );
        Some(EtcdSpec {
            endpoints,
            prefix,
            ca_file,
            cert_file,
            key_file,
            username: raw.username,
            password_env: raw.password_env,
            lock_ttl,
            timeout,
        })
    }
}
