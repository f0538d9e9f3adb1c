//! The fleet-wide health gate (`wait_for_all_healthy`) and drain mode
//! "host", against the real fleet: sshd per host, real HAProxy, the demo app
//! whose v1 turns unhealthy when a file `unhealthy-v1` appears in its
//! directory (as an instance that falls ill from outside would).

use super::fleet::{self, changeover, http_get, Fleet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const GATED: &str = "[strategy]\nwindow = 1\nwait_for_all_healthy = true\n";

fn spawn(config: &std::path::Path, args: &[&str]) -> Child {
    Command::new(fleet::BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run changeover")
}

/// Where host `i`'s app instance listens (not through HAProxy).
fn app_addr(fleet: &Fleet, i: usize) -> std::net::SocketAddr {
    format!("{}:{}", fleet.hosts[i].1, fleet.port)
        .parse()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Wait (bounded) until `server` is not UP in HAProxy: its unit is out.
fn wait_taken_out(fleet: &Fleet, server: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.haproxy.server(server).status.starts_with("UP") {
        assert!(Instant::now() < deadline, "{server} was never taken out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn make_unhealthy(fleet: &Fleet, host: usize, sick: bool) {
    let file = fleet.app_dir(host).join("unhealthy-v1");
    if sick {
        std::fs::write(file, "").unwrap();
    } else {
        std::fs::remove_file(file).unwrap();
    }
}

#[test]
fn gate_blocks_new_starts_until_an_unhealthy_instance_recovers() {
    let fleet = Fleet::builder(4).start();
    let config = fleet.config(None, &format!("{GATED}gate_timeout = \"60s\"\n"));
    let child = spawn(&config, &["deploy", "--version", "v2", "--json"]);
    // web-4 falls ill while web-1 is being deployed.
    wait_taken_out(&fleet, "web-1");
    make_unhealthy(&fleet, 3, true);
    // web-1 finishes; then nothing else may start while web-4 is unhealthy.
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(app_addr(&fleet, 0), "/").unwrap_or_default() != "v2" {
        assert!(Instant::now() < deadline, "web-1 never reached v2");
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = Instant::now() + Duration::from_secs(3);
    while Instant::now() < held {
        let row = fleet.haproxy.server("web-2");
        assert!(
            row.status.starts_with("UP"),
            "web-2 started while the gate was closed: {}",
            row.status
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    make_unhealthy(&fleet, 3, false);
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("\"event\":\"gate_closed\"") && all.contains("web-4"),
        "the gate closed on web-4: {all}"
    );
    assert!(
        all.contains("gate closed, waiting for: web-4"),
        "progress line: {all}"
    );
    assert_eq!(fleet.versions(), ["v2", "v2", "v2", "v2"], "{all}");
}

#[test]
fn forced_host_is_left_out_of_the_gate() {
    let fleet = Fleet::builder(4).start();
    // web-3 is known broken before the deploy: its check fails in HAProxy
    // too, so only --force lets the deploy start at all.
    make_unhealthy(&fleet, 2, true);
    fleet
        .haproxy
        .wait_for_status("web-3", "DOWN", Duration::from_secs(10));
    let config = fleet.config(None, &format!("{GATED}gate_timeout = \"5s\"\n"));
    let out = changeover(
        &config,
        &["deploy", "--version", "v2", "--force", "web-3", "--json"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        !all.contains("\"event\":\"gate_closed\""),
        "the gate never waited on web-3: {all}"
    );
    // Redeployed like the others: v2 is healthy.
    assert_eq!(fleet.versions(), ["v2", "v2", "v2", "v2"], "{all}");
}

#[test]
fn gate_timeout_halts_with_everything_else_in_rotation() {
    let fleet = Fleet::builder(4).start();
    let config = fleet.config(None, &format!("{GATED}gate_timeout = \"3s\"\n"));
    let child = spawn(&config, &["deploy", "--version", "v2", "--json"]);
    wait_taken_out(&fleet, "web-1");
    make_unhealthy(&fleet, 3, true);
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("gate stayed closed") && all.contains("web-4"),
        "the halt says why: {all}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no endless wait"
    );
    // web-1 updated and back; web-2, web-3 untouched and in; web-4 is in
    // rotation (admin state ready) but DOWN by its own health check.
    for server in ["web-1", "web-2", "web-3"] {
        let row = fleet
            .haproxy
            .wait_for_status(server, "UP", Duration::from_secs(10));
        assert_eq!(row.status, "UP", "{server}: {all}");
    }
    assert_eq!(fleet.haproxy.server("web-4").status, "DOWN", "{all}");
    assert_eq!(fleet.versions(), ["v2", "v1", "v1", "v1"], "{all}");
}

/// A keep-alive connection straight to an app instance, one request done,
/// held open until dropped.
fn held_connection(fleet: &Fleet, host: usize) -> TcpStream {
    let mut s = TcpStream::connect(app_addr(fleet, host)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: held\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(n > 0, "the app answered");
    s
}

fn drain_host(fleet: &Fleet, timeout: &str) -> std::path::PathBuf {
    fleet.config(
        None,
        &format!(
            // The test hosts share one network stack and one port: count
            // only the unit's own address.
            "[instances]\nfirst_port = {}\n\n[drain]\nmode = \"host\"\nlocal_address = \"{{address}}\"\ntimeout = \"{timeout}\"\ninterval = \"200ms\"\n\n[strategy]\nbatch = 1\n",
            fleet.port
        ),
    )
}

#[test]
fn drain_host_waits_for_a_held_open_connection() {
    let fleet = Fleet::builder(2).start();
    let conn = held_connection(&fleet, 0);
    let config = drain_host(&fleet, "30s");
    let child = spawn(&config, &["deploy", "--version", "v2", "--json"]);
    wait_taken_out(&fleet, "web-1");
    // Draining: the connection is still open, so nothing is deployed yet.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        http_get(app_addr(&fleet, 0), "/").unwrap(),
        "v1",
        "deployed while a connection was open"
    );
    drop(conn);
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(fleet.versions(), ["v2", "v2"], "{all}");
}

#[test]
fn drain_host_honours_the_timeout() {
    let fleet = Fleet::builder(2).start();
    let _conn = held_connection(&fleet, 0);
    let config = drain_host(&fleet, "2s");
    let started = Instant::now();
    let out = changeover(&config, &["deploy", "--version", "v2", "--json"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(started.elapsed() < Duration::from_secs(20), "{all}");
    // The held connection, plus any HAProxy health check caught open at
    // the last count.
    assert!(
        open_connections(&all).is_some_and(|n| n >= 1),
        "the failure counts the connection: {all}"
    );
    // Nothing was changed on web-1: it is back in; web-2 untouched.
    let row = fleet
        .haproxy
        .wait_for_status("web-1", "UP", Duration::from_secs(10));
    assert_eq!(row.status, "UP");
    assert_eq!(fleet.versions(), ["v1", "v1"], "{all}");
}

/// N in "still N open connection(s) on the host", from a failure message.
fn open_connections(text: &str) -> Option<u64> {
    let (before, _) = text.split_once(" open connection(s) on the host")?;
    before.rsplit("still ").next()?.trim().parse().ok()
}

/// Drain never reaches 0 with `on_timeout = "proceed"`: the unit goes on
/// after the timeout, the event and the summary say so, and the rollout
/// finishes.
#[test]
fn drain_never_reaching_zero_with_proceed_goes_on_and_says_so() {
    let fleet = Fleet::builder(2).start();
    let _conn = held_connection(&fleet, 0);
    let config = fleet.config(
        None,
        &format!(
            "[instances]\nfirst_port = {}\n\n[drain]\nmode = \"host\"\nlocal_address = \"{{address}}\"\ntimeout = \"2s\"\non_timeout = \"proceed\"\ninterval = \"200ms\"\n\n[strategy]\nbatch = 1\n",
            fleet.port
        ),
    );
    let out = changeover(&config, &["deploy", "--version", "v2", "--json"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let timeout_event = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "drain_timeout")
        .unwrap_or_else(|| panic!("no drain_timeout event\n{all}"));
    assert_eq!(timeout_event["unit"], "web-1#1", "{timeout_event}");
    assert_eq!(timeout_event["proceeded"], true, "{timeout_event}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("proceeding anyway"),
        "{all}"
    );
    assert_eq!(fleet.versions(), ["v2", "v2"], "{all}");
    for name in ["web-1", "web-2"] {
        fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(10));
    }
}
