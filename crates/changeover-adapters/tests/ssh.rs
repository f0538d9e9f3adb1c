//! SshRemote against real OpenSSH servers on 127.0.1.x, and LocalRemote.
//!
//! Must run as root (the fleet's sshd log in as root).

use changeover_adapters::remote::local::LocalRemote;
use changeover_adapters::remote::ssh::{SshOptions, SshRemote};
use changeover_core::remote::{Remote, RemoteError};
use changeover_core::unit::Host;
use changeover_testkit::sshd::{FleetHost, SshFleet};
use std::path::{Path, PathBuf};
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

fn hosts(fleet: &SshFleet) -> Vec<Host> {
    fleet.hosts().iter().map(host).collect()
}

fn remote_with(config: &Path, max_connections: usize) -> SshRemote {
    SshRemote::new(SshOptions {
        config_file: Some(config.to_path_buf()),
        max_connections,
        connect_timeout: Duration::from_secs(5),
        ..SshOptions::default()
    })
}

fn remote(fleet: &SshFleet) -> SshRemote {
    remote_with(fleet.ssh_config_path(), 8)
}

fn connect_message(result: &Result<(), RemoteError>) -> String {
    match result {
        Err(err @ RemoteError::Connect { .. }) => err.to_string(),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

/// The pid of the ssh master behind the (only) control socket of `remote`.
fn master_pid(remote: &SshRemote) -> u32 {
    let sockets = control_sockets(&remote.control_dir().expect("connected"));
    assert_eq!(sockets.len(), 1, "one host, one master: {sockets:?}");
    let output = std::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-S"])
        .arg(&sockets[0])
        .args(["-O", "check", "changeover"])
        .output()
        .expect("run ssh -O check");
    let text = String::from_utf8_lossy(&output.stderr);
    let pid = text
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok());
    pid.unwrap_or_else(|| panic!("no master pid in {text:?}"))
}

fn control_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read control dir").flatten() {
        let socket = entry.path().join("master");
        if socket.exists() {
            sockets.push(socket);
        }
    }
    sockets
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; only a running process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

async fn wait_dead(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn runs_a_command_on_every_host() {
    let fleet = SshFleet::start(3);
    let hosts = hosts(&fleet);
    let remote = remote(&fleet);

    let refs: Vec<&Host> = hosts.iter().collect();
    for (host, result) in hosts.iter().zip(remote.connect_all(&refs).await) {
        result.unwrap_or_else(|e| panic!("{}: {e}", host.name));
    }
    for host in &hosts {
        // SSH_CONNECTION names the server address: proof that each command
        // ran through that host's own sshd.
        let output = remote
            .run(
                host,
                "set -- $SSH_CONNECTION; echo \"$3\"; echo to-stderr >&2",
                LONG,
            )
            .await
            .unwrap();
        assert_eq!(output.status, Some(0));
        assert!(output.success());
        assert_eq!(output.stdout, format!("{}\n", host.address));
        assert_eq!(output.stderr, "to-stderr\n");
    }
    remote.close().await;
}

#[tokio::test]
async fn commands_arrive_intact() {
    let fleet = SshFleet::start(1);
    let host = host(&fleet.hosts()[0]);
    let remote = remote(&fleet);

    let cases = [
        (r#"printf '%s' 'a b'"c"'; $x'"#, "a bc; $x"),
        (
            "x=1; printf '%s|' \"$x\"\nprintf 'second line'",
            "1|second line",
        ),
        (
            r#"printf '%s' "back\\slash \"dq\" \$HOME" '!'"#,
            r#"back\slash "dq" $HOME!"#,
        ),
        (
            "printf '%s' 'tab\there' && printf ' {braces} *'",
            "tab\there {braces} *",
        ),
        ("printf 'é ü 漢'", "é ü 漢"),
    ];
    for (command, expected) in cases {
        let output = remote.run(&host, command, LONG).await.unwrap();
        assert_eq!(
            output.stdout, expected,
            "command: {command:?}, stderr: {}",
            output.stderr
        );
        assert_eq!(output.status, Some(0));
    }
    remote.close().await;
}

#[tokio::test]
async fn a_failing_command_is_an_output_not_an_error() {
    let fleet = SshFleet::start(1);
    let host = host(&fleet.hosts()[0]);
    let remote = remote(&fleet);

    let output = remote
        .run(&host, "echo partial; echo broken >&2; exit 3", LONG)
        .await
        .unwrap();
    assert_eq!(output.status, Some(3));
    assert!(!output.success());
    assert_eq!(output.stdout, "partial\n");
    assert_eq!(output.stderr, "broken\n");

    // openssh reports 127 as an error of its own; it must stay a status.
    let output = remote
        .run(&host, "no-such-command-changeover", LONG)
        .await
        .unwrap();
    assert_eq!(output.status, Some(127));
    assert!(output.stderr.contains("not found"), "{}", output.stderr);

    let output = remote.run(&host, "kill -TERM $$", LONG).await.unwrap();
    assert_eq!(output.status, None, "killed by a signal: no exit status");
    remote.close().await;
}

#[tokio::test]
async fn a_command_that_runs_too_long_times_out() {
    let fleet = SshFleet::start(1);
    let host = host(&fleet.hosts()[0]);
    let remote = remote(&fleet);
    remote.connect_all(&[&host]).await.remove(0).unwrap();

    let started = Instant::now();
    let err = remote
        .run(&host, "sleep 10", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&err, RemoteError::Timeout { host, timeout, .. }
            if host == "web-1" && *timeout == Duration::from_millis(500)),
        "{err:?}"
    );
    assert!(err.to_string().contains("web-1"), "{err}");

    // The connection is still good for the next command.
    let output = remote.run(&host, "echo next", LONG).await.unwrap();
    assert_eq!(output.stdout, "next\n");
    remote.close().await;
}

#[tokio::test]
async fn an_unreachable_host_is_a_connect_error_naming_it() {
    let mut fleet = SshFleet::start(2);
    fleet.stop_host(1);
    let hosts = hosts(&fleet);
    let remote = remote(&fleet);

    let results = remote.connect_all(&[&hosts[0], &hosts[1]]).await;
    results[0].as_ref().unwrap();
    let message = connect_message(&results[1]);
    assert!(
        message.starts_with("cannot connect to web-2: "),
        "{message}"
    );
    assert!(message.contains("Connection refused"), "{message}");

    let err = remote.run(&hosts[1], "true", LONG).await.unwrap_err();
    assert!(matches!(err, RemoteError::Connect { .. }), "{err:?}");
    // The healthy host is not affected.
    assert!(remote.run(&hosts[0], "true", LONG).await.unwrap().success());
    remote.close().await;
}

#[tokio::test]
async fn host_keys_are_checked_strictly() {
    let fleet = SshFleet::start(3);
    let hosts = hosts(&fleet);
    let (web1, web2) = (&fleet.hosts()[0], &fleet.hosts()[1]);

    // web-1 listed with web-2's key; web-2 correct; web-3 missing.
    let key_of_web2 = fleet
        .known_hosts_line(1)
        .split_once(' ')
        .map(|(_, key)| key.to_string())
        .unwrap();
    let known_hosts = fleet.dir().join("known_hosts_wrong");
    let text = format!(
        "[{}]:{} {key_of_web2}\n{}\n",
        web1.address,
        web1.port,
        fleet.known_hosts_line(1)
    );
    std::fs::write(&known_hosts, &text).unwrap();
    let config = fleet.dir().join("ssh_config_wrong");
    fleet.write_ssh_config(&config, &known_hosts);
    assert_eq!(web2.address, hosts[1].address);

    let remote = remote_with(&config, 8);
    let results = remote.connect_all(&[&hosts[0], &hosts[1], &hosts[2]]).await;

    let changed = connect_message(&results[0]);
    assert!(
        changed.starts_with("cannot connect to web-1: "),
        "{changed}"
    );
    assert!(
        changed.contains("Host key verification failed"),
        "{changed}"
    );
    assert!(changed.contains("has changed"), "{changed}");
    assert!(
        !changed.contains('\n'),
        "one line for the terminal: {changed}"
    );

    results[1].as_ref().unwrap();

    // An unknown host is refused too (not trusted on first use), and its key
    // is not written down.
    let unknown = connect_message(&results[2]);
    assert!(
        unknown.starts_with("cannot connect to web-3: "),
        "{unknown}"
    );
    assert!(
        unknown.contains("Host key verification failed"),
        "{unknown}"
    );
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), text);
    remote.close().await;
}

#[tokio::test]
async fn one_connect_at_a_time_still_reaches_every_host() {
    let fleet = SshFleet::start(3);
    let hosts = hosts(&fleet);
    let remote = remote_with(fleet.ssh_config_path(), 1);

    let refs: Vec<&Host> = hosts.iter().collect();
    let results = remote.connect_all(&refs).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let runs =
        futures::future::join_all(hosts.iter().map(|h| remote.run(h, "echo ok", LONG))).await;
    for run in runs {
        assert_eq!(run.unwrap().stdout, "ok\n");
    }
    remote.close().await;
}

#[tokio::test]
async fn more_concurrent_commands_than_sshd_sessions_wait_their_turn() {
    let fleet = SshFleet::start(1);
    let host = host(&fleet.hosts()[0]);
    // sshd's MaxSessions is 10 per connection.
    let commands: Vec<String> = (0..16).map(|i| format!("sleep 0.2; echo {i}")).collect();

    // Queued on our side (the default allows fewer than MaxSessions) ...
    let remote = remote(&fleet);
    let runs = futures::future::join_all(commands.iter().map(|c| remote.run(&host, c, LONG))).await;
    for (i, run) in runs.into_iter().enumerate() {
        assert_eq!(run.unwrap().stdout, format!("{i}\n"));
    }
    remote.close().await;

    // ... or refused by sshd and tried again.
    let remote = SshRemote::new(SshOptions {
        config_file: Some(fleet.ssh_config_path().to_path_buf()),
        max_sessions_per_host: 16,
        ..SshOptions::default()
    });
    let runs = futures::future::join_all(commands.iter().map(|c| remote.run(&host, c, LONG))).await;
    for (i, run) in runs.into_iter().enumerate() {
        assert_eq!(run.unwrap().stdout, format!("{i}\n"));
    }
    remote.close().await;
}

#[tokio::test]
async fn a_dead_master_is_replaced_once() {
    let fleet = SshFleet::start(1);
    let host = host(&fleet.hosts()[0]);
    let remote = remote(&fleet);
    assert!(remote.run(&host, "true", LONG).await.unwrap().success());

    // SIGKILL leaves the socket file behind, as a crash would.
    let pid = master_pid(&remote);
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(wait_dead(pid).await);

    let output = remote.run(&host, "echo again", LONG).await.unwrap();
    assert_eq!(output.stdout, "again\n");
    assert_ne!(master_pid(&remote), pid);
    remote.close().await;
}

#[tokio::test]
async fn overrides_on_the_host_win_over_the_ssh_config() {
    let fleet = SshFleet::start(1);
    let remote = remote(&fleet);

    let mut wrong_port = host(&fleet.hosts()[0]);
    wrong_port.ssh_port = Some(1);
    let message = connect_message(&remote.connect_all(&[&wrong_port]).await[0]);
    assert!(message.contains("port 1: Connection refused"), "{message}");

    let mut wrong_user = host(&fleet.hosts()[0]);
    wrong_user.ssh_user = Some("changeover-no-such-user".to_string());
    let message = connect_message(&remote.connect_all(&[&wrong_user]).await[0]);
    assert!(message.contains("Permission denied"), "{message}");

    let mut right = host(&fleet.hosts()[0]);
    right.ssh_port = Some(fleet.hosts()[0].port);
    right.ssh_user = Some("root".to_string());
    assert_eq!(
        remote.run(&right, "id -un", LONG).await.unwrap().stdout,
        "root\n"
    );
    remote.close().await;
}

#[tokio::test]
async fn close_and_drop_stop_the_masters() {
    let fleet = SshFleet::start(1);
    let host = host(&fleet.hosts()[0]);

    let remote = remote(&fleet);
    remote.connect_all(&[&host]).await.remove(0).unwrap();
    let dir = remote.control_dir().unwrap();
    assert!(dir.as_os_str().len() < 30, "short socket paths: {dir:?}");
    let pid = master_pid(&remote);
    remote.close().await;
    remote.close().await;
    assert!(wait_dead(pid).await, "master {pid} survived close");
    assert!(!dir.exists());

    // Still usable after close, with a fresh control dir.
    assert!(remote.run(&host, "true", LONG).await.unwrap().success());
    let dir = remote.control_dir().unwrap();
    let pid = master_pid(&remote);
    drop(remote);
    assert!(wait_dead(pid).await, "master {pid} survived drop");
    assert!(!dir.exists());
}

#[tokio::test]
async fn close_lets_a_running_command_finish() {
    let fleet = SshFleet::start(1);
    let host = host(&fleet.hosts()[0]);
    let remote = remote(&fleet);
    remote.connect_all(&[&host]).await.remove(0).unwrap();
    let pid = master_pid(&remote);

    let (output, ()) = tokio::join!(remote.run(&host, "sleep 1; echo done", LONG), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        remote.close().await;
    });
    assert_eq!(output.unwrap().stdout, "done\n");
    assert!(wait_dead(pid).await, "master {pid} survived close");
}

fn local_host() -> Host {
    Host {
        name: "web-1".to_string(),
        address: "10.0.0.1".to_string(),
        tags: Vec::new(),
        ssh_user: None,
        ssh_port: None,
        instance_id: None,
        instances: None,
    }
}

#[tokio::test]
async fn local_runs_sh_with_the_host_in_the_environment() {
    let remote = LocalRemote::new();
    let host = local_host();
    assert!(remote.connect_all(&[&host]).await[0].is_ok());

    let output = remote
        .run(
            &host,
            r#"printf '%s %s|' "$CHANGEOVER_HOST" "$CHANGEOVER_ADDRESS"; printf '%s' 'a b'"c"'; $x'; echo e >&2; exit 4"#,
            LONG,
        )
        .await
        .unwrap();
    assert_eq!(output.stdout, "web-1 10.0.0.1|a bc; $x");
    assert_eq!(output.stderr, "e\n");
    assert_eq!(output.status, Some(4));
}

#[tokio::test]
async fn local_timeout_kills_everything_the_command_started() {
    let remote = LocalRemote::new();
    let host = local_host();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");

    let command = format!("sleep 30 & echo $! > '{}'; sleep 30", pid_file.display());
    let started = Instant::now();
    let err = remote
        .run(&host, &command, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err:?}");
    let background: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_dead(background).await, "background sleep survived");
}

/// A unix socket server on "the host" (this machine) that answers each
/// connection with one line and closes, like HAProxy's runtime API.
fn unix_server(dir: &Path) -> PathBuf {
    let path = dir.join("api.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"pong\n").await;
        }
    });
    path
}

async fn read_all(path: &Path) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::UnixStream::connect(path).await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(text)
}

#[tokio::test]
async fn a_unix_socket_on_the_host_is_forwarded_and_survives_a_new_master() {
    let fleet = SshFleet::start(1);
    let host = host(&fleet.hosts()[0]);
    let dir = tempfile::tempdir().unwrap();
    let api = unix_server(dir.path());
    let remote = remote(&fleet);
    let api_text = api.to_str().unwrap();

    let local = remote
        .forward_unix_socket(&host, api_text, false)
        .await
        .unwrap();
    assert_ne!(local, api, "a local end of its own");
    assert_eq!(read_all(&local).await.unwrap(), "pong\n");
    // Asked again: the same forward.
    assert_eq!(
        remote
            .forward_unix_socket(&host, api_text, false)
            .await
            .unwrap(),
        local
    );

    // The master dies (and its forward with it): the cached path no longer
    // answers, and a renewal reconnects and forwards again.
    let pid = master_pid(&remote);
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(wait_dead(pid).await);
    let dead = read_all(&local).await;
    assert!(
        !matches!(&dead, Ok(text) if !text.is_empty()),
        "the old forward died with its master: {dead:?}"
    );
    let renewed = remote
        .forward_unix_socket(&host, api_text, true)
        .await
        .unwrap();
    assert_eq!(read_all(&renewed).await.unwrap(), "pong\n");
    assert_ne!(master_pid(&remote), pid);
    remote.close().await;
}

#[tokio::test]
async fn a_command_gets_its_stdin_over_ssh_and_locally() {
    let fleet = SshFleet::start(1);
    let host = host(&fleet.hosts()[0]);
    let remote = remote(&fleet);
    // Larger than a pipe buffer, to prove stdin and stdout flow at once.
    let input = "line\n".repeat(50_000);
    let out = remote
        .run_with_input(&host, "wc -l; cat >/dev/null", input.as_bytes(), LONG)
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "50000");
    let out = LocalRemote::new()
        .run_with_input(&local_host(), "cat | wc -l", input.as_bytes(), LONG)
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "50000");
    remote.close().await;
}
