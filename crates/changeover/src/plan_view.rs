//! `changeover plan`: the waves, the order and every step, as they would run.
//! Touches nothing.

use changeover_adapters::remote::local::LocalRemote;
use changeover_adapters::wiring;
use changeover_core::plan::{DrainMode, GateSource, HealthCheck, LbKind, OnTimeout, Plan, Rollout};
use changeover_core::planner;
use changeover_core::remote::Remote;
use changeover_core::template::{Template, Vars};
use changeover_core::unit::Unit;
use std::fmt::Write;
use std::sync::Arc;

/// What `plan` needs of a balancer: its label, a unit's member, whether it
/// has a distinct disable step.
trait PlanBalancer {
    fn label(&self) -> String;
    fn member_name(&self, unit: &Unit) -> String;
    fn distinct_disable(&self) -> bool;
}

impl PlanBalancer for std::sync::Arc<dyn changeover_core::lb::LoadBalancer> {
    fn label(&self) -> String {
        changeover_core::lb::LoadBalancer::label(self.as_ref())
    }
    fn member_name(&self, unit: &Unit) -> String {
        changeover_core::lb::LoadBalancer::member_name(self.as_ref(), unit)
    }
    fn distinct_disable(&self) -> bool {
        self.capabilities().distinct_disable
    }
}

impl PlanBalancer for (String, Template) {
    fn label(&self) -> String {
        self.0.clone()
    }
    fn member_name(&self, unit: &Unit) -> String {
        self.1.render(&Vars::for_unit(unit, "", "", ""))
    }
    fn distinct_disable(&self) -> bool {
        true
    }
}

/// `12 host(s): 2 from config, 10 from consul http://… service `shop``.
pub fn fleet_sources(plan: &Plan) -> String {
    let parts: Vec<String> = plan
        .fleet_sources
        .iter()
        .map(|f| format!("{} from {}", f.hosts, f.origin))
        .collect();
    format!("{} host(s): {}", plan.hosts.len(), parts.join(", "))
}

/// The plan as text (the `plan` command's output).
pub fn render(plan: &Plan, target: Option<&str>, version: &str) -> Result<String, String> {
    view(plan, target, version).map(|v| v.text)
}

/// The plan as one JSON document (`plan --json`).
pub fn render_json(
    plan: &Plan,
    target: Option<&str>,
    version: &str,
) -> Result<serde_json::Value, String> {
    view(plan, target, version).map(|v| v.json)
}

/// The same plan, as text and as JSON.
struct View {
    text: String,
    json: serde_json::Value,
}

fn view(plan: &Plan, target: Option<&str>, version: &str) -> Result<View, String> {
    let resolved = plan.target(target)?;
    let units = resolved.units.clone();
    let policy = &resolved.policy;
    // A target that deploys in place touches no balancer.
    let lb_specs: &[changeover_core::plan::LbSpec] = if policy.lb_takeout {
        &plan.load_balancers
    } else {
        &[]
    };
    // `plan` touches nothing: these executors are never asked to run.
    let here: Arc<dyn Remote> = Arc::new(LocalRemote::new());
    let balancers: Vec<Box<dyn PlanBalancer>> = lb_specs
        .iter()
        .map(|spec| -> Box<dyn PlanBalancer> {
            match (
                &spec.kind,
                wiring::offline_balancer(spec, &units, &here, &here),
            ) {
                (_, Some(lb)) => Box::new(lb),
                (LbKind::Embedded { listen, member, .. }, None) => {
                    Box::new((format!("embedded balancer on {listen}"), member.clone()))
                }
                _ => unreachable!("only the embedded balancer needs binding"),
            }
        })
        .collect();
    let rollout = &policy.strategy.rollout;
    let planner::Schedule { waves, bound, .. } = planner::Schedule::new(&units, rollout);
    let mut s = String::new();
    let hosts: std::collections::BTreeSet<&str> =
        units.iter().map(|u| u.host.name.as_str()).collect();
    let _ = writeln!(
        s,
        "plan: {} {version} to {} unit(s) on {} host(s), target {}",
        plan.app,
        units.len(),
        hosts.len(),
        target.unwrap_or("(whole fleet)")
    );
    let _ = writeln!(s, "fleet: {}", fleet_sources(plan));
    let _ = writeln!(
        s,
        "policy: pointer {}{}; lock {}{}{}",
        policy.pointer,
        if policy.partial {
            " (partial: records unit versions, moves no pointer)"
        } else {
            ""
        },
        policy
            .lock
            .as_deref()
            .map_or("none".to_string(), |l| format!("`{l}`")),
        if policy.lb_takeout {
            ""
        } else {
            "; in place: no balancer is touched"
        },
        if policy.require_message {
            "; --message required"
        } else {
            ""
        },
    );
    let strategy = match rollout {
        Rollout::Batch(ramp) => format!(
            "batch [{}] (last repeats): {} wave(s)",
            ramp.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            waves.len()
        ),
        Rollout::Window(w) => format!("window {w}: a new unit starts as soon as one finishes"),
        Rollout::Groups(g) => format!(
            "groups of {g} of the hosts, instance by instance inside a group: {} wave(s)",
            waves.len()
        ),
    };
    let _ = writeln!(
        s,
        "strategy: {strategy}; at most {bound} out of service; halt after more than {} failure(s)",
        policy.strategy.max_failures.of_allow_zero(units.len())
    );
    if policy.strategy.wait_for_all_healthy {
        let what = match &policy.strategy.gate {
            GateSource::Health => "passes its health check".to_string(),
            GateSource::Consul(c) => format!(
                "passes its Consul checks (service `{}` at {}, one query per look)",
                c.service, c.endpoint.address
            ),
        };
        let _ = writeln!(
            s,
            "gate: a unit starts only when every unit of the fleet {what} (halt after {} closed)",
            humantime::format_duration(policy.strategy.gate_timeout)
        );
    }
    if !policy.strategy.pause.is_zero() {
        let _ = writeln!(
            s,
            "pause between waves: {}",
            humantime::format_duration(policy.strategy.pause)
        );
    }
    if !policy.deploy.prepare.is_empty() {
        let vars = Vars::for_unit(
            units
                .first()
                .map(|u| u.as_ref())
                .unwrap_or(&units_placeholder()),
            version,
            "",
            target.unwrap_or(""),
        );
        let _ = writeln!(
            s,
            "prepare (before the rollout, on every unit, {} at a time, everything in rotation): {}",
            policy
                .deploy
                .prepare_parallel
                .unwrap_or(plan.ssh.max_connections),
            policy
                .deploy
                .prepare
                .iter()
                .map(|t| format!("`{}`", t.render_shell(&vars)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(a) = &plan.artifact {
        let vars = Vars {
            version: version.to_string(),
            target: target.unwrap_or("").to_string(),
            ..Vars::default()
        };
        let _ = writeln!(
            s,
            "artifact: `{}` must exit 0 first (preflight; at most {})",
            a.check.render_shell(&vars),
            humantime::format_duration(a.timeout)
        );
    }
    let hooks = &plan.hooks;
    let named: Vec<&str> = [
        ("pre_deploy", &hooks.pre_deploy),
        ("pre_wave", &hooks.pre_wave),
        ("post_wave", &hooks.post_wave),
        ("post_deploy", &hooks.post_deploy),
        ("on_failure", &hooks.on_failure),
    ]
    .iter()
    .filter(|(_, c)| c.is_some())
    .map(|(n, _)| *n)
    .collect();
    if !named.is_empty() {
        let _ = writeln!(s, "hooks: {}", named.join(", "));
    }
    for (lb, spec) in balancers.iter().zip(lb_specs) {
        let method = match &spec.kind {
            LbKind::Haproxy { method, .. } => format!(", method {method:?}").to_lowercase(),
            LbKind::None | LbKind::Embedded { .. } | LbKind::Rackspace(_) => String::new(),
        };
        let _ = writeln!(s, "balancer: {}{method}", lb.label());
    }
    let mut json = serde_json::json!({
        "app": plan.app,
        "version": version,
        "target": target,
        "units": units.len(),
        "hosts": hosts.len(),
        "fleet": plan.fleet_sources.iter().map(|f| serde_json::json!({"origin": f.origin, "hosts": f.hosts})).collect::<Vec<_>>(),
        "policy": {
            "pointer": policy.pointer,
            "partial": policy.partial,
            "lock": policy.lock,
            "lb_takeout": policy.lb_takeout,
            "require_message": policy.require_message,
        },
        "strategy": strategy,
        "max_out_of_service": bound,
        "max_failures": policy.strategy.max_failures.of_allow_zero(units.len()),
        "wait_for_all_healthy": policy.strategy.wait_for_all_healthy,
        "pause_ms": policy.strategy.pause.as_millis() as u64,
        "balancers": balancers.iter().map(|b| b.label()).collect::<Vec<_>>(),
        "hooks": named,
        "artifact_check": plan.artifact.as_ref().map(|a| a.check.render_shell(&Vars {
            version: version.to_string(),
            target: target.unwrap_or("").to_string(),
            ..Vars::default()
        })),
    });
    let mut json_waves = Vec::new();
    s.push('\n');
    for (wi, wave) in waves.iter().enumerate() {
        let _ = writeln!(s, "wave {} ({} unit(s))", wi + 1, wave.len());
        let mut json_wave = Vec::new();
        for u in wave.iter().map(|&i| &units[i]) {
            let members: Vec<String> = balancers.iter().map(|b| b.member_name(u)).collect();
            json_wave.push(serde_json::json!({
                "unit": u.name(),
                "host": u.host.name,
                "address": u.host.address,
                "instance": u.instance,
                "instance_id": u.host.instance_id,
                "members": members,
            }));
            let instance = u
                .host
                .instance_id
                .as_deref()
                .map_or(String::new(), |id| format!(" (instance {id})"));
            let _ = writeln!(
                s,
                "  {:<14} {:<16} {}{instance}",
                u.name(),
                u.host.address,
                members.join(" ")
            );
        }
        json_waves.push(serde_json::Value::Array(json_wave));
    }
    json["waves"] = serde_json::Value::Array(json_waves);
    let Some(first) = units.first() else {
        json["steps"] = serde_json::json!([]);
        return Ok(View { text: s, json });
    };
    let vars = Vars::for_unit(first, version, "", target.unwrap_or(""));
    let _ = writeln!(s, "\nsteps for each unit (shown for {first}):");
    json["steps_shown_for"] = first.name().into();
    let mut steps: Vec<String> = Vec::new();
    let mut step = |s: &mut String, text: String| {
        let _ = writeln!(s, "  {}. {text}", steps.len() + 1);
        steps.push(text);
    };
    // With method = "weight" the words say what HAProxy is told.
    let by_weight = |spec: &changeover_core::plan::LbSpec| {
        matches!(
            spec.kind,
            LbKind::Haproxy {
                method: changeover_core::plan::LbMethod::Weight,
                ..
            }
        )
    };
    for (lb, spec) in balancers.iter().zip(lb_specs) {
        step(
            &mut s,
            format!(
                "take out: {} {} on {}",
                if by_weight(spec) {
                    "weight 0 for"
                } else {
                    "drain"
                },
                lb.member_name(first),
                lb.label()
            ),
        );
    }
    let drain = &policy.drain;
    let bound_text = format!(
        "at most {}, then {}",
        humantime::format_duration(drain.timeout),
        if drain.on_timeout == OnTimeout::Fail {
            "fail the unit"
        } else {
            "proceed"
        }
    );
    match &drain.mode {
        DrainMode::Lb => step(
            &mut s,
            format!("drain: wait until the balancer counts 0 sessions ({bound_text})"),
        ),
        DrainMode::Fixed => step(
            &mut s,
            format!("drain: wait {}", humantime::format_duration(drain.timeout)),
        ),
        DrainMode::Host { local_address } => step(
            &mut s,
            format!(
                "drain: until {} counts no established connection to port {}{} ({bound_text})",
                first.host.name,
                first.port.map_or("?".into(), |p| p.to_string()),
                local_address
                    .as_ref()
                    .map(|t| format!(" on {}", t.render(&vars)))
                    .unwrap_or_default()
            ),
        ),
        DrainMode::Command(t) => step(
            &mut s,
            format!(
                "drain: until `{}` exits 0 on {} ({bound_text})",
                t.render_shell(&vars),
                first.host.name
            ),
        ),
    }
    for lb in balancers.iter().filter(|b| b.distinct_disable()) {
        step(
            &mut s,
            format!("disable {} on {}", lb.member_name(first), lb.label()),
        );
    }
    for t in &policy.deploy.local {
        step(&mut s, format!("local: {}", t.render_shell(&vars)));
    }
    for t in &policy.deploy.run {
        step(
            &mut s,
            format!("run on {}: {}", first.host.name, t.render_shell(&vars)),
        );
    }
    if let Some(h) = &policy.health {
        let what = match &h.check {
            HealthCheck::Http {
                url,
                expect_status,
                expect_body,
            } => format!(
                "GET {} until status {expect_status}{}",
                url.render(&vars),
                expect_body
                    .as_ref()
                    .map(|b| format!(" and body contains {b:?}"))
                    .unwrap_or_default()
            ),
            HealthCheck::Tcp { address } => format!("TCP connect to {}", address.render(&vars)),
            HealthCheck::Command(t) => format!("`{}` exits 0", t.render_shell(&vars)),
        };
        step(
            &mut s,
            format!(
                "health: {what}, {} pass(es) in a row, every {}, deadline {}",
                h.healthy_threshold,
                humantime::format_duration(h.interval),
                humantime::format_duration(h.deadline)
            ),
        );
    }
    for (lb, spec) in balancers.iter().zip(lb_specs).rev() {
        step(
            &mut s,
            format!(
                "put back: {} {} on {}",
                if by_weight(spec) {
                    "restore the weight of"
                } else {
                    "enable"
                },
                lb.member_name(first),
                lb.label()
            ),
        );
    }
    step(
        &mut s,
        "confirm: wait until every balancer reports it serving".into(),
    );
    json["steps"] = steps.into();
    Ok(View { text: s, json })
}

/// A unit for rendering a plan's templates when the target has none.
fn units_placeholder() -> changeover_core::unit::Unit {
    changeover_core::unit::Unit {
        index: 0,
        host: Arc::new(changeover_core::unit::Host::new("{host}", "{address}")),
        instance: 1,
        port: None,
    }
}
