//! Tests build real `Event`s and go through `to_json_line`, so they follow
//! the schema as it is.

mod check;
mod fixtures;

use super::model::PHASES;
use super::*;
use changeover_core::event::{Outcome, Phase, UnitResult};
use check::{bound, check_well_formed, rows, series};
use fixtures::{many, three_units, Stream, NASTY};
use serde_json::json;
use std::sync::Arc;

#[test]
fn three_units_in_two_waves_with_a_failure() {
    let html = render(&three_units(), "shop v2 → prod");
    check_well_formed(&html).unwrap();
    for needle in [
        "shop",
        "v2",
        "prod",
        "20261202T100000.000Z-4242",
        "badge failed",
        "shop v2 → prod",
    ] {
        assert!(html.contains(needle), "missing {needle}");
    }
    let rows = rows(&html, "data-unit");
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["web-1", "web-2", "web-3"]);
    for (unit, bars) in &rows {
        let phases: Vec<&str> = bars.iter().map(|b| b.0.as_str()).collect();
        let want = if unit == "web-2" {
            &PHASES[..5]
        } else {
            &PHASES[..]
        };
        assert_eq!(phases, want, "{unit}");
        assert!(
            bars.windows(2)
                .all(|w| w[0].1 <= w[1].1 && w[0].2 == w[1].1),
            "{unit}: {bars:?}"
        );
        assert!(bars.iter().all(|b| b.1 <= b.2));
    }
    assert_eq!(
        rows[1].1.last().unwrap(),
        &("health".to_string(), 1020, 1900)
    );
    assert!(html.contains("<title>web-2: health 1.0s–1.9s</title>"));
    let web2 = &html[html.find("data-unit=\"web-2\" data-result").unwrap()..];
    let web2 = &web2[..web2.find("</g>").unwrap()];
    assert!(
        web2.contains("ph p4 fail") && web2.contains("mark-fail"),
        "{web2}"
    );
    assert_eq!(
        web2.matches(" fail\"").count(),
        1,
        "only the last bar is red"
    );
    // Witness: both series and the summary.
    assert_eq!(
        series(&html, "witness_requests").unwrap(),
        [(2000, 400), (4000, 800), (4150, 820)]
    );
    assert_eq!(
        series(&html, "witness_failures").unwrap(),
        [(2000, 0), (4000, 3), (4150, 3)]
    );
    assert!(
        html.contains(">31 ms<") && html.contains("status 503") && html.contains("&lt;reset&gt;")
    );
    // Waves table and the summary's states.
    assert!(html.contains("<table class=\"waves\">"));
    assert!(html.contains("<td>failed</td><td>health</td>"));
}

#[test]
fn out_of_service_stays_within_the_bound() {
    let html = render(&three_units(), "t");
    let pts = series(&html, "out_of_service").unwrap();
    let b = bound(&html);
    assert_eq!(b, 2);
    assert!(pts.iter().all(|p| p.1 <= b), "{pts:?}");
    assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0));
    // web-2 is left out of rotation: it stays out to the end, with web-3.
    assert_eq!(pts.iter().map(|p| p.1).max(), Some(2));
    assert_eq!(pts.first(), Some(&(0, 0)));
    assert_eq!(pts.last(), Some(&(4150, 1)));
    let big = render(&many(1_000, 100, 7, 50), "t");
    let pts = series(&big, "out_of_service").unwrap();
    assert_eq!(bound(&big), 7);
    assert_eq!(pts.iter().map(|p| p.1).max(), Some(7));
    assert_eq!(pts.last().unwrap().1, 0);
}

#[test]
fn strings_from_events_are_escaped() {
    let mut s = Stream::default();
    s.started(1, 1, 1);
    let name = "web-<1>&\"x\"".to_string();
    s.wave(0, 1, std::slice::from_ref(&name));
    let fail = UnitResult::Failed {
        phase: Phase::Steps,
        error: NASTY.into(),
        in_rotation: true,
    };
    s.walk(0, 100, &name, fail);
    let html = render(&s.events, "<i>title</i>");
    check_well_formed(&html).unwrap();
    assert!(!html.contains("<script") && !html.contains("<i>title") && !html.contains("<1>"));
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;co&quot;"));
    assert!(html.contains("data-unit=\"web-&lt;1&gt;&amp;&quot;x&quot;\""));
    s.push(
        500,
        Event::Halted {
            reason: "stop </g></svg> here".into(),
        },
    );
    let html = render(&s.events, "t");
    check_well_formed(&html).unwrap();
    assert!(html.contains("<title>halted at 0.5s: stop &lt;/g&gt;&lt;/svg&gt; here</title>"));
    let html = render(&three_units(), "t");
    assert!(
        !html.contains("<script") && !html.contains("<b>boom") && html.contains("&lt;b&gt;boom")
    );
    assert!(html.contains("web-2 (503 from /health)") && html.contains("class=\"gate\""));
}

#[test]
fn the_output_is_self_contained() {
    for html in [
        render(&three_units(), "t"),
        render(&many(200, 50, 5, 9), "t"),
    ] {
        check_well_formed(&html).unwrap();
        for bad in [
            "http://", "https://", "src=", "href=", "url(", "@import", "<script", "<link", "<img",
        ] {
            assert!(!html.contains(bad), "{bad}");
        }
    }
}

#[test]
fn ten_thousand_units_are_drawn_by_wave() {
    let events = many(10_000, 100, 10, 97);
    let html = render(&events, "fleet");
    check_well_formed(&html).unwrap();
    eprintln!("10,000 units: {} bytes", html.len());
    assert!(html.len() < 5_000_000, "{} bytes", html.len());
    assert!(rows(&html, "data-unit").is_empty());
    let waves = rows(&html, "data-wave");
    assert_eq!(waves.len(), 100);
    assert_eq!(waves[0].0, "1");
    for (_, bars) in &waves {
        let phases: Vec<&str> = bars.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(phases, PHASES);
        assert!(bars.windows(2).all(|w| w[0].1 <= w[1].1));
    }
    let first = &html[html.find("data-wave=\"1\"").unwrap()..];
    assert!(first.contains("data-count=\"100\""));
    let pts = series(&html, "out_of_service").unwrap();
    assert_eq!(pts.len(), 1 + 2 * 10_000);
    assert!(pts.iter().all(|p| p.1 <= 10));
    let small = render(&many(1_000, 100, 10, 97), "fleet");
    eprintln!("1,000 units: {} bytes", small.len());
    assert!(small.contains("unit(s) not updated"));
}

#[test]
fn current_skipped_and_unfinished_units_are_shown_as_such() {
    let mut s = Stream::default();
    s.started(4, 1, 1);
    let names: Vec<String> = ["a", "b"].iter().map(|n| n.to_string()).collect();
    s.wave(0, 1, &names);
    s.walk(0, 10, "a", UnitResult::Updated);
    s.finish(
        80,
        "s",
        &UnitResult::Skipped {
            reason: "unreachable: <timeout>".into(),
        },
        None,
    );
    s.push(
        90,
        Event::UnitPhase {
            unit: "b".into(),
            host: "b".into(),
            phase: Phase::TakeOut,
        },
    );
    s.push(95, Event::Interrupted { hard: true });
    let units = vec![
        ("a".to_string(), "updated"),
        ("b".to_string(), "unknown"),
        ("c".to_string(), "current"),
    ];
    s.done(120, Outcome::Interrupted, units, 1);
    let html = render(&s.events, "t");
    check_well_formed(&html).unwrap();
    let rows = rows(&html, "data-unit");
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["a", "b", "s", "c"]);
    assert!(html.contains("data-unit=\"c\" data-result=\"current\""));
    assert!(html.contains("data-unit=\"s\" data-result=\"skipped\""));
    assert!(html.contains("skipped: unreachable: &lt;timeout&gt;"));
    assert_eq!(rows[1].1, [("take_out".to_string(), 90, 120)]);
    assert!(html.contains("ph p0 open"));
    assert!(html.contains("class=\"note\""));
    let pts = series(&html, "out_of_service").unwrap();
    assert!(pts.iter().all(|p| p.1 <= 1));
    assert!(html.contains("badge interrupted"));
}

#[test]
fn odd_input_never_panics() {
    let odd = vec![
        json!(null),
        json!(7),
        json!("deploy_started"),
        json!({"event": 5}),
        json!({"event": "unit_phase"}),
        json!({"event": "unit_phase", "unit": "a", "phase": "warp", "elapsed_ms": "soon"}),
        json!({"event": "unit_phase", "unit": "a", "phase": "take_out", "elapsed_ms": -5}),
        json!({"event": "unit_finished", "unit": "a", "elapsed_ms": 1e300}),
        json!({"event": "unit_phase", "unit": "a", "phase": "drain", "elapsed_ms": 3}),
        json!({"event": "wave_started", "units": [1, null, "b"], "wave": "x"}),
        json!({"event": "deploy_finished", "units": "none", "outcome": 3}),
        json!({"event": "witness_summary", "failure_kinds": [1], "requests": u64::MAX, "failures": 1}),
        json!({"event": "witness_progress", "requests": u64::MAX}),
        json!({"event": "gate_opened"}),
        json!({"event": "gate_closed", "unhealthy": [{"unit": "b"}, 4], "closed_ms": 1e12}),
        json!({"event": "drain_timeout", "unit": "b", "sessions": null}),
        json!({"event": "member_back"}),
        json!({"event": "halted", "reason": "\u{0}\u{7}"}),
        json!({"event": "from_the_future", "elapsed_ms": 2}),
        json!({"event": "deploy_started", "max_out_of_service": "two"}),
        json!({"event": "deploy_started"}),
    ];
    for k in 0..=odd.len() {
        let html = render(&odd[..k], "odd");
        check_well_formed(&html).unwrap_or_else(|e| panic!("after {k} events: {e}"));
        assert!(!html.contains('\u{0}'));
    }
    let html = render(&[], "empty");
    check_well_formed(&html).unwrap();
}

#[test]
fn a_rollback_after_a_failed_deploy_is_its_own_section() {
    let mut events = three_units();
    let mut s = Stream::default();
    s.started(3, 1, 1);
    s.wave(0, 1, &["web-2".to_string()]);
    s.walk(0, 50, "web-2", UnitResult::Updated);
    s.done(400, Outcome::Success, vec![("web-2".into(), "updated")], 1);
    events.extend(s.events);
    let html = render(&events, "t");
    check_well_formed(&html).unwrap();
    assert_eq!(html.matches("<section class=\"rollout\"").count(), 2);
    assert_eq!(html.matches("data-series=\"out_of_service\"").count(), 2);
    assert!(html.contains("badge success") && html.contains("badge failed"));
}

#[test]
fn the_recorder_keeps_every_event_from_every_thread() {
    let rec = Arc::new(Recorder::new());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let rec = Arc::clone(&rec);
            std::thread::spawn(move || {
                for i in 0..50 {
                    rec.emit(
                        Duration::from_millis(i),
                        Event::WitnessProgress {
                            requests: t,
                            failures: i,
                        },
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let events = rec.events();
    assert_eq!(events.len(), 200);
    assert!(events
        .iter()
        .all(|e| e["schema"] == 1 && e["event"] == "witness_progress"));
    let rec = Recorder::new();
    rec.emit(
        Duration::from_millis(12),
        Event::Halted { reason: "r".into() },
    );
    assert_eq!(
        rec.events(),
        [json!({"schema": 1, "event": "halted", "elapsed_ms": 12, "reason": "r"})]
    );
}

/// `CHANGEOVER_REPORT_EXAMPLE=/tmp/report-example.html` writes the
/// three-unit report there (and `…_BIG` a 1,000-unit one) to look at.
#[test]
fn write_examples_when_asked() {
    if let Ok(path) = std::env::var("CHANGEOVER_REPORT_EXAMPLE") {
        std::fs::write(path, render(&three_units(), "shop v2 → prod")).unwrap();
    }
    if let Ok(path) = std::env::var("CHANGEOVER_REPORT_EXAMPLE_BIG") {
        std::fs::write(
            path,
            render(&many(1_000, 100, 10, 97), "shop v2 → 1,000 units"),
        )
        .unwrap();
    }
}
