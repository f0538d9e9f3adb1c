pub mod local;
pub mod ssh;
pub mod step;

/// `-v`: one record per command run on a host, with its exit and timing.
pub(crate) fn log_command(
    via: &str,
    host: &str,
    command: &str,
    started: std::time::Instant,
    result: &Result<changeover_core::remote::CommandOutput, changeover_core::remote::RemoteError>,
) {
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(out) => {
            tracing::debug!(via, host, ms, exit = ?out.status, "ran `{command}`");
            tracing::trace!(host, stdout = %out.stdout.trim_end(), stderr = %out.stderr.trim_end(), "output of `{command}`");
        }
        Err(e) => tracing::debug!(via, host, ms, "`{command}` failed: {e}"),
    }
}
