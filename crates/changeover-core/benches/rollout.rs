//! Rollout benchmark: 1,000 and 10,000 simulated units (in-memory balancer,
//! zero-latency remote and health check, virtual time), through the real
//! config parser, planner and engine. Prints wall time and peak heap.
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

fn bench(hosts: usize, instances: u32, strategy: &str) {
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
    let lb = Arc::new(SimBalancer::default());
    let remote = Arc::new(SimRemote::default());
    let report = rt.block_on(async {
        let dep = Arc::new(Deployment {
            policy: plan.target(None).expect("fleet").policy,
            units: plan.units(),
            plan: Arc::clone(&plan),
            balancers: vec![lb.clone()],
            remote: remote.clone(),
            local: remote.clone(),
            health: Some(Arc::new(SimProbe::default())),
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
        engine::run(dep, &pf, CancellationToken::new(), CancellationToken::new()).await
    });
    let wall = t0.elapsed();
    let updated = report.units.iter().filter(|u| u.state == "updated").count();
    assert_eq!(updated, n, "every unit updated");
    let label = strategy.replace('\n', "; ");
    println!(
        "{label:<48} {n:>6} units: wall {:>8.1} ms (config parse {:>6.1} ms), peak heap {:>6.1} MB, balancer changes {}, max out {}",
        wall.as_secs_f64() * 1e3,
        parsed.as_secs_f64() * 1e3,
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
    // The gate probes every unit of the fleet before each start: quadratic
    // in the fleet by design, so shown at 1,000 units.
    bench(1_000, 1, "window = \"10%\"\nwait_for_all_healthy = true");
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM")) {
            println!("process peak RSS ({})", line.trim());
        }
    }
}
