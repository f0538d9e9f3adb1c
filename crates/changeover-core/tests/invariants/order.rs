use super::*;

// ---------------------------------------------------------------------------
// Balancer order: take-out in config order, put-back in reverse.

/// Two balancers: every unit's changes are exactly drain lb0, drain lb1,
/// disable lb0, disable lb1, enable lb1, enable lb0.
///
/// Kills: walk.rs `put_back_upto()`: `for li in (0..upto).rev()` →
/// `for li in 0..upto` (put back in take-out order).
#[tokio::test(start_paused = true)]
async fn two_balancers_take_out_in_order_and_put_back_in_reverse() {
    let w = World::new(JournalCheck::Last);
    let rig = rig(
        &w,
        plan(3, "[strategy]\nbatch = 1"),
        2,
        LogRemote::default(),
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    rig.assert_no_violations();
    for u in ["web-1", "web-2", "web-3"] {
        assert_eq!(
            w.applies(u),
            [
                (0, Drain),
                (1, Drain),
                (0, Disable),
                (1, Disable),
                (1, Enable),
                (0, Enable)
            ],
            "{u}"
        );
    }
}

/// lb1 refuses to take web-2 out: web-2 fails in take-out and is put back
/// into lb0 only (the one balancer it had left), and stays in rotation.
///
/// Kills: walk.rs `walk()`, take-out: `self.put_back_upto(li)` →
/// `self.put_back_upto(li + 1)` (also "puts back" the balancer that refused)
/// and → `self.put_back_upto(0)` (left drained on lb0).
#[tokio::test(start_paused = true)]
async fn a_refused_take_out_puts_back_only_the_balancers_already_changed() {
    let w = World::new(JournalCheck::Last);
    w.refuse(1, "web-2", Drain);
    let rig = rig(
        &w,
        plan(3, "[strategy]\nbatch = 1"),
        2,
        LogRemote::default(),
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Failed);
    rig.assert_no_violations();
    let u = unit(&r, "web-2");
    assert_eq!(u.state, "failed");
    assert!(u.detail.as_deref().unwrap_or("").starts_with("take-out:"));
    assert!(u.in_rotation);
    assert_eq!(w.applies("web-2"), [(0, Drain), (1, Drain), (0, Enable)]);
    assert_eq!(w.admin(0, "web-2"), AdminState::Ready);
    assert_eq!(w.admin(1, "web-2"), AdminState::Ready);
    assert!(w.steps_at("web-2").is_empty());
    assert_eq!(unit(&r, "web-3").state, "untouched");
}
