//! Real-fleet benchmark (issue 13): N real hosts (one sshd + one demo app
//! each on 127.0.x.y), a real HAProxy in front, steady load through it, and
//! a full rollout by changeover with `batch` and then with `window` of the
//! same bound; then, when `ansible-playbook` is installed, the same rollout
//! by Ansible (`serial` + `community.general.haproxy` with drain, the play
//! in `benches/ansible/`), with the ratio. Boot times are jittered (0.5–2 s
//! by default, the same for every tool and run: a hash of the address).
//!
//! Prints, per run: preflight time (spawn to the go/no-go), the rollout's
//! wall time, the floor (what no orchestrator can beat: Σ over waves of the
//! slowest unit's steps + health, or for `window` the same unit times packed
//! into the bound's slots in start order), overhead = rollout − floor, peak
//! RSS of changeover and of its ssh processes, the most servers out at once
//! (sampled from HAProxy every 50 ms), and the load's requests and failures.
//! A benchmark, not a test: it asserts only that each rollout succeeded.
//!
//! Run: `cargo bench -p changeover --bench fleet -- --hosts 100`
//! Options: `--hosts N` (8), `--bound N` (10 %, at least 2), `--boot MIN..MAX`
//! (`500ms..2s`), `--runs batch,window,ansible` (all), `--kex ALGS` (the
//! ssh `KexAlgorithms` for every tool, e.g. `curve25519-sha256`), `--hold` (set the
//! fleet up, print its config and keep it until stdin closes: for profiling),
//! `--shape front` (the front-end tier: 6 hosts × 3 instances behind
//! per-host HAProxies, groups of 35 %, against the classic weight-0/pause
//! Ansible play; see `fleet/front.rs`).

#[path = "fleet/front.rs"]
mod front;
#[path = "fleet/measure.rs"]
mod measure;

use changeover_testkit::haproxy::Haproxy;
use changeover_testkit::load::{LoadGen, LoadOptions};
use changeover_testkit::sshd::SshFleet;
use measure::{Figures, Run};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_changeover");

/// Restart one app instance with a jittered boot time: stop the old process
/// gracefully, start the new version detached. The boot time is
/// `BOOT_MIN_MS` plus a hash of the listen address modulo `BOOT_SPAN_MS +
/// 1`: jittered across hosts, the same on every run, so every tool (and
/// `batch` and `window`) meets the same boot times.
pub const APP_CTL: &str = r#"#!/bin/sh
set -eu
dir=$1 listen=$2 version=$3
running() {
  kill -0 "$1" 2>/dev/null && ! grep -q ') Z ' "/proc/$1/stat" 2>/dev/null
}
if [ -f "$dir/app.pid" ]; then
  pid=$(cat "$dir/app.pid")
  if kill -TERM "$pid" 2>/dev/null; then
    i=0
    while running "$pid"; do
      i=$((i+1)); [ "$i" -gt 400 ] && kill -KILL "$pid" 2>/dev/null
      sleep 0.02
    done
  fi
  rm -f "$dir/app.pid"
fi
h=$(printf '%s' "$listen" | cksum | cut -d' ' -f1)
boot=$(( ${BOOT_MIN_MS:-0} + h % (${BOOT_SPAN_MS:-0} + 1) ))
setsid "$CHANGEOVER_BIN" demo-app --listen "$listen" --version "$version" \
  --boot-time "${boot}ms" --think-time 5ms >>"$dir/app.log" 2>&1 </dev/null &
echo $! > "$dir/app.pid"
echo "$version" >> "$dir/deploys"
"#;

pub struct Options {
    pub hosts: usize,
    pub bound: Option<usize>,
    pub boot_min: Duration,
    pub boot_max: Duration,
    pub runs: Vec<String>,
    pub hold: bool,
    /// The front-end tier shape instead of N back-end hosts.
    pub front: bool,
    /// `KexAlgorithms` for every tool's ssh (None: OpenSSH's default).
    pub kex: Option<String>,
}

fn parse_args() -> Options {
    let mut o = Options {
        hosts: 8,
        bound: None,
        boot_min: Duration::from_millis(500),
        boot_max: Duration::from_secs(2),
        runs: vec!["batch".into(), "window".into(), "ansible".into()],
        hold: false,
        front: false,
        kex: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            "--hosts" => o.hosts = value("--hosts").parse().expect("--hosts N"),
            "--bound" => o.bound = Some(value("--bound").parse().expect("--bound N")),
            "--boot" => {
                let v = value("--boot");
                let (a, b) = v.split_once("..").expect("--boot MIN..MAX, e.g. 500ms..2s");
                o.boot_min = humantime::parse_duration(a).expect("--boot MIN");
                o.boot_max = humantime::parse_duration(b).expect("--boot MAX");
                assert!(o.boot_min <= o.boot_max, "--boot MIN..MAX with MIN ≤ MAX");
            }
            "--runs" => o.runs = value("--runs").split(',').map(str::to_string).collect(),
            "--hold" => o.hold = true,
            "--shape" => match value("--shape").as_str() {
                "front" => o.front = true,
                "backend" => o.front = false,
                other => panic!("--shape front|backend, not {other}"),
            },
            "--kex" => o.kex = Some(value("--kex")),
            // `cargo bench` passes --bench; harness flags mean nothing here.
            "--bench" => {}
            other => panic!("unknown option {other} (see the header of benches/fleet.rs)"),
        }
    }
    o
}

fn main() {
    let opts = parse_args();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if opts.front {
        front::run(&rt, &opts);
    } else {
        backend(&rt, &opts);
    }
}

/// The back-end shape: N hosts, one app each, one global HAProxy.
fn backend(rt: &tokio::runtime::Runtime, opts: &Options) {
    let bound = opts
        .bound
        .unwrap_or_else(|| (opts.hosts / 10).max(2))
        .min(opts.hosts);
    println!(
        "fleet bench: {} hosts, bound {bound}, boot {:?}..{:?}, on {} cores",
        opts.hosts,
        opts.boot_min,
        opts.boot_max,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let setup = Instant::now();
    let fleet = Fleet::start(
        opts.hosts,
        opts.boot_min,
        opts.boot_max,
        opts.kex.as_deref(),
    );
    println!(
        "  set up in {:.1} s (sshd, apps on v1, HAProxy all UP)",
        setup.elapsed().as_secs_f64()
    );

    if opts.hold {
        // For profiling by hand: the fleet stays up until stdin closes.
        println!(
            "  holding: config {} (batch = {bound}); ssh config {}; close stdin to stop",
            fleet.config(&format!("batch = {bound}")).display(),
            fleet.ssh_config.display()
        );
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        return;
    }
    let mut results: Vec<(String, Figures)> = Vec::new();
    for (i, run) in opts.runs.iter().enumerate() {
        let version = format!("v{}", i + 2);
        let figures = match run.as_str() {
            "batch" | "window" => {
                let strategy = if run == "batch" {
                    format!("batch = {bound}")
                } else {
                    format!("window = {bound}")
                };
                let config = fleet.config(&strategy);
                fleet.measured(rt, || {
                    Run::changeover(
                        BIN,
                        &config,
                        &["deploy", "--version", &version],
                        &fleet.ssh_config,
                        bound,
                    )
                })
            }
            "ansible" => {
                if !measure::ansible_installed() {
                    println!("  ansible: `ansible-playbook` not installed (pip install ansible): skipped");
                    continue;
                }
                fleet.measured(rt, || fleet.ansible(&version, bound))
            }
            other => panic!("unknown run {other}: batch, window or ansible"),
        };
        let all_new = fleet.versions().iter().all(|v| v == &version);
        assert!(
            all_new,
            "{run}: not every host answers {version} after the rollout"
        );
        figures.print(run);
        results.push((run.clone(), figures));
    }
    measure::compare(&results);
}

/// The hosts, their apps and HAProxy; killed on drop.
pub struct Fleet {
    pub haproxy: Haproxy,
    pub ssh: SshFleet,
    pub dir: tempfile::TempDir,
    pub ctl: PathBuf,
    pub port: u16,
    pub ssh_config: PathBuf,
    boot: (Duration, Duration),
}

impl Fleet {
    fn start(hosts: usize, boot_min: Duration, boot_max: Duration, kex: Option<&str>) -> Fleet {
        let dir = tempfile::Builder::new()
            .prefix("co-bench")
            .tempdir()
            .expect("tempdir");
        let ssh = SshFleet::start(hosts);
        let port = free_port(&ssh);
        // Every tool's ssh reads this config: the fleet's, with the key
        // exchange asked for.
        let ssh_config = dir.path().join("ssh_config");
        let base = std::fs::read_to_string(ssh.ssh_config_path()).unwrap();
        let text = match kex {
            Some(k) => base.replacen('\n', &format!("\n  KexAlgorithms {k}\n"), 1),
            None => base,
        };
        std::fs::write(&ssh_config, text).unwrap();
        let ctl = dir.path().join("app-ctl.sh");
        std::fs::write(&ctl, APP_CTL).unwrap();
        measure::make_executable(&ctl);
        // Checks as a production config has them: every 500 ms (100 ms
        // when a server changes state), up after 2 good answers.
        let mut builder = Haproxy::builder()
            .backend("app")
            .check("check inter 500ms fastinter 100ms downinter 500ms rise 2 fall 2")
            .backend_line("option httpchk GET /health")
            .backend_line("timeout check 1s");
        for h in ssh.hosts() {
            builder = builder.server(&h.name, &format!("{}:{port}", h.address));
        }
        let fleet = Fleet {
            haproxy: builder.start(),
            ssh,
            dir,
            ctl,
            port,
            ssh_config,
            boot: (boot_min, boot_max),
        };
        for h in fleet.ssh.hosts() {
            std::fs::create_dir_all(fleet.app_dir(&h.name)).unwrap();
            let out = Command::new(&fleet.ctl)
                .arg(fleet.app_dir(&h.name))
                .arg(format!("{}:{port}", h.address))
                .arg("v1")
                .env("CHANGEOVER_BIN", BIN)
                .output()
                .unwrap();
            assert!(out.status.success(), "app-ctl: {out:?}");
        }
        for h in fleet.ssh.hosts() {
            fleet
                .haproxy
                .wait_for_status(&h.name, "UP", Duration::from_secs(60));
        }
        fleet
    }

    fn app_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join("apps").join(host)
    }

    fn boot_env(&self) -> String {
        format!(
            "BOOT_MIN_MS={} BOOT_SPAN_MS={}",
            self.boot.0.as_millis(),
            (self.boot.1 - self.boot.0).as_millis()
        )
    }

    /// changeover's config for this fleet with `strategy`.
    fn config(&self, strategy: &str) -> PathBuf {
        use std::fmt::Write as _;
        let mut s = format!(
            "app = \"bench\"\nstate_dir = \"{state}\"\n\n[ssh]\nconfig_file = \"{ssh}\"\nconnect_timeout = \"10s\"\n\n",
            state = self.dir.path().join("state").display(),
            ssh = self.ssh_config.display(),
        );
        for h in self.ssh.hosts() {
            let _ = write!(
                s,
                "[[hosts]]\nname = \"{}\"\naddress = \"{}\"\n\n",
                h.name, h.address
            );
        }
        let _ = write!(
            s,
            "[[load_balancers]]\nkind = \"haproxy\"\nsocket = \"{socket}\"\nbackend = \"app\"\nserver = \"{{host}}\"\n\n\
             [drain]\nmode = \"lb\"\ntimeout = \"30s\"\n\n\
             [deploy]\nrun = \"CHANGEOVER_BIN={bin} {env} {ctl} {apps}/{{host}} {{address}}:{port} {{version}}\"\ntimeout = \"60s\"\n\n\
             [health]\nhttp = \"http://{{address}}:{port}/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nhealthy_threshold = 2\ndeadline = \"60s\"\n\n\
             [strategy]\n{strategy}\n",
            socket = self.haproxy.socket_path().display(),
            bin = BIN,
            env = self.boot_env(),
            ctl = self.ctl.display(),
            apps = self.dir.path().join("apps").display(),
            port = self.port,
        );
        let path = self.dir.path().join("changeover.toml");
        std::fs::write(&path, s).unwrap();
        path
    }

    /// Run `body` under steady load with the out-of-service sampler, and
    /// add the load's and the sampler's figures to its own.
    fn measured(&self, rt: &tokio::runtime::Runtime, body: impl FnOnce() -> Figures) -> Figures {
        let load = rt.block_on(async {
            LoadGen::start(LoadOptions {
                rps: 100,
                max_duration: Duration::from_secs(1800),
                max_requests: 1_000_000,
                ..LoadOptions::new(self.haproxy.frontend_addr())
            })
        });
        let sampler = measure::OutSampler::start(
            self.haproxy.socket_path().to_path_buf(),
            self.ssh.hosts().len(),
        );
        let mut figures = body();
        (figures.max_out, figures.drain_lags, figures.sampled_every) = sampler.finish();
        let report = rt.block_on(load.stop());
        figures.requests = report.requests;
        figures.failures = report.failures;
        if report.failures > 0 {
            println!(
                "  failed requests by kind: {:?}; first: {:?}",
                report.failure_kinds,
                report.failure_samples.first()
            );
        }
        figures
    }

    /// The same rollout by Ansible: `serial: bound`, drain and disable
    /// with community.general.haproxy, the switch over SSH, wait for
    /// /health, enable and wait for UP.
    fn ansible(&self, version: &str, bound: usize) -> Figures {
        let switch = format!(
            "CHANGEOVER_BIN={BIN} {} {} {}/{{{{ inventory_hostname }}}} {{{{ ansible_host }}}}:{} {{{{ version }}}}",
            self.boot_env(),
            self.ctl.display(),
            self.dir.path().join("apps").display(),
            self.port
        );
        measure::ansible(
            &self.dir.path().join("ansible"),
            self.ssh.hosts(),
            &self.ssh_config,
            bound.max(5),
            &measure::playbook("rolling.yml"),
            &format!(
                "serial_bound={bound} version={version} haproxy_socket={} app_port={} switch_command='{switch}'",
                self.haproxy.socket_path().display(),
                self.port
            ),
        )
    }

    /// What each host's app answers on `/`.
    fn versions(&self) -> Vec<String> {
        self.ssh
            .hosts()
            .iter()
            .map(|h| measure::http_get(&format!("{}:{}", h.address, self.port), "/"))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for h in self.ssh.hosts() {
            if let Ok(pid) = std::fs::read_to_string(self.app_dir(&h.name).join("app.pid")) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
    }
}

/// A port free on every host's address.
fn free_port(ssh: &SshFleet) -> u16 {
    'pick: for _ in 0..100 {
        let first = TcpListener::bind((ssh.hosts()[0].address.as_str(), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut held = vec![first];
        for h in &ssh.hosts()[1..] {
            match TcpListener::bind((h.address.as_str(), port)) {
                Ok(l) => held.push(l),
                Err(_) => continue 'pick,
            }
        }
        return port;
    }
    panic!("no port free on every host address");
}
