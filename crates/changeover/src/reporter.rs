//! Event rendering: human lines on stderr, NDJSON on stdout with `--json`.
//!
//! On a terminal the rollout is a live display (progress.rs): an aggregate
//! bar and a line per unit in flight, with results, warnings and the
//! summary printed above it. Off a terminal (CI logs, pipes) plain lines;
//! beyond [`SMALL`] units those are cut to what a log needs: no phase
//! lines, results only of units that did not update, and a progress line
//! at most every 2 s. `-q`: warnings, errors and the summary, on both.

use crate::progress::{self, AboveBars, Live};
use changeover_core::event::{to_json_line, Event, EventSink, Outcome, UnitSummary};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

/// Up to this many units, plain output has a line per phase and per unit.
pub const SMALL: usize = 20;
/// Beyond `SMALL` units: at most one progress line per this much time.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Beyond `SMALL` units: names listed in one line before "… N more".
const NAMES: usize = 5;
/// Beyond `SMALL` units: units the final summary lists one by one.
const SUMMARY_UNITS: usize = 50;

pub struct Reporter {
    json: bool,
    quiet: bool,
    verbose: u8,
    out: Out,
}

enum Out {
    Plain(Mutex<Plain>),
    /// The live display; `bool`: stdout is the terminal too (NDJSON lines
    /// are written with the bars out of the way).
    Live(Live, bool),
}

struct Plain {
    w: Box<dyn Write + Send>,
    run: Run,
}

/// What the reporter knows of the deploy under way.
#[derive(Default, Clone, Copy)]
struct Run {
    units: usize,
    waves: usize,
    /// When the last progress line was written (large plain output).
    last_progress: Option<Duration>,
}

/// What a line is for: the renderer's view of the run.
#[derive(Clone, Copy)]
struct View {
    quiet: bool,
    verbose: u8,
    live: bool,
    /// More than `SMALL` units: lists are cut short, routine lines dropped.
    large: bool,
    waves: usize,
}

impl Reporter {
    /// Live on a terminal (stderr; `CHANGEOVER_PROGRESS=plain|tty` forces
    /// one or the other), plain lines otherwise and always with `-q`.
    pub fn new(json: bool, quiet: bool, verbose: u8) -> Reporter {
        let out = if !quiet && progress::wanted() {
            Out::Live(Live::stderr(), std::io::stdout().is_terminal())
        } else {
            Out::Plain(Mutex::new(Plain {
                w: Box::new(std::io::stderr()),
                run: Run::default(),
            }))
        };
        Reporter {
            json,
            quiet,
            verbose,
            out,
        }
    }

    /// Plain lines to `w` (tests).
    #[cfg(test)]
    pub fn plain_to(w: Box<dyn Write + Send>, quiet: bool, verbose: u8) -> Reporter {
        Reporter {
            json: false,
            quiet,
            verbose,
            out: Out::Plain(Mutex::new(Plain {
                w,
                run: Run::default(),
            })),
        }
    }

    /// The live display (tests).
    #[cfg(test)]
    pub fn live_to(live: Live, verbose: u8) -> Reporter {
        Reporter {
            json: false,
            quiet: false,
            verbose,
            out: Out::Live(live, false),
        }
    }

    fn view(&self, run: &Run, live: bool) -> View {
        View {
            quiet: self.quiet,
            verbose: self.verbose,
            live,
            large: run.units > SMALL,
            waves: run.waves,
        }
    }
}

/// `-v`'s count, read back from the log filter `logging::init` set (for
/// the demo, which is handed `--json` and `-q` only).
pub fn log_verbosity() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        l if l >= LevelFilter::TRACE => 2,
        l if l >= LevelFilter::DEBUG => 1,
        _ => 0,
    }
}

impl EventSink for Reporter {
    fn emit(&self, elapsed: Duration, event: Event) {
        if self.json {
            let mut line = to_json_line(elapsed, &event);
            line.push('\n');
            let out = std::io::stdout().lock();
            let mut out: Box<dyn Write> = match &self.out {
                Out::Live(_, true) => Box::new(AboveBars(out)),
                _ => Box::new(out),
            };
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
        match &self.out {
            Out::Plain(plain) => {
                let mut p = plain.lock().unwrap_or_else(|e| e.into_inner());
                p.run.note(&event);
                let view = self.view(&p.run, false);
                if view.large && matches!(event, Event::Progress { .. }) {
                    if p.run
                        .last_progress
                        .is_some_and(|t| elapsed < t + PROGRESS_EVERY)
                    {
                        return;
                    }
                    p.run.last_progress = Some(elapsed);
                }
                if let Some(mut text) = human(elapsed, &event, view) {
                    text.push('\n');
                    let _ = p.w.write_all(text.as_bytes());
                    let _ = p.w.flush();
                }
            }
            Out::Live(live, _) => {
                live.show(&event, |run_units, waves| {
                    let run = Run {
                        units: run_units,
                        waves,
                        last_progress: None,
                    };
                    human(elapsed, &event, self.view(&run, true))
                });
            }
        }
    }
}

impl Run {
    fn note(&mut self, event: &Event) {
        if let Event::DeployStarted { units, waves, .. } = event {
            *self = Run {
                units: *units,
                waves: *waves,
                last_progress: None,
            };
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

/// `a, b, c`; in a large run past `NAMES` names `12 (a, b, c, d, e and 7 more)`.
pub fn names(list: &[String], large: bool) -> String {
    if !large || list.len() <= NAMES {
        return list.join(", ");
    }
    format!(
        "{} ({} and {} more)",
        list.len(),
        list[..NAMES].join(", "),
        list.len() - NAMES
    )
}

/// The line(s) an event prints, if any, for this view.
fn human(elapsed: Duration, event: &Event, v: View) -> Option<String> {
    let t = stamp(elapsed);
    let quiet = v.quiet;
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
        Event::WaveStarted { wave, units } if !quiet => {
            if v.large && v.verbose == 0 {
                if v.waves > SMALL {
                    return None;
                }
                format!("{t} wave {wave}: {}", names(units, true))
            } else {
                format!("{t} wave {wave}: {}", units.join(", "))
            }
        }
        Event::UnitPhase { unit, phase, .. } if !quiet => {
            // Live: the unit's line shows its phase; plain: a line each
            // while the run is small.
            if v.verbose == 0 && (v.live || v.large) {
                return None;
            }
            format!("{t} {unit:<12} {}", phase.as_str())
        }
        Event::DrainTimeout { unit, sessions, proceeded } => format!(
            "{t} {unit:<12} drain timed out{}; {}",
            sessions.map(|n| format!(" with {n} session(s) open")).unwrap_or_default(),
            if *proceeded { "proceeding anyway (drain.on_timeout = \"proceed\")" } else { "failing the unit" }
        ),
        Event::UnitFinished { unit, result, output, .. } => {
            let routine = matches!(result.result, "updated" | "current");
            // -q: no per-unit lines; the summary names every failed unit.
            if quiet || (result.result != "failed" && routine && v.large && v.verbose == 0) {
                return None;
            }
            let mut line = match result.result {
                "updated" => format!("{t} {unit:<12} ✓ updated"),
                "current" => format!("{t} {unit:<12} = already current"),
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
        // Live: the bar is the progress.
        Event::Progress { done, total, failed, in_flight, max_in_flight, out_of_service, gated_on } if !quiet && !v.live => format!(
            "{t} [{done}/{total} done{}] in flight {in_flight}/{max_in_flight} · out of service: {}{}",
            if *failed > 0 { format!(", {failed} failed") } else { String::new() },
            if out_of_service.is_empty() { "none".into() } else { names(out_of_service, v.large) },
            if gated_on.is_empty() { String::new() } else { format!(" · gate closed, waiting for: {}", names(gated_on, v.large)) }
        ),
        Event::GateClosed { unhealthy, closed_ms, gate_timeout_ms } => {
            let unhealthy_names: Vec<String> = unhealthy.iter().map(|u| u.unit.clone()).collect();
            let mut s = format!(
                "{t} gate closed for {:.1}s (halts at {:.0}s): not healthy: {}",
                *closed_ms as f64 / 1000.0,
                *gate_timeout_ms as f64 / 1000.0,
                names(&unhealthy_names, v.large)
            );
            for u in unhealthy.iter().take(5) {
                s.push_str(&format!("\n             | {}: {}", u.unit, u.error));
            }
            s
        }
        Event::GateOpened { closed_ms } if !quiet => {
            format!("{t} gate open again after {:.1}s: every unit healthy", *closed_ms as f64 / 1000.0)
        }
        Event::WitnessProgress { requests, failures } if !quiet && !v.live => {
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
        Event::Prepared { units, duration_ms, failed } => {
            if failed.is_empty() {
                if quiet {
                    return None;
                }
                format!("{t} prepared {units} unit(s) in {:.1}s", *duration_ms as f64 / 1000.0)
            } else {
                let names: Vec<String> = failed.iter().take(5).map(|f| format!("{} ({})", f.unit, f.error)).collect();
                format!("{t} prepare failed on {} of {units} unit(s): {}", failed.len(), names.join("; "))
            }
        }
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
            summary_units(&mut s, units, v.large);
            s
        }
        _ => return None,
    })
}

/// The final summary's line per unit that is not updated or current; a
/// large run lists the first `SUMMARY_UNITS` and leaves untouched units to
/// the count.
fn summary_units(s: &mut String, units: &[UnitSummary], large: bool) {
    let listed = units
        .iter()
        .filter(|u| u.state != "updated" && u.state != "current")
        .filter(|u| !large || u.state != "untouched");
    let mut more = 0;
    for (i, u) in listed.enumerate() {
        if large && i >= SUMMARY_UNITS {
            more += 1;
            continue;
        }
        s.push_str(&format!(
            "\n  {:<12} {:<10} {}{}",
            u.unit,
            u.state,
            if u.in_rotation {
                "in rotation"
            } else {
                "OUT of rotation"
            },
            u.detail
                .as_ref()
                .map(|d| format!(" — {d}"))
                .unwrap_or_default()
        ));
    }
    if more > 0 {
        s.push_str(&format!(
            "\n  … and {more} more (`changeover status` shows every unit)"
        ));
    }
}
