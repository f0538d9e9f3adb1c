//! A command run on the operator's machine (discovery, hooks, the artifact
//! check, git): `sh -c` in a given directory, with extra environment,
//! bounded by a timeout past which its whole process group is killed;
//! stdout kept, the tail of stderr quoted when it fails.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Most output read from the command.
const MAX_OUTPUT: u64 = 64 << 20;
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
    #[error("reading its output failed: {0}")]
    Read(String),
    #[error("did not finish within {0:?} (killed)")]
    Timeout(Duration),
    /// `how` is "exited with status 3" or "was killed by a signal".
    #[error("{how}{tail}")]
    Failed { how: String, tail: String },
}

/// Run it; its stdout when it exits 0.
pub async fn run(c: LocalCommand<'_>) -> Result<Vec<u8>, LocalFailure> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(c.command)
        .current_dir(c.dir)
        .envs(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| LocalFailure::Start(e.to_string()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let work = async {
        let mut out = Vec::new();
        let mut errs = Vec::new();
        let mut stdout = (&mut stdout).take(MAX_OUTPUT);
        let mut stderr = (&mut stderr).take(MAX_OUTPUT);
        let (o, e) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut errs));
        let status = child.wait().await;
        (o.and(e).and(status), out, errs)
    };
    let started = std::time::Instant::now();
    let (status, out, errs) = match tokio::time::timeout(c.timeout, work).await {
        Ok((Ok(status), out, errs)) => (status, out, errs),
        Ok((Err(e), _, _)) => return Err(LocalFailure::Read(e.to_string())),
        Err(_) => {
            if let Some(pid) = pid {
                // The whole group: `sh -c` may have children of its own.
                kill_group(pid);
            }
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                "local `{}` timed out",
                c.command
            );
            return Err(LocalFailure::Timeout(c.timeout));
        }
    };
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        exit = ?status.code(),
        "ran locally `{}`",
        c.command
    );
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        return Err(LocalFailure::Failed {
            how,
            tail: tail(&errs),
        });
    }
    Ok(out)
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

fn kill_group(pid: u32) {
    // No libc dependency: `kill` is always there.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
