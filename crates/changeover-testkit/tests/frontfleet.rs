//! The front-end tier fixture must really give every host its own HAProxy
//! at one shared path (over SSH only), and its sampler must see units go
//! out: the front-end e2e tests are only as good as these.

use changeover_adapters::demo_app::{DemoApp, DemoAppOptions};
use changeover_testkit::frontfleet::{server_name, FrontTier, BACKEND};
use changeover_testkit::haproxy::{self, ServerState};
use changeover_testkit::sshd::SshFleet;
use changeover_testkit::tools;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ssh failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pxapp addresses of a `show servers state` answer.
fn addresses(rows: &[ServerState]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.backend == BACKEND)
        .map(|r| r.addr.clone())
        .collect()
}

#[test]
fn every_host_sees_its_own_directory_at_the_shared_path() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    for i in 0..3 {
        let source = dir.path().join(format!("source-{i}"));
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("who"), format!("host {i}\n")).unwrap();
    }
    let fleet = SshFleet::builder(3)
        .bind_per_host(&shared, |i| dir.path().join(format!("source-{i}")))
        .start();
    assert_eq!(fleet.shared_path(), Some(shared.as_path()));
    let who = shared.join("who");
    for i in 0..3 {
        let command = format!("cat '{}'", who.display());
        assert_eq!(stdout(&fleet.ssh(i, &command)), format!("host {i}\n"));
    }
    // Outside the hosts the mount point stays empty: nothing leaks back.
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
}

#[test]
fn a_fleet_without_binds_is_unchanged() {
    let fleet = SshFleet::start(1);
    assert_eq!(fleet.shared_path(), None);
    assert_eq!(stdout(&fleet.ssh(0, "echo ok")), "ok\n");
}

#[test]
fn every_host_reaches_its_own_haproxy_at_the_shared_socket() {
    let tier = FrontTier::builder(2).instances(2).start();
    let socket = tier.shared_socket();
    assert!(
        !socket.exists(),
        "the shared socket must exist on the hosts only"
    );
    let socat = tools::require("socat", "socat");
    for (i, host) in tier.hosts().iter().enumerate() {
        // A socket client run on the host, as `socket_command` does.
        let command = format!(
            "echo 'show servers state' | {} stdio 'UNIX-CONNECT:{}'",
            socat.display(),
            socket.display()
        );
        let rows = haproxy::parse_servers_state(&stdout(&tier.ssh().ssh(i, &command))).unwrap();
        let first = tier.first_port();
        assert_eq!(
            addresses(&rows),
            vec![host.address.clone(); 2],
            "host {i} reached another host's HAProxy (instances on ports {first}..)"
        );
        // The same through unix-socket forwarding over SSH.
        let forwarded = tier.dir().join(format!("fwd-{i}.sock"));
        let mut tunnel = Tunnel::open(
            tier.ssh().ssh_config_path(),
            &host.address,
            &forwarded,
            socket,
        );
        let rows = tunnel.servers_state();
        assert_eq!(addresses(&rows), vec![host.address.clone(); 2]);
    }
}

#[test]
fn the_sampler_sees_units_out() {
    let tier = FrontTier::builder(2).instances(2).weight(37).start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for i in 0..2 {
        for k in 1..=2 {
            let opts = DemoAppOptions::new(tier.instance_addr(i, k), "v1");
            runtime.spawn(async move {
                let app = DemoApp::bind(opts).await.expect("bind the instance's port");
                app.run_until(std::future::pending()).await
            });
        }
    }
    tier.wait_all_up(Duration::from_secs(20));
    assert_eq!(tier.host_lb(0).user_weight(&server_name(2)), 37);

    let sampler = tier.sampler();
    sampler.wait_samples(3, Duration::from_secs(10));
    // Out by weight on host 0, twice; by state on host 1.
    for (i, command) in [
        (0, "set weight pxapp/pxApp_1 0"),
        (0, "set weight pxapp/pxApp_2 0"),
        (1, "set server pxapp/pxApp_1 state maint"),
    ] {
        tier.host_lb(i).command(command);
    }
    sampler.wait_samples(3, Duration::from_secs(10));
    let report = sampler.finish();
    assert!(report.ever_out, "{report}");
    assert_eq!(report.read_errors, 0, "{report}");
    assert_eq!(report.max_out_on_one_host, 2, "{report}");
    assert_eq!(report.max_out_total, 3, "{report}");
    assert!(
        report
            .worst_total
            .iter()
            .any(|u| u.starts_with("web-2/pxApp_1 MAINT")),
        "{report}"
    );
}

/// `ssh -N -L local.sock:remote.sock`, closed on drop.
struct Tunnel {
    child: Child,
    local: std::path::PathBuf,
}

impl Tunnel {
    fn open(config: &Path, address: &str, local: &Path, remote: &Path) -> Tunnel {
        let child = Command::new(tools::require("ssh", "openssh-client"))
            .arg("-F")
            .arg(config)
            .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
            .arg(format!("{}:{}", local.display(), remote.display()))
            .arg("--")
            .arg(address)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut tunnel = Tunnel {
            child,
            local: local.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !local.exists() {
            if let Ok(Some(status)) = tunnel.child.try_wait() {
                panic!("ssh -L exited with {status}");
            }
            assert!(Instant::now() < deadline, "ssh -L did not listen in 10s");
            std::thread::sleep(Duration::from_millis(20));
        }
        tunnel
    }

    fn servers_state(&mut self) -> Vec<ServerState> {
        haproxy::servers_state_at(&self.local).unwrap()
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
