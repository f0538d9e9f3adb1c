//! `[hooks]`: local commands around the rollout, with the run described in
//! `CHANGEOVER_*` variables (never in the command text: nothing from the
//! command line or the inventory reaches a shell unquoted).
//!
//! | variable | value |
//! |---|---|
//! | `CHANGEOVER_HOOK` | `pre_deploy`, `post_deploy`, `on_failure`, `pre_wave`, `post_wave` |
//! | `CHANGEOVER_APP`, `CHANGEOVER_TARGET` | the app; the target (empty: the whole fleet) |
//! | `CHANGEOVER_COMMAND` | `deploy`, `rollback` or `unify` |
//! | `CHANGEOVER_VERSION`, `CHANGEOVER_VERSION_REF` | the version; the git ref typed, if any |
//! | `CHANGEOVER_PREVIOUS_VERSION` | the pointer's current before the run |
//! | `CHANGEOVER_DEPLOY_ID`, `CHANGEOVER_MESSAGE`, `CHANGEOVER_HOLDER` | the run's id, `--message`, `user@host` |
//! | `CHANGEOVER_UNITS` | the units (of the target; of the wave for wave hooks), comma-separated |
//! | `CHANGEOVER_WAVE` | wave hooks: the wave's number (1-based) |
//! | `CHANGEOVER_OUTCOME` | `post_deploy`, `on_failure`: `success`, `failed`, `interrupted`; `post_wave`: `success` or `failed` |

use crate::local_command::{self, LocalCommand};
use async_trait::async_trait;
use changeover_core::engine::WaveHooks;
use changeover_core::plan::HooksSpec;

/// The hooks of one run.
pub struct Hooks {
    spec: HooksSpec,
    /// The variables every hook of the run gets.
    base: Vec<(String, String)>,
}

/// What a run is, for the hooks' environment.
pub struct RunInfo<'a> {
    pub app: &'a str,
    pub target: Option<&'a str>,
    pub command: &'a str,
    pub version: &'a str,
    pub version_ref: Option<&'a str>,
    pub previous_version: &'a str,
    pub deploy_id: &'a str,
    pub message: Option<&'a str>,
    pub holder: &'a str,
}

impl Hooks {
    pub fn new(spec: &HooksSpec, run: &RunInfo<'_>) -> Hooks {
        let var = |k: &str, v: &str| (format!("CHANGEOVER_{k}"), v.to_string());
        Hooks {
            spec: spec.clone(),
            base: vec![
                var("APP", run.app),
                var("TARGET", run.target.unwrap_or("")),
                var("COMMAND", run.command),
                var("VERSION", run.version),
                var("VERSION_REF", run.version_ref.unwrap_or("")),
                var("PREVIOUS_VERSION", run.previous_version),
                var("DEPLOY_ID", run.deploy_id),
                var("MESSAGE", run.message.unwrap_or("")),
                var("HOLDER", run.holder),
            ],
        }
    }

    pub fn spec(&self) -> &HooksSpec {
        &self.spec
    }

    /// Run hook `name` if it is configured: `Ok(false)` when it is not.
    pub async fn run(
        &self,
        name: &str,
        units: &[String],
        extra: &[(&str, String)],
    ) -> Result<bool, String> {
        let command = match name {
            "pre_deploy" => &self.spec.pre_deploy,
            "post_deploy" => &self.spec.post_deploy,
            "on_failure" => &self.spec.on_failure,
            "pre_wave" => &self.spec.pre_wave,
            "post_wave" => &self.spec.post_wave,
            _ => &None,
        };
        let Some(command) = command else {
            return Ok(false);
        };
        let mut env = self.base.clone();
        env.push(("CHANGEOVER_HOOK".into(), name.to_string()));
        env.push(("CHANGEOVER_UNITS".into(), units.join(",")));
        env.extend(
            extra
                .iter()
                .map(|(k, v)| (format!("CHANGEOVER_{k}"), v.clone())),
        );
        local_command::run(LocalCommand {
            command,
            dir: &self.spec.dir,
            env: &env,
            timeout: self.spec.timeout,
        })
        .await
        .map(|_| true)
        .map_err(|e| format!("`{command}` {e}"))
    }
}

#[async_trait]
impl WaveHooks for Hooks {
    async fn before_wave(&self, wave: usize, units: &[String]) -> Result<bool, String> {
        self.run("pre_wave", units, &[("WAVE", wave.to_string())])
            .await
    }

    async fn after_wave(
        &self,
        wave: usize,
        units: &[String],
        failed: bool,
    ) -> Result<bool, String> {
        let outcome = if failed { "failed" } else { "success" };
        self.run(
            "post_wave",
            units,
            &[("WAVE", wave.to_string()), ("OUTCOME", outcome.to_string())],
        )
        .await
    }
}
