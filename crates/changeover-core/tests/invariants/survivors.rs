use super::*;

// Found by cargo-mutants (survivors of the core suite).

/// An external halt (the traffic witness) that comes during the pause
/// between two waves: the next wave does not start, although the pause's
/// own wait does not listen for it.
///
/// Kills: engine/mod.rs `HaltSignal::is_triggered` → `false` (the
/// dispatcher's check before starting a wave's units; the halt would only
/// be seen after the next unit had been started).
#[tokio::test(start_paused = true)]
async fn an_external_halt_during_the_pause_between_waves_starts_no_new_unit() {
    let w = World::new(JournalCheck::Last);
    let rig = rig(
        &w,
        plan(3, "[strategy]\nbatch = 1\npause = \"10s\""),
        1,
        LogRemote::default(),
        LogProbe::default(),
    );
    let signal = rig.dep.external_halt.clone();
    tokio::spawn(async move {
        tokio::time::sleep(secs(5)).await;
        signal.trigger("traffic witness: too many failed requests");
    });
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(
        r.halt_reason
            .as_deref()
            .unwrap_or("")
            .contains("traffic witness"),
        "{:?}",
        r.halt_reason
    );
    assert_eq!(unit(&r, "web-1").state, "updated");
    assert!(
        rig.finished_at("web-1") < secs(5),
        "the halt came during the pause"
    );
    for u in ["web-2", "web-3"] {
        assert_eq!(unit(&r, u).state, "untouched", "{u}");
        assert!(
            w.applies(u).is_empty(),
            "{u} was touched: {:?}",
            w.applies(u)
        );
    }
}

/// The planner gives no wave (and so no `wave_started` and a zero wave
/// count) for an empty selection, whatever the strategy, and never an empty
/// wave otherwise.
///
/// Kills: planner.rs `waves()`: the guard `Rollout::Window(_) if
/// units.is_empty()` → `if false` (one empty wave).
#[test]
fn the_planner_never_makes_an_empty_wave() {
    use changeover_core::plan::{Amount, Rollout};
    use changeover_core::planner::{waves, Schedule};
    let strategies = [
        Rollout::Batch(vec![Amount::Count(2)]),
        Rollout::Window(Amount::Count(2)),
        Rollout::Window(Amount::Percent(50.0)),
        Rollout::Groups(Amount::Count(1)),
    ];
    for r in &strategies {
        assert!(waves(&[], r).is_empty(), "{r:?}: {:?}", waves(&[], r));
        assert!(Schedule::new(&[], r).waves.is_empty());
    }
    let units = plan(5, "").units();
    for r in &strategies {
        let ws = waves(&units, r);
        assert!(ws.iter().all(|w| !w.is_empty()), "{r:?}: {ws:?}");
        let mut all: Vec<usize> = ws.concat();
        all.sort_unstable();
        assert_eq!(all, (0..5).collect::<Vec<_>>(), "{r:?}");
    }
}

/// Batch 1 with `pause = "10s"`: the first wave starts at once, every later
/// wave 10 s after the one before it finished, and each `wave_started`
/// carries its number.
///
/// Kills: dispatcher.rs `run()`: in `if wi > 0 && !pause.is_zero()`,
/// `>` → `<`, `==` or `>=`, `&&` → `||`, and `!` deleted (no pause, or
/// one before the first wave); `wave: wi + 1` → `wi * 1`.
#[tokio::test(start_paused = true)]
async fn later_waves_wait_for_the_pause_and_are_numbered() {
    let w = World::new(JournalCheck::Last);
    let rig = rig(
        &w,
        plan(3, "[strategy]\nbatch = 1\npause = \"10s\""),
        1,
        LogRemote {
            delay: secs(1),
            ..Default::default()
        },
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    assert_eq!(w.apply_at(0, "web-1", Drain, 0), Duration::ZERO);
    for (prev, next) in [("web-1", "web-2"), ("web-2", "web-3")] {
        let done = rig.finished_at(prev);
        let start = w.apply_at(0, next, Drain, 0);
        assert!(
            start >= done + secs(10) && start < done + secs(11),
            "{next} started at {start:?}, {prev} finished at {done:?}"
        );
    }
    let waves: Vec<(usize, Vec<String>)> = rig
        .events
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::WaveStarted { wave, units } => Some((wave, units)),
            _ => None,
        })
        .collect();
    assert_eq!(
        waves,
        [
            (1, vec!["web-1".to_string()]),
            (2, vec!["web-2".to_string()]),
            (3, vec!["web-3".to_string()])
        ]
    );
}

/// Units already current and units skipped count as done from the start
/// (a unit both current and skipped once): the last progress line says
/// every unit is done.
///
/// Kills: dispatcher.rs `run()`: `done: pf.skipped.len() + pf.current…`
/// `+` → `-` or `*`, and the `!` of `!pf.skipped.contains_key(i)` deleted;
/// `summary()`: `counts[slot] += 1` → `*=` (the deploy_finished counts).
#[tokio::test(start_paused = true)]
async fn progress_counts_current_and_skipped_units_as_done() {
    let w = World::new(JournalCheck::Last);
    let rig = rig(
        &w,
        plan(5, "[strategy]\nbatch = 1"),
        1,
        LogRemote::default(),
        LogProbe::default(),
    );
    let mut pf = engine::preflight(&rig.dep).await;
    assert!(pf.go(), "{:?}", pf.problems);
    pf.current.extend([0, 1, 2]);
    pf.skipped.insert(2, "scripted skip".into());
    let r = engine::run(
        rig.dep.clone(),
        &pf,
        CancellationToken::new(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    let states: Vec<&str> = r.units.iter().map(|u| u.state.as_str()).collect();
    assert_eq!(
        states,
        ["current", "current", "skipped", "updated", "updated"]
    );
    assert_eq!(
        rig.finished_counts(),
        Some([2, 0, 0, 1, 0, 2]),
        "updated, failed, reverted, skipped, untouched, current"
    );
    let progress = rig.progress();
    assert_eq!(progress.first(), Some(&(3, 5, 1)), "{progress:?}");
    assert_eq!(progress.last(), Some(&(5, 5, 0)), "{progress:?}");
    assert!(progress.iter().all(|p| p.2 <= 1), "{progress:?}");
}

/// Groups of both hosts, two instances each; web-1 fails its step, so
/// web-1#2 is skipped (never two units of a host out) while web-2#2 goes
/// on: the progress line counts the skipped unit as done and nothing in
/// flight at the end.
///
/// Kills: dispatcher.rs `skip()`: `self.done += 1` → `-=` or `*=`;
/// `finish()`: `self.in_flight -= 1` → `+=` or `/=`.
#[tokio::test(start_paused = true)]
async fn progress_counts_a_unit_skipped_for_its_failed_host() {
    let w = World::new(JournalCheck::Open);
    let rig = rig(
        &w,
        plan(
            2,
            "[instances]\ncount = 2\nfirst_port = 8081\n[strategy]\ngroups = \"100%\"\nmax_failures = 10",
        ),
        1,
        LogRemote {
            failing: ["web-1".to_string()].into(),
            ..Default::default()
        },
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Failed);
    let states: Vec<(&str, &str)> = r
        .units
        .iter()
        .map(|u| (u.unit.as_str(), u.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("web-1#1", "failed"),
            ("web-1#2", "skipped"),
            ("web-2#1", "updated"),
            ("web-2#2", "updated")
        ]
    );
    assert!(w.applies("web-1#2").is_empty());
    let progress = rig.progress();
    assert_eq!(progress.last(), Some(&(4, 4, 0)), "{progress:?}");
    assert!(progress.iter().all(|p| p.2 <= 2), "{progress:?}");
}

/// `wait_for_all_healthy` with web-3 never healthy and a gate timeout of
/// 2.5 s between two checks (1 s apart): the gate closes once (one
/// gate_closed while the same unit stays unhealthy), the rollout halts at
/// the timeout with nothing started, and the check still pending then is
/// aborted: no probe runs after the rollout returned.
///
/// Kills: dispatcher.rs `<impl Drop for GateCheck>::drop` → `()` (the
/// check outlives the rollout and probes at 3 s); `on_gate()`:
/// `names(..) != names(..)` → `==` (gate_closed repeated, the first late).
#[tokio::test(start_paused = true)]
async fn a_gate_that_times_out_closes_once_and_leaves_no_check_running() {
    let w = World::new(JournalCheck::Open);
    let rig = rig(
        &w,
        plan(
            4,
            "[strategy]\nwindow = 1\nwait_for_all_healthy = true\ngate_timeout = \"2500ms\"",
        ),
        1,
        LogRemote::default(),
        LogProbe::default().script("web-3", &[false]),
    );
    let r = rig.deploy().await;
    let returned = w.now();
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(
        r.halt_reason.as_deref().unwrap_or("").contains("web-3"),
        "{:?}",
        r.halt_reason
    );
    assert!(
        r.units.iter().all(|u| u.state == "untouched"),
        "{:?}",
        r.units
    );
    let closed: Vec<(Duration, Vec<String>)> = rig
        .events
        .events()
        .into_iter()
        .filter_map(|(t, e)| match e {
            Event::GateClosed { unhealthy, .. } => {
                Some((t, unhealthy.into_iter().map(|u| u.unit).collect()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(closed, [(Duration::ZERO, vec!["web-3".to_string()])]);
    let probes_before = w.log().len();
    tokio::time::sleep(secs(10)).await;
    let later: Vec<_> = w.log().into_iter().skip(probes_before).collect();
    assert!(
        later.is_empty(),
        "probed after the rollout returned at {returned:?}: {later:?}"
    );
}

/// Batch 2, both units fail their steps (web-1 at 1 s, web-2 at 3 s): the
/// rollout halts once, for the first failure; the second does not replace
/// the reason or say "halted" again.
///
/// Kills: dispatcher.rs `halt_with()`: `self.halt_reason.is_none() &&
/// !self.interrupted` → `||` (every later halt overwrites the first).
#[tokio::test(start_paused = true)]
async fn the_first_halt_reason_stands() {
    let w = World::new(JournalCheck::Open);
    let rig = rig(
        &w,
        plan(4, "[strategy]\nbatch = 2"),
        1,
        LogRemote {
            delays: [
                ("web-1".to_string(), secs(1)),
                ("web-2".to_string(), secs(3)),
            ]
            .into(),
            failing: ["web-1".to_string(), "web-2".to_string()].into(),
            ..Default::default()
        },
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Failed);
    let halted: Vec<String> = rig
        .events
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::Halted { reason } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(halted.len(), 1, "{halted:?}");
    assert!(halted[0].starts_with("web-1 failed"), "{halted:?}");
    assert_eq!(r.halt_reason.as_deref(), Some(halted[0].as_str()));
    assert_eq!(rig.finished_counts(), Some([0, 2, 0, 0, 2, 0]));
}

/// A second Ctrl-C (abort) while web-1 is in its step: the deploy stops at
/// once and its journal is left without `end`, so `recover` finds it.
///
/// Kills: dispatcher.rs `interrupt()`: `self.hard |= hard` → `&=` (an
/// aborted deploy closed as if it had finished).
#[tokio::test(start_paused = true)]
async fn an_abort_leaves_the_journal_open_for_recover() {
    let w = World::new(JournalCheck::Last);
    let rig = rig(
        &w,
        plan(3, "[strategy]\nbatch = 1"),
        1,
        LogRemote {
            delay: secs(10),
            ..Default::default()
        },
        LogProbe::default(),
    );
    let pf = engine::preflight(&rig.dep).await;
    assert!(pf.go(), "{:?}", pf.problems);
    let abort = CancellationToken::new();
    let a = abort.clone();
    tokio::spawn(async move {
        tokio::time::sleep(secs(5)).await;
        a.cancel();
    });
    let r = engine::run(rig.dep.clone(), &pf, CancellationToken::new(), abort).await;
    assert_eq!(r.outcome, Outcome::Interrupted);
    assert_eq!(unit(&r, "web-1").state, "unknown");
    assert!(rig
        .events
        .events()
        .iter()
        .any(|(_, e)| matches!(e, Event::Interrupted { hard: true })));
    let records = w.journal.records.lock().unwrap().clone();
    assert!(matches!(records.first(), Some(Record::Begin { .. })));
    assert!(
        !records.iter().any(|r| matches!(r, Record::End { .. })),
        "an aborted deploy must stay unfinished: {records:?}"
    );
}

/// A journal whose `end` cannot be written (a full disk at the very end).
struct NoEndJournal(Arc<MemoryJournal>);

#[async_trait::async_trait]
impl changeover_core::journal::Journal for NoEndJournal {
    async fn append(&self, record: Record) -> Result<(), changeover_core::journal::JournalError> {
        if matches!(record, Record::End { .. }) {
            return Err(changeover_core::journal::JournalError::File {
                path: "journal.ndjson".into(),
                source: std::io::Error::other("No space left on device"),
            });
        }
        self.0.append(record).await
    }
}

/// Every unit updated, but the journal's `end` cannot be written: the
/// deploy is reported failed, saying to run `changeover recover`.
///
/// Kills: dispatcher.rs `summary()`: `if outcome == Outcome::Success` →
/// `!=` (a deploy left unfinished in the journal reported a success).
#[tokio::test(start_paused = true)]
async fn a_journal_that_cannot_be_closed_fails_the_deploy() {
    let w = World::new(JournalCheck::Last);
    let mut rig = rig(
        &w,
        plan(2, "[strategy]\nbatch = 1"),
        1,
        LogRemote::default(),
        LogProbe::default(),
    );
    Arc::get_mut(&mut rig.dep).unwrap().journal = Arc::new(NoEndJournal(w.journal.clone()));
    let r = rig.deploy().await;
    assert!(
        r.units.iter().all(|u| u.state == "updated"),
        "{:?}",
        r.units
    );
    assert_eq!(r.outcome, Outcome::Failed);
    let reason = r.halt_reason.unwrap_or_default();
    assert!(
        reason.contains("cannot close the journal") && reason.contains("changeover recover"),
        "{reason}"
    );
}

/// Window 2 with `wait_for_all_healthy`: web-1 stays in its step for 10 s;
/// web-4 is ill from 1.5 s to 6 s. The gate leaves the unit in flight out
/// of its check but not the others: web-3 (started at 1 s, before web-4
/// fell ill) is followed by web-4 only once web-4 is healthy again,
/// although web-1 is still in flight, and web-1 is never probed by the gate
/// while it is out.
///
/// Kills: gate.rs `key()` → `Default::default()` (every unit has the same
/// key, so one unit in flight excludes the whole fleet from the check).
#[tokio::test(start_paused = true)]
async fn the_gate_leaves_out_only_the_units_in_flight() {
    let w = World::new(JournalCheck::Open);
    let rig = rig(
        &w,
        plan(
            5,
            "[strategy]\nwindow = 2\nwait_for_all_healthy = true\ngate_timeout = \"60s\"",
        ),
        1,
        LogRemote {
            delay: secs(1),
            delays: [("web-1".to_string(), secs(10))].into(),
            ..Default::default()
        },
        LogProbe::default().sick("web-4", Duration::from_millis(1500), secs(6)),
    );
    let r = rig.deploy().await;
    assert_eq!(
        r.outcome,
        Outcome::Success,
        "{:?} {:?}",
        r.halt_reason,
        r.units
    );
    assert!(w.apply_at(0, "web-3", Drain, 0) < Duration::from_millis(1500));
    let web4 = w.apply_at(0, "web-4", Drain, 0);
    assert!(web4 >= secs(6), "web-4 started at {web4:?}, ill until 6 s");
    assert!(
        web4 < w.apply_at(0, "web-1", Enable, 0),
        "web-1 still in flight"
    );
    // web-1's probes while it was out: only its own walk's, after its step.
    let taken = w.apply_at(0, "web-1", Drain, 0);
    let step_done = taken + secs(10);
    let early: Vec<Duration> = w
        .log()
        .into_iter()
        .filter_map(|(t, e)| match e {
            Entry::Probe { unit, .. } if unit == "web-1" && t > taken && t < step_done => Some(t),
            _ => None,
        })
        .collect();
    assert!(early.is_empty(), "web-1 probed while out: {early:?}");
}

// Preflight: go/no-go before anything is touched.

/// A three-host rig over two balancers with `forced` hosts, and its preflight.
async fn preflight_of(w: &Arc<World>, forced: &[&str]) -> engine::Preflight {
    let mut rig = rig(
        w,
        plan(3, "[strategy]\nbatch = 1"),
        2,
        LogRemote::default(),
        LogProbe::default(),
    );
    Arc::get_mut(&mut rig.dep).unwrap().forced = forced.iter().map(|s| s.to_string()).collect();
    engine::preflight(&rig.dep).await
}

/// `--force` naming no host of the config is a problem; naming one is not.
///
/// Kills: preflight.rs: `&h.name == name` → `!=`.
#[tokio::test(start_paused = true)]
async fn preflight_refuses_a_force_that_names_no_host() {
    let pf = preflight_of(&World::new(JournalCheck::Last), &["web-9"]).await;
    assert_eq!(
        pf.problems,
        ["--force names `web-9`, which is not a host in the config"]
    );
    let pf = preflight_of(&World::new(JournalCheck::Last), &["web-2"]).await;
    assert!(pf.go(), "{:?}", pf.problems);
}

/// A balancer that cannot be reached is one problem naming it, not one per
/// unit.
///
/// Kills: preflight.rs: `if !statuses.is_empty() && …all(Unreachable)` with
/// the `!` deleted (a problem per unit instead).
#[tokio::test(start_paused = true)]
async fn preflight_names_an_unreachable_balancer_once() {
    let w = World::new(JournalCheck::Last);
    w.unreachable(1);
    let pf = preflight_of(&w, &[]).await;
    assert_eq!(
        pf.problems,
        ["balancer lb1: cannot reach lb1: scripted: connection refused"]
    );
}

/// Every member of every balancer is checked: a missing member and one in
/// maintenance are problems (saying what it is and what was expected);
/// nothing is changed.
///
/// Kills: preflight.rs: `!statuses.is_empty() && …` → `||` (a reachable
/// balancer's members are not checked); the guard `Err(e) if forced` →
/// `if true` (a missing member of a host not forced is skipped);
/// `describe()` → `String::new()`.
#[tokio::test(start_paused = true)]
async fn preflight_checks_every_member_of_every_balancer() {
    let w = World::new(JournalCheck::Last);
    w.missing(1, "web-2");
    w.maint(0, "web-3");
    let pf = preflight_of(&w, &[]).await;
    assert_eq!(
        pf.problems,
        [
            "web-3: member web-3 is \"Maint Up\" (expected enabled and UP) on lb0",
            "web-2: lb1 has no member web-2",
        ]
    );
    assert!(w.applies("web-2").is_empty() && w.applies("web-3").is_empty());
}

/// A forced host whose member is missing is skipped with a note; a forced
/// host in maintenance is deployed as already out.
///
/// Kills: preflight.rs: the guard `Err(e) if forced` → `if false` (a
/// forced host's missing member is a no-go).
#[tokio::test(start_paused = true)]
async fn preflight_skips_or_notes_forced_hosts() {
    let w = World::new(JournalCheck::Last);
    w.missing(1, "web-2");
    w.maint(0, "web-3");
    let pf = preflight_of(&w, &["web-2", "web-3"]).await;
    assert!(pf.go(), "{:?}", pf.problems);
    assert_eq!(pf.skipped.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(pf.already_out.iter().copied().collect::<Vec<_>>(), [2]);
    assert_eq!(pf.notes.len(), 2, "{:?}", pf.notes);
    assert!(pf
        .notes
        .iter()
        .any(|n| n.contains("web-2") && n.contains("skipped (forced)")));
}

// What the engine hands the balancer and the report.

/// Put-back hands each balancer the member's status from before the deploy
/// (so a weight-based balancer restores the weight it had); take-out and
/// disable hand it nothing.
///
/// Kills: walk.rs `change()`: `if action == LbAction::Enable` → `!=` (the
/// restore given to take-outs and not to the put-back).
#[tokio::test(start_paused = true)]
async fn put_back_hands_the_balancer_the_status_from_before() {
    let w = World::new(JournalCheck::Last);
    let rig = rig(
        &w,
        plan(2, "[strategy]\nbatch = 1"),
        2,
        LogRemote::default(),
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    let restores = w.state.lock().unwrap().restores.clone();
    assert_eq!(restores.len(), 2 * 6);
    for (lb, unit, action, restore) in restores {
        match action {
            Enable => {
                let before = restore
                    .unwrap_or_else(|| panic!("{unit} put back on lb{lb} without its status"));
                assert_eq!(before.len(), 1);
                assert_eq!(before[0].member, unit);
                assert_eq!(before[0].admin, AdminState::Ready);
                assert_eq!(before[0].weight, Some(1));
            }
            _ => assert!(
                restore.is_none(),
                "{action} of {unit} on lb{lb} given {restore:?}"
            ),
        }
    }
}

/// A failed step's report carries the last 20 lines of its stdout (25
/// printed) and no empty stderr section; the error names the command and
/// its status.
///
/// Kills: walk.rs `output_tail()` → `String::new()` or `"xyzzy"`; its
/// `tail()` → `String::new()` or `"xyzzy"`; the `!` of either
/// `!out.stdout.trim().is_empty()` or `!out.stderr.trim().is_empty()`
/// deleted.
#[tokio::test(start_paused = true)]
async fn a_failed_step_reports_the_tail_of_its_output() {
    let w = World::new(JournalCheck::Last);
    let stdout: String = (1..=25).map(|i| format!("line {i}\n")).collect();
    let rig = rig(
        &w,
        plan(2, "[strategy]\nbatch = 1"),
        1,
        LogRemote {
            failing: ["web-1".to_string()].into(),
            failing_output: (stdout, "  \n".into()),
            ..Default::default()
        },
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Failed);
    let detail = unit(&r, "web-1").detail.clone().unwrap_or_default();
    assert_eq!(detail, "steps: run step `switch 2` exited with status 1");
    let output = rig
        .events
        .events()
        .into_iter()
        .find_map(|(_, e)| match e {
            Event::UnitFinished { unit, output, .. } if unit == "web-1" => Some(output),
            _ => None,
        })
        .flatten()
        .unwrap_or_default();
    let want: String = std::iter::once("--- stdout ---\n".to_string())
        .chain((6..=25).map(|i| format!("line {i}\n")))
        .collect();
    assert_eq!(output, want);
}
