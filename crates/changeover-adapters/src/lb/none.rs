//! `kind = "none"`: no balancer. Units are deployed in place; nothing is
//! taken out, so the health check is the only gate.

use async_trait::async_trait;
use changeover_core::lb::{
    AdminState, LbAction, LbCapabilities, LbError, LoadBalancer, MemberStatus, OperState,
};
use changeover_core::unit::Unit;

pub struct NoBalancer;

#[async_trait]
impl LoadBalancer for NoBalancer {
    fn label(&self) -> String {
        "no balancer".into()
    }

    fn capabilities(&self) -> LbCapabilities {
        LbCapabilities {
            counts_sessions: false,
            distinct_disable: false,
        }
    }

    fn member_name(&self, unit: &Unit) -> String {
        unit.name()
    }

    async fn status(&self, units: &[&Unit]) -> Vec<Result<MemberStatus, LbError>> {
        units
            .iter()
            .map(|u| {
                Ok(MemberStatus {
                    member: u.name(),
                    admin: AdminState::Ready,
                    oper: OperState::Unknown,
                    weight: None,
                    sessions: None,
                    raw: "no balancer".into(),
                })
            })
            .collect()
    }

    async fn apply(
        &self,
        _: &[&Unit],
        _: LbAction,
        _: Option<&[MemberStatus]>,
    ) -> Result<(), LbError> {
        Ok(())
    }
}
