//! The HAProxy adapter against a real haproxy (see changeover-testkit).

use changeover_adapters::lb::haproxy::{HaproxyLb, Method};
use changeover_core::lb::{AdminState, LbAction, LbError, LoadBalancer, MemberStatus, OperState};
use changeover_core::template::{Template, PLACEHOLDERS};
use changeover_core::unit::{Host, Unit};
use changeover_testkit::haproxy::Haproxy;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SETTLE: Duration = Duration::from_secs(5);

fn unit(name: &str) -> Unit {
    Unit {
        index: 0,
        host: Arc::new(Host {
            name: name.to_string(),
            address: "127.0.0.1".to_string(),
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

fn template(source: &str) -> Template {
    Template::parse(source, PLACEHOLDERS).unwrap()
}

fn adapter(endpoint: impl Into<String>, method: Method) -> HaproxyLb {
    HaproxyLb::new(endpoint.into(), template("app"), template("{host}"), method)
}

fn unix(haproxy: &Haproxy, method: Method) -> HaproxyLb {
    adapter(haproxy.socket_path().to_str().unwrap(), method)
}

async fn status_of(lb: &HaproxyLb, u: &Unit) -> MemberStatus {
    lb.status(&[u]).await.pop().unwrap().unwrap()
}

/// A tiny HTTP backend. While `hold` is true, requests get no answer (an
/// open session HAProxy has to count); set it to false to let them finish.
struct Backend {
    addr: SocketAddr,
    hold: watch::Sender<bool>,
}

async fn backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hold, watching) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut hold = watching.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        // Health checks connect and hang up.
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = hold.wait_for(|held| !held).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    Backend { addr, hold }
}

/// An address where nothing listens: haproxy's checks mark such a server DOWN.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_method_drains_disables_and_enables() {
    let app = backend().await;
    let haproxy = Haproxy::builder()
        .server("web-1", &app.addr.to_string())
        .start();
    haproxy.wait_for_status("web-1", "UP", SETTLE);
    let lb = unix(&haproxy, Method::State);
    let web1 = unit("web-1");

    let before = status_of(&lb, &web1).await;
    assert_eq!(before.member, "app/web-1");
    assert!(before.is_serving(), "{before:?}");
    assert_eq!(before.sessions, Some(0));

    lb.apply(&[&web1], LbAction::Drain, None).await.unwrap();
    assert_eq!(haproxy.server("web-1").status, "DRAIN");
    let drained = status_of(&lb, &web1).await;
    assert_eq!(
        (drained.admin, drained.oper),
        (AdminState::Drain, OperState::Up)
    );
    assert!(!drained.is_serving());

    lb.apply(&[&web1], LbAction::Disable, None).await.unwrap();
    assert_eq!(haproxy.server("web-1").status, "MAINT");
    assert_eq!(status_of(&lb, &web1).await.admin, AdminState::Maint);

    lb.apply(&[&web1], LbAction::Enable, Some(&[before]))
        .await
        .unwrap();
    haproxy.wait_for_status("web-1", "UP", SETTLE);
    assert!(status_of(&lb, &web1).await.is_serving());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_units_in_one_call() {
    let haproxy = Haproxy::builder()
        .server("web-1", &dead_addr())
        .server("web-2", &dead_addr())
        .server("web-3", &dead_addr())
        .start();
    let lb = unix(&haproxy, Method::State);
    let (web1, web2, web3) = (unit("web-1"), unit("web-2"), unit("web-3"));

    lb.apply(&[&web1, &web3], LbAction::Disable, None)
        .await
        .unwrap();
    let statuses: Vec<_> = lb
        .status(&[&web3, &web2, &web1])
        .await
        .into_iter()
        .map(|s| s.unwrap())
        .collect();
    let seen: Vec<_> = statuses
        .iter()
        .map(|s| (s.member.as_str(), s.admin))
        .collect();
    assert_eq!(
        seen,
        [
            ("app/web-3", AdminState::Maint),
            ("app/web-2", AdminState::Ready),
            ("app/web-1", AdminState::Maint),
        ],
        "results come in the order the units were asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_a_down_server_is_still_seen() {
    // show stat says "DOWN" for a drained server whose check fails; the
    // adapter must still report the drain, or a put-back would look undone.
    let haproxy = Haproxy::builder().server("web-1", &dead_addr()).start();
    haproxy.wait_for_status("web-1", "DOWN", SETTLE);
    let lb = unix(&haproxy, Method::State);
    let web1 = unit("web-1");

    lb.apply(&[&web1], LbAction::Drain, None).await.unwrap();
    let status = status_of(&lb, &web1).await;
    assert_eq!(status.raw, "DOWN");
    assert_eq!(
        (status.admin, status.oper),
        (AdminState::Drain, OperState::Down)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_method_puts_back_the_weight_it_had() {
    let app = backend().await;
    let haproxy = Haproxy::builder()
        .server_weighted("web-1", &app.addr.to_string(), 37)
        .start();
    haproxy.wait_for_status("web-1", "UP", SETTLE);
    let lb = unix(&haproxy, Method::Weight);
    let web1 = unit("web-1");
    assert!(!lb.capabilities().distinct_disable);

    // An operator tuned the weight at runtime; that is what must come back.
    assert_eq!(haproxy.command("set server app/web-1 weight 12"), "\n");
    let before = status_of(&lb, &web1).await;
    assert_eq!(before.weight, Some(12));

    lb.apply(&[&web1], LbAction::Drain, None).await.unwrap();
    let row = haproxy.server("web-1");
    assert_eq!((row.status.as_str(), row.weight), ("UP", Some(0)));
    let drained = status_of(&lb, &web1).await;
    assert_eq!(
        (drained.admin, drained.weight),
        (AdminState::Ready, Some(0))
    );
    assert!(!drained.is_serving());

    lb.apply(&[&web1], LbAction::Disable, None).await.unwrap();
    assert_eq!(
        haproxy.server("web-1").status,
        "UP",
        "weight mode never sets maint"
    );
    assert_eq!(haproxy.server("web-1").weight, Some(0));

    lb.apply(
        &[&web1],
        LbAction::Enable,
        Some(std::slice::from_ref(&before)),
    )
    .await
    .unwrap();
    assert_eq!(haproxy.server("web-1").weight, Some(12));
    assert!(status_of(&lb, &web1).await.is_serving());

    // Without a record of the old weight: the configured one.
    lb.apply(&[&web1], LbAction::Drain, None).await.unwrap();
    lb.apply(&[&web1], LbAction::Enable, None).await.unwrap();
    assert_eq!(haproxy.server("web-1").weight, Some(37));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_members_are_named() {
    let haproxy = Haproxy::builder().server("web-1", &dead_addr()).start();
    let lb = unix(&haproxy, Method::State);
    let ghost = unit("web-9");

    let err = lb
        .apply(&[&ghost], LbAction::Drain, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LbError::NoSuchMember { member, .. } if member == "app/web-9"),
        "{err:?}"
    );
    assert!(err.to_string().contains("has no member app/web-9"), "{err}");

    let err = lb.status(&[&ghost]).await.pop().unwrap().unwrap_err();
    assert!(matches!(err, LbError::NoSuchMember { .. }), "{err:?}");

    let other_backend = HaproxyLb::new(
        haproxy.socket_path().to_str().unwrap().to_string(),
        template("api"),
        template("{host}"),
        Method::Weight,
    );
    let err = other_backend
        .apply(&[&unit("web-1")], LbAction::Drain, None)
        .await
        .unwrap_err();
    assert!(matches!(err, LbError::NoSuchMember { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unknown_member_fails_the_call_and_spares_the_rest() {
    let haproxy = Haproxy::builder().server("web-1", &dead_addr()).start();
    let lb = unix(&haproxy, Method::State);

    let err = lb
        .apply(&[&unit("web-9"), &unit("web-1")], LbAction::Disable, None)
        .await
        .unwrap_err();
    assert!(matches!(err, LbError::NoSuchMember { .. }), "{err:?}");
    // HAProxy runs the rest of a batch after a failed command.
    assert_eq!(haproxy.server("web-1").status, "MAINT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_cannot_smuggle_commands() {
    let haproxy = Haproxy::builder()
        .server("web-1", &dead_addr())
        .server("web-2", &dead_addr())
        .start();
    let lb = unix(&haproxy, Method::State);
    let evil = unit("web-1; set server app/web-2 state maint");

    let err = lb
        .apply(&[&unit("web-1"), &evil], LbAction::Drain, None)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("server name"), "{message}");
    assert!(message.contains("{host}"), "names the template: {message}");
    assert_ne!(haproxy.server("web-2").status, "MAINT");
    assert_ne!(
        haproxy.server("web-1").status,
        "DRAIN",
        "nothing is sent when one name is bad"
    );
    assert!(lb.status(&[&evil]).await[0].is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_endpoint_works() {
    let haproxy = Haproxy::builder()
        .server("web-1", &dead_addr())
        .tcp_admin_socket()
        .start();
    let addr = haproxy.tcp_admin_addr().unwrap();
    let lb = adapter(addr.to_string(), Method::State);
    assert_eq!(lb.label(), format!("haproxy {addr}"));
    let web1 = unit("web-1");

    lb.apply(&[&web1], LbAction::Disable, None).await.unwrap();
    assert_eq!(haproxy.server("web-1").status, "MAINT");
    assert_eq!(status_of(&lb, &web1).await.admin, AdminState::Maint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_counted() {
    let app = backend().await;
    let haproxy = Haproxy::builder()
        .server("web-1", &app.addr.to_string())
        .start();
    haproxy.wait_for_status("web-1", "UP", SETTLE);
    let lb = unix(&haproxy, Method::State);
    let web1 = unit("web-1");

    app.hold.send_replace(true);
    let mut client = TcpStream::connect(haproxy.frontend_addr()).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut sessions = 0;
    for _ in 0..100 {
        sessions = status_of(&lb, &web1).await.sessions.unwrap();
        if sessions > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sessions, 1, "one request held open on web-1");

    app.hold.send_replace(false);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    for _ in 0..100 {
        sessions = status_of(&lb, &web1).await.sessions.unwrap();
        if sessions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sessions, 0);
}

#[tokio::test]
async fn missing_socket_is_unreachable() {
    let lb = adapter("/nonexistent/haproxy.sock", Method::State);
    let err = lb
        .apply(&[&unit("web-1")], LbAction::Drain, None)
        .await
        .unwrap_err();
    assert!(matches!(err, LbError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/haproxy.sock"),
        "{err}"
    );
    let err = lb
        .status(&[&unit("web-1")])
        .await
        .pop()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, LbError::Unreachable { .. }), "{err:?}");

    let lb = adapter(dead_addr(), Method::State);
    let err = lb
        .apply(&[&unit("web-1")], LbAction::Drain, None)
        .await
        .unwrap_err();
    assert!(matches!(err, LbError::Unreachable { .. }), "{err:?}");
}

/// A socket that answers every connection with `answer` (or never, if None).
async fn fake_runtime_api(answer: Option<&'static str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                match answer {
                    Some(a) => {
                        let _ = stream.write_all(a.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_hung_socket_times_out() {
    let addr = fake_runtime_api(None).await;
    let lb = adapter(addr.to_string(), Method::State).with_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = lb
        .apply(&[&unit("web-1")], LbAction::Drain, None)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(err, LbError::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("300ms"), "{message}");
}

#[tokio::test]
async fn refusals_carry_haproxy_answer() {
    // What a socket below `level admin` answers.
    let addr = fake_runtime_api(Some("Permission denied\n\n")).await;
    let lb = adapter(addr.to_string(), Method::State);
    let err = lb
        .apply(&[&unit("web-1")], LbAction::Drain, None)
        .await
        .unwrap_err();
    match &err {
        LbError::Refused {
            request, answer, ..
        } => {
            assert_eq!(request, "set server app/web-1 state drain");
            assert_eq!(answer, "Permission denied");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(err.to_string().contains("Permission denied"), "{err}");

    let addr = fake_runtime_api(Some(
        "Unknown command, but maybe one of the following ones is a better match:\n  help\n\n",
    ))
    .await;
    let err = adapter(addr.to_string(), Method::State)
        .status(&[&unit("web-1")])
        .await
        .pop()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, LbError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("Unknown command"), "{err}");
}

/// 50 units draining poll at once. HAProxy serves 10 connections on a stats
/// socket (`stats maxconn`) and queues only a few more; past that a unix
/// socket refuses at once (EAGAIN), which failed units in drain at 500
/// hosts. The adapter keeps at most MAX_EXCHANGES connections open and
/// rides out a full queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_at_once_all_get_through() {
    let mut builder = Haproxy::builder();
    for i in 1..=50 {
        builder = builder.server(&format!("web-{i}"), &dead_addr());
    }
    let haproxy = builder.start();
    let lb = Arc::new(unix(&haproxy, Method::State));
    let units: Vec<Unit> = (1..=50).map(|i| unit(&format!("web-{i}"))).collect();
    let calls = units.iter().flat_map(|u| {
        let lb = lb.clone();
        (0..4).map(move |_| {
            let lb = lb.clone();
            async move { lb.status(&[u]).await.pop().unwrap() }
        })
    });
    let results = futures::future::join_all(calls).await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed, e.g. {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
    // Calls waiting at the same time share one read of the server tables.
    assert!(
        lb.status_reads() <= 50,
        "{} reads of HAProxy's tables for 200 calls at once",
        lb.status_reads()
    );
}

/// A TCP proxy to `upstream` that passes each request at once but holds
/// HAProxy's answer back for `hold`: a status read that HAProxy answered
/// before a change but that arrives after it.
async fn slow_answers(upstream: SocketAddr, hold: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut answer = Vec::new();
                let _ = server_read.read_to_end(&mut answer).await;
                tokio::time::sleep(hold).await;
                let _ = client_write.write_all(&answer).await;
            });
        }
    });
    addr
}

/// A unit that asks for its status after its take-out must not get the
/// answer of a read that HAProxy made before the take-out, even when that
/// read is still on its way back: shared reads are only those that started
/// after the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_read_never_predates_the_call() {
    let haproxy = Haproxy::builder()
        .server("web-1", &dead_addr())
        .tcp_admin_socket()
        .start();
    let proxy = slow_answers(
        haproxy.tcp_admin_addr().unwrap(),
        Duration::from_millis(600),
    )
    .await;
    let slow = Arc::new(adapter(proxy.to_string(), Method::State));
    let direct = unix(&haproxy, Method::State);
    let web1 = unit("web-1");

    // A read is on its way: HAProxy answered "ready" at once, the answer
    // comes 600 ms later.
    let early = {
        let (slow, web1) = (slow.clone(), web1.clone());
        tokio::spawn(async move { slow.status(&[&web1]).await.pop().unwrap().unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    direct.apply(&[&web1], LbAction::Drain, None).await.unwrap();
    // Asked after the drain: needs a read of its own.
    let after = slow.status(&[&web1]).await.pop().unwrap().unwrap();
    assert_eq!(early.await.unwrap().admin, AdminState::Ready);
    assert_eq!(
        after.admin,
        AdminState::Drain,
        "a status asked after the drain showed a read made before it"
    );
    assert_eq!(slow.status_reads(), 2);
}
