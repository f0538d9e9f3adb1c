//! A command run on the operator's machine (discovery, hooks, the artifact
//! check, git) through the local runner (`remote::local::run_sh`: `sh -c`,
//! its own process group, killed past the timeout), in a given directory
//! with extra environment: stdout kept, the tail of stderr quoted when it
//! fails.

use crate::remote::local::{run_sh, ShError};
use std::path::Path;
use std::time::Duration;
/// Lines of stderr quoted when the command fails.
const STDERR_TAIL_LINES: usize = 10;

/// What to run.
pub struct LocalCommand<'a> {
    pub command: &'a str,
    pub dir: &'a Path,
    pub env: &'a [(String, String)],
    pub timeout: Duration,
}

/// Why it did not succeed. `Display` reads after "the command …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalFailure {
    #[error("cannot start it: {0}")]
    Start(String),
    #[error("did not finish within {0:?} (killed)")]
    Timeout(Duration),
    /// `how` is "exited with status 3" or "was killed by a signal".
    #[error("{how}{tail}")]
    Failed { how: String, tail: String },
}

/// Run it; its stdout when it exits 0.
pub async fn run(c: LocalCommand<'_>) -> Result<Vec<u8>, LocalFailure> {
    let started = std::time::Instant::now();
    let ran = run_sh(c.command, Some(c.dir), c.env, None, c.timeout).await;
    let ms = started.elapsed().as_millis() as u64;
    let done = match ran {
        Ok(done) => done,
        Err(ShError::TimedOut) => {
            tracing::debug!(ms, "local `{}` timed out", c.command);
            return Err(LocalFailure::Timeout(c.timeout));
        }
        Err(ShError::Failed(e)) => return Err(LocalFailure::Start(e)),
    };
    tracing::debug!(ms, exit = ?done.status, "ran locally `{}`", c.command);
    match done.status {
        Some(0) => Ok(done.stdout),
        code => Err(LocalFailure::Failed {
            how: match code {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            },
            tail: tail(&done.stderr),
        }),
    }
}

/// "; its stderr ends:\n    …" or " (no stderr)".
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    if lines.is_empty() {
        return " (no stderr)".into();
    }
    let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let tail: String = lines[from..].join("\n    ").chars().take(2000).collect();
    format!("; its stderr ends:\n    {tail}")
}
