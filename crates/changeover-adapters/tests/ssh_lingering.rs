//! Nothing of a killed run lingers: its ssh masters exit on their own once
//! idle for `control_persist`, the next SshRemote removes its control
//! directory (stopping any master still in it), and a master that exited
//! while idle is replaced by the next command. REAL OpenSSH servers on
//! 127.0.1.x.
//!
//! Must run as root (the fleet's sshd log in as root).

use changeover_adapters::remote::ssh::{SshOptions, SshRemote};
use changeover_core::remote::Remote;
use changeover_core::unit::Host;
use changeover_testkit::sshd::{FleetHost, SshFleet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

fn host(fleet_host: &FleetHost) -> Host {
    Host {
        name: fleet_host.name.clone(),
        address: fleet_host.address.clone(),
        tags: Vec::new(),
        ssh_user: None,
        ssh_port: None,
        instance_id: None,
        instances: None,
    }
}

/// Every test keeps its control directories in a base of its own, so that
/// no other test's (or process's) SshRemote cleans up after its dead runs
/// before the test looks.
fn remote_for(config: &Path, persist: Duration, base: &Path) -> SshRemote {
    SshRemote::new(SshOptions {
        config_file: Some(config.to_path_buf()),
        connect_timeout: Duration::from_secs(5),
        control_persist: persist,
        control_base: Some(base.to_path_buf()),
        ..SshOptions::default()
    })
}

/// A short private directory under /tmp (socket paths must stay short).
fn private_base() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cob")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Live `ssh` processes whose command line names something inside `dir`:
/// the masters of the run that owns that control directory.
fn masters_in(dir: &Path) -> Vec<u32> {
    let needle = dir.to_str().unwrap();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ssh = args
            .first()
            .is_some_and(|a| a == "ssh" || a.ends_with("/ssh"));
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        if is_ssh && !zombie && args.iter().any(|a| a.contains(needle)) {
            pids.push(pid);
        }
    }
    pids
}

/// Poll `check` every 50 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// A changeover-like process: this same test binary, run again with only
// `helper_process` and CO_HOLD_CONFIG set. It connects to every host,
// writes its control directory to CO_HOLD_OUT and keeps every master busy
// with a command every 300 ms (for at most 2 minutes).

fn spawn_helper(fleet: &SshFleet, persist_secs: u64, base: &Path, out: &Path) -> Child {
    let addresses: Vec<&str> = fleet.hosts().iter().map(|h| h.address.as_str()).collect();
    Command::new(std::env::current_exe().unwrap())
        .args(["helper_process", "--exact", "--nocapture"])
        .env("CO_HOLD_CONFIG", fleet.ssh_config_path())
        .env("CO_HOLD_ADDRESSES", addresses.join(","))
        .env("CO_HOLD_PERSIST", persist_secs.to_string())
        .env("CO_HOLD_OUT", out)
        .env("CO_HOLD_BASE", base)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the helper process")
}

#[test]
// Not a check of its own: the body of the helper process the crash tests
// start (it returns at once unless CO_HOLD_CONFIG is set), so it runs, empty, in CI.
fn helper_process() {
    let Ok(config) = std::env::var("CO_HOLD_CONFIG") else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let hosts: Vec<Host> = var("CO_HOLD_ADDRESSES")
        .split(',')
        .map(|address| Host {
            name: address.to_string(),
            address: address.to_string(),
            tags: Vec::new(),
            ssh_user: None,
            ssh_port: None,
            instance_id: None,
            instances: None,
        })
        .collect();
    let persist = Duration::from_secs(var("CO_HOLD_PERSIST").parse().unwrap());
    let out = PathBuf::from(var("CO_HOLD_OUT"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let remote = remote_for(Path::new(&config), persist, Path::new(&var("CO_HOLD_BASE")));
        let refs: Vec<&Host> = hosts.iter().collect();
        for result in remote.connect_all(&refs).await {
            result.unwrap();
        }
        let dir = remote.control_dir().unwrap();
        std::fs::write(out.with_extension("tmp"), dir.to_str().unwrap()).unwrap();
        std::fs::rename(out.with_extension("tmp"), &out).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            for host in &hosts {
                let _ = remote.run(host, "true", LONG).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}

/// Start the helper and return it with its control directory, once its
/// three masters run.
fn helper_with_masters(fleet: &SshFleet, persist_secs: u64, base: &Path) -> (Child, PathBuf) {
    let out = base.join("control-dir");
    let mut helper = spawn_helper(fleet, persist_secs, base, &out);
    let started = eventually(Duration::from_secs(30), || out.exists());
    if !started {
        let _ = helper.kill();
        panic!("the helper did not connect within 30 s");
    }
    let dir = PathBuf::from(std::fs::read_to_string(&out).unwrap());
    assert!(dir.is_dir());
    let name = dir.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with(&format!("co-{}-", helper.id())),
        "the control directory names its owner: {name}"
    );
    let owner = std::fs::read_to_string(dir.join("owner")).unwrap();
    assert!(owner.starts_with(&format!("{} ", helper.id())), "{owner:?}");
    assert!(
        eventually(Duration::from_secs(10), || masters_in(&dir).len() == 3),
        "expected 3 masters, found {:?}",
        masters_in(&dir)
    );
    (helper, dir)
}

#[test]
fn a_killed_runs_masters_exit_within_the_persist_bound_and_the_next_run_removes_its_directory() {
    let fleet = SshFleet::start(3);
    let base = private_base();
    let persist = 2;
    let (mut helper, dir) = helper_with_masters(&fleet, persist, base.path());

    helper.kill().unwrap(); // SIGKILL: nothing of the helper's cleanup runs
    helper.wait().unwrap();
    let killed = Instant::now();
    let bound = Duration::from_secs(persist) + Duration::from_secs(10);
    assert!(
        eventually(bound, || masters_in(&dir).is_empty()),
        "masters of the killed run still alive {:?} after the kill: {:?}",
        killed.elapsed(),
        masters_in(&dir)
    );
    eprintln!(
        "the killed run's masters were gone {:?} after the kill",
        killed.elapsed()
    );
    assert!(dir.exists(), "nothing removed the dead run's directory yet");

    // The next run removes it; a live run's directory stays whatever a new
    // SshRemote does.
    let live = remote_for(
        fleet.ssh_config_path(),
        Duration::from_secs(60),
        base.path(),
    );
    assert!(!dir.exists(), "the dead run's control directory was left");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let h = host(&fleet.hosts()[0]);
    runtime.block_on(live.run(&h, "true", LONG)).unwrap();
    let live_dir = live.control_dir().unwrap();
    let _next = remote_for(
        fleet.ssh_config_path(),
        Duration::from_secs(60),
        base.path(),
    );
    assert!(
        live_dir.exists(),
        "a live run's control directory was removed"
    );
    let out = runtime.block_on(live.run(&h, "echo still", LONG)).unwrap();
    assert_eq!(out.stdout, "still\n");
    runtime.block_on(live.close());
}

#[test]
fn a_new_remote_stops_the_masters_a_killed_run_left_running() {
    let fleet = SshFleet::start(3);
    let base = private_base();
    // Masters that would linger for a minute on their own.
    let (mut helper, dir) = helper_with_masters(&fleet, 60, base.path());
    let masters = masters_in(&dir);
    helper.kill().unwrap();
    helper.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(masters_in(&dir), masters, "the masters outlive their run");

    let started = Instant::now();
    let _next = remote_for(
        fleet.ssh_config_path(),
        Duration::from_secs(60),
        base.path(),
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!dir.exists(), "the dead run's control directory was left");
    assert!(
        eventually(Duration::from_secs(5), || masters_in(&dir).is_empty()),
        "its masters still run: {:?}",
        masters_in(&dir)
    );
}

#[test]
fn directories_that_are_not_a_dead_runs_are_kept() {
    let private = private_base();
    let base = private.path();
    // Named like ours but owned by a live process (this one's parent, pid
    // 1 and this very process).
    let parent = std::os::unix::process::parent_id();
    let mut kept = Vec::new();
    for pid in [1, parent, std::process::id()] {
        let dir = base.join(format!("co-{pid}-{:012x}", u64::from(pid) * 7 + 0xabc));
        std::fs::create_dir_all(&dir).unwrap();
        kept.push(dir);
    }
    // Not our naming at all (a test's `co-fleet…` temp dir, say).
    let other = tempfile::Builder::new()
        .prefix("co-fleet")
        .tempdir_in(base)
        .unwrap();
    // A dead owner: a child that has exited (and been reaped).
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let dead = base.join(format!("co-{dead_pid}-{:012x}", 0xdead_u64));
    std::fs::create_dir_all(dead.join(".ssh-connectionX")).unwrap();
    // A live pid whose start time is not the recorded one: the pid was
    // reused, the owner is dead.
    let reused = base.join(format!("co-1-{:012x}", 0xbeef_u64));
    std::fs::create_dir_all(&reused).unwrap();
    std::fs::write(reused.join("owner"), "1 1\n").unwrap();

    let _remote = SshRemote::new(SshOptions {
        control_base: Some(base.to_path_buf()),
        ..SshOptions::default()
    });
    for dir in &kept {
        assert!(dir.exists(), "{} was removed", dir.display());
        std::fs::remove_dir_all(dir).unwrap();
    }
    assert!(other.path().exists());
    assert!(!dead.exists(), "a dead owner's directory was kept");
    let start_of_init = std::fs::read_to_string("/proc/1/stat")
        .unwrap()
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    if start_of_init != "1" {
        assert!(!reused.exists(), "a reused pid's directory was kept");
    }
    let _ = std::fs::remove_dir_all(&reused);
}

/// Run `command` (which should take a second) and, while it runs, see
/// which masters `remote` has.
async fn run_and_see_masters(remote: &SshRemote, h: &Host, command: &str) -> (String, Vec<u32>) {
    let run = remote.run(h, command, LONG);
    let look = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(dir) = remote.control_dir() {
                let masters = masters_in(&dir);
                if !masters.is_empty() || Instant::now() >= deadline {
                    return masters;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (out, masters) = tokio::join!(run, look);
    (out.unwrap().stdout, masters)
}

async fn wait_no_masters(remote: &SshRemote) -> bool {
    let dir = remote.control_dir().unwrap();
    tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(10), || masters_in(&dir).is_empty())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_master_that_exited_while_idle_is_replaced_by_the_next_command() {
    let fleet = SshFleet::start(1);
    let h = host(&fleet.hosts()[0]);
    let base = private_base();
    let remote = remote_for(fleet.ssh_config_path(), Duration::from_secs(1), base.path());
    let (out, first) = run_and_see_masters(&remote, &h, "sleep 1; echo one").await;
    assert_eq!(out, "one\n");
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        wait_no_masters(&remote).await,
        "an idle master did not exit after its persist time"
    );

    let (out, second) = run_and_see_masters(&remote, &h, "sleep 1; echo two").await;
    assert_eq!(out, "two\n");
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(first, second, "a new master");

    // A step runs through a fresh master as well.
    assert!(wait_no_masters(&remote).await);
    let id = changeover_core::remote::StepId {
        deploy_id: format!("t-idle-{}", std::process::id()),
        unit: "web-1".into(),
        index: 0,
    };
    let out = remote.run_step(&h, "echo three", &id, LONG).await.unwrap();
    assert_eq!(out.stdout, "three\n");
    remote.close().await;
}
