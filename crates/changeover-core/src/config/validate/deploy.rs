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
        Some(DeploySpec {
            local,
            run,
            timeout: self.duration(
                path!["deploy", "timeout"],
                raw.timeout.as_ref(),
                Duration::from_secs(300),
                false,
            ),
        })
    }
}
