use super::*;

// ---------------------------------------------------------------------------
// Invariant 3: drain before disable.

/// The balancer reports sessions on web-1 for 5 s after its drain: the
/// disable and the steps wait until they are 0, and the balancer never sees
/// a cut-off with sessions open.
///
/// Kills: walk.rs `drain()`, mode "lb": `total == 0` → `true` (the drain no
/// longer waits for 0 sessions).
#[tokio::test(start_paused = true)]
async fn disable_and_steps_wait_until_the_balancer_reports_no_sessions() {
    let w = World::new(JournalCheck::Last);
    w.sessions_for(0, "web-1", secs(5));
    let rig = rig(
        &w,
        plan(
            2,
            "[drain]\ntimeout = \"20s\"\ninterval = \"1s\"\n[strategy]\nbatch = 1",
        ),
        1,
        LogRemote::default(),
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    rig.assert_no_violations();
    let drained = w.apply_at(0, "web-1", Drain, 0);
    let disabled = w.apply_at(0, "web-1", Disable, 0);
    assert!(
        disabled >= drained + secs(5),
        "disabled at {disabled:?}, sessions open until {:?}",
        drained + secs(5)
    );
    let steps = w.steps_at("web-1");
    assert!(!steps.is_empty());
    assert!(
        steps.iter().all(|&t| t >= disabled),
        "a step ran before the unit was drained and disabled: {steps:?}"
    );
    assert!(
        rig.drain_timeouts().is_empty(),
        "{:?}",
        rig.drain_timeouts()
    );
}

/// web-2's sessions never reach 0 and `on_timeout = "fail"`: web-2 fails in
/// the drain phase after the drain timeout, nothing is cut off or run on it,
/// it is put back (in rotation), the rollout halts (web-3 untouched), and a
/// drain_timeout event says it did not proceed.
///
/// Kills: walk.rs, the drain-failure branch of `walk()`:
/// `let back = self.put_back_upto(self.dep.balancers.len()).await.is_ok();`
/// → `let back = true;` (not put back but reported in rotation); also
/// `let proceeded = spec.on_timeout == OnTimeout::Proceed;` → `!=`.
#[tokio::test(start_paused = true)]
async fn sessions_that_never_end_fail_the_unit_in_drain_and_put_it_back() {
    let w = World::new(JournalCheck::Last);
    w.sessions_for(0, "web-2", NEVER);
    let rig = rig(
        &w,
        plan(
            3,
            "[drain]\ntimeout = \"5s\"\ninterval = \"1s\"\non_timeout = \"fail\"\n[strategy]\nbatch = 1",
        ),
        1,
        LogRemote::default(),
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Failed);
    rig.assert_no_violations();
    assert_eq!(unit(&r, "web-1").state, "updated");
    let u = unit(&r, "web-2");
    assert_eq!(u.state, "failed");
    assert!(u.in_rotation, "nothing was changed on it: it is put back");
    let detail = u.detail.as_deref().unwrap_or("");
    assert!(
        detail.starts_with("drain:") && detail.contains("3 open session"),
        "{detail}"
    );
    assert_eq!(
        w.applies("web-2"),
        [(0, Drain), (0, Enable)],
        "taken out, never cut off, put back"
    );
    assert_eq!(w.admin(0, "web-2"), AdminState::Ready);
    assert!(w.steps_at("web-2").is_empty(), "no step ran on web-2");
    let drained = w.apply_at(0, "web-2", Drain, 0);
    assert!(
        w.apply_at(0, "web-2", Enable, 0) >= drained + secs(5),
        "waited the whole drain timeout"
    );
    assert_eq!(
        rig.drain_timeouts(),
        [("web-2".to_string(), Some(OPEN_SESSIONS), false)]
    );
    assert_eq!(unit(&r, "web-3").state, "untouched");
    assert!(w.applies("web-3").is_empty());
}

/// web-1's sessions never reach 0 and `on_timeout = "proceed"`: the disable
/// waits the whole drain timeout, then the unit is deployed anyway, and a
/// drain_timeout event says it proceeded with 3 sessions open.
///
/// Kills: walk.rs `drain()`: `proceeded,` → `proceeded: false,` in the
/// `Event::DrainTimeout` (the proceed is not reported); also
/// `let proceeded = spec.on_timeout == OnTimeout::Proceed;` → `!=`.
#[tokio::test(start_paused = true)]
async fn drain_timeout_with_proceed_deploys_anyway_and_says_so() {
    let w = World::allowing_cut_with_sessions(JournalCheck::Last);
    w.sessions_for(0, "web-1", NEVER);
    let rig = rig(
        &w,
        plan(
            2,
            "[drain]\ntimeout = \"5s\"\ninterval = \"1s\"\non_timeout = \"proceed\"\n[strategy]\nbatch = 1",
        ),
        1,
        LogRemote::default(),
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    rig.assert_no_violations();
    assert_eq!(unit(&r, "web-1").state, "updated");
    let drained = w.apply_at(0, "web-1", Drain, 0);
    let disabled = w.apply_at(0, "web-1", Disable, 0);
    assert!(
        disabled >= drained + secs(5),
        "disabled at {disabled:?}, before the drain timed out"
    );
    assert_eq!(
        rig.drain_timeouts(),
        [("web-1".to_string(), Some(OPEN_SESSIONS), true)]
    );
}
