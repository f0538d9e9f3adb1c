//! What the engine test binaries share: a deployment over the in-memory
//! seams, an event recorder, and running preflight + rollout.

#![allow(dead_code)] // each test binary uses a part

use changeover_core::engine::{self, Deployment, Report};
use changeover_core::event::{Event, EventSink, Phase};
use changeover_core::journal::MemoryJournal;
use changeover_core::plan::Plan;
use changeover_core::sim::{SimBalancer, SimProbe, SimRemote};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Every event with the (virtual) time it came at.
#[derive(Default)]
pub struct Recorder(Mutex<Vec<(Duration, Event)>>);

impl EventSink for Recorder {
    fn emit(&self, elapsed: Duration, event: Event) {
        self.0.lock().unwrap().push((elapsed, event));
    }
}

impl Recorder {
    pub fn events(&self) -> Vec<(Duration, Event)> {
        self.0.lock().unwrap().clone()
    }

    /// When each unit was taken out, in order.
    pub fn take_outs(&self) -> Vec<(Duration, String)> {
        self.events()
            .into_iter()
            .filter_map(|(t, e)| match e {
                Event::UnitPhase {
                    unit,
                    phase: Phase::TakeOut,
                    ..
                } => Some((t, unit)),
                _ => None,
            })
            .collect()
    }
}

pub struct Fixture {
    pub lb: Arc<SimBalancer>,
    pub journal: Arc<MemoryJournal>,
    pub events: Arc<Recorder>,
    pub dep: Arc<Deployment>,
}

/// Version "1" → "2" over every unit of `plan`, one simulated balancer.
pub fn fixture(plan: Arc<Plan>, remote: SimRemote, probe: SimProbe, forced: &[&str]) -> Fixture {
    let lb = Arc::new(SimBalancer::default());
    let journal = Arc::new(MemoryJournal::default());
    let events = Arc::new(Recorder::default());
    let remote = Arc::new(remote);
    let dep = Arc::new(Deployment {
        units: plan.units(),
        policy: plan.target(None).expect("fleet").policy,
        plan,
        balancers: vec![lb.clone()],
        remote: remote.clone(),
        local: remote,
        health: Some(Arc::new(probe)),
        gate: None,
        wave_hooks: None,
        journal: journal.clone(),
        events: events.clone(),
        deploy_id: "t".into(),
        version: "2".into(),
        previous_version: "1".into(),
        target: None,
        forced: forced.iter().map(|s| s.to_string()).collect(),
        started: tokio::time::Instant::now(),
        external_halt: Default::default(),
    });
    Fixture {
        lb,
        journal,
        events,
        dep,
    }
}

/// Preflight (which must say go), then the rollout.
pub async fn deploy(f: &Fixture) -> Report {
    let pf = engine::preflight(&f.dep).await;
    assert!(pf.go(), "preflight: {:?}", pf.problems);
    engine::run(
        f.dep.clone(),
        &pf,
        CancellationToken::new(),
        CancellationToken::new(),
    )
    .await
}
