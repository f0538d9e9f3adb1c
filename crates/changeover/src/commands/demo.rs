//! `changeover demo`: the whole job on embedded defaults. Starts N instances
//! of the demo app as separate processes, puts them behind the embedded
//! balancer, and rolls v1 → v2 with the normal engine while the traffic
//! witness sends steady requests through the balancer. `--compare-naive`
//! then restarts the same instances without taking them out, with the same
//! witness, so the difference is there to see.

use super::execute::{execute, Kind, Request};
use super::Ctx;
use crate::cli::{DemoArgs, DemoCtlArgs};
use crate::reporter::Reporter;
use crate::{exit, watch_signals, witnessing};
use changeover_core::config;
use changeover_core::event::{Event, EventSink, Outcome, Phase};
use changeover_core::template::shell_quote;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const THINK_TIME: &str = "20ms";

pub async fn run(args: &DemoArgs, json: bool, quiet: bool) -> u8 {
    match Demo::new(args) {
        Ok(demo) => {
            let code = demo.run(args, json, quiet).await;
            demo.stop_instances();
            if let DemoDir::Kept(dir) = &demo.dir {
                eprintln!(
                    "kept: {} (the config it used: {}; state, journal and app logs beside it)",
                    dir.display(),
                    dir.join("changeover.toml").display()
                );
            }
            code
        }
        Err(e) => {
            eprintln!("error: demo: {e}");
            exit::FAILED
        }
    }
}

/// Where the demo keeps its config, state and logs.
enum DemoDir {
    /// Removed when the demo ends.
    Temp(tempfile::TempDir),
    /// `--keep DIR`: left for the newcomer to open.
    Kept(PathBuf),
}

impl DemoDir {
    fn path(&self) -> &Path {
        match self {
            DemoDir::Temp(t) => t.path(),
            DemoDir::Kept(p) => p,
        }
    }
}

struct Demo {
    dir: DemoDir,
    exe: PathBuf,
    ports: Vec<u16>,
    lb_port: u16,
}

impl Demo {
    fn new(args: &DemoArgs) -> Result<Demo, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
        let dir = match &args.keep {
            None => DemoDir::Temp(
                tempfile::Builder::new()
                    .prefix("changeover-demo")
                    .tempdir()
                    .map_err(|e| e.to_string())?,
            ),
            Some(dir) => {
                // Never mix a new demo into something that is already there.
                if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
                    return Err(format!(
                        "--keep {}: the directory is not empty; name a new or empty one",
                        dir.display()
                    ));
                }
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("--keep {}: {e}", dir.display()))?;
                let dir = dir
                    .canonicalize()
                    .map_err(|e| format!("--keep {}: {e}", dir.display()))?;
                DemoDir::Kept(dir)
            }
        };
        let ports = free_port_run(args.instances as usize)?;
        let lb_port = free_port()?;
        Ok(Demo {
            dir,
            exe,
            ports,
            lb_port,
        })
    }

    async fn run(&self, args: &DemoArgs, json: bool, quiet: bool) -> u8 {
        let n = self.ports.len();
        eprintln!(
            "starting {n} instances of the demo app (v1) on 127.0.0.1:{}..{} …",
            self.ports[0],
            self.ports[n - 1]
        );
        for &port in &self.ports {
            if let Err(e) = self.ctl(port, "v1", args.boot_time) {
                eprintln!("error: demo: {e}");
                return exit::FAILED;
            }
        }
        let deadline = Instant::now() + args.boot_time + Duration::from_secs(20);
        for &port in &self.ports {
            if !wait_healthy(port, deadline).await {
                eprintln!(
                    "error: demo: instance on port {port} did not come up; see {}",
                    self.log(port).display()
                );
                return exit::FAILED;
            }
        }

        let config_path = self.dir.path().join("changeover.toml");
        if let Err(e) = std::fs::write(&config_path, self.config(args)) {
            eprintln!("error: demo: cannot write {}: {e}", config_path.display());
            return exit::FAILED;
        }
        eprintln!(
            "config: {} (a normal changeover config: embedded balancer, local executor)",
            config_path.display()
        );
        let plan = match config::load(&config_path) {
            Ok(l) => Arc::new(l.plan),
            Err(e) => {
                eprintln!("{:?}", miette::Report::new(e));
                return exit::FAILED;
            }
        };
        let timeline = Arc::new(Timeline::new(Reporter::new(
            json,
            quiet,
            crate::reporter::log_verbosity(),
        )));
        eprintln!(
            "balancer: http://127.0.0.1:{}/ — rolling v1 → v2 with {} req/s of witness traffic\n",
            self.lb_port, args.rps
        );
        let ctx = Ctx {
            plan: Arc::clone(&plan),
            events: timeline.clone(),
            json,
            quiet,
        };
        let req = Request {
            kind: Kind::Deploy,
            target: None,
            version: Some("v2".into()),
            version_ref: None,
            message: Some("changeover demo".into()),
            force: Vec::new(),
            redeploy: false,
            lock_wait: None,
            report: Some(self.report_path(args)),
            silent: true,
        };
        let stop = CancellationToken::new();
        let done = execute(&ctx, req).await;
        let (Some(report), Some(dep), Some(seen)) = (done.report, done.dep, done.witness) else {
            return done.exit;
        };
        let wall = done.wall;
        let witness_spec = plan.witness.clone().expect("the demo config has a witness");
        let signals = tokio::spawn(watch_signals(stop.clone(), CancellationToken::new()));
        let updated = report.units.iter().filter(|u| u.state == "updated").count();

        let naive = if args.compare_naive && report.outcome == Outcome::Success {
            eprintln!("\nnow the naive way: restarting the same instances (v2 → v3) in the same waves, without taking them out …");
            let w = match witnessing::start(&witness_spec, &dep) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("error: demo: {e}");
                    return exit::FAILED;
                }
            };
            let batch = engine_wave_size(&plan);
            let naive_ok = self.naive_restart(batch, args.boot_time, &stop).await;
            let r = w.finish(&dep).await;
            if !naive_ok {
                eprintln!("warning: the naive restart did not finish cleanly");
            }
            Some(r)
        } else {
            None
        };
        signals.abort();

        // The summary, for people…
        let mut s = String::new();
        s.push_str(&format!(
            "\nchangeover demo: {updated}/{n} units updated in {:.1}s; {} requests through the balancer, {} failed; at most {} of {n} out of service at once\n",
            wall.as_secs_f64(),
            seen.requests,
            seen.failures,
            report.max_out_of_service_seen
        ));
        s.push_str(&timeline.table(&dep.units.iter().map(|u| u.name()).collect::<Vec<_>>()));
        if let Some(r) = &naive {
            s.push_str(&format!(
                "\n{:<22}{:>14}{:>16}\n{:<22}{:>14}{:>16}\n{:<22}{:>14}{:>16}\n",
                "",
                "changeover",
                "naive restart",
                "requests",
                seen.requests,
                r.requests,
                "failed requests",
                seen.failures,
                r.failures
            ));
            for (kind, count) in &r.failure_kinds {
                s.push_str(&format!("  naive: {count} × {kind}\n"));
            }
        }
        eprint!("{s}");
        // …and for machines: the last line on stdout.
        if json {
            let mut v = serde_json::json!({
                "schema": changeover_core::event::SCHEMA_VERSION,
                "event": "demo_summary",
                "units": n,
                "units_updated": updated,
                "requests": seen.requests,
                "failed_requests": seen.failures,
                "max_out_of_service": report.max_out_of_service_seen,
                "wall_ms": wall.as_millis() as u64,
                "p50_ms": seen.p50.as_millis() as u64,
                "p99_ms": seen.p99.as_millis() as u64,
            });
            if let Some(r) = &naive {
                v["naive_requests"] = r.requests.into();
                v["naive_failed_requests"] = r.failures.into();
            }
            println!("{v}");
        }
        match report.outcome {
            Outcome::Interrupted => exit::INTERRUPTED,
            _ if updated == n && seen.failures == 0 => exit::OK,
            _ => exit::FAILED,
        }
    }

    fn config(&self, args: &DemoArgs) -> String {
        let batch = if args.batch.trim().ends_with('%') {
            format!("\"{}\"", args.batch.trim())
        } else {
            args.batch.trim().to_string()
        };
        let step = format!(
            "{} demo-ctl --dir {} --port {{port}} --version {{version}} --boot-time {} --think-time {THINK_TIME}",
            shell_quote(&self.exe.display().to_string()),
            shell_quote(&self.dir.path().display().to_string()),
            humantime::format_duration(args.boot_time)
        );
        format!(
            r#"# Written by `changeover demo`: an ordinary config, runnable by hand.
app = "demo"
state_dir = {state}

[[hosts]]
name = "local"
address = "127.0.0.1"

[instances]
count = {n}
first_port = {first}

[[load_balancers]]
kind = "embedded"
listen = "127.0.0.1:{lb}"
member = "{{address}}:{{port}}"
check_path = "/health"
check_interval = "200ms"

[drain]
mode = "lb"
timeout = "15s"

[deploy]
local = {step}
timeout = "60s"

[health]
http = "http://{{address}}:{{port}}/health"
interval = "100ms"
timeout = "1s"
healthy_threshold = 2
deadline = "30s"

[strategy]
batch = {batch}

[witness]
url = "http://127.0.0.1:{lb}/"
rps = {rps}
timeout = "2s"
"#,
            state = toml_string(&self.dir.path().join("state").display().to_string()),
            n = self.ports.len(),
            first = self.ports[0],
            lb = self.lb_port,
            step = toml_string(
                &step
                    .replace('{', "{{")
                    .replace('}', "}}")
                    .replace("{{port}}", "{port}")
                    .replace("{{version}}", "{version}")
            ),
            rps = args.rps,
        )
    }

    /// Restart one instance with `version` by running the demo's own deploy
    /// step as a separate process, as the engine would.
    fn ctl(&self, port: u16, version: &str, boot_time: Duration) -> Result<(), String> {
        let out = std::process::Command::new(&self.exe)
            .arg("demo-ctl")
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--port",
                &port.to_string(),
                "--version",
                version,
                "--think-time",
                THINK_TIME,
            ])
            .arg("--boot-time")
            .arg(humantime::format_duration(boot_time).to_string())
            .output()
            .map_err(|e| format!("cannot run demo-ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "demo-ctl for port {port} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The naive way: restart in waves of `batch` without touching the balancer.
    async fn naive_restart(
        &self,
        batch: usize,
        boot_time: Duration,
        stop: &CancellationToken,
    ) -> bool {
        for wave in self.ports.chunks(batch.max(1)) {
            if stop.is_cancelled() {
                return false;
            }
            for &port in wave {
                if self.ctl(port, "v3", boot_time).is_err() {
                    return false;
                }
            }
            let deadline = Instant::now() + boot_time + Duration::from_secs(20);
            for &port in wave {
                if !wait_healthy(port, deadline).await {
                    return false;
                }
            }
        }
        true
    }

    /// `--report`, else report.html in the kept directory, else the
    /// system's temp directory (the demo's own directory goes at exit).
    fn report_path(&self, args: &DemoArgs) -> PathBuf {
        match (&args.report, &self.dir) {
            (Some(p), _) => p.clone(),
            (None, DemoDir::Kept(dir)) => dir.join("report.html"),
            (None, DemoDir::Temp(_)) => std::env::temp_dir().join("changeover-demo-report.html"),
        }
    }

    fn log(&self, port: u16) -> PathBuf {
        self.dir.path().join(format!("app-{port}.log"))
    }

    fn stop_instances(&self) {
        for &port in &self.ports {
            if let Some(pid) = read_pid(&pid_file(self.dir.path(), port)) {
                terminate(pid, Duration::from_secs(5));
            }
        }
    }
}

/// The wave size the engine uses for the plan's units (for the naive comparison).
fn engine_wave_size(plan: &changeover_core::plan::Plan) -> usize {
    changeover_core::planner::out_of_service_bound(&plan.units(), &plan.strategy.rollout)
}

/// `demo-ctl`: stop the instance on a port gracefully (SIGTERM: it stops
/// accepting and finishes in-flight requests), start the new version
/// detached in its own process group.
pub fn ctl(args: &DemoCtlArgs) -> u8 {
    let pidf = pid_file(&args.dir, args.port);
    if let Some(pid) = read_pid(&pidf) {
        terminate(pid, Duration::from_secs(30));
        let _ = std::fs::remove_file(&pidf);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("demo-ctl: cannot find my own executable: {e}");
            return exit::FAILED;
        }
    };
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.dir.join(format!("app-{}.log", args.port)))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "demo-ctl: cannot open the log in {}: {e}",
                args.dir.display()
            );
            return exit::FAILED;
        }
    };
    let err = match log.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("demo-ctl: {e}");
            return exit::FAILED;
        }
    };
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(exe)
        .arg("demo-app")
        .args([
            "--listen",
            &format!("127.0.0.1:{}", args.port),
            "--version",
            &args.version,
        ])
        .arg("--boot-time")
        .arg(humantime::format_duration(args.boot_time).to_string())
        .arg("--think-time")
        .arg(humantime::format_duration(args.think_time).to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own process group: a Ctrl-C meant for changeover must not
        // kill the fleet.
        .process_group(0)
        .spawn();
    match child {
        Ok(c) => {
            if let Err(e) = std::fs::write(&pidf, c.id().to_string()) {
                eprintln!("demo-ctl: cannot write {}: {e}", pidf.display());
                return exit::FAILED;
            }
            println!(
                "started {} on 127.0.0.1:{} (pid {})",
                args.version,
                args.port,
                c.id()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("demo-ctl: cannot start the app: {e}");
            exit::FAILED
        }
    }
}

fn pid_file(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("app-{port}.pid"))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// SIGTERM, wait up to `grace` for the process to go, then SIGKILL.
fn terminate(pid: i32, grace: Duration) {
    // SAFETY: kill(2) with a pid read from our own pid file; no memory is involved.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return;
    }
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Alive and not a zombie (an exited process nobody has reaped yet is gone
/// for our purposes; `kill(pid, 0)` alone would say it is there).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => true,
    }
}

async fn wait_healthy(port: u16, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        let ok = tokio::task::spawn_blocking(move || health_ok(port))
            .await
            .unwrap_or(false);
        if ok {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn health_ok(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// `n` consecutive free ports (instance k listens on first_port + k - 1).
fn free_port_run(n: usize) -> Result<Vec<u16>, String> {
    for _ in 0..200 {
        let base = free_port()?;
        if base as usize + n > 65535 {
            continue;
        }
        let listeners: Result<Vec<TcpListener>, _> = (0..n)
            .map(|k| TcpListener::bind(("127.0.0.1", base + k as u16)))
            .collect();
        if listeners.is_ok() {
            return Ok((0..n).map(|k| base + k as u16).collect());
        }
    }
    Err(format!(
        "could not find {n} consecutive free ports on 127.0.0.1"
    ))
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Passes events on to the reporter and keeps, per unit, when it was
/// drained, deployed, healthy and back.
struct Timeline {
    inner: Reporter,
    marks: Mutex<BTreeMap<String, [Option<Duration>; 4]>>,
}

impl Timeline {
    fn new(inner: Reporter) -> Timeline {
        Timeline {
            inner,
            marks: Mutex::new(BTreeMap::new()),
        }
    }

    fn table(&self, order: &[String]) -> String {
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = format!(
            "\n  {:<10} {:>9} {:>9} {:>9} {:>9}\n",
            "unit", "drained", "deployed", "healthy", "back"
        );
        let f = |d: &Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()))
        };
        for unit in order {
            let m = marks.get(unit).copied().unwrap_or_default();
            s.push_str(&format!(
                "  {:<10} {:>9} {:>9} {:>9} {:>9}\n",
                unit,
                f(&m[0]),
                f(&m[1]),
                f(&m[2]),
                f(&m[3])
            ));
        }
        s
    }
}

impl EventSink for Timeline {
    fn emit(&self, elapsed: Duration, event: Event) {
        let mark = match &event {
            Event::UnitPhase {
                unit,
                phase: Phase::Drain,
                ..
            } => Some((unit.clone(), 0)),
            Event::UnitPhase {
                unit,
                phase: Phase::Health,
                ..
            } => Some((unit.clone(), 1)),
            Event::UnitPhase {
                unit,
                phase: Phase::PutBack,
                ..
            } => Some((unit.clone(), 2)),
            Event::UnitFinished { unit, result, .. } if result.result == "updated" => {
                Some((unit.clone(), 3))
            }
            _ => None,
        };
        if let Some((unit, i)) = mark {
            let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            marks.entry(unit).or_default()[i].get_or_insert(elapsed);
        }
        self.inner.emit(elapsed, event);
    }
}
