//! The "front-end tier": N fake hosts, each with its own REAL HAProxy in
//! front of K app instances on that host, and a global HAProxy in front of
//! the per-host ones.
//!
//! Every host's `sshd` runs in a mount namespace of its own in which that
//! host's HAProxy directory is bind-mounted onto one shared path
//! ([`FrontTier::shared_socket`]), so over SSH every host shows the same
//! socket path with a different HAProxy behind it, as separate machines do.
//! Outside the fleet that path is an empty directory: a product that talked
//! to it locally instead of over SSH would find nothing there.
//!
//! The tier starts no app: the instances' addresses are reserved
//! ([`FrontTier::instance_addr`]) and the caller starts whatever listens
//! there (the demo app, over SSH or not), then [`FrontTier::wait_all_up`].
//!
//! ```no_run
//! use changeover_testkit::frontfleet::FrontTier;
//! let tier = FrontTier::builder(6).instances(3).weight(37).start();
//! // ... start an HTTP server with `GET /health` on every tier.instance_addr(i, k) ...
//! tier.wait_all_up(std::time::Duration::from_secs(20));
//! let sampler = tier.sampler();
//! // ... roll ...
//! let report = sampler.finish();
//! assert!(report.max_out_on_one_host <= 1, "{report}");
//! ```

use crate::haproxy::{self, Haproxy};
use crate::sshd::{FleetHost, SshFleet};
use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The backend of every per-host HAProxy.
pub const BACKEND: &str = "pxapp";
/// The backend of the global HAProxy (one server per host, named like it).
pub const GLOBAL_BACKEND: &str = "hosts";
/// HTTP checks fast enough that a restart shows within a few hundred
/// milliseconds; `fall 3` (and [`CHECK_TIMEOUT`]) so that a loaded test
/// machine answering a check late is not a flap that the sampler would count
/// as a unit out.
pub const CHECK: &str = "check inter 100ms fastinter 100ms downinter 100ms rise 2 fall 3";
/// Without it HAProxy gives a check only `inter` (100 ms) to answer.
pub const CHECK_TIMEOUT: &str = "timeout check 1s";

/// The per-host HAProxy's member name for instance `k` (1-based).
pub fn server_name(k: usize) -> String {
    format!("pxApp_{k}")
}

/// Options for [`FrontTier`]; [`FrontTierBuilder::start`] runs it.
#[derive(Debug, Clone)]
pub struct FrontTierBuilder {
    hosts: usize,
    instances: usize,
    weight: Option<u32>,
}

impl FrontTierBuilder {
    /// App instances per host (default 3).
    pub fn instances(mut self, k: usize) -> Self {
        assert!((1..=20).contains(&k), "1 to 20 instances per host, not {k}");
        self.instances = k;
        self
    }

    /// Give every per-host server this weight instead of HAProxy's default
    /// (1): proves a balancer change puts back the weight it found.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Start the per-host HAProxies, the `sshd`s in their namespaces and the
    /// global HAProxy. Returns without waiting for any server to be UP (no
    /// app runs yet). Panics with the reason on any failure.
    pub fn start(self) -> FrontTier {
        let dir = tempfile::Builder::new()
            .prefix("co-front-")
            .tempdir()
            .expect("cannot create a temp dir for the front-end tier");
        // Where every host sees its own HAProxy's directory; the name looks
        // like production's /run/haproxy and stays short (unix socket paths
        // are limited to ~100 bytes).
        let shared = dir.path().join("run").join("haproxy");
        let addresses: Vec<String> = (1..=self.hosts).map(|n| format!("127.0.1.{n}")).collect();
        // Instances on first_port .. first_port+K-1, the host's HAProxy
        // frontend on first_port+K: one block, free on every host.
        let first_port = free_block_on_all(&addresses, self.instances as u16 + 1);
        let host_port = first_port + self.instances as u16;

        let host_lbs: Vec<Haproxy> = addresses
            .iter()
            .map(|address| {
                let mut builder = Haproxy::builder()
                    .backend(BACKEND)
                    .frontend_addr(socket_addr(address, host_port))
                    .check(CHECK)
                    .backend_line("option httpchk GET /health")
                    .backend_line(CHECK_TIMEOUT);
                for k in 1..=self.instances {
                    let addr = format!("{address}:{}", first_port + k as u16 - 1);
                    builder = match self.weight {
                        Some(w) => builder.server_weighted(&server_name(k), &addr, w),
                        None => builder.server(&server_name(k), &addr),
                    };
                }
                builder.start()
            })
            .collect();

        let ssh = SshFleet::builder(self.hosts)
            .bind_per_host(&shared, |i| host_lbs[i].dir().to_path_buf())
            .start();

        let mut global = Haproxy::builder()
            .backend(GLOBAL_BACKEND)
            .check(CHECK)
            .backend_line("option httpchk GET /health")
            .backend_line(CHECK_TIMEOUT);
        for host in ssh.hosts() {
            global = global.server(&host.name, &format!("{}:{host_port}", host.address));
        }
        let global = global.start();

        let socket_name = host_lbs[0]
            .socket_path()
            .file_name()
            .expect("haproxy's socket has a file name")
            .to_owned();
        FrontTier {
            ssh,
            host_lbs,
            global,
            shared_socket: shared.join(socket_name),
            first_port,
            host_port,
            instances: self.instances,
            dir,
        }
    }
}

/// A running front-end tier; everything is killed on drop (the `sshd`s
/// first, then the HAProxies, then the temp dir goes).
#[derive(Debug)]
pub struct FrontTier {
    ssh: SshFleet,
    host_lbs: Vec<Haproxy>,
    global: Haproxy,
    shared_socket: PathBuf,
    first_port: u16,
    host_port: u16,
    instances: usize,
    dir: TempDir,
}

impl FrontTier {
    /// `hosts` hosts (1 to 254) on 127.0.1.1 ..= 127.0.1.hosts, 3 instances each.
    pub fn builder(hosts: usize) -> FrontTierBuilder {
        assert!(
            (1..=254).contains(&hosts),
            "a front-end tier has 1 to 254 hosts, not {hosts}"
        );
        FrontTierBuilder {
            hosts,
            instances: 3,
            weight: None,
        }
    }

    pub fn hosts(&self) -> &[FleetHost] {
        self.ssh.hosts()
    }

    /// The fleet of `sshd`s (its ssh config is the product's `config_file`).
    pub fn ssh(&self) -> &SshFleet {
        &self.ssh
    }

    /// Host `i`'s (0-based) own HAProxy, reached through its real socket
    /// path, outside any namespace.
    pub fn host_lb(&self, i: usize) -> &Haproxy {
        &self.host_lbs[i]
    }

    /// The HAProxy in front of the per-host ones: where the traffic goes in.
    pub fn global(&self) -> &Haproxy {
        &self.global
    }

    /// The admin socket path as seen on every host (over SSH): the same for
    /// all of them, a different HAProxy behind it on each.
    pub fn shared_socket(&self) -> &Path {
        &self.shared_socket
    }

    /// Instance `k` (1-based) of every host listens on `first_port + k - 1`.
    pub fn first_port(&self) -> u16 {
        self.first_port
    }

    /// Where every per-host HAProxy's frontend listens (on the host's address).
    pub fn host_port(&self) -> u16 {
        self.host_port
    }

    pub fn instances(&self) -> usize {
        self.instances
    }

    /// Instance `k` (1-based) of host `i` (0-based).
    pub fn instance_addr(&self, i: usize, k: usize) -> SocketAddr {
        assert!((1..=self.instances).contains(&k), "no instance {k}");
        socket_addr(&self.hosts()[i].address, self.first_port + k as u16 - 1)
    }

    /// A temp dir of the tier's own, for the caller's files (app state,
    /// configs); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Wait until every instance is UP in its host's HAProxy and every host
    /// is UP in the global one; panics with what is not after `timeout`.
    pub fn wait_all_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut not_up = Vec::new();
            for (host, lb) in self.hosts().iter().zip(&self.host_lbs) {
                for row in lb.show_stat().into_iter().filter(|r| r.backend == BACKEND) {
                    if row.status != "UP" {
                        not_up.push(format!("{}/{} {}", host.name, row.name, row.status));
                    }
                }
            }
            for row in self.global.show_stat() {
                if row.backend == GLOBAL_BACKEND && row.status != "UP" {
                    not_up.push(format!("global/{} {}", row.name, row.status));
                }
            }
            if not_up.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("not UP after {timeout:?}: {}", not_up.join(", "));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start sampling every per-host HAProxy in a thread (see [`OutSampler`]).
    pub fn sampler(&self) -> OutSampler {
        OutSampler::start(
            self.hosts()
                .iter()
                .zip(&self.host_lbs)
                .map(|(h, lb)| (h.name.clone(), lb.socket_path().to_path_buf()))
                .collect(),
        )
    }
}

/// How often the sampler reads every host: at most 100 ms between samples,
/// so that no unit can go out and back unseen (a restart takes longer).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);
/// The sampler stops by itself after this long or this many samples, so a
/// test that forgets to stop it cannot spin forever.
pub const SAMPLE_MAX_DURATION: Duration = Duration::from_secs(180);
pub const SAMPLE_MAX_COUNT: u64 = 4_000;

/// What the sampler saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutReport {
    pub samples: u64,
    /// The most units out of service at one moment, fleet-wide.
    pub max_out_total: usize,
    /// The most units out of service at one moment on one host.
    pub max_out_on_one_host: usize,
    /// Whether any unit was ever seen out (else the sampler proved nothing).
    pub ever_out: bool,
    /// The units of the sample with the most out fleet-wide, and of the one
    /// with the most out on one host: `web-1/pxApp_2 DRAIN w0`.
    pub worst_total: Vec<String>,
    pub worst_host: Vec<String>,
    /// Reads that failed (their samples are skipped), and the first error.
    pub read_errors: u64,
    pub first_error: Option<String>,
}

impl fmt::Display for OutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} samples; at most {} out at once {:?}; at most {} out on one host {:?}; ever out: {}; {} read errors",
            self.samples,
            self.max_out_total,
            self.worst_total,
            self.max_out_on_one_host,
            self.worst_host,
            self.ever_out,
            self.read_errors
        )?;
        if let Some(e) = &self.first_error {
            write!(f, " (first: {e})")?;
        }
        Ok(())
    }
}

/// Reads `show stat` of every per-host HAProxy (through the real socket
/// paths, with the testkit's own parser, not the product's) every
/// [`SAMPLE_INTERVAL`] and records which units are out of service: weight 0
/// or a status not starting with "UP" ("UP 1/2", a check in transition,
/// still serves).
///
/// One host's answer is an atomic snapshot, so the per-host count is exact.
/// The hosts are read one after another, though, and a sample that
/// straddled a unit going back in on one host and another going out on
/// the next would count both. So each sample reads every host twice, back
/// to back, and counts fleet-wide only the units out in both passes: each
/// of them was out both before and after the moment between the passes (a
/// unit goes out once per rollout), so they were out together at that
/// moment. A unit is out for far longer than a pass takes, so nothing real
/// is missed.
#[derive(Debug)]
pub struct OutSampler {
    stop: Arc<AtomicBool>,
    /// Samples taken so far, for [`OutSampler::wait_samples`].
    taken: Arc<AtomicU64>,
    handle: Option<JoinHandle<OutReport>>,
}

impl OutSampler {
    /// Sample `(host name, admin socket)` pairs until [`OutSampler::finish`]
    /// or the bounds ([`SAMPLE_MAX_DURATION`], [`SAMPLE_MAX_COUNT`]).
    pub fn start(hosts: Vec<(String, PathBuf)>) -> OutSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let taken = Arc::new(AtomicU64::new(0));
        let (flag, counter) = (stop.clone(), taken.clone());
        let handle = std::thread::spawn(move || {
            let mut report = OutReport::default();
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed)
                && started.elapsed() < SAMPLE_MAX_DURATION
                && report.samples < SAMPLE_MAX_COUNT
            {
                match (read_pass(&hosts), read_pass(&hosts)) {
                    (Ok(first), Ok(second)) => record(&mut report, &first, &second),
                    (Err(e), _) | (_, Err(e)) => {
                        report.read_errors += 1;
                        report.first_error.get_or_insert(e);
                    }
                }
                counter.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(SAMPLE_INTERVAL);
            }
            report
        });
        OutSampler {
            stop,
            taken,
            handle: Some(handle),
        }
    }

    /// Block until `more` further samples have been taken (read or failed).
    /// With `more >= 2`, a state set before this call has certainly been
    /// sampled (the first may have started before it). Panics after `timeout`.
    pub fn wait_samples(&self, more: u64, timeout: Duration) {
        let target = self.taken.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + timeout;
        while self.taken.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "the sampler took fewer than {more} samples in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop sampling and report.
    pub fn finish(mut self) -> OutReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("finish runs once")
            .join()
            .expect("the sampler thread panicked")
    }
}

impl Drop for OutSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Per host, the units out of service: `web-1/pxApp_2 DRAIN w0`.
fn read_pass(hosts: &[(String, PathBuf)]) -> Result<Vec<BTreeSet<String>>, String> {
    hosts
        .iter()
        .map(|(name, socket)| {
            Ok(haproxy::show_stat_at(socket)?
                .into_iter()
                .filter(|r| r.backend == BACKEND)
                .filter(|r| !r.status.starts_with("UP") || r.weight == Some(0))
                .map(|r| {
                    let weight = r.weight.map_or("?".to_string(), |w| w.to_string());
                    format!("{name}/{} {} w{weight}", r.name, r.status)
                })
                .collect())
        })
        .collect()
}

fn record(report: &mut OutReport, first: &[BTreeSet<String>], second: &[BTreeSet<String>]) {
    report.samples += 1;
    for pass in [first, second] {
        for host in pass {
            report.ever_out |= !host.is_empty();
            if host.len() > report.max_out_on_one_host {
                report.max_out_on_one_host = host.len();
                report.worst_host = host.iter().cloned().collect();
            }
        }
    }
    // The same unit may change status between passes (DRAIN → DOWN), so
    // match by unit name, not by the whole description.
    let unit = |s: &String| s.split(' ').next().unwrap_or("").to_string();
    let both: Vec<String> = first
        .iter()
        .zip(second)
        .flat_map(|(a, b)| {
            let in_b: BTreeSet<String> = b.iter().map(unit).collect();
            a.iter()
                .filter(|s| in_b.contains(&unit(s)))
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    if both.len() > report.max_out_total {
        report.max_out_total = both.len();
        report.worst_total = both;
    }
}

fn socket_addr(address: &str, port: u16) -> SocketAddr {
    format!("{address}:{port}")
        .parse()
        .expect("fleet addresses are IPv4")
}

/// `len` consecutive ports free on every address. Picked at random below
/// Linux's default ephemeral range (32768..), where the kernel never hands
/// out a port for a `bind(0)` or an outgoing connection, so parallel tests
/// (which take ephemeral ports) cannot take them between this check and the
/// servers binding; tests picking blocks here rarely meet at random.
fn free_block_on_all(addresses: &[String], len: u16) -> u16 {
    const LOW: u64 = 20_000;
    const HIGH: u64 = 32_000;
    for _ in 0..200 {
        let first = (LOW + RandomState::new().build_hasher().finish() % (HIGH - LOW)) as u16;
        let free = (first..first + len).all(|port| {
            addresses
                .iter()
                .all(|a| TcpListener::bind(socket_addr(a, port)).is_ok())
        });
        if free {
            return first;
        }
    }
    panic!("cannot find {len} consecutive ports free on all of {addresses:?}");
}
