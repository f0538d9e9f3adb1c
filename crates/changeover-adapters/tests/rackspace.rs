//! The Rackspace Cloud Load Balancers adapter against the testkit's FAKE
//! Rackspace (`changeover_testkit::rackspace`): an in-process server
//! written from Rackspace's API documentation (202 + PENDING_UPDATE, 422
//! while immutable, 413 with Retry-After, tokens that expire). Rackspace
//! itself cannot be reached from here.

use changeover_adapters::lb::rackspace::{Credentials, RackspaceLb, RackspaceOptions};
use changeover_core::lb::{AdminState, BalancerState, LbAction, LbError, LoadBalancer, OperState};
use changeover_core::template::{Template, PLACEHOLDERS};
use changeover_core::unit::{Host, Unit};
use changeover_testkit::rackspace::RackspaceFake;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "0123456789abcdef-the-api-key";

fn unit(i: usize, address: &str) -> Unit {
    Unit {
        index: i,
        host: Arc::new(Host {
            name: format!("web-{}", i + 1),
            address: address.to_string(),
            tags: Vec::new(),
            ssh_user: None,
            ssh_port: None,
            instance_id: None,
            instances: None,
        }),
        instance: 1,
        port: None,
    }
}

/// Credentials in variables named for the test (tests share a process
/// under `cargo test`).
fn adapter(fake: &RackspaceFake, test: &str, settle: Duration) -> RackspaceLb {
    let (user_env, key_env) = (format!("RS_{test}_USER"), format!("RS_{test}_KEY"));
    std::env::set_var(&user_env, "deployer");
    std::env::set_var(&key_env, KEY);
    RackspaceLb::new(options(fake, &user_env, &key_env, "ORD", settle))
}

/// Balancer 4242 on `fake`, credentials in the variables named.
fn options(
    fake: &RackspaceFake,
    user_env: &str,
    key_env: &str,
    region: &str,
    settle: Duration,
) -> RackspaceOptions {
    RackspaceOptions {
        load_balancer_id: 4242,
        region: region.into(),
        identity_url: fake.identity_url(),
        credentials: Credentials {
            username_env: user_env.into(),
            api_key_env: key_env.into(),
        },
        member: Template::parse("{address}", PLACEHOLDERS).unwrap(),
        poll_interval: Duration::from_millis(20),
        settle_timeout: settle,
    }
}

fn fake(nodes: usize) -> RackspaceFake {
    let mut b = RackspaceFake::builder(4242).pending(Duration::from_millis(150));
    for i in 0..nodes {
        b = b.node(&format!("10.0.0.{}", i + 1), 8080, Some(10 + i as u32));
    }
    b.start("deployer", KEY)
}

#[tokio::test]
async fn status_maps_conditions_and_the_health_monitor() {
    let fake = fake(3);
    let lb = adapter(&fake, "STATUS", Duration::from_secs(5));
    fake.set_condition("10.0.0.2", "DRAINING");
    fake.set_condition("10.0.0.3", "DISABLED");
    fake.set_node_status("10.0.0.1", "OFFLINE");
    let units: Vec<Unit> = (0..3)
        .map(|i| unit(i, &format!("10.0.0.{}", i + 1)))
        .collect();
    let missing = unit(9, "10.9.9.9");
    let refs: Vec<&Unit> = units.iter().chain([&missing]).collect();
    let st = lb.status(&refs).await;
    let s0 = st[0].as_ref().unwrap();
    assert_eq!(
        (s0.admin, s0.oper, s0.weight),
        (AdminState::Ready, OperState::Down, Some(10))
    );
    assert!(!s0.is_serving(), "an OFFLINE node is not serving");
    assert_eq!(st[1].as_ref().unwrap().admin, AdminState::Drain);
    assert_eq!(st[2].as_ref().unwrap().admin, AdminState::Maint);
    assert!(
        matches!(st[3], Err(LbError::NoSuchMember { .. })),
        "{:?}",
        st[3]
    );
    assert_eq!(lb.balancer_state().await.unwrap(), BalancerState::Ready);
    fake.set_status("SUSPENDED");
    assert_eq!(
        lb.balancer_state().await.unwrap(),
        BalancerState::Broken("SUSPENDED".into())
    );
    fake.set_status("PENDING_UPDATE");
    assert_eq!(
        lb.balancer_state().await.unwrap(),
        BalancerState::Busy("PENDING_UPDATE".into())
    );
}

#[tokio::test]
async fn take_out_and_put_back_follow_every_change_and_restore_the_weight() {
    let fake = fake(2);
    let lb = adapter(&fake, "CYCLE", Duration::from_secs(5));
    let u = unit(1, "10.0.0.2");
    let before = lb.status(&[&u]).await.remove(0).unwrap();
    lb.apply(&[&u], LbAction::Drain, None).await.unwrap();
    // Returned only once applied: the node is DRAINING now, not later.
    assert_eq!(
        lb.status(&[&u]).await[0].as_ref().unwrap().admin,
        AdminState::Drain
    );
    lb.apply(&[&u], LbAction::Disable, None).await.unwrap();
    // Someone changed the weight while it was out; put-back restores it.
    fake.set_weight("10.0.0.2", 55);
    let applied = fake.applied();
    assert_eq!(
        applied
            .iter()
            .map(|a| a.condition.as_str())
            .collect::<Vec<_>>(),
        ["DRAINING", "DISABLED"]
    );
    lb.apply(&[&u], LbAction::Enable, Some(&[before]))
        .await
        .unwrap();
    let node = fake
        .nodes()
        .into_iter()
        .find(|n| n.address == "10.0.0.2")
        .unwrap();
    assert_eq!(
        (node.condition.as_str(), node.weight),
        ("ENABLED", Some(11))
    );
    // Nothing was sent while the balancer was applying a change.
    let log = fake.log();
    let puts: Vec<_> = log.iter().filter(|l| l.method == "PUT").collect();
    assert_eq!(puts.len(), 3, "{log:#?}");
    assert!(
        puts.iter()
            .all(|l| l.lb_status == "ACTIVE" && l.answer == 202),
        "{puts:#?}"
    );
    // Asking for what is already so sends nothing.
    lb.apply(&[&u], LbAction::Enable, None).await.unwrap();
    assert_eq!(fake.log().iter().filter(|l| l.method == "PUT").count(), 3);
}

#[tokio::test]
async fn changes_from_many_units_go_one_at_a_time() {
    let fake = fake(6);
    let lb = Arc::new(adapter(&fake, "SERIAL", Duration::from_secs(10)));
    let units: Vec<Arc<Unit>> = (0..6)
        .map(|i| Arc::new(unit(i, &format!("10.0.0.{}", i + 1))))
        .collect();
    let tasks: Vec<_> = units
        .iter()
        .map(|u| {
            let (lb, u) = (lb.clone(), u.clone());
            tokio::spawn(async move { lb.apply(&[&u], LbAction::Drain, None).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(fake.nodes().iter().all(|n| n.condition == "DRAINING"));
    let log = fake.log();
    let puts: Vec<_> = log.iter().filter(|l| l.method == "PUT").collect();
    assert_eq!(puts.len(), 6, "one change per node, no 422: {puts:#?}");
    assert!(puts.iter().all(|l| l.lb_status == "ACTIVE"), "{puts:#?}");
    // Status reads were shared and paced, not one per unit per poll.
    let calls = lb.calls();
    assert_eq!(calls.sign_ins, 1);
    assert_eq!(calls.changes, 6);
    let gets = log.iter().filter(|l| l.method == "GET").count() as u64;
    assert_eq!(gets, calls.reads);
}

#[tokio::test]
async fn reads_for_many_units_at_once_are_shared() {
    let fake = fake(4);
    let lb = Arc::new(adapter(&fake, "SHARED", Duration::from_secs(5)));
    let units: Vec<Arc<Unit>> = (0..4)
        .map(|i| Arc::new(unit(i, &format!("10.0.0.{}", i + 1))))
        .collect();
    let mut tasks = Vec::new();
    for k in 0..100 {
        let (lb, u) = (lb.clone(), units[k % 4].clone());
        tasks.push(tokio::spawn(
            async move { lb.status(&[&u]).await.remove(0) },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let reads = lb.calls().reads;
    assert!(reads <= 3, "100 status calls at once took {reads} reads");
}

#[tokio::test]
async fn a_422_is_busy_and_a_413_is_throttled_with_its_retry_after() {
    let fake = fake(2);
    let lb = adapter(&fake, "BUSY", Duration::from_secs(5));
    let u = unit(0, "10.0.0.1");
    fake.storm(1);
    match lb.apply(&[&u], LbAction::Drain, None).await {
        Err(e @ LbError::Busy { .. }) => assert!(e.is_transient(), "{e}"),
        other => panic!("expected Busy, got {other:?}"),
    }
    // Once the other change is applied, the same call goes through.
    lb.apply(&[&u], LbAction::Drain, None).await.unwrap();

    let limited = RackspaceFake::builder(4242)
        .node("10.0.0.1", 8080, None)
        .rate_limit(2)
        .start("deployer", KEY);
    let lb = adapter(&limited, "LIMITED", Duration::from_secs(5));
    // sign-in + read use the budget; the change is refused.
    let r = lb.apply(&[&u], LbAction::Drain, None).await;
    match r {
        Err(LbError::Throttled { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(1)))
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_and_bad_credentials_are_named_not_shown() {
    let fake = fake(1);
    let lb = adapter(&fake, "TOKEN", Duration::from_secs(5));
    let u = unit(0, "10.0.0.1");
    lb.status(&[&u]).await.remove(0).unwrap();
    fake.expire_tokens();
    lb.apply(&[&u], LbAction::Drain, None).await.unwrap();
    assert_eq!(lb.calls().sign_ins, 2);

    std::env::set_var("RS_BADKEY_USER", "deployer");
    std::env::set_var("RS_BADKEY_KEY", "wrong-key-do-not-print");
    let bad = RackspaceLb::new(options(
        &fake,
        "RS_BADKEY_USER",
        "RS_BADKEY_KEY",
        "ORD",
        Duration::from_secs(1),
    ));
    let e = bad.balancer_state().await.unwrap_err().to_string();
    assert!(
        e.contains("RS_BADKEY_KEY") && !e.contains("wrong-key"),
        "{e}"
    );
    let unset = RackspaceLb::new(options(
        &fake,
        "RS_UNSET_USER",
        "RS_UNSET_KEY",
        "ORD",
        Duration::from_secs(1),
    ));
    let e = unset.balancer_state().await.unwrap_err().to_string();
    assert!(e.contains("RS_UNSET_USER") && e.contains("not set"), "{e}");
    // The wrong region is named.
    let lb = RackspaceLb::new(options(
        &fake,
        "RS_TOKEN_USER",
        "RS_TOKEN_KEY",
        "SYD",
        Duration::from_secs(1),
    ));
    let e = lb.balancer_state().await.unwrap_err().to_string();
    assert!(e.contains("region SYD"), "{e}");
    assert!(!e.contains(KEY), "{e}");
}

#[tokio::test]
async fn a_balancer_that_never_settles_fails_the_change_at_the_settle_timeout() {
    let fake = fake(1);
    let lb = adapter(&fake, "STUCK", Duration::from_millis(600));
    let u = unit(0, "10.0.0.1");
    fake.set_status("PENDING_UPDATE");
    let t0 = Instant::now();
    let e = lb.apply(&[&u], LbAction::Drain, None).await.unwrap_err();
    let took = t0.elapsed();
    assert!(
        !e.is_transient(),
        "a stuck balancer must not be retried: {e}"
    );
    assert!(e.to_string().contains("PENDING_UPDATE"), "{e}");
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(fake.log().iter().filter(|l| l.method == "PUT").count(), 0);
    // ERROR: no waiting, no change.
    fake.set_status("ERROR");
    let e = lb.apply(&[&u], LbAction::Drain, None).await.unwrap_err();
    assert!(e.to_string().contains("ERROR"), "{e}");
    assert_eq!(fake.log().iter().filter(|l| l.method == "PUT").count(), 0);
}
