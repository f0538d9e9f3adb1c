//! In-memory implementations of the seams: a balancer, a remote and a probe
//! with zero latency (or a virtual one, in paused time). For the engine's own tests and the rollout benchmark,
//! where the engine must be measured alone. Failure injection is by unit
//! name so tests can script one bad host.

use crate::health::HealthProbe;
use crate::lb::{
    AdminState, BalancerState, LbAction, LbCapabilities, LbError, LoadBalancer, MemberStatus,
    OperState,
};
use crate::remote::{CommandOutput, Remote, RemoteError};
use crate::unit::{Host, Unit};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// A balancer that keeps member state in memory and records the highest
/// number of members out of rotation at any moment.
#[derive(Default)]
pub struct SimBalancer {
    state: Mutex<SimState>,
    /// Virtual time every call takes (the benchmark's "100 ms balancer").
    pub latency: Duration,
}

#[derive(Default)]
struct SimState {
    admin: HashMap<String, AdminState>,
    out: usize,
    max_out: usize,
    changes: u64,
    /// The balancer's own state (None: Ready).
    balancer: Option<BalancerState>,
    /// The next this many changes are refused as busy (another change in
    /// progress), as Rackspace's 422 and Octavia's 409 do.
    busy_left: u32,
    busy_refusals: u64,
}

impl SimBalancer {
    /// A balancer whose every call takes `latency` of (virtual) time.
    pub fn with_latency(latency: Duration) -> SimBalancer {
        SimBalancer {
            latency,
            ..Default::default()
        }
    }

    pub fn max_out(&self) -> usize {
        self.state.lock().unwrap().max_out
    }
    pub fn changes(&self) -> u64 {
        self.state.lock().unwrap().changes
    }
    /// Report `state` as the balancer's own state from now on.
    pub fn set_state(&self, state: BalancerState) {
        self.state.lock().unwrap().balancer = Some(state);
    }
    /// Refuse the next `n` changes as busy.
    pub fn busy_next(&self, n: u32) {
        self.state.lock().unwrap().busy_left = n;
    }
    /// Changes refused as busy so far.
    pub fn busy_refusals(&self) -> u64 {
        self.state.lock().unwrap().busy_refusals
    }
    pub fn admin(&self, unit: &str) -> AdminState {
        *self
            .state
            .lock()
            .unwrap()
            .admin
            .get(unit)
            .unwrap_or(&AdminState::Ready)
    }
}

#[async_trait]
impl LoadBalancer for SimBalancer {
    fn label(&self) -> String {
        "sim".into()
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
    async fn balancer_state(&self) -> Result<BalancerState, LbError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .balancer
            .clone()
            .unwrap_or(BalancerState::Ready))
    }
    async fn status(&self, units: &[&Unit]) -> Vec<Result<MemberStatus, LbError>> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let st = self.state.lock().unwrap();
        units
            .iter()
            .map(|u| {
                let admin = *st.admin.get(&u.name()).unwrap_or(&AdminState::Ready);
                Ok(MemberStatus {
                    member: u.name(),
                    admin,
                    oper: OperState::Up,
                    weight: Some(1),
                    sessions: Some(0),
                    raw: format!("{admin:?}"),
                })
            })
            .collect()
    }
    async fn apply(
        &self,
        units: &[&Unit],
        action: LbAction,
        _: Option<&[MemberStatus]>,
    ) -> Result<(), LbError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let mut st = self.state.lock().unwrap();
        if st.busy_left > 0 {
            st.busy_left -= 1;
            st.busy_refusals += 1;
            return Err(LbError::Busy {
                endpoint: "sim".into(),
                detail: "PENDING_UPDATE: considered immutable".into(),
                retry_after: None,
            });
        }
        for u in units {
            let new = match action {
                LbAction::Drain => AdminState::Drain,
                LbAction::Disable => AdminState::Maint,
                LbAction::Enable => AdminState::Ready,
            };
            let old = st.admin.insert(u.name(), new).unwrap_or(AdminState::Ready);
            match (old == AdminState::Ready, new == AdminState::Ready) {
                (true, false) => st.out += 1,
                (false, true) => st.out -= 1,
                _ => {}
            }
            st.max_out = st.max_out.max(st.out);
            st.changes += 1;
        }
        Ok(())
    }
}

/// A remote whose commands succeed at once, except on hosts listed as failing.
/// `output` answers commands that contain a key (e.g. the `/proc/net/tcp`
/// read of drain mode "host"), in turn; the last answer repeats.
#[derive(Default)]
pub struct SimRemote {
    pub failing_hosts: HashSet<String>,
    pub unreachable_hosts: HashSet<String>,
    pub delay: Duration,
    /// Up to this much more per host (fixed per host name), so that units
    /// do not all finish in the same instant.
    pub spread: Duration,
    pub output: std::sync::Mutex<Vec<(String, std::collections::VecDeque<String>)>>,
    /// The next N commands that match an `output` key time out instead.
    pub timeouts: std::sync::Mutex<u32>,
}

#[async_trait]
impl Remote for SimRemote {
    async fn connect_all(&self, hosts: &[&Host]) -> Vec<Result<(), RemoteError>> {
        hosts
            .iter()
            .map(|h| {
                if self.unreachable_hosts.contains(&h.name) {
                    Err(RemoteError::Connect {
                        host: h.name.clone(),
                        message: "Connection refused".into(),
                    })
                } else {
                    Ok(())
                }
            })
            .collect()
    }
    async fn run(
        &self,
        host: &Host,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        {
            let mut output = self.output.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, answers)) = output
                .iter_mut()
                .find(|(k, _)| command.contains(k.as_str()))
            {
                let mut timeouts = self.timeouts.lock().unwrap_or_else(|e| e.into_inner());
                if *timeouts > 0 {
                    *timeouts -= 1;
                    return Err(RemoteError::Timeout {
                        host: host.name.clone(),
                        command: command.to_string(),
                        timeout,
                    });
                }
                let stdout = if answers.len() > 1 {
                    answers.pop_front().unwrap_or_default()
                } else {
                    answers.front().cloned().unwrap_or_default()
                };
                return Ok(CommandOutput {
                    status: Some(0),
                    stdout,
                    stderr: String::new(),
                });
            }
        }
        if !self.delay.is_zero() || !self.spread.is_zero() {
            let h = host
                .name
                .bytes()
                .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
            let extra = self.spread.mul_f64(f64::from(h % 1000) / 1000.0);
            tokio::time::sleep(self.delay + extra).await;
        }
        if self.failing_hosts.contains(&host.name) {
            return Ok(CommandOutput {
                status: Some(1),
                stdout: String::new(),
                stderr: "simulated failure".into(),
            });
        }
        Ok(CommandOutput {
            status: Some(0),
            ..CommandOutput::default()
        })
    }
}

/// A probe that passes at once, except for units listed as unhealthy, and
/// units that fail their next N probes (then recover).
#[derive(Default)]
pub struct SimProbe {
    pub unhealthy_units: HashSet<String>,
    /// Virtual time every probe takes.
    pub latency: Duration,
    pub failing_probes: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl SimProbe {
    /// `unit` fails its next `n` probes, then passes.
    pub fn fail_next(self, unit: &str, n: u32) -> SimProbe {
        self.failing_probes
            .lock()
            .unwrap()
            .insert(unit.to_string(), n);
        self
    }
}

#[async_trait]
impl HealthProbe for SimProbe {
    async fn probe(&self, unit: &Unit) -> Result<(), String> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.unhealthy_units.contains(&unit.name()) {
            return Err("simulated: status 503".into());
        }
        let mut failing = self
            .failing_probes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match failing.get_mut(&unit.name()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err("simulated: status 503 (recovering)".into())
            }
            _ => Ok(()),
        }
    }
    fn describe(&self, unit: &Unit) -> String {
        format!("sim://{unit}")
    }
}
