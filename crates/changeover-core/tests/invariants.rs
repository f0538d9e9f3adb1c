//! SPEC.md's engine invariants, each proved by a test that fails when the
//! invariant breaks. Deterministic: paused tokio time (the runtime is
//! single-threaded, so the order of records in the shared log is the order
//! things happened), and scripted doubles that change their answers at
//! fixed virtual instants, never by luck of timing.
//!
//! The doubles share one [`World`]: every balancer change, every deploy step
//! and every probe goes into one log in the order it happened; balancers
//! check inside `apply` what must hold at the moment of a change (the
//! journal's last record, no sessions left when a unit is cut off) and note
//! violations; and the number of units out of service (not serving on some
//! balancer) is sampled at every change.
//!
//! Each test's doc comment names the one-line engine change it was seen to
//! fail for (the mutation was made in a scratch worktree of the engine, the
//! test run red, the mutation reverted).

mod common;

use changeover_core::config;
use changeover_core::engine::{self, Deployment, Report};
use changeover_core::event::{Event, Outcome};
use changeover_core::health::HealthProbe;
use changeover_core::journal::{MemoryJournal, Record};
use changeover_core::lb::{
    AdminState, LbAction, LbCapabilities, LbError, LoadBalancer, MemberStatus, OperState,
};
use changeover_core::plan::Plan;
use changeover_core::remote::{CommandOutput, Remote, RemoteError};
use changeover_core::unit::{Host, Unit};
use common::Recorder;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use LbAction::{Disable, Drain, Enable};

/// Long enough to be "never" in any of these rollouts.
const NEVER: Duration = Duration::from_secs(1_000_000);

/// Sessions a member reports while it has not drained.
const OPEN_SESSIONS: u64 = 3;

// ---------------------------------------------------------------------------
// The world the doubles share.

/// One thing that happened, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// A balancer change was asked for; `ok` is false when it was refused.
    Apply {
        lb: usize,
        unit: String,
        action: LbAction,
        ok: bool,
    },
    /// A deploy step ran on a host.
    Step { host: String, command: String },
    /// One health probe of a unit and its result.
    Probe { unit: String, ok: bool },
}

/// A member's state on one balancer, and its script.
#[derive(Default)]
struct Member {
    admin: Option<AdminState>,
    drained_at: Option<Instant>,
    enabled_at: Option<Instant>,
    /// Sessions stay open this long after the drain (`None`: none open).
    sessions_for: Option<Duration>,
    /// After a put-back the balancer reports the member down this long.
    down_for: Option<Duration>,
    /// Actions the balancer refuses for this member.
    refuse: Vec<LbAction>,
    /// The balancer has no such member.
    missing: bool,
}

impl Member {
    fn admin(&self) -> AdminState {
        self.admin.unwrap_or(AdminState::Ready)
    }

    fn sessions(&self, now: Instant) -> u64 {
        match (self.sessions_for, self.drained_at) {
            (None, _) => 0,
            (Some(_), None) => OPEN_SESSIONS,
            (Some(d), Some(at)) if now < at + d => OPEN_SESSIONS,
            _ => 0,
        }
    }

    fn oper(&self, now: Instant) -> OperState {
        match (self.down_for, self.enabled_at) {
            (Some(d), Some(at)) if now < at + d => OperState::Down,
            _ => OperState::Up,
        }
    }

    fn serving(&self, now: Instant) -> bool {
        self.admin() == AdminState::Ready && self.oper(now) == OperState::Up
    }
}

/// How strictly a balancer checks the journal inside `apply`.
#[derive(Clone, Copy, PartialEq)]
enum JournalCheck {
    /// The journal's very last record is the intent for this change (one
    /// unit in flight: nothing else can have been written in between).
    Last,
    /// The last intent for this member on this balancer is this change and
    /// it has no `done` yet (several units in flight).
    Open,
}

struct WorldState {
    log: Vec<(Duration, Entry)>,
    members: HashMap<(usize, String), Member>,
    violations: Vec<String>,
    /// Units not serving on some balancer, sampled at every change.
    max_out: usize,
    /// Changes whose journal check passed.
    checked: usize,
    /// Balancers that cannot be reached.
    unreachable: HashSet<usize>,
    /// Per change: (balancer, unit, action, the `restore` it was given).
    restores: Vec<(usize, String, LbAction, Option<Vec<MemberStatus>>)>,
}

struct World {
    start: Instant,
    journal: Arc<MemoryJournal>,
    check: JournalCheck,
    /// Whether cutting a unit off (disable) with sessions open is a violation.
    forbid_cut_with_sessions: bool,
    state: Mutex<WorldState>,
}

impl World {
    fn new(check: JournalCheck) -> Arc<World> {
        World::build(check, true)
    }

    /// A world where a disable with sessions open is expected (drain
    /// `on_timeout = "proceed"`).
    fn allowing_cut_with_sessions(check: JournalCheck) -> Arc<World> {
        World::build(check, false)
    }

    fn build(check: JournalCheck, forbid_cut_with_sessions: bool) -> Arc<World> {
        Arc::new(World {
            start: Instant::now(),
            journal: Arc::new(MemoryJournal::default()),
            check,
            forbid_cut_with_sessions,
            state: Mutex::new(WorldState {
                log: Vec::new(),
                members: HashMap::new(),
                violations: Vec::new(),
                max_out: 0,
                checked: 0,
                unreachable: HashSet::new(),
                restores: Vec::new(),
            }),
        })
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn with_member(&self, lb: usize, unit: &str, f: impl FnOnce(&mut Member)) {
        let mut st = self.state.lock().unwrap();
        f(st.members.entry((lb, unit.to_string())).or_default());
    }

    /// `unit` keeps sessions open on balancer `lb` for `d` after its drain.
    fn sessions_for(&self, lb: usize, unit: &str, d: Duration) {
        self.with_member(lb, unit, |m| m.sessions_for = Some(d));
    }

    /// Balancer `lb` reports `unit` down for `d` after it is put back.
    fn down_for(&self, lb: usize, unit: &str, d: Duration) {
        self.with_member(lb, unit, |m| m.down_for = Some(d));
    }

    /// Balancer `lb` refuses `action` for `unit`.
    fn refuse(&self, lb: usize, unit: &str, action: LbAction) {
        self.with_member(lb, unit, |m| m.refuse.push(action));
    }

    /// Balancer `lb` has no member for `unit`.
    fn missing(&self, lb: usize, unit: &str) {
        self.with_member(lb, unit, |m| m.missing = true);
    }

    /// `unit` is in maintenance on balancer `lb` before the deploy.
    fn maint(&self, lb: usize, unit: &str) {
        self.with_member(lb, unit, |m| m.admin = Some(AdminState::Maint));
    }

    /// Balancer `lb` cannot be reached.
    fn unreachable(&self, lb: usize) {
        self.state.lock().unwrap().unreachable.insert(lb);
    }

    fn push(st: &mut WorldState, at: Duration, e: Entry) {
        st.log.push((at, e));
    }

    fn log(&self) -> Vec<(Duration, Entry)> {
        self.state.lock().unwrap().log.clone()
    }

    fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    fn max_out(&self) -> usize {
        self.state.lock().unwrap().max_out
    }

    fn checked(&self) -> usize {
        self.state.lock().unwrap().checked
    }

    fn admin(&self, lb: usize, unit: &str) -> AdminState {
        self.state
            .lock()
            .unwrap()
            .members
            .get(&(lb, unit.to_string()))
            .map_or(AdminState::Ready, Member::admin)
    }

    /// The balancer changes asked for `unit`, in order: (balancer, action).
    fn applies(&self, unit: &str) -> Vec<(usize, LbAction)> {
        self.log()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Entry::Apply {
                    lb,
                    unit: u,
                    action,
                    ..
                } if u == unit => Some((lb, action)),
                _ => None,
            })
            .collect()
    }

    /// When the `n`-th (0-based) change `action` of `unit` on `lb` was asked for.
    fn apply_at(&self, lb: usize, unit: &str, action: LbAction, n: usize) -> Duration {
        self.log()
            .into_iter()
            .filter(|(_, e)| {
                matches!(e, Entry::Apply { lb: l, unit: u, action: a, .. }
                    if *l == lb && u == unit && *a == action)
            })
            .nth(n)
            .unwrap_or_else(|| panic!("no {action} #{n} of {unit} on lb{lb}: {:?}", self.log()))
            .0
    }

    /// When steps ran on `host`.
    fn steps_at(&self, host: &str) -> Vec<Duration> {
        self.log()
            .into_iter()
            .filter_map(|(t, e)| match e {
                Entry::Step { host: h, .. } if h == host => Some(t),
                _ => None,
            })
            .collect()
    }

    /// The journal check for a change about to be made, against the
    /// journal as it is now.
    fn check_journal(&self, st: &mut WorldState, lb: usize, unit: &str, action: LbAction) {
        let records = self
            .journal
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let is_this = |r: &Record| {
            matches!(r, Record::Intent { balancer, unit: u, member, action: a, .. }
                if *balancer == lb && u == unit && member == unit && *a == action)
        };
        let ok = match self.check {
            JournalCheck::Last => records.last().is_some_and(is_this),
            JournalCheck::Open => {
                let last_intent = records.iter().rev().find(|r| {
                    matches!(r, Record::Intent { balancer, unit: u, .. } if *balancer == lb && u == unit)
                });
                match last_intent {
                    Some(r @ Record::Intent { seq, .. }) if is_this(r) => !records
                        .iter()
                        .any(|d| matches!(d, Record::Done { seq: s, .. } if s == seq)),
                    _ => false,
                }
            }
        };
        if ok {
            st.checked += 1;
        } else {
            st.violations.push(format!(
                "{action} of {unit} on lb{lb} without its intent {}: journal ends {:?}",
                if self.check == JournalCheck::Last {
                    "as the journal's last record"
                } else {
                    "open in the journal"
                },
                &records[records.len().saturating_sub(3)..]
            ));
        }
    }

    /// Sample how many units are out of service (not serving on some balancer).
    fn sample(st: &mut WorldState, now: Instant) {
        let out: BTreeSet<&str> = st
            .members
            .iter()
            .filter(|(_, m)| !m.serving(now))
            .map(|((_, u), _)| u.as_str())
            .collect();
        st.max_out = st.max_out.max(out.len());
    }
}

// ---------------------------------------------------------------------------
// The doubles.

/// A balancer whose members follow the world's script.
struct ScriptLb {
    index: usize,
    world: Arc<World>,
}

#[async_trait::async_trait]
impl LoadBalancer for ScriptLb {
    fn label(&self) -> String {
        format!("lb{}", self.index)
    }
    fn capabilities(&self) -> LbCapabilities {
        LbCapabilities {
            counts_sessions: true,
            distinct_disable: true,
        }
    }
    fn member_name(&self, unit: &Unit) -> String {
        unit.name()
    }
    async fn status(&self, units: &[&Unit]) -> Vec<Result<MemberStatus, LbError>> {
        let now = Instant::now();
        let mut st = self.world.state.lock().unwrap();
        let unreachable = st.unreachable.contains(&self.index);
        units
            .iter()
            .map(|u| {
                if unreachable {
                    return Err(LbError::Unreachable {
                        endpoint: self.label(),
                        message: "scripted: connection refused".into(),
                    });
                }
                let m = st.members.entry((self.index, u.name())).or_default();
                if m.missing {
                    return Err(LbError::NoSuchMember {
                        endpoint: self.label(),
                        member: u.name(),
                    });
                }
                let (admin, oper) = (m.admin(), m.oper(now));
                Ok(MemberStatus {
                    member: u.name(),
                    admin,
                    oper,
                    weight: Some(1),
                    sessions: Some(m.sessions(now)),
                    raw: format!("{admin:?} {oper:?}"),
                })
            })
            .collect()
    }
    async fn apply(
        &self,
        units: &[&Unit],
        action: LbAction,
        restore: Option<&[MemberStatus]>,
    ) -> Result<(), LbError> {
        let now = Instant::now();
        let at = self.world.now();
        let mut st = self.world.state.lock().unwrap();
        for u in units {
            let name = u.name();
            st.restores
                .push((self.index, name.clone(), action, restore.map(<[_]>::to_vec)));
            self.world.check_journal(&mut st, self.index, &name, action);
            let m = st.members.entry((self.index, name.clone())).or_default();
            if m.refuse.contains(&action) {
                World::push(
                    &mut st,
                    at,
                    Entry::Apply {
                        lb: self.index,
                        unit: name.clone(),
                        action,
                        ok: false,
                    },
                );
                return Err(LbError::Refused {
                    endpoint: self.label(),
                    request: format!("{action} {name}"),
                    answer: "scripted refusal".into(),
                });
            }
            let sessions = m.sessions(now);
            match action {
                LbAction::Drain => {
                    m.admin = Some(AdminState::Drain);
                    m.drained_at.get_or_insert(now);
                }
                LbAction::Disable => m.admin = Some(AdminState::Maint),
                LbAction::Enable => {
                    m.admin = Some(AdminState::Ready);
                    m.enabled_at = Some(now);
                }
            }
            if action == LbAction::Disable && sessions > 0 && self.world.forbid_cut_with_sessions {
                st.violations.push(format!(
                    "{name} disabled on lb{} at {at:?} with {sessions} session(s) open",
                    self.index
                ));
            }
            World::push(
                &mut st,
                at,
                Entry::Apply {
                    lb: self.index,
                    unit: name,
                    action,
                    ok: true,
                },
            );
            World::sample(&mut st, now);
        }
        Ok(())
    }
}

/// A remote that logs every command; steps take `delay` (per host, or the
/// default) and fail on `failing` hosts.
#[derive(Default)]
struct LogRemote {
    world: Option<Arc<World>>,
    delay: Duration,
    delays: HashMap<String, Duration>,
    failing: HashSet<String>,
    /// What a failing step prints: (stdout, stderr).
    failing_output: (String, String),
}

#[async_trait::async_trait]
impl Remote for LogRemote {
    async fn connect_all(&self, hosts: &[&Host]) -> Vec<Result<(), RemoteError>> {
        hosts.iter().map(|_| Ok(())).collect()
    }
    async fn run(
        &self,
        host: &Host,
        command: &str,
        _timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        let world = self.world.as_ref().expect("wired by rig()");
        {
            let mut st = world.state.lock().unwrap();
            World::push(
                &mut st,
                world.now(),
                Entry::Step {
                    host: host.name.clone(),
                    command: command.to_string(),
                },
            );
        }
        let delay = self.delays.get(&host.name).copied().unwrap_or(self.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.failing.contains(&host.name) {
            return Ok(CommandOutput {
                status: Some(1),
                stdout: self.failing_output.0.clone(),
                stderr: self.failing_output.1.clone(),
            });
        }
        Ok(CommandOutput {
            status: Some(0),
            ..CommandOutput::default()
        })
    }
}

/// A probe that answers each unit from a script (the last answer repeats;
/// units without a script pass) and logs every answer.
#[derive(Default)]
struct LogProbe {
    world: Option<Arc<World>>,
    scripts: Mutex<HashMap<String, Vec<bool>>>,
    /// Units that fail every probe from one instant to another (world time).
    sick: HashMap<String, (Duration, Duration)>,
}

impl LogProbe {
    fn script(self, unit: &str, answers: &[bool]) -> LogProbe {
        self.scripts
            .lock()
            .unwrap()
            .insert(unit.to_string(), answers.to_vec());
        self
    }

    /// `unit` fails every probe from `from` to `until` (world time).
    fn sick(mut self, unit: &str, from: Duration, until: Duration) -> LogProbe {
        self.sick.insert(unit.to_string(), (from, until));
        self
    }
}

#[async_trait::async_trait]
impl HealthProbe for LogProbe {
    async fn probe(&self, unit: &Unit) -> Result<(), String> {
        let ok = {
            let mut scripts = self.scripts.lock().unwrap();
            match scripts.get_mut(&unit.name()) {
                Some(s) if s.len() > 1 => s.remove(0),
                Some(s) => s.first().copied().unwrap_or(true),
                None => true,
            }
        };
        let world = self.world.as_ref().expect("wired by rig()");
        let now = world.now();
        let ok = ok
            && !self
                .sick
                .get(&unit.name())
                .is_some_and(|&(from, until)| from <= now && now < until);
        let mut st = world.state.lock().unwrap();
        World::push(
            &mut st,
            world.now(),
            Entry::Probe {
                unit: unit.name(),
                ok,
            },
        );
        if ok {
            Ok(())
        } else {
            Err("scripted: status 503".into())
        }
    }
    fn describe(&self, unit: &Unit) -> String {
        format!("script://{unit}")
    }
}

// ---------------------------------------------------------------------------
// Wiring.

/// `hosts` hosts web-1.. of one unit each behind one configured balancer
/// (drain mode "lb" by default), health polled every second with a 5 s
/// deadline; `extra` adds or overrides sections.
fn plan(hosts: usize, extra: &str) -> Arc<Plan> {
    let mut s = format!(
        "app = \"t\"\n[[load_balancers]]\nkind = \"haproxy\"\nsocket = \"x\"\nbackend = \"app\"\n\
         [deploy]\nrun = \"switch {{version}}\"\n{extra}\n"
    );
    if !extra.contains("[health]") {
        s.push_str("[health]\ntcp = \"{address}:80\"\ninterval = \"1s\"\ndeadline = \"5s\"\n");
    }
    for i in 1..=hosts {
        s.push_str(&format!(
            "[[hosts]]\nname = \"web-{i}\"\naddress = \"10.0.0.{i}\"\n"
        ));
    }
    Arc::new(
        config::parse("t.toml", &s, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{:?}", miette::Report::new(e)))
            .plan,
    )
}

struct Rig {
    world: Arc<World>,
    events: Arc<Recorder>,
    dep: Arc<Deployment>,
}

/// A deployment of `plan` through `balancers` scripted balancers of `world`.
fn rig(
    world: &Arc<World>,
    plan: Arc<Plan>,
    balancers: usize,
    mut remote: LogRemote,
    mut probe: LogProbe,
) -> Rig {
    remote.world = Some(world.clone());
    probe.world = Some(world.clone());
    let events = Arc::new(Recorder::default());
    let remote = Arc::new(remote);
    let dep = Arc::new(Deployment {
        units: plan.units(),
        policy: plan.target(None).expect("fleet").policy,
        plan,
        balancers: (0..balancers)
            .map(|index| {
                Arc::new(ScriptLb {
                    index,
                    world: world.clone(),
                }) as Arc<dyn LoadBalancer>
            })
            .collect(),
        remote: remote.clone(),
        local: remote,
        health: Some(Arc::new(probe)),
        journal: world.journal.clone(),
        events: events.clone(),
        deploy_id: "t".into(),
        version: "2".into(),
        previous_version: "1".into(),
        target: None,
        forced: Default::default(),
        started: Instant::now(),
        external_halt: Default::default(),
    });
    Rig {
        world: world.clone(),
        events,
        dep,
    }
}

impl Rig {
    async fn deploy(&self) -> Report {
        let pf = engine::preflight(&self.dep).await;
        assert!(pf.go(), "preflight: {:?}", pf.problems);
        engine::run(
            self.dep.clone(),
            &pf,
            CancellationToken::new(),
            CancellationToken::new(),
        )
        .await
    }

    /// When `unit` finished (its `unit_finished` event).
    fn finished_at(&self, unit: &str) -> Duration {
        self.events
            .events()
            .into_iter()
            .find_map(|(t, e)| match e {
                Event::UnitFinished { unit: u, .. } if u == unit => Some(t),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{unit} never finished"))
    }

    /// Every progress line: (done, total, in flight).
    fn progress(&self) -> Vec<(usize, usize, usize)> {
        self.events
            .events()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::Progress {
                    done,
                    total,
                    in_flight,
                    ..
                } => Some((done, total, in_flight)),
                _ => None,
            })
            .collect()
    }

    /// The counts of `deploy_finished`: updated, failed, reverted, skipped,
    /// untouched, current.
    fn finished_counts(&self) -> Option<[usize; 6]> {
        self.events.events().into_iter().find_map(|(_, e)| match e {
            Event::DeployFinished {
                updated,
                failed,
                reverted,
                skipped,
                untouched,
                current,
                ..
            } => Some([updated, failed, reverted, skipped, untouched, current]),
            _ => None,
        })
    }

    fn drain_timeouts(&self) -> Vec<(String, Option<u64>, bool)> {
        self.events
            .events()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::DrainTimeout {
                    unit,
                    sessions,
                    proceeded,
                } => Some((unit, sessions, proceeded)),
                _ => None,
            })
            .collect()
    }

    /// No balancer saw a change without its journal intent, or a cut-off
    /// with sessions open.
    fn assert_no_violations(&self) {
        let v = self.world.violations();
        assert!(v.is_empty(), "violations: {v:#?}");
    }
}

fn unit<'a>(r: &'a Report, name: &str) -> &'a changeover_core::event::UnitSummary {
    r.units.iter().find(|u| u.unit == name).unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

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

// ---------------------------------------------------------------------------
// Confirm: back in means serving, before the next unit starts.

/// The balancer reports web-1 down for 4 s after its put-back: with batch 1,
/// web-2 is not taken out until web-1 serves again, so never two units out.
///
/// Kills: walk.rs `walk()`: `if let Err(f) = self.confirm().await {` →
/// `if let Err(f) = Ok::<(), Failure>(()) {` (confirm skipped).
#[tokio::test(start_paused = true)]
async fn the_next_unit_waits_until_the_put_back_unit_serves() {
    let w = World::new(JournalCheck::Last);
    w.down_for(0, "web-1", secs(4));
    let rig = rig(
        &w,
        plan(3, "[strategy]\nbatch = 1"),
        1,
        LogRemote::default(),
        LogProbe::default(),
    );
    let r = rig.deploy().await;
    assert_eq!(r.outcome, Outcome::Success, "{:?}", r.units);
    rig.assert_no_violations();
    let enabled = w.apply_at(0, "web-1", Enable, 0);
    let next = w.apply_at(0, "web-2", Drain, 0);
    assert!(
        next >= enabled + secs(4),
        "web-2 taken out at {next:?}, web-1 not serving until {:?}",
        enabled + secs(4)
    );
    assert!(rig.finished_at("web-1") >= enabled + secs(4));
    assert_eq!(w.max_out(), 1, "never two units out of service");
}

/// The balancer never reports web-2 serving after its put-back: web-2 fails
/// in the confirm phase once the health deadline (5 s, the bound confirm
/// uses) has passed, is taken out again on both balancers in config order
/// so it is not left half-in, and the rollout halts.
///
/// Kills: walk.rs `walk()`: confirm skipped (as above); also the take-out
/// again `let _ = self.change(li, LbAction::Drain, Phase::Confirm).await;`
/// deleted (left in rotation while not serving).
#[tokio::test(start_paused = true)]
async fn a_member_that_never_serves_again_fails_in_confirm_and_is_taken_out() {
    let w = World::new(JournalCheck::Last);
    w.down_for(1, "web-2", NEVER);
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
    assert_eq!(unit(&r, "web-1").state, "updated");
    let u = unit(&r, "web-2");
    assert_eq!(u.state, "failed");
    assert!(!u.in_rotation);
    let detail = u.detail.as_deref().unwrap_or("");
    assert!(
        detail.starts_with("confirm:") && detail.contains("lb1"),
        "{detail}"
    );
    assert_eq!(
        w.applies("web-2"),
        [
            (0, Drain),
            (1, Drain),
            (0, Disable),
            (1, Disable),
            (1, Enable),
            (0, Enable),
            (0, Drain),
            (1, Drain)
        ]
    );
    let enabled = w.apply_at(0, "web-2", Enable, 0);
    let failed = rig.finished_at("web-2");
    assert!(
        failed >= enabled + secs(5) && failed < enabled + secs(6),
        "failed at {failed:?}, put back at {enabled:?}"
    );
    assert_eq!(w.admin(0, "web-2"), AdminState::Drain);
    assert_eq!(w.admin(1, "web-2"), AdminState::Drain);
    assert_eq!(unit(&r, "web-3").state, "untouched");
    assert!(w.applies("web-3").is_empty());
}

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
