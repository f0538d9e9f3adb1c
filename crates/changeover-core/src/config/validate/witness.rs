//! `[witness]`: the traffic witness, steady requests through the balancer during the deploy.

use super::{redact_url, Validator};
use crate::config::raw::RawWitness;
use crate::path;
use crate::plan::WitnessSpec;
use std::time::Duration;

impl Validator<'_> {
    pub(super) fn witness(&mut self, raw: RawWitness) -> Option<WitnessSpec> {
        if !raw.url.starts_with("http://") {
            self.err(
                path!["witness", "url"],
                format!("the witness URL `{}` is not an http:// URL", redact_url(&raw.url)),
                "not http://",
                "point the witness at the balancer's http:// address, e.g. url = \"http://10.0.0.5/health\" (https is not supported by the witness yet)",
            );
        }
        let rps = match raw.rps {
            None => 20,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(n) => {
                self.err(
                    path!["witness", "rps"],
                    format!("rps = {n} is out of range"),
                    "out of range",
                    "requests per second, 1 to 10000",
                );
                20
            }
        };
        let abort_after_failures = match raw.abort_after_failures {
            None => None,
            Some(n) if n >= 0 => Some(n as u64),
            Some(n) => {
                self.err(
                    path!["witness", "abort_after_failures"],
                    format!("{n} is negative"),
                    "negative",
                    "the number of failed requests tolerated before the rollout halts, 0 or more",
                );
                None
            }
        };
        let keep_alive_share = match raw.keep_alive_share {
            None => 0.5,
            Some(f) if (0.0..=1.0).contains(&f) => f,
            Some(f) => {
                self.err(path!["witness", "keep_alive_share"], format!("{f} is not a share"), "out of range", "a number from 0.0 (every request on a new connection) to 1.0 (all on kept-alive connections)");
                0.5
            }
        };
        let timeout = self.duration(
            path!["witness", "timeout"],
            raw.timeout.as_ref(),
            Duration::from_secs(2),
            false,
        );
        Some(WitnessSpec {
            url: raw.url,
            rps,
            timeout,
            abort_after_failures,
            keep_alive_share,
        })
    }
}
