//! A fleet of REAL OpenSSH servers, one per host on 127.0.1.N (hosts past
//! the 254th go on 127.0.2.N, 127.0.3.N, …; see [`host_address`]).
//!
//! Every 127.x.y.z address is loopback on Linux, so each fake host gets an
//! address of its own without any network setup, and the product code sees
//! what it sees in production: distinct addresses, one `sshd` each, strict
//! host-key checking against a `known_hosts` file.
//!
//! Must run as root: the servers log in as root with the generated client key.
//!
//! Optionally ([`SshFleetBuilder::bind_per_host`]) every `sshd` runs in a
//! mount namespace of its own where one shared path shows a per-host
//! directory, so that every host sees, say, its own HAProxy admin socket at
//! the same path, as separate machines do. Only the mount namespace is
//! separate: processes, network and the rest of the file system are shared.

use crate::tools;
use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The most hosts a fleet can have: 254 addresses on each of 127.0.1-4.x.
pub const MAX_HOSTS: usize = 4 * 254;

/// The address of host `n` (from 1): 127.0.1.1 ..= 127.0.1.254, then
/// 127.0.2.1 and on.
pub fn host_address(n: usize) -> String {
    assert!((1..=MAX_HOSTS).contains(&n), "no host number {n}");
    format!("127.0.{}.{}", 1 + (n - 1) / 254, 1 + (n - 1) % 254)
}

/// How long an `sshd` gets to start listening.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// Another fleet (a parallel test) may take the port between picking and
/// binding it; then the whole fleet starts again on another port.
const START_ATTEMPTS: usize = 5;

/// One fake host of an [`SshFleet`].
#[derive(Debug, Clone)]
pub struct FleetHost {
    /// `web-N`, N from 1.
    pub name: String,
    /// `127.0.1.N`.
    pub address: String,
    /// The port its `sshd` listens on (the same for the whole fleet, also set
    /// in the fleet's ssh config).
    pub port: u16,
    /// A directory for this host's application state (the "disk" of the
    /// host), empty at start.
    pub dir: PathBuf,
}

/// Options for [`SshFleet`]; [`SshFleetBuilder::start`] runs it.
#[derive(Debug, Clone)]
pub struct SshFleetBuilder {
    count: usize,
    bind: Option<PerHostBind>,
}

/// `shared` shows `sources[i]` inside host i's mount namespace.
#[derive(Debug, Clone)]
struct PerHostBind {
    shared: PathBuf,
    sources: Vec<PathBuf>,
}

impl SshFleetBuilder {
    /// Run every host's `sshd` in its own mount namespace in which
    /// `source(i)` (host index `i`, 0-based as in [`SshFleet::hosts`]) is
    /// bind-mounted onto `shared`. Everything started over SSH on host `i`
    /// (commands, forwarded unix sockets) sees that host's directory at
    /// `shared`; outside the fleet `shared` stays an empty directory.
    ///
    /// `shared` must be an absolute path inside the calling test's own temp
    /// dir (tests run in parallel); it is created if missing. Every source
    /// must be an existing directory. Needs `unshare` and `mount`
    /// (util-linux, mount) and root.
    pub fn bind_per_host(mut self, shared: &Path, source: impl Fn(usize) -> PathBuf) -> Self {
        assert!(
            shared.is_absolute(),
            "the shared path must be absolute: {}",
            shared.display()
        );
        let sources: Vec<PathBuf> = (0..self.count).map(source).collect();
        for (i, dir) in sources.iter().enumerate() {
            assert!(
                dir.is_absolute() && dir.is_dir(),
                "the bind source of host {i} must be an existing directory given by an absolute path: {}",
                dir.display()
            );
        }
        self.bind = Some(PerHostBind {
            shared: shared.to_path_buf(),
            sources,
        });
        self
    }

    /// Generate keys and configs in a temp dir and start the servers;
    /// returns once every one of them accepts TCP connections. Panics with
    /// the reason (and sshd's own log) when that fails.
    pub fn start(self) -> SshFleet {
        SshFleet::start_with(self)
    }
}

/// How an `sshd` is launched: directly, or through `unshare` + `mount`.
#[derive(Debug)]
struct Launcher {
    sshd: PathBuf,
    namespace: Option<Namespace>,
}

/// A mount namespace per host, with `bind` mounted in it.
#[derive(Debug)]
struct Namespace {
    unshare: PathBuf,
    mount: PathBuf,
    bind: PerHostBind,
}

/// One `sshd` per host on 127.0.1.1 ..= 127.0.1.count, killed on drop.
#[derive(Debug)]
pub struct SshFleet {
    // Fields drop after Drop::drop has killed the servers, so the files
    // they use are removed only once nothing uses them.
    dir: TempDir,
    hosts: Vec<FleetHost>,
    servers: Vec<Option<Child>>,
    ssh_config: PathBuf,
    known_hosts: PathBuf,
    client_key: PathBuf,
    bind: Option<PerHostBind>,
}

impl SshFleet {
    /// Generate keys and configs in a temp dir and start `count` servers;
    /// returns once every one of them accepts TCP connections. Panics with
    /// the reason (and sshd's own log) when that fails.
    pub fn start(count: usize) -> SshFleet {
        SshFleet::builder(count).start()
    }

    /// A fleet with options (see [`SshFleetBuilder::bind_per_host`]).
    pub fn builder(count: usize) -> SshFleetBuilder {
        assert!(
            (1..=MAX_HOSTS).contains(&count),
            "an SshFleet has 1 to {MAX_HOSTS} hosts (127.0.1.1 ..= 127.0.4.254), not {count}"
        );
        SshFleetBuilder { count, bind: None }
    }

    fn start_with(options: SshFleetBuilder) -> SshFleet {
        let count = options.count;
        let launcher = Launcher {
            sshd: tools::require("sshd", "openssh-server"),
            namespace: options.bind.as_ref().map(|bind| {
                fs::create_dir_all(&bind.shared).unwrap_or_else(|e| {
                    panic!(
                        "cannot create the shared path {}: {e}",
                        bind.shared.display()
                    )
                });
                Namespace {
                    unshare: tools::require("unshare", "util-linux"),
                    mount: tools::require("mount", "mount"),
                    bind: bind.clone(),
                }
            }),
        };
        let keygen = tools::require("ssh-keygen", "openssh-client");
        // sshd refuses to start without its privilege-separation directory,
        // which only the distribution's service unit creates.
        fs::create_dir_all("/run/sshd").expect("cannot create /run/sshd (sshd needs it)");

        let dir = tempfile::Builder::new()
            .prefix("changeover-sshd-")
            .tempdir()
            .expect("cannot create a temp dir for the ssh fleet");
        let client_key = dir.path().join("client_ed25519");
        generate_key(&keygen, &client_key, "changeover-test-client");

        let mut hosts = Vec::with_capacity(count);
        let mut host_keys = Vec::with_capacity(count);
        for n in 1..=count {
            let name = format!("web-{n}");
            let host_dir = dir.path().join("hosts").join(&name);
            fs::create_dir_all(&host_dir).expect("cannot create a host directory");
            let host_key = dir.path().join(format!("host_{n}_ed25519"));
            generate_key(&keygen, &host_key, &name);
            host_keys.push(host_key);
            hosts.push(FleetHost {
                name,
                address: host_address(n),
                port: 0,
                dir: host_dir,
            });
        }

        let mut fleet = SshFleet {
            ssh_config: dir.path().join("ssh_config"),
            known_hosts: dir.path().join("known_hosts"),
            client_key,
            dir,
            hosts,
            servers: Vec::new(),
            bind: options.bind,
        };

        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port_on_all(&fleet.hosts);
            for host in &mut fleet.hosts {
                host.port = port;
            }
            match fleet.start_servers(&launcher, &host_keys) {
                Ok(()) => {
                    fleet.write_known_hosts();
                    fleet.write_ssh_config(&fleet.ssh_config, &fleet.known_hosts);
                    return fleet;
                }
                Err(failure) => {
                    fleet.kill_all();
                    last_failure = failure;
                }
            }
        }
        panic!("cannot start the ssh fleet after {START_ATTEMPTS} attempts: {last_failure}");
    }

    pub fn hosts(&self) -> &[FleetHost] {
        &self.hosts
    }

    /// The ssh client config to pass as `[ssh] config_file` (`ssh -F`):
    /// port, user root, the client key, the fleet's `known_hosts`, strict
    /// host-key checking, batch mode.
    pub fn ssh_config_path(&self) -> &Path {
        &self.ssh_config
    }

    /// The `known_hosts` file with every host's real key.
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// The path every host shows its own directory at, if the fleet was
    /// built with [`SshFleetBuilder::bind_per_host`].
    pub fn shared_path(&self) -> Option<&Path> {
        self.bind.as_ref().map(|b| b.shared.as_path())
    }

    /// Run `command` with the system `ssh` on host `index` (0-based), as
    /// the product would (the fleet's ssh config, strict host keys).
    pub fn ssh(&self, index: usize, command: &str) -> std::process::Output {
        let ssh = tools::require("ssh", "openssh-client");
        Command::new(ssh)
            .arg("-F")
            .arg(&self.ssh_config)
            // `--` before the host: nothing after it is read as an option.
            .arg("--")
            .arg(&self.hosts[index].address)
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ssh: {e}"))
    }

    /// The private key the servers accept.
    pub fn client_key_path(&self) -> &Path {
        &self.client_key
    }

    /// The fleet's temp dir (keys, configs, logs, host directories).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Write another client config, identical to [`ssh_config_path`] except
    /// that it trusts `known_hosts` instead: for tests that prove a wrong or
    /// missing host key is refused.
    ///
    /// [`ssh_config_path`]: SshFleet::ssh_config_path
    pub fn write_ssh_config(&self, path: &Path, known_hosts: &Path) {
        let port = self.hosts[0].port;
        let config = format!(
            "Host {patterns}\n\
             \x20 Port {port}\n\
             \x20 User root\n\
             \x20 IdentityFile {key}\n\
             \x20 IdentitiesOnly yes\n\
             \x20 UserKnownHostsFile {known_hosts}\n\
             \x20 GlobalKnownHostsFile /dev/null\n\
             \x20 StrictHostKeyChecking yes\n\
             \x20 BatchMode yes\n\
             \x20 ControlMaster no\n",
            patterns = (1..=self.hosts.len().div_ceil(254))
                .map(|k| format!("127.0.{k}.*"))
                .collect::<Vec<_>>()
                .join(" "),
            key = self.client_key.display(),
            known_hosts = known_hosts.display(),
        );
        fs::write(path, config)
            .unwrap_or_else(|e| panic!("cannot write ssh config {}: {e}", path.display()));
    }

    /// The `known_hosts` line (`[127.0.1.N]:PORT ssh-ed25519 AAAA…`) that
    /// trusts host `index` (0-based).
    pub fn known_hosts_line(&self, index: usize) -> String {
        let host = &self.hosts[index];
        let key = self
            .dir
            .path()
            .join(format!("host_{}_ed25519.pub", index + 1));
        let public = fs::read_to_string(&key)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", key.display()));
        // Drop the comment: only "type base64" belongs after the host pattern.
        let mut fields = public.split_whitespace();
        let (kind, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        format!("[{}]:{} {kind} {blob}", host.address, host.port)
    }

    /// Kill host `index`'s (0-based) `sshd`: new connections to it are
    /// refused. Connections already open stay up, as after a graceful sshd
    /// restart.
    pub fn stop_host(&mut self, index: usize) {
        if let Some(mut child) = self.servers.get_mut(index).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Take host `index` off the network as far as SSH goes: kill its
    /// `sshd` and every session process it forked, so open connections
    /// (an ssh master's included) drop and new ones are refused.
    pub fn drop_host(&mut self, index: usize) {
        let Some(mut child) = self.servers.get_mut(index).and_then(Option::take) else {
            return;
        };
        let root = child.id();
        let mut doomed = vec![root];
        // Descendants, from /proc (sshd forks a process per connection).
        let mut frontier = vec![root];
        while let Some(parent) = frontier.pop() {
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                // pid (comm) state ppid …; comm may hold spaces: after the last ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(parent) && !doomed.contains(&pid) {
                    doomed.push(pid);
                    frontier.push(pid);
                }
            }
        }
        for pid in doomed.iter().skip(1) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn start_servers(&mut self, launcher: &Launcher, host_keys: &[PathBuf]) -> Result<(), String> {
        // `SetEnv SHLVL=1`: bash, root's login shell, sources ~/.bashrc
        // for every command sshd runs (it checks SSH_CLIENT and SHLVL < 2),
        // and a machine's .bashrc may do anything (pyenv init here: ~250 ms
        // of CPU per command). The fake hosts run the commands as a bare
        // `bash -c` would, so the tests time changeover, not the rc file.
        for (i, host) in self.hosts.iter().enumerate() {
            let config = self.dir.path().join(format!("sshd_config_{}", i + 1));
            let sshd_config = format!(
                "ListenAddress {address}:{port}\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PidFile {pid}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\n\
                 AllowStreamLocalForwarding yes\n\
                 SetEnv SHLVL=1\n\
                 LogLevel ERROR\n",
                address = host.address,
                port = host.port,
                host_key = host_keys[i].display(),
                authorized = self.client_key.with_extension("pub").display(),
                pid = self
                    .dir
                    .path()
                    .join(format!("sshd_{}.pid", i + 1))
                    .display(),
            );
            fs::write(&config, sshd_config)
                .map_err(|e| format!("cannot write sshd config: {e}"))?;
            let log_path = self.log_path(i);
            let log = fs::File::create(&log_path)
                .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
            let mut command = match &launcher.namespace {
                Some(Namespace {
                    unshare,
                    mount,
                    bind,
                }) => {
                    // unshare(1) without --fork execs its command, so the
                    // child is (after sh's exec) sshd itself and kill() on
                    // it stops the server. Paths travel as positional
                    // arguments, never spliced into the script.
                    let mut c = Command::new(unshare);
                    c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                        .arg(r#""$1" --bind "$2" "$3" && exec "$4" -D -e -f "$5""#)
                        .arg("sh")
                        .arg(mount)
                        .arg(&bind.sources[i])
                        .arg(&bind.shared)
                        .arg(&launcher.sshd)
                        .arg(&config);
                    c
                }
                None => {
                    let mut c = Command::new(&launcher.sshd);
                    c.arg("-D").arg("-e").arg("-f").arg(&config);
                    c
                }
            };
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", launcher.sshd.display()))?;
            self.servers.push(Some(child));
        }
        for i in 0..self.hosts.len() {
            self.wait_listening(i)?;
        }
        Ok(())
    }

    fn wait_listening(&mut self, index: usize) -> Result<(), String> {
        let host = &self.hosts[index];
        let addr: SocketAddr = format!("{}:{}", host.address, host.port)
            .parse()
            .expect("fleet addresses are IPv4");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            let child = self.servers[index].as_mut().expect("started above");
            if let Ok(Some(status)) = child.try_wait() {
                let log = fs::read_to_string(self.log_path(index)).unwrap_or_default();
                return Err(format!(
                    "sshd for {} ({addr}) exited with {status}: {}",
                    host.name,
                    log.trim()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sshd for {} does not accept connections on {addr} after {START_DEADLINE:?}",
                    host.name
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_known_hosts(&self) {
        let mut text = String::new();
        for i in 0..self.hosts.len() {
            let _ = writeln!(text, "{}", self.known_hosts_line(i));
        }
        fs::write(&self.known_hosts, text).expect("cannot write known_hosts");
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("sshd_{}.log", index + 1))
    }

    fn kill_all(&mut self) {
        for mut child in self.servers.drain(..).flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SshFleet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn generate_key(keygen: &Path, path: &Path, comment: &str) {
    let output = Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", keygen.display()));
    assert!(
        output.status.success(),
        "ssh-keygen failed for {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// A port that is free on every host address at once: picked by the kernel
/// on the first address, then checked on the others.
fn free_port_on_all(hosts: &[FleetHost]) -> u16 {
    'pick: for _ in 0..100 {
        let first = TcpListener::bind((hosts[0].address.as_str(), 0))
            .unwrap_or_else(|e| panic!("cannot bind on {}: {e}", hosts[0].address));
        let port = first.local_addr().expect("bound").port();
        let mut held = vec![first];
        for host in &hosts[1..] {
            match TcpListener::bind((host.address.as_str(), port)) {
                Ok(listener) => held.push(listener),
                Err(_) => continue 'pick,
            }
        }
        return port;
    }
    panic!(
        "cannot find a port free on all of {} ..= {}",
        hosts[0].address,
        hosts[hosts.len() - 1].address
    );
}
