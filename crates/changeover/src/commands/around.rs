//! Around a run: the `--report` recorder and the `[[notify]]` queue, the
//! git ref behind `--version`, and the deploy-level hooks (`pre_deploy`, `post_deploy`, `on_failure`), each
//! reported as a `hook_finished` event.

use super::execute::{Executed, Request};
use super::Ctx;
use crate::exit;
use changeover_adapters::hooks::Hooks;
use changeover_adapters::notify::{Notifier, RunContext};
use changeover_core::event::{Event, EventSink};
use changeover_core::plan::Plan;
use changeover_core::state;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long notifications still queued at exit may take to go out.
const NOTIFY_WAIT: Duration = Duration::from_secs(5);

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

/// Run `req`; with `--report`, every event is also recorded and the HTML
/// report written at the end (the file is created first: a path that cannot
/// be written is exit 2 before anything is touched); with `[[notify]]`
/// (and no `--silent`), events go to the notifier's queue too.
pub async fn with_extras(ctx: &Ctx, mut req: Request) -> Executed {
    let report = req.report.take();
    if let Some(path) = &report {
        if let Err(e) = std::fs::write(path, "") {
            eprintln!(
                "error: cannot write the report {}: {e}; nothing was touched",
                path.display()
            );
            return Executed::exit(exit::USAGE);
        }
    }
    let recorder = report
        .as_ref()
        .map(|_| Arc::new(crate::report::Recorder::new()));
    let notifier = (!req.silent && !ctx.plan.notify.is_empty()).then(|| {
        Arc::new(Notifier::start(
            &ctx.plan.notify,
            RunContext {
                app: ctx.plan.app.clone(),
                target: req.target.clone(),
                command: req.kind.as_str().to_string(),
                message: req.message.clone(),
                holder: state::holder(),
            },
        ))
    });
    if recorder.is_none() && notifier.is_none() {
        return super::execute::execute_run(ctx, req).await;
    }
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![ctx.events.clone()];
    if let Some(r) = &recorder {
        sinks.push(r.clone());
    }
    if let Some(n) = &notifier {
        sinks.push(n.clone());
    }
    let teed = Ctx {
        plan: Arc::clone(&ctx.plan),
        events: Arc::new(crate::reporter::Tee(sinks)),
        json: ctx.json,
        quiet: ctx.quiet,
    };
    let title = format!(
        "changeover {} {} of {}{}",
        req.kind.as_str(),
        req.version.as_deref().unwrap_or(""),
        ctx.plan.app,
        req.target
            .as_deref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default()
    );
    let done = super::execute::execute_run(&teed, req).await;
    if let Some(n) = notifier {
        for problem in n.finish(NOTIFY_WAIT).await {
            eprintln!("warning: {problem}");
        }
    }
    if let (Some(path), Some(recorder)) = (report, recorder) {
        let html = crate::report::render(&recorder.events(), &title);
        match std::fs::write(&path, html) {
            Ok(()) => eprintln!("report: {}", path.display()),
            Err(e) => eprintln!("warning: cannot write the report {}: {e}", path.display()),
        }
    }
    done
}
