//! Health probes against the demo app and against small misbehaving local
//! servers. Every failure reason is asserted word for word: the engine
//! prints them to the operator.

use async_trait::async_trait;
use changeover_adapters::demo_app::{DemoApp, DemoAppOptions};
use changeover_adapters::health::command::CommandProbe;
use changeover_adapters::health::http::HttpProbe;
use changeover_adapters::health::tcp::TcpProbe;
use changeover_core::health::HealthProbe;
use changeover_core::remote::{CommandOutput, Remote, RemoteError};
use changeover_core::template::{Template, PLACEHOLDERS};
use changeover_core::unit::{Host, Unit};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(2);

fn unit(name: &str, address: &str) -> Unit {
    Unit {
        index: 0,
        host: Arc::new(Host {
            name: name.to_string(),
            address: address.to_string(),
            tags: vec![],
            ssh_user: None,
            ssh_port: None,
            instance_id: None,
            instances: None,
        }),
        instance: 1,
        port: None,
    }
}

fn local_unit() -> Unit {
    unit("web-1", "127.0.0.1")
}

fn template(source: &str) -> Template {
    Template::parse(source, PLACEHOLDERS).unwrap()
}

/// The `{address}` placeholder is part of every URL, so that rendering is
/// exercised too.
fn http_probe(port: u16, path: &str, expect_body: Option<&str>, timeout: Duration) -> HttpProbe {
    HttpProbe::new(
        template(&format!("http://{{address}}:{port}{path}")),
        200,
        expect_body.map(str::to_string),
        timeout,
    )
}

async fn start_demo_app(opts: DemoAppOptions) -> SocketAddr {
    let app = DemoApp::bind(opts).await.unwrap();
    let addr = app.local_addr().unwrap();
    tokio::spawn(app.run_until(std::future::pending()));
    addr
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A loopback server handing each connection to `handler`; counts accepts.
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

/// Answer every request on the connection with `response`, keep-alive.
async fn answer_all(mut stream: TcpStream, response: &'static [u8]) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.clear();
        if stream.write_all(response).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn http_passes_against_the_demo_app() {
    let addr = start_demo_app(DemoAppOptions::new(any_port(), "v1")).await;
    let probe = http_probe(addr.port(), "/health", Some("ok"), TIMEOUT);
    assert_eq!(probe.probe(&local_unit()).await, Ok(()));
    assert_eq!(
        probe.describe(&local_unit()),
        format!("http://127.0.0.1:{}/health", addr.port())
    );
}

#[tokio::test]
async fn http_reports_an_unexpected_status() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("unhealthy");
    let mut opts = DemoAppOptions::new(any_port(), "v1");
    opts.unhealthy_file = Some(flag.clone());
    let addr = start_demo_app(opts).await;
    let probe = http_probe(addr.port(), "/health", None, TIMEOUT);

    std::fs::write(&flag, "").unwrap();
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("status 503 (expected 200)".to_string())
    );
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(probe.probe(&local_unit()).await, Ok(()));
}

#[tokio::test]
async fn http_reports_a_body_without_the_expected_text() {
    let addr = start_demo_app(DemoAppOptions::new(any_port(), "v1")).await;
    let probe = http_probe(addr.port(), "/health", Some("ready"), TIMEOUT);
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err(r#"body does not contain "ready""#.to_string())
    );
}

#[tokio::test]
async fn http_reports_a_refused_connection() {
    let probe = http_probe(closed_port(), "/health", None, TIMEOUT);
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("connection refused".to_string())
    );
}

#[tokio::test]
async fn http_reports_a_timeout() {
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    let (addr, _) = raw_server(move |s| {
        // Accept, never answer.
        keep.lock().unwrap().push(s);
        async {}
    })
    .await;
    let probe = http_probe(addr.port(), "/health", None, Duration::from_millis(300));
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("timed out after 300ms".to_string())
    );
}

#[tokio::test]
async fn http_does_not_follow_redirects() {
    let (addr, _) = raw_server(|s| {
        answer_all(
            s,
            b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n",
        )
    })
    .await;
    let probe = http_probe(addr.port(), "/health", None, TIMEOUT);
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("status 302 (expected 200)".to_string())
    );
}

#[tokio::test]
async fn http_opens_a_fresh_connection_for_every_probe() {
    // The server offers keep-alive; a pooling client would use one connection.
    let (addr, accepted) =
        raw_server(|s| answer_all(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let probe = http_probe(addr.port(), "/health", Some("ok"), TIMEOUT);
    for _ in 0..3 {
        assert_eq!(probe.probe(&local_unit()).await, Ok(()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn http_sees_a_restarted_app() {
    let port = closed_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("unhealthy");
    let probe = http_probe(port, "/health", None, TIMEOUT);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let old = DemoApp::bind(DemoAppOptions::new(listen, "v1"))
        .await
        .unwrap();
    let old = tokio::spawn(old.run_until(async {
        let _ = stopped.await;
    }));
    assert_eq!(probe.probe(&local_unit()).await, Ok(()));
    stop.send(()).unwrap();
    old.await.unwrap().unwrap();
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("connection refused".to_string())
    );

    std::fs::write(&flag, "").unwrap();
    let mut opts = DemoAppOptions::new(listen, "v2");
    opts.unhealthy_file = Some(flag);
    start_demo_app(opts).await;
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("status 503 (expected 200)".to_string())
    );
}

#[tokio::test]
async fn tcp_passes_when_the_port_accepts() {
    let addr = start_demo_app(DemoAppOptions::new(any_port(), "v1")).await;
    let probe = TcpProbe::new(template(&format!("{{address}}:{}", addr.port())), TIMEOUT);
    assert_eq!(probe.probe(&local_unit()).await, Ok(()));
    assert_eq!(
        probe.describe(&local_unit()),
        format!("tcp://127.0.0.1:{}", addr.port())
    );
}

#[tokio::test]
async fn tcp_reports_a_refused_connection() {
    let probe = TcpProbe::new(template(&format!("{{address}}:{}", closed_port())), TIMEOUT);
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("connection refused".to_string())
    );
}

/// A Remote that answers from a script and records what it was asked.
struct FakeRemote {
    answer: Box<dyn Fn() -> Result<CommandOutput, RemoteError> + Send + Sync>,
    calls: Mutex<Vec<(String, String, Duration)>>,
}

impl FakeRemote {
    fn new(
        answer: impl Fn() -> Result<CommandOutput, RemoteError> + Send + Sync + 'static,
    ) -> Arc<FakeRemote> {
        Arc::new(FakeRemote {
            answer: Box::new(answer),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn exits(status: Option<i32>, stdout: &str, stderr: &str) -> Arc<FakeRemote> {
        let output = CommandOutput {
            status,
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
        };
        FakeRemote::new(move || Ok(output.clone()))
    }
}

#[async_trait]
impl Remote for FakeRemote {
    async fn connect_all(&self, hosts: &[&Host]) -> Vec<Result<(), RemoteError>> {
        hosts.iter().map(|_| Ok(())).collect()
    }

    async fn run(
        &self,
        host: &Host,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, RemoteError> {
        self.calls
            .lock()
            .unwrap()
            .push((host.name.clone(), command.to_string(), timeout));
        (self.answer)()
    }
}

fn command_probe(remote: &Arc<FakeRemote>, command: &str) -> CommandProbe {
    CommandProbe::new(remote.clone(), template(command), TIMEOUT)
}

#[tokio::test]
async fn command_passes_on_exit_0_and_quotes_what_it_substitutes() {
    let remote = FakeRemote::exits(Some(0), "fine\n", "");
    let probe = command_probe(&remote, "check --host {host} --port 8080");
    let odd = unit("web 1; reboot", "127.0.0.1");
    assert_eq!(probe.probe(&odd).await, Ok(()));
    assert_eq!(
        *remote.calls.lock().unwrap(),
        vec![(
            "web 1; reboot".to_string(),
            "check --host 'web 1; reboot' --port 8080".to_string(),
            TIMEOUT
        )]
    );
}

#[tokio::test]
async fn command_reports_the_last_line_of_stderr() {
    let remote = FakeRemote::exits(Some(2), "progress\n", "starting\nport 8080 closed\n\n");
    let probe = command_probe(&remote, "check");
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("exit status 2: port 8080 closed".to_string())
    );
}

#[tokio::test]
async fn command_falls_back_to_stdout_then_to_the_status() {
    let remote = FakeRemote::exits(Some(1), "checking\nnot ready\n", "");
    let probe = command_probe(&remote, "check");
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("exit status 1: not ready".to_string())
    );

    let remote = FakeRemote::exits(None, "", "");
    let probe = command_probe(&remote, "check");
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("killed by a signal".to_string())
    );
}

#[tokio::test]
async fn command_reports_remote_errors_on_one_line() {
    let remote = FakeRemote::new(|| {
        Err(RemoteError::Timeout {
            host: "web-1".to_string(),
            command: "check".to_string(),
            timeout: TIMEOUT,
        })
    });
    let probe = command_probe(&remote, "check");
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("timed out after 2s".to_string())
    );

    let remote = FakeRemote::new(|| {
        Err(RemoteError::Connect {
            host: "web-1".to_string(),
            message: "Permission denied (publickey).\r\nmore".to_string(),
        })
    });
    let probe = command_probe(&remote, "check");
    assert_eq!(
        probe.probe(&local_unit()).await,
        Err("cannot connect to web-1: Permission denied (publickey).".to_string())
    );
}

/// Set in the environment of the child process of the proxy test.
const PROXY_CHILD: &str = "CHANGEOVER_PROXY_CHILD";

/// The operator's proxy settings must not apply to health probes. Proxy
/// variables are process-wide, so the probe runs in a child process (this
/// test binary, re-run with a filter selecting [`proxy_child_entry_point`]).
#[test]
fn http_ignores_proxy_settings_from_the_environment() {
    let dead_proxy = format!("http://127.0.0.1:{}", closed_port());
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "proxy_child_entry_point", "--nocapture"])
        .env(PROXY_CHILD, "1")
        .env("http_proxy", &dead_proxy)
        .env("HTTP_PROXY", &dead_proxy)
        .env("all_proxy", &dead_proxy)
        .env("ALL_PROXY", &dead_proxy)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Not a test of its own: the probe for the proxy test. Does nothing unless
/// that test started it.
#[tokio::test]
async fn proxy_child_entry_point() {
    if std::env::var_os(PROXY_CHILD).is_none() {
        return;
    }
    let addr = start_demo_app(DemoAppOptions::new(any_port(), "v1")).await;
    let probe = http_probe(addr.port(), "/health", Some("ok"), TIMEOUT);
    assert_eq!(probe.probe(&local_unit()).await, Ok(()));
}
