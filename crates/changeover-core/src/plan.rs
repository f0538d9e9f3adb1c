//! The validated plan: what a config means once every check has passed.
//! Nothing here can be wrong; the engine and the adapters take it as given.

use crate::template::Template;
use crate::unit::{address_sort_key, Host, Unit};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Plan {
    pub app: String,
    /// The config file this plan came from (for messages).
    pub source: PathBuf,
    pub ssh: SshSettings,
    pub hosts: Vec<Arc<Host>>,
    pub instances: Instances,
    pub load_balancers: Vec<LbSpec>,
    pub drain: DrainSpec,
    pub deploy: DeploySpec,
    pub health: Option<HealthSpec>,
    pub strategy: StrategySpec,
    pub targets: BTreeMap<String, TargetSpec>,
    pub witness: Option<WitnessSpec>,
    /// Where `.changeover/` (journal, local store) lives.
    pub state_dir: PathBuf,
    /// Where the lock, pointers, unit versions and history live.
    pub store: StoreSpec,
    /// `[discovery]`: where more hosts come from (merged into `hosts` by
    /// [`crate::discovery::merge`] before anything runs).
    pub discovery: Option<DiscoverySpec>,
    /// `[hooks]`: local commands around the rollout.
    pub hooks: HooksSpec,
    /// `[[notify]]`: where the run is announced.
    pub notify: Vec<NotifySpec>,
    /// `[artifact] check`: the build must exist before anything moves.
    pub artifact: Option<ArtifactSpec>,
    /// `[version] git`: `--version` may be a git ref, resolved to a sha.
    pub version_source: Option<GitSource>,
    /// Where the fleet came from, and how many hosts each source gave
    /// (`config` first; filled in by discovery).
    pub fleet_sources: Vec<FleetSource>,
}

/// `[hooks]`: local commands (`sh -c`, in the config's directory) with the
/// run in `CHANGEOVER_*` variables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HooksSpec {
    /// Before anything is touched; failing stops the run (exit 1).
    pub pre_deploy: Option<String>,
    /// After the run, whatever its outcome; failing is reported.
    pub post_deploy: Option<String>,
    /// Once, after a failed run; failing is reported.
    pub on_failure: Option<String>,
    /// Before each wave; failing halts before the wave's units are touched.
    pub pre_wave: Option<String>,
    /// After each wave; failing is reported.
    pub post_wave: Option<String>,
    /// Each hook's bound (its process group is killed past it).
    pub timeout: Duration,
    /// The config's directory: where hooks run.
    pub dir: PathBuf,
}

impl HooksSpec {
    pub fn any_wave_hook(&self) -> bool {
        self.pre_wave.is_some() || self.post_wave.is_some()
    }
}

/// `[[notify]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySpec {
    pub kind: NotifyKind,
    /// The environment variable holding the URL (a secret: never logged).
    pub url_env: String,
    /// Event names (`deploy_started`, …) and `deploy_failed` (a
    /// `deploy_finished` that is not a success).
    pub events: Vec<String>,
    /// Per request.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyKind {
    /// A Slack incoming webhook: `{"text": …}`, a readable summary.
    Slack,
    /// The event's JSON object, POSTed as it is in the `--json` stream
    /// (with the run's `app`, `target`, `command`, `message`, `holder`).
    Webhook,
}

/// What `[[notify]] events` is when not given.
pub const DEFAULT_NOTIFY_EVENTS: &[&str] = &["deploy_started", "deploy_finished", "halted"];

/// `[artifact]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactSpec {
    /// Run locally in preflight (placeholders `{version}`, `{previous_version}`,
    /// `{target}`, shell-quoted); non-zero is a no-go.
    pub check: Template,
    pub timeout: Duration,
    pub dir: PathBuf,
}

/// `[version] git`: a repository path (relative to the config) or URL.
#[derive(Debug, Clone, PartialEq)]
pub struct GitSource {
    /// As written (for messages).
    pub git: String,
    /// A local repository: `git ls-remote origin`, then `git rev-parse` in it.
    pub local_dir: Option<PathBuf>,
    /// A remote URL: `git ls-remote <url>` only.
    pub url: Option<String>,
    pub timeout: Duration,
}

/// One source of the fleet, for `plan` and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSource {
    /// `config`, `command ./inventory.sh`, `consul http://127.0.0.1:8500 service shop`.
    pub origin: String,
    pub hosts: usize,
}

/// `[discovery]`: a fleet from a command or from Consul's catalog.
#[derive(Debug, Clone, PartialEq)]
pub enum DiscoverySpec {
    /// `command = "./inventory.sh"`: run locally (`sh -c`, in the config's
    /// directory); prints a JSON array of hosts.
    Command {
        command: String,
        /// The config's directory.
        dir: PathBuf,
        timeout: Duration,
    },
    /// `consul = { address, service, ... }`: `/v1/health/service/<service>`.
    Consul(ConsulDiscovery),
}

impl DiscoverySpec {
    /// For messages and `plan`: no secret in it.
    pub fn origin(&self) -> String {
        match self {
            DiscoverySpec::Command { command, .. } => format!("command `{command}`"),
            DiscoverySpec::Consul(c) => {
                format!("consul {} service `{}`", c.endpoint.address, c.service)
            }
        }
    }
}

/// How to reach a Consul agent (discovery, the gate and the store alike).
#[derive(Debug, Clone, PartialEq)]
pub struct ConsulEndpoint {
    /// `http(s)://host:port`, no path, no credentials.
    pub address: String,
    /// The environment variable holding the ACL token (never the token).
    pub token_env: Option<String>,
    /// A CA bundle (PEM) for `https://`.
    pub ca_file: Option<PathBuf>,
    /// `?dc=`; `None` = the agent's own datacenter.
    pub datacenter: Option<String>,
    /// Per-request timeout (a blocking query adds its wait on top).
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsulDiscovery {
    pub endpoint: ConsulEndpoint,
    pub service: String,
    /// Only instances whose every check passes (`?passing`).
    pub passing_only: bool,
    /// Which address a host gets.
    pub host_address: ConsulAddress,
}

/// `host_address`: Consul's own rule (`service`: the service's address,
/// the node's when the service has none) or always the node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsulAddress {
    Service,
    Node,
}

/// `[store] kind = "consul"`: Consul's KV and sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsulStoreSpec {
    pub endpoint: ConsulEndpoint,
    /// Every key lives under it; no leading `/`, ends with `/` (default
    /// `changeover/<app>/`).
    pub prefix: String,
    /// The deploy lock's session TTL (Consul: 10s to 24h; it may wait up to
    /// twice that before it frees a killed holder's lock).
    pub lock_ttl: Duration,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSpec {
    /// Files under `dir` (the plan's `state_dir`).
    Local {
        dir: PathBuf,
    },
    Etcd(EtcdSpec),
    Consul(ConsulStoreSpec),
}

impl StoreSpec {
    pub fn kind_name(&self) -> &'static str {
        match self {
            StoreSpec::Local { .. } => "local",
            StoreSpec::Etcd(_) => "etcd",
            StoreSpec::Consul(_) => "consul",
        }
    }
}

/// `[store] kind = "etcd"`: the v3 API (JSON gateway) of an etcd cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSpec {
    /// `http(s)://host:port`, tried in order.
    pub endpoints: Vec<String>,
    /// Every key lives under it; ends with `/` (default `/changeover/<app>/`).
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    /// The environment variable holding the password (never the password).
    pub password_env: Option<String>,
    /// The deploy lock's lease TTL: a holder killed with SIGKILL frees it
    /// within this long.
    pub lock_ttl: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SshSettings {
    pub config_file: Option<PathBuf>,
    pub user: Option<String>,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// How long an idle SSH master outlives its last use (and so, at most,
    /// a killed run).
    pub control_persist: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instances {
    pub count: u32,
    pub first_port: Option<u16>,
}

impl Instances {
    /// Why `host`'s instances cannot all have a port, if they cannot.
    pub fn ports_problem(&self, host: &Host) -> Option<String> {
        let first = self.first_port?;
        let count = host.instances.unwrap_or(self.count);
        let last = first as u32 + count - 1;
        (last > 65535).then(|| {
            format!(
                "host `{}` runs {count} instances from port {first}: port {last} does not exist",
                host.name
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbScope {
    Global,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbMethod {
    State,
    Weight,
}

#[derive(Debug, Clone)]
pub enum LbKind {
    Haproxy {
        /// How the Runtime API is reached.
        socket: HaproxySocket,
        backend: Template,
        server: Template,
        method: LbMethod,
    },
    /// The reverse proxy inside the changeover process (`changeover demo`).
    Embedded {
        listen: std::net::SocketAddr,
        /// Where a unit's backend listens, e.g. `{address}:{port}`.
        member: Template,
        /// HTTP path for the balancer's own health checks; `None` = TCP connect.
        check_path: Option<String>,
        check_interval: Duration,
    },
    /// Rackspace Cloud Load Balancers v1.0: a node's condition
    /// (DRAINING → DISABLED → ENABLED), one change at a time per balancer.
    Rackspace(RackspaceSpec),
    /// No balancer: units are deployed without take-out.
    None,
}

/// `kind = "rackspace"`. The credentials are read from the environment
/// (the variables named here) when changeover first signs in, never from
/// the config file.
#[derive(Debug, Clone)]
pub struct RackspaceSpec {
    pub load_balancer_id: u64,
    /// The region whose Cloud Load Balancers endpoint the identity
    /// service's catalog gives (ORD, DFW, IAD, LON, SYD, HKG).
    pub region: String,
    /// Identity v2.0 base URL (`…/v2.0`).
    pub identity_url: String,
    pub username_env: String,
    pub api_key_env: String,
    /// A unit's node: `{address}` or `{address}:{port}`.
    pub member: Template,
    /// How often the balancer is read while a change is followed (shared by
    /// every unit waiting on it).
    pub poll_interval: Duration,
    /// How long one change may take to be applied (the balancer back to
    /// ACTIVE) before it counts as stuck.
    pub settle_timeout: Duration,
}

/// Where an HAProxy Runtime API is. With `scope = "host"` both are on each
/// host: the path is reached through the host's SSH connection (unix-socket
/// forwarding), the command runs there.
#[derive(Debug, Clone)]
pub enum HaproxySocket {
    /// A unix socket path, or TCP `host:port`.
    Path(String),
    /// A command whose stdin/stdout is the Runtime API, e.g. `docker exec -i
    /// haproxy socat stdio /var/run/haproxy.sock`; run once per exchange.
    Command(Template),
}

impl std::fmt::Display for HaproxySocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HaproxySocket::Path(p) => f.write_str(p),
            HaproxySocket::Command(t) => write!(f, "`{t}`"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LbSpec {
    pub kind: LbKind,
    pub scope: LbScope,
}

impl LbSpec {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            LbKind::Haproxy { .. } => "haproxy",
            LbKind::Embedded { .. } => "embedded",
            LbKind::Rackspace(_) => "rackspace",
            LbKind::None => "none",
        }
    }
}

#[derive(Debug, Clone)]
pub enum DrainMode {
    /// The balancer's own session count reaches 0.
    Lb,
    /// No established TCP connection to the unit's port, counted on the host
    /// itself (from `/proc/net/tcp*`, over SSH): on any local address, or
    /// only on this one (rendered per unit, e.g. `{address}`).
    Host { local_address: Option<Template> },
    /// A plain pause of `timeout`.
    Fixed,
    /// A command (on the host) that exits 0 once the unit is drained; polled.
    Command(Template),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    Fail,
    Proceed,
}

#[derive(Debug, Clone)]
pub struct DrainSpec {
    pub mode: DrainMode,
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    /// How often the session count or command is polled.
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct DeploySpec {
    /// Run on the operator's machine, before the remote steps.
    pub local: Vec<Template>,
    /// Run on the host over SSH.
    pub run: Vec<Template>,
    /// Per-step timeout.
    pub timeout: Duration,
    /// Run on every unit's host before the rollout starts, while
    /// everything is still in rotation (pull an image, unpack a tarball).
    pub prepare: Vec<Template>,
    /// How many units prepare at once (default: `[ssh] max_connections`).
    pub prepare_parallel: Option<usize>,
}

#[derive(Debug, Clone)]
pub enum HealthCheck {
    Http {
        url: Template,
        expect_status: u16,
        expect_body: Option<String>,
    },
    Tcp {
        address: Template,
    },
    Command(Template),
}

#[derive(Debug, Clone)]
pub struct HealthSpec {
    pub check: HealthCheck,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub deadline: Duration,
}

/// A count or a percentage of the units in play.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Count(u64),
    Percent(f64),
}

impl Amount {
    /// Ansible `serial` semantics: a percentage of `total`, rounded down, at least 1.
    pub fn of(&self, total: usize) -> usize {
        let n = match *self {
            Amount::Count(c) => c as usize,
            Amount::Percent(p) => ((total as f64) * p / 100.0 + 1e-9).floor() as usize,
        };
        n.max(1)
    }

    /// For limits that may legitimately be zero (`max_failures`).
    pub fn of_allow_zero(&self, total: usize) -> usize {
        match *self {
            Amount::Count(c) => c as usize,
            Amount::Percent(p) => ((total as f64) * p / 100.0 + 1e-9).floor() as usize,
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Count(c) => write!(f, "{c}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rollout {
    /// Waves; the last entry repeats.
    Batch(Vec<Amount>),
    /// A sliding window: at most this many out of service at once.
    Window(Amount),
    /// Hosts split into groups of this many (count or % of the hosts), rolled
    /// one group after another; inside a group, instance 1 of every host at
    /// once, then instance 2, and so on: never two units of one host at once.
    Groups(Amount),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StrategySpec {
    pub rollout: Rollout,
    pub max_failures: Amount,
    pub pause: Duration,
    /// A new unit starts only when every unit of the fleet (but those in
    /// flight, left out after failing, or on `--force`d hosts) passes its
    /// health check.
    pub wait_for_all_healthy: bool,
    /// How long that gate may stay closed before the deploy halts.
    pub gate_timeout: Duration,
    /// What the gate asks: the `[health]` check of every unit, or Consul.
    pub gate: GateSource,
    /// What a failed deploy does next.
    pub on_failure: OnFailure,
}

/// `[strategy] gate`: who says whether the fleet is healthy.
#[derive(Debug, Clone, PartialEq)]
pub enum GateSource {
    /// `"health"`: one probe of every unit with the `[health]` check.
    Health,
    /// `"consul"`: one query of Consul's checks for the whole service per
    /// look (the `[discovery] consul` service).
    Consul(ConsulDiscovery),
}

/// `[strategy] on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop: failed units stay out, the rest is back in (invariant 4).
    Halt,
    /// Then run `unify` on the same target at once: every unit whose
    /// recorded version is not the pointer's current goes back to it.
    Rollback,
}

/// The traffic witness: steady requests during the deploy.
#[derive(Debug, Clone, PartialEq)]
pub struct WitnessSpec {
    pub url: String,
    pub rps: u32,
    pub timeout: Duration,
    /// Halt the rollout once more requests than this have failed.
    pub abort_after_failures: Option<u64>,
    /// Share of requests sent on a kept-alive connection (the rest each on a new one).
    pub keep_alive_share: f64,
}

/// `[targets.NAME]`: a slice of the fleet and its policy, as written (the
/// overrides are already validated and merged with the top-level sections).
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub tags: Vec<String>,
    pub hosts: Vec<String>,
    pub percent: Option<f64>,
    /// The pointer it reads and moves (default: the target's name).
    pub pointer: Option<String>,
    pub require_message: bool,
    pub partial: bool,
    pub can_unify: bool,
    /// The lock taken for the whole run; `None` = no lock (`lock = false`).
    pub lock: Option<String>,
    pub lb_takeout: bool,
    pub strategy: Option<StrategySpec>,
    pub drain: Option<DrainSpec>,
    /// `Some(None)` never happens: a target cannot remove the health check.
    pub health: Option<HealthSpec>,
}

/// The default lock name.
pub const DEFAULT_LOCK: &str = "deploy";
/// The pointer of a deploy with no target.
pub const FLEET_POINTER: &str = "fleet";

/// Everything that decides how a rollout of one target behaves: the
/// top-level sections with the target's overrides applied. The engine reads
/// this, never the raw top-level config.
#[derive(Debug, Clone)]
pub struct Policy {
    pub strategy: StrategySpec,
    pub drain: DrainSpec,
    pub health: Option<HealthSpec>,
    pub deploy: DeploySpec,
    /// The lock taken for the whole run; `None` = no lock.
    pub lock: Option<String>,
    pub pointer: String,
    pub partial: bool,
    /// false = deploy in place: no balancer is touched, nothing is drained.
    pub lb_takeout: bool,
    pub require_message: bool,
    pub can_unify: bool,
}

impl Policy {
    /// Whether this rollout runs anything over SSH (then preflight connects
    /// to every host).
    pub fn uses_ssh(&self, load_balancers: &[LbSpec]) -> bool {
        !self.deploy.run.is_empty()
            || !self.deploy.prepare.is_empty()
            || matches!(
                self.drain.mode,
                DrainMode::Command(_) | DrainMode::Host { .. }
            )
            || matches!(
                self.health.as_ref().map(|h| &h.check),
                Some(HealthCheck::Command(_))
            )
            || (self.lb_takeout && load_balancers.iter().any(|l| l.scope == LbScope::Host))
    }
}

/// A resolved target: its name, its units in the stable order, its policy.
#[derive(Debug, Clone)]
pub struct Target {
    /// `None` = the whole fleet.
    pub name: Option<String>,
    pub units: Vec<Arc<Unit>>,
    pub policy: Policy,
}

impl Plan {
    /// Every unit of the fleet in the stable deploy order: by address, then
    /// instance.
    pub fn units(&self) -> Vec<Arc<Unit>> {
        let mut hosts: Vec<&Arc<Host>> = self.hosts.iter().collect();
        hosts.sort_by(|a, b| {
            address_sort_key(&a.address)
                .cmp(&address_sort_key(&b.address))
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut units = Vec::with_capacity(hosts.len() * self.instances.count as usize);
        for host in hosts {
            for instance in 1..=host.instances.unwrap_or(self.instances.count) {
                units.push(Arc::new(Unit {
                    index: units.len(),
                    host: Arc::clone(host),
                    instance,
                    port: self.instances.first_port.map(|p| p + (instance as u16 - 1)),
                }));
            }
        }
        units
    }

    /// Units of a target (or the whole fleet), still in the stable order,
    /// re-indexed from 0.
    pub fn select(&self, target: Option<&str>) -> Result<Vec<Arc<Unit>>, String> {
        let all = self.units();
        let Some(name) = target else {
            return Ok(all);
        };
        let spec = self.targets.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.targets.keys().map(String::as_str).collect();
            if known.is_empty() {
                format!("no target `{name}`: the config defines no [targets]")
            } else {
                format!("no target `{name}`; known targets: {}", known.join(", "))
            }
        })?;
        let mut chosen: Vec<Arc<Unit>> = all
            .into_iter()
            .filter(|u| {
                let by_tag =
                    spec.tags.is_empty() || spec.tags.iter().any(|t| u.host.tags.contains(t));
                let by_name = spec.hosts.is_empty() || spec.hosts.contains(&u.host.name);
                by_tag && by_name
            })
            .collect();
        if let Some(p) = spec.percent {
            let keep = Amount::Percent(p).of(chosen.len()).min(chosen.len());
            chosen.truncate(keep);
        }
        Ok(chosen
            .into_iter()
            .enumerate()
            .map(|(i, u)| {
                let mut u = (*u).clone();
                u.index = i;
                Arc::new(u)
            })
            .collect())
    }

    /// A target (or the whole fleet) resolved to its units and its policy.
    pub fn target(&self, name: Option<&str>) -> Result<Target, String> {
        let units = self.select(name)?;
        let spec = name.and_then(|n| self.targets.get(n));
        let mut policy = Policy {
            strategy: self.strategy.clone(),
            drain: self.drain.clone(),
            health: self.health.clone(),
            deploy: self.deploy.clone(),
            lock: Some(DEFAULT_LOCK.to_string()),
            pointer: name.unwrap_or(FLEET_POINTER).to_string(),
            partial: false,
            lb_takeout: true,
            require_message: false,
            can_unify: true,
        };
        if let Some(t) = spec {
            if let Some(s) = &t.strategy {
                policy.strategy = s.clone();
            }
            if let Some(d) = &t.drain {
                policy.drain = d.clone();
            }
            if let Some(h) = &t.health {
                policy.health = Some(h.clone());
            }
            policy.lock = t.lock.clone();
            if let Some(p) = &t.pointer {
                policy.pointer = p.clone();
            }
            policy.partial = t.partial;
            policy.lb_takeout = t.lb_takeout;
            policy.require_message = t.require_message;
            policy.can_unify = t.can_unify;
        }
        if !policy.lb_takeout {
            // In place: nothing was taken out, so there is nothing to drain.
            policy.drain.mode = DrainMode::Fixed;
            policy.drain.timeout = Duration::ZERO;
        }
        Ok(Target {
            name: name.map(str::to_string),
            units,
            policy,
        })
    }

    /// Whether a rollout of the whole fleet runs anything over SSH.
    pub fn uses_ssh(&self) -> bool {
        match self.target(None) {
            Ok(t) => t.policy.uses_ssh(&self.load_balancers),
            Err(_) => true,
        }
    }
}
