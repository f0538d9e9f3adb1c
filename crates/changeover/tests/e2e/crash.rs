//! Crash safety: kill -9 a real rollout anywhere, then `changeover recover`.

use super::text;
use crate::fleet::{changeover, Fleet, BIN};
use changeover_testkit::load::{LoadGen, LoadOptions};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// xorshift64*: a seeded, printed, reproducible sequence of kill points.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn from_env() -> (Rng, u64) {
        let seed = std::env::var("CHANGEOVER_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        (Rng(seed.max(1)), seed)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

pub(crate) fn trials() -> usize {
    std::env::var("CHANGEOVER_FAULT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// The lock, read back through the CLI.
fn lock_held(config: &Path) -> bool {
    let out = changeover(config, &["lock", "status", "--json"]);
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    let doc: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    doc["locks"][0]["held"] == true
}

/// Every unit in rotation with the state and weight it had before.
fn assert_all_back(fleet: &Fleet, weights: &[u32], what: &str) {
    for (i, (name, _)) in fleet.hosts.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st = fleet
                .haproxy
                .servers_state()
                .into_iter()
                .find(|s| &s.name == name)
                .unwrap();
            let row = fleet.haproxy.server(name);
            if st.admin_state == 0 && st.uweight == weights[i] && row.status == "UP" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {name} is {} with admin state {:#x} and weight {} (expected UP, 0, {})",
                row.status,
                st.admin_state,
                st.uweight,
                weights[i]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for v in fleet.versions() {
        assert!(v == "v1" || v == "v2", "{what}: a unit runs {v:?}");
    }
}

#[test]
fn kill_9_anywhere_then_recover_puts_everything_back() {
    let fleet = Fleet::builder(6).start();
    let config = fleet.config(None, "[strategy]\nbatch = 2\n");
    // Killed runs' idle SSH masters live at most this long.
    let text_cfg = std::fs::read_to_string(&config).unwrap().replace(
        "connect_timeout = \"5s\"\n",
        "connect_timeout = \"5s\"\ncontrol_persist = \"5s\"\n",
    );
    std::fs::write(&config, text_cfg).unwrap();
    // Weights an operator set by hand: they must come back exactly.
    let weights: Vec<u32> = (0..6).map(|i| 10 + i as u32).collect();
    for (i, (name, _)) in fleet.hosts.iter().enumerate() {
        fleet
            .haproxy
            .command(&format!("set server app/{name} weight {}", weights[i]));
    }
    let (mut rng, seed) = Rng::from_env();
    let n = trials();
    eprintln!("kill -9 trials: {n}, seed {seed} (CHANGEOVER_FAULT_SEED={seed} replays them)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut opts = LoadOptions::new(fleet.frontend());
    opts.rps = 50;
    opts.new_connection_per_request = true;
    opts.request_timeout = Duration::from_secs(5);
    opts.max_duration = Duration::from_secs(600);
    opts.max_requests = 30_000;
    let load = rt.block_on(async { LoadGen::start(opts) });
    let mut killed_mid_way = 0;
    for t in 0..n {
        let version = if t % 2 == 0 { "v2" } else { "v1" };
        // A rollout of all 6 (3 waves) takes about 3 s once it has begun.
        let (what, finished) = kill_trial(
            &config,
            &fleet.dir.path().join("state"),
            &mut rng,
            Duration::from_millis(3500),
            &format!("trial {t} (seed {seed}, {version})"),
            version,
        );
        let rec = changeover(&config, &["recover"]);
        assert_eq!(
            rec.status.code(),
            Some(0),
            "{what}: recover\n{}",
            text(&rec)
        );
        let said = String::from_utf8_lossy(&rec.stdout).to_string();
        if !said.contains("nothing to recover") {
            killed_mid_way += 1;
        }
        assert!(
            !finished || said.contains("nothing to recover"),
            "{what}: finished, yet recover found work:\n{said}"
        );
        eprintln!(
            "{what}: {}",
            said.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        // A second run finds nothing.
        let again = changeover(&config, &["recover"]);
        assert_eq!(
            again.status.code(),
            Some(0),
            "{what}: second recover\n{}",
            text(&again)
        );
        assert!(
            String::from_utf8_lossy(&again.stdout).contains("nothing to recover"),
            "{what}\n{}",
            text(&again)
        );
        assert!(!lock_held(&config), "{what}: the lock is still held");
        assert_all_back(&fleet, &weights, &what);
    }
    // And a new deploy goes through.
    let out = changeover(&config, &["deploy", "--version", "v3"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "deploy after the trials (seed {seed})\n{}",
        text(&out)
    );
    assert_eq!(fleet.versions(), vec!["v3".to_string(); 6]);
    // Nothing lingers: every killed run's ssh masters are gone (stopped by
    // the next run, or by their persist bound, 5 s here), a bounded time
    // later.
    let ssh_config = fleet.ssh.ssh_config_path().display().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alive = ssh_processes_using(&ssh_config);
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ssh processes of killed runs still alive: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = rt.block_on(load.stop());
    eprintln!(
        "{n} trials, {killed_mid_way} killed mid-rollout; load: {} requests, {} failed",
        report.requests, report.failures
    );
    assert!(
        killed_mid_way >= n / 4,
        "only {killed_mid_way} of {n} trials killed a rollout mid-way (seed {seed})"
    );
    assert_eq!(
        report.failures, 0,
        "requests failed through the kills (seed {seed}): {report:?}"
    );
}

#[test]
fn deploy_refuses_while_an_unfinished_deploy_exists_and_check_says_so() {
    let fleet = Fleet::builder(2).start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let mut child = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "deploy",
            "--version",
            "v2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the first unit is out of rotation.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fleet.haproxy.show_stat().iter().any(|r| r.status != "UP") {
        assert!(
            Instant::now() < deadline,
            "the deploy never took a unit out"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let out = changeover(&config, &["deploy", "--version", "v3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not finish") && err.contains("changeover recover"),
        "{err}"
    );
    let out = changeover(&config, &["check"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("changeover recover"));
    let out = changeover(&config, &["status", "--json"]);
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(
        doc["unfinished"].as_array().map(|a| a.len()),
        Some(1),
        "{doc}"
    );

    let out = changeover(&config, &["recover", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (name, _) in &fleet.hosts {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(15));
    }
    let out = changeover(&config, &["history", "--json"]);
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(doc["entries"][0]["command"], "recover", "{doc}");
    let out = changeover(&config, &["deploy", "--version", "v3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.versions(), vec!["v3".to_string(); 2]);
}

/// Start a deploy and SIGKILL it once `n` units are out of rotation.
fn kill_when_out(fleet: &Fleet, config: &Path, version: &str, n: usize) {
    let mut child = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "deploy",
            "--version",
            version,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet
        .haproxy
        .show_stat()
        .iter()
        .filter(|r| r.status != "UP")
        .count()
        < n
    {
        assert!(
            Instant::now() < deadline,
            "the deploy never took {n} unit(s) out"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the deploy ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn recover_from_another_machine_with_the_etcd_journal() {
    let etcd = changeover_testkit::etcd::Etcd::builder().start();
    let fleet = Fleet::builder(3).start();
    let store = format!(
        "[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nlock_ttl = \"3s\"\n",
        etcd.endpoint()
    );
    let config = fleet.config(None, &format!("[strategy]\nbatch = 1\n{store}"));
    kill_when_out(&fleet, &config, "v2", 1);
    // Nothing of the journal is on this machine: it is in etcd.
    assert!(!fleet.dir.path().join("state/journal.ndjson").exists());
    let keys = etcd.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/changeover/testapp/journal/",
    ]);
    assert!(keys.contains("/changeover/testapp/journal/"), "{keys}");
    // "Another machine": the same config in another directory (its own
    // state_dir), nothing shared but etcd.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().join("changeover.toml");
    std::fs::copy(&config, &other).unwrap();
    let t = Instant::now();
    let out = changeover(&other, &["recover"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "recover took {:?}",
        t.elapsed()
    );
    for (name, _) in &fleet.hosts {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(15));
    }
    let keys = etcd.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/changeover/testapp/journal/",
    ]);
    assert!(
        keys.trim().is_empty(),
        "the recovered journal is still there: {keys}"
    );
    let out = changeover(&config, &["recover"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to recover"),
        "{}",
        text(&out)
    );
    let out = changeover(&config, &["deploy", "--version", "v3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn recover_leaves_an_unhealthy_unit_out_and_names_it() {
    let fleet = Fleet::builder(3).start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    kill_when_out(&fleet, &config, "v2", 1);
    let out_unit = fleet
        .haproxy
        .show_stat()
        .into_iter()
        .find(|r| r.status != "UP")
        .map(|r| r.name)
        .unwrap();
    let i = fleet
        .hosts
        .iter()
        .position(|(n, _)| *n == out_unit)
        .unwrap();
    for v in ["v1", "v2"] {
        std::fs::write(fleet.app_dir(i).join(format!("unhealthy-{v}")), "").unwrap();
    }
    let out = changeover(&config, &["recover", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(
        doc["deploys"][0]["left_out"][0]["unit"],
        out_unit.as_str(),
        "{doc}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        text(&out)
    );
    assert_ne!(
        fleet.haproxy.server(&out_unit).status,
        "UP",
        "an unhealthy unit was put back"
    );
    for (name, _) in fleet.hosts.iter().filter(|(n, _)| *n != out_unit) {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(15));
    }
    assert!(!lock_held(&config));
    // Fixed, a forced deploy puts it back.
    for v in ["v1", "v2"] {
        std::fs::remove_file(fleet.app_dir(i).join(format!("unhealthy-{v}"))).unwrap();
    }
    let out = changeover(
        &config,
        &["deploy", "--version", "v2", "--force", &out_unit],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    fleet
        .haproxy
        .wait_for_status(&out_unit, "UP", Duration::from_secs(15));
}

#[test]
fn recover_stops_when_the_config_no_longer_names_the_journals_balancer() {
    let fleet = Fleet::builder(2).start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    kill_when_out(&fleet, &config, "v2", 1);
    let original = std::fs::read_to_string(&config).unwrap();
    // The balancer table is gone (or points elsewhere) in today's config.
    let changed = original.replace(
        &fleet.haproxy.socket_path().display().to_string(),
        "/run/elsewhere/admin.sock",
    );
    std::fs::write(&config, changed).unwrap();
    let out = changeover(&config, &["recover"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&fleet.haproxy.socket_path().display().to_string())
            && err.contains("no longer has"),
        "{err}"
    );
    assert!(
        fleet.haproxy.show_stat().iter().any(|r| r.status != "UP"),
        "recover changed something"
    );
    std::fs::write(&config, original).unwrap();
    let out = changeover(&config, &["recover"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (name, _) in &fleet.hosts {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(15));
    }
}

/// Killed in the middle of a step: the step runs on to its end on the host
/// (detached from the SSH session), and `recover` waits for it and reads
/// its result before probing the unit, so the unit is never put back while
/// the step is still restarting it.
#[test]
fn recover_waits_for_a_step_the_killed_deploy_left_running() {
    let fleet = Fleet::builder(2).boot_time("300ms").start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let slow = std::fs::read_to_string(&config).unwrap().replacen(
        "run = \"DEPLOY_COUNT=1",
        "run = \"sleep 3; DEPLOY_COUNT=1",
        1,
    );
    std::fs::write(&config, slow).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "deploy",
            "--version",
            "v2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.haproxy.server("web-1").status != "MAINT" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(800)); // inside `sleep 3`
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        fleet.deploys(0).is_empty(),
        "the step had not reached the restart yet"
    );
    let t = Instant::now();
    let rec = changeover(&config, &["recover"]);
    assert_eq!(rec.status.code(), Some(0), "{}", text(&rec));
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "recover did not wait for the step: {:?}",
        t.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&rec.stderr).contains("had finished: exit 0"),
        "{}",
        text(&rec)
    );
    // The step ran to its end after changeover died: web-1 is on v2, and back.
    assert_eq!(fleet.deploys(0), ["v2"]);
    fleet
        .haproxy
        .wait_for_status("web-1", "UP", Duration::from_secs(15));
    assert_eq!(fleet.versions()[0], "v2");
}

/// `ssh` client processes (masters included) whose command line names
/// `config` (every SSH connection changeover makes here uses it).
fn ssh_processes_using(config: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ssh = args
            .first()
            .is_some_and(|a| a == "ssh" || a.ends_with("/ssh"));
        if is_ssh && args.iter().any(|a| a.contains(config)) {
            out.push(format!("{pid}: {}", args.join(" ")));
        }
    }
    out
}

/// One kill point: `deploy --version V --redeploy`, SIGKILLed after a
/// seeded delay of up to `window`, counted from its `begin` record (so a
/// slow preflight on a loaded machine does not push every kill point past
/// the end); one trial in eight is killed in preflight instead. A deploy
/// that ended on its own must have succeeded (its stderr is in the
/// message). Returns the trial's label and whether it had ended.
pub(crate) fn kill_trial(
    config: &Path,
    state_dir: &Path,
    rng: &mut Rng,
    window: Duration,
    label: &str,
    version: &str,
) -> (String, bool) {
    let in_preflight = rng.below(8) == 0;
    let delay = Duration::from_millis(if in_preflight {
        rng.below(500)
    } else {
        rng.below(window.as_millis() as u64)
    });
    let journal = state_dir.join("journal.ndjson");
    let before = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
    let log = state_dir.with_file_name(format!("{}.log", label.replace(' ', "_")));
    let mut child = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "deploy",
            "--version",
            version,
            "--redeploy",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    if !in_preflight {
        wait_for_begin(&journal, before, &mut child);
    }
    std::thread::sleep(delay);
    let ended = child.try_wait().unwrap();
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let what = format!(
        "{label}, killed {delay:?} after {}",
        if in_preflight { "spawn" } else { "begin" }
    );
    if let Some(status) = ended {
        assert!(
            status.success(),
            "{what}: the deploy ended by itself with {status}:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    (what, ended.is_some())
}

/// Wait until the journal grew past `before` (the deploy wrote `begin`), or
/// the deploy ended, bounded.
pub(crate) fn wait_for_begin(journal: &Path, before: u64, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(journal).map(|m| m.len()).unwrap_or(0) <= before {
        if child.try_wait().unwrap().is_some() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
