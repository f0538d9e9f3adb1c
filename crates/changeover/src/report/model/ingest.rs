//! Applying one event to the rollout being read: the field readers are
//! lenient (a missing or mistyped field is `None`).

use super::{Finished, Note, Preflight, Rollout, Unit, UnitEnd, Wave, WitnessSummary};
use crate::report::fmt_ms;
use serde_json::Value;
use std::collections::BTreeMap;

fn str_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn u64_field(v: &Value, key: &str) -> Option<u64> {
    let f = v.get(key)?;
    f.as_u64().or_else(|| {
        f.as_f64()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(|x| x as u64)
    })
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Rollout {
    fn unit(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.units.len();
        self.units.push(Unit {
            name: name.to_string(),
            ..Unit::default()
        });
        self.out.push(false);
        self.starts.push(Vec::new());
        self.index.insert(name.to_string(), i);
        i
    }

    fn note(&mut self, t_ms: u64, kind: &'static str, text: String, mark: bool) {
        self.notes.push(Note {
            t_ms,
            kind,
            text,
            mark,
        });
    }

    fn change_out(&mut self, t: u64, up: bool) {
        if up {
            self.out_now += 1;
        } else {
            self.out_now = self.out_now.saturating_sub(1);
        }
        self.out_of_service.push((t, self.out_now));
    }

    pub(super) fn apply(&mut self, name: &str, e: &Value) {
        let t = match u64_field(e, "elapsed_ms") {
            Some(t) => t.max(self.end_ms),
            None => self.end_ms,
        };
        self.end_ms = t;
        let unit_of = |e: &Value| str_field(e, "unit");
        match name {
            "deploy_started" => {
                self.started = true;
                self.deploy_id = str_field(e, "deploy_id");
                self.app = str_field(e, "app");
                self.target = str_field(e, "target");
                self.version = str_field(e, "version");
                self.planned_units = u64_field(e, "units");
                self.planned_waves = u64_field(e, "waves");
                self.max_out_of_service = u64_field(e, "max_out_of_service");
            }
            "preflight" => {
                self.preflight = Some(Preflight {
                    ok: e.get("ok").and_then(Value::as_bool),
                    hosts: u64_field(e, "hosts"),
                    problems: strings(e, "problems"),
                    skipped: strings(e, "skipped"),
                });
            }
            "wave_started" => {
                let number = u64_field(e, "wave").unwrap_or(self.waves.len() as u64 + 1);
                let mut members = Vec::new();
                for u in strings(e, "units") {
                    let i = self.unit(&u);
                    self.units[i].wave.get_or_insert(number);
                    members.push(i);
                }
                self.waves.push(Wave {
                    number,
                    t_ms: t,
                    units: members,
                });
            }
            "unit_phase" => {
                let (Some(u), Some(phase)) = (unit_of(e), str_field(e, "phase")) else {
                    return;
                };
                let i = self.unit(&u);
                if self.units[i].host.is_none() {
                    self.units[i].host = str_field(e, "host");
                }
                if self.units[i].end.is_some() {
                    return;
                }
                let first_take_out = phase == "take_out"
                    && !self.out[i]
                    && !self.starts[i].iter().any(|(p, _)| p == "take_out");
                self.starts[i].push((phase, t));
                if first_take_out {
                    self.out[i] = true;
                    self.change_out(t, true);
                }
            }
            "unit_finished" => {
                let Some(u) = unit_of(e) else { return };
                let i = self.unit(&u);
                if self.units[i].host.is_none() {
                    self.units[i].host = str_field(e, "host");
                }
                if self.units[i].end.is_some() {
                    return;
                }
                let result = str_field(e, "result").unwrap_or_else(|| "unknown".into());
                let in_rotation = e.get("in_rotation").and_then(Value::as_bool);
                let untouched = result == "current" || result == "skipped";
                if self.out[i] {
                    if !untouched && in_rotation == Some(false) {
                        self.units[i].left_out = true;
                    } else {
                        self.out[i] = false;
                        self.change_out(t, false);
                    }
                }
                self.units[i].end = Some(UnitEnd {
                    t_ms: t,
                    result,
                    phase: str_field(e, "phase"),
                    error: str_field(e, "error"),
                    in_rotation,
                    output: str_field(e, "output"),
                });
            }
            "prepared" => {
                let ms = u64_field(e, "duration_ms").unwrap_or(0);
                let units = u64_field(e, "units").unwrap_or(0);
                let failed = e
                    .get("failed")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                self.note(
                    t,
                    "prepared",
                    format!(
                        "{units} unit(s) prepared in {:.1}s before the rollout{}",
                        ms as f64 / 1000.0,
                        if failed > 0 {
                            format!(", {failed} failed")
                        } else {
                            String::new()
                        }
                    ),
                    failed > 0,
                );
            }
            "hook_finished" => {
                let hook = str_field(e, "hook").unwrap_or_default();
                let ok = e.get("ok").and_then(Value::as_bool).unwrap_or(false);
                let ms = u64_field(e, "duration_ms").unwrap_or(0);
                let text = match str_field(e, "error") {
                    Some(err) if !ok => {
                        format!("{hook} failed after {:.1}s: {err}", ms as f64 / 1000.0)
                    }
                    _ => format!("{hook} done in {:.1}s", ms as f64 / 1000.0),
                };
                self.note(t, "hook", text, !ok);
            }
            "drain_timeout" => {
                let Some(u) = unit_of(e) else { return };
                let i = self.unit(&u);
                self.units[i].drain_timeouts += 1;
                let sessions = u64_field(e, "sessions")
                    .map(|n| format!(" with {n} session(s) open"))
                    .unwrap_or_default();
                let then = match e.get("proceeded").and_then(Value::as_bool) {
                    Some(true) => "; proceeded",
                    Some(false) => "; the unit failed",
                    None => "",
                };
                self.note(
                    t,
                    "drain timeout",
                    format!("{u}: drain timed out{sessions}{then}"),
                    false,
                );
            }
            "gate_closed" => {
                if !matches!(self.gate_closed.last(), Some((_, None))) {
                    let since = u64_field(e, "closed_ms").unwrap_or(0);
                    self.gate_closed.push((t.saturating_sub(since), None));
                }
                let who: Vec<String> = e
                    .get("unhealthy")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|x| match (str_field(x, "unit"), str_field(x, "error")) {
                                (Some(u), Some(err)) => format!("{u} ({err})"),
                                (Some(u), None) => u,
                                _ => x.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.note(
                    t,
                    "gate closed",
                    format!("unhealthy: {}", who.join(", ")),
                    false,
                );
            }
            "gate_opened" => {
                if let Some(last) = self.gate_closed.last_mut().filter(|g| g.1.is_none()) {
                    last.1 = Some(t);
                }
                let closed = u64_field(e, "closed_ms").map(fmt_ms).unwrap_or_default();
                self.note(t, "gate opened", format!("after {closed}"), false);
            }
            "halted" => {
                let reason = str_field(e, "reason").unwrap_or_default();
                self.note(t, "halted", reason, true);
            }
            "interrupted" => {
                let hard = e.get("hard").and_then(Value::as_bool) == Some(true);
                let text = if hard {
                    "second signal: hard stop"
                } else {
                    "first signal: stopping"
                };
                self.note(t, "interrupted", text.into(), true);
            }
            "member_back" => {
                let text = format!(
                    "{}: member {} of {} seen {}{}",
                    unit_of(e).unwrap_or_default(),
                    str_field(e, "member").unwrap_or_default(),
                    str_field(e, "balancer").unwrap_or_default(),
                    str_field(e, "state").unwrap_or_default(),
                    if e.get("taken_out_again").and_then(Value::as_bool) == Some(true) {
                        ", taken out again"
                    } else {
                        ""
                    }
                );
                self.note(t, "member back", text, false);
            }
            "witness_progress" => {
                let r = u64_field(e, "requests").unwrap_or(0);
                let f = u64_field(e, "failures").unwrap_or(0);
                self.witness.push((t, r, f));
            }
            "witness_summary" => {
                let mut kinds: Vec<(String, u64)> = e
                    .get("failure_kinds")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default();
                kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let s = WitnessSummary {
                    requests: u64_field(e, "requests"),
                    failures: u64_field(e, "failures"),
                    p50_ms: u64_field(e, "p50_ms"),
                    p90_ms: u64_field(e, "p90_ms"),
                    p99_ms: u64_field(e, "p99_ms"),
                    max_ms: u64_field(e, "max_ms"),
                    failure_kinds: kinds,
                };
                if let (Some(r), Some(f)) = (s.requests, s.failures) {
                    self.witness.push((t, r, f));
                }
                self.witness_summary = Some(s);
            }
            "deploy_finished" => {
                let mut counts = BTreeMap::new();
                for k in [
                    "updated",
                    "failed",
                    "reverted",
                    "skipped",
                    "untouched",
                    "current",
                    "max_out_of_service_seen",
                ] {
                    if let Some(n) = u64_field(e, k) {
                        counts.insert(k.to_string(), n);
                    }
                }
                for s in e
                    .get("units")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(u) = str_field(s, "unit") else {
                        continue;
                    };
                    let i = self.unit(&u);
                    let unit = &mut self.units[i];
                    if unit.host.is_none() {
                        unit.host = str_field(s, "host");
                    }
                    unit.state = str_field(s, "state");
                    unit.detail = str_field(s, "detail");
                    unit.in_rotation = s.get("in_rotation").and_then(Value::as_bool);
                }
                self.finished = Some(Finished {
                    t_ms: t,
                    outcome: str_field(e, "outcome"),
                    counts,
                });
            }
            _ => {}
        }
    }
}
