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

mod bound_and_health;
#[path = "../common/mod.rs"]
mod common;
mod confirm;
mod drain;
mod journal;
mod order;
mod survivors;

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
        gate: None,
        wave_hooks: None,
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
