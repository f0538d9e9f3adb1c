use super::*;

// ---------------------------------------------------------------------------
// Invariant 5: every balancer change is journaled before it is made.

/// Two balancers, one unit at a time, every path that changes a balancer:
/// a plain walk (web-1), a put-back after a drain that timed out (web-2), a
/// put-back after a refused take-out (web-3), a take-out again after a
/// confirm that failed (web-4; last, as a unit left out fills batch 1). Inside every `apply` the balancer checks that
/// the journal's last record is the intent for exactly this change (unit,
/// member, balancer, action); afterwards every applied intent has its
/// `done`.
///
/// Kills: walk.rs `change()`: the `journal.append(Record::Intent { .. })`
/// moved after `lb.apply(..)` (the journal written after the change); also
/// `balancer: li` → `balancer: 0` in the intent.
#[tokio::test(start_paused = true)]
async fn every_change_finds_its_intent_as_the_journal_s_last_record() {
    let w = World::new(JournalCheck::Last);
    w.sessions_for(0, "web-2", NEVER);
    w.refuse(1, "web-3", Drain);
    w.down_for(1, "web-4", NEVER);
    let rig = rig(
        &w,
        plan(
            4,
            "[drain]\ntimeout = \"3s\"\ninterval = \"1s\"\n[strategy]\nbatch = 1\nmax_failures = 10",
        ),
        2,
        LogRemote::default(),
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Failed);
    rig.assert_no_violations();
    assert_eq!(unit(&r, "web-1").state, "updated");
    for u in ["web-2", "web-3", "web-4"] {
        assert_eq!(unit(&r, u).state, "failed", "{u}");
    }
    let applied = w
        .log()
        .iter()
        .filter(|(_, e)| matches!(e, Entry::Apply { .. }))
        .count();
    assert_eq!(applied, 6 + 4 + 3 + 8, "{:?}", w.log());
    assert_eq!(w.checked(), applied, "every change was checked and passed");
    // Every intent but the refused one got its `done`, after it.
    let records = w.journal.records.lock().unwrap().clone();
    let mut open = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        if let Record::Intent {
            seq, unit, action, ..
        } = rec
        {
            let done = records[i + 1..]
                .iter()
                .any(|d| matches!(d, Record::Done { seq: s, .. } if s == seq));
            if !done {
                open.push((unit.clone(), *action));
            }
        }
    }
    assert_eq!(open, [("web-3".to_string(), Drain)]);
}

/// The same check with two units in flight at once (batch 2): the last
/// intent for the member on that balancer is this change and is still open.
///
/// Kills: as above (the intent written after the change).
#[tokio::test(start_paused = true)]
async fn every_change_is_journaled_first_with_units_in_flight_together() {
    let w = World::new(JournalCheck::Open);
    let rig = rig(
        &w,
        plan(4, "[strategy]\nbatch = 2"),
        2,
        LogRemote {
            delays: [("web-1".to_string(), secs(2))].into(),
            ..Default::default()
        },
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    rig.assert_no_violations();
    assert_eq!(w.checked(), 4 * 6);
}
