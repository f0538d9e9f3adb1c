//! From a validated plan and a resolved target to a [`Deployment`]: choose
//! and build the adapters (the factory; the binary only wires).

use crate::discovery::consul::ConsulGate;
use crate::health::{command::CommandProbe, http::HttpProbe, tcp::TcpProbe};
use crate::lb::embedded::{EmbeddedLb, EmbeddedOptions};
use crate::lb::haproxy::{self, HaproxyLb};
use crate::lb::rackspace::{self, RackspaceLb, RackspaceOptions};
use crate::lb::{none::NoBalancer, per_host::PerHostLb};
use crate::remote::{local::LocalRemote, ssh};
use changeover_core::engine::Deployment;
use changeover_core::event::EventSink;
use changeover_core::health::{FleetHealth, HealthProbe};
use changeover_core::journal::{Journal, MemoryJournal};
use changeover_core::lb::LoadBalancer;
use changeover_core::plan::{
    GateSource, HaproxySocket, HealthCheck, HealthSpec, LbKind, LbMethod, LbScope, LbSpec, Plan,
    Target,
};
use changeover_core::remote::Remote;
use changeover_core::template::Vars;
use changeover_core::unit::{Host, Unit};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What a rollout is asked to do, beyond the plan and the target.
pub struct RolloutArgs<'a> {
    pub deploy_id: String,
    pub version: String,
    /// `{previous_version}`: the pointer's current before this run.
    pub previous_version: String,
    pub force: &'a [String],
    pub events: Arc<dyn EventSink>,
    /// Where balancer changes are written before they are made; `None`
    /// (check) writes nothing.
    pub journal: Option<Arc<dyn Journal>>,
}

/// Build the adapters for a rollout of `target`: the remote (SSH when the
/// policy runs anything on the hosts), the balancers (none when the target
/// deploys in place), the health probe.
pub async fn deployment(
    plan: &Arc<Plan>,
    target: &Target,
    args: RolloutArgs<'_>,
) -> Result<Deployment, String> {
    let units = target.units.clone();
    let policy = target.policy.clone();
    let local: Arc<dyn Remote> = Arc::new(LocalRemote::new());
    let remote: Arc<dyn Remote> = if policy.uses_ssh(&plan.load_balancers) {
        Arc::new(ssh::SshRemote::new(ssh::SshOptions {
            config_file: plan.ssh.config_file.clone(),
            user: plan.ssh.user.clone(),
            max_connections: plan.ssh.max_connections,
            connect_timeout: plan.ssh.connect_timeout,
            control_persist: plan.ssh.control_persist,
            ..ssh::SshOptions::default()
        }))
    } else {
        Arc::clone(&local)
    };
    let mut balancers = Vec::new();
    if policy.lb_takeout {
        for spec in &plan.load_balancers {
            balancers.push(balancer(spec, &units, &remote, &local).await?);
        }
    }
    let health = policy.health.as_ref().map(|h| health_probe(h, &remote));
    let gate: Option<Arc<dyn FleetHealth>> = match &policy.strategy.gate {
        GateSource::Consul(c) if policy.strategy.wait_for_all_healthy => {
            Some(Arc::new(ConsulGate::new(c).map_err(|e| {
                format!("cannot set up the Consul gate: {e}")
            })?))
        }
        _ => None,
    };
    Ok(Deployment {
        plan: Arc::clone(plan),
        policy,
        units,
        balancers,
        remote,
        local,
        health,
        gate,
        wave_hooks: None,
        journal: args
            .journal
            .unwrap_or_else(|| Arc::new(MemoryJournal::default())),
        events: args.events,
        deploy_id: args.deploy_id,
        version: args.version,
        previous_version: args.previous_version,
        target: target.name.clone(),
        forced: args
            .force
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<BTreeSet<_>>(),
        started: tokio::time::Instant::now(),
        external_halt: Default::default(),
    })
}

/// The probe for a `[health]` section.
pub fn health_probe(h: &HealthSpec, remote: &Arc<dyn Remote>) -> Arc<dyn HealthProbe> {
    match &h.check {
        HealthCheck::Http {
            url,
            expect_status,
            expect_body,
        } => Arc::new(HttpProbe::new(
            url.clone(),
            *expect_status,
            expect_body.clone(),
            h.timeout,
        )),
        HealthCheck::Tcp { address } => Arc::new(TcpProbe::new(address.clone(), h.timeout)),
        HealthCheck::Command(t) => {
            Arc::new(CommandProbe::new(Arc::clone(remote), t.clone(), h.timeout))
        }
    }
}

/// Build one balancer. HAProxy and "none" touch no network here; the
/// embedded balancer binds its listener and starts checking its backends.
/// `remote` reaches the hosts (for `scope = "host"`), `local` this machine
/// (a global `socket_command`).
pub async fn balancer(
    spec: &LbSpec,
    units: &[Arc<Unit>],
    remote: &Arc<dyn Remote>,
    local: &Arc<dyn Remote>,
) -> Result<Arc<dyn LoadBalancer>, String> {
    Ok(match &spec.kind {
        LbKind::Haproxy { .. } | LbKind::Rackspace(_) | LbKind::None => {
            offline_balancer(spec, units, remote, local).expect("not embedded")
        }
        LbKind::Embedded {
            listen,
            member,
            check_path,
            check_interval,
        } => {
            let opts = EmbeddedOptions {
                listen: *listen,
                check_path: check_path.clone(),
                check_interval: *check_interval,
                ..EmbeddedOptions::default()
            };
            Arc::new(
                EmbeddedLb::start(opts, member.clone(), units)
                    .await
                    .map_err(|e| format!("cannot start the embedded balancer on {listen}: {e}"))?,
            )
        }
    })
}

/// A balancer that can be built without touching anything (for `plan`);
/// `None` for the embedded one, which would have to bind its port.
pub fn offline_balancer(
    spec: &LbSpec,
    units: &[Arc<Unit>],
    remote: &Arc<dyn Remote>,
    local: &Arc<dyn Remote>,
) -> Option<Arc<dyn LoadBalancer>> {
    let LbKind::Haproxy {
        socket,
        backend,
        server,
        method,
    } = &spec.kind
    else {
        return match &spec.kind {
            LbKind::None => Some(Arc::new(NoBalancer)),
            LbKind::Rackspace(r) => Some(Arc::new(RackspaceLb::new(RackspaceOptions {
                load_balancer_id: r.load_balancer_id,
                region: r.region.clone(),
                identity_url: r.identity_url.clone(),
                credentials: rackspace::Credentials {
                    username_env: r.username_env.clone(),
                    api_key_env: r.api_key_env.clone(),
                },
                member: r.member.clone(),
                poll_interval: r.poll_interval,
                settle_timeout: r.settle_timeout,
            }))),
            _ => None,
        };
    };
    let method = match method {
        LbMethod::State => haproxy::Method::State,
        LbMethod::Weight => haproxy::Method::Weight,
    };
    let one = |host: &Arc<Host>, unit: Option<&Unit>, via: &Arc<dyn Remote>| -> HaproxyLb {
        match socket {
            HaproxySocket::Path(path) => HaproxyLb::forwarded(
                Arc::clone(via),
                Arc::clone(host),
                path.clone(),
                backend.clone(),
                server.clone(),
                method,
            ),
            HaproxySocket::Command(t) => {
                let vars = unit.map_or_else(Vars::default, |u| Vars::for_unit(u, "", "", ""));
                HaproxyLb::command(
                    Arc::clone(via),
                    Arc::clone(host),
                    t.render_shell(&vars),
                    backend.clone(),
                    server.clone(),
                    method,
                )
            }
        }
    };
    Some(match (spec.scope, socket) {
        (LbScope::Global, HaproxySocket::Path(path)) => Arc::new(HaproxyLb::new(
            path.clone(),
            backend.clone(),
            server.clone(),
            method,
        )),
        (LbScope::Global, HaproxySocket::Command(_)) => {
            let here = Arc::new(Host {
                name: "local".into(),
                address: "127.0.0.1".into(),
                tags: Vec::new(),
                ssh_user: None,
                ssh_port: None,
                instance_id: None,
                instances: None,
            });
            Arc::new(one(&here, None, local))
        }
        (LbScope::Host, _) => {
            let mut by_host: BTreeMap<String, Arc<dyn LoadBalancer>> = BTreeMap::new();
            for u in units {
                if !by_host.contains_key(&u.host.name) {
                    by_host.insert(u.host.name.clone(), Arc::new(one(&u.host, Some(u), remote)));
                }
            }
            Arc::new(PerHostLb::new(
                format!("haproxy {socket} on each host"),
                by_host,
            ))
        }
    })
}
