//! The traffic witness around a deploy: start it before the first unit,
//! watch its failure count, halt the rollout past `abort_after_failures`,
//! report its figures at the end.

use changeover_adapters::witness::{Witness, WitnessOptions, WitnessReport};
use changeover_core::engine::Deployment;
use changeover_core::event::Event;
use changeover_core::plan::WitnessSpec;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

pub struct Running {
    witness: Arc<Witness>,
    monitor: JoinHandle<()>,
}

/// The longest a witness runs: a deploy that takes longer is still judged
/// by what the witness saw; the loop never runs unbounded.
const MAX_DURATION: Duration = Duration::from_secs(6 * 3600);

pub fn start(spec: &WitnessSpec, dep: &Deployment) -> Result<Running, String> {
    let witness = Witness::start(WitnessOptions {
        url: spec.url.clone(),
        rps: spec.rps,
        timeout: spec.timeout,
        keep_alive_share: spec.keep_alive_share,
        max_duration: MAX_DURATION,
        max_requests: u64::from(spec.rps) * MAX_DURATION.as_secs(),
    })
    .map_err(|e| format!("cannot start the traffic witness: {e}"))?;
    let witness = Arc::new(witness);
    let live = Arc::clone(&witness);
    let halt = dep.external_halt.clone();
    let events = dep.events.clone();
    let started = dep.started;
    let abort_after = spec.abort_after_failures;
    let monitor = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            n += 1;
            let c = live.live();
            if let Some(limit) = abort_after {
                if c.failures > limit && !halt.is_triggered() {
                    halt.trigger(format!(
                        "traffic witness: {} failed request(s), more than abort_after_failures = {limit}",
                        c.failures
                    ));
                }
            }
            if n.is_multiple_of(20) {
                events.emit(
                    started.elapsed(),
                    Event::WitnessProgress {
                        requests: c.requests,
                        failures: c.failures,
                    },
                );
            }
        }
    });
    Ok(Running { witness, monitor })
}

impl Running {
    pub async fn finish(self, dep: &Deployment) -> WitnessReport {
        self.monitor.abort();
        // Wait until the monitor has dropped its handle on the witness.
        let _ = self.monitor.await;
        let witness = Arc::try_unwrap(self.witness)
            .unwrap_or_else(|_| unreachable!("the monitor was the only other owner"));
        let report = witness.stop().await;
        dep.events
            .emit(dep.started.elapsed(), summary_event(&report));
        report
    }
}

pub fn summary_event(r: &WitnessReport) -> Event {
    let ms = |d: Duration| d.as_millis() as u64;
    Event::WitnessSummary {
        requests: r.requests,
        failures: r.failures,
        p50_ms: ms(r.p50),
        p90_ms: ms(r.p90),
        p99_ms: ms(r.p99),
        max_ms: ms(r.max),
        failure_kinds: r.failure_kinds.clone(),
    }
}
