//! The embedded balancer against real demo apps on loopback: drain lets
//! in-flight requests finish and sends no new ones, maint after drain loses
//! nothing under load, weights hold, client keep-alive connections survive a
//! drain, health checks take a dead backend out.

use changeover_adapters::demo_app::{DemoApp, DemoAppOptions};
use changeover_adapters::lb::embedded::{EmbeddedLb, EmbeddedOptions};
use changeover_core::lb::{LbAction, LoadBalancer, MemberStatus, OperState};
use changeover_core::template::{Template, PLACEHOLDERS};
use changeover_core::unit::{Host, Unit};
use changeover_testkit::load::{LoadGen, LoadOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct App {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn app(port: u16, version: &str, think: Duration) -> App {
    let mut opts = DemoAppOptions::new(SocketAddr::from(([127, 0, 0, 1], port)), version);
    opts.think_time = think;
    let bound = DemoApp::bind(opts).await.expect("bind demo app");
    let addr = bound.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(bound.run_until(async {
        let _ = rx.await;
    }));
    App {
        addr,
        stop: Some(tx),
        task,
    }
}

impl App {
    /// Graceful stop: listener closed at once, in-flight requests finish.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
    }
}

fn make_units(addrs: &[SocketAddr]) -> Vec<Arc<Unit>> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Arc::new(Unit {
                index: i,
                host: Arc::new(Host {
                    name: format!("app-{i}"),
                    address: a.ip().to_string(),
                    tags: vec![],
                    ssh_user: None,
                    ssh_port: None,
                    instance_id: None,
                    instances: None,
                }),
                instance: 1,
                port: Some(a.port()),
            })
        })
        .collect()
}

async fn balancer(apps: &[&App]) -> (EmbeddedLb, Vec<Arc<Unit>>) {
    let units = make_units(&apps.iter().map(|a| a.addr).collect::<Vec<_>>());
    let opts = EmbeddedOptions {
        check_path: Some("/health".into()),
        check_interval: Duration::from_millis(50),
        ..EmbeddedOptions::default()
    };
    let lb = EmbeddedLb::start(
        opts,
        Template::parse("{address}:{port}", PLACEHOLDERS).unwrap(),
        &units,
    )
    .await
    .unwrap();
    (lb, units)
}

/// One request on its own connection; the version that answered.
async fn get(lb: SocketAddr) -> String {
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.rsplit("\r\n\r\n").next().unwrap().trim().to_string()
}

async fn status(lb: &EmbeddedLb, unit: &Unit) -> MemberStatus {
    lb.status(&[unit]).await.remove(0).unwrap()
}

#[tokio::test]
async fn in_flight_request_completes_after_drain() {
    let a = app(0, "a", Duration::from_millis(500)).await;
    let b = app(0, "b", Duration::from_millis(500)).await;
    let (lb, units) = balancer(&[&a, &b]).await;
    let addr = lb.local_addr();
    // Two requests in flight, one on each backend.
    let r1 = tokio::spawn(get(addr));
    let r2 = tokio::spawn(get(addr));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        status(&lb, &units[0]).await.sessions,
        Some(1),
        "sessions count the request in flight"
    );
    lb.apply(&[&units[0]], LbAction::Drain, None).await.unwrap();
    let mut got = vec![r1.await.unwrap(), r2.await.unwrap()];
    got.sort();
    assert_eq!(got, vec!["a", "b"], "both in-flight requests completed");
    assert_eq!(status(&lb, &units[0]).await.sessions, Some(0));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn drained_backend_gets_no_new_requests() {
    let a = app(0, "a", Duration::ZERO).await;
    let b = app(0, "b", Duration::ZERO).await;
    let (lb, units) = balancer(&[&a, &b]).await;
    lb.apply(&[&units[0]], LbAction::Drain, None).await.unwrap();
    for _ in 0..100 {
        assert_eq!(get(lb.local_addr()).await, "b");
    }
    lb.apply(&[&units[0]], LbAction::Enable, None)
        .await
        .unwrap();
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        *seen.entry(get(lb.local_addr()).await).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&10), "back in rotation: {seen:?}");
}

/// The changeover walk by hand, under load on both kinds of client
/// connection: drain → sessions 0 → maint → restart the app → enable.
async fn restart_under_load(keep_alive: bool) {
    let a = app(0, "v1", Duration::from_millis(20)).await;
    let b = app(0, "v1", Duration::from_millis(20)).await;
    let a_port = a.addr.port();
    let (lb, units) = balancer(&[&a, &b]).await;
    let mut opts = LoadOptions::new(lb.local_addr());
    opts.rps = 200;
    opts.new_connection_per_request = !keep_alive;
    opts.max_duration = Duration::from_secs(30);
    let load = LoadGen::start(opts);
    tokio::time::sleep(Duration::from_millis(300)).await;

    lb.apply(&[&units[0]], LbAction::Drain, None).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while status(&lb, &units[0]).await.sessions != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "drain never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lb.apply(&[&units[0]], LbAction::Disable, None)
        .await
        .unwrap();
    a.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a2 = app(a_port, "v2", Duration::from_millis(20)).await;
    while status(&lb, &units[0]).await.oper != OperState::Up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lb.apply(&[&units[0]], LbAction::Enable, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    assert_eq!(report.failures, 0, "{report}");
    assert!(report.requests > 150, "{report}");
    assert!(
        report.versions_seen.contains_key("v2"),
        "the restarted backend serves again: {report}"
    );
    a2.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn maint_after_drain_loses_nothing_with_new_connections() {
    restart_under_load(false).await;
}

#[tokio::test]
async fn maint_after_drain_loses_nothing_with_keep_alive_clients() {
    restart_under_load(true).await;
}

#[tokio::test]
async fn weights_are_respected() {
    let a = app(0, "a", Duration::ZERO).await;
    let b = app(0, "b", Duration::ZERO).await;
    let (lb, units) = balancer(&[&a, &b]).await;
    let mut heavy = status(&lb, &units[0]).await;
    heavy.weight = Some(3);
    // Enable with a restore weight is how a weight is set through the seam.
    lb.apply(&[&units[0]], LbAction::Enable, Some(&[heavy]))
        .await
        .unwrap();
    let mut seen = BTreeMap::new();
    for _ in 0..400 {
        *seen.entry(get(lb.local_addr()).await).or_insert(0u32) += 1;
    }
    let (na, nb) = (seen["a"], seen["b"]);
    assert!(
        (285..=315).contains(&na) && na + nb == 400,
        "3:1 expected, got {seen:?}"
    );
    assert_eq!(status(&lb, &units[0]).await.weight, Some(3));
}

#[tokio::test]
async fn client_keep_alive_connection_survives_draining_its_backend() {
    let a = app(0, "a", Duration::ZERO).await;
    let b = app(0, "b", Duration::ZERO).await;
    let (lb, units) = balancer(&[&a, &b]).await;
    let mut conn = TcpStream::connect(lb.local_addr()).await.unwrap();
    let mut versions = Vec::new();
    for i in 0..6 {
        if i == 2 {
            lb.apply(&[&units[0]], LbAction::Drain, None).await.unwrap();
            lb.apply(&[&units[0]], LbAction::Disable, None)
                .await
                .unwrap();
        }
        conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "request {i} on the same connection: {text}"
        );
        versions.push(text.rsplit("\r\n\r\n").next().unwrap().trim().to_string());
    }
    assert!(versions[..2].contains(&"a".to_string()), "{versions:?}");
    assert!(
        versions[2..].iter().all(|v| v == "b"),
        "after the drain only b: {versions:?}"
    );
}

#[tokio::test]
async fn a_dead_backend_is_checked_out_and_back_in() {
    let a = app(0, "a", Duration::ZERO).await;
    let b = app(0, "b", Duration::ZERO).await;
    let a_port = a.addr.port();
    let (lb, units) = balancer(&[&a, &b]).await;
    assert_eq!(status(&lb, &units[0]).await.oper, OperState::Up);
    a.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while status(&lb, &units[0]).await.oper != OperState::Down {
        assert!(tokio::time::Instant::now() < deadline, "never marked down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        assert_eq!(get(lb.local_addr()).await, "b");
    }
    let a2 = app(a_port, "a", Duration::ZERO).await;
    while status(&lb, &units[0]).await.oper != OperState::Up {
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(5),
            "never back up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(&lb, &units[0]).await.raw, "UP");
    a2.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn unknown_member_is_an_error_and_changes_nothing() {
    let a = app(0, "a", Duration::ZERO).await;
    let (lb, units) = balancer(&[&a]).await;
    let stranger = make_units(&[SocketAddr::from(([127, 0, 0, 9], 1))]).remove(0);
    let err = lb
        .apply(&[&units[0], &stranger], LbAction::Drain, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.9:1"), "{err}");
    assert_eq!(
        status(&lb, &units[0]).await.raw,
        "UP",
        "nothing was changed"
    );
    a.stop().await;
}

#[tokio::test]
async fn backend_connections_are_reused() {
    // 50 requests one after another: each finds the connection the last one
    // gave back to the pool, so the backend sees one connection, not 50
    // (a body ending on its Content-Length must still return its connection).
    let a = app(0, "v1", Duration::ZERO).await;
    let (lb, units) = balancer(&[&a]).await;
    for _ in 0..50 {
        assert_eq!(get(lb.local_addr()).await, "v1");
    }
    let open = lb.connections(&units[0]).unwrap();
    assert!(
        (1..=2).contains(&open),
        "50 sequential requests opened {open} backend connections"
    );
    a.stop().await;
}

#[tokio::test]
async fn draining_closes_the_idle_backend_connections() {
    // Pooled connections to a drained backend are of no use and would keep
    // its sockets open (drain mode "host" would wait on them).
    let a = app(0, "v1", Duration::ZERO).await;
    let b = app(0, "v2", Duration::ZERO).await;
    let (lb, units) = balancer(&[&a, &b]).await;
    for _ in 0..10 {
        get(lb.local_addr()).await;
    }
    assert!(
        lb.connections(&units[0]).unwrap() >= 1,
        "a connection was pooled"
    );
    lb.apply(&[&units[0]], LbAction::Drain, None).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while lb.connections(&units[0]).unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle connections to the drained backend stay open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The other backend serves on.
    for _ in 0..5 {
        assert_eq!(get(lb.local_addr()).await, "v2");
    }
    a.stop().await;
    b.stop().await;
}
