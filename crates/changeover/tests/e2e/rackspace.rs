//! The pkgcloud procedure through Rackspace Cloud Load Balancers, on the
//! real fleet (sshd per host, the app on each): every node DRAINING, then
//! DISABLED, deployed, then ENABLED, in pools of half the fleet, the
//! balancer ACTIVE before every change.
//!
//! Rackspace cannot be reached from here: the balancer is the testkit's
//! in-process FAKE (`changeover_testkit::rackspace`), written from the
//! Cloud Load Balancers and identity v2.0 documentation (202 then
//! PENDING_UPDATE for a while, 422 "immutable" meanwhile, tokens). The
//! 422 storm is the fake's: another client's change accepted just before
//! ours, as the docs describe concurrent changes.

use super::text;
use crate::fleet::{changeover, files_under, Fleet};
use changeover_testkit::rackspace::RackspaceFake;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const KEY: &str = "rax-api-key-7f3e9c21d4b8a6e5";

/// The fake with one node per fleet host, the credentials in the
/// environment (the binary inherits it; every test is its own process
/// under nextest, and the names are the test's own under cargo test).
fn rackspace_for(fleet: &Fleet, env: &str) -> (RackspaceFake, String) {
    std::env::set_var(format!("{env}_USER"), "deployer");
    std::env::set_var(format!("{env}_KEY"), KEY);
    let mut b = RackspaceFake::builder(7001).pending(Duration::from_millis(250));
    for (_, address) in &fleet.hosts {
        b = b.node(address, fleet.port, None);
    }
    let fake = b.start("deployer", KEY);
    let lb = format!(
        "[[load_balancers]]\nkind = \"rackspace\"\nload_balancer_id = 7001\nregion = \"ORD\"\n\
         identity_url = \"{}\"\nusername_env = \"{env}_USER\"\napi_key_env = \"{env}_KEY\"\n\
         member = \"{{address}}:{}\"\npoll_interval = \"50ms\"\nsettle_timeout = \"20s\"\n",
        fake.identity_url(),
        fleet.port
    );
    (fake, lb)
}

const POOLS: &str =
    "[strategy]\nbatch = \"50%\"\n\n[drain]\nmode = \"fixed\"\ntimeout = \"300ms\"\n";

/// Every file under `dir`, as text.
fn all_text(dir: &Path) -> String {
    files_under(dir)
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect()
}

#[test]
fn the_pkgcloud_procedure_through_rackspace_with_a_422_storm() {
    let fleet = Fleet::builder(4).start();
    let (fake, lb) = rackspace_for(&fleet, "RS_E2E");
    let config = fleet.config(Some(&lb), POOLS);
    // Three of our changes collide with another client's.
    fake.storm(3);
    let out = changeover(&config, &["deploy", "--version", "v2", "--json", "-vv"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.versions(), vec!["v2"; 4]);
    assert!(
        fake.nodes().iter().all(|n| n.condition == "ENABLED"),
        "{:?}",
        fake.nodes()
    );

    // Per node: DRAINING, then DISABLED, then ENABLED, nothing else.
    let applied = fake.applied();
    let mut per_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in &applied {
        per_node
            .entry(a.address.clone())
            .or_default()
            .push(a.condition.clone());
    }
    assert_eq!(per_node.len(), 4, "{applied:#?}");
    for (node, seq) in &per_node {
        assert_eq!(seq, &["DRAINING", "DISABLED", "ENABLED"], "{node}");
    }
    // Pools of two: never more than two nodes out, and the second pool
    // starts only once the first is back.
    let mut out_now = BTreeSet::new();
    let mut most = 0;
    let mut first_pool = Vec::new();
    for a in &applied {
        if a.condition == "ENABLED" {
            out_now.remove(&a.address);
        } else {
            if out_now.insert(a.address.clone()) && first_pool.len() < 2 {
                first_pool.push(a.address.clone());
            }
            if first_pool.len() == 2 && !first_pool.contains(&a.address) {
                let back = applied
                    .iter()
                    .filter(|b| b.condition == "ENABLED" && first_pool.contains(&b.address))
                    .filter(|b| b.at <= a.at)
                    .count();
                assert_eq!(
                    back, 2,
                    "{} went out before the first pool was back: {applied:#?}",
                    a.address
                );
            }
        }
        most = most.max(out_now.len());
    }
    assert_eq!(most, 2, "{applied:#?}");

    // The fake's log: every change was sent while the balancer was ACTIVE,
    // the three collisions were ridden out, and 12 changes were applied.
    let log = fake.log();
    let puts: Vec<_> = log.iter().filter(|l| l.method == "PUT").collect();
    assert!(
        puts.iter().all(|l| l.lb_status == "ACTIVE"),
        "a change was sent while the balancer was not ACTIVE: {puts:#?}"
    );
    assert_eq!(
        puts.iter().filter(|l| l.answer == 422).count(),
        3,
        "{puts:#?}"
    );
    assert_eq!(
        puts.iter().filter(|l| l.answer == 202).count(),
        12,
        "{puts:#?}"
    );
    let gets = log.iter().filter(|l| l.method == "GET").count();
    eprintln!(
        "rackspace, 4 units: {} sign-in(s), {gets} reads, {} changes ({} refused 422)",
        log.iter().filter(|l| l.method == "POST").count(),
        puts.len(),
        puts.iter().filter(|l| l.answer == 422).count()
    );

    // The API key and the tokens are nowhere in what the run wrote.
    let written = format!(
        "{}{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        all_text(&fleet.dir.path().join("state"))
    );
    assert!(
        written.contains("rackspace load balancer 7001"),
        "{}",
        text(&out)
    );
    assert!(!written.contains(KEY), "the API key leaked");
    assert!(!written.contains("fake-token-"), "a token leaked");
}

#[test]
fn go_no_go_refuses_a_balancer_not_active_or_a_node_not_enabled() {
    let fleet = Fleet::builder(4).start();
    let (fake, lb) = rackspace_for(&fleet, "RS_NOGO");
    let config = fleet.config(Some(&lb), POOLS);

    fake.set_status("PENDING_UPDATE");
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PENDING_UPDATE"), "{}", text(&out));

    fake.set_status("ACTIVE");
    fake.set_condition(&fleet.hosts[2].1, "DISABLED");
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web-3") && err.contains("DISABLED"),
        "{}",
        text(&out)
    );

    // Nothing was changed: no change sent, every host still on v1.
    assert_eq!(fake.log().iter().filter(|l| l.method == "PUT").count(), 0);
    assert_eq!(fleet.versions(), vec!["v1"; 4]);
}
