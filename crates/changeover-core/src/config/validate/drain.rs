//! `[drain]`: how a unit taken out of rotation is drained of connections.

use super::Validator;
use crate::config::raw::RawDrain;
use crate::path;
use crate::plan::{DrainMode, DrainSpec, Instances, LbKind, LbSpec, OnTimeout};
use std::time::Duration;

impl Validator<'_> {
    pub(super) fn drain(
        &mut self,
        raw: Option<RawDrain>,
        lbs: &[LbSpec],
        instances: &Instances,
    ) -> Option<DrainSpec> {
        let raw = raw.unwrap_or_default();
        let counting = lbs
            .iter()
            .any(|l| matches!(l.kind, LbKind::Haproxy { .. } | LbKind::Embedded { .. }));
        let default_mode = if counting || lbs.is_empty() {
            "lb"
        } else {
            "fixed"
        };
        let mode = match self.choice(
            path!["drain", "mode"],
            raw.mode.as_ref(),
            &["lb", "host", "fixed", "command"],
            default_mode,
        ) {
            "lb" => {
                if !counting && !lbs.is_empty() {
                    self.err(path!["drain", "mode"], "drain mode \"lb\" needs a balancer that counts sessions, and none configured does", "no balancer can count sessions", "use mode = \"fixed\" (a pause) or \"command\"");
                }
                DrainMode::Lb
            }
            "host" => {
                if instances.first_port.is_none() {
                    self.err(
                        path!["drain", "mode"],
                        "drain mode \"host\" counts connections to the unit's port, but no port is defined",
                        "needs [instances] first_port",
                        "add [instances] with first_port = <the port the app listens on> (instance k listens on first_port + k - 1)",
                    );
                }
                let local_address = match &raw.local_address {
                    Some(a) => Some(self.template(path!["drain", "local_address"], a)?),
                    None => None,
                };
                DrainMode::Host { local_address }
            }
            "command" => match &raw.command {
                Some(c) => DrainMode::Command(self.template(path!["drain", "command"], c)?),
                None => {
                    self.err(path!["drain", "mode"], "drain mode \"command\" without drain.command", "needs drain.command", "set command = \"...\": run on the host, it exits 0 once the unit has no open connection");
                    return None;
                }
            },
            _ => DrainMode::Fixed,
        };
        if raw.local_address.is_some() && !matches!(mode, DrainMode::Host { .. }) {
            self.err(
                path!["drain", "local_address"],
                "drain.local_address applies to mode = \"host\" only",
                "not used",
                "remove it, or set mode = \"host\" to count connections on the host",
            );
        }
        let on_timeout = match self.choice(
            path!["drain", "on_timeout"],
            raw.on_timeout.as_ref(),
            &["fail", "proceed"],
            "fail",
        ) {
            "proceed" => OnTimeout::Proceed,
            _ => OnTimeout::Fail,
        };
        // Asking a balancer for a session count is cheap (one socket
        // read): every 50 ms, so the disable follows the last session by
        // at most that. Counting on the host runs an SSH command each time.
        let default_interval = if matches!(mode, DrainMode::Lb) {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(200)
        };
        Some(DrainSpec {
            mode,
            timeout: self.duration(
                path!["drain", "timeout"],
                raw.timeout.as_ref(),
                Duration::from_secs(30),
                true,
            ),
            on_timeout,
            interval: self.duration(
                path!["drain", "interval"],
                raw.interval.as_ref(),
                default_interval,
                false,
            ),
        })
    }
}
