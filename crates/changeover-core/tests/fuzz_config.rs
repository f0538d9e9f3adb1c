//! Bad input, config side (issue 9, SPEC.md invariant 7): whatever bytes
//! `config::parse` is given, it never panics; every rejection is a list of
//! errors, each with a non-empty message and a location that points into
//! the file (`file:line:col`, or at least the file); every acceptance is a
//! usable plan.
//!
//! Inputs: random bytes, random unicode, TOML token soup, and random
//! mutations of valid configs (delete, duplicate, rename or retype a key,
//! swap lines, inject unicode, control characters and TOML escapes into
//! strings, huge and negative numbers and durations, truncate at any byte).
//! Case counts are fixed so the file runs in seconds; `PROPTEST_CASES`
//! raises them all.

use changeover_core::config::{self, ConfigErrors, Loaded};
use miette::{GraphicalReportHandler, GraphicalTheme};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::path::Path;

const FILE: &str = "changeover.toml";

/// SPEC.md's config, as written there.
const SPEC: &str = r#"app = "shop"

[ssh]
user = "deploy"
max_connections = 64

[[hosts]]
name = "web-1"
address = "10.0.10.1"
tags = ["production"]

[[hosts]]
name = "web-2"
address = "10.0.10.2"
tags = ["production", "canary"]

[[load_balancers]]
kind = "haproxy"
scope = "global"
socket = "/run/haproxy/admin.sock"
backend = "app"
server = "{host}"
method = "state"

[drain]
mode = "lb"
timeout = "30s"
on_timeout = "fail"

[deploy]
run = "sudo /opt/shop/bin/switch {version}"
timeout = "5m"

[health]
http = "http://{address}:8080/health"
expect_status = 200
interval = "500ms"
timeout = "2s"
healthy_threshold = 2
deadline = "60s"

[strategy]
batch = "25%"
max_failures = 0

[targets.canary]
tags = ["canary"]
require_message = true

[targets.production10]
tags = ["production"]
percent = 10
partial = true
"#;

/// Most other sections and keys: instances, an embedded balancer, a
/// per-host HAProxy by command, host drain, tcp health, a window, the
/// witness, target overrides and policy keys.
const RICH: &str = r#"app = "shop"
state_dir = "state"

[ssh]
config_file = "~/.ssh/config"
connect_timeout = "5s"

[[hosts]]
name = "web-1"
address = "10.0.10.1"
tags = ["production", "canary"]
ssh_user = "deploy"
ssh_port = 2222

[[hosts]]
name = "web-2"
address = "10.0.10.2"
tags = ["production"]

[[hosts]]
name = "dev-1"
address = "10.0.20.1"
tags = ["dev"]

[instances]
count = 3
first_port = 8081

[[load_balancers]]
kind = "embedded"
listen = "127.0.0.1:8000"
member = "{address}:{port}"
check_path = "/health"
check_interval = "200ms"

[[load_balancers]]
kind = "haproxy"
scope = "host"
socket_command = "socat stdio /run/haproxy/{host}.sock"
backend = "app"
server = "app{instance}"
method = "weight"

[drain]
mode = "host"
local_address = "{address}:{port}"
timeout = "10s"
on_timeout = "proceed"
interval = "100ms"

[deploy]
run = ["docker pull shop:{version}", "docker restart shop-{instance} # {previous_version}"]
local = "echo {unit} {target} {port}"
timeout = "2m"

[health]
tcp = "{address}:{port}"
interval = "100ms"
timeout = "1s"
healthy_threshold = 3
deadline = "30s"

[strategy]
window = "25%"
max_failures = "10%"
pause = "1s"
wait_for_all_healthy = true
gate_timeout = "5m"
on_failure = "rollback"

[witness]
url = "http://127.0.0.1:8000/health"
rps = 50
timeout = "2s"
abort_after_failures = 3
keep_alive_share = 0.25

[targets.dev]
hosts = ["dev-1"]
lock = false
lb_takeout = false
can_unify = false

[targets.dev.drain]
mode = "fixed"
timeout = "0s"

[targets.canary]
tags = ["canary"]
require_message = true
lock = "canary"

[targets.canary.strategy]
batch = [1, "10%", "100%"]

[targets.production25]
tags = ["production"]
percent = 25
pointer = "production"
partial = true

[targets.production25.health]
http = "http://{address}:{port}/health"
expect_status = 204
expect_body = "ok"
"#;

/// The etcd store, a command drain and health, groups.
const ETCD: &str = r#"app = "api"

[[hosts]]
name = "a"
address = "10.1.0.1"

[[hosts]]
name = "b"
address = "10.1.0.2"

[[load_balancers]]
kind = "none"

[drain]
mode = "command"
command = "test $(ss -Htn state established sport = :8080 | wc -l) -eq 0"
timeout = "1m"

[deploy]
local = "./ship {host} {version}"

[health]
command = "curl -fsS http://{address}:8080/ready"
deadline = "2m"

[strategy]
groups = "50%"
max_failures = 1

[store]
kind = "etcd"
endpoints = ["http://10.0.0.5:2379", "http://10.0.0.6:2379/"]
prefix = "/changeover/api"
username = "deploy"
password_env = "ETCD_PASSWORD"
lock_ttl = "20s"
timeout = "3s"
"#;

const BASES: &[&str] = &[SPEC, RICH, ETCD];

/// The checks every outcome must pass.
fn check(text: &str) -> Result<(), TestCaseError> {
    match config::parse(FILE, text, Path::new("/nonexistent/changeover-fuzz")) {
        Ok(loaded) => accepted(text, &loaded),
        Err(errors) => rejected(text, &errors),
    }
}

fn accepted(text: &str, loaded: &Loaded) -> Result<(), TestCaseError> {
    let plan = &loaded.plan;
    prop_assert!(!plan.app.trim().is_empty(), "accepted with an empty app");
    prop_assert!(!plan.hosts.is_empty(), "accepted without hosts");
    prop_assert!(
        !plan.load_balancers.is_empty(),
        "accepted without balancers"
    );
    prop_assert!(!plan.units().is_empty(), "a plan without units");
    // Selecting any target answers (units or an error), without a panic.
    for name in plan.targets.keys() {
        let _ = plan.select(Some(name));
    }
    for w in &loaded.warnings {
        prop_assert!(!w.message.trim().is_empty(), "a warning without a message");
        location_ok(text, &w.location)?;
    }
    Ok(())
}

fn rejected(text: &str, errors: &ConfigErrors) -> Result<(), TestCaseError> {
    prop_assert_eq!(&errors.file, FILE);
    prop_assert!(!errors.errors.is_empty(), "a rejection without an error");
    for e in &errors.errors {
        prop_assert!(
            !e.message.trim().is_empty(),
            "an error without a message at {}",
            e.location
        );
        location_ok(text, &e.location)?;
    }
    // What the user sees: the rendered report (source excerpt, labels,
    // hints) must render too.
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, errors)
        .map_err(|e| TestCaseError::fail(format!("the report does not render: {e}")))?;
    prop_assert!(out.contains(FILE), "the report names the file:\n{}", out);
    Ok(())
}

/// `FILE` or `FILE:line:col` with the line in the text and the column on
/// that line (1-based; one past the end is where a missing thing goes).
fn location_ok(text: &str, location: &str) -> Result<(), TestCaseError> {
    if location == FILE {
        return Ok(());
    }
    let rest = location
        .strip_prefix(FILE)
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(|| {
            TestCaseError::fail(format!("location `{location}` does not name {FILE}"))
        })?;
    let (line, col) = rest
        .split_once(':')
        .and_then(|(l, c)| Some((l.parse::<usize>().ok()?, c.parse::<usize>().ok()?)))
        .ok_or_else(|| {
            TestCaseError::fail(format!("location `{location}` is not file:line:col"))
        })?;
    let lines: Vec<&str> = text.split('\n').collect();
    prop_assert!(
        line >= 1 && line <= lines.len(),
        "{} is past the end ({} lines)",
        location,
        lines.len()
    );
    prop_assert!(
        col >= 1 && col <= lines[line - 1].len() + 1,
        "{} is past the end of its line ({} bytes)",
        location,
        lines[line - 1].len()
    );
    Ok(())
}

/// TOML values of every type, with the edges that matter to the checks.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "65535",
            "65536",
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
            "0x7fffffffffffffff",
            "1_000_000",
        ])
        .prop_map(str::to_string),
        any::<f64>().prop_map(|f| {
            if f.is_finite() {
                format!("{f:?}")
            } else {
                "nan".to_string()
            }
        }),
        prop::sample::select(vec![
            "nan", "+inf", "-inf", "1e308", "-1e308", "5e-324", "-0.0", "0.0", "100.0", "100.01"
        ])
        .prop_map(str::to_string),
        any::<bool>().prop_map(|b| b.to_string()),
        string_value(),
        prop::sample::select(vec![
            "[]",
            "[1, \"10%\", \"100%\"]",
            "[0]",
            "[-1]",
            "[[]]",
            "[\"a\", 1]",
            "[\"web-1\", \"nope\"]",
            "{}",
            "{ a = 1 }",
            "{ kind = \"none\" }",
            "1979-05-27T07:32:00Z",
            "07:32:00",
            "1979-05-27",
        ])
        .prop_map(str::to_string),
    ]
}

/// Template text as written in the file: escapes (which are longer in the
/// file than in the value), raw multi-byte characters, placeholders known
/// and unknown, literal braces.
fn template_source() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "\\\\",
        "\\t",
        "\\n",
        "\\\"",
        "\\u00e9",
        "\\U0001F980",
        "\\u0000",
        "é",
        "中",
        "🦀",
        "e\u{301}",
        "{nope}",
        "{verison}",
        "{version}",
        "{host}",
        "{{",
        "}}",
        "{",
        "}",
        "$",
        "x",
        " ",
    ]);
    prop::collection::vec(piece, 1..6).prop_map(|v| v.concat())
}

/// Numbers at the edges of every range check.
fn number_edge() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-1",
            "-9223372036854775808",
            "9223372036854775807",
            "9223372036854775806",
            "4294967296",
            "65535",
            "65536",
            "1001",
            "-0",
            "1e308",
            "-1.5",
            "nan",
            "inf",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// Strings: the edges of durations, percentages, templates and names, and
/// hostile text written as TOML escapes.
fn string_value() -> impl Strategy<Value = String> {
    let edges = prop::sample::select(vec![
        "",
        " ",
        "-5s",
        "-1ms",
        "0s",
        "0",
        "1ns",
        "5 m",
        "1h 30m",
        "99999999999999999999s",
        "18446744073709551615s",
        "584942417356y",
        "1e400s",
        "25%",
        "-10%",
        "0%",
        "100%",
        "101%",
        "1e400%",
        "NaN%",
        "inf%",
        "%",
        "{version}",
        "{bogus}",
        "{verison} {host}",
        "{port}",
        "{",
        "}",
        "{{",
        "{{host}}",
        "${HOME}",
        "http://",
        "http://{address}:8080/{bogus}",
        "https://user:secret@example.com/x?token=1",
        "/",
        "127.0.0.1:0",
        "[::1]:99999",
        "$(touch /tmp/pwned)",
        "a,b",
        "web 1",
        "..",
        "../../etc",
        "é",
        "🦀",
    ])
    .prop_map(|s| format!("\"{}\"", escape(s)));
    let hostile = hostile_text().prop_map(|s| format!("\"{}\"", escape(&s)));
    let literal = "[a-z{}$% ]{0,12}".prop_map(|s| format!("'{s}'"));
    let multiline = hostile_text().prop_map(|s| format!("\"\"\"\n{}\"\"\"", escape(&s)));
    prop_oneof![4 => edges, 3 => hostile, 1 => literal, 1 => multiline]
}

/// Text with control characters, unicode of every width, quotes and shell
/// metacharacters, placeholders among them.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<char>().prop_map(|c| c.to_string()),
        prop::sample::select(vec![
            "\0",
            "\t",
            "\n",
            "\r",
            "\x1b[31m",
            "\x7f",
            "\u{85}",
            "\u{200b}",
            "\u{202e}",
            "\u{feff}",
            "é",
            "e\u{301}",
            "ß",
            "中文",
            "🦀",
            "👩‍👩‍👧",
            "\u{10ffff}",
            "\"",
            "'",
            "\\",
            "`",
            "$(",
            ")",
            ";",
            "|",
            "&",
            "{",
            "}",
            "{version}",
            "{host}",
            "{nope}",
            "%",
            " ",
        ])
        .prop_map(str::to_string),
        "[a-z0-9]{1,6}",
        prop::sample::select(vec![
            "{nope}",
            "{verison}",
            "{x}",
            "{version}",
            "{{x}}",
            "${x}"
        ])
        .prop_map(str::to_string),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

/// Write `s` inside a TOML basic string: some characters as escapes, others
/// raw (control characters raw are invalid TOML, which is a case too).
fn escape(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' if i % 2 == 0 => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 && i % 3 != 0 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if !c.is_ascii() && i % 2 == 1 => out.push_str(&format!("\\U{:08x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Keys of every section, so renamed and inserted keys hit real ones.
const KEYS: &[&str] = &[
    "app",
    "name",
    "address",
    "tags",
    "ssh_user",
    "ssh_port",
    "kind",
    "scope",
    "socket",
    "socket_command",
    "backend",
    "server",
    "method",
    "listen",
    "member",
    "mode",
    "timeout",
    "on_timeout",
    "interval",
    "command",
    "run",
    "local",
    "http",
    "tcp",
    "expect_status",
    "deadline",
    "healthy_threshold",
    "batch",
    "window",
    "groups",
    "max_failures",
    "pause",
    "on_failure",
    "percent",
    "pointer",
    "lock",
    "partial",
    "lb_takeout",
    "count",
    "first_port",
    "max_connections",
    "state_dir",
    "endpoints",
    "prefix",
    "lock_ttl",
    "password_env",
    "rps",
    "url",
    "version_command",
    "bogus_key",
    "\"quoted key\"",
    "\"🦀\"",
    "a.b.c",
];

const TABLES: &[&str] = &[
    "[ssh]",
    "[[hosts]]",
    "[instances]",
    "[[load_balancers]]",
    "[drain]",
    "[deploy]",
    "[health]",
    "[strategy]",
    "[targets.x]",
    "[targets.\"bad name/..\"]",
    "[targets.x.strategy]",
    "[store]",
    "[witness]",
    "[status]",
    "[hosts]",
    "[[drain]]",
    "[bogus]",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Retype(usize, String),
    Rename(usize, String),
    /// Insert text into the n-th string value, after `at` characters.
    Inject(usize, usize, String),
    /// Insert TOML source text (escapes, raw multi-byte characters,
    /// placeholders) into the n-th template, after `at` characters.
    Template(usize, usize, String),
    /// Replace the n-th number with an edge (huge, negative, zero).
    Number(usize, String),
    /// A new line: a key with a value, or a table header.
    Insert(usize, String),
    /// One byte replaced (the text is read back lossily).
    Byte(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = any::<prop::sample::Index>();
    let new_line = prop_oneof![
        (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        prop::sample::select(TABLES).prop_map(str::to_string),
        hostile_text(),
    ];
    prop_oneof![
        2 => line.clone().prop_map(|i| Mutation::Delete(i.index(1 << 16))),
        1 => line.clone().prop_map(|i| Mutation::Duplicate(i.index(1 << 16))),
        1 => (line.clone(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::Swap(a.index(1 << 16), b.index(1 << 16))),
        4 => (line.clone(), value()).prop_map(|(i, v)| Mutation::Retype(i.index(1 << 16), v)),
        1 => (line.clone(), prop::sample::select(KEYS))
            .prop_map(|(i, k)| Mutation::Rename(i.index(1 << 16), k.to_string())),
        4 => (line.clone(), 0usize..40, hostile_text())
            .prop_map(|(i, at, t)| Mutation::Inject(i.index(1 << 16), at, t)),
        3 => (line.clone(), 0usize..60, template_source())
            .prop_map(|(i, at, t)| Mutation::Template(i.index(1 << 16), at, t)),
        2 => (line.clone(), number_edge())
            .prop_map(|(i, v)| Mutation::Number(i.index(1 << 16), v)),
        2 => (line.clone(), new_line).prop_map(|(i, l)| Mutation::Insert(i.index(1 << 16), l)),
        1 => (line, any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i.index(1 << 16), b)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let n = lines.len();
    match m {
        Mutation::Delete(i) => {
            lines.remove(i % n);
        }
        Mutation::Duplicate(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::Swap(a, b) => lines.swap(a % n, b % n),
        Mutation::Retype(i, v) => {
            let l = &mut lines[i % n];
            if let Some((k, _)) = l.split_once('=') {
                *l = format!("{}= {v}", k);
            } else {
                *l = format!("{l} = {v}");
            }
        }
        Mutation::Rename(i, k) => {
            let l = &mut lines[i % n];
            if let Some((_, v)) = l.split_once('=') {
                *l = format!("{k} ={v}");
            }
        }
        Mutation::Inject(i, at, t) => {
            // Inside a string value when there is one, else anywhere.
            let strings: Vec<usize> = (0..n).filter(|&k| lines[k].contains('"')).collect();
            let k = if strings.is_empty() {
                i % n
            } else {
                strings[i % strings.len()]
            };
            let l = &mut lines[k];
            let start = l.find('"').map_or(0, |q| q + 1);
            let offsets: Vec<usize> = l[start..]
                .char_indices()
                .map(|(o, _)| start + o)
                .chain([l.len()])
                .collect();
            let pos = offsets[at % offsets.len()];
            l.insert_str(pos, &escape(t));
        }
        Mutation::Template(i, at, t) => {
            let templates: Vec<usize> = (0..n)
                .filter(|&k| lines[k].contains('"') && lines[k].contains('{'))
                .collect();
            if let Some(&k) = templates.get(i % templates.len().max(1)) {
                let l = &mut lines[k];
                let start = l.find('"').map_or(0, |q| q + 1);
                let end = l.rfind('"').filter(|e| *e >= start).unwrap_or(l.len());
                let offsets: Vec<usize> = l[start..end]
                    .char_indices()
                    .map(|(o, _)| start + o)
                    .chain([end])
                    .collect();
                l.insert_str(offsets[at % offsets.len()], t);
            }
        }
        Mutation::Number(i, v) => {
            let numbers: Vec<usize> = (0..n)
                .filter(|&k| {
                    lines[k]
                        .split_once('=')
                        .is_some_and(|(_, v)| v.trim().starts_with(|c: char| c.is_ascii_digit()))
                })
                .collect();
            if let Some(&k) = numbers.get(i % numbers.len().max(1)) {
                let key = lines[k].split_once('=').map(|(k, _)| k.to_string());
                lines[k] = format!("{}= {v}", key.unwrap_or_default());
            }
        }
        Mutation::Insert(i, new) => lines.insert(i % (n + 1), new.clone()),
        Mutation::Byte(i, b) => {
            let joined = lines.join("\n");
            let mut bytes = joined.into_bytes();
            if !bytes.is_empty() {
                let at = i % bytes.len();
                bytes[at] = *b;
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    lines.join("\n")
}

/// Cut the text at byte `at` (not only at character boundaries: a cut
/// inside a character reads back as U+FFFD, as a truncated file would).
fn truncate(text: &str, at: usize) -> String {
    let bytes = text.as_bytes();
    String::from_utf8_lossy(&bytes[..at.min(bytes.len())]).into_owned()
}

/// TOML-shaped noise: headers, keys, values, punctuation.
fn token_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(TABLES).prop_map(|t| format!("\n{t}\n")),
        prop::sample::select(KEYS).prop_map(str::to_string),
        value(),
        prop::sample::select(vec![
            " = ", "=", "\n", "[", "]", "[[", "]]", "{", "}", ",", ".", "\"", "'", "\"\"\"", "#",
            " ", "\t", "\r\n",
        ])
        .prop_map(str::to_string),
    ];
    prop::collection::vec(token, 0..60).prop_map(|v| v.concat())
}

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn the_base_configs_are_valid() {
    for base in BASES {
        let loaded = config::parse(FILE, base, Path::new("/nonexistent"))
            .unwrap_or_else(|e| panic!("{e:?}\n{base}"));
        assert!(
            loaded.warnings.is_empty(),
            "base config warns: {:?}",
            loaded.warnings
        );
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn random_unicode_never_panics(text in any::<String>()) {
        check(&text)?;
    }


    #[test]
    fn a_valid_config_cut_at_any_byte(base in prop::sample::select(BASES), at in any::<prop::sample::Index>()) {
        check(&truncate(base, at.index(base.len() + 1)))?;
    }
}

proptest! {
    #![proptest_config(cases(600))]

    #[test]
    fn token_soup_never_panics(text in token_soup()) {
        check(&text)?;
    }
}

proptest! {
    #![proptest_config(cases(4000))]

    #[test]
    fn mutated_valid_configs(
        base in prop::sample::select(BASES),
        mutations in prop::collection::vec(mutation(), 1..5),
        cut in prop::option::weighted(0.15, any::<prop::sample::Index>()),
    ) {
        let mut text = base.to_string();
        for m in &mutations {
            text = apply(&text, m);
        }
        if let Some(at) = cut {
            text = truncate(&text, at.index(text.len() + 1));
        }
        check(&text)?;
    }
}

/// What the search above found (both panicked before their fixes), kept as
/// plain cases.
#[test]
fn found_by_the_fuzzer() {
    let cases: Vec<String> = vec![
        // A port range past i64::MAX: the check overflowed.
        RICH.replace("first_port = 8081", "first_port = 9223372036854775807"),
        // An unknown placeholder after TOML escapes and multi-byte text:
        // its offset in the decoded string is not its offset in the file.
        SPEC.replace(
            "run = \"sudo /opt/shop/bin/switch {version}\"",
            "run = \"\\\\ééé{x}\"",
        ),
        SPEC.replace(
            "run = \"sudo /opt/shop/bin/switch {version}\"",
            "run = \"\\u00e9\\u00e9\\u00e9\\u00e9 {verison}\"",
        ),
        SPEC.replace(
            "run = \"sudo /opt/shop/bin/switch {version}\"",
            "run = \"\"\"\n  é {bogus}\"\"\"",
        ),
    ];
    for text in cases {
        if let Err(e) = check(&text) {
            panic!("{e}\n--- config ---\n{text}");
        }
    }
    // The unknown placeholder is still pointed at exactly.
    let text = SPEC.replace(
        "run = \"sudo /opt/shop/bin/switch {version}\"",
        "run = \"\\t\\u00e9 {verison}\"",
    );
    let err = config::parse(FILE, &text, Path::new(".")).unwrap_err();
    let e = &err.errors[0];
    assert!(e.message.contains("{verison}"), "{}", e.message);
    let line = text.lines().position(|l| l.starts_with("run = ")).unwrap() + 1;
    let col = text
        .lines()
        .nth(line - 1)
        .unwrap()
        .find("{verison}")
        .unwrap()
        + 1;
    assert_eq!(e.location, format!("{FILE}:{line}:{col}"));
}
