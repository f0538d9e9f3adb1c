//! The timeline: one row per unit with a bar per phase, or beyond
//! `AGGREGATE_ABOVE` units one row per wave with a lane per phase.

use super::{annotations, open_svg, time_axis, Scale, AXIS_H, LEFT, PLOT_W, WIDTH};
use crate::report::model::{phase_index, Rollout, Unit, PHASES};
use crate::report::{fmt_ms, shorten, Esc, AGGREGATE_ABOVE};
use std::collections::hash_map::Entry;
use std::fmt::Write as _;

fn result_class(outcome: &str) -> &'static str {
    match outcome {
        "updated" => "ok",
        "failed" | "unknown" | "unfinished" => "bad",
        "reverted" => "warn",
        _ => "muted",
    }
}

/// The timeline: one row per unit, or per wave beyond `AGGREGATE_ABOVE` units.
pub fn timeline(out: &mut String, r: &Rollout, s: Scale) {
    if r.units.len() > AGGREGATE_ABOVE {
        waves(out, r, s);
    } else {
        units(out, r, s);
    }
}

const ROW_H: f64 = 20.0;

fn units(out: &mut String, r: &Rollout, s: Scale) {
    let top = 4.0;
    let bottom = top + ROW_H * r.units.len().max(1) as f64;
    open_svg(
        out,
        "timeline",
        bottom + AXIS_H,
        "timeline of every unit's phases",
    );
    time_axis(out, s, top, bottom);
    annotations(out, r, s, top, bottom);
    for (i, u) in r.units.iter().enumerate() {
        unit_row(out, u, s, top + ROW_H * i as f64, i % 2 == 1);
    }
    out.push_str("</svg>\n");
}

fn unit_row(out: &mut String, u: &Unit, s: Scale, y: f64, odd: bool) {
    let outcome = u.outcome();
    let _ = write!(
        out,
        "<g class=\"row{}\" data-unit=\"{}\" data-result=\"{}\" transform=\"translate(0,{y:.0})\">",
        if odd { " odd" } else { "" },
        Esc(&u.name),
        Esc(outcome)
    );
    let _ = write!(
        out,
        "<rect class=\"band\" x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{ROW_H}\"/>\
         <text class=\"label\" x=\"{:.0}\" y=\"14\" text-anchor=\"end\">{}<title>{}{}</title></text>",
        LEFT - 8.0,
        Esc(&shorten(&u.name, 28)),
        Esc(&u.name),
        match &u.host {
            Some(h) if *h != u.name => format!(" on {}", Esc(h)),
            _ => String::new(),
        }
    );
    let failed = outcome == "failed";
    for (k, sp) in u.spans.iter().enumerate() {
        let last = k + 1 == u.spans.len();
        let class = if failed && last {
            " fail"
        } else if sp.open {
            " open"
        } else {
            ""
        };
        let (x0, x1) = (s.x(sp.start_ms), s.x(sp.end_ms));
        let _ = write!(
            out,
            "<rect class=\"ph p{}{class}\" data-phase=\"{}\" data-start-ms=\"{}\" data-end-ms=\"{}\" \
             x=\"{x0:.1}\" y=\"4\" width=\"{:.1}\" height=\"12\"><title>{}: {} {}–{}{}</title></rect>",
            phase_index(&sp.phase),
            Esc(&sp.phase),
            sp.start_ms,
            sp.end_ms,
            (x1 - x0).max(0.8),
            Esc(&u.name),
            Esc(&sp.phase),
            fmt_ms(sp.start_ms),
            fmt_ms(sp.end_ms),
            if sp.open { " (never finished)" } else { "" }
        );
    }
    let end = u.end.as_ref();
    if failed {
        let t = end.map_or(s.end_ms, |e| e.t_ms);
        let x = s.x(t);
        let _ = write!(
            out,
            "<path class=\"mark-fail\" d=\"M{:.1} 4l8 12m0-12l-8 12\"><title>{} failed{} at {}: {}</title></path>",
            x - 4.0,
            Esc(&u.name),
            end.and_then(|e| e.phase.as_deref())
                .map(|p| format!(" in {}", Esc(p)))
                .unwrap_or_default(),
            fmt_ms(t),
            Esc(end.and_then(|e| e.error.as_deref()).unwrap_or(""))
        );
    } else if u.spans.is_empty() {
        // Not walked: current, skipped, untouched, …
        let why = end
            .and_then(|e| e.error.clone())
            .or_else(|| u.detail.clone())
            .unwrap_or_else(|| match outcome {
                "current" => "already on the version and serving: not touched".into(),
                "untouched" | "not started" => "not started".into(),
                _ => String::new(),
            });
        let _ = write!(
            out,
            "<text class=\"idle\" x=\"{:.0}\" y=\"14\">{}{}{}</text>",
            LEFT + 6.0,
            Esc(outcome),
            if why.is_empty() { "" } else { ": " },
            Esc(&shorten(&why, 110))
        );
    }
    let _ = writeln!(
        out,
        "<text class=\"res {}\" x=\"{:.0}\" y=\"14\">{}{}</text></g>",
        result_class(outcome),
        LEFT + PLOT_W + 8.0,
        Esc(outcome),
        if u.left_out { " (left out)" } else { "" }
    );
}

/// Per phase: (first start, last end, count).
type Agg = [Option<(u64, u64, u64)>; PHASES.len() + 1];

const LANE_H: f64 = 4.0;
const WAVE_H: f64 = LANE_H * PHASES.len() as f64 + 10.0;

fn waves(out: &mut String, r: &Rollout, s: Scale) {
    // Rows: the waves in the order they started, then the units of no wave.
    let mut rows: Vec<(Option<u64>, Vec<usize>)> = Vec::new();
    let mut pos = std::collections::HashMap::new();
    for w in &r.waves {
        if let Entry::Vacant(e) = pos.entry(w.number) {
            e.insert(rows.len());
            rows.push((Some(w.number), Vec::new()));
        }
    }
    let mut loose = Vec::new();
    for (i, u) in r.units.iter().enumerate() {
        match u.wave.and_then(|w| pos.get(&w)) {
            Some(&row) => rows[row].1.push(i),
            None => loose.push(i),
        }
    }
    if !loose.is_empty() {
        rows.push((None, loose));
    }
    let top = 4.0;
    let bottom = top + WAVE_H * rows.len().max(1) as f64;
    open_svg(
        out,
        "timeline waves",
        bottom + AXIS_H,
        "timeline of the phases, per wave",
    );
    time_axis(out, s, top, bottom);
    annotations(out, r, s, top, bottom);
    for (k, (wave, members)) in rows.iter().enumerate() {
        wave_row(
            out,
            r,
            s,
            *wave,
            members,
            top + WAVE_H * k as f64,
            k % 2 == 1,
        );
    }
    out.push_str("</svg>\n");
}

fn wave_row(
    out: &mut String,
    r: &Rollout,
    s: Scale,
    wave: Option<u64>,
    members: &[usize],
    y: f64,
    odd: bool,
) {
    let name = wave.map_or_else(|| "not in a wave".to_string(), |w| format!("wave {w}"));
    let mut agg: Agg = Default::default();
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    let mut fails: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
    for &i in members {
        let u = &r.units[i];
        *counts.entry(u.outcome()).or_default() += 1;
        for sp in &u.spans {
            let a = &mut agg[phase_index(&sp.phase)];
            *a = Some(match *a {
                None => (sp.start_ms, sp.end_ms, 1),
                Some((a0, a1, n)) => (a0.min(sp.start_ms), a1.max(sp.end_ms), n + 1),
            });
        }
        if u.outcome() == "failed" {
            let t = u.end.as_ref().map_or(r.end_ms, |e| e.t_ms);
            // One mark per pixel column, with the count it stands for.
            let e = fails.entry(s.x(t).round() as i64).or_insert((t, 0));
            e.1 += 1;
        }
    }
    let wave_attr = wave.map_or_else(
        || "data-group=\"no-wave\"".to_string(),
        |w| format!("data-wave=\"{w}\""),
    );
    let _ = write!(
        out,
        "<g class=\"row wave{}\" {wave_attr} data-units=\"{}\" transform=\"translate(0,{y:.0})\">\
         <rect class=\"band\" x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{WAVE_H}\"/>\
         <text class=\"label\" x=\"{:.0}\" y=\"15\" text-anchor=\"end\">{name}</text>\
         <text class=\"sub\" x=\"{:.0}\" y=\"28\" text-anchor=\"end\">{} unit(s)</text>",
        if odd { " odd" } else { "" },
        members.len(),
        LEFT - 8.0,
        LEFT - 8.0,
        members.len()
    );
    for (p, a) in agg.iter().enumerate() {
        let Some((start, end, n)) = *a else { continue };
        let phase = PHASES.get(p).copied().unwrap_or("other");
        let (x0, x1) = (s.x(start), s.x(end));
        let _ = write!(
            out,
            "<rect class=\"ph p{p}\" data-phase=\"{phase}\" data-start-ms=\"{start}\" data-end-ms=\"{end}\" \
             data-count=\"{n}\" x=\"{x0:.1}\" y=\"{:.0}\" width=\"{:.1}\" height=\"{:.0}\">\
             <title>{name}: {phase} ×{n} {}–{}</title></rect>",
            5.0 + LANE_H * p.min(PHASES.len() - 1) as f64,
            (x1 - x0).max(0.8),
            LANE_H - 0.5,
            fmt_ms(start),
            fmt_ms(end)
        );
    }
    for (x, (t, n)) in &fails {
        let _ = write!(
            out,
            "<rect class=\"mark-fail-tick\" x=\"{:.1}\" y=\"2\" width=\"2\" height=\"{:.0}\">\
             <title>{name}: {n} unit(s) failed at {}</title></rect>",
            *x as f64 - 1.0,
            WAVE_H - 4.0,
            fmt_ms(*t)
        );
    }
    let tally: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let mut kinds: Vec<(&str, u64)> = counts.into_iter().collect();
    kinds.sort_by_key(|(k, _)| severity(k));
    let _ = write!(
        out,
        "<g class=\"tally\"><title>{}</title>",
        Esc(&tally.join(", "))
    );
    for (line, (k, n)) in kinds.iter().take(2).enumerate() {
        let text = if line == 1 && kinds.len() > 2 {
            format!("+{} more kinds", kinds.len() - 1)
        } else {
            format!("{n} {k}")
        };
        let _ = write!(
            out,
            "<text class=\"res {}\" x=\"{:.0}\" y=\"{}\">{}</text>",
            result_class(k),
            LEFT + PLOT_W + 8.0,
            15 + 13 * line,
            Esc(&shorten(&text, 17))
        );
    }
    out.push_str("</g></g>\n");
}

/// Worst first: how a wave's results are listed.
fn severity(outcome: &str) -> usize {
    const ORDER: [&str; 9] = [
        "failed",
        "unknown",
        "unfinished",
        "reverted",
        "skipped",
        "not started",
        "untouched",
        "current",
        "updated",
    ];
    ORDER.iter().position(|o| *o == outcome).unwrap_or(3)
}
