//! The flightplan setup against Consul: the fleet discovered from Consul's
//! catalog (service tags as host tags), the lock, pointers, unit versions
//! and history in Consul's KV, and Consul's health checks as the gate; on
//! the real fleet (sshd per host + HAProxy).
//!
//! Consul itself cannot be installed here: these tests run against the
//! testkit's in-process FAKE (`changeover_testkit::consul`), written from
//! Consul's HTTP API docs, with ACL token checking on.

use super::text;
use crate::fleet::{self, changeover, http_get, Fleet};
use crate::lifecycle::{lifecycle_of, TARGETS};
use changeover_testkit::consul::{CheckStatus, ConsulFake, ServiceInstance};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN_ENV: &str = "CHANGEOVER_TEST_CONSUL_TOKEN";
const TOKEN: &str = "b1gs3cr3t-acl-t0ken-4e9a";

/// A Consul fake with the token set, and every fleet host registered as an
/// instance of service `testapp` (node = host name); `tags(i)` per host.
fn consul_for(fleet: &Fleet, tags: impl Fn(usize) -> Vec<&'static str>) -> ConsulFake {
    // Children (the binary) inherit it; each test is its own process.
    std::env::set_var(TOKEN_ENV, TOKEN);
    let consul = ConsulFake::builder().acl_token(TOKEN).start();
    for (i, (name, address)) in fleet.hosts.iter().enumerate() {
        let mut inst = ServiceInstance::new(name, address, "testapp");
        inst.port = fleet.port;
        inst.tags = tags(i).into_iter().map(str::to_string).collect();
        consul.register(inst);
    }
    consul
}

fn discovery(consul: &ConsulFake) -> String {
    format!(
        "[discovery]\nconsul = {{ address = \"{}\", service = \"testapp\", token_env = \"{TOKEN_ENV}\" }}\n",
        consul.address()
    )
}

#[test]
fn lifecycle_with_the_fleet_and_the_store_in_consul() {
    let fleet = Fleet::builder(10).start();
    let consul = consul_for(&fleet, |i| match i {
        0 => vec!["dev"],
        1 => vec!["canary"],
        _ => vec!["production"],
    });
    let config = fleet.config_without_hosts(&format!(
        "{TARGETS}\n[targets.canary]\ntags = [\"canary\"]\n\n{}\n[store]\nkind = \"consul\"\naddress = \"{}\"\ntoken_env = \"{TOKEN_ENV}\"\n",
        discovery(&consul),
        consul.address()
    ));

    // The fleet comes from Consul, tags and all.
    let out = changeover(&config, &["plan", "canary", "--version", "v9"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains(&format!(
            "fleet: 10 host(s): 0 from config, 10 from consul {} service `testapp`",
            consul.address()
        )),
        "{plan}"
    );
    assert!(
        plan.contains("to 1 unit(s) on 1 host(s), target canary"),
        "{plan}"
    );

    // The same walk, the same versions and pointers as with files and etcd.
    lifecycle_of(&config, &fleet);

    // The state is in Consul's KV under the documented layout.
    let keys = consul.kv_keys();
    for key in ["pointers/production", "units/web-1", "history/"] {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("changeover/testapp/{key}"))),
            "{key} missing in Consul: {keys:?}"
        );
    }
    assert!(
        !keys.iter().any(|k| k.contains("/lock/")),
        "every lock was released: {keys:?}"
    );
    assert!(consul.sessions().is_empty(), "every session was destroyed");
    assert!(!fleet.dir.path().join("state/pointers").exists());
    // Every request carried the token; none of it leaked into the KV.
    let requests = consul.requests();
    assert!(
        requests.iter().all(|r| r.had_token),
        "a request without the token"
    );
    for k in &keys {
        let v = consul.kv(k).unwrap();
        assert!(
            !String::from_utf8_lossy(&v.value).contains(TOKEN),
            "the token is in {k}"
        );
    }
    assert_no_token_under(fleet.dir.path());
}

/// No file under `dir` contains the token.
fn assert_no_token_under(dir: &std::path::Path) {
    for p in fleet::files_under(dir) {
        if let Ok(bytes) = std::fs::read(&p) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(TOKEN),
                "the token is in {}",
                p.display()
            );
        }
    }
}

const GATED: &str = "[strategy]\nwindow = 1\ngate = \"consul\"\n";

fn wait_taken_out(fleet: &Fleet, server: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.haproxy.server(server).status.starts_with("UP") {
        assert!(Instant::now() < deadline, "{server} was never taken out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn health_queries(consul: &ConsulFake) -> usize {
    consul
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/health/service/"))
        .count()
}

#[test]
fn a_host_critical_in_consul_holds_new_starts_until_it_passes() {
    let fleet = Fleet::builder(4).start();
    let consul = consul_for(&fleet, |_| vec!["production"]);
    let config = fleet.config_without_hosts(&format!(
        "{}\n{GATED}gate_timeout = \"60s\"\n",
        discovery(&consul)
    ));
    let child = Command::new(fleet::BIN)
        .arg("--config")
        .arg(&config)
        .args(["deploy", "--version", "v2", "--json", "-v"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // web-4 turns critical in Consul while web-1 is being deployed.
    wait_taken_out(&fleet, "web-1");
    consul.set_status("testapp-web-4", CheckStatus::Critical);
    let deadline = Instant::now() + Duration::from_secs(20);
    let web1 = format!("{}:{}", fleet.hosts[0].1, fleet.port)
        .parse()
        .unwrap();
    while http_get(web1, "/").unwrap_or_default() != "v2" {
        assert!(Instant::now() < deadline, "web-1 never reached v2");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing else starts while Consul says web-4 is critical.
    let before = health_queries(&consul);
    let held_for = Duration::from_secs(3);
    let held = Instant::now() + held_for;
    while Instant::now() < held {
        let row = fleet.haproxy.server("web-2");
        assert!(
            row.status.starts_with("UP"),
            "web-2 started while Consul had web-4 critical: {}",
            row.status
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // One query per look for the whole fleet (the health interval is
    // 100 ms here), never one per unit: 4 units would make it 4x.
    let asked = health_queries(&consul) - before;
    let looks = (held_for.as_millis() / 100) as usize;
    assert!(
        (1..=looks + 2).contains(&asked),
        "{asked} health queries in {held_for:?}, {looks} looks at most"
    );
    consul.set_status("testapp-web-4", CheckStatus::Passing);
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("\"event\":\"gate_closed\"")
            && all.contains("Consul check")
            && all.contains("web-4"),
        "the gate closed on web-4's Consul check: {all}"
    );
    assert_eq!(fleet.versions(), ["v2", "v2", "v2", "v2"], "{all}");
    assert!(!all.contains(TOKEN), "the token is in the output");
    // -v: every Consul request, every SSH command, every balancer call.
    assert!(all.contains("consul /v1/health/service/testapp"), "{all}");
    assert!(all.contains("ran `"), "{all}");
    assert!(all.contains("haproxy `"), "{all}");
}

#[test]
fn forcing_the_critical_host_lets_the_rollout_go_on() {
    let fleet = Fleet::builder(4).start();
    let consul = consul_for(&fleet, |_| vec!["production"]);
    consul.set_status("testapp-web-3", CheckStatus::Critical);
    let config = fleet.config_without_hosts(&format!(
        "{}\n{GATED}gate_timeout = \"3s\"\n",
        discovery(&consul)
    ));
    // check says the gate will wait on web-3 (a note, not a no-go).
    let out = changeover(&config, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("will hold new starts until these pass: web-3"),
        "{}",
        text(&out)
    );
    // Without --force the gate never opens: the deploy halts at the timeout.
    let out = changeover(&config, &["deploy", "--version", "v2", "--json"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("web-3"), "{all}");
    // With --force web-3, web-3 is left out of the gate.
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
    assert_eq!(fleet.versions(), ["v2", "v2", "v2", "v2"], "{all}");
}

#[test]
fn consul_refusing_the_token_is_a_clear_error() {
    let fleet = Fleet::builder(1).start();
    let consul = consul_for(&fleet, |_| vec![]);
    let config = fleet.config_without_hosts(&format!(
        "[discovery]\nconsul = {{ address = \"{}\", service = \"testapp\", token_env = \"CHANGEOVER_TEST_WRONG_TOKEN\" }}\n",
        consul.address()
    ));
    std::env::set_var("CHANGEOVER_TEST_WRONG_TOKEN", "not-the-token-5511");
    let out = changeover(&config, &["plan", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the request"), "{err}");
    assert!(err.contains("$CHANGEOVER_TEST_WRONG_TOKEN"), "{err}");
    assert!(
        !err.contains("not-the-token-5511"),
        "the token leaked: {err}"
    );

    std::env::remove_var("CHANGEOVER_TEST_UNSET_TOKEN");
    let config = fleet.config_without_hosts(&format!(
        "[discovery]\nconsul = {{ address = \"{}\", service = \"testapp\", token_env = \"CHANGEOVER_TEST_UNSET_TOKEN\" }}\n",
        consul.address()
    ));
    let out = changeover(&config, &["plan", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("$CHANGEOVER_TEST_UNSET_TOKEN, which is not set"),
        "{}",
        text(&out)
    );

    // An unknown service is named.
    let config = fleet.config_without_hosts(&format!(
        "[discovery]\nconsul = {{ address = \"{}\", service = \"nope\", token_env = \"{TOKEN_ENV}\" }}\n",
        consul.address()
    ));
    let out = changeover(&config, &["plan", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("knows no instance of service `nope`"),
        "{}",
        text(&out)
    );
}
