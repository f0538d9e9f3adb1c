//! Deploy steps that run detached on the host, for both executors.
//!
//! A step is started by one `sh` script (`sh -s`, the script on stdin, so
//! any executor that runs command lines with an input can run it) in a
//! directory of its own, `${TMPDIR:-/tmp}/changeover-steps/<deploy>/<unit>/<index>/` (mode
//! 700, names percent-encoded and shell-quoted):
//!
//! - `run.sh`, started with `setsid` (stdin, stdout and stderr on
//!   /dev/null), is the leader of a new session and process group: it
//!   writes `pgid`, starts the timer, runs the command (`sh -c`, stdin from
//!   /dev/null) with stdout and stderr going through fifos into `tail -c`
//!   (so `stdout` and `stderr` hold bounded tails), then writes `status`.
//! - `timer.sh`, in a session of its own, enforces the step's timeout on the
//!   host: past it, it writes `timedout`, sends TERM to the step's process
//!   group, KILL after a grace, and writes `status` itself. So a step is
//!   bounded by its timeout whether or not changeover is still there.
//! - The launcher that started them waits for `status` (a blocking `wait`,
//!   then a short poll) and prints the result between marker lines that
//!   carry a random token. Changeover then removes the directory
//!   (`forget`); a directory nobody removed (changeover died) is what
//!   `wait_steps` reads, and finished ones older than 7 days are pruned.
//!
//! Nothing but POSIX `sh`, coreutils (`tail`, `mkfifo`, `sleep` with
//! fractions, `find`) and `setsid` (util-linux or busybox) is needed on the
//! host. Without `setsid` the step runs attached, as a plain `run`, with a
//! warning.

use changeover_core::remote::{CommandOutput, Remote, RemoteError, StepEnd, StepId, StepRecord};
use changeover_core::unit::Host;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;
use tokio::time::Instant;

/// Between TERM and KILL for a step past its timeout.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// Bytes kept of a step's stdout, and of its stderr.
pub const TAIL_BYTES: usize = 64 * 1024;
/// What the launcher may need beyond the step's timeout and kill grace
/// (start-up, the output tails, the connection) before changeover gives up
/// waiting for it and kills the step itself.
const EXEC_MARGIN: Duration = Duration::from_secs(20);
/// For the small scripts (kill, forget) that do not wait for a step.
const SHORT: Duration = Duration::from_secs(30);

/// Functions shared by the launcher and the timer.
const FUNCS: &str = r#"
same_boot() {
  [ -r "$1/boot" ] && [ -r /proc/sys/kernel/random/boot_id ] || return 0
  [ "$(cat "$1/boot")" = "$(cat /proc/sys/kernel/random/boot_id)" ]
}
set_status() {
  printf '%s\n' "$2" > "$1/status.tmp" && mv -f "$1/status.tmp" "$1/status"
}
kill_step() {
  [ -e "$1/status" ] && return 0
  : > "$1/timedout"
  g=
  if same_boot "$1" && [ -s "$1/pgid" ]; then g=$(cat "$1/pgid"); fi
  if [ -n "$g" ]; then
    kill -TERM -"$g" 2>/dev/null
    i=0
    while [ "$i" -lt "$2" ] && kill -0 -"$g" 2>/dev/null; do sleep 0.1; i=$((i+100)); done
    kill -KILL -"$g" 2>/dev/null
  fi
  [ -e "$1/status" ] || set_status "$1" none
}
"#;

/// `run.sh DIR TIMEOUT_MS GRACE_MS TAIL_BYTES`, the step's session leader.
const RUN_SH: &str = r#"
d=$1 t=$2 g=$3 m=$4
echo $$ > "$d/pgid.tmp" && mv -f "$d/pgid.tmp" "$d/pgid"
setsid sh "$d/timer.sh" "$d" "$t" "$g" < /dev/null > /dev/null 2>&1 &
done_with() {
  rm -f -- "$d/out.fifo" "$d/err.fifo"
  printf '%s\n' "$1" > "$d/status.tmp" && mv -f "$d/status.tmp" "$d/status"
  exit 0
}
if ! mkfifo "$d/out.fifo" "$d/err.fifo"; then
  : > "$d/stdout"
  echo "changeover: cannot create the output fifos in $d" > "$d/stderr"
  done_with 125
fi
{ tail -c "$m" < "$d/out.fifo" > "$d/stdout"; : > "$d/stdout.done"; } &
o=$!
{ tail -c "$m" < "$d/err.fifo" > "$d/stderr"; : > "$d/stderr.done"; } &
e=$!
sh -c "$(cat "$d/command")" < /dev/null > "$d/out.fifo" 2> "$d/err.fifo"
s=$?
i=0
while [ "$i" -lt 20 ] && { [ ! -e "$d/stdout.done" ] || [ ! -e "$d/stderr.done" ]; }; do
  sleep 0.1; i=$((i+1))
done
if [ -e "$d/stdout.done" ] && [ -e "$d/stderr.done" ]; then
  wait "$o" "$e"
else
  : > "$d/held"
fi
done_with "$s"
"#;

/// `timer.sh DIR TIMEOUT_MS GRACE_MS`, in a session of its own.
const TIMER_SH: &str = r#"
d=$1 t=$2 g=$3
while [ "$t" -gt 1000 ]; do
  { [ -e "$d/status" ] || [ ! -d "$d" ]; } && exit 0
  sleep 1
  t=$((t-1000))
done
{ [ -e "$d/status" ] || [ ! -d "$d" ]; } && exit 0
sleep "$((t/1000)).$(printf %03d "$((t%1000))")"
{ [ -e "$d/status" ] || [ ! -d "$d" ]; } && exit 0
kill_step "$d" "$g"
"#;

/// The launcher: `sh -s changeover-step TOKEN MODE ARGS...` (`$1` is only
/// there to name it in the process list), the script
/// (this, in `main`, after [`FUNCS`] and the `write_*_sh` functions) on
/// stdin. A script on stdin keeps the process list readable (the arguments
/// are the step's names and command, not 5 KB of script); inside a function
/// it is read whole before any of it runs, so nothing it starts can read
/// part of it, and a script cut short runs not at all.
const LAUNCHER: &str = r#"
set -u
umask 077
root=${TMPDIR:-/tmp}/changeover-steps
tok=$2 mode=$3
shift 3
say() { printf 'co-step-%s %s\n' "$tok" "$*"; }
fail() { say "error $*"; exit 1; }
use_root() {
  mkdir -m 700 -- "$root" 2>/dev/null
  if [ -L "$root" ] || [ ! -d "$root" ] || [ ! -O "$root" ]; then
    fail "$root is not a directory of this user's"
  fi
}
running() {
  [ -e "$1/status" ] && return 1
  same_boot "$1" || return 1
  [ -e "$1/timedout" ] && return 0
  [ -s "$1/pgid" ] || return 1
  kill -0 -"$(cat "$1/pgid")" 2>/dev/null
}
emit() {
  s=$(cat "$1/status" 2>/dev/null) || s=none
  say "status $s"
  if [ -e "$1/timedout" ]; then say timedout; fi
  if [ -e "$1/held" ]; then say held; fi
  for f in command stdout stderr; do
    say "$f"
    cat -- "$1/$f" 2>/dev/null
    printf '\n'
    say end
  done
}
await() {
  if [ -n "$3" ]; then wait "$3" 2>/dev/null; fi
  i=0
  while [ ! -e "$1/status" ] && [ "$i" -lt "$2" ] && running "$1"; do
    sleep 0.1; i=$((i+100))
  done
  if [ -e "$1/status" ]; then emit "$1"
  elif running "$1"; then say running
  else say vanished; emit "$1"
  fi
}
prune() {
  [ -d "$root" ] || return 0
  find "$root" -path "$root/*/*/*/status" -type f -mtime +7 2>/dev/null |
  while IFS= read -r f; do
    p=${f%/status}; u=${p%/*}
    rm -rf -- "$p"; rmdir -- "$u" "${u%/*}" 2>/dev/null
  done
}
case $mode in
start)
  use_root
  d=$root/$1/$2/$3
  if [ -d "$d" ] && running "$d"; then
    fail "step $3 of this deploy and unit is already running on the host (process group $(cat "$d/pgid" 2>/dev/null))"
  fi
  if ! command -v setsid > /dev/null 2>&1; then say nosetsid; exit 0; fi
  rm -rf -- "$d"
  mkdir -p -- "$d" 2>/dev/null || mkdir -p -- "$d" 2>/dev/null || mkdir -p -- "$d" ||
    fail "cannot create $d"
  { printf '%s' "$7" > "$d/command" && write_run_sh > "$d/run.sh" &&
    write_timer_sh > "$d/timer.sh"; } || fail "cannot write in $d"
  cat /proc/sys/kernel/random/boot_id > "$d/boot" 2>/dev/null || rm -f -- "$d/boot"
  setsid sh "$d/run.sh" "$d" "$4" "$5" "$6" < /dev/null > /dev/null 2>&1 &
  c=$!
  i=0
  while [ ! -s "$d/pgid" ] && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i+1)); done
  [ -s "$d/pgid" ] || fail "the step did not start within 5 s"
  await "$d" "$(($4 + $5 + 5000))" "$c"
  ;;
attach)
  d=$root/$1/$2/$3
  if [ ! -d "$d" ]; then say missing; exit 0; fi
  await "$d" "$4" ""
  ;;
kill)
  d=$root/$1/$2/$3
  if [ ! -d "$d" ]; then say missing; exit 0; fi
  kill_step "$d" "$4"
  emit "$d"
  ;;
forget)
  u=$root/$1/$2
  shift 2
  for i in "$@"; do rm -rf -- "$u/$i"; done
  rmdir -- "$u" "${u%/*}" 2>/dev/null
  prune
  say forgotten
  ;;
wait)
  u=$root/$1/$2
  if [ ! -d "$u" ]; then say done; exit 0; fi
  i=0
  while [ "$i" -lt "$3" ]; do
    busy=
    for d in "$u"/*; do
      if [ -d "$d" ] && running "$d"; then busy=1; fi
    done
    [ -z "$busy" ] && break
    sleep 0.2; i=$((i+200))
  done
  for d in "$u"/*; do
    [ -d "$d" ] || continue
    say "step ${d##*/}"
    if [ -e "$d/status" ]; then :
    elif running "$d"; then kill_step "$d" "$4"
    else say vanished
    fi
    emit "$d"
  done
  say done
  ;;
*) fail "unknown mode $mode" ;;
esac
"#;

/// What a launcher said about one step.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Block {
    index: Option<usize>,
    status: Option<i32>,
    timedout: bool,
    held: bool,
    vanished: bool,
    command: String,
    stdout: String,
    stderr: String,
}

impl Block {
    fn output(&self) -> CommandOutput {
        let mut stderr = self.stderr.clone();
        if self.held {
            if !stderr.is_empty() && !stderr.ends_with('\n') {
                stderr.push('\n');
            }
            stderr.push_str(
                "(changeover: output not available: a process the step started \
                 still holds its stdout or stderr)\n",
            );
        }
        CommandOutput {
            status: self.status,
            stdout: self.stdout.clone(),
            stderr,
        }
    }

    fn end(&self) -> StepEnd {
        if self.timedout {
            StepEnd::TimedOut
        } else if self.vanished {
            StepEnd::Vanished
        } else {
            StepEnd::Exited
        }
    }
}

/// The launcher's answer as a whole.
#[derive(Debug, Default)]
struct Answer {
    blocks: Vec<Block>,
    running: bool,
    missing: bool,
    nosetsid: bool,
    /// `forgotten` or `done`: the script ran to its end.
    forgotten: bool,
    error: Option<String>,
}

/// Read the marker lines (`co-step-TOKEN …`) of a launcher's stdout.
/// Sections (`command`, `stdout`, `stderr`) run to `\nco-step-TOKEN end\n`;
/// anything before the first marker (a chatty login shell) is ignored.
fn parse(text: &str, token: &str) -> Result<Answer, String> {
    let marker = format!("co-step-{token} ");
    let end = format!("\n{marker}end\n");
    let mut answer = Answer::default();
    let mut rest = text;
    // Lines before any `step N` line belong to a single unnamed block.
    let mut current: Option<Block> = None;
    while let Some(pos) = rest.find(&marker) {
        rest = &rest[pos + marker.len()..];
        let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
        rest = after;
        let (word, value) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "step" => {
                if let Some(block) = current.take() {
                    answer.blocks.push(block);
                }
                let index = value
                    .parse()
                    .map_err(|_| format!("the host sent a bad step index {value:?}"))?;
                current = Some(Block {
                    index: Some(index),
                    ..Block::default()
                });
            }
            "command" | "stdout" | "stderr" => {
                let (content, after) = rest
                    .split_once(&end)
                    .ok_or_else(|| format!("the host's answer was cut short in {word}"))?;
                rest = after;
                let block = current.get_or_insert_with(Block::default);
                let content = content.to_string();
                match word {
                    "command" => block.command = content,
                    "stdout" => block.stdout = content,
                    _ => block.stderr = content,
                }
            }
            "status" => {
                current.get_or_insert_with(Block::default).status = value.trim().parse().ok();
            }
            "timedout" => current.get_or_insert_with(Block::default).timedout = true,
            "held" => current.get_or_insert_with(Block::default).held = true,
            "vanished" => current.get_or_insert_with(Block::default).vanished = true,
            "running" => answer.running = true,
            "missing" => answer.missing = true,
            "nosetsid" => answer.nosetsid = true,
            "forgotten" | "done" => answer.forgotten = true,
            "error" => answer.error = Some(value.to_string()),
            "end" => {}
            other => return Err(format!("the host sent an unknown line {other:?}")),
        }
    }
    if let Some(block) = current {
        answer.blocks.push(block);
    }
    Ok(answer)
}

/// Where the directory of `step` is on the host, relative to its
/// `${TMPDIR:-/tmp}`: `changeover-steps/<deploy>/<unit>/<index>`.
pub fn step_dir(step: &StepId) -> String {
    format!(
        "changeover-steps/{}/{}/{}",
        component(&step.deploy_id),
        component(&step.unit),
        step.index
    )
}

/// A path component for `value`: letters, digits, `_`, `-` and (not first)
/// `.` stay, every other byte is `%XX`; an empty value is `%`. A long one
/// keeps its first 100 bytes and gets `~` and a stable hash.
fn component(value: &str) -> String {
    let mut out = String::new();
    for (i, b) in value.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    if out.len() > 120 {
        out.truncate(100);
        let _ = write!(out, "~{:016x}", fnv1a(value.as_bytes()));
    }
    out
}

/// FNV-1a: stable across builds and versions, unlike std's hashers.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn token() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", hasher.finish())
}

fn millis(d: Duration) -> String {
    d.as_millis().min(u128::from(u64::MAX)).to_string()
}

/// The command line that runs the launcher in `mode` with `args`.
fn invocation(token: &str, mode: &str, args: &[&str]) -> String {
    let mut line = String::from("sh -s changeover-step ");
    line.push_str(&quote(token));
    line.push(' ');
    line.push_str(&quote(mode));
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

/// The launcher's whole script, fed to `sh -s` on stdin.
fn launcher_script() -> String {
    format!(
        "main() {{\n{FUNCS}\nwrite_run_sh() {{\ncat <<'CO_STEP_RUN_SH'\n{RUN_SH}\nCO_STEP_RUN_SH\n}}\n\
         write_timer_sh() {{\ncat <<'CO_STEP_TIMER_SH'\n{FUNCS}{TIMER_SH}\nCO_STEP_TIMER_SH\n}}\n\
         {LAUNCHER}\n}}\nmain \"$@\"\n"
    )
}

/// POSIX single quotes; unlike `shlex`, never refuses (a NUL cannot reach
/// here: it cannot be in a command line at all).
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Errors from running a launcher name the step's command, not the script.
fn renamed(err: RemoteError, command: &str) -> RemoteError {
    match err {
        RemoteError::Timeout { host, timeout, .. } => RemoteError::Timeout {
            host,
            command: command.to_string(),
            timeout,
        },
        RemoteError::Exec { host, message, .. } => RemoteError::Exec {
            host,
            command: command.to_string(),
            message,
        },
        other => other,
    }
}

fn exec_error(host: &Host, command: &str, message: impl Into<String>) -> RemoteError {
    RemoteError::Exec {
        host: host.name.clone(),
        command: command.to_string(),
        message: message.into(),
    }
}

/// Run a launcher and read its answer; a launcher that printed no marker
/// at all (no `sh`, a broken login shell) is an error with its stderr. What
/// the launcher reports as an error is in `Answer::error` (see
/// [`refused`]): the command ran, and trying again will not help.
async fn launch<R: Remote + ?Sized>(
    remote: &R,
    host: &Host,
    command: &str,
    mode: &str,
    args: &[&str],
    limit: Duration,
) -> Result<Answer, RemoteError> {
    let token = token();
    let line = invocation(&token, mode, args);
    let out = remote
        .run_with_input(host, &line, launcher_script().as_bytes(), limit)
        .await
        .map_err(|e| renamed(e, command))?;
    let answer = parse(&out.stdout, &token).map_err(|e| exec_error(host, command, e))?;
    let said_something = answer.error.is_some()
        || !answer.blocks.is_empty()
        || answer.running
        || answer.missing
        || answer.nosetsid
        || answer.forgotten;
    if !said_something {
        let why = out.stderr.trim();
        return Err(exec_error(
            host,
            command,
            format!(
                "the step launcher did not answer (exit status {}){}",
                out.status.map_or("none".to_string(), |s| s.to_string()),
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            ),
        ));
    }
    Ok(answer)
}

/// The error the launcher reported, if any.
fn refused(answer: &Answer, host: &Host, command: &str) -> Result<(), RemoteError> {
    match &answer.error {
        Some(error) => Err(exec_error(host, command, format!("on the host: {error}"))),
        None => Ok(()),
    }
}

/// Remove finished steps' directories; a failure only leaves them for the
/// pruning (or `wait_steps`).
async fn forget<R: Remote + ?Sized>(
    remote: &R,
    host: &Host,
    command: &str,
    deploy: &str,
    unit: &str,
    indices: &[String],
) {
    let mut args = vec![deploy, unit];
    args.extend(indices.iter().map(String::as_str));
    let forgotten = launch(remote, host, command, "forget", &args, SHORT)
        .await
        .and_then(|answer| refused(&answer, host, command));
    if let Err(e) = forgotten {
        tracing::warn!(host = %host.name, "cannot remove a finished step's directory on the host: {e}");
    }
}

/// [`Remote::run_step`] for an executor whose `run_with_input` runs `sh`
/// command lines on the host.
pub async fn run_step<R: Remote + ?Sized>(
    remote: &R,
    host: &Host,
    command: &str,
    step: &StepId,
    timeout: Duration,
) -> Result<CommandOutput, RemoteError> {
    let deploy = component(&step.deploy_id);
    let unit = component(&step.unit);
    let index = step.index.to_string();
    let timed_out = || RemoteError::Timeout {
        host: host.name.clone(),
        command: command.to_string(),
        timeout,
    };
    let limit = timeout + KILL_GRACE + EXEC_MARGIN;
    let deadline = Instant::now() + limit;
    let (t_ms, g_ms, tail) = (millis(timeout), millis(KILL_GRACE), TAIL_BYTES.to_string());
    let started = launch(
        remote,
        host,
        command,
        "start",
        &[&deploy, &unit, &index, &t_ms, &g_ms, &tail, command],
        limit,
    )
    .await;
    let answer = match started {
        Ok(answer) => answer,
        Err(e @ RemoteError::Connect { .. }) => return Err(e),
        Err(RemoteError::Timeout { .. }) => Answer {
            running: true,
            ..Answer::default()
        },
        Err(first) => {
            // The connection broke while the step ran (or before it
            // started): the step is detached, so look for it again.
            let left = deadline.saturating_duration_since(Instant::now());
            let bound = millis(left.saturating_sub(EXEC_MARGIN / 2));
            match launch(
                remote,
                host,
                command,
                "attach",
                &[&deploy, &unit, &index, &bound],
                left.max(SHORT),
            )
            .await
            {
                Ok(answer) if !answer.missing => answer,
                _ => return Err(first),
            }
        }
    };
    // A step with this id still running (a deploy id used twice), a root
    // that is not ours: reported by the launcher, nothing was started.
    refused(&answer, host, command)?;
    if answer.nosetsid {
        tracing::warn!(
            host = %host.name,
            "the host has no `setsid`: the step runs attached to the connection, and a \
             timeout may not stop it there"
        );
        return remote.run(host, command, timeout).await;
    }
    if answer.running {
        // Past every bound and still not done: kill it from here.
        let killed = launch(
            remote,
            host,
            command,
            "kill",
            &[&deploy, &unit, &index, &g_ms],
            KILL_GRACE + SHORT,
        )
        .await;
        if killed.is_ok_and(|answer| answer.error.is_none()) {
            forget(remote, host, command, &deploy, &unit, &[index]).await;
        }
        return Err(timed_out());
    }
    let Some(block) = answer.blocks.into_iter().next() else {
        return Err(exec_error(
            host,
            command,
            "the step's directory vanished on the host",
        ));
    };
    forget(remote, host, command, &deploy, &unit, &[index]).await;
    match block.end() {
        StepEnd::TimedOut => Err(timed_out()),
        StepEnd::Vanished => Err(exec_error(
            host,
            command,
            "the step's process vanished on the host without a result \
             (was its process group killed by someone else?)",
        )),
        StepEnd::Exited => Ok(block.output()),
    }
}

/// [`Remote::wait_steps`] for an executor whose `run_with_input` runs `sh`
/// command lines on the host.
pub async fn wait_steps<R: Remote + ?Sized>(
    remote: &R,
    host: &Host,
    deploy_id: &str,
    unit: &str,
    timeout: Duration,
) -> Result<Vec<StepRecord>, RemoteError> {
    let deploy = component(deploy_id);
    let unit_dir = component(unit);
    let what = format!("waiting for the steps of {unit} in deploy {deploy_id}");
    let answer = launch(
        remote,
        host,
        &what,
        "wait",
        &[&deploy, &unit_dir, &millis(timeout), &millis(KILL_GRACE)],
        timeout + KILL_GRACE + EXEC_MARGIN,
    )
    .await?;
    refused(&answer, host, &what)?;
    let mut records: Vec<StepRecord> = answer
        .blocks
        .iter()
        .filter_map(|block| {
            Some(StepRecord {
                index: block.index?,
                command: block.command.clone(),
                end: block.end(),
                output: if block.vanished {
                    CommandOutput::default()
                } else {
                    block.output()
                },
            })
        })
        .collect();
    records.sort_by_key(|r| r.index);
    if !records.is_empty() {
        let indices: Vec<String> = records.iter().map(|r| r.index.to_string()).collect();
        forget(remote, host, &what, &deploy, &unit_dir, &indices).await;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_safe_and_stable() {
        assert_eq!(
            component("20261202T003455.123Z-42"),
            "20261202T003455.123Z-42"
        );
        assert_eq!(component("web-1#2"), "web-1%232");
        assert_eq!(component("../x"), "%2E.%2Fx");
        assert_eq!(component("."), "%2E");
        assert_eq!(component(""), "%");
        assert_eq!(component("a b'$(c)"), "a%20b%27%24%28c%29");
        let long = "x".repeat(300);
        let c = component(&long);
        assert_eq!(c.len(), 117);
        assert_eq!(c, component(&long));
        assert_ne!(c, component(&"x".repeat(301)));
    }

    #[test]
    fn an_answer_with_sections_is_read_exactly() {
        let t = "abc";
        let text = "motd\nco-step-abc status 7\nco-step-abc held\n\
                    co-step-abc command\necho 'x'\nco-step-abc end\n\
                    co-step-abc stdout\nline\n\nco-step-abc end\n\
                    co-step-abc stderr\n\nco-step-abc end\n";
        let answer = parse(text, t).unwrap();
        assert_eq!(answer.blocks.len(), 1);
        let b = &answer.blocks[0];
        assert_eq!(b.status, Some(7));
        assert!(b.held && !b.timedout);
        assert_eq!(b.command, "echo 'x'");
        assert_eq!(b.stdout, "line\n");
        assert_eq!(b.stderr, "");
    }

    #[test]
    fn several_steps_and_a_cut_answer() {
        let text = "co-step-t step 0\nco-step-t status 0\nco-step-t step 1\n\
                    co-step-t vanished\nco-step-t status none\n";
        let answer = parse(text, "t").unwrap();
        assert_eq!(answer.blocks.len(), 2);
        assert_eq!(answer.blocks[1].index, Some(1));
        assert!(answer.blocks[1].vanished);
        assert_eq!(answer.blocks[1].status, None);
        assert!(parse("co-step-t stdout\nno end", "t").is_err());
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
