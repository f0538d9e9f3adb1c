//! The checks that turn a [`RawConfig`] into a [`Plan`].

use super::diagnostic::{ConfigError, ConfigErrors, ConfigWarning};
use super::locate::{line_col, Locator, Seg};
use super::raw::*;
use super::Loaded;
use crate::path;
use crate::plan::*;
use crate::template::{Template, PLACEHOLDERS};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Value;

mod around;
mod deploy;
mod discovery;
mod drain;
mod health;
mod hosts;
mod load_balancers;
mod ssh;
mod store;
mod strategy;
mod targets;
mod witness;

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
    /// `[discovery]` is set: hosts may come from elsewhere, so an empty
    /// `[[hosts]]` and unknown names in `targets.X.hosts` are checked after
    /// discovery instead.
    has_discovery: bool,
    /// `[discovery] consul`, which `[strategy] gate = "consul"` asks.
    consul_discovery: Option<ConsulDiscovery>,
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
            has_discovery: false,
            consul_discovery: None,
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

    pub(super) fn duration(
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

    pub(super) fn template(&mut self, path: P, text: &str) -> Option<Template> {
        self.template_in(path, text, PLACEHOLDERS)
    }

    /// A template that may use only `allowed` placeholders.
    pub(super) fn template_in(
        &mut self,
        path: P,
        text: &str,
        allowed: &[&str],
    ) -> Option<Template> {
        match Template::parse(text, allowed) {
            Ok(t) => Some(t),
            Err(unknown) => {
                let value_span = self.span(&path);
                // Point at the placeholder itself inside the string. Its
                // offset in the decoded string is not its offset in the
                // file once escapes, `"""` or `'` come before it (and may
                // fall inside a character there), so find it in the file.
                let needle = format!("{{{}}}", unknown.name);
                let span = value_span.map(|s| match self.text[s.clone()].find(&needle) {
                    Some(at) => s.start + at..s.start + at + needle.len(),
                    None => s,
                });
                let suggestion = closest(&unknown.name, allowed)
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
                        allowed
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

    pub(super) fn choice<'v>(
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
    pub(super) fn amount(&mut self, path: P, value: &Value, allow_zero: bool) -> Option<Amount> {
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
        self.has_discovery = raw.discovery.is_some();
        let discovery = self.discovery(raw.discovery);
        if let Some(DiscoverySpec::Consul(c)) = &discovery {
            self.consul_discovery = Some(c.clone());
        }
        let hosts = self.hosts(raw.hosts);
        let instances = self.instances(raw.instances);
        for (i, h) in hosts.iter().enumerate() {
            if let Some(problem) = instances.ports_problem(h) {
                self.err(
                    path!["hosts", i, "instances"],
                    problem,
                    "too many ports",
                    "instance k listens on first_port + k - 1, which must stay at most 65535",
                );
            }
        }
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
        let hooks = self.hooks(raw.hooks);
        let notify = self.notify(raw.notify);
        let artifact = self.artifact(raw.artifact);
        let version_source = self.version_source(raw.version);
        if raw.status.is_some() {
            self.err(
                path!["status"],
                "[status] (version_command) is not available in this version",
                "not available",
                "remove [status]; `changeover status` shows each unit's recorded version",
            );
        }
        if !self.errors.is_empty() {
            return None;
        }
        let hosts_in_config = hosts.len();
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
            discovery,
            hooks,
            notify,
            artifact,
            version_source,
            fleet_sources: vec![FleetSource {
                origin: "config".into(),
                hosts: hosts_in_config,
            }],
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
pub(super) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
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
