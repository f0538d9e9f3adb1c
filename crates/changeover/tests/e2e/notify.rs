//! `[[notify]]` against an in-process HTTP receiver (testkit), on the real
//! fleet: Slack and webhook payloads, the URL (a secret) absent from every
//! output, `--silent`, and an endpoint that fails or hangs never failing or
//! holding up the deploy beyond the bounded wait.

use super::text;
use crate::fleet::Fleet;
use changeover_testkit::receiver::{Answer, HttpReceiver};
use std::process::Command;
use std::time::{Duration, Instant};

/// The secret part of the URLs.
const SECRET: &str = "T0SECRET-b4ckd00r-XYZ";

fn config(fleet: &Fleet) -> std::path::PathBuf {
    fleet.config(
        None,
        "[[notify]]\nkind = \"slack\"\nurl_env = \"CHANGEOVER_TEST_SLACK\"\n\n[[notify]]\nkind = \"webhook\"\nurl_env = \"CHANGEOVER_TEST_HOOK\"\nevents = [\"deploy_started\", \"unit_finished\", \"deploy_failed\"]\ntimeout = \"1s\"\n",
    )
}

fn run(
    config: &std::path::Path,
    slack: &str,
    hook: &str,
    args: &[&str],
) -> (std::process::Output, Duration) {
    let t = Instant::now();
    let out = Command::new(crate::fleet::BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("CHANGEOVER_TEST_SLACK", slack)
        .env("CHANGEOVER_TEST_HOOK", hook)
        .output()
        .unwrap();
    (out, t.elapsed())
}

#[test]
fn slack_and_webhook_get_their_payloads_and_the_url_never_shows() {
    let fleet = Fleet::builder(2).start();
    let config = config(&fleet);
    let slack = HttpReceiver::start(Answer::Status(200));
    let hook = HttpReceiver::start(Answer::Status(200));
    let (out, _) = run(
        &config,
        &slack.url(&format!("services/{SECRET}")),
        &hook.url(&format!("in/{SECRET}")),
        &["deploy", "--version", "v2", "-m", "ship it", "--json", "-v"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(!all.contains(SECRET), "the URL leaked: {all}");
    let state = fleet.dir.path().join("state");
    for e in crate::fleet::files_under(&state) {
        assert!(
            !std::fs::read_to_string(&e)
                .unwrap_or_default()
                .contains(SECRET),
            "{}",
            e.display()
        );
    }

    // Slack: deploy_started and deploy_finished (the defaults), readable.
    let texts: Vec<String> = slack
        .received()
        .iter()
        .map(|r| {
            assert_eq!(r.method, "POST");
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[0].contains("deploy testapp v2 started by") && texts[0].contains("ship it"),
        "{texts:?}"
    );
    assert!(texts[1].contains("done: 2 updated"), "{texts:?}");

    // Webhook: the events asked for, as the --json stream has them, with the run.
    let events: Vec<serde_json::Value> = hook
        .received()
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["deploy_started", "unit_finished", "unit_finished"],
        "{events:?}"
    );
    assert_eq!(events[0]["schema"], 1);
    assert_eq!(events[0]["app"], "testapp");
    assert_eq!(events[0]["command"], "deploy");
    assert_eq!(events[0]["message"], "ship it");
    assert_eq!(events[1]["result"], "updated");

    // --silent: nothing sent.
    let before = (slack.received().len(), hook.received().len());
    let (out, _) = run(
        &config,
        &slack.url(&format!("services/{SECRET}")),
        &hook.url(&format!("in/{SECRET}")),
        &["deploy", "--version", "v3", "--silent"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        (slack.received().len(), hook.received().len()),
        before,
        "--silent sent something"
    );
}

#[test]
fn a_failing_or_hanging_endpoint_neither_fails_nor_holds_up_the_deploy() {
    let fleet = Fleet::builder(2).start();
    let config = config(&fleet);
    // A baseline with endpoints that answer at once.
    let ok = HttpReceiver::start(Answer::Status(200));
    let (out, baseline) = run(
        &config,
        &ok.url("a"),
        &ok.url("b"),
        &["deploy", "--version", "v2"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // 500 everywhere: retried, reported once per endpoint, exit 0.
    let broken = HttpReceiver::start(Answer::Status(500));
    let (out, took) = run(
        &config,
        &broken.url(&format!("s/{SECRET}")),
        &broken.url(&format!("h/{SECRET}")),
        &["deploy", "--version", "v3"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: notify slack ($CHANGEOVER_TEST_SLACK)"),
        "{err}"
    );
    assert!(
        err.contains("not sent after 3 tries: answered 500"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
    assert!(
        broken.received().len() >= 6,
        "retried: {}",
        broken.received().len()
    );
    assert_eq!(fleet.versions(), vec!["v3", "v3"]);
    eprintln!("baseline {baseline:?}, with a 500 endpoint {took:?}");

    // A hang: the deploy finishes, then waits at most the bounded 5 s.
    let hang = HttpReceiver::start(Answer::Hang);
    let (out, took) = run(
        &config,
        &hang.url("s"),
        &hang.url("h"),
        &["deploy", "--version", "v4"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.versions(), vec!["v4", "v4"]);
    assert!(
        took < baseline + Duration::from_secs(5) + Duration::from_secs(3),
        "a hanging endpoint held the deploy up: {took:?} (baseline {baseline:?})"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: notify"), "{err}");
    eprintln!("with a hanging endpoint {took:?}");
}
