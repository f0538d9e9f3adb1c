//! `changeover demo` end to end (a short variant of the README's first
//! command): every unit on v2 with zero failed requests through the embedded
//! balancer, while the naive restart of the same instances, seen by the same
//! witness, fails requests — so the witness can see failures.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_changeover");

#[test]
fn demo_updates_every_unit_without_a_failed_request_and_naive_fails_some() {
    let keep = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "demo",
            "--instances",
            "4",
            "--batch",
            "2",
            "--rps",
            "100",
            "--boot-time",
            "600ms",
            "--compare-naive",
            "--json",
            "--keep",
        ])
        .arg(keep.path().join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{stderr}\nstdout:\n{stdout}"
    );
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON");
    assert_eq!(last["event"], "demo_summary", "{last}");
    assert_eq!(last["units"], 4);
    assert_eq!(last["units_updated"], 4, "{last}");
    assert_eq!(last["failed_requests"], 0, "{last}\n{stderr}");
    assert!(last["requests"].as_u64().unwrap() > 50, "{last}");
    assert!(last["max_out_of_service"].as_u64().unwrap() <= 2, "{last}");
    assert!(last["naive_requests"].as_u64().unwrap() > 50, "{last}");
    assert!(
        last["naive_failed_requests"].as_u64().unwrap() > 0,
        "the naive restart must fail requests: {last}\n{stderr}"
    );
    // Every line before is an event of the stable stream.
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("NDJSON");
        assert_eq!(v["schema"], 1, "{line}");
    }
    assert!(
        stderr.contains("drained"),
        "the per-unit timeline is shown: {stderr}"
    );
    // --keep: the config it used, and the report it wrote, stay.
    let kept = keep.path().join("demo");
    assert!(kept.join("changeover.toml").is_file(), "{stderr}");
    let report = std::fs::read_to_string(kept.join("report.html")).expect("the demo's report");
    assert!(report.contains("data-unit=\"local#1\""), "a row per unit");
    assert!(
        stderr.contains(&format!("report: {}", kept.join("report.html").display())),
        "{stderr}"
    );
}
