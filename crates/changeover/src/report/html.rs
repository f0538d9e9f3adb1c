//! The report's HTML around the charts: header, counts, legend, notes and
//! the tables of waves and units. Everything from the events goes through
//! [`Esc`].

use super::model::{Rollout, Unit, PHASES};
use super::svg::{self, Scale};
use super::{fmt_ms, Esc, AGGREGATE_ABOVE};
use std::fmt::Write as _;

pub const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2937;margin:24px;background:#fff}
h1{font-size:22px;margin:0 0 12px}h2{font-size:19px;margin:28px 0 8px;border-top:2px solid #e5e7eb;padding-top:16px}
h3{font-size:16px;margin:22px 0 6px}
.meta{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:8px 0}
.meta dt{color:#6b7280}.meta dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace}
.badge{display:inline-block;padding:1px 10px;border-radius:10px;font-weight:600;color:#fff;font-family:system-ui,sans-serif}
.badge.success{background:#16a34a}.badge.failed{background:#dc2626}.badge.interrupted{background:#d97706}.badge.unknown{background:#6b7280}
ul.counts{list-style:none;padding:0;margin:10px 0;display:flex;flex-wrap:wrap;gap:8px}
ul.counts li{border:1px solid #e5e7eb;border-radius:6px;padding:4px 10px}ul.counts b{font-size:16px}
ul.counts li.bad{border-color:#fca5a5;background:#fef2f2}
.scroll{overflow-x:auto}
.legend{display:flex;flex-wrap:wrap;gap:12px;margin:4px 0 6px;font-size:12px;color:#374151}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-2px;margin-right:4px}
.p0{fill:#8b5cf6;background:#8b5cf6}.p1{fill:#3b82f6;background:#3b82f6}.p2{fill:#06b6d4;background:#06b6d4}
.p3{fill:#f59e0b;background:#f59e0b}.p4{fill:#10b981;background:#10b981}.p5{fill:#84cc16;background:#84cc16}
.p6{fill:#64748b;background:#64748b}.p7{fill:#a8a29e;background:#a8a29e}
.sw.fail,.ph.fail{fill:#dc2626;background:#dc2626}
.ph.open{opacity:.55;stroke:#111827;stroke-dasharray:2 2;stroke-width:.6}
.chart{display:block;font-size:11px}
.axis line{stroke:#e5e7eb;stroke-width:1}.axis text{fill:#6b7280;font-size:10px}
.ylabel{fill:#374151;font-size:11px}
.band{fill:transparent}.odd .band{fill:#f9fafb}
.label{fill:#111827;font-size:12px}.sub{fill:#6b7280;font-size:10px}
.idle{fill:#6b7280;font-style:italic;font-size:11px}
.res{font-size:11px;font-weight:600}.ok{fill:#15803d;color:#15803d}.bad{fill:#dc2626;color:#dc2626}
.warn{fill:#b45309;color:#b45309}.muted{fill:#6b7280;color:#6b7280}
.mark-fail{stroke:#dc2626;stroke-width:2.2;fill:none}.mark-fail-tick{fill:#dc2626}
.gate{fill:#f59e0b;opacity:.13}.note{stroke:#7c3aed;stroke-width:1.5;stroke-dasharray:4 3}
.bound{stroke:#dc2626;stroke-width:1.5;stroke-dasharray:6 4}
.series{fill:none;stroke-width:1.6;stroke-linejoin:round}.series.oos,.series.witness_requests{stroke:#2563eb}
.series.witness_failures{stroke:#dc2626}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border-bottom:1px solid #e5e7eb;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#374151;font-weight:600;background:#f9fafb}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.err{max-width:520px;white-space:pre-wrap;word-break:break-word}
tr.r-failed td,tr.r-unknown td,tr.r-unfinished td{background:#fef2f2}tr.r-reverted td{background:#fffbeb}
pre{background:#f3f4f6;padding:6px;max-height:240px;overflow:auto;font-size:12px;white-space:pre-wrap}
ul.notes{padding-left:18px}ul.notes .t{color:#6b7280;font-family:ui-monospace,monospace}
.hint{color:#6b7280;font-size:12px}
footer{margin-top:36px;color:#9ca3af;font-size:12px}
";

/// At most this many "events of note" are listed.
const MAX_NOTES: usize = 200;

pub fn rollout(out: &mut String, r: &Rollout, i: usize, several: bool) {
    let _ = writeln!(
        out,
        "<section class=\"rollout\" data-rollout=\"{}\" data-deploy-id=\"{}\">",
        i + 1,
        Esc(r.deploy_id.as_deref().unwrap_or(""))
    );
    if several {
        let _ = writeln!(
            out,
            "<h2>Rollout {}{}: deploy {}</h2>",
            i + 1,
            if i > 0 {
                " (follows the one above)"
            } else {
                ""
            },
            Esc(r.deploy_id.as_deref().unwrap_or("?"))
        );
    }
    header(out, r);
    if r.units.is_empty() && r.finished.is_none() {
        out.push_str(
            "<p class=\"hint\">No unit was walked: the stream holds no unit events.</p>\n",
        );
        notes(out, r);
        out.push_str("</section>\n");
        return;
    }
    let s = Scale::new(r);
    let aggregated = r.units.len() > AGGREGATE_ABOVE;
    out.push_str("<h3>Timeline</h3>\n");
    if aggregated {
        let _ = writeln!(
            out,
            "<p class=\"hint\">{} units: one row per wave; each lane spans from the first unit \
             entering the phase to the last leaving it (hover for the count); red ticks are failures.</p>",
            r.units.len()
        );
    }
    legend(out);
    out.push_str("<div class=\"scroll\">\n");
    svg::timeline(out, r, s);
    out.push_str("</div>\n<h3>Out of service</h3>\n");
    let peak = r.max_out_seen();
    let _ = write!(out, "<p>Peak <b>{peak}</b> unit(s) out of service");
    if let Some(b) = r.max_out_of_service {
        let _ = write!(out, " against a bound of <b>{b}</b> (dashed)");
        if peak > b {
            out.push_str(" — <b class=\"bad\">the bound was exceeded</b>");
        }
    }
    if let Some(seen) = r
        .finished
        .as_ref()
        .and_then(|f| f.counts.get("max_out_of_service_seen"))
    {
        let _ = write!(out, "; the engine reported {seen}");
    }
    out.push_str(
        ".</p>\n<p class=\"hint\">A unit is out from its take-out to its <code>unit_finished</code>; \
         a failed unit left out of rotation stays out to the end.</p>\n<div class=\"scroll\">\n",
    );
    svg::out_of_service(out, r, s);
    out.push_str("</div>\n");
    if !r.witness.is_empty() || r.witness_summary.is_some() {
        out.push_str("<h3>Traffic witness</h3>\n<div class=\"scroll\">\n");
        svg::witness(out, r, s);
        out.push_str("</div>\n");
        witness_summary(out, r);
    }
    notes(out, r);
    if r.waves.len() > 1 || aggregated {
        waves_table(out, r);
    }
    units_tables(out, r, aggregated);
    out.push_str("</section>\n");
}

fn header(out: &mut String, r: &Rollout) {
    let outcome = r.finished.as_ref().and_then(|f| f.outcome.clone());
    let badge = outcome
        .as_deref()
        .filter(|o| matches!(*o, "success" | "failed" | "interrupted"))
        .unwrap_or("unknown");
    out.push_str("<dl class=\"meta\">\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "<dt>{k}</dt><dd>{v}</dd>");
    };
    let e = |v: &Option<String>| Esc(v.as_deref().unwrap_or("—")).to_string();
    row("app", e(&r.app));
    row("version", e(&r.version));
    row("target", e(&r.target));
    row("deploy id", e(&r.deploy_id));
    row(
        "outcome",
        format!(
            "<span class=\"badge {badge}\">{}</span>",
            Esc(outcome.as_deref().unwrap_or("not finished"))
        ),
    );
    row(
        "duration",
        format!(
            "{}{}",
            fmt_ms(r.duration_ms()),
            if r.finished.is_none() {
                " (no deploy_finished)"
            } else {
                ""
            }
        ),
    );
    let plan = match (r.planned_units, r.planned_waves) {
        (Some(u), Some(w)) => format!("{u} unit(s) in {w} wave(s)"),
        (Some(u), None) => format!("{u} unit(s)"),
        _ => format!("{} unit(s) seen", r.units.len()),
    };
    row("plan", plan);
    if let Some(b) = r.max_out_of_service {
        row("max out of service", b.to_string());
    }
    if let Some(p) = &r.preflight {
        let mut v = match p.ok {
            Some(true) => "ok".to_string(),
            Some(false) => "<span class=\"bad\">not ok</span>".to_string(),
            None => "—".to_string(),
        };
        if let Some(h) = p.hosts {
            let _ = write!(v, ", {h} host(s)");
        }
        for x in &p.problems {
            let _ = write!(v, "<br/>problem: {}", Esc(x));
        }
        for x in &p.skipped {
            let _ = write!(v, "<br/>skipped: {}", Esc(x));
        }
        row("preflight", v);
    }
    out.push_str("</dl>\n<ul class=\"counts\">\n");
    let mut counts: Vec<(String, u64)> = r
        .counts()
        .into_iter()
        .filter(|(k, n)| {
            k != "max_out_of_service_seen" && (*n > 0 || k == "updated" || k == "failed")
        })
        .collect();
    const ORDER: [&str; 6] = [
        "updated",
        "failed",
        "reverted",
        "skipped",
        "current",
        "untouched",
    ];
    counts.sort_by_key(|(k, _)| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
    for (k, n) in counts {
        let bad = matches!(k.as_str(), "failed" | "unknown" | "unfinished") && n > 0;
        let _ = writeln!(
            out,
            "<li{} data-count=\"{}\"><b>{n}</b> {}</li>",
            if bad { " class=\"bad\"" } else { "" },
            Esc(&k),
            Esc(&k)
        );
    }
    out.push_str("</ul>\n");
}

fn legend(out: &mut String) {
    out.push_str("<div class=\"legend\">");
    for (i, p) in PHASES.iter().enumerate() {
        let _ = write!(out, "<span><i class=\"sw p{i}\"></i>{p}</span>");
    }
    out.push_str(
        "<span><i class=\"sw fail\"></i>phase a unit failed in</span>\
         <span><i class=\"sw p7\" style=\"opacity:.55\"></i>never finished</span>\
         <span><i class=\"sw gate-sw\" style=\"background:#fde68a\"></i>health gate closed</span>\
         <span><i class=\"sw\" style=\"background:#7c3aed\"></i>halt / interrupt</span></div>\n",
    );
}

fn witness_summary(out: &mut String, r: &Rollout) {
    let Some(w) = &r.witness_summary else {
        out.push_str("<p class=\"hint\">No <code>witness_summary</code> (the witness did not report its figures).</p>\n");
        return;
    };
    let n = |v: Option<u64>| v.map_or_else(|| "—".to_string(), |x| x.to_string());
    let ms = |v: Option<u64>| v.map_or_else(|| "—".to_string(), |x| format!("{x} ms"));
    let rate = match (w.requests, w.failures) {
        (Some(r), Some(f)) if r > 0 => format!("{:.3}%", f as f64 * 100.0 / r as f64),
        _ => "—".into(),
    };
    let _ = writeln!(
        out,
        "<table class=\"witness-summary\"><tr><th>requests</th><th>failures</th><th>failure rate</th>\
         <th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>\n<tr><td class=\"n\">{}</td>\
         <td class=\"n{}\">{}</td><td class=\"n\">{rate}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td></tr></table>",
        n(w.requests),
        if w.failures.unwrap_or(0) > 0 { " bad" } else { "" },
        n(w.failures),
        ms(w.p50_ms),
        ms(w.p90_ms),
        ms(w.p99_ms),
        ms(w.max_ms)
    );
    if !w.failure_kinds.is_empty() {
        out.push_str(
            "<table class=\"failure-kinds\"><tr><th>failure kind</th><th>count</th></tr>\n",
        );
        for (k, c) in &w.failure_kinds {
            let _ = writeln!(out, "<tr><td>{}</td><td class=\"n\">{c}</td></tr>", Esc(k));
        }
        out.push_str("</table>\n");
    }
}

fn notes(out: &mut String, r: &Rollout) {
    if r.notes.is_empty() {
        return;
    }
    out.push_str("<h3>Events of note</h3>\n<ul class=\"notes\">\n");
    for n in r.notes.iter().take(MAX_NOTES) {
        let _ = writeln!(
            out,
            "<li><span class=\"t\">{}</span> <b>{}</b>: {}</li>",
            fmt_ms(n.t_ms),
            n.kind,
            Esc(&n.text)
        );
    }
    if r.notes.len() > MAX_NOTES {
        let _ = writeln!(out, "<li>… and {} more</li>", r.notes.len() - MAX_NOTES);
    }
    out.push_str("</ul>\n");
}

fn waves_table(out: &mut String, r: &Rollout) {
    if r.waves.is_empty() {
        return;
    }
    out.push_str(
        "<h3>Waves</h3>\n<table class=\"waves\"><tr><th>wave</th><th>units</th><th>started</th>\
         <th>last finished</th><th>took</th><th>results</th></tr>\n",
    );
    for w in &r.waves {
        let mut last = None::<u64>;
        let mut tally = std::collections::BTreeMap::<&str, u64>::new();
        for &i in &w.units {
            let u = &r.units[i];
            *tally.entry(u.outcome()).or_default() += 1;
            if let Some(e) = &u.end {
                last = Some(last.map_or(e.t_ms, |l| l.max(e.t_ms)));
            }
        }
        let results: Vec<String> = tally.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = writeln!(
            out,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td>{}</td></tr>",
            w.number,
            w.units.len(),
            fmt_ms(w.t_ms),
            last.map_or_else(|| "—".into(), fmt_ms),
            last.map_or_else(|| "—".into(), |l| fmt_ms(l.saturating_sub(w.t_ms))),
            Esc(&results.join(", "))
        );
    }
    out.push_str("</table>\n");
}

fn units_tables(out: &mut String, r: &Rollout, aggregated: bool) {
    let hosts = r
        .units
        .iter()
        .any(|u| u.host.as_ref().is_some_and(|h| *h != u.name));
    let head = |out: &mut String, class: &str| {
        let _ = writeln!(
            out,
            "<table class=\"{class}\"><tr><th>unit</th>{}<th>wave</th><th>result</th><th>failed in</th>\
             <th>error / detail</th><th>started</th><th>took</th><th>final state</th><th>in rotation</th></tr>",
            if hosts { "<th>host</th>" } else { "" }
        );
    };
    out.push_str("<h3>Units</h3>\n");
    if aggregated {
        let attention: Vec<&Unit> = r
            .units
            .iter()
            .filter(|u| !matches!(u.outcome(), "updated" | "current"))
            .collect();
        if attention.is_empty() {
            out.push_str("<p>Every unit was updated (or already current).</p>\n");
        } else {
            let _ = writeln!(out, "<p>{} unit(s) not updated:</p>", attention.len());
            head(out, "units attention");
            for u in attention {
                unit_row(out, u, hosts);
            }
            out.push_str("</table>\n");
        }
        let _ = writeln!(
            out,
            "<details><summary>All {} units</summary>",
            r.units.len()
        );
    }
    head(out, "units");
    for u in &r.units {
        unit_row(out, u, hosts);
    }
    out.push_str("</table>\n");
    if aggregated {
        out.push_str("</details>\n");
    }
}

fn unit_row(out: &mut String, u: &Unit, hosts: bool) {
    let outcome = u.outcome();
    let end = u.end.as_ref();
    let mut detail = String::new();
    if let Some(e) = end.and_then(|e| e.error.as_deref()) {
        let _ = write!(detail, "{}", Esc(e));
    }
    if let Some(d) = &u.detail {
        if end.and_then(|e| e.error.as_deref()) != Some(d.as_str()) {
            if !detail.is_empty() {
                detail.push_str("<br/>");
            }
            let _ = write!(detail, "{}", Esc(d));
        }
    }
    if u.drain_timeouts > 0 {
        if !detail.is_empty() {
            detail.push_str("<br/>");
        }
        detail.push_str("drain timed out");
    }
    if u.left_out {
        if !detail.is_empty() {
            detail.push_str("<br/>");
        }
        detail.push_str("left out of rotation");
    }
    if let Some(o) = end.and_then(|e| e.output.as_deref()) {
        let _ = write!(
            detail,
            "<details><summary>step output</summary><pre>{}</pre></details>",
            Esc(o)
        );
    }
    let in_rotation = u.in_rotation.or(end.and_then(|e| e.in_rotation));
    let _ = writeln!(
        out,
        "<tr class=\"r-{}\" data-unit=\"{}\"><td>{}</td>{}<td class=\"n\">{}</td><td>{}</td><td>{}</td>\
         <td class=\"err\">{detail}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
        Esc(&outcome.replace(' ', "-")),
        Esc(&u.name),
        Esc(&u.name),
        if hosts {
            format!("<td>{}</td>", Esc(u.host.as_deref().unwrap_or("")))
        } else {
            String::new()
        },
        u.wave.map_or_else(String::new, |w| w.to_string()),
        Esc(outcome),
        Esc(end.and_then(|e| e.phase.as_deref()).unwrap_or("")),
        u.started_ms().map_or_else(String::new, fmt_ms),
        u.took_ms().map_or_else(String::new, fmt_ms),
        Esc(u.state.as_deref().unwrap_or("")),
        match in_rotation {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        }
    );
}
