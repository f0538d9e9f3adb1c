//! `[discovery] command`: the fleet printed by a script, on the real fleet
//! (sshd per host + HAProxy); and every way a script's answer can be wrong,
//! each exit 2 with a message naming the problem and nothing touched.

use super::text;
use crate::fleet::{changeover, Fleet};
use std::path::{Path, PathBuf};

/// Write `body` as an executable `inventory.sh` in `dir`.
fn script(dir: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("inventory.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_fleet_printed_by_a_command_is_deployed() {
    let fleet = Fleet::builder(10).start();
    let tags = |i: usize| {
        if i < 2 {
            vec!["canary"]
        } else {
            vec!["production"]
        }
    };
    std::fs::write(
        fleet.dir.path().join("inventory.json"),
        fleet.inventory_json(tags),
    )
    .unwrap();
    script(fleet.dir.path(), "cat inventory.json");
    let config = fleet.config_without_hosts(
        "[discovery]\ncommand = \"./inventory.sh\"\n\n[strategy]\nbatch = \"50%\"\n\n[targets.canary]\ntags = [\"canary\"]\n",
    );

    let out = changeover(&config, &["plan", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("fleet: 10 host(s): 0 from config, 10 from command `./inventory.sh`"),
        "{stdout}"
    );

    // Tags from the script select the target.
    let out = changeover(&config, &["deploy", "canary", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut want = vec![0; 10];
    want[0] = 1;
    want[1] = 1;
    assert_eq!(fleet.deploy_counts(), want, "canary = the two tagged hosts");

    let out = changeover(&config, &["deploy", "--version", "v3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.versions(), vec!["v3"; 10]);

    let out = changeover(&config, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fleet: 10 host(s)"),
        "{}",
        text(&out)
    );
}

/// A config whose fleet comes from `inventory.sh` only; nothing to reach.
fn bare(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("changeover.toml");
    std::fs::write(
        &config,
        format!(
            "app = \"shop\"\n\n[[load_balancers]]\nkind = \"none\"\n\n[deploy]\nrun = \"true\"\n\n[discovery]\ncommand = \"./inventory.sh\"\ntimeout = \"2s\"\n{extra}"
        ),
    )
    .unwrap();
    config
}

fn ten_hosts() -> String {
    let hosts: Vec<String> = (1..=10)
        .map(|i| format!("{{\"name\": \"web-{i}\", \"address\": \"10.0.0.{i}\", \"tags\": [\"production\"], \"instance_id\": \"i-000{i}\"}}"))
        .collect();
    format!("[{}]", hosts.join(","))
}

#[test]
fn a_script_printing_ten_hosts_is_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), &format!("echo '{}'", ten_hosts()));
    let config = bare(dir.path(), "");
    let out = changeover(&config, &["plan", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("to 10 unit(s) on 10 host(s)"), "{stdout}");
    assert!(
        stdout.contains("10 from command `./inventory.sh`"),
        "{stdout}"
    );
}

#[test]
fn every_bad_answer_is_exit_2_naming_the_problem() {
    let cases: &[(&str, &str, &str)] = &[
        ("bad JSON", "echo '[{\"name\": \"web-1\",'", "printed no valid JSON"),
        (
            "a missing field",
            "echo '[{\"name\": \"web-1\", \"address\": \"10.0.0.1\"}, {\"name\": \"web-2\"}]'",
            "entry 1 (`web-2`): field `address` is missing",
        ),
        (
            "a duplicate name",
            "echo '[{\"name\": \"web-1\", \"address\": \"10.0.0.1\"}, {\"name\": \"web-1\", \"address\": \"10.0.0.2\"}]'",
            "entry 1 (`web-1`): duplicate host name `web-1`",
        ),
        (
            "a non-zero exit",
            "echo 'inventory: cannot reach the CMDB' >&2; exit 3",
            "exited with status 3; its stderr ends:\n    inventory: cannot reach the CMDB",
        ),
        (
            "a hang",
            "sleep 30",
            "did not finish within 2s (killed)",
        ),
        ("an empty fleet", "echo '[]'", "found no hosts"),
        (
            "a wrong type",
            "echo '[{\"name\": \"web-1\", \"address\": \"10.0.0.1\", \"ssh_port\": \"22\"}]'",
            "entry 0 (`web-1`): `ssh_port` is a string, not a number",
        ),
    ];
    for (what, body, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), body);
        let config = bare(dir.path(), "");
        let started = std::time::Instant::now();
        let out = changeover(&config, &["deploy", "--version", "v2"]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot discover the fleet: command `./inventory.sh`: "),
            "{what}: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{what}: want {needle:?} in\n{stderr}"
        );
        assert!(
            !dir.path().join(".changeover").exists(),
            "{what}: discovery failed, yet state was written"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_discovered_name_also_in_the_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), &format!("echo '{}'", ten_hosts()));
    let config = bare(
        dir.path(),
        "\n[[hosts]]\nname = \"web-3\"\naddress = \"10.9.0.3\"\n",
    );
    let out = changeover(&config, &["plan", "--version", "v2", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "entry 2 (`web-3`): duplicate host name `web-3` (also in the config's [[hosts]])"
        ),
        "{stderr}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(doc["event"], "discovery_error");
    assert_eq!(doc["origin"], "command `./inventory.sh`");
}
