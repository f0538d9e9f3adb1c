//! `--report FILE.html` for a real fleet run (sshd per host + HAProxy):
//! one self-contained file whose timeline has a row per unit with its
//! phases in order, and whose out-of-service curve stays within the bound.

use super::text;
use crate::fleet::{changeover, Fleet};

/// The value of every `name="…"` attribute in `tag` (one opening tag).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')? + start;
    Some(&tag[start..end])
}

/// Every opening tag of element `element` (`<rect …>`), in order.
fn tags<'a>(html: &'a str, element: &str) -> Vec<&'a str> {
    let open = format!("<{element} ");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let end = rest[i..].find('>').map_or(rest.len(), |e| i + e + 1);
        out.push(&rest[i..end]);
        rest = &rest[end..];
    }
    out
}

/// Tags balance: every element opened is closed, in order (void and
/// self-closing elements aside).
fn well_formed(html: &str) -> Result<(), String> {
    const VOID: &[&str] = &[
        "meta", "br", "hr", "img", "input", "link", "col", "!DOCTYPE",
    ];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        let end = rest[i..].find('>').ok_or("an unclosed tag")? + i;
        let tag = &rest[i + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with("!--") {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '/')
            .collect();
        if tag.starts_with('/') {
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
        } else if !tag.ends_with('/') && !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("never closed: {stack:?}"))
    }
}

#[test]
fn a_real_fleet_run_gives_a_readable_self_contained_report() {
    let fleet = Fleet::builder(6).start();
    let config = fleet.config(None, "[strategy]\nbatch = 2\n");
    let report = fleet.dir.path().join("run.html");
    let out = changeover(
        &config,
        &[
            "deploy",
            "--version",
            "v2",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("report: "),
        "{}",
        text(&out)
    );
    let html = std::fs::read_to_string(&report).unwrap();
    well_formed(&html).unwrap_or_else(|e| panic!("{e}"));
    for external in ["src=", "href=", "<script", "<link", "url("] {
        assert!(!html.contains(external), "self-contained: found {external}");
    }
    // One row per unit, each with its phases in the walk's order.
    let order = [
        "take_out", "drain", "disable", "steps", "health", "put_back", "confirm",
    ];
    let rows = tags(&html, "g");
    let units: Vec<&str> = rows.iter().filter_map(|t| attr(t, "data-unit")).collect();
    assert_eq!(units.len(), 6, "{units:?}");
    for (i, u) in units.iter().enumerate() {
        assert_eq!(*u, format!("web-{}", i + 1));
    }
    let row_starts: Vec<usize> = units
        .iter()
        .map(|u| html.find(&format!("data-unit=\"{u}\"")).unwrap())
        .collect();
    for (i, start) in row_starts.iter().enumerate() {
        let end = row_starts.get(i + 1).copied().unwrap_or(html.len());
        let bars = tags(&html[*start..end], "rect");
        let phases: Vec<(&str, u64)> = bars
            .iter()
            .filter_map(|b| {
                Some((
                    attr(b, "data-phase")?,
                    attr(b, "data-start-ms")?.parse().ok()?,
                ))
            })
            .collect();
        let names: Vec<&str> = phases.iter().map(|(p, _)| *p).collect();
        assert_eq!(names, order, "{}: phases in order", units[i]);
        assert!(
            phases.windows(2).all(|w| w[0].1 <= w[1].1),
            "{}: starts never go back: {phases:?}",
            units[i]
        );
    }
    // The out-of-service curve never above the bound (batch 2).
    let curve = tags(&html, "path")
        .into_iter()
        .find(|t| attr(t, "data-series") == Some("out_of_service"))
        .expect("the out-of-service curve");
    let points: Vec<usize> = attr(curve, "data-points")
        .unwrap()
        .split_whitespace()
        .map(|p| p.split(':').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(points.len() >= 6, "{points:?}");
    assert!(
        points.iter().all(|&n| n <= 2),
        "above the bound: {points:?}"
    );
    assert_eq!(points.iter().max(), Some(&2), "the bound was used");
    assert!(html.contains("data-bound=\"2\""));
}
