//! SSH control directories: creating them with an owner file, finding a
//! dead run's, stopping the masters left in them and removing them.

use super::SshOptions;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `ssh -O stop`: the master accepts no new session and exits once the
/// running ones end.
pub(super) async fn stop_master(socket: &Path) {
    let _ = tokio::process::Command::new("ssh")
        .arg("-F")
        .arg("/dev/null")
        .arg("-S")
        .arg(socket)
        .args(["-O", "stop", "changeover"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

/// Where control directories are made: `control_base`, or /tmp, because
/// Unix socket paths are limited to about 100 bytes, which a default under
/// `$HOME/.local/state` or a macOS `$TMPDIR` can exceed.
pub(super) fn control_base(options: &SshOptions) -> PathBuf {
    if let Some(base) = &options.control_base {
        base.clone()
    } else if Path::new("/tmp").is_dir() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

/// A fresh directory `co-<pid>-<random>` under [`control_base`], private to
/// this user, for the control sockets, with an `owner` file (`<pid>
/// <start time>`) saying which process it belongs to, so that a later run
/// can tell a dead owner's directory from a live one's. The name is random
/// and created exclusively, because /tmp is shared: a directory someone else
/// made in advance must not be used.
pub(super) fn create_control_dir(base: &Path) -> Result<PathBuf, String> {
    let pid = std::process::id();
    let mut last_error = None;
    for _ in 0..16 {
        let path = base.join(format!("co-{pid}-{}", random_suffix()));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {
                let start = process_start(pid).map_or("-".to_string(), |s| s.to_string());
                // Without it the pid in the name still protects the
                // directory while this process lives.
                let _ = std::fs::write(path.join("owner"), format!("{pid} {start}\n"));
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => {
                return Err(format!(
                    "cannot create the SSH control directory {}: {e}",
                    path.display()
                ))
            }
        }
    }
    Err(format!(
        "cannot create an SSH control directory in {}: {}",
        base.display(),
        last_error.map_or_else(String::new, |e| e.to_string())
    ))
}

/// The pid in a control directory's name (`co-<pid>-<12 hex digits>`);
/// `None` for any other name, older changeovers' `co-<hex>` included.
fn owner_from_name(name: &str) -> Option<u32> {
    let (pid, suffix) = name.strip_prefix("co-")?.split_once('-')?;
    let hex = suffix.len() == 12 && suffix.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    if hex && digits {
        pid.parse().ok()
    } else {
        None
    }
}

/// A process's start time (clock ticks after boot, `/proc/<pid>/stat`
/// field 22), which tells a process from a later one given the same pid;
/// `None` without /proc or for a process that is gone or a zombie.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the process that made a control directory still runs: same pid
/// and (when recorded) same start time.
fn owner_alive(pid: u32, start: Option<u64>) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if Path::new("/proc/self/stat").exists() {
        return match (process_start(pid), start) {
            (None, _) => false,
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
        };
    }
    // No /proc (macOS): `kill -0` fails for a dead pid, and for another
    // user's (which cannot be the owner of a directory of this user's).
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn own_uid() -> Option<u32> {
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Some(meta.uid());
    }
    let out = std::process::Command::new("id")
        .arg("-u")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Remove the control directories in `base` of this user's whose owner
/// process is dead (a run killed with -9 cannot remove its own), after
/// asking any master still listening in them to exit. Never touches a
/// directory whose owner lives, another user's, or one not named by
/// [`create_control_dir`].
pub(super) fn remove_stale_control_dirs(base: &Path) {
    let Some(uid) = own_uid() else { return };
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(owner_from_name) else {
            continue;
        };
        let path = entry.path();
        // symlink_metadata: a symlink named like ours is not ours.
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() && meta.uid() == uid => {}
            _ => continue,
        }
        let start = std::fs::read_to_string(path.join("owner"))
            .ok()
            .and_then(|text| {
                let mut fields = text.split_whitespace();
                (fields.next()? == pid.to_string()).then_some(())?;
                fields.next()?.parse().ok()
            });
        if owner_alive(pid, start) {
            continue;
        }
        stop_stale_masters(&path);
        kill_processes_naming(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::debug!(dir = %path.display(), "removed a dead run's SSH control directory")
            }
            Err(e) => {
                tracing::debug!(dir = %path.display(), "cannot remove a dead run's SSH control directory: {e}")
            }
        }
    }
}

/// SIGTERM every process of this user whose command line names `dir` (a
/// dead run's control directory): a master caught mid-handshake when its
/// run died has no socket to be asked to exit on, and would otherwise live
/// until its persist timeout. Linux `/proc`; elsewhere the timeout bounds it.
fn kill_processes_naming(dir: &Path) {
    let Some(uid) = own_uid() else { return };
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        match std::fs::metadata(entry.path()) {
            Ok(meta) if meta.uid() == uid => {}
            _ => continue,
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .windows(needle.len())
            .any(|w| w == needle.as_slice())
            && pid != std::process::id() as i32
        {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// `ssh -O exit` on every master socket in a dead run's control directory,
/// each bounded to 2 s.
fn stop_stale_masters(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let socket = entry.path().join("master");
        if !socket.exists() {
            continue;
        }
        let Ok(mut child) = std::process::Command::new("ssh")
            .arg("-F")
            .arg("/dev/null")
            .arg("-S")
            .arg(&socket)
            .args(["-O", "exit", "changeover"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return;
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub(super) fn random_suffix() -> String {
    // RandomState is seeded from the OS; good enough for a unique name
    // (exclusive creation is what makes it safe).
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_dirs_name_their_owner() {
        assert_eq!(owner_from_name("co-1234-0123456789ab"), Some(1234));
        assert_eq!(owner_from_name("co-0123456789ab"), None);
        assert_eq!(owner_from_name("co-fleetXYZ"), None);
        assert_eq!(owner_from_name("co-12-34"), None);
        assert_eq!(owner_from_name("co--0123456789ab"), None);
        let me = std::process::id();
        assert!(owner_alive(me, None));
        if let Some(start) = process_start(1) {
            assert!(owner_alive(1, Some(start)));
            assert!(
                !owner_alive(1, Some(start + 1)),
                "a reused pid is not the owner"
            );
        }
    }
}
