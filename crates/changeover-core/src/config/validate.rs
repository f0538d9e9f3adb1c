//! The checks that turn a [`RawConfig`] into a [`Plan`].

use super::diagnostic::{ConfigError, ConfigErrors, ConfigWarning};
use super::locate::{line_col, Locator, Seg};
use super::raw::*;
use super::Loaded;
use crate::path;
use crate::plan::*;
use crate::template::{Template, PLACEHOLDERS};
use crate::unit::Host;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Value;

mod store;
mod targets;

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

pub(super) struct Validator<'a> {
    file: &'a str,
    text: &'a str,
    source: Arc<String>,
    loc: Locator<'a>,
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
    /// Prepended to every path looked up for an error's location: set while
    /// a target's `[targets.NAME.strategy]` (etc.) override is checked, so
    /// the same section checks point into the target's table.
    prefix: P,
}

pub(super) type P = Vec<Seg>;

impl<'a> Validator<'a> {
    pub(super) fn new(file: &'a str, text: &'a str, base_dir: &'a Path) -> Validator<'a> {
        Validator {
            file,
            text,
            source: Arc::new(text.to_string()),
            loc: Locator::new(text),
            base_dir,
            errors: Vec::new(),
            prefix: Vec::new(),
        }
    }

    pub(super) fn run(mut self) -> Result<Loaded, ConfigErrors> {
        let mut ignored = Vec::new();
        let raw: Result<RawConfig, toml::de::Error> = toml::de::Deserializer::parse(self.text)
            .and_then(|de| serde_ignored::deserialize(de, |p| ignored.push(p.to_string())));
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                let (message, help) = explain_toml_error(e.message());
                self.errors.push(ConfigError::new(
                    self.file,
                    &self.source,
                    e.span(),
                    message,
                    "here",
                    Some(help),
                ));
                return Err(self.finish_err());
            }
        };
        let warnings = ignored.iter().map(|p| self.unknown_key(p)).collect();
        let plan = self.plan(raw);
        if self.errors.is_empty() {
            Ok(Loaded {
                plan: plan.expect("no errors means a plan"),
                warnings,
            })
        } else {
            Err(self.finish_err())
        }
    }

    fn finish_err(self) -> ConfigErrors {
        ConfigErrors {
            file: self.file.to_string(),
            errors: self.errors,
        }
    }

    fn unknown_key(&self, dotted: &str) -> ConfigWarning {
        let path: P = dotted
            .split('.')
            .filter(|s| *s != "?")
            .map(|s| match s.parse::<usize>() {
                Ok(i) => Seg::Index(i),
                Err(_) => Seg::Key(s.to_string()),
            })
            .collect();
        let location = match self.loc.key(&path) {
            Some(span) => {
                let (line, col) = line_col(self.text, span.start);
                format!("{}:{line}:{col}", self.file)
            }
            None => self.file.to_string(),
        };
        ConfigWarning {
            key: dotted.to_string(),
            location,
            message: format!("unknown key `{dotted}` is ignored (check its spelling)"),
        }
    }

    /// Where a value is, inside the current prefix.
    fn span(&self, path: &[Seg]) -> Option<std::ops::Range<usize>> {
        if self.prefix.is_empty() {
            return self.loc.value(path);
        }
        let full: Vec<Seg> = self.prefix.iter().chain(path).cloned().collect();
        // A key inherited from the top level is not in the target's table:
        // point at the target's table itself.
        self.loc
            .value(&full)
            .or_else(|| self.loc.value(&self.prefix))
    }

    pub(super) fn err(
        &mut self,
        path: P,
        message: impl Into<String>,
        label: &str,
        help: impl Into<String>,
    ) {
        let span = self.span(&path);
        self.errors.push(ConfigError::new(
            self.file,
            &self.source,
            span,
            message,
            label,
            Some(help.into()),
        ));
    }

    fn duration(
        &mut self,
        path: P,
        raw: Option<&String>,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        let Some(text) = raw else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.err(
                    path,
                    format!("duration `{text}` must be more than zero"),
                    "zero",
                    "give a positive duration such as \"30s\"",
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    path,
                    format!("`{text}` is not a duration: {e}"),
                    "not a duration",
                    "write durations like \"500ms\", \"30s\", \"5m\" or \"1h 30m\"",
                );
                default
            }
        }
    }

    fn template(&mut self, path: P, text: &str) -> Option<Template> {
        match Template::parse(text, PLACEHOLDERS) {
            Ok(t) => Some(t),
            Err(unknown) => {
                let value_span = self.span(&path);
                // Point at the placeholder itself inside the string (after the opening quote).
                let span = value_span.map(|s| {
                    let start = (s.start + 1 + unknown.start).min(s.end);
                    start..(s.start + 1 + unknown.end).min(s.end)
                });
                let suggestion = closest(&unknown.name, PLACEHOLDERS)
                    .map(|s| format!("did you mean `{{{s}}}`? "))
                    .unwrap_or_default();
                self.errors.push(ConfigError::new(
                    self.file,
                    &self.source,
                    span,
                    format!("unknown placeholder `{{{}}}`", unknown.name),
                    "unknown placeholder",
                    Some(format!(
                        "{suggestion}placeholders are {}; write `{{{{` for a literal brace",
                        PLACEHOLDERS
                            .iter()
                            .map(|p| format!("{{{p}}}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )),
                ));
                None
            }
        }
    }

    fn choice<'v>(
        &mut self,
        path: P,
        value: Option<&'v String>,
        allowed: &[&'v str],
        default: &'v str,
    ) -> &'v str {
        let Some(v) = value else { return default };
        if let Some(found) = allowed.iter().find(|a| **a == v.as_str()) {
            return found;
        }
        let key = match path.last() {
            Some(Seg::Key(k)) => k.clone(),
            _ => "value".into(),
        };
        self.err(
            path,
            format!("`{v}` is not a valid {key}"),
            "not allowed here",
            format!(
                "use one of: {}",
                allowed
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        default
    }

    /// A count (`2`) or a percentage (`"25%"`).
    fn amount(&mut self, path: P, value: &Value, allow_zero: bool) -> Option<Amount> {
        let help = if allow_zero {
            "write a whole number (0 or more) or a percentage such as \"10%\""
        } else {
            "write a whole number of units (1 or more) or a percentage such as \"25%\" (more than 0 %, at most 100 %)"
        };
        match value {
            Value::Integer(n) if *n > 0 || (allow_zero && *n == 0) => {
                Some(Amount::Count(*n as u64))
            }
            Value::Integer(n) => {
                self.err(path, format!("{n} is not allowed here"), "too small", help);
                None
            }
            Value::String(s) => {
                let Some(num) = s.trim().strip_suffix('%') else {
                    self.err(
                        path,
                        format!("`{s}` is neither a number nor a percentage"),
                        "expected a count or \"N%\"",
                        help,
                    );
                    return None;
                };
                match num.trim().parse::<f64>() {
                    Ok(p)
                        if p.is_finite() && p <= 100.0 && (p > 0.0 || (allow_zero && p == 0.0)) =>
                    {
                        Some(Amount::Percent(p))
                    }
                    Ok(p) => {
                        self.err(path, format!("{p}% is out of range"), "out of range", help);
                        None
                    }
                    Err(_) => {
                        self.err(
                            path,
                            format!("`{s}` is not a percentage"),
                            "not a percentage",
                            help,
                        );
                        None
                    }
                }
            }
            other => {
                self.err(
                    path,
                    format!(
                        "expected a count or a percentage, found {}",
                        other.type_str()
                    ),
                    "wrong type",
                    help,
                );
                None
            }
        }
    }

    fn plan(&mut self, raw: RawConfig) -> Option<Plan> {
        let app = match raw.app {
            Some(a) if !a.trim().is_empty() => a,
            Some(_) => {
                self.err(
                    path!["app"],
                    "app must not be empty",
                    "empty",
                    "name the application, e.g. app = \"shop\"",
                );
                String::new()
            }
            None => {
                self.err(
                    vec![],
                    "missing required key `app`",
                    "",
                    "add a line such as app = \"shop\" at the top of the file",
                );
                String::new()
            }
        };
        let ssh = self.ssh(raw.ssh.unwrap_or_default());
        let hosts = self.hosts(raw.hosts);
        let instances = self.instances(raw.instances);
        let load_balancers = self.load_balancers(raw.load_balancers);
        let drain = self.drain(raw.drain.clone(), &load_balancers, &instances);
        let deploy = self.deploy(raw.deploy);
        let has_health = raw.health.is_some();
        let health = raw.health.clone().and_then(|h| self.health(h));
        let strategy = self.strategy(raw.strategy.clone(), has_health);
        let sections = targets::Sections {
            drain: raw.drain.clone(),
            health: raw.health.clone(),
            strategy: raw.strategy.clone(),
            load_balancers: load_balancers.clone(),
            instances,
        };
        let targets = self.targets(raw.targets, &hosts, &sections);
        let witness = raw.witness.and_then(|w| self.witness(w));
        self.ports_needed(&load_balancers, &instances, &health, &deploy);
        let state_dir = match raw.state_dir {
            Some(d) => self.base_dir.join(d),
            None => self.base_dir.join(".changeover"),
        };
        let store = self.store(raw.store, &app, &state_dir);
        if !self.errors.is_empty() {
            return None;
        }
        Some(Plan {
            app,
            source: PathBuf::from(self.file),
            ssh,
            hosts,
            instances,
            load_balancers,
            drain: drain?,
            deploy: deploy?,
            health,
            strategy: strategy?,
            targets,
            witness,
            state_dir,
            store,
        })
    }

    /// `{port}` is empty unless `[instances] first_port` is set: a template
    /// that needs it would silently produce a wrong address or command.
    fn ports_needed(
        &mut self,
        lbs: &[LbSpec],
        instances: &Instances,
        health: &Option<HealthSpec>,
        deploy: &Option<DeploySpec>,
    ) {
        if instances.first_port.is_some() {
            return;
        }
        let uses_port = |t: &Template| t.placeholders().any(|p| p == "port");
        let mut users: Vec<P> = Vec::new();
        for (i, lb) in lbs.iter().enumerate() {
            if let LbKind::Embedded { member, .. } = &lb.kind {
                if uses_port(member) {
                    users.push(path!["load_balancers", i, "member"]);
                }
            }
        }
        if let Some(h) = health {
            let (key, t) = match &h.check {
                HealthCheck::Http { url, .. } => ("http", url),
                HealthCheck::Tcp { address } => ("tcp", address),
                HealthCheck::Command(t) => ("command", t),
            };
            if uses_port(t) {
                users.push(path!["health", key]);
            }
        }
        if let Some(d) = deploy {
            if d.run.iter().any(uses_port) {
                users.push(path!["deploy", "run"]);
            }
            if d.local.iter().any(uses_port) {
                users.push(path!["deploy", "local"]);
            }
        }
        for p in users {
            self.err(
                p,
                "{port} is used here but no port is defined",
                "needs [instances] first_port",
                "add [instances] with first_port = <the first instance's port> (instance k listens on first_port + k - 1)",
            );
        }
    }

    fn ssh(&mut self, raw: RawSsh) -> SshSettings {
        let max_connections = match raw.max_connections {
            None => 64,
            Some(n) if n >= 1 => n as usize,
            Some(n) => {
                self.err(
                    path!["ssh", "max_connections"],
                    format!("max_connections = {n} would never connect"),
                    "must be at least 1",
                    "set how many SSH connections may be opened at once, e.g. 64",
                );
                64
            }
        };
        SshSettings {
            config_file: raw.config_file.map(|f| expand_home(&f)),
            user: raw.user,
            max_connections,
            connect_timeout: self.duration(
                path!["ssh", "connect_timeout"],
                raw.connect_timeout.as_ref(),
                Duration::from_secs(10),
                false,
            ),
        }
    }

    fn hosts(&mut self, raw: Vec<RawHost>) -> Vec<Arc<Host>> {
        if raw.is_empty() {
            self.err(
                vec![],
                "no hosts in the config",
                "",
                "add at least one [[hosts]] table with name and address",
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<(String, Option<i64>), usize> = HashMap::new();
        let mut hosts = Vec::with_capacity(raw.len());
        for (i, h) in raw.into_iter().enumerate() {
            if h.name.trim().is_empty() || h.name.chars().any(|c| c.is_whitespace() || c == ',') {
                self.err(path!["hosts", i, "name"], format!("host name `{}` is not usable", h.name), "bad name", "host names are non-empty and contain no spaces or commas (they are used in --force lists)");
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
            hosts.push(Arc::new(Host {
                name: h.name,
                address: h.address,
                tags: h.tags,
                ssh_user: h.ssh_user,
                ssh_port,
            }));
        }
        hosts
    }

    fn instances(&mut self, raw: Option<RawInstances>) -> Instances {
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
        let first_port = match raw.first_port {
            None => None,
            Some(p) if p >= 1 && p + count as i64 - 1 <= 65535 => Some(p as u16),
            Some(p) => {
                self.err(
                    path!["instances", "first_port"],
                    format!(
                        "ports {p}..{} are not all valid TCP ports",
                        p + count as i64 - 1
                    ),
                    "out of range",
                    "instance k listens on first_port + k - 1, which must be 1 to 65535",
                );
                None
            }
        };
        Instances { count, first_port }
    }

    fn load_balancers(&mut self, raw: Vec<RawLb>) -> Vec<LbSpec> {
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

    fn witness(&mut self, raw: RawWitness) -> Option<WitnessSpec> {
        if !raw.url.starts_with("http://") {
            self.err(
                path!["witness", "url"],
                format!("the witness URL `{}` is not an http:// URL", redact_url(&raw.url)),
                "not http://",
                "point the witness at the balancer's http:// address, e.g. url = \"http://10.0.0.5/health\" (https is not supported by the witness yet)",
            );
        }
        let rps = match raw.rps {
            None => 20,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(n) => {
                self.err(
                    path!["witness", "rps"],
                    format!("rps = {n} is out of range"),
                    "out of range",
                    "requests per second, 1 to 10000",
                );
                20
            }
        };
        let abort_after_failures = match raw.abort_after_failures {
            None => None,
            Some(n) if n >= 0 => Some(n as u64),
            Some(n) => {
                self.err(
                    path!["witness", "abort_after_failures"],
                    format!("{n} is negative"),
                    "negative",
                    "the number of failed requests tolerated before the rollout halts, 0 or more",
                );
                None
            }
        };
        let keep_alive_share = match raw.keep_alive_share {
            None => 0.5,
            Some(f) if (0.0..=1.0).contains(&f) => f,
            Some(f) => {
                self.err(path!["witness", "keep_alive_share"], format!("{f} is not a share"), "out of range", "a number from 0.0 (every request on a new connection) to 1.0 (all on kept-alive connections)");
                0.5
            }
        };
        let timeout = self.duration(
            path!["witness", "timeout"],
            raw.timeout.as_ref(),
            Duration::from_secs(2),
            false,
        );
        Some(WitnessSpec {
            url: raw.url,
            rps,
            timeout,
            abort_after_failures,
            keep_alive_share,
        })
    }

    fn drain(
        &mut self,
        raw: Option<RawDrain>,
        lbs: &[LbSpec],
        instances: &Instances,
    ) -> Option<DrainSpec> {
        let raw = raw.unwrap_or_default();
        let counting = lbs
            .iter()
            .any(|l| matches!(l.kind, LbKind::Haproxy { .. } | LbKind::Embedded { .. }));
        let default_mode = if counting || lbs.is_empty() {
            "lb"
        } else {
            "fixed"
        };
        let mode = match self.choice(
            path!["drain", "mode"],
            raw.mode.as_ref(),
            &["lb", "host", "fixed", "command"],
            default_mode,
        ) {
            "lb" => {
                if !counting && !lbs.is_empty() {
                    self.err(path!["drain", "mode"], "drain mode \"lb\" needs a balancer that counts sessions, and none configured does", "no balancer can count sessions", "use mode = \"fixed\" (a pause) or \"command\"");
                }
                DrainMode::Lb
            }
            "host" => {
                if instances.first_port.is_none() {
                    self.err(
                        path!["drain", "mode"],
                        "drain mode \"host\" counts connections to the unit's port, but no port is defined",
                        "needs [instances] first_port",
                        "add [instances] with first_port = <the port the app listens on> (instance k listens on first_port + k - 1)",
                    );
                }
                let local_address = match &raw.local_address {
                    Some(a) => Some(self.template(path!["drain", "local_address"], a)?),
                    None => None,
                };
                DrainMode::Host { local_address }
            }
            "command" => match &raw.command {
                Some(c) => DrainMode::Command(self.template(path!["drain", "command"], c)?),
                None => {
                    self.err(path!["drain", "mode"], "drain mode \"command\" without drain.command", "needs drain.command", "set command = \"...\": run on the host, it exits 0 once the unit has no open connection");
                    return None;
                }
            },
            _ => DrainMode::Fixed,
        };
        if raw.local_address.is_some() && !matches!(mode, DrainMode::Host { .. }) {
            self.err(
                path!["drain", "local_address"],
                "drain.local_address applies to mode = \"host\" only",
                "not used",
                "remove it, or set mode = \"host\" to count connections on the host",
            );
        }
        let on_timeout = match self.choice(
            path!["drain", "on_timeout"],
            raw.on_timeout.as_ref(),
            &["fail", "proceed"],
            "fail",
        ) {
            "proceed" => OnTimeout::Proceed,
            _ => OnTimeout::Fail,
        };
        Some(DrainSpec {
            mode,
            timeout: self.duration(
                path!["drain", "timeout"],
                raw.timeout.as_ref(),
                Duration::from_secs(30),
                true,
            ),
            on_timeout,
            interval: self.duration(
                path!["drain", "interval"],
                raw.interval.as_ref(),
                Duration::from_millis(200),
                false,
            ),
        })
    }

    fn commands(&mut self, path: P, value: Option<&Value>) -> Vec<Template> {
        let Some(value) = value else {
            return Vec::new();
        };
        let help = "give a command string or a list of command strings";
        match value {
            Value::String(s) => self.template(path, s).into_iter().collect(),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(Seg::Index(i));
                    match item {
                        Value::String(s) => out.extend(self.template(p, s)),
                        other => self.err(
                            p,
                            format!("expected a command string, found {}", other.type_str()),
                            "not a string",
                            help,
                        ),
                    }
                }
                out
            }
            other => {
                self.err(
                    path,
                    format!(
                        "expected a command string or a list, found {}",
                        other.type_str()
                    ),
                    "wrong type",
                    help,
                );
                Vec::new()
            }
        }
    }

    fn deploy(&mut self, raw: Option<RawDeploy>) -> Option<DeploySpec> {
        let Some(raw) = raw else {
            self.err(vec![], "missing [deploy] section", "", "add [deploy] with run = \"...\" (runs on each host over SSH) and/or local = \"...\" (runs on this machine)");
            return None;
        };
        let run = self.commands(path!["deploy", "run"], raw.run.as_ref());
        let local = self.commands(path!["deploy", "local"], raw.local.as_ref());
        if raw.run.is_none() && raw.local.is_none() {
            self.err(path!["deploy"], "[deploy] has no step", "nothing to run", "set run = \"...\" (runs on each host over SSH) and/or local = \"...\" (runs on this machine)");
        }
        Some(DeploySpec {
            local,
            run,
            timeout: self.duration(
                path!["deploy", "timeout"],
                raw.timeout.as_ref(),
                Duration::from_secs(300),
                false,
            ),
        })
    }

    fn health(&mut self, raw: RawHealth) -> Option<HealthSpec> {
        let given = [raw.http.is_some(), raw.tcp.is_some(), raw.command.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given != 1 {
            self.err(path!["health"], if given == 0 { "[health] names no check" } else { "[health] names more than one check" }, "here", "set exactly one of http = \"http://{address}:8080/health\", tcp = \"{address}:8080\" or command = \"...\"");
            return None;
        }
        let expect_status = match raw.expect_status {
            None => 200,
            Some(s) if (100..=599).contains(&s) => s as u16,
            Some(s) => {
                self.err(
                    path!["health", "expect_status"],
                    format!("{s} is not an HTTP status"),
                    "out of range",
                    "use a status code from 100 to 599, usually 200",
                );
                200
            }
        };
        let check = if let Some(url) = &raw.http {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                self.err(
                    path!["health", "http"],
                    format!("`{url}` is not an http(s) URL"),
                    "not a URL",
                    "write a URL such as \"http://{address}:8080/health\"",
                );
            }
            HealthCheck::Http {
                url: self.template(path!["health", "http"], url)?,
                expect_status,
                expect_body: raw.expect_body.clone(),
            }
        } else if let Some(addr) = &raw.tcp {
            HealthCheck::Tcp {
                address: self.template(path!["health", "tcp"], addr)?,
            }
        } else {
            HealthCheck::Command(self.template(
                path!["health", "command"],
                raw.command.as_deref().unwrap_or_default(),
            )?)
        };
        let healthy_threshold = match raw.healthy_threshold {
            None => 1,
            Some(n) if (1..=1000).contains(&n) => n as u32,
            Some(n) => {
                self.err(
                    path!["health", "healthy_threshold"],
                    format!("healthy_threshold = {n} is not allowed"),
                    "out of range",
                    "the number of consecutive passing checks, 1 or more",
                );
                1
            }
        };
        let interval = self.duration(
            path!["health", "interval"],
            raw.interval.as_ref(),
            Duration::from_secs(1),
            false,
        );
        let timeout = self.duration(
            path!["health", "timeout"],
            raw.timeout.as_ref(),
            Duration::from_secs(2),
            false,
        );
        let deadline = self.duration(
            path!["health", "deadline"],
            raw.deadline.as_ref(),
            Duration::from_secs(60),
            false,
        );
        if deadline < timeout {
            self.err(
                path!["health", "deadline"],
                "the health deadline is shorter than one check's timeout",
                "too short",
                "the deadline bounds all checks of a unit; make it longer than timeout",
            );
        }
        Some(HealthSpec {
            check,
            interval,
            timeout,
            healthy_threshold,
            deadline,
        })
    }

    fn strategy(&mut self, raw: Option<RawStrategy>, has_health: bool) -> Option<StrategySpec> {
        let raw = raw.unwrap_or_default();
        let wait_for_all_healthy = raw.wait_for_all_healthy.unwrap_or(false);
        if wait_for_all_healthy && !has_health {
            self.err(
                path!["strategy", "wait_for_all_healthy"],
                "wait_for_all_healthy needs a health check, and there is no [health]",
                "nothing to wait for",
                "add [health] (http, tcp or command): the gate runs it on every unit of the fleet before a new unit starts",
            );
        }
        let gate_timeout = self.duration(
            path!["strategy", "gate_timeout"],
            raw.gate_timeout.as_ref(),
            Duration::from_secs(600),
            false,
        );
        if let Some(g) = &raw.groups {
            if raw.batch.is_some() || raw.window.is_some() {
                let other = if raw.batch.is_some() {
                    "batch"
                } else {
                    "window"
                };
                self.err(
                    path!["strategy", "groups"],
                    format!("both groups and {other} are set"),
                    "one of them",
                    "groups rolls hosts group after group, instance by instance (a wave is instance k of every host in the group); use it instead of batch or window",
                );
                return None;
            }
            let amount = self.amount(path!["strategy", "groups"], g, false)?;
            return self.strategy_rest(
                &raw,
                Rollout::Groups(amount),
                wait_for_all_healthy,
                gate_timeout,
            );
        }
        let rollout = match (&raw.batch, &raw.window) {
            (Some(_), Some(_)) => {
                self.err(
                    path!["strategy", "window"],
                    "both batch and window are set",
                    "one of them",
                    "use batch (waves) or window (a sliding window), not both",
                );
                return None;
            }
            (None, Some(w)) => {
                Rollout::Window(self.amount(path!["strategy", "window"], w, false)?)
            }
            (Some(Value::Array(items)), None) => {
                if items.is_empty() {
                    self.err(
                        path!["strategy", "batch"],
                        "the batch ramp is empty",
                        "empty ramp",
                        "list wave sizes such as [1, \"10%\", \"100%\"]; the last one repeats",
                    );
                    return None;
                }
                let mut ramp = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    ramp.extend(self.amount(path!["strategy", "batch", i], item, false));
                }
                if ramp.len() != items.len() {
                    return None;
                }
                Rollout::Batch(ramp)
            }
            (Some(b), None) => {
                Rollout::Batch(vec![self.amount(path!["strategy", "batch"], b, false)?])
            }
            (None, None) => Rollout::Batch(vec![Amount::Count(1)]),
        };
        self.strategy_rest(&raw, rollout, wait_for_all_healthy, gate_timeout)
    }

    fn strategy_rest(
        &mut self,
        raw: &RawStrategy,
        rollout: Rollout,
        wait_for_all_healthy: bool,
        gate_timeout: Duration,
    ) -> Option<StrategySpec> {
        let max_failures = match &raw.max_failures {
            Some(v) => self.amount(path!["strategy", "max_failures"], v, true)?,
            None => Amount::Count(0),
        };
        let on_failure = match self.choice(
            path!["strategy", "on_failure"],
            raw.on_failure.as_ref(),
            &["halt", "rollback"],
            "halt",
        ) {
            "rollback" => OnFailure::Rollback,
            _ => OnFailure::Halt,
        };
        Some(StrategySpec {
            on_failure,
            rollout,
            max_failures,
            pause: self.duration(
                path!["strategy", "pause"],
                raw.pause.as_ref(),
                Duration::ZERO,
                true,
            ),
            wait_for_all_healthy,
            gate_timeout,
        })
    }
}

/// A URL for messages: no userinfo, no query (either may hold a secret).
pub(super) fn redact_url(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or("");
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            if path.is_empty() {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => no_query.to_string(),
    }
}

pub(super) fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Turn toml's messages into ones with a hint.
fn explain_toml_error(message: &str) -> (String, String) {
    let message = message
        .trim()
        .replace("expected i64", "expected a whole number")
        .replace("expected u16", "expected a whole number")
        .replace("expected f64", "expected a number")
        .replace("expected a boolean", "expected true or false");
    let help = if message.contains("missing field") {
        "add the missing key to this table".to_string()
    } else if message.contains("invalid type") {
        "this value has the wrong type; check the quoting (strings in \"...\", numbers bare, lists in [...])".to_string()
    } else if message.contains("duplicate key") {
        "a key appears twice in one table; keep one".to_string()
    } else {
        "fix the TOML syntax here (see https://toml.io)".to_string()
    };
    (message, help)
}

/// The closest candidate within a small edit distance, for "did you mean".
fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
