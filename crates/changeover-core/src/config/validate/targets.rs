//! `[targets.NAME]`: the selection (tags, hosts, percent) and the policy
//! keys of SPEC.md's target table, with `[targets.NAME.strategy]`, `.drain`
//! and `.health` merged key by key over the top-level sections and then
//! checked by the same section checks (their errors point into the target's
//! table).

use super::Validator;
use crate::config::raw::{RawDrain, RawHealth, RawStrategy, RawTarget};
use crate::path;
use crate::plan::{Instances, LbSpec, TargetSpec, DEFAULT_LOCK};
use crate::store::valid_key_segment;
use crate::unit::Host;
use std::collections::BTreeMap;
use std::sync::Arc;
use toml::Value;

/// The top-level sections a target's overrides are merged over.
pub(super) struct Sections {
    pub drain: Option<RawDrain>,
    pub health: Option<RawHealth>,
    pub strategy: Option<RawStrategy>,
    pub load_balancers: Vec<LbSpec>,
    pub instances: Instances,
}

impl Validator<'_> {
    pub(super) fn targets(
        &mut self,
        raw: BTreeMap<String, RawTarget>,
        hosts: &[Arc<Host>],
        top: &Sections,
    ) -> BTreeMap<String, TargetSpec> {
        let mut out = BTreeMap::new();
        for (name, t) in raw {
            let at = |key: &str| path!["targets", name.as_str(), key];
            if !valid_key_segment(&name) {
                self.err(
                    path!["targets", name.as_str()],
                    format!("target name `{name}` cannot be used as a store key"),
                    "bad name",
                    "use letters, digits, '-', '_' or '.'",
                );
            }
            for (i, h) in t.hosts.iter().enumerate() {
                // With discovery, the names are checked once the fleet is known.
                if !self.has_discovery && !hosts.iter().any(|x| &x.name == h) {
                    self.err(
                        path!["targets", name.as_str(), "hosts", i],
                        format!("target `{name}` names unknown host `{h}`"),
                        "unknown host",
                        "list names from the [[hosts]] tables",
                    );
                }
            }
            if let Some(p) = t.percent {
                if !(p > 0.0 && p <= 100.0) {
                    self.err(
                        at("percent"),
                        format!("percent = {p} is out of range"),
                        "out of range",
                        "a percentage of the target's units, more than 0 and at most 100",
                    );
                }
            }
            if let Some(p) = &t.pointer {
                if !valid_key_segment(p) {
                    self.err(
                        at("pointer"),
                        format!("pointer `{p}` cannot be used as a store key"),
                        "bad name",
                        "use letters, digits, '-', '_' or '.', e.g. pointer = \"production\"",
                    );
                }
            }
            let lock = match &t.lock {
                None | Some(Value::Boolean(true)) => Some(DEFAULT_LOCK.to_string()),
                Some(Value::Boolean(false)) => None,
                Some(Value::String(s)) if valid_key_segment(s) => Some(s.clone()),
                Some(other) => {
                    self.err(
                        at("lock"),
                        format!("lock = {other} is not a lock name or false"),
                        "not a lock",
                        "name the lock (targets naming the same lock exclude each other; default \"deploy\"), or write lock = false for no lock (a dev box)",
                    );
                    None
                }
            };
            let lb_takeout = t.lb_takeout.unwrap_or(true);
            let (strategy, drain, health) = self.overrides(&name, &t, top, lb_takeout);
            out.insert(
                name,
                TargetSpec {
                    tags: t.tags,
                    hosts: t.hosts,
                    percent: t.percent,
                    pointer: t.pointer,
                    require_message: t.require_message,
                    partial: t.partial,
                    can_unify: t.can_unify.unwrap_or(true),
                    lock,
                    lb_takeout,
                    strategy,
                    drain,
                    health,
                },
            );
        }
        out
    }

    /// The target's `.strategy`, `.drain` and `.health` merged over the top
    /// level and validated as whole sections.
    fn overrides(
        &mut self,
        name: &str,
        t: &RawTarget,
        top: &Sections,
        lb_takeout: bool,
    ) -> (
        Option<crate::plan::StrategySpec>,
        Option<crate::plan::DrainSpec>,
        Option<crate::plan::HealthSpec>,
    ) {
        let health_raw = match (&t.health, &top.health) {
            (Some(o), base) => Some(merge_health(base.clone().unwrap_or_default(), o.clone())),
            (None, _) => None,
        };
        let saved = std::mem::replace(&mut self.prefix, path!["targets", name]);
        let health = health_raw.and_then(|h| self.health(h));
        let has_health = health.is_some() || top.health.is_some();
        let strategy = t.strategy.as_ref().and_then(|o| {
            let merged = merge_strategy(top.strategy.clone().unwrap_or_default(), o.clone());
            self.strategy(Some(merged), has_health)
        });
        let drain = t.drain.as_ref().and_then(|o| {
            let merged = merge_drain(top.drain.clone().unwrap_or_default(), o.clone());
            // Without take-out there is no balancer to count sessions on.
            let lbs: &[LbSpec] = if lb_takeout { &top.load_balancers } else { &[] };
            self.drain(Some(merged), lbs, &top.instances)
        });
        self.prefix = saved;
        (strategy, drain, health)
    }
}

/// The rollout keys (batch, window, groups) replace each other as a set;
/// every other key overrides one by one.
fn merge_strategy(base: RawStrategy, o: RawStrategy) -> RawStrategy {
    let rollout_set = o.batch.is_some() || o.window.is_some() || o.groups.is_some();
    let (batch, window, groups) = if rollout_set {
        (o.batch, o.window, o.groups)
    } else {
        (base.batch, base.window, base.groups)
    };
    RawStrategy {
        batch,
        window,
        groups,
        max_failures: o.max_failures.or(base.max_failures),
        pause: o.pause.or(base.pause),
        wait_for_all_healthy: o.wait_for_all_healthy.or(base.wait_for_all_healthy),
        gate: o.gate.or(base.gate),
        gate_timeout: o.gate_timeout.or(base.gate_timeout),
        on_failure: o.on_failure.or(base.on_failure),
    }
}

/// The check (http, tcp, command) is replaced as a whole.
fn merge_health(base: RawHealth, o: RawHealth) -> RawHealth {
    let check_set = o.http.is_some() || o.tcp.is_some() || o.command.is_some();
    let (http, tcp, command) = if check_set {
        (o.http, o.tcp, o.command)
    } else {
        (base.http, base.tcp, base.command)
    };
    RawHealth {
        http,
        tcp,
        command,
        expect_status: o.expect_status.or(base.expect_status),
        expect_body: o.expect_body.or(base.expect_body),
        interval: o.interval.or(base.interval),
        timeout: o.timeout.or(base.timeout),
        healthy_threshold: o.healthy_threshold.or(base.healthy_threshold),
        deadline: o.deadline.or(base.deadline),
    }
}

/// The mode and what goes with it (command, local_address) as a whole.
fn merge_drain(base: RawDrain, o: RawDrain) -> RawDrain {
    let (mode, command, local_address) = if o.mode.is_some() {
        (o.mode, o.command, o.local_address)
    } else {
        (
            base.mode,
            o.command.or(base.command),
            o.local_address.or(base.local_address),
        )
    };
    RawDrain {
        mode,
        command,
        local_address,
        timeout: o.timeout.or(base.timeout),
        on_timeout: o.on_timeout.or(base.on_timeout),
        interval: o.interval.or(base.interval),
    }
}
