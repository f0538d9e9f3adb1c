//! `scope = "host"`: one balancer on every host (an HAProxy beside the app),
//! each reached through the host's own connection. To the engine it is one
//! balancer; each call is split by host and the hosts are asked at once.
//!
//! Member names carry the host (`web-1:pxapp/pxApp_1`), since every host has
//! the same backend and server names.

use async_trait::async_trait;
use changeover_core::lb::{LbAction, LbCapabilities, LbError, LoadBalancer, MemberStatus};
use changeover_core::unit::Unit;
use futures::future::join_all;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct PerHostLb {
    /// What each host's balancer is, for the label (e.g. `haproxy
    /// /run/haproxy/admin.sock on each host`).
    label: String,
    by_host: BTreeMap<String, Arc<dyn LoadBalancer>>,
    capabilities: LbCapabilities,
}

impl PerHostLb {
    /// `by_host`: the balancer of each host, by host name; at least one.
    pub fn new(label: String, by_host: BTreeMap<String, Arc<dyn LoadBalancer>>) -> PerHostLb {
        let capabilities = by_host
            .values()
            .next()
            .map(|lb| lb.capabilities())
            .unwrap_or(LbCapabilities {
                counts_sessions: false,
                distinct_disable: false,
            });
        PerHostLb {
            label,
            by_host,
            capabilities,
        }
    }

    fn of(&self, unit: &Unit) -> Result<&Arc<dyn LoadBalancer>, LbError> {
        self.by_host.get(&unit.host.name).ok_or_else(|| {
            LbError::Other(format!(
                "{}: no balancer for host {} (not in the deploy's fleet)",
                self.label, unit.host.name
            ))
        })
    }

    /// Positions of `units`, grouped by host (in host-name order).
    fn positions_by_host<'u>(&self, units: &[&'u Unit]) -> BTreeMap<&'u str, Vec<usize>> {
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, u) in units.iter().enumerate() {
            groups.entry(u.host.name.as_str()).or_default().push(i);
        }
        groups
    }
}

fn qualified(host: &str, member: &str) -> String {
    format!("{host}:{member}")
}

#[async_trait]
impl LoadBalancer for PerHostLb {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn capabilities(&self) -> LbCapabilities {
        self.capabilities
    }

    fn member_name(&self, unit: &Unit) -> String {
        match self.of(unit) {
            Ok(lb) => qualified(&unit.host.name, &lb.member_name(unit)),
            Err(_) => qualified(&unit.host.name, "?"),
        }
    }

    async fn status(&self, units: &[&Unit]) -> Vec<Result<MemberStatus, LbError>> {
        let groups = self.positions_by_host(units);
        let answers = join_all(groups.values().map(|positions| async move {
            let mine: Vec<&Unit> = positions.iter().map(|&i| units[i]).collect();
            match self.of(mine[0]) {
                Ok(lb) => lb.status(&mine).await,
                Err(e) => mine
                    .iter()
                    .map(|_| Err(LbError::Other(e.to_string())))
                    .collect(),
            }
        }))
        .await;
        let mut out: Vec<Option<Result<MemberStatus, LbError>>> =
            units.iter().map(|_| None).collect();
        for (positions, results) in groups.values().zip(answers) {
            for (&i, result) in positions.iter().zip(results) {
                out[i] = Some(result.map(|mut s| {
                    s.member = qualified(&units[i].host.name, &s.member);
                    s
                }));
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(LbError::Other(format!("{}: no answer", self.label)))))
            .collect()
    }

    /// Every host's change is made at once; the first error is returned
    /// after all have been tried (each change is idempotent, so the engine
    /// may put back or retry).
    async fn apply(
        &self,
        units: &[&Unit],
        action: LbAction,
        restore: Option<&[MemberStatus]>,
    ) -> Result<(), LbError> {
        let groups = self.positions_by_host(units);
        let results = join_all(groups.iter().map(|(host, positions)| async move {
            let mine: Vec<&Unit> = positions.iter().map(|&i| units[i]).collect();
            let lb = self.of(mine[0])?;
            // The host's balancer knows its members without the host prefix.
            let prefix = qualified(host, "");
            let restore: Option<Vec<MemberStatus>> = restore.map(|all| {
                all.iter()
                    .filter_map(|s| {
                        s.member.strip_prefix(&prefix).map(|m| MemberStatus {
                            member: m.to_string(),
                            ..s.clone()
                        })
                    })
                    .collect()
            });
            lb.apply(&mine, action, restore.as_deref()).await
        }))
        .await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }
}
