//! Rollout benchmark: 1,000 and 10,000 simulated units (in-memory balancer,
//! remote and health check, virtual time), through the real config parser,
//! planner and engine: first with zero latency (the engine alone), then
//! with fleet-like virtual latencies (1–2 s steps, 100 ms balancer calls,
//! 10 ms probes) so every wave fills its bound and the dispatcher really
//! has 1,000 units in flight. Prints wall time, virtual time, peak heap and
//! the most units out at once.
//!
//! Run: `cargo bench -p changeover-core --bench rollout`
//! Target (issue 2): 10,000 units in under 1 s and under 100 MB.

use changeover_core::config;
use changeover_core::engine::{self, Deployment};
use changeover_core::event::NullSink;
use changeover_core::journal::MemoryJournal;
use changeover_core::sim::{SimBalancer, SimProbe, SimRemote};
use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `hosts` hosts with `instances` units each, rolled with `strategy`.
fn config_text(hosts: usize, instances: u32, strategy: &str) -> String {
    let (units, server, port) = if instances > 1 {
        (
            format!("[instances]\ncount = {instances}\nfirst_port = 8081\n"),
            "{host}_{instance}",
            "{port}",
        )
    } else {
        (String::new(), "{host}", "80")
    };
    let mut s = format!(
        "app = \"bench\"\n{units}\
         [[load_balancers]]\nkind = \"haproxy\"\nsocket = \"sim\"\nbackend = \"app\"\nserver = \"{server}\"\n\
         [drain]\nmode = \"lb\"\n[deploy]\nrun = \"switch {{version}}\"\n\
         [health]\ntcp = \"{{address}}:{port}\"\ninterval = \"100ms\"\n[strategy]\n{strategy}\n",
    );
    for i in 0..hosts {
        let _ = write!(
            s,
            "[[hosts]]\nname = \"h{i}\"\naddress = \"10.{}.{}.{}\"\n",
            i / 65536,
            (i / 256) % 256,
            i % 256
        );
    }
    s
}

/// Virtual latencies of the simulated world (paused time): none, or real
/// fleet-like ones so that every wave fills its bound.
#[derive(Clone, Copy)]
struct Latency {
    step: std::time::Duration,
    spread: std::time::Duration,
    balancer: std::time::Duration,
    probe: std::time::Duration,
}

const NONE: Latency = Latency {
    step: std::time::Duration::ZERO,
    spread: std::time::Duration::ZERO,
    balancer: std::time::Duration::ZERO,
    probe: std::time::Duration::ZERO,
};

/// 1 s steps (+ up to 1 s per host), 100 ms balancer calls, 10 ms probes.
const FLEET_LIKE: Latency = Latency {
    step: std::time::Duration::from_secs(1),
    spread: std::time::Duration::from_secs(1),
    balancer: std::time::Duration::from_millis(100),
    probe: std::time::Duration::from_millis(10),
};

fn bench(hosts: usize, instances: u32, strategy: &str) {
    bench_with(hosts, instances, strategy, NONE)
}

fn bench_with(hosts: usize, instances: u32, strategy: &str, lat: Latency) {
    let n = hosts * instances as usize;
    let text = config_text(hosts, instances, strategy);
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
    let base = CURRENT.load(Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    let plan = Arc::new(
        config::parse("bench.toml", &text, std::path::Path::new("."))
            .expect("valid")
            .plan,
    );
    let parsed = t0.elapsed();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let lb = Arc::new(SimBalancer::with_latency(lat.balancer));
    let remote = Arc::new(SimRemote {
        delay: lat.step,
        spread: lat.spread,
        ..Default::default()
    });
    let virtual_start = std::cell::Cell::new(None);
    let report = rt.block_on(async {
        let dep = Arc::new(Deployment {
            policy: plan.target(None).expect("fleet").policy,
            units: plan.units(),
            plan: Arc::clone(&plan),
            balancers: vec![lb.clone()],
            remote: remote.clone(),
            local: remote.clone(),
            health: Some(Arc::new(SimProbe {
                latency: lat.probe,
                ..Default::default()
            })),
            gate: None,
            wave_hooks: None,
            journal: Arc::new(MemoryJournal::default()),
            events: Arc::new(NullSink),
            deploy_id: "bench".into(),
            version: "2".into(),
            previous_version: "1".into(),
            target: None,
            forced: Default::default(),
            started: tokio::time::Instant::now(),
            external_halt: Default::default(),
        });
        let pf = engine::preflight(&dep).await;
        assert!(pf.go());
        let v0 = tokio::time::Instant::now();
        let r = engine::run(dep, &pf, CancellationToken::new(), CancellationToken::new()).await;
        virtual_start.set(Some(v0.elapsed()));
        r
    });
    let wall = t0.elapsed();
    let updated = report.units.iter().filter(|u| u.state == "updated").count();
    assert_eq!(updated, n, "every unit updated");
    let mut label = strategy.replace('\n', "; ");
    if lat.step > std::time::Duration::ZERO {
        label.push_str(" [fleet-like latencies]");
    }
    println!(
        "{label:<60} {n:>6} units: wall {:>8.1} ms (config parse {:>6.1} ms), virtual {:>7.1} s, peak heap {:>6.1} MB, balancer changes {}, max out {}",
        wall.as_secs_f64() * 1e3,
        parsed.as_secs_f64() * 1e3,
        virtual_start.get().unwrap_or_default().as_secs_f64(),
        (PEAK.load(Ordering::Relaxed) - base) as f64 / 1e6,
        lb.changes(),
        lb.max_out()
    );
}

fn main() {
    for n in [1_000, 10_000] {
        bench(n, 1, "batch = [1, \"10%\"]");
    }
    // 2,500 hosts × 4 instances, groups of 10 % of the hosts.
    bench(2_500, 4, "groups = \"10%\"");
    // The gate sweeps the fleet once per health interval, shared by every
    // start in it.
    bench(10_000, 1, "window = \"10%\"\nwait_for_all_healthy = true");
    // Fleet-like virtual latencies: every wave fills its bound, and the
    // dispatcher runs with 1,000 units in flight.
    bench_with(10_000, 1, "batch = [1, \"10%\"]", FLEET_LIKE);
    bench_with(10_000, 1, "window = \"10%\"", FLEET_LIKE);
    bench_with(
        10_000,
        1,
        "window = \"10%\"\nwait_for_all_healthy = true",
        FLEET_LIKE,
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM")) {
            println!("process peak RSS ({})", line.trim());
        }
    }
}
