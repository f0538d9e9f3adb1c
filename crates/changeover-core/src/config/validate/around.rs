//! Around the rollout: `[hooks]`, `[artifact]` and `[version]`.

use super::Validator;
use crate::config::raw::{RawArtifact, RawHooks, RawNotify, RawVersion};
use crate::event::EVENT_NAMES;
use crate::path;
use crate::plan::{
    ArtifactSpec, GitSource, HooksSpec, NotifyKind, NotifySpec, DEFAULT_NOTIFY_EVENTS,
};
use std::time::Duration;

/// What an artifact check may name: nothing about a unit (it runs once).
const ARTIFACT_PLACEHOLDERS: &[&str] = &["version", "previous_version", "target"];

impl Validator<'_> {
    pub(super) fn hooks(&mut self, raw: Option<RawHooks>) -> HooksSpec {
        let dir = self.base_dir.to_path_buf();
        let Some(raw) = raw else {
            return HooksSpec {
                timeout: Duration::from_secs(300),
                dir,
                ..HooksSpec::default()
            };
        };
        let timeout = self.duration(
            path!["hooks", "timeout"],
            raw.timeout.as_ref(),
            Duration::from_secs(300),
            false,
        );
        let command = |v: &mut Self, key: &str, value: Option<String>| {
            let c = value?;
            if c.trim().is_empty() {
                v.err(
                    path!["hooks", key],
                    format!("hook {key} is empty"),
                    "empty",
                    "give a command (run with sh -c in the config's directory; the run is in CHANGEOVER_* variables), or remove the key",
                );
                return None;
            }
            Some(c)
        };
        HooksSpec {
            pre_deploy: command(self, "pre_deploy", raw.pre_deploy),
            post_deploy: command(self, "post_deploy", raw.post_deploy),
            on_failure: command(self, "on_failure", raw.on_failure),
            pre_wave: command(self, "pre_wave", raw.pre_wave),
            post_wave: command(self, "post_wave", raw.post_wave),
            timeout,
            dir,
        }
    }

    pub(super) fn notify(&mut self, raw: Vec<RawNotify>) -> Vec<NotifySpec> {
        let mut out = Vec::new();
        for (i, n) in raw.into_iter().enumerate() {
            let kind = match self.choice(
                path!["notify", i, "kind"],
                n.kind.as_ref(),
                &["slack", "webhook"],
                "",
            ) {
                "slack" => Some(NotifyKind::Slack),
                "webhook" => Some(NotifyKind::Webhook),
                _ => {
                    if n.kind.is_none() {
                        self.err(
                            path!["notify", i],
                            "[[notify]] needs `kind`",
                            "no kind",
                            "kind = \"slack\" (an incoming webhook) or \"webhook\" (the event as JSON)",
                        );
                    }
                    None
                }
            };
            let url_env = match n.url_env {
                Some(v)
                    if !v.is_empty()
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    Some(v)
                }
                Some(_) => {
                    self.err(
                        path!["notify", i, "url_env"],
                        "url_env must name an environment variable",
                        "not a variable name",
                        "write the variable's name, e.g. url_env = \"SLACK_WEBHOOK_URL\"; the URL is a secret and never goes in the config",
                    );
                    None
                }
                None => {
                    self.err(
                        path!["notify", i],
                        "[[notify]] needs `url_env`",
                        "no url_env",
                        "name the environment variable that holds the URL, e.g. url_env = \"SLACK_WEBHOOK_URL\"",
                    );
                    None
                }
            };
            let mut events = Vec::new();
            match n.events {
                None => events.extend(DEFAULT_NOTIFY_EVENTS.iter().map(|e| e.to_string())),
                Some(list) => {
                    for (j, e) in list.into_iter().enumerate() {
                        if EVENT_NAMES.contains(&e.as_str()) || e == "deploy_failed" {
                            events.push(e);
                        } else {
                            let hint = super::closest(&e, EVENT_NAMES)
                                .map(|c| format!("did you mean \"{c}\"? "))
                                .unwrap_or_default();
                            self.err(
                                path!["notify", i, "events", j],
                                format!("`{e}` is not an event"),
                                "unknown event",
                                format!("{hint}events are the --json stream's names (docs/events.md: deploy_started, deploy_finished, halted, unit_finished, …) and deploy_failed"),
                            );
                        }
                    }
                }
            }
            let timeout = self.duration(
                path!["notify", i, "timeout"],
                n.timeout.as_ref(),
                std::time::Duration::from_secs(5),
                false,
            );
            if let (Some(kind), Some(url_env)) = (kind, url_env) {
                out.push(NotifySpec {
                    kind,
                    url_env,
                    events,
                    timeout,
                });
            }
        }
        out
    }

    pub(super) fn artifact(&mut self, raw: Option<RawArtifact>) -> Option<ArtifactSpec> {
        let raw = raw?;
        let timeout = self.duration(
            path!["artifact", "timeout"],
            raw.timeout.as_ref(),
            Duration::from_secs(60),
            false,
        );
        let Some(check) = raw.check else {
            self.err(
                path!["artifact"],
                "[artifact] needs `check`",
                "no check",
                "write the command that succeeds only when the build exists, e.g. check = \"aws s3 ls s3://builds/shop/{version}.tar.gz\"",
            );
            return None;
        };
        let template =
            self.template_in(path!["artifact", "check"], &check, ARTIFACT_PLACEHOLDERS)?;
        Some(ArtifactSpec {
            check: template,
            timeout,
            dir: self.base_dir.to_path_buf(),
        })
    }

    pub(super) fn version_source(&mut self, raw: Option<RawVersion>) -> Option<GitSource> {
        let raw = raw?;
        let timeout = self.duration(
            path!["version", "timeout"],
            raw.timeout.as_ref(),
            Duration::from_secs(30),
            false,
        );
        let Some(git) = raw.git else {
            self.err(
                path!["version"],
                "[version] needs `git`",
                "no git",
                "write git = \".\" (the repository the config is in) or the repository's URL",
            );
            return None;
        };
        let is_url = git.contains("://") || (git.contains('@') && git.contains(':'));
        if is_url {
            if has_password(&git) {
                // No span: the excerpt would show the password.
                self.err(
                    vec![],
                    "[version] git: the URL carries a password",
                    "credentials in the URL",
                    "use an SSH URL or a credential helper; never a password in the config",
                );
                return None;
            }
            return Some(GitSource {
                git: git.clone(),
                local_dir: None,
                url: Some(git),
                timeout,
            });
        }
        let dir = super::expand_home(&git);
        let dir = if dir.is_relative() {
            self.base_dir.join(dir)
        } else {
            dir
        };
        if !dir.is_dir() {
            self.err(
                path!["version", "git"],
                format!("`{}` is not a directory", dir.display()),
                "no such repository",
                "give the path of a git repository (relative to the config's directory) or a repository URL",
            );
            return None;
        }
        Some(GitSource {
            git,
            local_dir: Some(dir),
            url: None,
            timeout,
        })
    }
}

/// `https://user:secret@host/…`: a password in the URL's userinfo.
fn has_password(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}
