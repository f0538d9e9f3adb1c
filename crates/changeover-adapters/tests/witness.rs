//! The traffic witness is the operator's evidence that a deploy dropped
//! nothing: it must count every broken answer as a failure, nothing else,
//! use both kinds of connection, and never show the URL's secrets.

use changeover_adapters::demo_app::{DemoApp, DemoAppOptions};
use changeover_adapters::witness::{Witness, WitnessError, WitnessOptions, WitnessReport};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nv1\n";

fn options(url: String, requests: u64) -> WitnessOptions {
    WitnessOptions {
        url,
        rps: 100,
        timeout: Duration::from_secs(2),
        keep_alive_share: 0.5,
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

async fn witness(url: String, requests: u64) -> WitnessReport {
    Witness::start(options(url, requests)).unwrap().wait().await
}

fn assert_all_failed(report: &WitnessReport, requests: u64, kind: &str) {
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
async fn no_failures_against_a_good_server_with_both_kinds_of_connection() {
    let addr = start_demo_app("v1").await;
    let report = witness(format!("http://{addr}/"), 40).await;
    assert_eq!(report.requests, 40, "{report}");
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(report.versions_seen.get("v1"), Some(&40), "{report}");
    assert!(report.p50 > Duration::ZERO, "{report}");
    assert!(report.p50 <= report.p90 && report.p90 <= report.p99 && report.p99 <= report.max);
    assert!(report.elapsed > Duration::ZERO);
}

#[tokio::test]
async fn half_the_requests_share_a_kept_alive_connection() {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let (addr, accepted) = raw_server(move |mut s| {
        let seen = seen.clone();
        async move {
            while let Some(request) = read_request(&mut s).await {
                let close = request.contains("\r\nConnection: close\r\n");
                seen.lock().unwrap().push(close);
                if s.write_all(OK).await.is_err() || close {
                    return;
                }
            }
        }
    })
    .await;
    let mut opts = options(format!("http://{addr}/"), 20);
    // Spaced out so that each answer is back before the next request, even
    // on a busy machine; a second kept-alive connection is allowed for a
    // slow one.
    opts.rps = 25;
    let report = Witness::start(opts).unwrap().wait().await;
    assert_eq!(report.failures, 0, "{report}");
    // 10 requests each on its own connection, 10 on one kept-alive one (a
    // few more if a slow answer made the next one open another).
    let connections = accepted.load(Ordering::SeqCst);
    assert!(
        (11..=14).contains(&connections),
        "{connections} connections"
    );
    let closing = requests.lock().unwrap().iter().filter(|&&c| c).count();
    assert_eq!(closing, 10);
}

#[tokio::test]
async fn all_on_new_connections_or_all_kept_alive() {
    let (addr, accepted) = raw_server(|s| answer_all(s, OK)).await;
    let mut opts = options(format!("http://{addr}/"), 10);
    opts.rps = 25;
    opts.keep_alive_share = 0.0;
    let report = Witness::start(opts.clone()).unwrap().wait().await;
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(accepted.load(Ordering::SeqCst), 10);

    opts.keep_alive_share = 1.0;
    let report = Witness::start(opts).unwrap().wait().await;
    assert_eq!(report.failures, 0, "{report}");
    assert!(accepted.load(Ordering::SeqCst) <= 12);
}

#[tokio::test]
async fn counts_a_refused_connection() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let report = witness(format!("http://{addr}/"), 6).await;
    assert_all_failed(&report, 6, "connect: refused");
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
    let report = witness(format!("http://{addr}/"), 6).await;
    assert_all_failed(&report, 6, "reset");
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
    let mut opts = options(format!("http://{addr}/"), 6);
    opts.timeout = Duration::from_millis(200);
    let report = Witness::start(opts).unwrap().wait().await;
    assert_all_failed(&report, 6, "timeout");
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
    let report = witness(format!("http://{addr}/"), 6).await;
    assert_all_failed(&report, 6, "status 503");
}

#[tokio::test]
async fn live_counts_rise_while_running() {
    let (addr, _) =
        raw_server(|s| answer_all(s, b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"))
            .await;
    let mut opts = options(format!("http://{addr}/"), 10_000);
    opts.rps = 50;
    let witness = Witness::start(opts).unwrap();
    let mut last = witness.live();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = witness.live();
        assert!(now.requests > last.requests, "{last:?} then {now:?}");
        assert!(now.failures > last.failures, "{last:?} then {now:?}");
        assert!(now.failures <= now.requests, "{now:?}");
        last = now;
    }
    assert!(!witness.is_finished());
    let report = witness.stop().await;
    assert!(report.requests >= last.requests, "{report}");
    assert_eq!(report.failures, report.requests, "{report}");
}

#[tokio::test]
async fn stop_waits_for_requests_in_flight() {
    let (addr, _) = raw_server(|mut s| async move {
        while read_request(&mut s).await.is_some() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = s.write_all(OK).await;
        }
    })
    .await;
    let witness = Witness::start(options(format!("http://{addr}/"), 1000)).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = witness.stop().await;
    assert!(report.requests >= 1, "{report}");
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(report.versions_seen.get("v1"), Some(&report.requests));
}

#[tokio::test]
async fn resolves_a_dns_name() {
    // `localhost` may resolve to ::1 first; the app is on 127.0.0.1 only.
    let addr = start_demo_app("v3").await;
    let report = witness(format!("http://localhost:{}/", addr.port()), 6).await;
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(report.versions_seen.get("v3"), Some(&6), "{report}");
    assert_eq!(report.target, format!("http://localhost:{}/", addr.port()));
}

#[tokio::test]
async fn a_name_that_does_not_resolve_fails_each_request() {
    let report = witness("http://no-such-host.invalid/".to_string(), 3).await;
    assert_eq!(report.requests, 3, "{report}");
    assert_eq!(report.failures, 3, "{report}");
    // A resolver that is not answering at all (no network) makes it a
    // timeout instead; either way every request counts as failed.
    assert!(
        report
            .failure_kinds
            .keys()
            .all(|k| k == "resolve failed" || k == "timeout"),
        "{report}"
    );
}

#[tokio::test]
async fn https_is_refused_with_a_hint() {
    let err = Witness::start(options("https://example.com/".to_string(), 1)).unwrap_err();
    assert_eq!(err, WitnessError::Https);
    assert_eq!(
        err.to_string(),
        "https is not supported by the witness yet; point it at an http:// address"
    );
}

#[tokio::test]
async fn the_port_defaults_to_80() {
    let witness = Witness::start(options("http://127.0.0.1/health".to_string(), 0)).unwrap();
    assert_eq!(witness.target(), "http://127.0.0.1:80/health");
    let report = witness.wait().await;
    assert_eq!(report.requests, 0, "{report}");

    let witness = Witness::start(options("http://example.com".to_string(), 0)).unwrap();
    assert_eq!(witness.target(), "http://example.com:80/");
}

#[tokio::test]
async fn bad_urls_and_options_are_refused() {
    for url in [
        "",
        "127.0.0.1:8080",
        "ftp://example.com/",
        "http://",
        "http:///path",
        "http://:8080/",
        "http://example.com:99999/",
        "http://example.com:0/",
        "http://example.com:port/",
        "http://exa mple.com/",
        "http://[::1/",
        "http://[not-v6]:80/",
        "http://example.com/a b",
        "http://example.com/\u{e9}",
    ] {
        match Witness::start(options(url.to_string(), 1)) {
            Err(WitnessError::InvalidUrl(_)) => {}
            other => panic!("{url:?}: {other:?}"),
        }
    }
    let mut opts = options("http://127.0.0.1:1/".to_string(), 1);
    opts.rps = 0;
    assert!(matches!(
        Witness::start(opts.clone()),
        Err(WitnessError::InvalidOptions(_))
    ));
    opts.rps = 1;
    for share in [-0.1, 1.5, f64::NAN] {
        opts.keep_alive_share = share;
        assert!(matches!(
            Witness::start(opts.clone()),
            Err(WitnessError::InvalidOptions(_))
        ));
    }
    opts.keep_alive_share = 0.5;
    opts.timeout = Duration::ZERO;
    assert!(matches!(
        Witness::start(opts),
        Err(WitnessError::InvalidOptions(_))
    ));
}

#[test]
fn needs_a_runtime() {
    let err = Witness::start(options("http://127.0.0.1:1/".to_string(), 1)).unwrap_err();
    assert_eq!(err, WitnessError::NoRuntime);
}

#[tokio::test]
async fn never_shows_the_credentials_in_the_url() {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let (addr, _) = raw_server(move |mut s| {
        let seen = seen.clone();
        async move {
            while let Some(request) = read_request(&mut s).await {
                seen.lock().unwrap().push(request);
                let answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let url = format!("http://user:pass@{addr}/status?token=secret#frag");
    let opts = options(url, 4);
    let shown_options = format!("{opts:?}");
    let witness = Witness::start(opts).unwrap();
    let shown_witness = format!("{witness:?} {}", witness.target());
    let report = witness.wait().await;
    assert_eq!(report.failures, 4, "{report}");
    let json = serde_json::to_string(&report).unwrap();
    for shown in [
        &shown_options,
        &shown_witness,
        &report.to_string(),
        &format!("{report:?}"),
        &json,
    ] {
        for secret in ["secret", "token", "user", "pass", "frag"] {
            assert!(!shown.contains(secret), "{secret:?} in {shown}");
        }
        assert!(shown.contains(&format!("http://{addr}/status")), "{shown}");
    }
    // Shown nowhere, but sent: the query as is, the userinfo as basic
    // authentication; never the fragment.
    let sent = requests.lock().unwrap();
    assert!(sent[0].starts_with("GET /status?token=secret HTTP/1.1\r\n"));
    assert!(sent[0].contains("\r\nAuthorization: Basic dXNlcjpwYXNz\r\n"));
    assert!(!sent[0].contains("frag"));

    // Nor does an error, even when the secret sits where the port should be.
    let err = Witness::start(options(
        "http://user:secret/path?token=secret".to_string(),
        1,
    ))
    .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test]
async fn the_report_serializes_durations_as_milliseconds() {
    let addr = start_demo_app("v1").await;
    let report = witness(format!("http://{addr}/"), 3).await;
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    for field in ["p50_ms", "p90_ms", "p99_ms", "max_ms", "elapsed_ms"] {
        assert!(json[field].is_u64(), "{field} in {json}");
    }
    assert_eq!(json["requests"], 3);
    assert_eq!(json["failures"], 0);
    assert_eq!(json["versions_seen"]["v1"], 3);
    assert_eq!(json["target"], format!("http://{addr}/"));
}
