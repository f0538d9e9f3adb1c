//! From a validated plan to a [`Deployment`]: choose and build the adapters.

use changeover_adapters::health::{command::CommandProbe, http::HttpProbe, tcp::TcpProbe};
use changeover_adapters::lb::embedded::{EmbeddedLb, EmbeddedOptions};
use changeover_adapters::lb::haproxy::{self, HaproxyLb};
use changeover_adapters::lb::{none::NoBalancer, per_host::PerHostLb};
use changeover_adapters::remote::{local::LocalRemote, ssh};
use changeover_core::engine::{Deployment, Preflight};
use changeover_core::event::{Event, EventSink};
use changeover_core::health::HealthProbe;
use changeover_core::journal::FileJournal;
use changeover_core::lb::LoadBalancer;
use changeover_core::plan::{HaproxySocket, HealthCheck, LbKind, LbMethod, LbScope, LbSpec, Plan};
use changeover_core::remote::Remote;
use changeover_core::template::Vars;
use changeover_core::unit::{Host, Unit};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub async fn deployment(
    plan: &Arc<Plan>,
    target: Option<&str>,
    version: &str,
    force: &[String],
    events: Arc<dyn EventSink>,
) -> Result<Deployment, String> {
    let units = plan.select(target)?;
    let local: Arc<dyn Remote> = Arc::new(LocalRemote::new());
    let remote: Arc<dyn Remote> = if plan.uses_ssh() {
        Arc::new(ssh::SshRemote::new(ssh::SshOptions {
            config_file: plan.ssh.config_file.clone(),
            user: plan.ssh.user.clone(),
            max_connections: plan.ssh.max_connections,
            connect_timeout: plan.ssh.connect_timeout,
            ..ssh::SshOptions::default()
        }))
    } else {
        Arc::clone(&local)
    };
    let mut balancers = Vec::new();
    for spec in &plan.load_balancers {
        balancers.push(balancer(spec, &units, &remote, &local).await?);
    }
    let health = plan.health.as_ref().map(|h| -> Arc<dyn HealthProbe> {
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
                Arc::new(CommandProbe::new(Arc::clone(&remote), t.clone(), h.timeout))
            }
        }
    });
    let journal = FileJournal::open(&plan.state_dir).map_err(|e| e.to_string())?;
    Ok(Deployment {
        plan: Arc::clone(plan),
        units,
        balancers,
        remote,
        local,
        health,
        journal: Arc::new(journal),
        events,
        deploy_id: deploy_id(),
        version: version.to_string(),
        previous_version: String::new(),
        target: target.map(str::to_string),
        forced: force
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<BTreeSet<_>>(),
        started: tokio::time::Instant::now(),
        external_halt: Default::default(),
    })
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
        LbKind::Haproxy { .. } | LbKind::None => {
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
        return match spec.kind {
            LbKind::None => Some(Arc::new(NoBalancer)),
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

fn deploy_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}-{}", std::process::id())
}

pub fn host_count(dep: &Deployment) -> usize {
    dep.units
        .iter()
        .map(|u| u.host.name.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

pub fn report_preflight(dep: &Deployment, pf: &Preflight) {
    dep.events.emit(
        dep.started.elapsed(),
        Event::Preflight {
            ok: pf.go(),
            hosts: host_count(dep),
            problems: pf.problems.clone(),
            skipped: pf.skipped.values().cloned().collect(),
        },
    );
    for note in &pf.notes {
        eprintln!("note: {note}");
    }
    if !pf.go() {
        eprintln!("preflight: no-go, {} problem(s):", pf.problems.len());
        for p in &pf.problems {
            eprintln!("  - {p}");
        }
    }
}
