//! The report's charts, as inline SVG sharing one time axis: the timeline
//! (per unit, or per wave at scale), the out-of-service curve and the
//! witness's counts. Tooltips are SVG `<title>` elements; tests read the
//! `data-*` attributes.

mod timeline;

pub use timeline::timeline;

use super::model::Rollout;
use super::{fmt_ms, Esc};
use std::fmt::Write as _;

/// Left of the plot: the row labels.
const LEFT: f64 = 200.0;
/// The plot's width.
const PLOT_W: f64 = 840.0;
/// Right of the plot: the result column.
const RIGHT: f64 = 110.0;
const WIDTH: f64 = LEFT + PLOT_W + RIGHT;
/// Room for the time axis's labels.
const AXIS_H: f64 = 22.0;

/// The shared horizontal scale: 0 … `end_ms` onto the plot.
#[derive(Clone, Copy)]
pub struct Scale {
    end_ms: u64,
}

impl Scale {
    pub fn new(r: &Rollout) -> Scale {
        Scale {
            end_ms: r.end_ms.max(1),
        }
    }

    fn x(&self, t: u64) -> f64 {
        LEFT + (t.min(self.end_ms) as f64) / (self.end_ms as f64) * PLOT_W
    }
}

/// A tick step giving about `n` ticks over `span`.
fn tick_step(span: u64, n: u64) -> u64 {
    const STEPS: [u64; 22] = [
        1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000,
        120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000,
    ];
    let raw = (span / n.max(1)).max(1);
    STEPS
        .iter()
        .copied()
        .find(|s| *s >= raw)
        .unwrap_or_else(|| raw.div_ceil(3_600_000) * 3_600_000)
}

/// A 1-2-5 step giving at most about `n` ticks up to `max`.
fn count_step(max: u64, n: u64) -> u64 {
    let raw = max.div_ceil(n.max(1)).max(1);
    let mut mag = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = mag.saturating_mul(m);
            if step >= raw {
                return step;
            }
        }
        if mag > u64::MAX / 10 {
            return raw;
        }
        mag *= 10;
    }
}

fn open_svg(out: &mut String, class: &str, height: f64, label: &str) {
    let _ = writeln!(
        out,
        "<svg class=\"chart {class}\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" role=\"img\" aria-label=\"{}\">",
        Esc(label)
    );
}

/// Vertical grid lines from `top` to `bottom` and the time labels below.
fn time_axis(out: &mut String, s: Scale, top: f64, bottom: f64) {
    let step = tick_step(s.end_ms, 10);
    out.push_str("<g class=\"axis\">");
    let mut t = 0;
    while t <= s.end_ms {
        let x = s.x(t);
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            bottom + 14.0,
            fmt_ms(t)
        );
        match t.checked_add(step) {
            Some(next) => t = next,
            None => break,
        }
    }
    out.push_str("</g>\n");
}

/// Gate-closed periods as shaded bands, halts and interrupts as lines.
fn annotations(out: &mut String, r: &Rollout, s: Scale, top: f64, bottom: f64) {
    for (from, to) in &r.gate_closed {
        let to = to.unwrap_or(r.end_ms);
        let (x0, x1) = (s.x(*from), s.x(to));
        let _ = writeln!(
            out,
            "<rect class=\"gate\" x=\"{x0:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\">\
             <title>health gate closed {}–{}</title></rect>",
            (x1 - x0).max(1.0),
            bottom - top,
            fmt_ms(*from),
            fmt_ms(to)
        );
    }
    for n in r.notes.iter().filter(|n| n.mark) {
        let x = s.x(n.t_ms);
        let _ = writeln!(
            out,
            "<line class=\"note\" x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\">\
             <title>{} at {}: {}</title></line>",
            n.kind,
            fmt_ms(n.t_ms),
            Esc(&n.text)
        );
    }
}

/// A y scale for a chart `h` high starting at `top`, for values 0 … `max`.
fn y_of(v: u64, max: u64, top: f64, h: f64) -> f64 {
    top + h - (v as f64) / (max.max(1) as f64) * h
}

fn y_axis(out: &mut String, max: u64, top: f64, h: f64, label: &str) {
    let step = count_step(max, 4);
    out.push_str("<g class=\"axis y\">");
    let mut v = 0;
    while v <= max.max(1) {
        let y = y_of(v, max, top, h);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.0}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>",
            LEFT + PLOT_W,
            LEFT - 6.0,
            y + 4.0
        );
        match v.checked_add(step) {
            Some(next) => v = next,
            None => break,
        }
    }
    let _ = writeln!(
        out,
        "<text class=\"ylabel\" x=\"8\" y=\"{:.0}\">{}</text></g>",
        top + h / 2.0,
        Esc(label)
    );
}

/// The out-of-service step curve, exact, against the bound.
pub fn out_of_service(out: &mut String, r: &Rollout, s: Scale) {
    let (top, h) = (10.0, 150.0);
    let bound = r.max_out_of_service;
    let top_value = r.max_out_seen().max(bound.unwrap_or(0)).max(1);
    // Headroom above the curve and the bound.
    let max = top_value + top_value.div_ceil(8);
    open_svg(
        out,
        "oos",
        top + h + AXIS_H + 4.0,
        "units out of service over time",
    );
    time_axis(out, s, top, top + h);
    annotations(out, r, s, top, top + h);
    y_axis(out, max, top, h, "out of service");
    let mut data = String::with_capacity(r.out_of_service.len() * 10);
    let mut d = String::with_capacity(r.out_of_service.len() * 14);
    let mut prev: Option<u64> = None;
    for &(t, c) in &r.out_of_service {
        if !data.is_empty() {
            data.push(' ');
        }
        let _ = write!(data, "{t}:{c}");
        let (x, y) = (s.x(t), y_of(c, max, top, h));
        match prev {
            None => {
                let _ = write!(d, "M{x:.1} {y:.1}");
            }
            Some(p) if p == c => {
                let _ = write!(d, "H{x:.1}");
            }
            Some(_) => {
                let _ = write!(d, "H{x:.1}V{y:.1}");
            }
        }
        prev = Some(c);
    }
    let _ = writeln!(
        out,
        "<path class=\"series oos\" data-series=\"out_of_service\" data-points=\"{data}\" d=\"{d}\">\
         <title>units out of service (peak {})</title></path>",
        r.max_out_seen()
    );
    if let Some(b) = bound {
        let y = y_of(b, max, top, h);
        let _ = writeln!(
            out,
            "<line class=\"bound\" data-bound=\"{b}\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.0}\" y2=\"{y:.1}\">\
             <title>max_out_of_service = {b}</title></line>",
            LEFT + PLOT_W
        );
    }
    out.push_str("</svg>\n");
}

/// Picks one count out of a witness point (t, requests, failures).
type Pick = fn(&(u64, u64, u64)) -> u64;

/// The witness's cumulative requests and failures, one panel each.
pub fn witness(out: &mut String, r: &Rollout, s: Scale) {
    let (h, gap) = (90.0, 24.0);
    let height = 10.0 + 2.0 * h + gap + AXIS_H + 4.0;
    open_svg(
        out,
        "witness",
        height,
        "traffic witness: requests and failures over time",
    );
    let panels: [(&str, &str, Pick); 2] = [
        ("witness_requests", "requests", |p| p.1),
        ("witness_failures", "failures", |p| p.2),
    ];
    for (k, (series, label, get)) in panels.iter().enumerate() {
        let top = 10.0 + k as f64 * (h + gap);
        let max = r.witness.iter().map(get).max().unwrap_or(0).max(1);
        time_axis(out, s, top, top + h);
        y_axis(out, max, top, h, label);
        let mut data = String::new();
        let mut pts = String::new();
        for p in &r.witness {
            if !data.is_empty() {
                data.push(' ');
                pts.push(' ');
            }
            let _ = write!(data, "{}:{}", p.0, get(p));
            let _ = write!(pts, "{:.1},{:.1}", s.x(p.0), y_of(get(p), max, top, h));
        }
        let _ = writeln!(
            out,
            "<polyline class=\"series {series}\" data-series=\"{series}\" data-points=\"{data}\" points=\"{pts}\">\
             <title>witness {label} so far</title></polyline>"
        );
    }
    out.push_str("</svg>\n");
}
