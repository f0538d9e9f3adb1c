//! The reporter and the live display, driven by synthetic event streams.

//! The reporter's output for synthetic event streams, plain and live.

use super::*;
use crate::reporter::Reporter;
use changeover_core::event::{EventSink, Outcome};
use changeover_core::event::{Phase, UnitResult, UnitResultJson, UnitSummary};

const PHASES: [Phase; 7] = [
    Phase::TakeOut,
    Phase::Drain,
    Phase::Disable,
    Phase::Steps,
    Phase::Health,
    Phase::PutBack,
    Phase::Confirm,
];

/// A rollout of `n` units in waves of `batch`, every `fail_every`-th
/// unit failing its health check and left out, as the dispatcher
/// reports it: phases, results, a progress event after each result and
/// every 2 s of (virtual) elapsed time.
pub(crate) fn synthetic(n: usize, batch: usize, fail_every: usize) -> Vec<(Duration, Event)> {
    let name = |i: usize| format!("web-{}", i + 1);
    let fails = |i: usize| fail_every > 0 && i % fail_every == fail_every - 1;
    let ms = Duration::from_millis;
    let waves = n.div_ceil(batch);
    let mut ev = vec![(
        ms(0),
        Event::DeployStarted {
            deploy_id: "20261202T100000.000Z-4242".into(),
            app: "shop".into(),
            target: None,
            version: "v2".into(),
            units: n,
            waves,
            max_out_of_service: batch,
        },
    )];
    let (mut done, mut failed, mut left_out) = (0, 0, Vec::<String>::new());
    let mut next_tick = 2000;
    let mut t = 0u64;
    for w in 0..waves {
        let units: Vec<usize> = (w * batch..((w + 1) * batch).min(n)).collect();
        ev.push((
            ms(t),
            Event::WaveStarted {
                wave: w + 1,
                units: units.iter().map(|&i| name(i)).collect(),
            },
        ));
        for (k, p) in PHASES.iter().enumerate() {
            for (j, &i) in units.iter().enumerate() {
                if fails(i) && k > 4 {
                    continue;
                }
                ev.push((
                    ms(t + 1 + 300 * k as u64 + j as u64 % 100),
                    Event::UnitPhase {
                        unit: name(i),
                        host: name(i),
                        phase: *p,
                    },
                ));
            }
        }
        let end = t + 2300;
        while next_tick < end {
            let mut out = left_out.clone();
            if next_tick < t + 2200 {
                out.extend(units.iter().map(|&i| name(i)));
            }
            ev.push((
                ms(next_tick),
                Event::Progress {
                    done,
                    total: n,
                    failed,
                    in_flight: if next_tick < t + 2200 { units.len() } else { 0 },
                    max_in_flight: batch,
                    out_of_service: out,
                    gated_on: vec![],
                },
            ));
            next_tick += 2000;
        }
        for (j, &i) in units.iter().enumerate() {
            done += 1;
            let at = ms(t + 2200 + j as u64 % 100);
            let result = if fails(i) {
                failed += 1;
                left_out.push(name(i));
                UnitResult::Failed {
                    phase: Phase::Health,
                    error: "not healthy within 30s: connection refused".into(),
                    in_rotation: false,
                }
            } else {
                UnitResult::Updated
            };
            ev.push((
                at,
                Event::UnitFinished {
                    unit: name(i),
                    host: name(i),
                    result: UnitResultJson::from(&result),
                    output: None,
                },
            ));
            let mut out = left_out.clone();
            out.extend(units[j + 1..].iter().map(|&i| name(i)));
            ev.push((
                at,
                Event::Progress {
                    done,
                    total: n,
                    failed,
                    in_flight: units.len() - j - 1,
                    max_in_flight: batch,
                    out_of_service: out,
                    gated_on: vec![],
                },
            ));
        }
        t = end;
    }
    ev.sort_by_key(|(at, _)| *at);
    ev.push((
        ms(t),
        Event::DeployFinished {
            outcome: if failed > 0 {
                Outcome::Failed
            } else {
                Outcome::Success
            },
            updated: n - failed,
            failed,
            reverted: 0,
            skipped: 0,
            untouched: 0,
            current: 0,
            max_out_of_service_seen: batch + failed,
            units: (0..n)
                .map(|i| UnitSummary {
                    unit: name(i),
                    host: name(i),
                    state: if fails(i) { "failed" } else { "updated" }.into(),
                    in_rotation: !fails(i),
                    detail: fails(i)
                        .then(|| "health: not healthy within 30s: connection refused".into()),
                })
                .collect(),
        },
    ));
    ev
}

/// A `Write` whose bytes the test reads back.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn plain(events: &[(Duration, Event)], quiet: bool, verbose: u8) -> String {
    let buf = Buf::default();
    let reporter = Reporter::plain_to(Box::new(buf.clone()), quiet, verbose);
    for (at, e) in events {
        reporter.emit(*at, e.clone());
    }
    buf.text()
}

/// What the reporter wrote for `synthetic(8, 2, 5)` before live
/// progress: small runs keep it line for line.
const EIGHT_UNITS: &str = r#"deploying shop v2 to 8 unit(s) in 4 wave(s), at most 2 out of service (deploy 20261202T100000.000Z-4242)
    0.0s wave 1: web-1, web-2
    0.0s web-1        take-out
    0.0s web-2        take-out
    0.3s web-1        drain
    0.3s web-2        drain
    0.6s web-1        disable
    0.6s web-2        disable
    0.9s web-1        steps
    0.9s web-2        steps
    1.2s web-1        health
    1.2s web-2        health
    1.5s web-1        put-back
    1.5s web-2        put-back
    1.8s web-1        confirm
    1.8s web-2        confirm
    2.0s [0/8 done] in flight 2/2 · out of service: web-1, web-2
    2.2s web-1        ✓ updated
    2.2s [1/8 done] in flight 1/2 · out of service: web-2
    2.2s web-2        ✓ updated
    2.2s [2/8 done] in flight 0/2 · out of service: none
    2.3s wave 2: web-3, web-4
    2.3s web-3        take-out
    2.3s web-4        take-out
    2.6s web-3        drain
    2.6s web-4        drain
    2.9s web-3        disable
    2.9s web-4        disable
    3.2s web-3        steps
    3.2s web-4        steps
    3.5s web-3        health
    3.5s web-4        health
    3.8s web-3        put-back
    3.8s web-4        put-back
    4.0s [2/8 done] in flight 2/2 · out of service: web-3, web-4
    4.1s web-3        confirm
    4.1s web-4        confirm
    4.5s web-3        ✓ updated
    4.5s [3/8 done] in flight 1/2 · out of service: web-4
    4.5s web-4        ✓ updated
    4.5s [4/8 done] in flight 0/2 · out of service: none
    4.6s wave 3: web-5, web-6
    4.6s web-5        take-out
    4.6s web-6        take-out
    4.9s web-5        drain
    4.9s web-6        drain
    5.2s web-5        disable
    5.2s web-6        disable
    5.5s web-5        steps
    5.5s web-6        steps
    5.8s web-5        health
    5.8s web-6        health
    6.0s [4/8 done] in flight 2/2 · out of service: web-5, web-6
    6.1s web-6        put-back
    6.4s web-6        confirm
    6.8s web-5        ✗ failed in health: not healthy within 30s: connection refused (left out of rotation)
    6.8s [5/8 done, 1 failed] in flight 1/2 · out of service: web-5, web-6
    6.8s web-6        ✓ updated
    6.8s [6/8 done, 1 failed] in flight 0/2 · out of service: web-5
    6.9s wave 4: web-7, web-8
    6.9s web-7        take-out
    6.9s web-8        take-out
    7.2s web-7        drain
    7.2s web-8        drain
    7.5s web-7        disable
    7.5s web-8        disable
    7.8s web-7        steps
    7.8s web-8        steps
    8.0s [6/8 done, 1 failed] in flight 2/2 · out of service: web-5, web-7, web-8
    8.1s web-7        health
    8.1s web-8        health
    8.4s web-7        put-back
    8.4s web-8        put-back
    8.7s web-7        confirm
    8.7s web-8        confirm
    9.1s web-7        ✓ updated
    9.1s [7/8 done, 1 failed] in flight 1/2 · out of service: web-5, web-8
    9.1s web-8        ✓ updated
    9.1s [8/8 done, 1 failed] in flight 0/2 · out of service: web-5
DEPLOY FAILED after 9.2s: 7 updated, 0 already current, 1 failed, 0 put back unchanged, 0 skipped, 0 untouched; at most 3 out of service at once
  web-5        failed     OUT of rotation — health: not healthy within 30s: connection refused
"#;

#[test]
fn eight_units_print_todays_lines() {
    let out = plain(&synthetic(8, 2, 5), false, 0);
    assert_eq!(out, EIGHT_UNITS);
    assert_eq!(out.lines().count(), 81);
}

#[test]
fn ten_thousand_units_print_a_few_hundred_lines() {
    let mut counts = Vec::new();
    for n in [8, 1_000, 10_000] {
        let out = plain(&synthetic(n, 100.min(n / 4).max(2), 500), false, 0);
        let lines: Vec<&str> = out.lines().collect();
        counts.push((n, lines.len()));
        if n < 1_000 {
            continue;
        }
        assert!(
            !out.contains(" take-out\n") && !out.contains(" drain\n"),
            "no phase lines"
        );
        assert!(!out.contains("✓ updated"), "no line per updated unit");
        // Every failure is named, with its reason.
        let failures = n / 500;
        assert_eq!(out.matches("✗ failed in health").count(), failures, "{out}");
        // Progress at most every 2 s of the run (its elapsed), each
        // short: the out-of-service list is cut.
        let progress: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains(" done") && l.contains("] in flight"))
            .collect();
        let secs = |l: &str| {
            l.trim_start()
                .split('s')
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        for pair in progress.windows(2) {
            assert!(secs(pair[1]) - secs(pair[0]) >= 1.95, "{pair:?}");
        }
        assert!(progress.iter().all(|l| l.len() < 200), "{progress:?}");
        assert!(out.contains("out of service: "), "{out}");
        assert!(
            out.lines()
                .last()
                .unwrap()
                .contains("more (`changeover status` shows every unit)")
                || failures <= 50
        );
    }
    eprintln!("plain lines: {counts:?}");
    let ten_k = counts.iter().find(|(n, _)| *n == 10_000).unwrap().1;
    assert!(ten_k <= 300, "{counts:?}");
}

#[test]
fn quiet_prints_only_warnings_errors_and_the_summary() {
    for n in [8, 10_000] {
        let out = plain(
            &synthetic(n, 100.min(n / 4).max(2), if n == 8 { 5 } else { 500 }),
            true,
            0,
        );
        assert!(!out.contains("deploying"), "{out}");
        assert!(!out.contains("wave 1"), "{out}");
        assert!(!out.contains("✓ updated"), "{out}");
        assert!(!out.contains("] in flight"), "{out}");
        assert!(
            !out.contains("✗ failed in health"),
            "no per-unit line: {out}"
        );
        assert!(out.contains("DEPLOY FAILED after"), "{out}");
        // The summary names the failed units, with why.
        assert!(out.contains("failed     OUT of rotation — health"), "{out}");
        if n == 8 {
            assert_eq!(out.lines().count(), 2, "{out}");
        }
    }
}

#[test]
fn verbose_keeps_phase_lines_of_a_large_run() {
    let out = plain(&synthetic(40, 10, 0), false, 1);
    assert_eq!(out.matches(" health\n").count(), 40);
    assert_eq!(out.matches("✓ updated").count(), 40);
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn live_shows_the_bar_units_in_flight_and_leaves_the_summary() {
    let buf = Buf::default();
    let reporter = Reporter::live_to(Live::to(Box::new(buf.clone()), 100), 0);
    let events = synthetic(8, 2, 5);
    for (at, e) in &events {
        reporter.emit(*at, e.clone());
        if matches!(e, Event::UnitPhase { .. }) {
            // Let the ticker draw the unit lines now and then.
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    let raw = buf.text();
    let text = strip_ansi(&raw);
    assert!(text.contains("8/8 done · 1 failed"), "{text}");
    assert!(text.contains("/8 done · "), "{text}");
    assert!(text.contains("  web-7        "), "a unit line: {text}");
    assert!(
        text.contains("✓ updated") && text.contains("✗ failed in health"),
        "{text}"
    );
    assert!(
        !text.contains("0.0s web-1        take-out"),
        "no phase lines without -v: {text}"
    );
    assert!(!text.contains("] in flight"), "no progress lines: {text}");
    let summary = text.rfind("DEPLOY FAILED after").expect("the summary");
    let bar = text.rfind("8/8 done").unwrap();
    assert!(bar < summary, "the summary under the final bar");
    assert!(
        !text[summary..].contains("in flight"),
        "nothing drawn after it: {}",
        &text[summary..]
    );
    // With -v: the phase lines too.
    let buf = Buf::default();
    let reporter = Reporter::live_to(Live::to(Box::new(buf.clone()), 100), 1);
    for (at, e) in &events {
        reporter.emit(*at, e.clone());
    }
    assert!(strip_ansi(&buf.text()).contains("0.0s web-1        take-out"));
}

#[test]
fn live_names_what_the_gate_waits_for() {
    let buf = Buf::default();
    let live = Live::to(Box::new(buf.clone()), 100);
    let reporter = Reporter::live_to(live, 0);
    let mut events = synthetic(4, 2, 0);
    let end = events.pop().unwrap();
    events.push((
        Duration::from_millis(4_700),
        Event::Progress {
            done: 4,
            total: 4,
            failed: 0,
            in_flight: 0,
            max_in_flight: 2,
            out_of_service: vec![],
            gated_on: vec!["web-7".into()],
        },
    ));
    for (at, e) in &events {
        reporter.emit(*at, e.clone());
    }
    // The ticker draws it while the gate holds.
    std::thread::sleep(Duration::from_millis(300));
    reporter.emit(end.0, end.1);
    let text = strip_ansi(&buf.text());
    assert!(text.contains("gate closed, waiting for: web-7"), "{text}");
}
