//! From a validated plan to a [`Deployment`]: choose and build the adapters.

use changeover_adapters::health::{command::CommandProbe, http::HttpProbe, tcp::TcpProbe};
use changeover_adapters::lb::embedded::{EmbeddedLb, EmbeddedOptions};
use changeover_adapters::lb::{haproxy, none::NoBalancer};
use changeover_adapters::remote::{local::LocalRemote, ssh};
use changeover_core::engine::{Deployment, Preflight};
use changeover_core::event::{Event, EventSink};
use changeover_core::health::HealthProbe;
use changeover_core::journal::FileJournal;
use changeover_core::lb::LoadBalancer;
use changeover_core::plan::{HealthCheck, LbKind, LbMethod, LbSpec, Plan};
use changeover_core::remote::Remote;
use changeover_core::unit::Unit;
use std::collections::BTreeSet;
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
        balancers.push(balancer(spec, &units).await?);
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
pub async fn balancer(spec: &LbSpec, units: &[Arc<Unit>]) -> Result<Arc<dyn LoadBalancer>, String> {
    Ok(match &spec.kind {
        LbKind::Haproxy { .. } | LbKind::None => offline_balancer(spec).expect("not embedded"),
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
pub fn offline_balancer(spec: &LbSpec) -> Option<Arc<dyn LoadBalancer>> {
    match &spec.kind {
        LbKind::Haproxy {
            socket,
            backend,
            server,
            method,
        } => Some(Arc::new(haproxy::HaproxyLb::new(
            socket.clone(),
            backend.clone(),
            server.clone(),
            match method {
                LbMethod::State => haproxy::Method::State,
                LbMethod::Weight => haproxy::Method::Weight,
            },
        ))),
        LbKind::None => Some(Arc::new(NoBalancer)),
        LbKind::Embedded { .. } => None,
    }
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
