//! What the fleet bench measures and how: a run's wall times from
//! changeover's own `--json` events (or an external tool's wall clock), peak
//! RSS from /proc, the most servers out of service from HAProxy's stats.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One rollout's figures.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Spawn to the go/no-go event (changeover only).
    pub preflight: Option<Duration>,
    /// deploy_started → deploy_finished (changeover), or the whole run.
    pub rollout: Duration,
    /// Spawn to exit.
    pub total: Duration,
    /// What no orchestrator can beat (changeover only, from its events).
    pub floor: Option<Duration>,
    /// Per wave: wave wall time − the slowest unit's steps + health.
    pub wave_overheads: Vec<Duration>,
    /// Median ms between consecutive phases of a unit, in phase order.
    pub phase_medians: Vec<(String, u64)>,
    pub rss_tool_kb: u64,
    pub rss_ssh_kb: u64,
    pub max_out: usize,
    /// Drain-to-disable lags seen by the sampler (± its period).
    pub drain_lags: Vec<Duration>,
    pub sampled_every: Duration,
    pub requests: u64,
    pub failures: u64,
}

impl Figures {
    pub fn overhead(&self) -> Option<Duration> {
        self.floor.map(|f| self.rollout.saturating_sub(f))
    }

    pub fn print(&self, name: &str) {
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        println!("  {name}:");
        if let Some(p) = self.preflight {
            println!("    preflight           {}", s(p));
        }
        println!("    rollout             {}", s(self.rollout));
        println!("    total (spawn→exit)  {}", s(self.total));
        if let (Some(floor), Some(over)) = (self.floor, self.overhead()) {
            println!("    floor               {}", s(floor));
            println!(
                "    overhead            {} ({:.1} % of the floor)",
                s(over),
                100.0 * over.as_secs_f64() / floor.as_secs_f64().max(1e-9)
            );
        }
        if !self.wave_overheads.is_empty() {
            let mut w = self.wave_overheads.clone();
            w.sort();
            println!(
                "    per-wave overhead   median {} ms, max {} ms ({} waves)",
                w[w.len() / 2].as_millis(),
                w[w.len() - 1].as_millis(),
                w.len()
            );
        }
        if !self.phase_medians.is_empty() {
            let parts: Vec<String> = self
                .phase_medians
                .iter()
                .map(|(p, ms)| format!("{p} {ms}"))
                .collect();
            println!("    phases (median ms)  {}", parts.join(", "));
        }
        println!(
            "    peak RSS            tool {:.1} MB, its ssh processes {:.1} MB",
            self.rss_tool_kb as f64 / 1024.0,
            self.rss_ssh_kb as f64 / 1024.0
        );
        println!("    most out at once    {}", self.max_out);
        if !self.drain_lags.is_empty() {
            let mut l = self.drain_lags.clone();
            l.sort();
            println!(
                "    0 sessions→disable  median {} ms, max {} ms ({} drains seen; sampled every {} ms)",
                l[l.len() / 2].as_millis(),
                l[l.len() - 1].as_millis(),
                l.len(),
                self.sampled_every.as_millis()
            );
        }
        println!(
            "    load                {} requests, {} failed",
            self.requests, self.failures
        );
    }
}

/// The table at the end: each run against changeover's batch run.
pub fn compare(results: &[(String, Figures)]) {
    let by = |name: &str| results.iter().find(|(n, _)| n == name).map(|(_, f)| f);
    if let (Some(b), Some(w)) = (by("batch"), by("window")) {
        println!(
            "  window vs batch: {:.2} s vs {:.2} s ({:.2}×)",
            w.total.as_secs_f64(),
            b.total.as_secs_f64(),
            b.total.as_secs_f64() / w.total.as_secs_f64()
        );
    }
    if let (Some(a), Some(b)) = (by("ansible"), by("batch")) {
        println!(
            "  changeover (batch) vs ansible: {:.2} s vs {:.2} s: {:.2}× faster",
            b.total.as_secs_f64(),
            a.total.as_secs_f64(),
            a.total.as_secs_f64() / b.total.as_secs_f64()
        );
    }
}

/// Whether `ansible-playbook` runs here.
pub fn ansible_installed() -> bool {
    Command::new("ansible-playbook")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One of the plays in `benches/ansible/`.
pub fn playbook(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/ansible")
        .join(name)
}

/// `playbook` by `ansible-playbook` over `hosts` (the inventory group
/// `fleet`), with `extra_vars`, in `dir`, with the fastest settings Ansible
/// offers so the comparison is fair: pipelining, persistent control
/// connections, `forks`, no fact gathering (the plays say so too).
pub fn ansible(
    dir: &Path,
    hosts: &[changeover_testkit::sshd::FleetHost],
    ssh_config: &Path,
    forks: usize,
    playbook: &Path,
    extra_vars: &str,
) -> Figures {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir).unwrap();
    let mut inventory = String::from("[fleet]\n");
    for h in hosts {
        let _ = writeln!(inventory, "{} ansible_host={}", h.name, h.address);
    }
    let _ = write!(
        inventory,
        "\n[fleet:vars]\nansible_user=root\nansible_python_interpreter=/usr/bin/python3\n\
         ansible_ssh_common_args='-F {}'\n",
        ssh_config.display()
    );
    std::fs::write(dir.join("inventory"), inventory).unwrap();
    let control = dir.join("cp");
    std::fs::write(
        dir.join("ansible.cfg"),
        format!(
            "[defaults]\nforks = {forks}\nhost_key_checking = False\ngathering = explicit\n\
             interpreter_python = /usr/bin/python3\n\
             [ssh_connection]\npipelining = True\nssh_args = -o ControlMaster=auto -o ControlPersist=60s\n\
             control_path_dir = {}\n",
            control.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("ansible-playbook");
    cmd.current_dir(dir)
        .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .arg("-i")
        .arg(dir.join("inventory"))
        .arg(playbook)
        .arg("-e")
        .arg(extra_vars);
    Run::external(
        cmd,
        vec![
            ssh_config.display().to_string(),
            control.display().to_string(),
        ],
    )
}

/// A run being measured.
pub struct Run;

impl Run {
    /// changeover with `--json`: times from its events.
    pub fn changeover(
        bin: &str,
        config: &Path,
        args: &[&str],
        ssh_config: &Path,
        bound: usize,
    ) -> Figures {
        let spawned = Instant::now();
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("--json")
            // BENCH_ARGS="-vv" adds global flags (with BENCH_EVENTS, the
            // log lands next to the events).
            .args(
                std::env::var("BENCH_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn changeover");
        let rss = RssSampler::start(child.id(), vec![ssh_config.display().to_string()]);
        let stderr = child.stderr.take().unwrap();
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let mut events = Events::default();
        // BENCH_EVENTS=FILE keeps the event stream, for a closer look.
        let mut keep = std::env::var_os("BENCH_EVENTS").map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("BENCH_EVENTS file")
        });
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(f) = keep.as_mut() {
                let _ = std::io::Write::write_all(f, format!("{line}\n").as_bytes());
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            events.add(&v, spawned.elapsed());
        }
        let status = child.wait().unwrap();
        let total = spawned.elapsed();
        let (rss_tool_kb, rss_ssh_kb) = rss.finish();
        let stderr = err_thread.join().unwrap();
        if let Some(p) = std::env::var_os("BENCH_EVENTS") {
            let mut p = std::path::PathBuf::from(p).into_os_string();
            p.push(".stderr");
            let _ = std::fs::write(p, &stderr);
        }
        assert!(
            status.success() && events.outcome.as_deref() == Some("success"),
            "changeover failed ({status}):\n{stderr}"
        );
        let mut f = events.figures(bound);
        f.total = total;
        f.rss_tool_kb = rss_tool_kb;
        f.rss_ssh_kb = rss_ssh_kb;
        f
    }

    /// Another tool: wall clock and RSS of its whole process tree.
    /// `needles`: what names its ssh processes (the ssh config, the control
    /// path: a master renames itself to `ssh: <control path> [mux]`).
    pub fn external(mut cmd: Command, needles: Vec<String>) -> Figures {
        let spawned = Instant::now();
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let rss = RssSampler::start(child.id(), needles);
        let out = child.wait_with_output().unwrap();
        let total = spawned.elapsed();
        let (rss_tool_kb, rss_ssh_kb) = rss.finish();
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Figures {
            rollout: total,
            total,
            rss_tool_kb,
            rss_ssh_kb,
            ..Figures::default()
        }
    }
}

/// changeover's events, as far as the bench needs them.
#[derive(Default)]
struct Events {
    preflight: Option<Duration>,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    outcome: Option<String>,
    /// Wave number → (its start, its units).
    waves: BTreeMap<u64, (u64, Vec<String>)>,
    /// (unit, phase) → elapsed ms.
    phases: HashMap<(String, String), u64>,
    /// Units in the order they were taken out.
    start_order: Vec<String>,
}

impl Events {
    fn add(&mut self, v: &serde_json::Value, at: Duration) {
        let ms = v["elapsed_ms"].as_u64().unwrap_or(0);
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        match v["event"].as_str().unwrap_or_default() {
            "preflight" => self.preflight = Some(at),
            "deploy_started" => self.started_ms = Some(ms),
            "deploy_finished" => {
                self.finished_ms = Some(ms);
                self.outcome = Some(s("outcome"));
            }
            "wave_started" => {
                let units = v["units"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                self.waves
                    .insert(v["wave"].as_u64().unwrap_or(0), (ms, units));
            }
            "unit_finished" => {
                self.phases.insert((s("unit"), "finished".to_string()), ms);
            }
            "unit_phase" => {
                if s("phase") == "take_out" {
                    self.start_order.push(s("unit"));
                }
                self.phases.insert((s("unit"), s("phase")), ms);
            }
            _ => {}
        }
    }

    /// A unit's steps + health: from the steps' start to the put-back.
    fn work(&self, unit: &str) -> Option<u64> {
        let steps = self.phases.get(&(unit.to_string(), "steps".to_string()))?;
        let back = self
            .phases
            .get(&(unit.to_string(), "put_back".to_string()))?;
        Some(back.saturating_sub(*steps))
    }

    fn figures(&self, bound: usize) -> Figures {
        let started = self.started_ms.unwrap_or(0);
        let finished = self.finished_ms.unwrap_or(started);
        let mut floor_ms = 0;
        let mut wave_overheads = Vec::new();
        let waves: Vec<&(u64, Vec<String>)> = self.waves.values().collect();
        for (k, (start, units)) in waves.iter().enumerate() {
            // The wave's units in the order they started, packed into the
            // bound's slots: the slowest unit for a batch wave, the list
            // schedule for a window.
            let order: Vec<&String> = self
                .start_order
                .iter()
                .filter(|u| units.contains(u))
                .collect();
            let mut slots = vec![0u64; bound.max(1)];
            for u in order {
                let w = self.work(u).unwrap_or(0);
                let first = slots.iter_mut().min().unwrap();
                *first += w;
            }
            let wave_floor = slots.into_iter().max().unwrap_or(0);
            floor_ms += wave_floor;
            let end = waves.get(k + 1).map_or(finished, |(next, _)| *next);
            wave_overheads.push(Duration::from_millis(
                end.saturating_sub(*start).saturating_sub(wave_floor),
            ));
        }
        const ORDER: [&str; 8] = [
            "take_out", "drain", "disable", "steps", "health", "put_back", "confirm", "finished",
        ];
        let mut phase_medians = Vec::new();
        for pair in ORDER.windows(2) {
            let mut d: Vec<u64> = self
                .start_order
                .iter()
                .filter_map(|u| {
                    let a = self.phases.get(&(u.clone(), pair[0].to_string()))?;
                    let b = self.phases.get(&(u.clone(), pair[1].to_string()))?;
                    Some(b.saturating_sub(*a))
                })
                .collect();
            if !d.is_empty() {
                d.sort_unstable();
                phase_medians.push((format!("{}→{}", pair[0], pair[1]), d[d.len() / 2]));
            }
        }
        Figures {
            phase_medians,
            preflight: self.preflight,
            rollout: Duration::from_millis(finished - started),
            floor: Some(Duration::from_millis(floor_ms)),
            wave_overheads: if waves.len() > 1 {
                wave_overheads
            } else {
                Vec::new()
            },
            ..Figures::default()
        }
    }
}

/// Peak RSS of a process tree (the tool and its children, ssh aside) and
/// of the ssh clients whose command line names the fleet's ssh config (the
/// masters a tool daemonises are not its children any more), from /proc
/// every 250 ms.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<(u64, u64)>>,
    handle: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(root: u32, needles: Vec<String>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new((0, 0)));
        let (flag, out) = (stop.clone(), peaks.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (tool, ssh) = sample(root, &needles);
                let mut p = out.lock().unwrap();
                p.0 = p.0.max(tool);
                p.1 = p.1.max(ssh);
                drop(p);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        RssSampler {
            stop,
            peaks,
            handle,
        }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        *self.peaks.lock().unwrap()
    }
}

/// (RSS of `root` and its non-ssh descendants, RSS of ssh clients naming
/// `needle`), in kB.
fn sample(root: u32, needles: &[String]) -> (u64, u64) {
    struct P {
        ppid: u32,
        rss: u64,
        ssh: bool,
        names: bool,
    }
    let mut procs: HashMap<u32, P> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
        };
        let ssh = field("Name:").is_some_and(|n| n == "ssh");
        let names = ssh
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                needles.iter().any(|n| c.contains(n.as_str()))
            });
        procs.insert(
            pid,
            P {
                ppid: field("PPid:").and_then(|v| v.parse().ok()).unwrap_or(0),
                rss: field("VmRSS:").and_then(|v| v.parse().ok()).unwrap_or(0),
                ssh,
                names,
            },
        );
    }
    let in_tree = |mut pid: u32| {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match procs.get(&pid) {
                Some(p) if p.ppid != 0 => pid = p.ppid,
                _ => return false,
            }
        }
        false
    };
    let mut tool = 0;
    let mut ssh = 0;
    for (&pid, p) in &procs {
        if p.names || (p.ssh && in_tree(pid)) {
            ssh += p.rss;
        } else if in_tree(pid) {
            tool += p.rss;
        }
    }
    (tool, ssh)
}

/// The most HAProxy servers out of service (not UP, or weight 0) at once,
/// and per drain, how long a server sat in DRAIN with 0 sessions before it
/// went to MAINT (the drain-to-disable lag), sampled every 20 ms.
pub struct OutSampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, Vec<Duration>, Duration)>>,
}

/// How often the [`OutSampler`] reads HAProxy's stats: every 20 ms, but
/// no more than 5 servers' rows per ms (each read is a dump of the whole
/// table through the same Runtime API changeover uses; at 500 servers every
/// 20 ms the sampler alone would be most of HAProxy's CLI work).
fn sample_every(servers: usize) -> Duration {
    Duration::from_millis(20.max(servers as u64 / 5))
}

impl OutSampler {
    pub fn start(socket: PathBuf, servers: usize) -> OutSampler {
        let every = sample_every(servers);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = 0;
            let mut lags = Vec::new();
            // Server → when it was first seen drained (DRAIN, 0 sessions).
            let mut drained_at: HashMap<String, Instant> = HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(rows) = changeover_testkit::haproxy::show_stat_at(&socket) {
                    let now = Instant::now();
                    let out = rows
                        .iter()
                        .filter(|r| !r.status.starts_with("UP") || r.weight == Some(0))
                        .count();
                    max = max.max(out);
                    for r in &rows {
                        if r.status.starts_with("DRAIN") && r.scur == 0 {
                            drained_at.entry(r.name.clone()).or_insert(now);
                        } else if r.status.starts_with("MAINT") {
                            if let Some(t) = drained_at.remove(&r.name) {
                                lags.push(now - t);
                            }
                        } else {
                            drained_at.remove(&r.name);
                        }
                    }
                }
                std::thread::sleep(every);
            }
            (max, lags, every)
        });
        OutSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// (most out at once, drain-to-disable lags seen, the sampling period)
    pub fn finish(mut self) -> (usize, Vec<Duration>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

pub fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The body of `GET path` on `addr` (ip:port), or `<error>`.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return "<connect failed>".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map_or("<bad answer>".into(), |(_, b)| b.trim().to_string())
}
