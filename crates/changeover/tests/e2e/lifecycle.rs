//! The deploy lifecycle on the real fleet (sshd per host + HAProxy): targets
//! with their own policy, the lock, version pointers, rollback, unify,
//! status and history, as the flightplan system used them.

use super::text;
use crate::fleet::{changeover, Fleet};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Flightplan-style targets over the whole (untagged) fleet: 10 % and 25 %
/// partial slices that share the production pointer, and production itself.
pub const TARGETS: &str = r#"
[strategy]
batch = "50%"

[targets.production10]
percent = 10
pointer = "production"
partial = true

[targets.production25]
percent = 25
pointer = "production"
partial = true

[targets.production]
require_message = true
"#;

fn run(config: &Path, args: &[&str]) -> (std::process::Output, Duration) {
    let t = Instant::now();
    let out = changeover(config, args);
    (out, t.elapsed())
}

fn ok(config: &Path, args: &[&str]) -> Duration {
    let (out, took) = run(config, args);
    assert_eq!(out.status.code(), Some(0), "{args:?}\n{}", text(&out));
    took
}

fn json_doc(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no JSON on stdout\n{}", text(out)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {e}: {line}"))
}

/// The pointer of `target` ("" = the whole fleet) as `status --json` shows it.
fn pointer(config: &Path, target: &str) -> (Option<String>, Option<String>) {
    let mut args = vec!["status", "--json"];
    if !target.is_empty() {
        args.insert(1, target);
    }
    let (out, _) = run(config, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc = json_doc(&out);
    let p = &doc["pointer"];
    (
        p["current"].as_str().map(str::to_string),
        p["previous"].as_str().map(str::to_string),
    )
}

fn v(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// The whole life of a release, for one store.
pub fn lifecycle(store: &str, fleet: &Fleet) {
    lifecycle_of(&fleet.config(None, &format!("{TARGETS}\n{store}")), fleet);
}

/// The whole life of a release with `config` (which has [`TARGETS`]).
pub fn lifecycle_of(config: &Path, fleet: &Fleet) {
    let config = config.to_path_buf();
    let mut timings = Vec::new();
    let n = fleet.hosts.len();

    // Baseline: everyone on v1 through changeover (the pointer's first value).
    timings.push((
        "deploy production v1",
        ok(
            &config,
            &["deploy", "production", "--version", "v1", "-m", "baseline"],
        ),
    ));
    assert_eq!(fleet.deploy_counts(), vec![1; n]);
    assert_eq!(pointer(&config, "production"), (v("v1"), None));

    // 10 %: one unit, the pointer does not move.
    timings.push((
        "deploy production10 v2",
        ok(
            &config,
            &[
                "deploy",
                "production10",
                "--version",
                "v2",
                "-m",
                "canary 10%",
            ],
        ),
    ));
    let mut want = vec![1; n];
    want[0] = 2;
    assert_eq!(
        fleet.deploy_counts(),
        want,
        "production10 touches the first unit only"
    );
    assert_eq!(
        pointer(&config, "production"),
        (v("v1"), None),
        "partial: pointer unchanged"
    );

    // 25 %: only the unit between 10 % and 25 % is touched.
    timings.push((
        "deploy production25 v2",
        ok(
            &config,
            &["deploy", "production25", "--version", "v2", "-m", "25%"],
        ),
    ));
    want[1] = 2;
    assert_eq!(
        fleet.deploy_counts(),
        want,
        "production25 touches only the second unit"
    );
    assert_eq!(fleet.versions()[..2], [v("v2").unwrap(), v("v2").unwrap()]);
    assert_eq!(pointer(&config, "production"), (v("v1"), None));

    // unify: the two go back to the pointer's v1.
    timings.push((
        "unify production",
        ok(
            &config,
            &["unify", "production", "-m", "back to one version"],
        ),
    ));
    want[0] = 3;
    want[1] = 3;
    assert_eq!(
        fleet.deploy_counts(),
        want,
        "unify touches only the units not on v1"
    );
    assert_eq!(fleet.versions(), vec!["v1".to_string(); n]);
    assert_eq!(fleet.deploys(0), ["v1", "v2", "v1"]);

    // The whole of production.
    timings.push((
        "deploy production v2",
        ok(
            &config,
            &["deploy", "production", "--version", "v2", "-m", "ship it"],
        ),
    ));
    assert_eq!(fleet.versions(), vec!["v2".to_string(); n]);
    assert_eq!(pointer(&config, "production"), (v("v2"), v("v1")));

    // Rollback.
    timings.push((
        "rollback production",
        ok(&config, &["rollback", "production", "-m", "bad release"]),
    ));
    assert_eq!(fleet.versions(), vec!["v1".to_string(); n]);
    assert_eq!(pointer(&config, "production"), (v("v1"), v("v2")));

    // history: the six runs, newest first, with their messages.
    let (out, took) = run(&config, &["history", "--json"]);
    timings.push(("history", took));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc = json_doc(&out);
    let entries = doc["entries"].as_array().expect("entries");
    let seen: Vec<(String, String, String, String, String)> = entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
            (
                s("command"),
                s("target"),
                s("version"),
                s("message"),
                s("outcome"),
            )
        })
        .collect();
    let row = |c: &str, t: &str, ver: &str, m: &str| {
        (
            c.to_string(),
            t.to_string(),
            ver.to_string(),
            m.to_string(),
            "success".to_string(),
        )
    };
    assert_eq!(
        seen,
        vec![
            row("rollback", "production", "v1", "bad release"),
            row("deploy", "production", "v2", "ship it"),
            row("unify", "production", "v1", "back to one version"),
            row("deploy", "production25", "v2", "25%"),
            row("deploy", "production10", "v2", "canary 10%"),
            row("deploy", "production", "v1", "baseline"),
        ]
    );
    assert_eq!(entries[3]["counts"]["updated"], 1);
    assert_eq!(entries[3]["counts"]["current"], 1);

    // status agrees with what the hosts really run.
    let (out, took) = run(&config, &["status", "--json"]);
    timings.push(("status", took));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc = json_doc(&out);
    let recorded: Vec<String> = doc["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["version"].as_str().unwrap_or("-").to_string())
        .collect();
    assert_eq!(recorded, fleet.versions(), "status --json vs the hosts");
    for u in doc["units"].as_array().unwrap() {
        assert_eq!(u["health"]["ok"], true, "{u}");
        assert_eq!(u["balancers"][0]["serving"], true, "{u}");
    }
    // Everything is on v1 already: nothing is touched, unless --redeploy.
    let before = fleet.deploy_counts();
    ok(
        &config,
        &["deploy", "production", "--version", "v1", "-m", "again"],
    );
    assert_eq!(
        fleet.deploy_counts(),
        before,
        "units already current were touched"
    );
    ok(
        &config,
        &["deploy", "production10", "--version", "v1", "--redeploy"],
    );
    let mut want = before.clone();
    want[0] += 1;
    assert_eq!(
        fleet.deploy_counts(),
        want,
        "--redeploy touches the current unit"
    );
    for (what, took) in &timings {
        eprintln!("timing: {what}: {:.2}s", took.as_secs_f64());
    }
}

#[test]
fn lifecycle_with_the_local_store() {
    let fleet = Fleet::builder(10).start();
    lifecycle("", &fleet);
}

/// A deploy that holds the lock for a few seconds (batch 1, 3 hosts).
fn slow_config(fleet: &Fleet, extra: &str) -> std::path::PathBuf {
    fleet.config(
        None,
        &format!("[strategy]\nbatch = 1\npause = \"1s\"\n{extra}"),
    )
}

fn wait_for_lock(config: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (out, _) = run(config, &["lock", "status", "--json"]);
        let doc = json_doc(&out);
        if doc["locks"][0]["held"] == true {
            return doc["locks"][0]["lock"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the first deploy never took the lock"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_deploy_while_one_runs_exits_4_or_waits_with_lock_wait() {
    let fleet = Fleet::builder(3).start();
    let config = slow_config(&fleet, "");
    let first = {
        let config = config.clone();
        std::thread::spawn(move || {
            changeover(&config, &["deploy", "--version", "v2", "-m", "first"])
        })
    };
    let holder = wait_for_lock(&config);
    assert_eq!(holder["version"], "v2");
    assert_eq!(holder["message"], "first");

    let counts_before = fleet.deploy_counts();
    let (second, took) = run(&config, &["deploy", "--version", "v3"]);
    assert_eq!(second.status.code(), Some(4), "{}", text(&second));
    assert!(took < Duration::from_secs(1), "exit 4 took {took:?}");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("is held by") && err.contains("\"first\"") && err.contains("since"),
        "{err}"
    );
    assert!(!fleet
        .deploy_counts()
        .iter()
        .zip(&counts_before)
        .any(|(a, b)| a < b));

    // --lock-wait: starts once the first is done, then deploys v3.
    let (third, _) = run(
        &config,
        &[
            "deploy",
            "--version",
            "v3",
            "--lock-wait",
            "60s",
            "-m",
            "third",
        ],
    );
    let first = first.join().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(third.status.code(), Some(0), "{}", text(&third));
    assert!(String::from_utf8_lossy(&third.stderr).contains("waiting for the lock"));
    assert_eq!(fleet.versions(), vec!["v3".to_string(); 3]);
    // Only the two real deploys reached the hosts: v2 then v3 on each.
    for i in 0..3 {
        assert_eq!(fleet.deploys(i), ["v2", "v3"], "host {i}");
    }
    let (out, _) = run(&config, &["history", "--json"]);
    let doc = json_doc(&out);
    let e = doc["entries"].as_array().unwrap();
    assert_eq!(
        e.len(),
        2,
        "the refused deploy is not in the history: {doc}"
    );
    assert_eq!(e[0]["version"], "v3");
}

#[test]
fn on_failure_rollback_brings_every_unit_back() {
    let fleet = Fleet::builder(6).start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\non_failure = \"rollback\"\n");
    ok(&config, &["deploy", "--version", "v1", "-m", "baseline"]);
    std::fs::write(fleet.app_dir(2).join("fail-deploy-v2"), "").unwrap();
    let (out, _) = run(&config, &["deploy", "--version", "v2", "-m", "broken"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        fleet.versions(),
        vec!["v1".to_string(); 6],
        "{}",
        text(&out)
    );
    for (name, _) in &fleet.hosts {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(5));
    }
    // Hosts 1 and 2 went to v2 and back; host 3 failed and got v1 again.
    assert_eq!(fleet.deploys(0), ["v1", "v2", "v1"]);
    assert_eq!(fleet.deploys(2), ["v1", "v1"]);
    assert_eq!(fleet.deploys(3), ["v1"], "host 4 was never touched");
    let (h, _) = run(&config, &["history", "--json"]);
    let doc = json_doc(&h);
    let e = doc["entries"].as_array().unwrap();
    assert_eq!(e[0]["command"], "unify", "{doc}");
    assert_eq!(e[0]["outcome"], "success");
    assert_eq!(e[1]["command"], "deploy");
    assert_eq!(e[1]["outcome"], "failed");
    assert_eq!(e[1]["rollback_outcome"], "success");
    assert_eq!(e[1]["rolled_back_by"], e[0]["deploy_id"]);
    assert_eq!(
        pointer(&config, ""),
        (v("v1"), None),
        "a failed deploy moves no pointer"
    );
}

#[test]
fn dev_box_policy_message_and_missing_previous() {
    let fleet = Fleet::builder(3).start();
    let config = fleet.config(
        None,
        "[targets.dev]\nhosts = [\"web-1\"]\nlb_takeout = false\nlock = false\n\n[targets.canary]\nhosts = [\"web-2\"]\nrequire_message = true\n",
    );
    // Someone else's manual lock on "deploy": dev takes no lock, so it
    // still goes; canary takes the default lock and is refused.
    let out = std::process::Command::new(crate::fleet::BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "lock",
            "acquire",
            "-m",
            "freeze for the migration",
        ])
        .env("USER", "bob")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    ok(&config, &["deploy", "dev", "--version", "v2"]);
    // Every balancer change is journaled before it is made: none was.
    let journal = std::fs::read_to_string(fleet.dir.path().join("state/journal.ndjson")).unwrap();
    assert!(journal.contains("\"begin\""), "{journal}");
    assert!(
        !journal.contains("\"intent\""),
        "lb_takeout = false touched the balancer: {journal}"
    );
    assert_eq!(fleet.deploys(0), ["v2"]);
    assert_eq!(fleet.versions()[0], "v2");
    let (out, _) = run(&config, &["deploy", "canary", "--version", "v2", "-m", "x"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("freeze for the migration"));
    assert!(fleet.deploys(1).is_empty());
    ok(&config, &["lock", "release", "--force"]);
    // A manual lock of our own: a deploy goes ahead under it, and says so.
    ok(&config, &["lock", "acquire", "-m", "mine"]);
    let (out, _) = run(&config, &["deploy", "canary", "--version", "v2", "-m", "x"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is yours"));
    ok(&config, &["lock", "release"]);

    // require_message: exit 2, nothing touched.
    let before = fleet.deploy_counts();
    let (out, _) = run(&config, &["deploy", "canary", "--version", "v3"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--message"));
    assert_eq!(fleet.deploy_counts(), before);

    // rollback with no previous: exit 2.
    let (out, _) = run(&config, &["rollback", "dev"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no previous version"),
        "{}",
        text(&out)
    );
    assert_eq!(fleet.deploy_counts(), before);
}

#[test]
fn a_manual_lock_held_by_someone_else_refuses_a_deploy() {
    let fleet = Fleet::builder(1).start();
    let config = fleet.config(None, "");
    // Someone else's manual lock, written as another machine would have.
    let out = std::process::Command::new(crate::fleet::BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "lock",
            "acquire",
            "-m",
            "db migration",
        ])
        .env("USER", "bob")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (out, took) = run(&config, &["deploy", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(took < Duration::from_secs(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bob@") && err.contains("db migration"),
        "{err}"
    );
    assert!(fleet.deploys(0).is_empty());
    // Not ours: release needs --force.
    let (out, _) = run(&config, &["lock", "release"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    ok(&config, &["lock", "release", "--force"]);
    ok(&config, &["deploy", "--version", "v2"]);
    assert_eq!(fleet.deploys(0), ["v2"]);
}

#[test]
fn lifecycle_with_the_etcd_store_over_tls() {
    let etcd = changeover_testkit::etcd::Etcd::builder().tls().start();
    let tls = etcd.tls_files().expect("tls");
    let store = format!(
        "[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        etcd.endpoint(),
        tls.ca_file.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let fleet = Fleet::builder(10).start();
    lifecycle(&store, &fleet);
    // The state is in etcd under the documented layout, not in state_dir.
    let keys = etcd.etcdctl(&["get", "--prefix", "--keys-only", "/changeover/testapp/"]);
    for key in ["pointers/production", "units/web-1", "history/"] {
        assert!(
            keys.contains(&format!("/changeover/testapp/{key}")),
            "{key} missing in etcd: {keys}"
        );
    }
    assert!(!fleet.dir.path().join("state/pointers").exists());
}

/// Every file under `dir` with its length and modification time.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), m.len(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn read_only_commands_write_nothing() {
    let fleet = Fleet::builder(2).start();
    let config = fleet.config(None, "[targets.canary]\nhosts = [\"web-1\"]\n");
    let state = fleet.dir.path().join("state");
    let read_only: [&[&str]; 7] = [
        &["check"],
        &["check", "canary"],
        &["plan", "--version", "v2"],
        &["status"],
        &["status", "canary", "--json"],
        &["history"],
        &["lock", "status"],
    ];
    for args in read_only {
        ok(&config, args);
    }
    assert!(
        !state.exists(),
        "a read-only command created {}: {:?}",
        state.display(),
        snapshot(&state)
    );
    ok(&config, &["deploy", "--version", "v2"]);
    let before = snapshot(&state);
    assert!(!before.is_empty());
    std::thread::sleep(Duration::from_millis(20));
    for args in read_only {
        ok(&config, args);
    }
    assert_eq!(
        snapshot(&state),
        before,
        "a read-only command changed the state"
    );
}

#[test]
fn a_deploy_that_loses_its_etcd_lock_halts() {
    let etcd = changeover_testkit::etcd::Etcd::builder().start();
    let fleet = Fleet::builder(3).start();
    let config = slow_config(
        &fleet,
        &format!(
            "\n[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nlock_ttl = \"3s\"\n",
            etcd.endpoint()
        ),
    );
    let first = {
        let config = config.clone();
        std::thread::spawn(move || changeover(&config, &["deploy", "--version", "v2"]))
    };
    wait_for_lock(&config);
    // Someone takes the lock away (its lease is revoked).
    let out = std::process::Command::new(crate::fleet::BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "lock",
            "release",
            "--force",
        ])
        .env("USER", "bob")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = first.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lost the deploy lock"), "{err}");
    // It halted before the end: not every host got v2, and everything is back in.
    assert!(fleet.versions().iter().any(|v| v == "v1"), "{err}");
    for (name, _) in &fleet.hosts {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(5));
    }
}
