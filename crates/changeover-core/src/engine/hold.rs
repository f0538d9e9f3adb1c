//! Keeping a unit out while it is out. Between its disable and its put-back
//! a unit must not serve (invariant 2): but a balancer can put it back on
//! its own — an HAProxy reload forgets the runtime state, so every server
//! is `ready` again as the config says. While the unit's steps and health
//! check run, its members are watched; one seen serving is taken out again
//! at once (journaled like any change) and reported.

use super::walk::{Msg, Walk};
use crate::event::{Event, Phase};
use crate::lb::{AdminState, LbAction};
use std::time::Duration;

/// How often a held-out unit's members are looked at.
const WATCH_EVERY: Duration = Duration::from_millis(500);

impl Walk {
    /// Runs until dropped (the caller selects it against the unit's work).
    pub(crate) async fn hold_out(&self) {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            for (li, lb) in self.dep.balancers.iter().enumerate() {
                let status = lb.status(&[&self.unit]).await.into_iter().next();
                let Some(Ok(s)) = status else { continue };
                // Back in rotation as far as the balancer's admin state
                // goes, whatever its checks say: once the app answers it
                // would get traffic before its health check passed.
                let admin_in = s.admin == AdminState::Ready && s.weight.is_none_or(|w| w > 0);
                if !admin_in {
                    continue;
                }
                let action = if lb.capabilities().distinct_disable {
                    LbAction::Disable
                } else {
                    LbAction::Drain
                };
                let again = self.change(li, action, Phase::Steps).await;
                let _ = self.tx.send(Msg::Event(Event::MemberBack {
                    unit: self.unit.name(),
                    balancer: lb.label(),
                    member: s.member.clone(),
                    state: s.raw.clone(),
                    taken_out_again: again.is_ok(),
                }));
            }
        }
    }
}
