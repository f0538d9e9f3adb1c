use super::*;

// ---------------------------------------------------------------------------
// Invariant 1: never more units out of service than the strategy allows.

/// Batch 2 over 6 units, two balancers, units that take different times and
/// are reported down for a while after their put-back: sampled at every
/// balancer change, never more than 2 units are out of service (not
/// serving on some balancer), and the bound is used.
///
/// Kills: walk.rs confirm skipped (the next batch starts while the last
/// one is not serving yet: 4 out). (A batch's queue holds only its own
/// units, so `d.out >= bound` → `>` cannot show here: see the window test.)
#[tokio::test(start_paused = true)]
async fn batches_never_have_more_out_of_service_than_the_batch() {
    let w = World::new(JournalCheck::Open);
    for (i, d) in [(1, 3), (2, 1), (3, 2), (4, 4), (5, 1), (6, 2)] {
        w.down_for(i % 2, &format!("web-{i}"), secs(d));
    }
    let rig = rig(
        &w,
        plan(6, "[strategy]\nbatch = 2"),
        2,
        LogRemote {
            delays: [
                ("web-1".to_string(), secs(1)),
                ("web-2".to_string(), secs(5)),
                ("web-3".to_string(), secs(2)),
                ("web-6".to_string(), secs(3)),
            ]
            .into(),
            ..Default::default()
        },
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    rig.assert_no_violations();
    assert_eq!(w.max_out(), 2);
    assert_eq!(r.max_out_of_service_seen, 2);
}

/// Window 2 over 6 units, web-3 fails its step and is left out
/// (max_failures = 1 lets the rollout go on): the failed unit keeps its
/// place in the window, so from then on only one unit is in flight, and
/// never more than 2 are out of service.
///
/// Kills: dispatcher.rs `finish()`: `if counts && !stays_out {` →
/// `if counts {` (a failed unit left out frees its place); dispatcher.rs
/// `run()`: `if counts && d.out >= bound {` → `d.out > bound` (3 out).
#[tokio::test(start_paused = true)]
async fn a_window_counts_failed_units_left_out() {
    let w = World::new(JournalCheck::Open);
    let rig = rig(
        &w,
        plan(6, "[strategy]\nwindow = 2\nmax_failures = 1"),
        1,
        LogRemote {
            delay: secs(2),
            delays: [("web-2".to_string(), secs(7))].into(),
            failing: ["web-3".to_string()].into(),
            ..Default::default()
        },
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Failed);
    rig.assert_no_violations();
    assert_eq!(unit(&r, "web-3").state, "failed");
    assert!(!unit(&r, "web-3").in_rotation);
    assert_eq!(w.admin(0, "web-3"), AdminState::Maint);
    for u in ["web-1", "web-2", "web-4", "web-5", "web-6"] {
        assert_eq!(unit(&r, u).state, "updated", "{u}");
    }
    assert_eq!(w.max_out(), 2);
    // After web-3 failed (at 2 s, web-2 still in its 7 s step) nothing new
    // starts until web-2 is back.
    let web2_back = w.apply_at(0, "web-2", Enable, 0);
    assert!(w.apply_at(0, "web-4", Drain, 0) >= web2_back);
}

// ---------------------------------------------------------------------------
// Invariant 2: a unit returns to the balancer only after it passed its
// health check.

/// healthy_threshold = 2; web-1 fails its first two probes, web-2 flaps
/// (pass, fail, pass, pass): each unit is put back only after two
/// consecutive passing probes that came after its steps.
///
/// Kills: walk.rs `health()`: `passes = 0;` deleted on a failed probe (a
/// flap counts as two passes); also the health phase skipped
/// (`if self.dep.health.is_some()` → `if false`).
#[tokio::test(start_paused = true)]
async fn put_back_only_after_consecutive_passing_probes_after_the_steps() {
    let w = World::new(JournalCheck::Last);
    let probe = LogProbe::default()
        .script("web-1", &[false, false, true])
        .script("web-2", &[true, false, true, true]);
    let rig = rig(
        &w,
        plan(
            3,
            "[health]\ntcp = \"{address}:80\"\ninterval = \"1s\"\ndeadline = \"10s\"\nhealthy_threshold = 2\n\
             [strategy]\nbatch = 1",
        ),
        1,
        LogRemote::default(),
        probe,
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    rig.assert_no_violations();
    let log = w.log();
    for (name, probes) in [("web-1", 4), ("web-2", 4), ("web-3", 2)] {
        let host = name;
        let last_step = log
            .iter()
            .rposition(|(_, e)| matches!(e, Entry::Step { host: h, .. } if h == host))
            .unwrap_or_else(|| panic!("no step on {name}"));
        let enable = log
            .iter()
            .position(
                |(_, e)| matches!(e, Entry::Apply { unit, action: Enable, .. } if unit == name),
            )
            .unwrap_or_else(|| panic!("{name} never put back"));
        assert!(enable > last_step, "{name} put back before its steps");
        let answers: Vec<bool> = log[last_step..enable]
            .iter()
            .filter_map(|(_, e)| match e {
                Entry::Probe { unit, ok } if unit == name => Some(*ok),
                _ => None,
            })
            .collect();
        assert_eq!(answers.len(), probes, "{name}: {answers:?}");
        assert!(
            answers.ends_with(&[true, true]),
            "{name} put back after {answers:?}, not two consecutive passes"
        );
    }
}

/// web-2 never passes: it is never put back (left out, cut off) and the
/// rollout halts; no probe of it passed before its failure.
///
/// Kills: walk.rs `walk()`: the health result ignored
/// (`self.health().await?` → `let _ = self.health().await;`: put back
/// although unhealthy).
#[tokio::test(start_paused = true)]
async fn a_unit_that_never_passes_is_never_put_back() {
    let w = World::new(JournalCheck::Last);
    let rig = rig(
        &w,
        plan(3, "[strategy]\nbatch = 1"),
        2,
        LogRemote::default(),
        LogProbe::default().script("web-2", &[false]),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Failed);
    rig.assert_no_violations();
    let u = unit(&r, "web-2");
    assert_eq!(u.state, "failed");
    assert!(!u.in_rotation);
    assert!(u.detail.as_deref().unwrap_or("").starts_with("health:"));
    assert_eq!(
        w.applies("web-2"),
        [(0, Drain), (1, Drain), (0, Disable), (1, Disable)]
    );
    assert_eq!(w.admin(0, "web-2"), AdminState::Maint);
    assert_eq!(w.admin(1, "web-2"), AdminState::Maint);
    assert_eq!(unit(&r, "web-3").state, "untouched");
}

// ---------------------------------------------------------------------------
