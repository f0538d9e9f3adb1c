//! Engine semantics against the in-memory seams (virtual time): the bound,
//! halting on failure, where failed units are left, forced hosts, stopping.

mod common;

use changeover_core::config;
use changeover_core::engine::{self, Report};
use changeover_core::event::Outcome;
use changeover_core::journal::Record;
use changeover_core::lb::{AdminState, BalancerState, LbAction};
use changeover_core::sim::{SimProbe, SimRemote};
use common::{deploy, fixture};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn plan(hosts: usize, strategy: &str) -> Arc<changeover_core::plan::Plan> {
    let mut s = format!(
        "app = \"t\"\n[[load_balancers]]\nkind = \"haproxy\"\nsocket = \"x\"\nbackend = \"app\"\n\
         [deploy]\nrun = \"switch {{version}}\"\n[health]\ntcp = \"{{address}}:80\"\ninterval = \"1s\"\ndeadline = \"5s\"\n\
         [strategy]\n{strategy}\n"
    );
    for i in 1..=hosts {
        s.push_str(&format!(
            "[[hosts]]\nname = \"web-{i}\"\naddress = \"10.0.0.{i}\"\n"
        ));
    }
    Arc::new(
        config::parse("t.toml", &s, std::path::Path::new("."))
            .unwrap()
            .plan,
    )
}

fn state(r: &Report, unit: &str) -> String {
    r.units
        .iter()
        .find(|u| u.unit == unit)
        .unwrap()
        .state
        .clone()
}

#[tokio::test(start_paused = true)]
async fn batch_respects_bound_and_updates_all() {
    let f = fixture(
        plan(8, "batch = \"25%\""),
        SimRemote {
            delay: Duration::from_secs(3),
            ..Default::default()
        },
        SimProbe::default(),
        &[],
    );
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Success);
    assert!(r.units.iter().all(|u| u.state == "updated"));
    assert_eq!(f.lb.max_out(), 2, "two units out at once, never more");
    assert_eq!(r.max_out_of_service_seen, 2);
}

#[tokio::test(start_paused = true)]
async fn window_keeps_the_window_full() {
    let f = fixture(
        plan(10, "window = 3"),
        SimRemote {
            delay: Duration::from_secs(3),
            ..Default::default()
        },
        SimProbe::default(),
        &[],
    );
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(f.lb.max_out(), 3);
}

#[tokio::test(start_paused = true)]
async fn failed_step_halts_and_leaves_unit_out() {
    let remote = SimRemote {
        failing_hosts: ["web-3".to_string()].into(),
        ..Default::default()
    };
    let f = fixture(plan(6, "batch = 1"), remote, SimProbe::default(), &[]);
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(state(&r, "web-1"), "updated");
    assert_eq!(state(&r, "web-2"), "updated");
    assert_eq!(state(&r, "web-3"), "failed");
    for later in ["web-4", "web-5", "web-6"] {
        assert_eq!(state(&r, later), "untouched");
        assert_eq!(f.lb.admin(later), AdminState::Ready);
    }
    assert_eq!(
        f.lb.admin("web-3"),
        AdminState::Maint,
        "the failed unit stays out"
    );
    assert_eq!(f.lb.admin("web-2"), AdminState::Ready);
}

#[tokio::test(start_paused = true)]
async fn unhealthy_unit_fails_at_deadline() {
    let probe = SimProbe {
        unhealthy_units: ["web-2".to_string()].into(),
        ..Default::default()
    };
    let f = fixture(plan(4, "batch = 1"), SimRemote::default(), probe, &[]);
    let t0 = tokio::time::Instant::now();
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(state(&r, "web-2"), "failed");
    assert!(r.units[1].detail.as_ref().unwrap().contains("health"));
    assert!(
        t0.elapsed() >= Duration::from_secs(4),
        "waited for the deadline"
    );
    assert_eq!(f.lb.admin("web-2"), AdminState::Maint);
    assert_eq!(state(&r, "web-3"), "untouched");
}

#[tokio::test(start_paused = true)]
async fn max_failures_lets_the_rollout_go_on() {
    let remote = SimRemote {
        failing_hosts: ["web-2".to_string()].into(),
        ..Default::default()
    };
    let f = fixture(
        plan(5, "batch = 2\nmax_failures = 1"),
        remote,
        SimProbe::default(),
        &[],
    );
    let r = deploy(&f).await;
    assert_eq!(
        r.outcome,
        Outcome::Failed,
        "a failure is still a failed deploy"
    );
    assert_eq!(r.units.iter().filter(|u| u.state == "updated").count(), 4);
    assert!(
        f.lb.max_out() <= 2,
        "the failed unit's place counts against the bound"
    );
}

#[tokio::test(start_paused = true)]
async fn forced_unreachable_host_is_skipped() {
    let remote = SimRemote {
        unreachable_hosts: ["web-2".to_string()].into(),
        ..Default::default()
    };
    let f = fixture(
        plan(3, "batch = 1"),
        remote,
        SimProbe::default(),
        &["web-2"],
    );
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(state(&r, "web-2"), "skipped");
}

#[tokio::test(start_paused = true)]
async fn unreachable_host_is_no_go_without_force() {
    let remote = SimRemote {
        unreachable_hosts: ["web-2".to_string()].into(),
        ..Default::default()
    };
    let f = fixture(plan(3, "batch = 1"), remote, SimProbe::default(), &[]);
    let pf = engine::preflight(&f.dep).await;
    assert!(!pf.go());
    assert!(pf.problems[0].contains("web-2"), "{:?}", pf.problems);
    assert_eq!(f.lb.changes(), 0, "nothing changed");
}

#[tokio::test(start_paused = true)]
async fn stop_lets_in_flight_units_finish_and_go_back() {
    let f = fixture(
        plan(6, "batch = 2"),
        SimRemote {
            delay: Duration::from_secs(10),
            ..Default::default()
        },
        SimProbe::default(),
        &[],
    );
    let pf = engine::preflight(&f.dep).await;
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        s2.cancel();
    });
    let r = engine::run(f.dep.clone(), &pf, stop, CancellationToken::new()).await;
    assert_eq!(r.outcome, Outcome::Interrupted);
    assert_eq!(state(&r, "web-1"), "updated");
    assert_eq!(state(&r, "web-2"), "updated");
    assert_eq!(state(&r, "web-3"), "untouched");
    for u in ["web-1", "web-2", "web-3"] {
        assert_eq!(f.lb.admin(u), AdminState::Ready);
    }
}

#[tokio::test(start_paused = true)]
async fn every_change_is_journaled_before_it_is_made() {
    let f = fixture(
        plan(2, "batch = 1"),
        SimRemote::default(),
        SimProbe::default(),
        &[],
    );
    deploy(&f).await;
    let records = f.journal.records.lock().unwrap();
    let intents: Vec<LbAction> = records
        .iter()
        .filter_map(|r| match r {
            Record::Intent { action, .. } => Some(*action),
            _ => None,
        })
        .collect();
    assert_eq!(intents.len() as u64, f.lb.changes());
    assert_eq!(
        &intents[..3],
        &[LbAction::Drain, LbAction::Disable, LbAction::Enable]
    );
    assert!(matches!(records.first(), Some(Record::Begin { .. })));
    assert!(matches!(records.last(), Some(Record::End { .. })));
}

#[tokio::test(start_paused = true)]
async fn an_external_halt_stops_new_units_like_a_failure() {
    let f = fixture(
        plan(6, "batch = 1"),
        SimRemote {
            delay: Duration::from_secs(2),
            ..Default::default()
        },
        SimProbe::default(),
        &[],
    );
    let pf = engine::preflight(&f.dep).await;
    let signal = f.dep.external_halt.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        signal.trigger("traffic witness: 3 failed requests (abort_after_failures = 2)");
    });
    let r = engine::run(
        f.dep.clone(),
        &pf,
        CancellationToken::new(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(r
        .halt_reason
        .as_deref()
        .unwrap()
        .contains("traffic witness"));
    assert_eq!(state(&r, "web-1"), "updated");
    assert_eq!(state(&r, "web-2"), "updated", "the unit in flight finished");
    assert_eq!(state(&r, "web-3"), "untouched");
    assert_eq!(f.lb.admin("web-2"), AdminState::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_balancer_not_ready_is_no_go_and_nothing_changes() {
    for (state, word) in [
        (
            BalancerState::Busy("PENDING_UPDATE".into()),
            "PENDING_UPDATE",
        ),
        (BalancerState::Broken("ERROR".into()), "ERROR"),
    ] {
        let f = fixture(
            plan(3, "batch = 1"),
            SimRemote::default(),
            SimProbe::default(),
            &[],
        );
        f.lb.set_state(state);
        let pf = engine::preflight(&f.dep).await;
        assert!(!pf.go());
        assert!(
            pf.problems
                .iter()
                .any(|p| p.contains(word) && p.contains("expected ACTIVE")),
            "{:?}",
            pf.problems
        );
        assert_eq!(f.lb.changes(), 0, "nothing changed");
    }
}

#[tokio::test(start_paused = true)]
async fn busy_refusals_are_ridden_out_with_backoff() {
    let f = fixture(
        plan(3, "batch = 1"),
        SimRemote::default(),
        SimProbe::default(),
        &[],
    );
    // A storm of "immutable" answers, well within the busy deadline.
    f.lb.busy_next(12);
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    assert!(r.units.iter().all(|u| u.state == "updated"));
    assert_eq!(f.lb.busy_refusals(), 12);
}

#[tokio::test(start_paused = true)]
async fn a_balancer_busy_past_the_deadline_fails_the_unit_and_halts() {
    let f = fixture(
        plan(3, "batch = 1"),
        SimRemote::default(),
        SimProbe::default(),
        &[],
    );
    f.lb.busy_next(u32::MAX);
    let started = tokio::time::Instant::now();
    let r = deploy(&f).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(state(&r, "web-1"), "failed");
    assert_eq!(state(&r, "web-2"), "untouched");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(120) && took < Duration::from_secs(130),
        "gave up after {took:?}, not at the 120 s busy deadline"
    );
}
