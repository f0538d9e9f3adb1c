//! `[discovery] command`: run on the operator's machine with `sh -c` in the
//! config's directory, bounded by `timeout` (the whole process group is
//! killed past it); stdout is the JSON host list, stderr is shown when it
//! fails.

use changeover_core::discovery::{inventory, DiscoveryError};
use changeover_core::unit::Host;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Most output read from the command (a host list of 100,000 hosts is a
/// few MiB).
const MAX_OUTPUT: u64 = 64 << 20;
/// Lines of stderr quoted when the command fails.
const STDERR_TAIL_LINES: usize = 10;

pub async fn hosts(
    origin: &str,
    command: &str,
    dir: &Path,
    timeout: Duration,
    app: &str,
) -> Result<Vec<Host>, DiscoveryError> {
    let err = |m: String| DiscoveryError::new(origin, m);
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("CHANGEOVER_APP", app)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("cannot start it: {e}")))?;
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
    let (status, out, errs) = match tokio::time::timeout(timeout, work).await {
        Ok((Ok(status), out, errs)) => (status, out, errs),
        Ok((Err(e), _, _)) => return Err(err(format!("reading its output failed: {e}"))),
        Err(_) => {
            if let Some(pid) = pid {
                // The whole group: `sh -c` may have children of its own.
                kill_group(pid);
            }
            return Err(err(format!(
                "did not finish within {timeout:?} (killed); raise [discovery] timeout if it is just slow"
            )));
        }
    };
    if !status.success() {
        let how = match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => "was killed by a signal".to_string(),
        };
        return Err(err(format!("{how}{}", tail(&errs))));
    }
    inventory::parse(origin, &out)
}

/// ": <the last lines of stderr>" or nothing.
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
