//! The fault matrix: one injected fault per test, each ending with
//! invariant 4 checked (failed units out, everything else in, the lock
//! released, the summary accurate, the exit code).

use super::text;
use crate::fleet::{changeover, Fleet, BIN};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Invariant 4 after a run: `out` (unit names) are out of rotation and
/// named as failed in the summary; every other server is UP; the lock is
/// free; exit code `code`.
fn assert_invariant_4(fleet: &Fleet, config: &Path, out: &Output, code: i32, failed: &[&str]) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    let summary: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["event"] == "deploy_finished")
        .unwrap_or_else(|| panic!("no deploy_finished event (run with --json)\n{}", text(out)));
    for u in summary["units"].as_array().unwrap() {
        let name = u["unit"].as_str().unwrap();
        let is_failed = failed.contains(&name);
        assert_eq!(
            u["state"] == "failed",
            is_failed,
            "summary of {name}: {u}\n{}",
            text(out)
        );
        assert_eq!(
            u["in_rotation"] == false,
            is_failed,
            "summary of {name}: {u}"
        );
    }
    for (name, _) in &fleet.hosts {
        if failed.contains(&name.as_str()) {
            assert_ne!(
                fleet.haproxy.server(name).status,
                "UP",
                "failed {name} is in rotation"
            );
        } else {
            fleet
                .haproxy
                .wait_for_status(name, "UP", Duration::from_secs(15));
        }
    }
    let st = changeover(config, &["lock", "status", "--json"]);
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&st.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(
        doc["locks"][0]["held"], false,
        "the lock is still held: {doc}"
    );
}

/// Run a deploy in the background; `inject` runs once `when` holds.
fn deploy_with(
    fleet: &Fleet,
    config: &Path,
    args: &[&str],
    when: impl Fn(&Fleet) -> bool,
    inject: impl FnOnce(&Fleet),
) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).args(args).arg("--json");
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !when(fleet) {
        assert!(Instant::now() < deadline, "the fault's moment never came");
        std::thread::sleep(Duration::from_millis(10));
    }
    inject(fleet);
    child.wait_with_output().unwrap()
}

/// `deploy --version v2 --json` in the background, output piped.
fn spawn_deploy(config: &Path) -> std::process::Child {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["deploy", "--version", "v2", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait (bounded) until `name`'s HAProxy status is `status`.
fn wait_for(fleet: &Fleet, name: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(fleet, name) != status {
        assert!(Instant::now() < deadline, "{name} never became {status}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status_of(fleet: &Fleet, name: &str) -> String {
    fleet.haproxy.server(name).status
}

#[test]
fn haproxy_reloaded_mid_rollout_the_held_out_unit_is_taken_out_again() {
    let mut fleet = Fleet::builder(3).boot_time("1500ms").start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let child = spawn_deploy(&config);
    // web-1 in maint (its steps are running): reload HAProxy.
    wait_for(&fleet, "web-1", "MAINT");
    fleet.haproxy.reload();
    // Within a second it is out again, before its health check passed.
    let back_out = Instant::now() + Duration::from_secs(3);
    while status_of(&fleet, "web-1") != "MAINT" {
        assert!(
            Instant::now() < back_out,
            "web-1 was not taken out again after the reload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_invariant_4(&fleet, &config, &out, 0, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("\"event\":\"member_back\""),
        "{}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("again on its own"));
    assert_eq!(fleet.versions(), vec!["v2".to_string(); 3]);
}

#[test]
fn haproxy_socket_vanishes_mid_rollout_and_comes_back() {
    let fleet = Fleet::builder(3).boot_time("800ms").start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let sock = fleet.haproxy.socket_path().to_path_buf();
    let hidden = sock.with_extension("hidden");
    let out = deploy_with(
        &fleet,
        &config,
        &["deploy", "--version", "v2"],
        |f| status_of(f, "web-1") == "MAINT",
        |_| {
            std::fs::rename(&sock, &hidden).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            std::fs::rename(&hidden, &sock).unwrap();
        },
    );
    // Retried while it was gone: nothing failed.
    assert_invariant_4(&fleet, &config, &out, 0, &[]);
    assert_eq!(fleet.versions(), vec!["v2".to_string(); 3]);
}

#[test]
fn haproxy_socket_gone_for_good_fails_the_unit_and_halts() {
    let fleet = Fleet::builder(3).boot_time("300ms").start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let sock = fleet.haproxy.socket_path().to_path_buf();
    let hidden = sock.with_extension("hidden");
    let out = deploy_with(
        &fleet,
        &config,
        &["deploy", "--version", "v2"],
        |f| status_of(f, "web-2") == "MAINT",
        |_| std::fs::rename(&sock, &hidden).unwrap(),
    );
    std::fs::rename(&hidden, &sock).unwrap();
    // web-2 could not be put back: failed, out; web-3 never started.
    assert_invariant_4(&fleet, &config, &out, 1, &["web-2"]);
    assert_eq!(
        fleet.deploys(2),
        Vec::<String>::new(),
        "a new unit started after the failure"
    );
}

#[test]
fn balancer_member_removed_mid_rollout_fails_that_unit() {
    let fleet = Fleet::builder(3).boot_time("300ms").start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\nmax_failures = 1\n");
    let out = deploy_with(
        &fleet,
        &config,
        &["deploy", "--version", "v2"],
        |f| status_of(f, "web-1") == "MAINT",
        |f| {
            // An operator deletes web-3 from the backend at runtime.
            f.haproxy.command("set server app/web-3 state maint");
            let answer = f.haproxy.command("del server app/web-3");
            assert!(
                answer.trim().is_empty() || answer.contains("deleted"),
                "del server: {answer}"
            );
        },
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("web-3") && err.contains("failed"), "{err}");
    for name in ["web-1", "web-2"] {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(15));
    }
    assert!(
        fleet.deploys(2).is_empty(),
        "web-3's step ran without its member"
    );
}

#[test]
fn ctrl_c_twice_stops_at_once_and_recover_puts_back() {
    let fleet = Fleet::builder(3).boot_time("1s").start();
    let config = fleet.config(None, "[strategy]\nbatch = 2\n");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["deploy", "--version", "v2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&fleet, "web-1", "MAINT");
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stopped at once"),
        "{}",
        text(&out)
    );
    // Units were left where they were; the journal has no end.
    assert_ne!(status_of(&fleet, "web-1"), "UP");
    let dep = changeover(&config, &["deploy", "--version", "v3"]);
    assert_eq!(dep.status.code(), Some(3), "{}", text(&dep));
    let rec = changeover(&config, &["recover"]);
    assert_eq!(rec.status.code(), Some(0), "{}", text(&rec));
    for (name, _) in &fleet.hosts {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(15));
    }
}

#[test]
fn etcd_killed_mid_deploy_loses_the_lock_and_halts() {
    let mut etcd = changeover_testkit::etcd::Etcd::builder().start();
    let fleet = Fleet::builder(3).boot_time("500ms").start();
    let config = fleet.config(
        None,
        &format!(
            "[strategy]\nbatch = 1\npause = \"1s\"\n[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nlock_ttl = \"3s\"\ntimeout = \"1s\"\n",
            etcd.endpoint()
        ),
    );
    let child = spawn_deploy(&config);
    wait_for(&fleet, "web-1", "MAINT");
    etcd.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    // The journal is in etcd too: web-1's put-back cannot be journaled, so
    // it is not made (invariant 5) and web-1 stays out; nothing new starts.
    assert!(
        err.contains("lost the deploy lock") || err.contains("cannot use the journal"),
        "{err}"
    );
    assert_ne!(status_of(&fleet, "web-1"), "UP");
    for name in ["web-2", "web-3"] {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(15));
    }
    assert!(
        fleet.deploys(1).is_empty() && fleet.deploys(2).is_empty(),
        "a unit started after etcd went"
    );
    // etcd back: the unfinished deploy is recovered from its journal there.
    etcd.restart();
    let rec = changeover(&config, &["recover"]);
    assert_eq!(rec.status.code(), Some(0), "{}", text(&rec));
    for (name, _) in &fleet.hosts {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(15));
    }
}

/// The journal's disk is full: writes fail with EFBIG past a file-size
/// limit (RLIMIT_FSIZE, SIGXFSZ ignored) — the same error path as ENOSPC,
/// without needing a mount.
#[test]
fn journal_disk_full_mid_rollout_halts_with_every_written_unit_back() {
    let fleet = Fleet::builder(3).boot_time("300ms").start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let state = fleet.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // Room for the begin record and a few intents, not for a whole rollout.
    let journal = state.join("journal.ndjson");
    std::fs::write(&journal, "").unwrap();
    let limit: u64 = 2500;
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&config)
        .args(["deploy", "--version", "v2", "--json"]);
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("journal"), "{err}");
    // Whatever was journaled can be recovered; nothing is left half-way
    // without a record.
    let rec = changeover(&config, &["recover"]);
    assert!(rec.status.code() == Some(0), "{}", text(&rec));
    for (name, _) in &fleet.hosts {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(15));
    }
    assert!(std::fs::metadata(&journal).unwrap().len() <= limit + 4096);
}

/// Health flaps: the check passes, fails, passes, fails… (a counter on the
/// host decides, so it is the same however loaded the machine is), so
/// `healthy_threshold = 2` passes in a row never happen; the unit fails at
/// the deadline and stays out; nothing new starts.
#[test]
fn health_flapping_never_counts_as_healthy() {
    let fleet = Fleet::builder(3).boot_time("300ms").start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let counter = fleet.dir.path().join("flap");
    let flapping = format!(
        "command = 'n=$(cat {c}-{{host}} 2>/dev/null || echo 0); echo $((n+1)) > {c}-{{host}}; [ $((n % 2)) -eq 0 ]'",
        c = counter.display()
    );
    let text_cfg: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("http = ") {
                flapping.clone()
            } else {
                l.to_string()
            }
        })
        .map(|l| {
            if l.starts_with("deadline = ") {
                "deadline = \"3s\"".to_string()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text_cfg).unwrap();
    let out = changeover(&config, &["deploy", "--version", "v2", "--json"]);
    assert_invariant_4(&fleet, &config, &out, 1, &["web-1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed in health"),
        "{}",
        text(&out)
    );
    assert!(
        fleet.deploys(1).is_empty(),
        "a new unit started after the failure"
    );
    // It really flapped: passes and failures both happened, many times.
    let n: u64 = std::fs::read_to_string(format!("{}-web-1", counter.display()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(n >= 4, "only {n} probes: it never flapped");
}

/// A host's sshd is gone before its turn (it was there at preflight): that
/// unit fails in its steps, stays out, nothing new starts after it.
#[test]
fn sshd_gone_before_its_turn_fails_that_unit() {
    let mut fleet = Fleet::builder(3).boot_time("300ms").start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let child = spawn_deploy(&config);
    wait_for(&fleet, "web-1", "MAINT");
    // Its sshd and every session it holds go away.
    fleet.ssh.drop_host(1);
    let out = child.wait_with_output().unwrap();
    assert_invariant_4(&fleet, &config, &out, 1, &["web-2"]);
    assert!(
        fleet.deploys(2).is_empty(),
        "web-3 started after web-2 failed"
    );
}

/// The SSH connection drops in the middle of a step (the host's sshd and
/// its sessions are killed while the step sleeps): that unit fails in its
/// steps and stays out; the others are untouched and in.
#[test]
fn ssh_connection_dropped_mid_step_fails_that_unit() {
    let mut fleet = Fleet::builder(3).boot_time("300ms").start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let slow = std::fs::read_to_string(&config).unwrap().replacen(
        "run = \"DEPLOY_COUNT=1",
        "run = \"sleep 3; DEPLOY_COUNT=1",
        1,
    );
    std::fs::write(&config, slow).unwrap();
    let child = spawn_deploy(&config);
    wait_for(&fleet, "web-1", "MAINT");
    std::thread::sleep(Duration::from_millis(500));
    fleet.ssh.drop_host(0);
    let out = child.wait_with_output().unwrap();
    assert_invariant_4(&fleet, &config, &out, 1, &["web-1"]);
    assert!(fleet.deploys(1).is_empty() && fleet.deploys(2).is_empty());
}

/// A step hangs past its timeout: it is killed on the host (its whole
/// process group), the unit fails in its steps and stays out, nothing new
/// starts.
#[test]
fn step_hanging_past_its_timeout_is_killed_on_the_host() {
    let fleet = Fleet::builder(3).boot_time("300ms").start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let marker = fleet.dir.path().join("hung-step-finished");
    let hang = std::fs::read_to_string(&config)
        .unwrap()
        .replacen(
            "run = \"DEPLOY_COUNT=1",
            &format!(
                "run = \"sleep 300 && touch {} && DEPLOY_COUNT=1",
                marker.display()
            ),
            1,
        )
        .replace("timeout = \"30s\"", "timeout = \"2s\"");
    std::fs::write(&config, hang).unwrap();
    let t = Instant::now();
    let out = changeover(&config, &["deploy", "--version", "v2", "--json"]);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert_invariant_4(&fleet, &config, &out, 1, &["web-1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not finish within"), "{err}");
    // Nothing of the step is left running on the host.
    std::thread::sleep(Duration::from_secs(1));
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker.display().to_string()) && !c.contains("nextest"))
        .collect();
    assert!(left.is_empty(), "the hung step still runs: {left:?}");
    assert!(!marker.exists());
    assert!(fleet.deploys(1).is_empty());
}
