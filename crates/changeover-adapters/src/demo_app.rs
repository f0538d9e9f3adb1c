//! The small, well-behaved HTTP/1.1 app that `changeover demo` rolls and the
//! integration tests deploy. "Well-behaved" is the point: it is what a
//! zero-downtime deploy needs from an app, so that any dropped request in a
//! test is the deployer's fault, not the app's.
//!
//! - it boots slowly (`boot_time`) *before* binding, like a real app, so a
//!   deploy that does not wait for health sees refused connections;
//! - on SIGTERM/SIGINT it closes its listener at once, lets in-flight
//!   requests finish, then exits;
//! - it binds with `SO_REUSEADDR`, so the next version can bind the port while
//!   old connections sit in TIME_WAIT.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};

/// How long shutdown waits for in-flight requests before giving up on them:
/// a client that never finishes its request must not keep the old version
/// alive forever.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Pause after a failed `accept`: the usual cause is running out of file
/// descriptors, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoAppOptions {
    pub listen: SocketAddr,
    /// Served as the body of `GET /` and in the `X-App-Version` header.
    pub version: String,
    /// Delay before binding the port.
    pub boot_time: Duration,
    /// Delay before answering `GET /`, so that tests have requests in flight.
    pub think_time: Duration,
    /// While this file exists, `/health` answers 503.
    pub unhealthy_file: Option<PathBuf>,
    /// Written with the process id once the port is bound. Left in place on
    /// exit: the next version may already have written its own.
    pub pid_file: Option<PathBuf>,
}

impl DemoAppOptions {
    /// Options with no boot or think time and no files.
    pub fn new(listen: SocketAddr, version: impl Into<String>) -> DemoAppOptions {
        DemoAppOptions {
            listen,
            version: version.into(),
            boot_time: Duration::ZERO,
            think_time: Duration::ZERO,
            unhealthy_file: None,
            pid_file: None,
        }
    }
}

/// Run the app until SIGTERM or SIGINT, then shut down gracefully.
#[cfg(unix)]
pub async fn serve(opts: DemoAppOptions) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered before anything else so that a signal arriving during boot
    // is a clean shutdown rather than the default action (death).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    serve_until(opts, shutdown).await
}

/// Run the app until `shutdown` completes, then shut down gracefully: the
/// listener is closed at once, in-flight requests finish, idle keep-alive
/// connections are closed.
pub async fn serve_until(
    opts: DemoAppOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    let app = tokio::select! {
        app = DemoApp::bind(opts) => app?,
        // Asked to stop while still booting: nothing to drain.
        _ = &mut shutdown => return Ok(()),
    };
    app.run_until(shutdown).await
}

/// A booted app with its port bound, not yet serving. Split from
/// [`serve_until`] so that callers binding port 0 can learn the address.
#[derive(Debug)]
pub struct DemoApp {
    listener: TcpListener,
    state: Arc<AppState>,
}

#[derive(Debug)]
struct AppState {
    version: String,
    version_header: Option<HeaderValue>,
    think_time: Duration,
    unhealthy_file: Option<PathBuf>,
}

impl DemoApp {
    /// Boot (sleep `boot_time`), bind the port, write the pid file.
    pub async fn bind(opts: DemoAppOptions) -> io::Result<DemoApp> {
        tokio::time::sleep(opts.boot_time).await;
        let listener = bind_reuseaddr(opts.listen)?;
        if let Some(pid_file) = &opts.pid_file {
            write_pid_file(pid_file)?;
        }
        let version_header = HeaderValue::from_str(&opts.version).ok();
        Ok(DemoApp {
            listener,
            state: Arc::new(AppState {
                version: opts.version,
                version_header,
                think_time: opts.think_time,
                unhealthy_file: opts.unhealthy_file,
            }),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` completes, then shut down gracefully.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let DemoApp { listener, state } = self;
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let state = state.clone();
            let service = service_fn(move |req| handle(state.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                // A client going away mid-request is its own business.
                let _ = conn.await;
            });
        }
        // Closing the listener first is what lets the next version bind and
        // makes new connections fail fast instead of queueing in the backlog.
        drop(listener);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
        Ok(())
    }
}

fn bind_reuseaddr(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Write through a temporary file and rename, so that a reader never sees a
/// half-written pid.
fn write_pid_file(path: &Path) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(response(
            &state,
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
        ));
    }
    let response = match req.uri().path() {
        "/" => {
            tokio::time::sleep(state.think_time).await;
            let body = format!("{}\n", state.version);
            response(&state, StatusCode::OK, body)
        }
        "/health" => {
            let unhealthy = match &state.unhealthy_file {
                Some(path) => tokio::fs::try_exists(path).await.unwrap_or(false),
                None => false,
            };
            if unhealthy {
                response(&state, StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
            } else {
                response(&state, StatusCode::OK, "ok")
            }
        }
        _ => response(&state, StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

fn response(state: &AppState, status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Some(version) = &state.version_header {
        headers.insert("x-app-version", version.clone());
    }
    response
}
