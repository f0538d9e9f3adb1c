//! `[discovery]`, `[strategy] gate` and `[store] kind = "consul"` as
//! written in a config: what is accepted, what each mistake says, and how
//! discovered hosts join the fleet.

use changeover_core::config;
use changeover_core::discovery::{inventory, merge};
use changeover_core::plan::{ConsulAddress, DiscoverySpec, GateSource, StoreSpec};
use std::path::Path;
use std::time::Duration;

const BASE: &str = r#"app = "shop"

[[load_balancers]]
kind = "none"

[deploy]
run = "switch {version}"
"#;

fn parse(extra: &str) -> Result<changeover_core::plan::Plan, Vec<String>> {
    let text = format!("{BASE}{extra}");
    config::parse("changeover.toml", &text, Path::new("/tmp"))
        .map(|l| l.plan)
        .map_err(|e| {
            e.errors
                .iter()
                .map(|e| format!("{}: {}", e.location, e.message))
                .collect()
        })
}

fn errors(extra: &str) -> Vec<String> {
    match parse(extra) {
        Ok(_) => panic!("accepted: {extra}"),
        Err(e) => e,
    }
}

fn has(errors: &[String], needle: &str) {
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "no error contains {needle:?}: {errors:?}"
    );
}

#[test]
fn without_discovery_a_config_needs_hosts() {
    has(&errors(""), "no hosts in the config");
}

#[test]
fn a_command_is_enough_for_a_fleet() {
    let plan = parse("[discovery]\ncommand = \"./inventory.sh\"\ntimeout = \"10s\"\n").unwrap();
    assert!(plan.hosts.is_empty());
    match plan.discovery {
        Some(DiscoverySpec::Command {
            command,
            dir,
            timeout,
        }) => {
            assert_eq!(command, "./inventory.sh");
            assert_eq!(dir, Path::new("/tmp"));
            assert_eq!(timeout, Duration::from_secs(10));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.fleet_sources[0].origin, "config");
    assert_eq!(plan.fleet_sources[0].hosts, 0);
}

#[test]
fn consul_discovery_defaults_and_keys() {
    let plan = parse("[discovery]\nconsul = { service = \"shop\" }\n").unwrap();
    let Some(DiscoverySpec::Consul(c)) = &plan.discovery else {
        panic!("{:?}", plan.discovery)
    };
    assert_eq!(c.endpoint.address, "http://127.0.0.1:8500");
    assert!(!c.passing_only);
    assert_eq!(c.host_address, ConsulAddress::Service);
    let plan = parse(
        "[discovery]\nconsul = { address = \"http://10.0.0.5:8500/\", service = \"shop\", passing_only = true, host_address = \"node\", datacenter = \"eu-1\", token_env = \"CONSUL_HTTP_TOKEN\", timeout = \"2s\" }\n",
    )
    .unwrap();
    let Some(DiscoverySpec::Consul(c)) = &plan.discovery else {
        panic!()
    };
    assert_eq!(c.endpoint.address, "http://10.0.0.5:8500");
    assert!(c.passing_only);
    assert_eq!(c.host_address, ConsulAddress::Node);
    assert_eq!(c.endpoint.datacenter.as_deref(), Some("eu-1"));
    assert_eq!(c.endpoint.token_env.as_deref(), Some("CONSUL_HTTP_TOKEN"));
    assert_eq!(c.endpoint.timeout, Duration::from_secs(2));
}

#[test]
fn discovery_mistakes() {
    has(
        &errors("[discovery]\ncommand = \"x\"\nconsul = { service = \"shop\" }\n"),
        "both command and consul",
    );
    has(&errors("[discovery]\n"), "neither command nor consul");
    has(
        &errors("[discovery]\ncommand = \" \"\n"),
        "command is empty",
    );
    has(
        &errors("[discovery]\nconsul = { address = \"http://127.0.0.1:8500\" }\n"),
        "needs `service`",
    );
    has(
        &errors(
            "[discovery]\nconsul = { service = \"shop\", address = \"http://u:secret@x:8500\" }\n",
        ),
        "is not a Consul address",
    );
    let e = errors(
        "[discovery]\nconsul = { service = \"shop\", address = \"http://u:secret@x:8500\" }\n",
    );
    assert!(!e.iter().any(|m| m.contains("secret")), "{e:?}");
    has(
        &errors("[discovery]\nconsul = { service = \"shop\", token_env = \"my token\" }\n"),
        "token_env must name an environment variable",
    );
    has(
        &errors("[discovery]\nconsul = { service = \"shop\", ca_file = \"/nonexistent.pem\" }\n"),
        "is not a readable file",
    );
    has(
        &errors("[discovery]\nconsul = { service = \"shop\", host_address = \"vip\" }\n"),
        "not a valid host_address",
    );
    has(
        &errors("[discovery]\nconsul = { service = \"shop\" }\ntimeout = \"3s\"\n"),
        "timeout is for the command",
    );
    // Errors point at the line.
    let e = errors("[discovery]\ncommand = \"x\"\ntimeout = \"soon\"\n");
    assert!(e[0].starts_with("changeover.toml:"), "{e:?}");
    assert!(e[0].contains("`soon` is not a duration"), "{e:?}");
}

#[test]
fn the_consul_gate_reads_the_discovery_service() {
    let plan =
        parse("[discovery]\nconsul = { service = \"shop\" }\n[strategy]\ngate = \"consul\"\n")
            .unwrap();
    assert!(
        plan.strategy.wait_for_all_healthy,
        "naming a gate turns it on"
    );
    match &plan.strategy.gate {
        GateSource::Consul(c) => assert_eq!(c.service, "shop"),
        other => panic!("{other:?}"),
    }
    // Without [health]: the gate needs none.
    assert!(plan.health.is_none());
    has(
        &errors("[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[strategy]\ngate = \"consul\"\n"),
        "gate = \"consul\" needs [discovery] consul",
    );
    has(
        &errors("[discovery]\nconsul = { service = \"shop\" }\n[strategy]\ngate = \"consul\"\nwait_for_all_healthy = false\n"),
        "wait_for_all_healthy = false",
    );
    has(
        &errors("[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[strategy]\ngate = \"health\"\n"),
        "wait_for_all_healthy needs a health check",
    );
    has(
        &errors("[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[strategy]\ngate = \"dns\"\n"),
        "not a valid gate",
    );
}

#[test]
fn the_consul_store() {
    let plan = parse(
        "[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[store]\nkind = \"consul\"\naddress = \"http://127.0.0.1:8500\"\ntoken_env = \"CONSUL_HTTP_TOKEN\"\n",
    )
    .unwrap();
    let StoreSpec::Consul(c) = &plan.store else {
        panic!("{:?}", plan.store)
    };
    assert_eq!(c.prefix, "changeover/shop/");
    assert_eq!(c.lock_ttl, Duration::from_secs(15));
    let plan = parse(
        "[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[store]\nkind = \"consul\"\nprefix = \"/deploys/shop\"\nlock_ttl = \"30s\"\n",
    )
    .unwrap();
    let StoreSpec::Consul(c) = &plan.store else {
        panic!()
    };
    assert_eq!(c.prefix, "deploys/shop/", "no leading '/' in Consul KV");
    let h = "[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n";
    has(
        &errors(&format!(
            "{h}[store]\nkind = \"consul\"\nlock_ttl = \"5s\"\n"
        )),
        "lock_ttl must be 10s to 24h",
    );
    has(
        &errors(&format!(
            "{h}[store]\nkind = \"consul\"\nusername = \"x\"\n"
        )),
        "`username` is for kind = \"etcd\"",
    );
    has(
        &errors(&format!(
            "{h}[store]\nkind = \"etcd\"\nendpoints = [\"http://x:1\"]\naddress = \"http://x:2\"\n"
        )),
        "`address` is for kind = \"consul\"",
    );
    has(
        &errors(&format!("{h}[store]\ntoken_env = \"T\"\n")),
        "`token_env` is for kind = \"consul\"",
    );
}

#[test]
fn hosts_take_instance_id_and_instances() {
    let plan = parse(
        "[instances]\ncount = 2\nfirst_port = 8000\n[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\ninstance_id = \"i-0abc\"\ninstances = 3\n[[hosts]]\nname = \"b\"\naddress = \"10.0.0.2\"\n",
    )
    .unwrap();
    assert_eq!(plan.hosts[0].instance_id.as_deref(), Some("i-0abc"));
    let units = plan.units();
    let ports: Vec<(String, Option<u16>)> = units.iter().map(|u| (u.name(), u.port)).collect();
    assert_eq!(
        ports,
        vec![
            ("a#1".into(), Some(8000)),
            ("a#2".into(), Some(8001)),
            ("a#3".into(), Some(8002)),
            ("b#1".into(), Some(8000)),
            ("b#2".into(), Some(8001)),
        ]
    );
    has(
        &errors("[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\ninstances = 0\n"),
        "0 instances on one host is not allowed",
    );
    has(
        &errors("[instances]\nfirst_port = 65000\n[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\ninstances = 1000\n"),
        "port 65999 does not exist",
    );
}

#[test]
fn discovered_hosts_join_the_fleet_under_the_same_rules() {
    let plan = parse(
        "[[hosts]]\nname = \"bastion\"\naddress = \"10.0.0.1\"\ntags = [\"dev\"]\n[discovery]\ncommand = \"./inv\"\n[targets.canary]\ntags = [\"canary\"]\n[targets.one]\nhosts = [\"web-2\"]\n",
    )
    .unwrap();
    let found = inventory::parse(
        "command `./inv`",
        br#"[{"name": "web-1", "address": "10.0.1.1", "tags": ["canary"]},
             {"name": "web-2", "address": "10.0.1.2", "tags": ["production"]}]"#,
    )
    .unwrap();
    let plan = merge(plan, "command `./inv`", found).unwrap();
    assert_eq!(plan.hosts.len(), 3);
    let canary = plan.target(Some("canary")).unwrap();
    assert_eq!(canary.units.len(), 1);
    assert_eq!(canary.units[0].host.name, "web-1");
    assert_eq!(
        plan.target(Some("one")).unwrap().units[0].host.name,
        "web-2"
    );
    let sources: Vec<(String, usize)> = plan
        .fleet_sources
        .iter()
        .map(|f| (f.origin.clone(), f.hosts))
        .collect();
    assert_eq!(
        sources,
        vec![("config".into(), 1), ("command `./inv`".into(), 2)]
    );
}
