//! The binary without any server: plan output, config errors, exit codes.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_changeover");

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn plan_output() {
    let out = Command::new(BIN)
        .args([
            "--config",
            &fixture("shop.toml"),
            "plan",
            "--version",
            "1.4.2",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
}

/// The front-end tier (issue 4): HAProxy on each host by socket_command,
/// weights, groups of 35 %, the health gate, drain by counting on the host.
#[test]
fn plan_for_a_front_end_tier() {
    let out = Command::new(BIN)
        .args([
            "--config",
            &fixture("front.toml"),
            "plan",
            "--version",
            "v2",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
}

#[test]
fn plan_for_a_target() {
    let out = Command::new(BIN)
        .args([
            "--config",
            &fixture("shop.toml"),
            "plan",
            "canary",
            "--version",
            "1.4.2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
}

#[test]
fn bad_config_exits_2_with_location() {
    let out = Command::new(BIN)
        .args(["--config", &fixture("bad.toml"), "deploy", "--version", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:12:17"), "{err}");
    assert!(err.contains("unknown placeholder `{verison}`"), "{err}");
    assert!(err.contains("help:"), "{err}");
}

#[test]
fn missing_config_exits_2() {
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/changeover.toml", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/changeover.toml")
    );
}

#[test]
fn usage_error_exits_2() {
    let out = Command::new(BIN).args(["deploy"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unknown_target_exits_2() {
    let out = Command::new(BIN)
        .args([
            "--config",
            &fixture("shop.toml"),
            "plan",
            "nope",
            "--version",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known targets: canary, production10"));
}
