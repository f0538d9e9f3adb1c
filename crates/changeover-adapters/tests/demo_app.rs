//! The demo app must behave like a well-behaved production app, or the
//! zero-downtime tests built on it prove nothing.

use changeover_adapters::demo_app::{serve, serve_until, DemoApp, DemoAppOptions};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Set in the environment of the child process that runs the app for the
/// SIGTERM test; holds the address to listen on.
const CHILD_ADDR: &str = "CHANGEOVER_DEMO_CHILD_ADDR";
const CHILD_PID_FILE: &str = "CHANGEOVER_DEMO_CHILD_PID_FILE";
const CHILD_TEST: &str = "child_process_entry_point";

/// The shutdown tests signal the app this long after sending a request, so
/// that the request is being handled, well within its think time.
const REQUEST_REACHES_APP: Duration = Duration::from_millis(300);
const IN_FLIGHT_THINK_TIME: Duration = Duration::from_millis(1000);

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn start(opts: DemoAppOptions) -> SocketAddr {
    let app = DemoApp::bind(opts).await.unwrap();
    let addr = app.local_addr().unwrap();
    tokio::spawn(app.run_until(std::future::pending()));
    addr
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> reqwest::Result<reqwest::Response> {
    client().get(format!("http://{addr}{path}")).send().await
}

/// Read one response with a `Content-Length` body from a raw connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap();
            if buf.len() >= end + 4 + length {
                return String::from_utf8_lossy(&buf).into_owned();
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn serves_its_version_and_health() {
    let addr = start(DemoAppOptions::new("127.0.0.1:0".parse().unwrap(), "v1.2")).await;

    let root = get(addr, "/").await.unwrap();
    assert_eq!(root.status(), 200);
    assert_eq!(root.headers()["x-app-version"], "v1.2");
    assert_eq!(root.text().await.unwrap(), "v1.2\n");

    let health = get(addr, "/health").await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    assert_eq!(get(addr, "/nope").await.unwrap().status(), 404);
}

#[tokio::test]
async fn health_fails_while_the_unhealthy_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("unhealthy");
    let mut opts = DemoAppOptions::new("127.0.0.1:0".parse().unwrap(), "v1");
    opts.unhealthy_file = Some(flag.clone());
    let addr = start(opts).await;

    std::fs::write(&flag, "").unwrap();
    assert_eq!(get(addr, "/health").await.unwrap().status(), 503);
    // Only health is affected: the app still serves traffic.
    assert_eq!(get(addr, "/").await.unwrap().status(), 200);
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(get(addr, "/health").await.unwrap().status(), 200);
}

#[tokio::test]
async fn keeps_connections_alive() {
    let addr = start(DemoAppOptions::new("127.0.0.1:0".parse().unwrap(), "v1")).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nv1\n"), "{response}");
    }
}

#[tokio::test]
async fn thinks_before_answering() {
    let mut opts = DemoAppOptions::new("127.0.0.1:0".parse().unwrap(), "v1");
    opts.think_time = Duration::from_millis(300);
    let addr = start(opts).await;
    let started = Instant::now();
    assert_eq!(get(addr, "/").await.unwrap().status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Health checks must not wait behind the think time.
    let started = Instant::now();
    assert_eq!(get(addr, "/health").await.unwrap().status(), 200);
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn boots_before_binding_then_writes_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let addr = free_addr();
    let mut opts = DemoAppOptions::new(addr, "v1");
    opts.boot_time = Duration::from_millis(400);
    opts.pid_file = Some(pid_file.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = tokio::spawn(serve_until(opts, async {
        let _ = stopped.await;
    }));

    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(!pid_file.exists());

    let pid = wait_for_pid_file(&pid_file).await;
    assert_eq!(pid, std::process::id());
    assert_eq!(get(addr, "/").await.unwrap().status(), 200);

    stop.send(()).unwrap();
    app.await.unwrap().unwrap();
}

#[tokio::test]
async fn restarts_on_the_same_port_at_once() {
    let addr = free_addr();
    for version in ["v1", "v2"] {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = DemoApp::bind(DemoAppOptions::new(addr, version))
            .await
            .unwrap();
        let app = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        // Leaves connections in TIME_WAIT on the server side.
        let response = get(addr, "/").await.unwrap();
        assert_eq!(response.text().await.unwrap(), format!("{version}\n"));
        stop.send(()).unwrap();
        app.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_finishes_requests_in_flight() {
    let mut opts = DemoAppOptions::new("127.0.0.1:0".parse().unwrap(), "v1");
    opts.think_time = IN_FLIGHT_THINK_TIME;
    let app = DemoApp::bind(opts).await.unwrap();
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let in_flight = tokio::spawn(async move {
        let response = get(addr, "/").await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    });
    tokio::time::sleep(REQUEST_REACHES_APP).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(!app.is_finished(), "returned before the request finished");

    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "v1\n"));
    tokio::time::timeout(Duration::from_secs(2), app)
        .await
        .expect("shut down once the request finished")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let app = DemoApp::bind(DemoAppOptions::new("127.0.0.1:0".parse().unwrap(), "v1"))
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut idle).await;

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), app)
        .await
        .expect("an idle connection does not hold up shutdown")
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).await.unwrap(), 0);
}

async fn wait_for_pid_file(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text.trim().parse().expect("a pid");
        }
        assert!(
            Instant::now() < deadline,
            "no pid file at {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real signal path: the app runs in a child process (this test binary,
/// re-run with a filter selecting [`child_process_entry_point`]) and gets a
/// real SIGTERM while a request is in flight.
#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let addr = free_addr();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ADDR, addr.to_string())
        .env(CHILD_PID_FILE, &pid_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let child_pid = wait_for_pid_file(&pid_file).await;
    assert_eq!(child_pid, child.id());

    let in_flight = tokio::spawn(async move {
        let response = get(addr, "/").await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    });
    tokio::time::sleep(REQUEST_REACHES_APP).await;
    let kill = Command::new("kill")
        .args(["-TERM", &child_pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "v1\n"));

    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the app did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "the app exited with {exit}");
}

/// Not a test of its own: the app process for the SIGTERM test. Does nothing
/// unless that test started it.
#[tokio::test]
async fn child_process_entry_point() {
    let Ok(addr) = std::env::var(CHILD_ADDR) else {
        return;
    };
    let mut opts = DemoAppOptions::new(addr.parse().unwrap(), "v1");
    opts.think_time = IN_FLIGHT_THINK_TIME;
    opts.pid_file = Some(std::env::var(CHILD_PID_FILE).unwrap().into());
    serve(opts).await.unwrap();
}
