//! `[deploy]`: the deploy steps (`local` on this machine, `run` on each host over SSH).

use super::{Validator, P};
use crate::config::locate::Seg;
use crate::config::raw::RawDeploy;
use crate::path;
use crate::plan::DeploySpec;
use crate::template::Template;
use std::time::Duration;
use toml::Value;

impl Validator<'_> {
    fn commands(&mut self, path: P, value: Option<&Value>) -> Vec<Template> {
        let Some(value) = value else {
            return Vec::new();
        };
        let help = "give a command string or a list of command strings";
        match value {
            Value::String(s) => self.template(path, s).into_iter().collect(),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(Seg::Index(i));
                    match item {
                        Value::String(s) => out.extend(self.template(p, s)),
                        other => self.err(
                            p,
                            format!("expected a command string, found {}", other.type_str()),
                            "not a string",
                            help,
                        ),
                    }
                }
                out
            }
            other => {
                self.err(
                    path,
                    format!(
                        "expected a command string or a list, found {}",
                        other.type_str()
                    ),
                    "wrong type",
                    help,
                );
                Vec::new()
            }
        }
    }

    pub(super) fn deploy(&mut self, raw: Option<RawDeploy>) -> Option<DeploySpec> {
        let Some(raw) = raw else {
            self.err(vec![], "missing [deploy] section", "", "add [deploy] with run = \"...\" (runs on each host over SSH) and/or local = \"...\" (runs on this machine)");
            return None;
        };
        let run = self.commands(path!["deploy", "run"], raw.run.as_ref());
        let local = self.commands(path!["deploy", "local"], raw.local.as_ref());
        if raw.run.is_none() && raw.local.is_none() {
            self.err(path!["deploy"], "[deploy] has no step", "nothing to run", "set run = \"...\" (runs on each host over SSH) and/or local = \"...\" (runs on this machine)");
        }
        let prepare = self.commands(path!["deploy", "prepare"], raw.prepare.as_ref());
        let prepare_parallel = match raw.prepare_parallel {
            None => None,
            Some(n) if (1..=10_000).contains(&n) => Some(n as usize),
            Some(n) => {
                self.err(
                    path!["deploy", "prepare_parallel"],
                    format!("prepare_parallel = {n} is out of range"),
                    "out of range",
                    "how many units prepare at once: 1 to 10000 (default: [ssh] max_connections)",
                );
                None
            }
        };
        if prepare_parallel.is_some() && prepare.is_empty() {
            self.err(
                path!["deploy", "prepare_parallel"],
                "prepare_parallel is set but there is no prepare",
                "nothing to run",
                "add prepare = \"...\" (run on every unit before the rollout), or remove prepare_parallel",
            );
        }
        Some(DeploySpec {
            local,
            run,
            prepare,
            prepare_parallel,
            timeout: self.duration(
                path!["deploy", "timeout"],
                raw.timeout.as_ref(),
                Duration::from_secs(300),
                false,
            ),
        })
    }
}
