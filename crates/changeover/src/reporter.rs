//! Event rendering: human lines on stderr, NDJSON on stdout with `--json`.

use changeover_core::event::{to_json_line, Event, EventSink, Outcome};
use std::io::Write;
use std::time::Duration;

pub struct Reporter {
    pub json: bool,
    pub quiet: bool,
}

impl EventSink for Reporter {
    fn emit(&self, elapsed: Duration, event: Event) {
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", to_json_line(elapsed, &event));
            let _ = out.flush();
        }
        if let Some(text) = human(elapsed, &event, self.quiet) {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
        }
    }
}

/// Every event to each of several sinks (the reporter and a `--report`
/// recorder).
pub struct Tee(pub Vec<std::sync::Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&self, elapsed: Duration, event: Event) {
        for sink in &self.0 {
            sink.emit(elapsed, event.clone());
        }
    }
}

fn stamp(elapsed: Duration) -> String {
    format!("{:>7.1}s", elapsed.as_secs_f64())
}

fn human(elapsed: Duration, event: &Event, quiet: bool) -> Option<String> {
    let t = stamp(elapsed);
    Some(match event {
        Event::DeployStarted { app, target, version, units, waves, max_out_of_service, deploy_id } => {
            if quiet {
                return None;
            }
            format!(
                "deploying {app} {version} to {units} unit(s){} in {waves} wave(s), at most {max_out_of_service} out of service (deploy {deploy_id})",
                target.as_ref().map(|t| format!(" of target {t}")).unwrap_or_default()
            )
        }
        Event::Preflight { .. } => return None,
        Event::WaveStarted { wave, units } if !quiet => format!("{t} wave {wave}: {}", units.join(", ")),
        Event::UnitPhase { unit, phase, .. } if !quiet => format!("{t} {unit:<12} {}", phase.as_str()),
        Event::DrainTimeout { unit, sessions, proceeded } => format!(
            "{t} {unit:<12} drain timed out{}; {}",
            sessions.map(|n| format!(" with {n} session(s) open")).unwrap_or_default(),
            if *proceeded { "proceeding anyway (drain.on_timeout = \"proceed\")" } else { "failing the unit" }
        ),
        Event::UnitFinished { unit, result, output, .. } => {
            let mut line = match result.result {
                "updated" => format!("{t} {unit:<12} ✓ updated"),
                "reverted" => format!("{t} {unit:<12} ↺ put back unchanged"),
                "skipped" => format!("{t} {unit:<12} - skipped: {}", result.error.clone().unwrap_or_default()),
                _ => format!(
                    "{t} {unit:<12} ✗ failed in {}: {} ({})",
                    result.phase.map(|p| p.as_str()).unwrap_or("?"),
                    result.error.clone().unwrap_or_default(),
                    if result.in_rotation { "put back unchanged" } else { "left out of rotation" }
                ),
            };
            if let Some(out) = output {
                for l in out.lines() {
                    line.push_str("\n             | ");
                    line.push_str(l);
                }
            }
            line
        }
        Event::Progress { done, total, failed, in_flight, max_in_flight, out_of_service, gated_on } if !quiet => format!(
            "{t} [{done}/{total} done{}] in flight {in_flight}/{max_in_flight} · out of service: {}{}",
            if *failed > 0 { format!(", {failed} failed") } else { String::new() },
            if out_of_service.is_empty() { "none".into() } else { out_of_service.join(", ") },
            if gated_on.is_empty() { String::new() } else { format!(" · gate closed, waiting for: {}", gated_on.join(", ")) }
        ),
        Event::GateClosed { unhealthy, closed_ms, gate_timeout_ms } => {
            let mut s = format!(
                "{t} gate closed for {:.1}s (halts at {:.0}s): not healthy: {}",
                *closed_ms as f64 / 1000.0,
                *gate_timeout_ms as f64 / 1000.0,
                unhealthy.iter().map(|u| u.unit.as_str()).collect::<Vec<_>>().join(", ")
            );
            for u in unhealthy.iter().take(5) {
                s.push_str(&format!("\n             | {}: {}", u.unit, u.error));
            }
            s
        }
        Event::GateOpened { closed_ms } if !quiet => {
            format!("{t} gate open again after {:.1}s: every unit healthy", *closed_ms as f64 / 1000.0)
        }
        Event::WitnessProgress { requests, failures } if !quiet => {
            format!("{t} witness: {requests} requests, {failures} failed")
        }
        Event::WitnessSummary { requests, failures, p50_ms, p90_ms, p99_ms, max_ms, failure_kinds } => {
            let mut s = format!(
                "witness: {requests} requests, {failures} failed; latency p50 {p50_ms} ms, p90 {p90_ms} ms, p99 {p99_ms} ms, max {max_ms} ms"
            );
            for (kind, n) in failure_kinds {
                s.push_str(&format!("\n  {n} × {kind}"));
            }
            s
        }
        Event::MemberBack { unit, balancer, member, state, taken_out_again } => format!(
            "{t} {unit:<12} member {member} on {balancer} was \"{state}\" again on its own (a balancer reload loses changeover's changes; HAProxy's server-state-file keeps them): {}",
            if *taken_out_again { "taken out again" } else { "could NOT be taken out again" }
        ),
        Event::Halted { reason } => format!("{t} HALTED: {reason}; no new unit starts, units in flight finish"),
        Event::Interrupted { hard: false } => format!(
            "{t} interrupted: no new unit starts; units in flight finish their phase and go back in if healthy (Ctrl-C again to stop at once)"
        ),
        Event::Interrupted { hard: true } => format!("{t} stopped at once: units in flight are left where they are"),
        Event::HookFinished { hook, wave, ok, duration_ms, error } => {
            let which = wave.map(|w| format!(" (wave {w})")).unwrap_or_default();
            if *ok {
                if quiet {
                    return None;
                }
                format!("{t} hook {hook}{which} done in {:.1}s", *duration_ms as f64 / 1000.0)
            } else {
                format!("{t} hook {hook}{which} failed: {}", error.clone().unwrap_or_default())
            }
        }
        Event::DeployFinished { outcome, updated, failed, reverted, skipped, untouched, current, max_out_of_service_seen, units } => {
            let mut s = format!(
                "{} after {:.1}s: {updated} updated, {current} already current, {failed} failed, {reverted} put back unchanged, {skipped} skipped, {untouched} untouched; at most {max_out_of_service_seen} out of service at once",
                match outcome {
                    Outcome::Success => "deploy finished",
                    Outcome::Failed => "DEPLOY FAILED",
                    Outcome::Interrupted => "deploy interrupted",
                },
                elapsed.as_secs_f64()
            );
            for u in units.iter().filter(|u| u.state != "updated" && u.state != "current") {
                s.push_str(&format!(
                    "\n  {:<12} {:<10} {}{}",
                    u.unit,
                    u.state,
                    if u.in_rotation { "in rotation" } else { "OUT of rotation" },
                    u.detail.as_ref().map(|d| format!(" — {d}")).unwrap_or_default()
                ));
            }
            s
        }
        _ => return None,
    })
}
