//! The load generator must count every kind of broken answer as a failure,
//! and nothing else: it is the judge of the zero-downtime tests.

use changeover_adapters::demo_app::{DemoApp, DemoAppOptions};
use changeover_testkit::load::{LoadGen, LoadOptions, LoadReport};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn options(target: SocketAddr, requests: u64) -> LoadOptions {
    LoadOptions {
        target,
        path: "/".to_string(),
        rps: 100,
        new_connection_per_request: false,
        request_timeout: Duration::from_secs(2),
        max_duration: Duration::from_secs(10),
        max_requests: requests,
    }
}

/// A server on loopback that hands every accepted connection to `handler`.
/// Returns its address and the number of connections accepted so far.
async fn raw_server<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handler(stream));
        }
    });
    (addr, accepted)
}

/// Read one request head; `None` when the client closed the connection.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Answer every request on the connection with `response`, keep-alive.
async fn answer_all(mut stream: TcpStream, response: &'static [u8]) {
    while read_request(&mut stream).await.is_some() {
        if stream.write_all(response).await.is_err() {
            return;
        }
    }
}

async fn start_demo_app(version: &str) -> SocketAddr {
    let opts = DemoAppOptions::new("127.0.0.1:0".parse().unwrap(), version);
    let app = DemoApp::bind(opts).await.unwrap();
    let addr = app.local_addr().unwrap();
    tokio::spawn(app.run_until(std::future::pending()));
    addr
}

fn assert_all_failed(report: &LoadReport, requests: u64, kind: &str) {
    assert_eq!(report.requests, requests, "{report}");
    assert_eq!(report.failures, requests, "{report}");
    assert_eq!(report.failure_kinds.get(kind), Some(&requests), "{report}");
    assert!(
        report.failure_samples.iter().all(|s| s.starts_with(kind)),
        "{report}"
    );
    assert!(report.versions_seen.is_empty(), "{report}");
}

#[tokio::test]
async fn no_failures_against_a_good_server_on_keep_alive() {
    let addr = start_demo_app("v1").await;
    let report = LoadGen::start(options(addr, 30)).wait().await;
    assert_eq!(report.requests, 30, "{report}");
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(report.versions_seen.get("v1"), Some(&30), "{report}");
    assert!(report.p50 > Duration::ZERO && report.p99 >= report.p50);
}

#[tokio::test]
async fn no_failures_against_a_good_server_with_a_connection_per_request() {
    let addr = start_demo_app("v2").await;
    let mut opts = options(addr, 30);
    opts.new_connection_per_request = true;
    let report = LoadGen::start(opts).wait().await;
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(report.versions_seen.get("v2"), Some(&30), "{report}");
}

#[tokio::test]
async fn keep_alive_reuses_the_connection() {
    let (addr, accepted) =
        raw_server(|s| answer_all(s, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nv1\n")).await;
    let mut opts = options(addr, 20);
    // Spaced out so that each answer is back before the next request, even
    // on a busy machine; a second connection is allowed for a slow one.
    opts.rps = 25;
    let report = LoadGen::start(opts).wait().await;
    assert_eq!(report.failures, 0, "{report}");
    assert!(accepted.load(Ordering::SeqCst) <= 2, "{accepted:?}");
}

#[tokio::test]
async fn a_connection_per_request_sends_connection_close() {
    let saw_close = Arc::new(Mutex::new(Vec::new()));
    let seen = saw_close.clone();
    let (addr, accepted) = raw_server(move |mut s| {
        let seen = seen.clone();
        async move {
            if let Some(request) = read_request(&mut s).await {
                seen.lock()
                    .unwrap()
                    .push(request.contains("\r\nConnection: close\r\n"));
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nv1\n",
                    )
                    .await;
            }
        }
    })
    .await;
    let mut opts = options(addr, 10);
    opts.new_connection_per_request = true;
    let report = LoadGen::start(opts).wait().await;
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
    assert_eq!(*saw_close.lock().unwrap(), vec![true; 10]);
}

#[tokio::test]
async fn counts_a_refused_connection() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let report = LoadGen::start(options(addr, 5)).wait().await;
    assert_all_failed(&report, 5, "connect: refused");
}

#[tokio::test]
async fn counts_a_reset() {
    let (addr, _) = raw_server(|mut s| async move {
        read_request(&mut s).await;
        // Zero linger turns the close into an RST.
        s.set_zero_linger().unwrap();
        drop(s);
    })
    .await;
    let report = LoadGen::start(options(addr, 5)).wait().await;
    assert_all_failed(&report, 5, "reset");
}

#[tokio::test]
async fn counts_a_timeout() {
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    let (addr, _) = raw_server(move |s| {
        // Never answer, never close.
        keep.lock().unwrap().push(s);
        async {}
    })
    .await;
    let mut opts = options(addr, 5);
    opts.request_timeout = Duration::from_millis(200);
    let report = LoadGen::start(opts).wait().await;
    assert_all_failed(&report, 5, "timeout");
}

#[tokio::test]
async fn counts_a_5xx() {
    let (addr, _) = raw_server(|s| {
        answer_all(
            s,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nX-App-Version: v1\r\n\r\n",
        )
    })
    .await;
    let report = LoadGen::start(options(addr, 5)).wait().await;
    assert_all_failed(&report, 5, "status 503");
}

#[tokio::test]
async fn counts_a_truncated_body() {
    let (addr, _) = raw_server(|mut s| async move {
        read_request(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nv1\n")
            .await;
    })
    .await;
    let report = LoadGen::start(options(addr, 3)).wait().await;
    assert_all_failed(&report, 3, "truncated response");
}

#[tokio::test]
async fn counts_a_close_without_an_answer() {
    let (addr, _) = raw_server(|mut s| async move {
        read_request(&mut s).await;
    })
    .await;
    let report = LoadGen::start(options(addr, 3)).wait().await;
    assert_all_failed(&report, 3, "closed before response");
}

#[tokio::test]
async fn counts_a_malformed_answer() {
    let (addr, _) = raw_server(|mut s| async move {
        read_request(&mut s).await;
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
    })
    .await;
    let report = LoadGen::start(options(addr, 3)).wait().await;
    assert_all_failed(&report, 3, "malformed response");
}

#[tokio::test]
async fn a_server_closing_idle_keep_alive_connections_is_not_a_failure() {
    // Answers as if keep-alive, then closes: what a server does with idle
    // connections when it shuts down or hits its keep-alive timeout.
    let (addr, accepted) = raw_server(|mut s| async move {
        read_request(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nv1\n")
            .await;
    })
    .await;
    let report = LoadGen::start(options(addr, 10)).wait().await;
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn reads_chunked_bodies() {
    let (addr, _) = raw_server(|s| {
        answer_all(
            s,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nv\r\n2;ext=1\r\n9\n\r\n0\r\n\r\n",
        )
    })
    .await;
    let report = LoadGen::start(options(addr, 5)).wait().await;
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(report.versions_seen.get("v9"), Some(&5), "{report}");
}

#[tokio::test]
async fn stops_by_itself_after_max_duration() {
    let addr = start_demo_app("v1").await;
    let mut opts = options(addr, u64::MAX);
    opts.rps = 20;
    opts.max_duration = Duration::from_millis(300);
    let started = Instant::now();
    let report = LoadGen::start(opts).wait().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!((1..=7).contains(&report.requests), "{report}");
    assert_eq!(report.failures, 0, "{report}");
}

#[tokio::test]
async fn stop_waits_for_requests_in_flight() {
    let (addr, _) = raw_server(|mut s| async move {
        while read_request(&mut s).await.is_some() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nv1\n")
                .await;
        }
    })
    .await;
    let load = LoadGen::start(options(addr, 1000));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = load.stop().await;
    assert!(report.requests >= 1, "{report}");
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(report.versions_seen.get("v1"), Some(&report.requests));
}

#[test]
#[should_panic(expected = "loopback")]
fn refuses_a_target_that_is_not_loopback() {
    LoadGen::start(options("10.0.0.1:80".parse().unwrap(), 1));
}
