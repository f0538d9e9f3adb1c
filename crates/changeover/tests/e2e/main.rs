//! End-to-end: the real binary against real HAProxy and a fleet of real sshd
//! on 127.0.1.x, with steady load through HAProxy.

mod around;
mod consul;
mod crash;
mod discovery;
mod faults;
mod fleet;
mod frontend;
mod gate;
mod hostile_input;
mod lifecycle;
mod notify;
mod rackspace;
mod report;

use changeover_testkit::load::{LoadGen, LoadOptions};
use fleet::{changeover, Fleet, OutSampler};
use std::time::Duration;

fn load(fleet: &Fleet) -> LoadGen {
    let mut opts = LoadOptions::new(fleet.frontend());
    opts.rps = 100;
    opts.new_connection_per_request = true;
    opts.request_timeout = Duration::from_secs(5);
    opts.max_duration = Duration::from_secs(180);
    opts.max_requests = 20_000;
    LoadGen::start(opts)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// Runs the blocking binary while the async load generator keeps going.
async fn deploy_under_load(
    fleet: &Fleet,
    config: &std::path::Path,
    args: &[&str],
) -> (
    std::process::Output,
    changeover_testkit::load::LoadReport,
    usize,
    u64,
) {
    let gen = load(fleet);
    let sampler = OutSampler::start(fleet.haproxy.socket_path().to_path_buf());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        changeover(&config, &args)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = gen.stop().await;
    let (max_out, samples) = sampler.finish();
    (out, report, max_out, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_under_load_drops_nothing() {
    let fleet = Fleet::builder(8).start();
    let config = fleet.config(
        None,
        "[drain]\nmode = \"lb\"\ntimeout = \"10s\"\n\n[strategy]\nbatch = \"25%\"\n",
    );
    let (out, report, max_out, samples) =
        deploy_under_load(&fleet, &config, &["deploy", "--version", "v2", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        report.failures, 0,
        "failed requests during the rollout: {report}"
    );
    assert!(report.requests > 200, "the load ran: {report}");
    assert_eq!(
        fleet.versions(),
        vec!["v2"; 8],
        "every unit on the new version"
    );
    assert!(samples > 20, "HAProxy was sampled ({samples} samples)");
    assert!(max_out <= 2, "at most 2 servers out at once, saw {max_out}");
    assert!(
        max_out >= 1,
        "the sampler saw units go out (else it proves nothing)"
    );
    assert!(
        report.versions_seen.contains_key("v2"),
        "traffic reached v2: {report}"
    );
    // The JSON stream is NDJSON with the schema version on every line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert!(events.iter().all(|e| e["schema"] == 1));
    let last = events.last().unwrap();
    assert_eq!(last["event"], "deploy_finished");
    assert_eq!(last["updated"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_restart_without_takeout_drops_requests() {
    // Same fleet, same load, same restarts, but nothing is taken out of the
    // balancer: the load test must see failures, or it could not see them
    // above either.
    let fleet = Fleet::builder(8).start();
    let config = fleet.config(
        Some("[[load_balancers]]\nkind = \"none\"\n"),
        "[drain]\nmode = \"fixed\"\ntimeout = \"0s\"\n\n[strategy]\nbatch = \"25%\"\n",
    );
    let (out, report, _, _) =
        deploy_under_load(&fleet, &config, &["deploy", "--version", "v2"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.versions(), vec!["v2"; 8]);
    assert!(
        report.failures > 0,
        "a naive restart must drop requests: {report}"
    );
}

fn server_status(fleet: &Fleet, name: &str) -> String {
    fleet.haproxy.server(name).status
}

#[test]
fn failing_step_halts_and_leaves_that_server_out() {
    let fleet = Fleet::builder(5).start();
    std::fs::write(fleet.app_dir(2).join("fail-deploy"), "").unwrap();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("artifact checksum mismatch"),
        "the host's stderr is shown: {all}"
    );
    assert_eq!(fleet.versions(), vec!["v2", "v2", "v1", "v1", "v1"]);
    assert_eq!(server_status(&fleet, "web-1"), "UP");
    assert_eq!(server_status(&fleet, "web-2"), "UP");
    assert_eq!(
        server_status(&fleet, "web-3"),
        "MAINT",
        "the failed server stays out"
    );
    for later in ["web-4", "web-5"] {
        assert_eq!(
            server_status(&fleet, later),
            "UP",
            "{later} untouched and in rotation"
        );
    }
}

#[test]
fn unit_that_never_gets_healthy_fails_at_the_deadline() {
    let fleet = Fleet::builder(4).start();
    std::fs::write(fleet.app_dir(1).join("unhealthy-v2"), "").unwrap();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n").to_path_buf();
    let text_cfg = std::fs::read_to_string(&config)
        .unwrap()
        .replace("deadline = \"10s\"", "deadline = \"2s\"");
    std::fs::write(&config, text_cfg).unwrap();
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("not healthy within 2s"), "{all}");
    assert_eq!(fleet.versions(), vec!["v2", "v2", "v1", "v1"]);
    assert_eq!(server_status(&fleet, "web-1"), "UP");
    assert_eq!(server_status(&fleet, "web-2"), "MAINT");
    assert_eq!(server_status(&fleet, "web-3"), "UP");
    assert_eq!(server_status(&fleet, "web-4"), "UP");
}

#[test]
fn unreachable_host_is_no_go_and_nothing_changes() {
    let mut fleet = Fleet::builder(4).start();
    fleet.ssh.stop_host(2);
    let config = fleet.config(None, "");
    let before = fleet.haproxy.show_stat();
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(all.contains("web-3"), "names the host: {all}");
    assert!(all.contains("nothing was changed"), "{all}");
    let after = fleet.haproxy.show_stat();
    assert_eq!(
        before
            .iter()
            .map(|r| (&r.name, &r.status, r.weight))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|r| (&r.name, &r.status, r.weight))
            .collect::<Vec<_>>()
    );
    assert_eq!(fleet.versions(), vec!["v1"; 4]);

    // --force lets the rollout go on without it.
    let out = changeover(&config, &["deploy", "--version", "v2", "--force", "web-3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.versions(), vec!["v2", "v2", "v1", "v2"]);
}

#[test]
fn missing_member_is_no_go() {
    let fleet = Fleet::builder(3).members(2).start();
    let config = fleet.config(None, "");
    let out = changeover(&config, &["check"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(all.contains("app/web-3"), "names the missing member: {all}");
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(fleet.versions(), vec!["v1"; 3]);
}

#[test]
fn check_says_go_on_a_healthy_fleet() {
    let fleet = Fleet::builder(3).start();
    let config = fleet.config(None, "");
    let out = changeover(&config, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("go: 3 unit(s)"));
}

#[test]
fn ctrl_c_finishes_units_in_flight_and_puts_them_back() {
    let fleet = Fleet::builder(6).start();
    let config = fleet.config(None, "[strategy]\nbatch = 1\n");
    let child = std::process::Command::new(fleet::BIN)
        .arg("--config")
        .arg(&config)
        .args(["deploy", "--version", "v2", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first unit is on its way.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fleet.haproxy.server("web-1").status == "UP" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(130), "{all}");
    assert!(all.contains("interrupted"), "{all}");
    // Every server back in rotation; the rest untouched on v1.
    for (name, _) in &fleet.hosts {
        let row = fleet
            .haproxy
            .wait_for_status(name, "UP", Duration::from_secs(10));
        assert_eq!(row.status, "UP", "{name}: {all}");
    }
    let versions = fleet.versions();
    assert!(
        versions[1..].iter().all(|v| v == "v1"),
        "no new unit started after Ctrl-C: {versions:?}"
    );
}

#[test]
fn witness_failures_halt_the_rollout() {
    // No take-out (kind "none"): restarts drop requests, the witness sees
    // them, and abort_after_failures = 0 halts the rollout after the wave in
    // flight. Proves the witness is wired into real deploys, not only the demo.
    let fleet = Fleet::builder(6).start();
    let witness = format!(
        "[witness]\nurl = \"http://{}/\"\nrps = 100\ntimeout = \"2s\"\nabort_after_failures = 0\nkeep_alive_share = 0.0\n",
        fleet.frontend()
    );
    let config = fleet.config(
        Some("[[load_balancers]]\nkind = \"none\"\n"),
        &format!("[drain]\nmode = \"fixed\"\ntimeout = \"0s\"\n\n[strategy]\nbatch = 1\npause = \"1s\"\n\n{witness}"),
    );
    let out = changeover(&config, &["deploy", "--version", "v2", "--json"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("traffic witness"),
        "the halt names the witness: {all}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.contains("\"witness_summary\""))
        .expect("a witness_summary event");
    let v: serde_json::Value = serde_json::from_str(summary).unwrap();
    assert!(v["failures"].as_u64().unwrap() > 0, "{summary}");
    let versions = fleet.versions();
    assert!(
        versions.iter().filter(|v| *v == "v1").count() >= 3,
        "the rollout stopped early: {versions:?}"
    );
}
