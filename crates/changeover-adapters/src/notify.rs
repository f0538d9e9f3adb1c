//! `[[notify]]`: the run announced to Slack (an incoming webhook's
//! `{"text": …}`) or to any webhook (the event's JSON object), from a
//! background queue: the deploy never waits on an endpoint, a failing one
//! is retried, then reported, and at exit the queue gets a bounded time to
//! drain. The URL is a secret (it comes from `url_env`): it is never
//! logged, and errors name the variable, not the URL.

use changeover_core::event::{to_json_line, Event, EventSink, Outcome};
use changeover_core::plan::{NotifyKind, NotifySpec};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Tries per notification (the first and two retries).
const ATTEMPTS: u32 = 3;

/// What the run is, for every payload.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    pub app: String,
    pub target: Option<String>,
    /// `deploy`, `rollback` or `unify`.
    pub command: String,
    pub message: Option<String>,
    pub holder: String,
}

/// One endpoint's queue and worker.
struct Channel {
    tx: mpsc::UnboundedSender<(String, Value)>,
    worker: tokio::task::JoinHandle<()>,
    spec: NotifySpec,
}

/// An `EventSink` that queues the configured events for every endpoint.
pub struct Notifier {
    channels: Mutex<Vec<Channel>>,
    context: Mutex<Context>,
    /// What went wrong (reported by the caller; never holds a URL).
    problems: Arc<Mutex<Vec<String>>>,
}

#[derive(Default)]
struct Context {
    run: RunContext,
    version: String,
    deploy_id: String,
    /// A second `deploy_started` in one execution is the automatic rollback.
    runs_seen: usize,
}

impl Notifier {
    /// One worker per endpoint whose URL variable is set; a missing one is
    /// a problem reported at once (and that endpoint is skipped).
    pub fn start(specs: &[NotifySpec], run: RunContext) -> Notifier {
        let problems = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("changeover/", env!("CARGO_PKG_VERSION")))
            .build()
            .ok();
        let mut channels = Vec::new();
        for spec in specs {
            let url = match std::env::var(&spec.url_env) {
                Ok(u) if !u.trim().is_empty() => u,
                _ => {
                    lock(&problems).push(format!(
                        "notify {}: ${} is not set; that endpoint gets nothing",
                        kind_name(spec.kind),
                        spec.url_env
                    ));
                    continue;
                }
            };
            let Some(client) = client.clone() else {
                lock(&problems).push("notify: cannot set up the HTTP client".into());
                break;
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let worker = tokio::spawn(deliver(
                client,
                url,
                spec.clone(),
                rx,
                Arc::clone(&problems),
            ));
            channels.push(Channel {
                tx,
                worker,
                spec: spec.clone(),
            });
        }
        Notifier {
            channels: Mutex::new(channels),
            context: Mutex::new(Context {
                run,
                ..Context::default()
            }),
            problems,
        }
    }

    /// Stop queueing and give what is queued up to `wait` to go out; the
    /// problems met (none holds a URL), with one for what was left unsent.
    pub async fn finish(&self, wait: Duration) -> Vec<String> {
        let channels: Vec<Channel> = std::mem::take(&mut *lock(&self.channels));
        let deadline = tokio::time::Instant::now() + wait;
        for c in channels {
            drop(c.tx);
            let mut worker = c.worker;
            if tokio::time::timeout_at(deadline, &mut worker)
                .await
                .is_err()
            {
                worker.abort();
                lock(&self.problems).push(format!(
                    "notify {} (${}): gave up after {wait:?} at exit; notifications still queued were not sent",
                    kind_name(c.spec.kind),
                    c.spec.url_env
                ));
            }
        }
        std::mem::take(&mut *lock(&self.problems))
    }

    fn payload(&self, kind: NotifyKind, event: &Event, json: &Value, ctx: &Context) -> Value {
        match kind {
            NotifyKind::Webhook => {
                let mut v = json.clone();
                if let Some(map) = v.as_object_mut() {
                    map.insert("app".into(), ctx.run.app.clone().into());
                    map.insert("target".into(), ctx.run.target.clone().into());
                    map.insert("command".into(), command(ctx).into());
                    map.insert("message".into(), ctx.run.message.clone().into());
                    map.insert("holder".into(), ctx.run.holder.clone().into());
                    map.insert("deploy_id".into(), ctx.deploy_id.clone().into());
                    map.insert("version".into(), ctx.version.clone().into());
                }
                v
            }
            NotifyKind::Slack => json!({ "text": slack_text(event, ctx) }),
        }
    }
}

impl EventSink for Notifier {
    fn emit(&self, elapsed: Duration, event: Event) {
        let mut ctx = lock(&self.context);
        if let Event::DeployStarted {
            deploy_id, version, ..
        } = &event
        {
            ctx.deploy_id = deploy_id.clone();
            ctx.version = version.clone();
            ctx.runs_seen += 1;
        }
        let name = event.name();
        let failed = matches!(
            &event,
            Event::DeployFinished { outcome, .. } if *outcome != Outcome::Success
        );
        let channels = lock(&self.channels);
        if channels.is_empty() {
            return;
        }
        let json: Value = serde_json::from_str(&to_json_line(elapsed, &event)).unwrap_or_default();
        for c in channels.iter() {
            let wanted = c.spec.events.iter().any(|e| e == name)
                || (failed && c.spec.events.iter().any(|e| e == "deploy_failed"));
            if wanted {
                let body = self.payload(c.spec.kind, &event, &json, &ctx);
                let _ = c.tx.send((name.to_string(), body));
            }
        }
    }
}

/// The run's command; the second run of one execution is the automatic
/// rollback (`on_failure = "rollback"`).
fn command(ctx: &Context) -> String {
    if ctx.runs_seen > 1 {
        "rollback (on_failure)".into()
    } else {
        ctx.run.command.clone()
    }
}

async fn deliver(
    client: reqwest::Client,
    url: String,
    spec: NotifySpec,
    mut rx: mpsc::UnboundedReceiver<(String, Value)>,
    problems: Arc<Mutex<Vec<String>>>,
) {
    let mut reported = false;
    while let Some((name, body)) = rx.recv().await {
        let mut last = String::new();
        let mut sent = false;
        // An endpoint that already failed every try gets one try from then
        // on: a dead endpoint must not hold up the exit.
        let attempts = if reported { 1 } else { ATTEMPTS };
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(300 << attempt)).await;
            }
            let started = std::time::Instant::now();
            let result = client
                .post(&url)
                .timeout(spec.timeout)
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(&body).unwrap_or_default())
                .send()
                .await;
            let ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(r) if r.status().is_success() => {
                    tracing::debug!(
                        ms,
                        "notify {} ${}: {name} sent",
                        kind_name(spec.kind),
                        spec.url_env
                    );
                    sent = true;
                    break;
                }
                Ok(r) => last = format!("answered {}", r.status().as_u16()),
                // reqwest's error text can hold the URL: say only what kind.
                Err(e) if e.is_timeout() => last = format!("no answer within {:?}", spec.timeout),
                Err(e) if e.is_connect() => last = "cannot connect".into(),
                Err(_) => last = "the request failed".into(),
            }
            tracing::debug!(
                ms,
                "notify {} ${}: {name}: {last}",
                kind_name(spec.kind),
                spec.url_env
            );
        }
        if !sent && !reported {
            // Once per endpoint: a dead endpoint must not flood the output.
            reported = true;
            lock(&problems).push(format!(
                "notify {} (${}): {name} not sent after {ATTEMPTS} tries: {last}",
                kind_name(spec.kind),
                spec.url_env
            ));
        }
    }
}

fn kind_name(kind: NotifyKind) -> &'static str {
    match kind {
        NotifyKind::Slack => "slack",
        NotifyKind::Webhook => "webhook",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A readable line for Slack.
fn slack_text(event: &Event, ctx: &Context) -> String {
    let what = format!(
        "{} {}{}",
        ctx.run.app,
        ctx.version,
        ctx.run
            .target
            .as_ref()
            .map(|t| format!(" to {t}"))
            .unwrap_or_default()
    );
    let message = ctx
        .run
        .message
        .as_ref()
        .map(|m| format!(": \u{201c}{m}\u{201d}"))
        .unwrap_or_default();
    match event {
        Event::DeployStarted { units, waves, max_out_of_service, .. } => format!(
            ":rocket: {} {what} started by {} ({units} unit(s), {waves} wave(s), at most {max_out_of_service} out of service){message}",
            command(ctx),
            ctx.run.holder
        ),
        Event::DeployFinished {
            outcome,
            updated,
            failed,
            current,
            units,
            ..
        } => {
            let (icon, word) = match outcome {
                Outcome::Success => (":white_check_mark:", "done"),
                Outcome::Failed => (":x:", "FAILED"),
                Outcome::Interrupted => (":warning:", "interrupted"),
            };
            let mut s = format!(
                "{icon} {} {what} {word}: {updated} updated, {current} already current, {failed} failed",
                command(ctx)
            );
            let bad: Vec<String> = units
                .iter()
                .filter(|u| u.state == "failed")
                .take(5)
                .map(|u| format!("{} ({})", u.unit, u.detail.as_deref().unwrap_or("failed")))
                .collect();
            if !bad.is_empty() {
                s.push_str(&format!("; failed: {}", bad.join(", ")));
            }
            s
        }
        Event::Halted { reason, .. } => format!(":octagonal_sign: {} {what} halted: {reason}", command(ctx)),
        other => format!("{} {what}: {}", command(ctx), other.name().replace('_', " ")),
    }
}
