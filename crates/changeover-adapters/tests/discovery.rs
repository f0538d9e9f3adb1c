//! Discovery adapters: Consul's catalog (against the testkit's FAKE of
//! Consul's HTTP API; no Consul can be installed here) and a command.

use changeover_adapters::discovery::{command, consul};
use changeover_core::plan::{ConsulAddress, ConsulDiscovery, ConsulEndpoint};
use changeover_testkit::consul::{CheckStatus, ConsulFake, ServiceInstance};
use std::time::{Duration, Instant};

fn spec(fake: &ConsulFake, passing_only: bool) -> ConsulDiscovery {
    ConsulDiscovery {
        endpoint: ConsulEndpoint {
            address: fake.address(),
            token_env: None,
            ca_file: None,
            datacenter: None,
            timeout: Duration::from_secs(5),
        },
        service: "shop".into(),
        passing_only,
        host_address: ConsulAddress::Service,
    }
}

fn instance(node: &str, address: &str, port: u16, tags: &[&str]) -> ServiceInstance {
    let mut i = ServiceInstance::new(node, address, "shop");
    i.id = format!("shop-{node}-{port}");
    i.port = port;
    i.tags = tags.iter().map(|t| t.to_string()).collect();
    i
}

#[tokio::test]
async fn consul_instances_become_hosts() {
    let fake = ConsulFake::start();
    let mut a = instance("web-1", "10.0.0.1", 8000, &["canary"]);
    a.meta.insert("instance_id".into(), "i-0aaa".into());
    a.node_meta.insert("ssh_user".into(), "deploy".into());
    a.node_meta.insert("ssh_port".into(), "2222".into());
    let mut a2 = instance("web-1", "10.0.0.1", 8001, &["canary", "blue"]);
    a2.node_meta = a.node_meta.clone();
    fake.register(a);
    fake.register(a2);
    let mut b = instance("web-2", "10.0.0.2", 8000, &["production"]);
    b.address = "10.9.0.2".into();
    fake.register(b);
    fake.register(instance("web-3", "10.0.0.3", 8000, &["production"]));
    fake.set_status("shop-web-3-8000", CheckStatus::Critical);
    let origin = "consul test";
    let hosts = consul::hosts(origin, &spec(&fake, false)).await.unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["web-1", "web-2", "web-3"]);
    let h = &hosts[0];
    assert_eq!(h.tags, ["canary", "blue"]);
    assert_eq!(h.instances, Some(2), "two instances on the node");
    assert_eq!(h.instance_id.as_deref(), Some("i-0aaa"));
    assert_eq!(h.ssh_user.as_deref(), Some("deploy"));
    assert_eq!(h.ssh_port, Some(2222));
    assert_eq!(hosts[1].address, "10.9.0.2", "the service's own address");
    assert_eq!(hosts[1].instances, None);

    // passing_only: web-3 (critical) is not discovered.
    let hosts = consul::hosts(origin, &spec(&fake, true)).await.unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["web-1", "web-2"]);
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.path == "/v1/health/service/shop" && r.query.contains("passing")));

    // host_address = "node".
    let mut by_node = spec(&fake, false);
    by_node.host_address = ConsulAddress::Node;
    let hosts = consul::hosts(origin, &by_node).await.unwrap();
    assert_eq!(hosts[1].address, "10.0.0.2");
}

#[tokio::test]
async fn consul_failures_name_the_problem() {
    let fake = ConsulFake::start();
    let origin = "consul test";
    let e = consul::hosts(origin, &spec(&fake, false))
        .await
        .unwrap_err();
    assert!(
        e.message.contains("knows no instance of service `shop`"),
        "{e}"
    );

    fake.register(instance("web-1", "10.0.0.1", 8000, &[]));
    fake.set_status("shop-web-1-8000", CheckStatus::Warning);
    let e = consul::hosts(origin, &spec(&fake, true)).await.unwrap_err();
    assert!(
        e.message
            .contains("passing its checks (passing_only = true)"),
        "{e}"
    );

    let mut other_dc = spec(&fake, false);
    other_dc.endpoint.datacenter = Some("eu-9".into());
    let e = consul::hosts(origin, &other_dc).await.unwrap_err();
    assert!(e.message.contains("No path to datacenter"), "{e}");

    // An outage is retried (3 tries), then named.
    fake.set_outage(true);
    let started = Instant::now();
    let e = consul::hosts(origin, &spec(&fake, false))
        .await
        .unwrap_err();
    assert!(e.message.contains("No cluster leader"), "{e}");
    let asked = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/health/service/shop")
        .count();
    assert!(asked >= 3, "retried: {asked} requests");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Nothing listens: unreachable, naming the address.
    let dead = spec(&fake, false);
    let address = dead.endpoint.address.clone();
    drop(fake);
    let e = consul::hosts(origin, &dead).await.unwrap_err();
    assert!(
        e.message.contains("unreachable") && e.message.contains(&address),
        "{e}"
    );
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("still-running");
    // The child of the shell writes the marker if it survives the kill.
    let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
    let started = Instant::now();
    let e = command::hosts(
        "command `x`",
        &script,
        dir.path(),
        Duration::from_millis(500),
        "shop",
    )
    .await
    .unwrap_err();
    assert!(
        e.message.contains("did not finish within 500ms (killed)"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!marker.exists(), "a child of the command outlived the kill");
}

#[tokio::test]
async fn a_command_sees_the_app_and_runs_in_the_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hosts.json"),
        r#"[{"name": "web-1", "address": "10.0.0.1"}]"#,
    )
    .unwrap();
    let hosts = command::hosts(
        "command `x`",
        "test \"$CHANGEOVER_APP\" = shop && cat hosts.json",
        dir.path(),
        Duration::from_secs(5),
        "shop",
    )
    .await
    .unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].name, "web-1");
}

#[tokio::test]
async fn consul_over_https_with_the_ca_file() {
    use changeover_adapters::store::consul::ConsulStore;
    use changeover_core::plan::ConsulStoreSpec;
    use changeover_core::store::{Expect, Store};
    let fake = ConsulFake::builder().tls().start();
    assert!(fake.address().starts_with("https://127.0.0.1:"));
    fake.register(instance("web-1", "10.0.0.1", 8000, &["canary"]));
    let mut secure = spec(&fake, false);
    secure.endpoint.ca_file = fake.ca_file().map(|p| p.to_path_buf());
    let hosts = consul::hosts("consul tls", &secure).await.unwrap();
    assert_eq!(hosts[0].name, "web-1");

    let store = ConsulStore::connect(&ConsulStoreSpec {
        endpoint: secure.endpoint.clone(),
        prefix: "changeover/tls/".into(),
        lock_ttl: Duration::from_secs(10),
    })
    .await
    .unwrap();
    store
        .put(
            "pointers/p",
            &serde_json::json!({"current": "v1"}),
            Expect::Absent,
        )
        .await
        .unwrap()
        .expect("written");
    assert_eq!(
        store.get("pointers/p").await.unwrap().unwrap().value["current"],
        "v1"
    );

    // Without the CA the certificate is not trusted: unreachable, saying why.
    let e = consul::hosts("consul tls", &spec(&fake, false))
        .await
        .unwrap_err();
    eprintln!("without the CA: {e}");
    assert!(e.message.contains("unreachable"), "{e}");
    assert!(
        e.message.to_lowercase().contains("certificate"),
        "names the certificate problem: {e}"
    );
}
