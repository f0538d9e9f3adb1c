//! `[[load_balancers]]`: the balancers units are taken out of and put back into.

use super::{closest, Validator};
use crate::config::raw::RawLb;
use crate::path;
use crate::plan::{HaproxySocket, LbKind, LbMethod, LbScope, LbSpec};
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
const LB_KINDS_AVAILABLE: &[&str] = &["haproxy", "embedded", "none"];

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
