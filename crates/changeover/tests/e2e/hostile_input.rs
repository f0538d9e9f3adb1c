//! Bad input end to end (issue 9, SPEC.md invariant 6): versions, messages,
//! host names and tags full of shell metacharacters, quotes, `$(...)`,
//! backticks, newlines and unicode, on the real fleet (sshd per host,
//! HAProxy in front).
//!
//! - The deploy steps write their `{version}`, `{previous_version}`,
//!   `{host}`, `{unit}` and `{target}` arguments to files on the host with
//!   `printf '%s'`: each file must hold the value byte for byte.
//! - Every value carries `$(touch /tmp/pwned-<run>-N)`, backticks, `;`, `|`
//!   and `&` variants: none of those files may exist afterwards.
//! - `--json` output, `history --json`, `status --json`, `lock status
//!   --json` and the journal stay one JSON object per line, and give the
//!   values back exactly.
//! - What the product refuses (an empty version) is a clear exit 2.

use super::text;
use crate::fleet::{changeover, AppCtl, Fleet};
use changeover_core::template::shell_quote;
use changeover_testkit::haproxy::Haproxy;
use changeover_testkit::sshd::SshFleet;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// `$(...)`, backticks and command separators that would each create one
/// trap file if the value reached a shell unquoted.
struct Traps {
    prefix: String,
    made: std::cell::Cell<usize>,
}

impl Traps {
    fn new(test: &str) -> Traps {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Traps {
            prefix: format!(
                "/tmp/pwned-{test}-{}{}",
                std::process::id(),
                nanos % 100_000
            ),
            made: std::cell::Cell::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.made.get() + 1;
        self.made.set(n);
        format!("{}-{n}", self.prefix)
    }

    /// Every way to run `touch`, each with a trap of its own.
    fn payload(&self) -> String {
        format!(
            "$(touch {}) `touch {}` ; touch {} | touch {} && touch {} & touch {}",
            self.next(),
            self.next(),
            self.next(),
            self.next(),
            self.next(),
            self.next()
        )
    }

    /// Two of them without spaces (host names may not hold any): `${IFS}`;
    /// without '/' (a unit's version is recorded under its name, and a '/'
    /// there nests it): `${PWD%${PWD#?}}` is the '/' that starts $PWD; and
    /// short (the recorded name is a file name, at most 255 bytes).
    fn payload_no_spaces(&self, second: bool) -> String {
        let path = || self.next().replace('/', "${PWD%${PWD#?}}");
        if second {
            format!(";touch${{IFS}}{}|touch${{IFS}}{}", path(), path())
        } else {
            format!("$(touch${{IFS}}{})`touch${{IFS}}{}`", path(), path())
        }
    }

    fn assert_none_sprung(&self) {
        let sprung: Vec<String> = (1..=self.made.get())
            .map(|n| format!("{}-{n}", self.prefix))
            .filter(|p| Path::new(p).exists())
            .collect();
        for p in &sprung {
            let _ = std::fs::remove_file(p);
        }
        assert!(
            sprung.is_empty(),
            "a value reached a shell unquoted: {sprung:?}"
        );
    }
}

/// Quotes, escapes, globs, expansions, placeholders, control characters
/// and unicode of every width.
const NASTY: &str = "'single' \"double\" \\back\\slash \\n $HOME ${PATH} $$ * ? [ab] ~ # ! %s %n \
                     {host} {{version}} {} é 中文 🦀 👩‍👩‍👧 e\u{301} \u{200b}\u{202e}rtl\u{202c} \u{2028}\u{2029} \u{7f}\x1b[31m";

/// Every line of `out` is one JSON object; returns them.
fn ndjson(what: &str, out: &[u8]) -> Vec<Value> {
    let text = String::from_utf8(out.to_vec())
        .unwrap_or_else(|e| panic!("{what}: output is not UTF-8: {e}"));
    text.split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what}: a line is not JSON ({e}):\n{l}"));
            assert!(v.is_object(), "{what}: a line is not an object: {l}");
            v
        })
        .collect()
}

fn ok(config: &Path, args: &[&str]) -> Output {
    let out = changeover(config, args);
    assert_eq!(out.status.code(), Some(0), "{args:?}\n{}", text(&out));
    assert_sane(&out);
    out
}

/// Whatever the exit code, never a panic.
fn assert_sane(out: &Output) {
    let all = text(out);
    assert!(
        !all.contains("panicked") && out.status.code().is_some_and(|c| c != 101),
        "{all}"
    );
}

fn file(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    String::from_utf8(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

/// Every record of the journal, each line one JSON object.
fn journal(state: &Path) -> Vec<Value> {
    let path = state.join("journal.ndjson");
    ndjson("the journal", &std::fs::read(&path).unwrap())
}

fn begins(journal: &[Value]) -> Vec<String> {
    journal
        .iter()
        .filter(|r| r["record"] == "begin")
        .map(|r| r["version"].as_str().unwrap().to_string())
        .collect()
}

/// Deploy, rollback and lock with hostile versions and messages; the steps
/// see each value byte for byte, the store gives each back.
#[test]
fn hostile_versions_and_messages_reach_steps_and_records_exactly() {
    let traps = Traps::new("version");
    let fleet = Fleet::builder(2).start();
    let apps = fleet.app_dir(0).parent().unwrap().to_path_buf();
    let base = fleet.config(None, "[strategy]\nbatch = 1\n");
    let original = std::fs::read_to_string(&base).unwrap();
    let run_line = original
        .lines()
        .find(|l| l.starts_with("run = \""))
        .unwrap()
        .to_string();
    let app_step = run_line.trim_start_matches("run = ").to_string();
    let write = |what: &str, file: &str| {
        format!(
            "\"printf '%s' {{{what}}} > {}/{{host}}/{file}\"",
            apps.display()
        )
    };
    // Without {previous_version} first (no pointer yet), then with it.
    let config = |with_previous: bool| {
        let mut steps = vec![write("version", "version-arg")];
        if with_previous {
            steps.push(write("previous_version", "previous-arg"));
        }
        steps.push(app_step.clone());
        let text = original.replace(&run_line, &format!("run = [{}]", steps.join(", ")));
        let name = if with_previous {
            "prev.toml"
        } else {
            "first.toml"
        };
        let path = fleet.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let first = config(false);
    let second = config(true);
    let state = fleet.dir.path().join("state");

    let v1 = format!("v1.0 {} {NASTY}\nsecond line\tand a tab\r", traps.payload());
    let v2 = format!("v2'\"`; {}\n\n{NASTY} end", traps.payload());
    let m1 = format!("first: {} {NASTY}\nline two", traps.payload());
    let m2 = format!("{NASTY}\n{}", traps.payload());
    let m3 = format!("roll back; {} 'it'\"s\" bad", traps.payload());

    let deploy = |config: &Path, version: &str, message: &str| -> Vec<Value> {
        let out = ok(
            config,
            &[
                "deploy",
                "--version",
                version,
                "--message",
                message,
                "--json",
            ],
        );
        let events = ndjson("deploy --json", &out.stdout);
        let started = events
            .iter()
            .find(|e| e["event"] == "deploy_started")
            .expect("deploy_started");
        assert_eq!(started["version"], version, "the version in the events");
        assert_eq!(events.last().unwrap()["event"], "deploy_finished");
        events
    };
    let step_args = |file_name: &str| -> Vec<String> {
        (0..fleet.hosts.len())
            .map(|i| file(fleet.app_dir(i).join(file_name)))
            .collect()
    };

    deploy(&first, &v1, &m1);
    assert_eq!(step_args("version-arg"), vec![v1.clone(); 2]);
    assert_eq!(
        fleet.versions(),
        vec![v1.trim().to_string(); 2],
        "the app itself was started with the version"
    );

    deploy(&second, &v2, &m2);
    assert_eq!(step_args("version-arg"), vec![v2.clone(); 2]);
    assert_eq!(
        step_args("previous-arg"),
        vec![v1.clone(); 2],
        "{{previous_version}} is the pointer's value, back from the store"
    );

    // rollback: the previous version, read back from the store.
    let out = ok(&second, &["rollback", "--message", &m3, "--json"]);
    ndjson("rollback --json", &out.stdout);
    assert_eq!(step_args("version-arg"), vec![v1.clone(); 2]);
    assert_eq!(step_args("previous-arg"), vec![v2.clone(); 2]);

    // The records give every value back.
    let out = ok(&second, &["history", "--json"]);
    let doc = ndjson("history --json", &out.stdout).pop().unwrap();
    let entries = doc["entries"].as_array().expect("entries");
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["command"].as_str().unwrap_or("-"),
                e["version"].as_str().unwrap_or("-"),
                e["message"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("rollback", v1.as_str(), m3.as_str()),
            ("deploy", v2.as_str(), m2.as_str()),
            ("deploy", v1.as_str(), m1.as_str()),
        ]
    );
    let out = ok(&second, &["status", "--json"]);
    let doc = ndjson("status --json", &out.stdout).pop().unwrap();
    assert_eq!(doc["pointer"]["current"], v1.as_str());
    assert_eq!(doc["pointer"]["previous"], v2.as_str());
    assert_eq!(
        begins(&journal(&state)),
        vec![v1.clone(), v2.clone(), v1.clone()]
    );

    // A manual lock's message, back from the store.
    let m4 = format!("maintenance {} {NASTY}\nby ops", traps.payload());
    ok(&second, &["lock", "acquire", "--message", &m4]);
    let out = ok(&second, &["lock", "status", "--json"]);
    let doc = ndjson("lock status --json", &out.stdout).pop().unwrap();
    let held: Vec<&Value> = doc["locks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["held"] == true)
        .collect();
    assert_eq!(held.len(), 1, "{doc}");
    assert_eq!(held[0]["lock"]["message"], m4.as_str());
    ok(&second, &["lock", "release"]);

    // The human output shows the values too, without running them.
    let out = ok(&second, &["plan", "--version", &v2]);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains(&shell_quote(&v2)),
        "the plan shows the quoted version:\n{plan}"
    );
    traps.assert_none_sprung();
}

/// Versions at the edges: each is planned with the value quoted, or
/// refused with exit 2 and a message; never a crash.
#[test]
fn edge_versions_are_quoted_or_refused_cleanly() {
    let traps = Traps::new("edge");
    let fleet = Fleet::builder(1).start();
    let config = fleet.config(None, "");
    let long = format!("{}{}", "x".repeat(20_000), traps.payload());
    let edges: Vec<String> = vec![
        "".into(),
        " ".into(),
        "\n".into(),
        "-v2".into(),
        "--help".into(),
        "a/b".into(),
        "../../../etc/passwd".into(),
        "%2F..%2F".into(),
        "v2\u{1}x".into(),
        "\u{feff}v2".into(),
        "'".into(),
        "\\".into(),
        "{version}".into(),
        format!("--version={}", traps.payload()),
        long,
    ];
    for version in &edges {
        // `--version=V`, so a value starting with '-' is still a value.
        let arg = format!("--version={version}");
        let out = changeover(&config, &["plan", &arg]);
        assert_sane(&out);
        match out.status.code() {
            Some(0) => {
                let plan = String::from_utf8_lossy(&out.stdout);
                assert!(
                    plan.contains(&shell_quote(version)),
                    "{version:?}: the plan shows it quoted:\n{}",
                    text(&out)
                );
            }
            Some(2) => {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.contains("version"),
                    "{version:?}: the refusal says what is wrong:\n{err}"
                );
            }
            other => panic!("{version:?}: exit {other:?}\n{}", text(&out)),
        }
    }
    // One edge for real: '/' and a leading '-' are versions like any other.
    let version = format!("-rc/1 {}", traps.payload());
    let arg = format!("--version={version}");
    let out = changeover(&config, &["deploy", &arg, "--json"]);
    assert_sane(&out);
    match out.status.code() {
        Some(0) => {
            ndjson("deploy --json", &out.stdout);
        }
        Some(2) => assert!(String::from_utf8_lossy(&out.stderr).contains("version")),
        // The demo app (not changeover) may refuse a version that starts
        // with '-': the step fails, the unit stays out, exit 1.
        Some(1) => {
            ndjson("deploy --json", &out.stdout);
        }
        other => panic!("exit {other:?}\n{}", text(&out)),
    }
    traps.assert_none_sprung();
}

/// A fleet whose HAProxy servers are named by address, so that host names
/// may be anything the config allows (HAProxy's own names may not).
struct NamedFleet {
    haproxy: Haproxy,
    ssh: SshFleet,
    dir: tempfile::TempDir,
    apps: PathBuf,
    ctl: AppCtl,
    port: u16,
}

impl NamedFleet {
    fn start(hosts: usize) -> NamedFleet {
        let dir = tempfile::Builder::new()
            .prefix("co-hostile")
            .tempdir()
            .unwrap();
        let ssh = SshFleet::start(hosts);
        let port = free_port_on(ssh.hosts().iter().map(|h| h.address.as_str()));
        let mut builder = Haproxy::builder()
            .backend("app")
            .check("check inter 100ms fastinter 100ms downinter 100ms rise 2 fall 2")
            .backend_line("option httpchk GET /health")
            .backend_line("timeout check 1s");
        for h in ssh.hosts() {
            builder = builder.server(&h.address, &format!("{}:{port}", h.address));
        }
        let ctl = AppCtl::install(dir.path(), "300ms");
        let apps = dir.path().join("apps");
        let fleet = NamedFleet {
            haproxy: builder.start(),
            ssh,
            apps,
            ctl,
            port,
            dir,
        };
        for h in fleet.ssh.hosts() {
            let d = fleet.apps.join(&h.address);
            std::fs::create_dir_all(&d).unwrap();
            fleet.ctl.start(&d, &format!("{}:{port}", h.address), "v1");
        }
        for h in fleet.ssh.hosts() {
            fleet
                .haproxy
                .wait_for_status(&h.address, "UP", Duration::from_secs(20));
        }
        fleet
    }
}

impl Drop for NamedFleet {
    fn drop(&mut self) {
        for h in self.ssh.hosts() {
            AppCtl::kill(&self.apps.join(&h.address));
        }
    }
}

/// A TOML basic string holding `s`.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Host names and tags as hostile as the config allows (host names: no
/// whitespace, no commas), selected through a hostile tag.
#[test]
fn hostile_host_names_and_tags_never_reach_a_shell() {
    let traps = Traps::new("host");
    let fleet = NamedFleet::start(2);
    let names = [
        format!(
            "web'\"\\*?[x]~#!%{{version}}é中🦀{}",
            traps.payload_no_spaces(false)
        ),
        format!("-x{}&&`id`", traps.payload_no_spaces(true)),
    ];
    assert!(names.iter().all(|n| n.len() < 200), "{names:?}");
    let tag = format!("tag with spaces {}\nand a newline 🦀", traps.payload());
    let mut config = format!(
        "app = \"testapp\"\nstate_dir = \"state\"\n\n[ssh]\nconfig_file = {}\nmax_connections = 4\nconnect_timeout = \"5s\"\n\n",
        toml_str(&fleet.ssh.ssh_config_path().display().to_string())
    );
    for (h, name) in fleet.ssh.hosts().iter().zip(&names) {
        config.push_str(&format!(
            "[[hosts]]\nname = {}\naddress = \"{}\"\ntags = [{}, \"plain\", {}]\n\n",
            toml_str(name),
            h.address,
            toml_str(&tag),
            toml_str(&format!("{NASTY}\n{}", traps.payload()))
        ));
    }
    let apps = fleet.apps.display().to_string();
    let write = |what: &str| format!("printf '%s' {{{what}}} > {apps}/{{address}}/{what}-arg");
    let steps = [
        write("host"),
        write("unit"),
        write("target"),
        fleet.ctl.run_step(
            &format!("{apps}/{{address}}"),
            &format!("{{address}}:{}", fleet.port),
        ),
    ];
    config.push_str(&format!(
        "[[load_balancers]]\nkind = \"haproxy\"\nsocket = {}\nbackend = \"app\"\nserver = \"{{address}}\"\n\n\
         [deploy]\nrun = [{}]\ntimeout = \"30s\"\n\n\
         [health]\nhttp = \"http://{{address}}:{port}/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nhealthy_threshold = 2\ndeadline = \"10s\"\n\n\
         [strategy]\nbatch = 1\n\n\
         [targets.tagged]\ntags = [{}]\n",
        toml_str(&fleet.haproxy.socket_path().display().to_string()),
        steps.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", "),
        toml_str(&tag),
        port = fleet.port,
    ));
    let path = fleet.dir.path().join("changeover.toml");
    std::fs::write(&path, config).unwrap();

    let out = ok(&path, &["check"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("go: 2 unit(s)"));
    let out = ok(&path, &["deploy", "tagged", "--version", "v2", "--json"]);
    let events = ndjson("deploy --json", &out.stdout);
    let finished: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "unit_finished")
        .map(|e| e["unit"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut got = finished.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the events name the units exactly");

    for (h, name) in fleet.ssh.hosts().iter().zip(&names) {
        let dir = fleet.apps.join(&h.address);
        assert_eq!(&file(dir.join("host-arg")), name);
        assert_eq!(&file(dir.join("unit-arg")), name);
        assert_eq!(file(dir.join("target-arg")), "tagged");
        assert_eq!(file(dir.join("deploys")).trim(), "v2");
    }
    let state = fleet.dir.path().join("state");
    let units: Vec<String> = journal(&state)
        .iter()
        .filter(|r| r["record"] == "intent")
        .map(|r| r["unit"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.iter().all(|n| units.contains(n)),
        "the journal names the units exactly: {units:?}"
    );

    // status and history read them back; a second deploy finds them current.
    let out = ok(&path, &["status", "tagged", "--json"]);
    let status = ndjson("status --json", &out.stdout).pop().unwrap();
    let listed = status.to_string();
    for name in &names {
        assert!(
            listed.contains(&serde_json::to_string(name).unwrap()[1..]),
            "status lists {name:?}: {listed}"
        );
    }
    let out = ok(&path, &["deploy", "tagged", "--version", "v2", "--json"]);
    let last = ndjson("deploy --json", &out.stdout).pop().unwrap();
    assert_eq!(last["current"], 2, "recorded under their names: {last}");
    ok(&path, &["history", "--json"]);
    traps.assert_none_sprung();
}

fn free_port_on<'a>(addresses: impl Iterator<Item = &'a str> + Clone) -> u16 {
    for _ in 0..50 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if addresses
            .clone()
            .all(|a| std::net::TcpListener::bind((a, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on every fleet address");
}
