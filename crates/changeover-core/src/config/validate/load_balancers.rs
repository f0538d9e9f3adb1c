//! `[[load_balancers]]`: the balancers units are taken out of and put back into.

use super::{closest, Validator};
use crate::config::raw::RawLb;
use crate::path;
use crate::plan::{HaproxySocket, LbKind, LbMethod, LbScope, LbSpec, RackspaceSpec};
use std::time::Duration;

const LB_KINDS: &[&str] = &[
    "haproxy",
    "elb",
    "elbv2",
    "rackspace",
    "octavia",
    "embedded",
    "none",
];
const LB_KINDS_AVAILABLE: &[&str] = &["haproxy", "rackspace", "embedded", "none"];

impl Validator<'_> {
    pub(super) fn load_balancers(&mut self, raw: Vec<RawLb>) -> Vec<LbSpec> {
        if raw.is_empty() {
            self.err(vec![], "no [[load_balancers]] in the config", "", "add the balancer the fleet sits behind (e.g. kind = \"haproxy\"), or kind = \"none\" to deploy without taking units out");
        }
        let mut out = Vec::new();
        for (i, lb) in raw.into_iter().enumerate() {
            if !LB_KINDS.contains(&lb.kind.as_str()) {
                let hint = closest(&lb.kind, LB_KINDS)
                    .map(|s| format!("did you mean \"{s}\"? "))
                    .unwrap_or_default();
                self.err(
                    path!["load_balancers", i, "kind"],
                    format!("unknown load balancer kind `{}`", lb.kind),
                    "unknown kind",
                    format!("{hint}kinds are: {}", LB_KINDS.join(", ")),
                );
                continue;
            }
            if !LB_KINDS_AVAILABLE.contains(&lb.kind.as_str()) {
                self.err(
                    path!["load_balancers", i, "kind"],
                    format!(
                        "load balancer kind `{}` is not available in this version of changeover",
                        lb.kind
                    ),
                    "not available yet",
                    format!("available now: {}", LB_KINDS_AVAILABLE.join(", ")),
                );
                continue;
            }
            if lb.kind != "rackspace"
                && !self.foreign_keys(
                    i,
                    &lb,
                    &[
                        ("load_balancer_id", lb.load_balancer_id.is_some()),
                        ("region", lb.region.is_some()),
                        ("identity_url", lb.identity_url.is_some()),
                        ("username_env", lb.username_env.is_some()),
                        ("api_key_env", lb.api_key_env.is_some()),
                        ("poll_interval", lb.poll_interval.is_some()),
                        ("settle_timeout", lb.settle_timeout.is_some()),
                    ],
                )
            {
                continue;
            }
            let scope = match self.choice(
                path!["load_balancers", i, "scope"],
                lb.scope.as_ref(),
                &["global", "host"],
                "global",
            ) {
                "host" if lb.kind != "haproxy" => {
                    self.err(
                        path!["load_balancers", i, "scope"],
                        format!("scope = \"host\" is not available for kind `{}`", lb.kind),
                        "haproxy only",
                        "a balancer on every host is an HAProxy beside the app: kind = \"haproxy\" with its socket or socket_command on the host",
                    );
                    continue;
                }
                "host" => LbScope::Host,
                _ => LbScope::Global,
            };
            let kind = match lb.kind.as_str() {
                "none" => LbKind::None,
                "rackspace" => match self.rackspace(i, &lb) {
                    Some(k) => k,
                    None => continue,
                },
                "embedded" => match self.embedded(i, &lb) {
                    Some(k) => k,
                    None => continue,
                },
                _ => {
                    let socket = match (&lb.socket, &lb.socket_command) {
                        (Some(_), Some(_)) => {
                            self.err(
                                path!["load_balancers", i, "socket_command"],
                                "both socket and socket_command are set",
                                "one of them",
                                "use socket (a unix socket path or host:port) or socket_command (a command whose stdin/stdout is the runtime API), not both",
                            );
                            continue;
                        }
                        (Some(path), None) => {
                            if scope == LbScope::Host && !path.starts_with('/') {
                                self.err(
                                    path!["load_balancers", i, "socket"],
                                    format!("`{path}` is not an absolute socket path"),
                                    "not a path on the host",
                                    "with scope = \"host\" the socket is reached over SSH: give the unix socket's absolute path on the host, or use socket_command",
                                );
                                continue;
                            }
                            HaproxySocket::Path(path.clone())
                        }
                        (None, Some(command)) => match self
                            .template(path!["load_balancers", i, "socket_command"], command)
                        {
                            Some(t) => {
                                // One command per host (or one for a global
                                // balancer): unit placeholders have no value.
                                let allowed: &[&str] = match scope {
                                    LbScope::Host => &["host", "address"],
                                    LbScope::Global => &[],
                                };
                                if let Some(p) = t.placeholders().find(|p| !allowed.contains(p)) {
                                    self.err(
                                        path!["load_balancers", i, "socket_command"],
                                        format!("{{{p}}} cannot be used in socket_command"),
                                        "no value here",
                                        if scope == LbScope::Host {
                                            "the command reaches the host's HAProxy, not a unit's: only {host} and {address} are known"
                                        } else {
                                            "a global balancer's command runs once for the fleet: it takes no placeholder"
                                        },
                                    );
                                    continue;
                                }
                                HaproxySocket::Command(t)
                            }
                            None => continue,
                        },
                        (None, None) => {
                            self.err(path!["load_balancers", i], "haproxy balancer without `socket`", "this balancer", "set socket = \"/run/haproxy/admin.sock\" (a unix socket path) or \"127.0.0.1:9999\" (the runtime API's TCP address), or socket_command = \"socat stdio /run/haproxy/admin.sock\"");
                            continue;
                        }
                    };
                    let backend = match &lb.backend {
                        Some(b) => self.template(path!["load_balancers", i, "backend"], b),
                        None => {
                            self.err(
                                path!["load_balancers", i],
                                "haproxy balancer without `backend`",
                                "this balancer",
                                "set backend = \"<the HAProxy backend the servers are in>\"",
                            );
                            None
                        }
                    };
                    let server_src = lb.server.clone().unwrap_or_else(|| "{host}".into());
                    let server = self.template(path!["load_balancers", i, "server"], &server_src);
                    let method = match self.choice(
                        path!["load_balancers", i, "method"],
                        lb.method.as_ref(),
                        &["state", "weight"],
                        "state",
                    ) {
                        "weight" => LbMethod::Weight,
                        _ => LbMethod::State,
                    };
                    match (backend, server) {
                        (Some(backend), Some(server)) => LbKind::Haproxy {
                            socket,
                            backend,
                            server,
                            method,
                        },
                        _ => continue,
                    }
                }
            };
            out.push(LbSpec { kind, scope });
        }
        out
    }

    /// Keys of other kinds set on this balancer: an error each, since
    /// they would do nothing.
    fn foreign_keys(&mut self, i: usize, lb: &RawLb, keys: &[(&str, bool)]) -> bool {
        let mut clean = true;
        for (key, set) in keys {
            if *set {
                self.err(
                    path!["load_balancers", i, *key],
                    format!("`{key}` does not apply to kind `{}`", lb.kind),
                    "not a key of this kind",
                    "remove it (see the README's section on this balancer kind for its keys)",
                );
                clean = false;
            }
        }
        clean
    }

    fn rackspace(&mut self, i: usize, lb: &RawLb) -> Option<LbKind> {
        let clean = self.foreign_keys(
            i,
            lb,
            &[
                ("socket", lb.socket.is_some()),
                ("socket_command", lb.socket_command.is_some()),
                ("backend", lb.backend.is_some()),
                ("server", lb.server.is_some()),
                ("method", lb.method.is_some()),
                ("listen", lb.listen.is_some()),
                ("check_path", lb.check_path.is_some()),
                ("check_interval", lb.check_interval.is_some()),
            ],
        );
        let id = match &lb.load_balancer_id {
            Some(toml::Value::Integer(n)) if *n > 0 => Some(*n as u64),
            Some(toml::Value::String(s)) if s.parse::<u64>().is_ok_and(|n| n > 0) => s.parse().ok(),
            Some(_) => {
                self.err(
                    path!["load_balancers", i, "load_balancer_id"],
                    "load_balancer_id is not a balancer id",
                    "a positive number",
                    "write the numeric id Cloud Load Balancers shows, e.g. load_balancer_id = 1234",
                );
                None
            }
            None => {
                self.err(
                    path!["load_balancers", i],
                    "rackspace balancer without `load_balancer_id`",
                    "this balancer",
                    "set load_balancer_id = <the numeric id of the load balancer>",
                );
                None
            }
        };
        let region = match &lb.region {
            Some(r) if !r.trim().is_empty() => Some(r.trim().to_uppercase()),
            _ => {
                self.err(
                    path!["load_balancers", i],
                    "rackspace balancer without `region`",
                    "this balancer",
                    "set region = \"ORD\" (or DFW, IAD, LON, SYD, HKG: where the load balancer is)",
                );
                None
            }
        };
        let identity_url = lb
            .identity_url
            .clone()
            .unwrap_or_else(|| "https://identity.api.rackspacecloud.com/v2.0".into());
        if !(identity_url.starts_with("https://") || identity_url.starts_with("http://")) {
            self.err(
                path!["load_balancers", i, "identity_url"],
                format!("`{identity_url}` is not an http(s) URL"),
                "not a URL",
                "write identity_url = \"https://identity.api.rackspacecloud.com/v2.0\" (the default)",
            );
        }
        if identity_url.contains('@') {
            self.err(
                path!["load_balancers", i, "identity_url"],
                "identity_url carries credentials",
                "no credentials in URLs",
                "put the username and API key in the environment variables named by username_env and api_key_env",
            );
        }
        let env_name = |v: &mut Self, key: &str, raw: &Option<String>, default: &str| {
            let name = raw.clone().unwrap_or_else(|| default.to_string());
            let ok = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                v.err(
                    path!["load_balancers", i, key],
                    format!("`{name}` is not an environment variable name"),
                    "a variable name",
                    format!("{key} names the variable holding the secret (e.g. {default}), not the secret itself"),
                );
            }
            name
        };
        let username_env = env_name(self, "username_env", &lb.username_env, "RAX_USERNAME");
        let api_key_env = env_name(self, "api_key_env", &lb.api_key_env, "RAX_API_KEY");
        let member_src = lb.member.clone().unwrap_or_else(|| "{address}".into());
        let member = self.template(path!["load_balancers", i, "member"], &member_src);
        let poll_interval = self.duration(
            path!["load_balancers", i, "poll_interval"],
            lb.poll_interval.as_ref(),
            Duration::from_secs(1),
            false,
        );
        let settle_timeout = self.duration(
            path!["load_balancers", i, "settle_timeout"],
            lb.settle_timeout.as_ref(),
            Duration::from_secs(120),
            false,
        );
        if !clean {
            return None;
        }
        Some(LbKind::Rackspace(RackspaceSpec {
            load_balancer_id: id?,
            region: region?,
            identity_url: identity_url.trim_end_matches('/').to_string(),
            username_env,
            api_key_env,
            member: member?,
            poll_interval,
            settle_timeout,
        }))
    }

    fn embedded(&mut self, i: usize, lb: &RawLb) -> Option<LbKind> {
        let listen_text = lb.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let listen = match listen_text.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path!["load_balancers", i, "listen"],
                    format!("`{listen_text}` is not an address to listen on"),
                    "not ip:port",
                    "write listen = \"127.0.0.1:8000\"",
                );
                None
            }
        };
        let member_src = lb
            .member
            .clone()
            .unwrap_or_else(|| "{address}:{port}".into());
        let member = self.template(path!["load_balancers", i, "member"], &member_src);
        if let Some(p) = &lb.check_path {
            if !p.starts_with('/') {
                self.err(
                    path!["load_balancers", i, "check_path"],
                    format!("`{p}` is not a path"),
                    "must start with /",
                    "write check_path = \"/health\"",
                );
            }
        }
        let check_interval = self.duration(
            path!["load_balancers", i, "check_interval"],
            lb.check_interval.as_ref(),
            Duration::from_millis(200),
            false,
        );
        Some(LbKind::Embedded {
            listen: listen?,
            member: member?,
            check_path: lb.check_path.clone(),
            check_interval,
        })
    }
}
