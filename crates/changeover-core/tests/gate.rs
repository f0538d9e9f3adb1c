//! Groups, the fleet-wide health gate and drain mode "host", against the
//! in-memory seams in virtual time.

mod common;

use changeover_core::config;
use changeover_core::engine;
use changeover_core::event::{Event, Outcome};
use changeover_core::lb::AdminState;
use changeover_core::sim::{SimProbe, SimRemote};
use common::{deploy, fixture};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn plan(hosts: usize, instances: u32, extra: &str) -> Arc<changeover_core::plan::Plan> {
    let mut s = format!(
        "app = \"t\"\n[instances]\ncount = {instances}\nfirst_port = 8081\n\
         [[load_balancers]]\nkind = \"haproxy\"\nsocket = \"x\"\nbackend = \"app\"\nserver = \"{{host}}_{{instance}}\"\n\
         [deploy]\nrun = \"switch {{version}}\"\n[health]\ntcp = \"{{address}}:{{port}}\"\ninterval = \"1s\"\ndeadline = \"5s\"\n\
         {extra}\n"
    );
    for i in 1..=hosts {
        s.push_str(&format!(
            "[[hosts]]\nname = \"web-{i}\"\naddress = \"10.0.0.{i}\"\n"
        ));
    }
    Arc::new(
        config::parse("t.toml", &s, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e:?}"))
            .plan,
    )
}

fn slow() -> SimRemote {
    SimRemote {
        delay: Duration::from_secs(3),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn groups_roll_instance_by_instance_never_two_of_a_host() {
    let f = fixture(
        plan(6, 3, "[strategy]\ngroups = \"35%\""),
        slow(),
        SimProbe::default(),
        &[],
    );
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Success);
    assert!(r.units.iter().all(|u| u.state == "updated"));
    assert_eq!(f.lb.max_out(), 2, "a group of 2 hosts, one instance each");
    // Waves in order: group 1 instance 1, 2, 3, then group 2 ...
    let waves: Vec<Vec<String>> = f
        .events
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::WaveStarted { units, .. } => Some(units),
            _ => None,
        })
        .collect();
    assert_eq!(waves.len(), 9);
    assert_eq!(waves[0], ["web-1#1", "web-2#1"]);
    assert_eq!(waves[1], ["web-1#2", "web-2#2"]);
    assert_eq!(waves[3], ["web-3#1", "web-4#1"]);
    assert_eq!(waves[8], ["web-5#3", "web-6#3"]);
}

#[tokio::test(start_paused = true)]
async fn gate_holds_new_starts_until_the_fleet_is_healthy() {
    // web-5#1 fails its next 6 probes: the gate check before the first start
    // sees it, and nothing starts until it recovers.
    let probe = SimProbe::default().fail_next("web-5#1", 6);
    let f = fixture(
        plan(
            6,
            1,
            "[strategy]\nwindow = 2\nwait_for_all_healthy = true\ngate_timeout = \"60s\"",
        ),
        slow(),
        probe,
        &[],
    );
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.halt_reason);
    assert!(r.units.iter().all(|u| u.state == "updated"));
    let events = f.events.events();
    let closed = events
        .iter()
        .find_map(|(t, e)| match e {
            Event::GateClosed { unhealthy, .. } => Some((*t, unhealthy.clone())),
            _ => None,
        })
        .expect("the gate closed");
    assert_eq!(closed.1.len(), 1);
    assert_eq!(closed.1[0].unit, "web-5#1");
    let opened = events
        .iter()
        .find_map(|(t, e)| match e {
            Event::GateOpened { .. } => Some(*t),
            _ => None,
        })
        .expect("the gate opened again");
    assert!(
        opened >= Duration::from_secs(5),
        "open after 6 failed probes 1 s apart: {opened:?}"
    );
    let first = f.events.take_outs()[0].0;
    assert!(
        first >= opened,
        "nothing started while the gate was closed: {first:?} < {opened:?}"
    );
    // The progress line names what the gate waits for.
    assert!(events.iter().any(|(_, e)| matches!(e,
        Event::Progress { gated_on, .. } if gated_on == &["web-5#1".to_string()])));
    assert_eq!(f.lb.max_out(), 2);
}

/// A probe whose sick units the test changes while the deploy runs.
#[derive(Default, Clone)]
struct ToggleProbe(Arc<Mutex<std::collections::HashSet<String>>>);

#[async_trait::async_trait]
impl changeover_core::health::HealthProbe for ToggleProbe {
    async fn probe(&self, unit: &changeover_core::unit::Unit) -> Result<(), String> {
        if self.0.lock().unwrap().contains(&unit.name()) {
            Err("status 503".into())
        } else {
            Ok(())
        }
    }
    fn describe(&self, unit: &changeover_core::unit::Unit) -> String {
        format!("toggle://{unit}")
    }
}

#[tokio::test(start_paused = true)]
async fn gate_checks_again_before_every_start() {
    // web-4 falls ill while web-1 is being deployed: the next start waits
    // for it although the window has room, and goes on once it recovers.
    let sick = ToggleProbe::default();
    let mut f = fixture(
        plan(
            4,
            1,
            "[strategy]\nwindow = 1\nwait_for_all_healthy = true\ngate_timeout = \"60s\"",
        ),
        slow(),
        SimProbe::default(),
        &[],
    );
    Arc::get_mut(&mut f.dep).unwrap().health = Some(Arc::new(sick.clone()));
    let dep = f.dep.clone();
    let run = tokio::spawn(async move {
        let pf = engine::preflight(&dep).await;
        engine::run(dep, &pf, CancellationToken::new(), CancellationToken::new()).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    sick.0.lock().unwrap().insert("web-4#1".into());
    tokio::time::sleep(Duration::from_secs(9)).await;
    sick.0.lock().unwrap().clear();
    let r = run.await.unwrap();
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.halt_reason);
    let starts = f.events.take_outs();
    assert_eq!(starts[0].1, "web-1#1");
    assert!(starts[0].0 < Duration::from_secs(1));
    assert_eq!(starts[1].1, "web-2#1");
    assert!(
        starts[1].0 >= Duration::from_secs(10),
        "web-2 waited for web-4 to recover: {starts:?}"
    );
    assert!(f.events.events().iter().any(|(_, e)| matches!(e,
        Event::GateClosed { unhealthy, .. } if unhealthy.iter().any(|u| u.unit == "web-4#1"))));
    assert_eq!(f.lb.max_out(), 1);
}

#[tokio::test(start_paused = true)]
async fn gate_timeout_halts_with_everything_in_rotation() {
    let probe = SimProbe {
        unhealthy_units: ["web-3#1".to_string()].into(),
        ..Default::default()
    };
    let f = fixture(
        plan(
            6,
            1,
            "[strategy]\nwindow = 2\nwait_for_all_healthy = true\ngate_timeout = \"10s\"",
        ),
        slow(),
        probe,
        &[],
    );
    let t0 = tokio::time::Instant::now();
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let reason = r.halt_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("gate") && reason.contains("web-3#1"),
        "{reason}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(10) && t0.elapsed() < Duration::from_secs(15));
    assert!(r.units.iter().all(|u| u.in_rotation), "{:?}", r.units);
    for i in 1..=6 {
        assert_eq!(f.lb.admin(&format!("web-{i}#1")), AdminState::Ready);
    }
}

#[tokio::test(start_paused = true)]
async fn forced_hosts_are_left_out_of_the_gate() {
    // web-3 is known broken (v1 unhealthy); forced, the gate ignores it and
    // it is redeployed like the others (and recovers with the new version).
    let probe = SimProbe::default().fail_next("web-3#1", 2);
    let f = fixture(
        plan(
            6,
            1,
            "[strategy]\nwindow = 2\nwait_for_all_healthy = true\ngate_timeout = \"10s\"",
        ),
        slow(),
        probe,
        &["web-3"],
    );
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.halt_reason);
    assert!(r.units.iter().all(|u| u.state == "updated"));
    assert!(
        !f.events
            .events()
            .iter()
            .any(|(_, e)| matches!(e, Event::GateClosed { .. })),
        "the gate never closed on a forced host"
    );
}

const PROC_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

/// `/proc/net/tcp` with `n` established connections to 10.0.0.1:8081.
fn proc_tcp(n: usize) -> String {
    let mut s = PROC_HEADER.to_string();
    for i in 0..n {
        s.push_str(&format!(
            "   {i}: 0100000A:1F91 0200000A:{:04X} 01 00000000:00000000 00:00000000 00000000     0        0 1 1\n",
            40000 + i
        ));
    }
    s
}

/// A remote whose `/proc/net/tcp` reads give `answers` in turn (the last
/// repeats), after `timeouts` reads that time out.
fn proc_remote(answers: Vec<String>, timeouts: u32) -> SimRemote {
    let remote = SimRemote {
        timeouts: timeouts.into(),
        ..Default::default()
    };
    remote
        .output
        .lock()
        .unwrap()
        .push(("/proc/net/tcp".into(), answers.into()));
    remote
}

/// `hosts` hosts of one unit each, drained by counting on the host (polled
/// every second, for at most `timeout`) through `remote`.
fn drain_host_fixture(hosts: usize, timeout: &str, remote: SimRemote) -> common::Fixture {
    let drain = format!("[drain]\nmode = \"host\"\ntimeout = \"{timeout}\"\ninterval = \"1s\"");
    fixture(plan(hosts, 1, &drain), remote, SimProbe::default(), &[])
}

#[tokio::test(start_paused = true)]
async fn drain_host_waits_for_connections_to_close() {
    let f = drain_host_fixture(
        1,
        "30s",
        proc_remote(vec![proc_tcp(2), proc_tcp(1), proc_tcp(1), proc_tcp(0)], 0),
    );
    let t0 = tokio::time::Instant::now();
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "waited through 3 polls with connections open"
    );
}

#[tokio::test(start_paused = true)]
async fn drain_host_timeout_fails_the_unit_and_puts_it_back() {
    let f = drain_host_fixture(2, "5s", proc_remote(vec![proc_tcp(1)], 0));
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let u = &r.units[0];
    assert_eq!(u.state, "failed");
    assert!(u.in_rotation, "nothing was changed on it: put back");
    assert!(
        u.detail
            .as_deref()
            .unwrap_or("")
            .contains("1 open connection(s) on the host"),
        "{:?}",
        u.detail
    );
    assert_eq!(r.units[1].state, "untouched");
}

#[tokio::test(start_paused = true)]
async fn groups_never_take_a_second_unit_of_a_host_whose_unit_failed() {
    // web-1's steps fail; max_failures lets the rollout go on, but web-1's
    // other instances must not go out while web-1#1 is left out.
    let remote = SimRemote {
        failing_hosts: ["web-1".to_string()].into(),
        delay: Duration::from_secs(1),
        ..Default::default()
    };
    let f = fixture(
        plan(6, 3, "[strategy]\ngroups = \"35%\"\nmax_failures = 2"),
        remote,
        SimProbe::default(),
        &[],
    );
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let state = |u: &str| r.units.iter().find(|s| s.unit == u).unwrap().state.clone();
    assert_eq!(state("web-1#1"), "failed");
    assert_eq!(state("web-1#2"), "skipped");
    assert_eq!(state("web-1#3"), "skipped");
    for u in ["web-2#1", "web-2#3", "web-6#3"] {
        assert_eq!(state(u), "updated", "{u}");
    }
    assert_eq!(f.lb.admin("web-1#1"), AdminState::Maint);
    assert_eq!(f.lb.admin("web-1#2"), AdminState::Ready);
    assert_eq!(f.lb.admin("web-1#3"), AdminState::Ready);
    assert!(f.lb.max_out() <= 2);
}

/// Every probe takes 4 s and fails.
struct SlowSick;

#[async_trait::async_trait]
impl changeover_core::health::HealthProbe for SlowSick {
    async fn probe(&self, _: &changeover_core::unit::Unit) -> Result<(), String> {
        tokio::time::sleep(Duration::from_secs(4)).await;
        Err("status 503".into())
    }
    fn describe(&self, unit: &changeover_core::unit::Unit) -> String {
        format!("slow://{unit}")
    }
}

#[tokio::test(start_paused = true)]
async fn gate_timeout_is_on_time_even_with_slow_checks() {
    // Checks of 4 s each (the probe timeout is 2 s, so each fails by
    // timing out): the halt comes at gate_timeout, not at the end of the
    // check running then.
    let mut f = fixture(
        plan(
            3,
            1,
            "[strategy]\nwindow = 1\nwait_for_all_healthy = true\ngate_timeout = \"9s\"",
        ),
        SimRemote::default(),
        SimProbe::default(),
        &[],
    );
    Arc::get_mut(&mut f.dep).unwrap().health = Some(Arc::new(SlowSick));
    let t0 = tokio::time::Instant::now();
    let r = deploy(&f).await;
    let took = t0.elapsed();
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_millis(9_500),
        "halted at {took:?}"
    );
    let reason = r.halt_reason.unwrap_or_default();
    assert!(reason.contains("gate_timeout"), "{reason}");
    assert!(r
        .units
        .iter()
        .all(|u| u.state == "untouched" && u.in_rotation));
}

#[tokio::test(start_paused = true)]
async fn drain_host_rides_out_a_count_that_times_out() {
    // Two counts time out (a loaded host), then it answers 0: drained, not
    // failed.
    let f = drain_host_fixture(1, "30s", proc_remote(vec![proc_tcp(0)], 2));
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
}

#[tokio::test(start_paused = true)]
async fn drain_host_says_why_when_no_count_succeeded() {
    let f = drain_host_fixture(1, "5s", proc_remote(vec![proc_tcp(0)], 1000));
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let detail = r.units[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("the last count failed"), "{detail}");
    assert!(
        r.units[0].in_rotation,
        "put back: nothing was changed on it"
    );
}

/// Counts the gate's sweeps: one call answers for the whole fleet.
#[derive(Default, Clone)]
struct CountingSource(Arc<Mutex<Vec<tokio::time::Instant>>>);

#[async_trait::async_trait]
impl changeover_core::health::FleetHealth for CountingSource {
    async fn unhealthy(
        &self,
        _units: &[Arc<changeover_core::unit::Unit>],
    ) -> Result<Vec<(usize, String)>, String> {
        self.0.lock().unwrap().push(tokio::time::Instant::now());
        Ok(Vec::new())
    }
    fn describe(&self) -> String {
        "counting".into()
    }
}

#[tokio::test(start_paused = true)]
async fn the_gate_sweeps_once_per_interval_not_once_per_start() {
    // 100 units through a window of 10, steps of 1 to 2 s (spread per
    // host, so starts trickle one by one): about 100 starts spread over
    // some 15 s. A sweep per start would be ~100 sweeps of the fleet; one
    // per health interval (1 s) is at most ~16.
    let sweeps = CountingSource::default();
    let mut f = fixture(
        plan(
            100,
            1,
            "[strategy]\nwindow = 10\nwait_for_all_healthy = true",
        ),
        SimRemote {
            delay: Duration::from_secs(1),
            spread: Duration::from_secs(1),
            ..Default::default()
        },
        SimProbe::default(),
        &[],
    );
    Arc::get_mut(&mut f.dep).unwrap().gate = Some(Arc::new(sweeps.clone()));
    let started = tokio::time::Instant::now();
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.halt_reason);
    let took = started.elapsed();
    // The first call is the preflight's (it asks the source once).
    let at: Vec<Duration> = sweeps
        .0
        .lock()
        .unwrap()
        .iter()
        .skip(1)
        .map(|t| *t - started)
        .collect();
    let starts = f.events.take_outs().len();
    assert_eq!(starts, 100);
    // Never two sweeps within one interval: the fleet is probed at most
    // once per interval (each sweep probes every unit once).
    for w in at.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_secs(1),
            "two sweeps {:?} apart: {at:?}",
            w[1] - w[0]
        );
    }
    let bound = (took.as_secs_f64() / 1.0).ceil() as usize + 1;
    assert!(
        at.len() <= bound,
        "{} sweeps in {took:?} (at most {bound}) for {starts} starts",
        at.len()
    );
    eprintln!("{} sweeps for {starts} starts in {took:?}", at.len());
}
