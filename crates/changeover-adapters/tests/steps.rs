//! Deploy steps run detached on the host (`Remote::run_step`,
//! `Remote::wait_steps`), against REAL OpenSSH servers on 127.0.1.x and
//! locally: killed on the host at their timeout (the whole process group),
//! left running when changeover dies and read back afterwards.
//!
//! The fleet's "hosts" are sshd processes on this machine, so the test sees
//! the hosts' processes in /proc and their files under /tmp.
//!
//! Must run as root (the fleet's sshd log in as root).

use changeover_adapters::remote::local::LocalRemote;
use changeover_adapters::remote::ssh::{SshOptions, SshRemote};
use changeover_adapters::remote::step::{step_dir, KILL_GRACE, TAIL_BYTES};
use changeover_core::remote::{Remote, RemoteError, StepEnd, StepId};
use changeover_core::unit::Host;
use changeover_testkit::sshd::{FleetHost, SshFleet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

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

fn local_host() -> Host {
    Host {
        name: "local".into(),
        address: "127.0.0.1".into(),
        tags: Vec::new(),
        ssh_user: None,
        ssh_port: None,
        instance_id: None,
        instances: None,
    }
}

fn remote_for(config: &Path) -> SshRemote {
    SshRemote::new(SshOptions {
        config_file: Some(config.to_path_buf()),
        connect_timeout: Duration::from_secs(5),
        ..SshOptions::default()
    })
}

/// A deploy id no other test (or earlier run) uses.
fn deploy_id(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t-{test}-{}-{nanos}", std::process::id())
}

fn step(deploy: &str, unit: &str, index: usize) -> StepId {
    StepId {
        deploy_id: deploy.to_string(),
        unit: unit.to_string(),
        index,
    }
}

/// Where a step's directory is: the sshd sessions have no TMPDIR, and
/// neither (in the test) has the local executor.
fn dir_of(step: &StepId) -> PathBuf {
    let tmp = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    tmp.join(step_dir(step))
}

/// The live (not zombie) processes in process group `pgid`, as "pid comm".
fn group_members(pgid: u32) -> Vec<String> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = tail.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            members.push(format!("{} {comm}", entry.file_name().to_string_lossy()));
        }
    }
    members
}

fn read_number(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Wait (bounded) for `path` to exist.
fn wait_for_file(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A step command that records its process group in `dir/pgid`, then
/// sleeps 300 s and only then leaves `dir/marker`; `prefix` runs first.
fn sleeper(dir: &Path, prefix: &str) -> String {
    let d = dir.display();
    format!(
        "{prefix} cut -d' ' -f5 /proc/$$/stat > {d}/pgid.tmp && mv {d}/pgid.tmp {d}/pgid; \
         sleep 300; touch {d}/marker"
    )
}

/// After a kill: nothing is left in the group, now or a moment later, and
/// the command never got to its end.
fn assert_killed(dir: &Path) {
    let pgid = read_number(&dir.join("pgid"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = group_members(pgid);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left in the step's group {pgid}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(group_members(pgid).is_empty());
    assert!(!dir.join("marker").exists(), "the killed step ran on");
}

fn timeout_error(result: Result<changeover_core::remote::CommandOutput, RemoteError>) -> String {
    match result {
        Err(err @ RemoteError::Timeout { .. }) => err.to_string(),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// A changeover-like process for the crash tests: this same test binary, run
// again with only `helper_process` and CO_STEP_HELPER set.

/// Start the helper; it runs one step with `run_step` and prints its result
/// (which the tests never see: they kill it first).
fn spawn_helper(executor: &str, address: &str, id: &StepId, command: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["helper_process", "--exact", "--nocapture"])
        .env("CO_STEP_HELPER", executor)
        .env("CO_ADDRESS", address)
        .env("CO_DEPLOY", &id.deploy_id)
        .env("CO_UNIT", &id.unit)
        .env("CO_INDEX", id.index.to_string())
        .env("CO_COMMAND", command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the helper process")
}

#[test]
// Not a check of its own: the body of the helper process the crash tests
// start (it returns at once unless CO_STEP_HELPER is set), so it runs, empty, in CI.
fn helper_process() {
    let Ok(executor) = std::env::var("CO_STEP_HELPER") else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let mut host = local_host();
    host.address = var("CO_ADDRESS");
    let id = StepId {
        deploy_id: var("CO_DEPLOY"),
        unit: var("CO_UNIT"),
        index: var("CO_INDEX").parse().unwrap(),
    };
    let command = var("CO_COMMAND");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let remote: Box<dyn Remote> = if executor == "local" {
            Box::new(LocalRemote::new())
        } else {
            Box::new(remote_for(Path::new(&executor)))
        };
        remote.run_step(&host, &command, &id, LONG).await
    });
    println!("{result:?}");
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn output_and_exit_status_come_back_over_ssh_and_the_directory_goes() {
    let fleet = SshFleet::start(2);
    let remote = remote_for(fleet.ssh_config_path());
    let deploy = deploy_id("output");
    let hosts: Vec<Host> = fleet.hosts().iter().map(host).collect();
    let runs = hosts.iter().map(|h| {
        let id = step(&deploy, &h.name, 0);
        let remote = &remote;
        async move {
            let command = "set -- $SSH_CONNECTION; echo \"on $3\"; echo 'to stderr' >&2; \
                           printf 'no newline'; exit 3";
            (id.clone(), remote.run_step(h, command, &id, LONG).await)
        }
    });
    for ((id, result), h) in futures::future::join_all(runs)
        .await
        .into_iter()
        .zip(&hosts)
    {
        let out = result.unwrap_or_else(|e| panic!("{}: {e}", h.name));
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout, format!("on {}\nno newline", h.address));
        assert_eq!(out.stderr, "to stderr\n");
        assert!(
            !dir_of(&id).exists(),
            "a read result's directory is removed"
        );
    }

    // A step that writes more than the tail keeps: the last bytes come back.
    let h = &hosts[0];
    let id = step(&deploy, &h.name, 1);
    let out = remote
        .run_step(h, "seq 1 200000; echo done >&2", &id, LONG)
        .await
        .unwrap();
    assert!(out.success());
    assert!(
        out.stdout.len() <= TAIL_BYTES,
        "{} bytes kept",
        out.stdout.len()
    );
    assert!(
        out.stdout.ends_with("199999\n200000\n"),
        "{:?}",
        &out.stdout[out.stdout.len() - 20..]
    );
    assert_eq!(out.stderr, "done\n");

    // A second step with the same id (a retried deploy) starts afresh.
    let out = remote.run_step(h, "echo again", &id, LONG).await.unwrap();
    assert_eq!(out.stdout, "again\n");
    let unit_dir = dir_of(&id);
    assert!(
        !unit_dir.parent().unwrap().exists(),
        "empty unit directories go too"
    );
    remote.close().await;
}

#[tokio::test]
async fn a_step_that_leaves_a_process_holding_its_output_still_ends() {
    let fleet = SshFleet::start(1);
    let remote = remote_for(fleet.ssh_config_path());
    let h = host(&fleet.hosts()[0]);
    let work = tempfile::tempdir().unwrap();
    let d = work.path().display();
    // The background sleep keeps the step's stdout open after its shell
    // exited: the step is done, and what it started is left alone.
    let command = format!("sleep 20 & echo $! > {d}/bg; echo started; exit 0");
    let id = step(&deploy_id("held"), &h.name, 0);
    let started = Instant::now();
    let out = remote.run_step(&h, &command, &id, LONG).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status, Some(0));
    assert!(out.stderr.contains("output not available"), "{out:?}");
    let bg = read_number(&work.path().join("bg"));
    assert!(
        Path::new(&format!("/proc/{bg}")).exists(),
        "a process the step started was killed"
    );
    let _ = Command::new("kill").arg(bg.to_string()).status();
    remote.close().await;
}

/// Kill -9 the ssh processes whose command line names `dir` (the masters
/// of the remote whose control directory it is); how many there were.
fn kill_masters_in(dir: &Path) -> usize {
    let needle = dir.to_str().unwrap();
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a == "ssh") && args.iter().any(|a| a.contains(needle)) {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
                .success()
            {
                killed += 1;
            }
        }
    }
    killed
}

#[tokio::test]
async fn a_step_whose_connection_breaks_is_found_again_and_waited_for() {
    let fleet = SshFleet::start(1);
    let remote = remote_for(fleet.ssh_config_path());
    let h = host(&fleet.hosts()[0]);
    let work = tempfile::tempdir().unwrap();
    let d = work.path().display();
    let command = format!("touch {d}/started; sleep 2; echo late; touch {d}/finished");
    let id = step(&deploy_id("reattach"), &h.name, 0);
    let run = remote.run_step(&h, &command, &id, LONG);
    let breaker = async {
        let started = work.path().join("started");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !started.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill_masters_in(&remote.control_dir().unwrap())
    };
    let (out, killed) = tokio::join!(run, breaker);
    assert_eq!(killed, 1, "the step's master was killed mid-step");
    let out = out.unwrap();
    assert_eq!(out.stdout, "late\n");
    assert!(work.path().join("finished").exists());
    assert!(!dir_of(&id).exists());
    remote.close().await;
}

#[tokio::test]
async fn a_step_past_its_timeout_is_killed_on_the_host_with_its_whole_group() {
    let fleet = SshFleet::start(1);
    let remote = remote_for(fleet.ssh_config_path());
    let h = host(&fleet.hosts()[0]);
    let work = tempfile::tempdir().unwrap();
    // A child in the background and one in the foreground: both are in
    // the step's process group and both must go.
    let command = sleeper(work.path(), "sleep 300 & ");
    let id = step(&deploy_id("timeout"), &h.name, 0);
    let started = Instant::now();
    let message = timeout_error(
        remote
            .run_step(&h, &command, &id, Duration::from_secs(1))
            .await,
    );
    let took = started.elapsed();
    assert!(message.contains("did not finish within 1s"), "{message}");
    assert!(
        message.contains("sleep 300; touch"),
        "the error names the step: {message}"
    );
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(8), "the kill took {took:?}");
    assert_killed(work.path());
    assert!(
        !dir_of(&id).exists(),
        "a killed step's directory is removed"
    );
    remote.close().await;
}

#[tokio::test]
async fn a_step_that_ignores_term_is_killed_after_the_grace() {
    let fleet = SshFleet::start(1);
    let remote = remote_for(fleet.ssh_config_path());
    let h = host(&fleet.hosts()[0]);
    let work = tempfile::tempdir().unwrap();
    // `sleep` inherits the ignored TERM: only KILL stops either.
    let command = sleeper(work.path(), "trap '' TERM;");
    let id = step(&deploy_id("term"), &h.name, 0);
    let started = Instant::now();
    timeout_error(
        remote
            .run_step(&h, &command, &id, Duration::from_secs(1))
            .await,
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) + KILL_GRACE, "{took:?}");
    assert!(took < Duration::from_secs(12), "{took:?}");
    assert_killed(work.path());
    remote.close().await;
}

#[tokio::test]
async fn a_step_outlives_a_killed_changeover_and_wait_steps_reads_its_result() {
    let fleet = SshFleet::start(1);
    let h = host(&fleet.hosts()[0]);
    let work = tempfile::tempdir().unwrap();
    let d = work.path().display();
    let deploy = deploy_id("crash");
    let id = step(&deploy, &h.name, 2);
    let command =
        format!("touch {d}/started; sleep 3; echo out; echo err >&2; touch {d}/finished; exit 7");
    let config = fleet.ssh_config_path().to_str().unwrap().to_string();
    let mut helper = spawn_helper(&config, &h.address, &id, &command);
    wait_for_file(&work.path().join("started"), Duration::from_secs(30));
    helper.kill().unwrap(); // SIGKILL
    helper.wait().unwrap();
    let killed = Instant::now();
    assert!(!work.path().join("finished").exists());
    assert!(
        dir_of(&id).join("pgid").exists(),
        "the step is recorded on the host"
    );

    // A fresh remote, as `changeover recover` would have.
    let remote = remote_for(fleet.ssh_config_path());
    let records = remote
        .wait_steps(&h, &deploy, &h.name, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        work.path().join("finished").exists(),
        "wait_steps returned before the step ended"
    );
    assert!(killed.elapsed() < Duration::from_secs(15));
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record.index, 2);
    assert_eq!(record.end, StepEnd::Exited);
    assert_eq!(record.command, command);
    assert_eq!(record.output.status, Some(7));
    assert_eq!(record.output.stdout, "out\n");
    assert_eq!(record.output.stderr, "err\n");

    // Read once: gone from the host, and a second look finds nothing.
    assert!(!dir_of(&id).exists());
    let again = remote
        .wait_steps(&h, &deploy, &h.name, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    remote.close().await;
}

#[tokio::test]
async fn a_step_still_running_past_the_wait_bound_is_killed_and_reported() {
    let fleet = SshFleet::start(1);
    let h = host(&fleet.hosts()[0]);
    let work = tempfile::tempdir().unwrap();
    let deploy = deploy_id("waitbound");
    let id = step(&deploy, "web-1#2", 0);
    let command = sleeper(work.path(), "echo before;");
    let config = fleet.ssh_config_path().to_str().unwrap().to_string();
    let mut helper = spawn_helper(&config, &h.address, &id, &command);
    wait_for_file(&work.path().join("pgid"), Duration::from_secs(30));
    helper.kill().unwrap();
    helper.wait().unwrap();

    let remote = remote_for(fleet.ssh_config_path());
    // The same step again while it runs is refused, and starts nothing.
    let again = remote.run_step(&h, "touch never", &id, LONG).await;
    match again {
        Err(RemoteError::Exec { message, .. }) => {
            assert!(message.contains("already running"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let started = Instant::now();
    let records = remote
        .wait_steps(&h, &deploy, "web-1#2", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(12));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].end, StepEnd::TimedOut);
    assert_eq!(records[0].output.status, None);
    assert_killed(work.path());
    remote.close().await;
}

#[tokio::test]
async fn deploy_ids_and_unit_names_with_shell_metacharacters_are_quoted() {
    let fleet = SshFleet::start(1);
    let remote = remote_for(fleet.ssh_config_path());
    let h = host(&fleet.hosts()[0]);
    let work = tempfile::tempdir().unwrap();
    let trap = |name: &str| work.path().join(name).display().to_string();
    let deploy = format!(
        "{}'; touch {} #\"$(touch {})`touch {}`\n../..",
        deploy_id("quote"),
        trap("a"),
        trap("b"),
        trap("c")
    );
    let unit = format!("web 1#2 *;$(touch {}) ..", trap("d"));
    let id = step(&deploy, &unit, 0);

    // While it runs, its directory is where `step_dir` says, one level per
    // name whatever they hold.
    let probe = format!("{}/probe", work.path().display());
    let command = format!("touch {probe}; sleep 1; echo ok");
    let run = remote.run_step(&h, &command, &id, LONG);
    let look = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Path::new(&probe).exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        dir_of(&id).join("command").exists()
    };
    let (out, seen) = tokio::join!(run, look);
    assert!(seen, "no step directory at {}", dir_of(&id).display());
    assert_eq!(out.unwrap().stdout, "ok\n");
    for name in ["a", "b", "c", "d"] {
        assert!(
            !Path::new(&trap(name)).exists(),
            "a name reached a shell: {name}"
        );
    }
    let relative = step_dir(&id);
    assert_eq!(relative.matches('/').count(), 3, "{relative}");

    // wait_steps finds steps by the same names.
    let config = fleet.ssh_config_path().to_str().unwrap().to_string();
    let d = work.path().display();
    let mut helper = spawn_helper(
        &config,
        &h.address,
        &step(&deploy, &unit, 1),
        &format!("touch {d}/started; sleep 1; echo second"),
    );
    wait_for_file(&work.path().join("started"), Duration::from_secs(30));
    helper.kill().unwrap();
    helper.wait().unwrap();
    let records = remote.wait_steps(&h, &deploy, &unit, LONG).await.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].index, 1);
    assert_eq!(records[0].output.stdout, "second\n");
    for name in ["a", "b", "c", "d"] {
        assert!(
            !Path::new(&trap(name)).exists(),
            "a name reached a shell: {name}"
        );
    }
    remote.close().await;
}

#[tokio::test]
async fn the_local_executor_kills_a_step_at_its_timeout() {
    let remote = LocalRemote::new();
    let work = tempfile::tempdir().unwrap();
    let id = step(&deploy_id("local-timeout"), "local", 0);
    let started = Instant::now();
    timeout_error(
        remote
            .run_step(
                &local_host(),
                &sleeper(work.path(), "sleep 300 &"),
                &id,
                Duration::from_secs(1),
            )
            .await,
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_killed(work.path());

    let id = step(&id.deploy_id, "local", 1);
    let out = remote
        .run_step(
            &local_host(),
            "echo \"$CHANGEOVER_HOST\"; exit 4",
            &id,
            LONG,
        )
        .await
        .unwrap();
    assert_eq!(out.status, Some(4));
    assert_eq!(out.stdout, "local\n");
    assert!(!dir_of(&id).exists());
}

#[tokio::test]
async fn a_local_step_outlives_a_killed_changeover() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path().display();
    let deploy = deploy_id("local-crash");
    let id = step(&deploy, "local", 0);
    let command = format!("touch {d}/started; sleep 2; echo done; touch {d}/finished");
    let mut helper = spawn_helper("local", "127.0.0.1", &id, &command);
    wait_for_file(&work.path().join("started"), Duration::from_secs(30));
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert!(!work.path().join("finished").exists());

    let records = LocalRemote::new()
        .wait_steps(&local_host(), &deploy, "local", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].end, StepEnd::Exited);
    assert_eq!(records[0].output.status, Some(0));
    assert_eq!(records[0].output.stdout, "done\n");
    assert!(work.path().join("finished").exists());
}

#[tokio::test]
async fn wait_steps_with_nothing_on_the_host_is_empty() {
    let fleet = SshFleet::start(1);
    let remote = remote_for(fleet.ssh_config_path());
    let h = host(&fleet.hosts()[0]);
    let records = remote
        .wait_steps(&h, &deploy_id("none"), &h.name, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(records.is_empty());
    remote.close().await;
}
