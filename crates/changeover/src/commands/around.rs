//! Around a run: the git ref behind `--version`, the artifact check, and
//! the deploy-level hooks (`pre_deploy`, `post_deploy`, `on_failure`), each
//! reported as a `hook_finished` event.

use crate::exit;
use changeover_adapters::hooks::Hooks;
use changeover_core::event::{Event, EventSink};
use changeover_core::plan::Plan;
use std::time::{Duration, Instant};

/// `--version` as typed → the version to deploy and the ref (when
/// `[version] git` turned a ref into a sha). `Err(exit code)` after saying
/// why.
pub async fn resolve_version(plan: &Plan, typed: &str) -> Result<(String, Option<String>), u8> {
    let Some(source) = &plan.version_source else {
        return Ok((typed.to_string(), None));
    };
    match changeover_adapters::version::resolve_ref(source, typed).await {
        Ok(sha) if sha == typed => Ok((sha, None)),
        Ok(sha) => {
            eprintln!(
                "version: {typed} is {sha} ([version] git = {:?})",
                source.git
            );
            Ok((sha, Some(typed.to_string())))
        }
        Err(e) => {
            eprintln!("error: {e}; nothing was touched");
            Err(exit::USAGE)
        }
    }
}

/// Run deploy-level hook `name` and report it; `Err` with the reason when
/// it ran and failed.
pub async fn hook(
    hooks: &Hooks,
    name: &str,
    units: &[String],
    extra: &[(&str, String)],
    events: &dyn EventSink,
    since: Duration,
) -> Result<(), String> {
    let t = Instant::now();
    let ran = hooks.run(name, units, extra).await;
    let error = match &ran {
        Ok(false) => return Ok(()),
        Ok(true) => None,
        Err(e) => Some(e.clone()),
    };
    events.emit(
        since + t.elapsed(),
        Event::HookFinished {
            hook: name.to_string(),
            wave: None,
            ok: error.is_none(),
            duration_ms: t.elapsed().as_millis() as u64,
            error: error.clone(),
        },
    );
    match error {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
