//! Targets resolve to units and a Policy: SPEC.md's target table, defaults
//! and per-target overrides.

use changeover_core::config;
use changeover_core::plan::{Amount, DrainMode, OnFailure, Rollout, FLEET_POINTER};
use std::path::Path;
use std::time::Duration;

fn base(extra: &str) -> String {
    let mut s = String::from("app = \"shop\"\n");
    for i in 1..=10 {
        let tag = if i <= 2 { "canary" } else { "production" };
        s.push_str(&format!(
            "[[hosts]]\nname = \"web-{i}\"\naddress = \"10.0.0.{i}\"\ntags = [\"{tag}\"]\n"
        ));
    }
    s.push_str(
        r#"
[[load_balancers]]
kind = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "app"
server = "{host}"

[drain]
timeout = "30s"

[deploy]
run = "switch {version}"

[health]
http = "http://{address}:8080/health"
deadline = "60s"

[strategy]
batch = "25%"
max_failures = 1
"#,
    );
    s.push_str(extra);
    s
}

fn plan(extra: &str) -> changeover_core::plan::Plan {
    match config::parse("changeover.toml", &base(extra), Path::new("/tmp")) {
        Ok(l) => l.plan,
        Err(e) => panic!("{:?}", miette::Report::new(e)),
    }
}

fn errors(extra: &str) -> Vec<String> {
    match config::parse("changeover.toml", &base(extra), Path::new("/tmp")) {
        Ok(_) => panic!("accepted: {extra}"),
        Err(e) => e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.location, e.message))
            .collect(),
    }
}

#[test]
fn the_fleet_has_the_defaults() {
    let t = plan("").target(None).unwrap();
    assert_eq!(t.units.len(), 10);
    let p = &t.policy;
    assert_eq!(p.pointer, FLEET_POINTER);
    assert_eq!(p.lock.as_deref(), Some("deploy"));
    assert!(!p.partial && p.lb_takeout && !p.require_message && p.can_unify);
    assert_eq!(
        p.strategy.rollout,
        Rollout::Batch(vec![Amount::Percent(25.0)])
    );
    assert_eq!(p.strategy.on_failure, OnFailure::Halt);
}

#[test]
fn a_target_takes_the_top_level_and_its_own_keys() {
    let plan = plan(
        r#"
[targets.production10]
tags = ["production"]
percent = 10
pointer = "production"
partial = true
require_message = true
can_unify = false
lock = "prod"
"#,
    );
    let t = plan.target(Some("production10")).unwrap();
    assert_eq!(t.units.len(), 1, "10 % of 8, at least 1");
    assert_eq!(t.units[0].host.name, "web-3");
    let p = &t.policy;
    assert_eq!(p.pointer, "production");
    assert!(p.partial && p.require_message && !p.can_unify);
    assert_eq!(p.lock.as_deref(), Some("prod"));
    // Not overridden: the top level's.
    assert_eq!(p.strategy.max_failures, Amount::Count(1));
    assert_eq!(p.drain.timeout, Duration::from_secs(30));
}

#[test]
fn the_pointer_defaults_to_the_target_name() {
    let plan = plan("[targets.canary]\ntags = [\"canary\"]\n");
    let p = plan.target(Some("canary")).unwrap().policy;
    assert_eq!(p.pointer, "canary");
    assert_eq!(p.lock.as_deref(), Some("deploy"));
}

#[test]
fn strategy_overrides_merge_key_by_key_and_rollout_keys_as_a_set() {
    let plan = plan(
        r#"
[targets.production]
tags = ["production"]

[targets.production.strategy]
window = "10%"
on_failure = "rollback"

[targets.production.drain]
mode = "fixed"
timeout = "5s"

[targets.production.health]
deadline = "2m"
"#,
    );
    let p = plan.target(Some("production")).unwrap().policy;
    // window replaces the top-level batch (not "both set").
    assert_eq!(p.strategy.rollout, Rollout::Window(Amount::Percent(10.0)));
    assert_eq!(p.strategy.on_failure, OnFailure::Rollback);
    assert_eq!(p.strategy.max_failures, Amount::Count(1), "inherited");
    assert!(matches!(p.drain.mode, DrainMode::Fixed));
    assert_eq!(p.drain.timeout, Duration::from_secs(5));
    let h = p.health.unwrap();
    assert_eq!(h.deadline, Duration::from_secs(120));
    assert!(
        matches!(h.check, changeover_core::plan::HealthCheck::Http { .. }),
        "inherited check"
    );
    // The fleet keeps the top level.
    let f = plan.target(None).unwrap().policy;
    assert_eq!(
        f.strategy.rollout,
        Rollout::Batch(vec![Amount::Percent(25.0)])
    );
    assert_eq!(f.strategy.on_failure, OnFailure::Halt);
}

#[test]
fn a_dev_box_deploys_in_place_without_a_lock() {
    let plan = plan("[targets.dev]\nhosts = [\"web-1\"]\nlb_takeout = false\nlock = false\n");
    let p = plan.target(Some("dev")).unwrap().policy;
    assert!(!p.lb_takeout);
    assert_eq!(p.lock, None);
    // Nothing taken out, nothing to drain.
    assert!(matches!(p.drain.mode, DrainMode::Fixed));
    assert_eq!(p.drain.timeout, Duration::ZERO);
}

#[test]
fn override_errors_point_into_the_target() {
    let e = errors(
        "[targets.prod]\ntags = [\"production\"]\n[targets.prod.strategy]\nwindow = \"0%\"\n",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("changeover.toml:") && m.contains(":") && m.contains("0%")),
        "{e:?}"
    );
    let line = e[0].split(':').nth(1).unwrap().parse::<usize>().unwrap();
    let text =
        base("[targets.prod]\ntags = [\"production\"]\n[targets.prod.strategy]\nwindow = \"0%\"\n");
    assert_eq!(
        text.lines().nth(line - 1).unwrap(),
        "window = \"0%\"",
        "{e:?}"
    );

    let e = errors("[targets.dev]\nlock = 3\n");
    assert!(e.iter().any(|m| m.contains("lock = 3")), "{e:?}");
    let e = errors("[targets.dev]\npointer = \"a/b\"\n");
    assert!(e.iter().any(|m| m.contains("pointer `a/b`")), "{e:?}");
    let e = errors("[store]\nkind = \"consul\"\nlock_ttl = \"2s\"\n");
    assert!(
        e.iter().any(|m| m.contains("lock_ttl must be 10s to 24h")),
        "{e:?}"
    );
    let e = errors("[store]\nkind = \"consul\"\nendpoints = [\"http://x:1\"]\n");
    assert!(
        e.iter()
            .any(|m| m.contains("`endpoints` is for kind = \"etcd\"")),
        "{e:?}"
    );
    let e = errors("[[hosts]]\nname = \"a/b\"\naddress = \"10.9.9.9\"\n");
    assert!(
        e.iter()
            .any(|m| m.contains("host name `a/b` is not usable")),
        "{e:?}"
    );
    let e = errors("[status]\nversion_command = \"cat /opt/shop/VERSION\"\n");
    assert!(
        e.iter()
            .any(|m| m.contains("not available in this version")),
        "{e:?}"
    );
    let e = errors("[store]\nkind = \"etcd\"\n");
    assert!(e.iter().any(|m| m.contains("needs `endpoints`")), "{e:?}");
    let e = errors("[store]\nkind = \"etcd\"\nendpoints = [\"http://u:secret@10.0.0.5:2379\"]\n");
    assert!(e.iter().all(|m| !m.contains("secret")), "{e:?}");
}
