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

mod generators;
mod properties;

use changeover_core::config::{self, ConfigErrors, Loaded};
use miette::{GraphicalReportHandler, GraphicalTheme};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::path::Path;

use generators::{apply, cases, mutation, token_soup, truncate};

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
