//! Around the rollout, on the real fleet (sshd per host + HAProxy): hooks
//! with their `CHANGEOVER_*` environment, a failing `pre_deploy` /
//! `pre_wave`, `on_failure`; the artifact check; git refs as versions.

use super::text;
use crate::fleet::{changeover, Fleet};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Every hook writes its environment to `hooks/<hook>[-<wave>].env`.
const RECORDING_HOOKS: &str = r#"
[hooks]
pre_deploy = "mkdir -p hooks && env | grep ^CHANGEOVER_ | sort > hooks/$CHANGEOVER_HOOK.env"
post_deploy = "env | grep ^CHANGEOVER_ | sort > hooks/$CHANGEOVER_HOOK.env"
on_failure = "env | grep ^CHANGEOVER_ | sort > hooks/$CHANGEOVER_HOOK.env; echo x >> hooks/on_failure.count"
pre_wave = "env | grep ^CHANGEOVER_ | sort > hooks/$CHANGEOVER_HOOK-$CHANGEOVER_WAVE.env"
post_wave = "env | grep ^CHANGEOVER_ | sort > hooks/$CHANGEOVER_HOOK-$CHANGEOVER_WAVE.env"

[strategy]
batch = 2
"#;

fn env_of(dir: &Path, name: &str) -> BTreeMap<String, String> {
    let path = dir.join("hooks").join(format!("{name}.env"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("hook {name} did not run ({}): {e}", path.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn hooks_run_around_the_deploy_and_each_wave_with_the_run_in_their_environment() {
    let fleet = Fleet::builder(3).start();
    let config = fleet.config(None, RECORDING_HOOKS);
    let dir = fleet.dir.path();
    let out = changeover(
        &config,
        &[
            "deploy",
            "--version",
            "v2",
            "-m",
            "ship it; rm -rf /",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pre = env_of(dir, "pre_deploy");
    assert_eq!(pre["CHANGEOVER_APP"], "testapp");
    assert_eq!(pre["CHANGEOVER_COMMAND"], "deploy");
    assert_eq!(pre["CHANGEOVER_VERSION"], "v2");
    assert_eq!(pre["CHANGEOVER_PREVIOUS_VERSION"], "");
    assert_eq!(pre["CHANGEOVER_TARGET"], "");
    assert_eq!(
        pre["CHANGEOVER_MESSAGE"], "ship it; rm -rf /",
        "passed as data, not run"
    );
    assert_eq!(pre["CHANGEOVER_UNITS"], "web-1,web-2,web-3");
    assert!(pre["CHANGEOVER_HOLDER"].contains('@'), "{pre:?}");
    assert!(!pre["CHANGEOVER_DEPLOY_ID"].is_empty());
    let post = env_of(dir, "post_deploy");
    assert_eq!(post["CHANGEOVER_OUTCOME"], "success");
    assert_eq!(post["CHANGEOVER_DEPLOY_ID"], pre["CHANGEOVER_DEPLOY_ID"]);
    // Two waves of batch 2: web-1,web-2 then web-3.
    assert_eq!(env_of(dir, "pre_wave-1")["CHANGEOVER_UNITS"], "web-1,web-2");
    assert_eq!(env_of(dir, "pre_wave-2")["CHANGEOVER_UNITS"], "web-3");
    assert_eq!(env_of(dir, "post_wave-2")["CHANGEOVER_OUTCOME"], "success");
    assert!(
        !dir.join("hooks/on_failure.env").exists(),
        "no failure, no on_failure"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("\"event\":\"hook_finished\"").count(),
        6,
        "pre/post deploy + 2 x pre/post wave: {stdout}"
    );

    // A second deploy sees v2 as the previous version.
    let out = changeover(&config, &["deploy", "--version", "v3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env_of(dir, "pre_deploy")["CHANGEOVER_PREVIOUS_VERSION"],
        "v2"
    );
}

#[test]
fn on_failure_runs_once_on_a_failed_deploy() {
    let fleet = Fleet::builder(3).start();
    let config = fleet.config(None, RECORDING_HOOKS);
    std::fs::write(fleet.app_dir(1).join("fail-deploy-v2"), "").unwrap();
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let dir = fleet.dir.path();
    assert_eq!(env_of(dir, "on_failure")["CHANGEOVER_OUTCOME"], "failed");
    assert_eq!(env_of(dir, "post_deploy")["CHANGEOVER_OUTCOME"], "failed");
    assert_eq!(
        std::fs::read_to_string(dir.join("hooks/on_failure.count")).unwrap(),
        "x\n",
        "on_failure ran exactly once"
    );
    assert_eq!(env_of(dir, "post_wave-1")["CHANGEOVER_OUTCOME"], "failed");
}

#[test]
fn a_failing_pre_deploy_hook_changes_nothing() {
    let fleet = Fleet::builder(3).start();
    let config = fleet.config(
        None,
        "[hooks]\npre_deploy = \"echo 'change freeze until friday' >&2; exit 7\"\n",
    );
    let before: Vec<String> = (1..=3)
        .map(|i| fleet.haproxy.server(&format!("web-{i}")).status)
        .collect();
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the pre_deploy hook failed"), "{err}");
    assert!(err.contains("exited with status 7"), "{err}");
    assert!(err.contains("change freeze until friday"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(fleet.deploy_counts(), vec![0, 0, 0]);
    let after: Vec<String> = (1..=3)
        .map(|i| fleet.haproxy.server(&format!("web-{i}")).status)
        .collect();
    assert_eq!(before, after, "the balancer was not touched");
    // No pointer moved, nothing in progress, no crashed deploy left behind.
    let out = changeover(&config, &["status", "--json"]);
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(doc["pointer"]["current"], serde_json::Value::Null);
    assert_eq!(doc["in_progress"], serde_json::Value::Null);
    assert_eq!(doc["unfinished"], serde_json::json!([]));
    assert_eq!(
        doc["lock"],
        serde_json::Value::Null,
        "the lock was released"
    );
}

#[test]
fn a_failing_pre_wave_hook_stops_before_the_wave() {
    let fleet = Fleet::builder(3).start();
    let config = fleet.config(
        None,
        "[strategy]\nbatch = 2\n\n[hooks]\npre_wave = \"test $CHANGEOVER_WAVE = 1\"\n",
    );
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the pre_wave hook failed before wave 2"),
        "{err}"
    );
    assert_eq!(
        fleet.deploy_counts(),
        vec![1, 1, 0],
        "wave 2 was not touched"
    );
    assert!(
        fleet.haproxy.server("web-3").status.starts_with("UP"),
        "web-3 stayed in rotation"
    );
}

#[test]
fn a_missing_artifact_is_a_no_go() {
    let fleet = Fleet::builder(2).start();
    let config = fleet.config(
        None,
        "[artifact]\ncheck = \"test -f builds/shop-{version}.tar.gz || { echo no build for {version} >&2; exit 1; }\"\ntimeout = \"5s\"\n",
    );
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the artifact check"), "{err}");
    assert!(err.contains("no build for v2"), "{err}");
    assert_eq!(fleet.deploy_counts(), vec![0, 0]);

    let builds = fleet.dir.path().join("builds");
    std::fs::create_dir_all(&builds).unwrap();
    std::fs::write(builds.join("shop-v2.tar.gz"), "").unwrap();
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.versions(), vec!["v2", "v2"]);
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git is installed (apt-get install git)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn git_refs_resolve_to_shas_remote_first_then_local() {
    let fleet = Fleet::builder(1).start();
    let root = fleet.dir.path();
    // A remote with main and a tag; the config's repository clones it and
    // has a local-only branch.
    let remote = root.join("remote.git");
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(root, &["init", "-q", "--bare", remote.to_str().unwrap()]);
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["commit", "-q", "--allow-empty", "-m", "one"]);
    let one = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["tag", "-a", "v1.0", "-m", "release"]);
    git(&work, &["commit", "-q", "--allow-empty", "-m", "two"]);
    let two = git(&work, &["rev-parse", "HEAD"]);
    git(
        &work,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    git(&work, &["push", "-q", "origin", "main", "v1.0"]);
    // Local main moves on without pushing: the remote's main wins.
    git(&work, &["commit", "-q", "--allow-empty", "-m", "three"]);
    let three = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["branch", "local-only"]);

    let config = fleet.config(None, "[version]\ngit = \"work\"\n");
    let planned = |v: &str| {
        let out = changeover(&config, &["plan", "--version", v, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{v}: {}", text(&out));
        let doc: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        (
            doc["version"].as_str().unwrap().to_string(),
            doc["version_ref"].clone(),
        )
    };
    assert_eq!(
        planned("main"),
        (two.clone(), "main".into()),
        "the remote's main"
    );
    assert_eq!(
        planned("v1.0"),
        (one.clone(), "v1.0".into()),
        "the tag's commit"
    );
    assert_eq!(planned("local-only"), (three.clone(), "local-only".into()));
    assert_eq!(
        planned(&three[..8]),
        (three.clone(), three[..8].into()),
        "a short sha"
    );
    assert_eq!(planned(&one).0, one, "a full sha as it is");

    let out = changeover(&config, &["plan", "--version", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--version no-such-branch: no such git ref"),
        "{}",
        text(&out)
    );
    let out = changeover(&config, &["deploy", "--version", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(fleet.deploy_counts(), vec![0]);

    // A deploy records the sha and the ref typed.
    let out = changeover(&config, &["deploy", "--version", "v1.0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.versions(), vec![one.clone()]);
    let out = changeover(&config, &["history", "--json"]);
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(doc["entries"][0]["version"], one.as_str());
    assert_eq!(doc["entries"][0]["version_ref"], "v1.0");
}

#[test]
fn prepare_runs_on_every_unit_before_any_take_out_and_a_failure_changes_nothing() {
    let fleet = Fleet::builder(3).start();
    let apps = fleet.app_dir(0).parent().unwrap().to_path_buf();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    // The fleet's config has [deploy] already: add prepare to it.
    let toml = std::fs::read_to_string(&config).unwrap().replacen(
        "[deploy]\n",
        &format!(
            "[deploy]\nprepare = \"touch {a}/{{host}}/prepared-{{version}} && test ! -e {a}/{{host}}/fail-prepare\"\nprepare_parallel = 3\n",
            a = apps.display()
        ),
        1,
    );
    std::fs::write(&config, toml).unwrap();

    let out = changeover(&config, &["deploy", "--version", "v2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let prepared = events
        .iter()
        .position(|e| e["event"] == "prepared")
        .expect("a prepared event");
    let first_take_out = events
        .iter()
        .position(|e| e["event"] == "unit_phase" && e["phase"] == "take_out")
        .unwrap();
    assert!(prepared < first_take_out, "prepare before any take-out");
    assert_eq!(events[prepared]["units"], 3);
    for i in 0..3 {
        assert!(
            fleet.app_dir(i).join("prepared-v2").exists(),
            "web-{} prepared",
            i + 1
        );
    }
    assert_eq!(fleet.versions(), vec!["v2", "v2", "v2"]);

    // A prepare that fails on web-2: a no-go, nothing taken out anywhere.
    std::fs::write(fleet.app_dir(1).join("fail-prepare"), "").unwrap();
    let counts = fleet.deploy_counts();
    let out = changeover(&config, &["deploy", "--version", "v3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("web-2: prepare"), "{err}");
    assert!(err.contains("nothing was taken out"), "{err}");
    assert_eq!(fleet.deploy_counts(), counts, "no unit deployed");
    for i in 1..=3 {
        let row = fleet.haproxy.server(&format!("web-{i}"));
        assert!(
            row.status.starts_with("UP"),
            "web-{i} stayed in: {}",
            row.status
        );
    }
    assert_eq!(fleet.versions(), vec!["v2", "v2", "v2"]);

    // --force web-2: its unit is skipped, the others go.
    let out = changeover(&config, &["deploy", "--version", "v3", "--force", "web-2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.versions(), vec!["v3", "v2", "v3"]);

    // plan shows it.
    let out = changeover(&config, &["plan", "--version", "v4"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("prepare (before the rollout, on every unit, 3 at a time"),
        "{}",
        text(&out)
    );
}
