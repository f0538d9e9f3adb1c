//! Live progress: `changeover demo` in a pseudo-terminal (util-linux
//! `script`) draws the aggregate bar and a line per unit in flight, and
//! leaves the summary; through plain pipes it prints lines and no bar.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_changeover");
const PHASES: [&str; 7] = [
    "take-out", "drain", "disable", "steps", "health", "put-back", "confirm",
];

/// Run `changeover ARGS` with its stdout and stderr on a pseudo-terminal;
/// what the terminal received, escape sequences stripped.
fn in_pty(args: &str) -> String {
    let which = Command::new("sh")
        .args(["-c", "command -v script"])
        .output()
        .expect("sh");
    assert!(
        which.status.success(),
        "these tests need util-linux `script` (Debian: bsdutils)"
    );
    let out = Command::new("script")
        .arg("-qfec")
        .arg(format!("{BIN} {args}"))
        .arg("/dev/null")
        .env("TERM", "xterm")
        .env_remove("CHANGEOVER_PROGRESS")
        .stdin(Stdio::null())
        .output()
        .expect("script runs");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{raw}",
        String::from_utf8_lossy(&out.stderr)
    );
    strip_ansi(&raw)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: parameters up to a final letter; others: one more char.
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() || c == '~' {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// `  local#3      health       1.2s`: a unit, a phase, seconds in it.
fn has_in_flight_line(text: &str) -> bool {
    text.match_indices("  local#").any(|(i, _)| {
        let rest = &text[i + 2..];
        let mut words = rest.split_whitespace();
        let (Some(_unit), Some(phase), Some(secs)) = (words.next(), words.next(), words.next())
        else {
            return false;
        };
        PHASES.contains(&phase)
            && secs
                .strip_suffix('s')
                .is_some_and(|n| n.parse::<f64>().is_ok())
    })
}

const DEMO: &str = "demo --instances 4 --boot-time 800ms";

#[test]
fn on_a_terminal_the_demo_shows_the_bar_and_units_in_flight() {
    let text = in_pty(DEMO);
    // The aggregate bar, moving and at its end.
    assert!(
        text.contains("0/4 done · ")
            || text.contains("1/4 done · ")
            || text.contains("2/4 done · "),
        "{text}"
    );
    assert!(text.contains("4/4 done · 0 failed"), "{text}");
    assert!(text.contains("ETA "), "{text}");
    assert!(
        has_in_flight_line(&text),
        "a line per unit in flight: {text}"
    );
    // Results above the bar; no phase lines without -v.
    assert!(text.contains("local#1      ✓ updated"), "{text}");
    assert!(!text.contains("0.0s local#1      take-out"), "{text}");
    // The summary stays, under the bar's last state.
    let summary = text
        .rfind("deploy finished after")
        .expect("the deploy's summary");
    assert!(text.rfind("4/4 done").unwrap() < summary, "{text}");
    assert!(!has_in_flight_line(&text[summary..]), "{text}");
    assert!(
        text.contains("changeover demo: 4/4 units updated"),
        "the demo's summary: {text}"
    );
}

#[test]
fn quiet_on_a_terminal_draws_no_bar() {
    let text = in_pty(&format!("-q {DEMO}"));
    assert!(!text.contains("/4 done"), "{text}");
    assert!(!has_in_flight_line(&text), "{text}");
    assert!(!text.contains("✓ updated"), "{text}");
    assert!(text.contains("deploy finished after"), "{text}");
}

#[test]
fn through_pipes_the_demo_prints_lines_and_no_bar() {
    let out = Command::new(BIN)
        .args(DEMO.split(' '))
        .env_remove("CHANGEOVER_PROGRESS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains('\x1b'), "no escape sequences: {stderr}");
    assert!(!stderr.contains("/4 done · "), "no bar: {stderr}");
    assert!(!stderr.contains('█'), "no bar: {stderr}");
    // Today's lines: a line per phase, per result, progress.
    assert!(stderr.contains("0.0s local#1      take-out"), "{stderr}");
    assert!(stderr.contains("local#1      ✓ updated"), "{stderr}");
    assert!(stderr.contains("[4/4 done] in flight 0/2"), "{stderr}");
    assert!(stderr.contains("deploy finished after"), "{stderr}");
}
