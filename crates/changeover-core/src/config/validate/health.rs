//! `[health]`: the check a unit must pass before it goes back into rotation.

use super::Validator;
use crate::config::raw::RawHealth;
use crate::path;
use crate::plan::{HealthCheck, HealthSpec};
use std::time::Duration;

impl Validator<'_> {
    pub(super) fn health(&mut self, raw: RawHealth) -> Option<HealthSpec> {
        let given = [raw.http.is_some(), raw.tcp.is_some(), raw.command.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given != 1 {
            self.err(path!["health"], if given == 0 { "[health] names no check" } else { "[health] names more than one check" }, "here", "set exactly one of http = \"http://{address}:8080/health\", tcp = \"{address}:8080\" or command = \"...\"");
            return None;
        }
        let expect_status = match raw.expect_status {
            None => 200,
            Some(s) if (100..=599).contains(&s) => s as u16,
            Some(s) => {
                self.err(
                    path!["health", "expect_status"],
                    format!("{s} is not an HTTP status"),
                    "out of range",
                    "use a status code from 100 to 599, usually 200",
                );
                200
            }
        };
        let check = if let Some(url) = &raw.http {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                self.err(
                    path!["health", "http"],
                    format!("`{url}` is not an http(s) URL"),
                    "not a URL",
                    "write a URL such as \"http://{address}:8080/health\"",
                );
            }
            HealthCheck::Http {
                url: self.template(path!["health", "http"], url)?,
                expect_status,
                expect_body: raw.expect_body.clone(),
            }
        } else if let Some(addr) = &raw.tcp {
            HealthCheck::Tcp {
                address: self.template(path!["health", "tcp"], addr)?,
            }
        } else {
            HealthCheck::Command(self.template(
                path!["health", "command"],
                raw.command.as_deref().unwrap_or_default(),
            )?)
        };
        let healthy_threshold = match raw.healthy_threshold {
            None => 1,
            Some(n) if (1..=1000).contains(&n) => n as u32,
            Some(n) => {
                self.err(
                    path!["health", "healthy_threshold"],
                    format!("healthy_threshold = {n} is not allowed"),
                    "out of range",
                    "the number of consecutive passing checks, 1 or more",
                );
                1
            }
        };
        let interval = self.duration(
            path!["health", "interval"],
            raw.interval.as_ref(),
            Duration::from_secs(1),
            false,
        );
        let timeout = self.duration(
            path!["health", "timeout"],
            raw.timeout.as_ref(),
            Duration::from_secs(2),
            false,
        );
        let deadline = self.duration(
            path!["health", "deadline"],
            raw.deadline.as_ref(),
            Duration::from_secs(60),
            false,
        );
        if deadline < timeout {
            self.err(
                path!["health", "deadline"],
                "the health deadline is shorter than one check's timeout",
                "too short",
                "the deadline bounds all checks of a unit; make it longer than timeout",
            );
        }
        Some(HealthSpec {
            check,
            interval,
            timeout,
            healthy_threshold,
            deadline,
        })
    }
}
