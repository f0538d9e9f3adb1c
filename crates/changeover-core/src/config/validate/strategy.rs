//! `[strategy]`: the rollout (batch, window or groups) and what a failure does.

use super::Validator;
use crate::config::raw::RawStrategy;
use crate::path;
use crate::plan::{Amount, GateSource, OnFailure, Rollout, StrategySpec};
use std::time::Duration;
use toml::Value;

impl Validator<'_> {
    pub(super) fn strategy(
        &mut self,
        raw: Option<RawStrategy>,
        has_health: bool,
    ) -> Option<StrategySpec> {
        let raw = raw.unwrap_or_default();
        let gate = match self.choice(
            path!["strategy", "gate"],
            raw.gate.as_ref(),
            &["health", "consul"],
            "health",
        ) {
            "consul" => match &self.consul_discovery {
                Some(c) => GateSource::Consul(c.clone()),
                None => {
                    self.err(
                        path!["strategy", "gate"],
                        "gate = \"consul\" needs [discovery] consul",
                        "no Consul service",
                        "add [discovery] consul = { address = \"http://127.0.0.1:8500\", service = \"shop\" }: the gate reads that service's health checks",
                    );
                    GateSource::Health
                }
            },
            _ => GateSource::Health,
        };
        // Naming a gate turns it on; turning it off again is a contradiction.
        let wait_for_all_healthy = match (raw.wait_for_all_healthy, &raw.gate) {
            (Some(false), Some(g)) => {
                self.err(
                    path!["strategy", "wait_for_all_healthy"],
                    format!("gate = \"{g}\" is set but wait_for_all_healthy = false"),
                    "contradiction",
                    "remove one of them: gate chooses what the fleet-wide health gate asks, and turns it on",
                );
                false
            }
            (Some(w), _) => w,
            (None, gate) => gate.is_some(),
        };
        if wait_for_all_healthy && !has_health && gate == GateSource::Health {
            self.err(
                path!["strategy", "wait_for_all_healthy"],
                "wait_for_all_healthy needs a health check, and there is no [health]",
                "nothing to wait for",
                "add [health] (http, tcp or command): the gate runs it on every unit of the fleet before a new unit starts; or gate = \"consul\" with [discovery] consul",
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
                gate,
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
        self.strategy_rest(&raw, rollout, wait_for_all_healthy, gate_timeout, gate)
    }

    fn strategy_rest(
        &mut self,
        raw: &RawStrategy,
        rollout: Rollout,
        wait_for_all_healthy: bool,
        gate_timeout: Duration,
        gate: GateSource,
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
            gate,
        })
    }
}
