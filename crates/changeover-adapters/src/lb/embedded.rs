//! `kind = "embedded"`: an HTTP/1.1 reverse proxy inside the changeover
//! process, behind the same `LoadBalancer` seam as HAProxy. Used by
//! `changeover demo`, so a newcomer sees the whole job with nothing
//! installed.
//!
//! - Routing is per request (smooth weighted round robin over backends that
//!   are ready, weighted above 0 and healthy), so a client's keep-alive
//!   connection is never tied to a backend and draining one never breaks it.
//! - No retries: a failed backend request is a 502. Zero downtime has to come
//!   from draining, not from hiding errors.
//! - `status().sessions` is the number of requests in flight to the backend
//!   (counted until the response body has been sent or dropped), which is
//!   what `drain.mode = "lb"` waits on. Open backend connections are counted
//!   too ([`EmbeddedLb::connections`]), for tests and diagnostics.

use async_trait::async_trait;
use bytes::Bytes;
use changeover_core::lb::{
    AdminState, LbAction, LbCapabilities, LbError, LoadBalancer, MemberStatus, OperState,
};
use changeover_core::template::{Template, Vars};
use changeover_core::unit::Unit;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub listen: SocketAddr,
    /// HTTP GET health-check path; `None` checks with a TCP connect.
    pub check_path: Option<String>,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    /// Consecutive passes to become healthy, failures to become unhealthy.
    pub rise: u32,
    pub fall: u32,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            check_path: None,
            check_interval: Duration::from_millis(200),
            check_timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
        }
    }
}

const READY: u8 = 0;
const DRAIN: u8 = 1;
const MAINT: u8 = 2;

/// Idle backend connections older than this are not reused: the backend may
/// be about to close them, and a request racing that close would fail. Below
/// the shortest common keep-alive timeout (gunicorn's 2 s).
const MAX_IDLE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

struct Backend {
    name: String,
    addr: SocketAddr,
    admin: AtomicU8,
    weight: AtomicU32,
    healthy: AtomicBool,
    in_flight: AtomicU64,
    connections: Arc<AtomicU64>,
    idle: Mutex<Vec<(SendRequest<Incoming>, Instant)>>,
}

impl Backend {
    fn eligible(&self) -> bool {
        self.admin.load(Ordering::Acquire) == READY
            && self.weight.load(Ordering::Acquire) > 0
            && self.healthy.load(Ordering::Acquire)
    }

    fn clear_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    async fn checkout(&self) -> Result<SendRequest<Incoming>, String> {
        loop {
            let candidate = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match candidate {
                Some((sender, since)) if since.elapsed() < MAX_IDLE && sender.is_ready() => {
                    return Ok(sender)
                }
                Some(_) => continue,
                None => break,
            }
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| format!("connect to {} timed out", self.addr))?
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake with {}: {e}", self.addr))?;
        self.connections.fetch_add(1, Ordering::AcqRel);
        let count = Arc::clone(&self.connections);
        tokio::spawn(async move {
            let _ = conn.await;
            count.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(sender)
    }

    fn admin_state(&self) -> AdminState {
        match self.admin.load(Ordering::Acquire) {
            READY => AdminState::Ready,
            DRAIN => AdminState::Drain,
            _ => AdminState::Maint,
        }
    }
}

struct Shared {
    backends: Vec<Arc<Backend>>,
    /// Smooth weighted round robin state (nginx): current weight per backend.
    current: Mutex<Vec<i64>>,
}

impl Shared {
    fn pick(&self) -> Option<Arc<Backend>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, b) in self.backends.iter().enumerate() {
            if !b.eligible() {
                continue;
            }
            let w = i64::from(b.weight.load(Ordering::Acquire));
            current[i] += w;
            total += w;
            if best.is_none_or(|j| current[i] > current[j]) {
                best = Some(i);
            }
        }
        let j = best?;
        current[j] -= total;
        Some(Arc::clone(&self.backends[j]))
    }

    fn find(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// The running proxy. Dropping it stops it.
pub struct EmbeddedLb {
    shared: Arc<Shared>,
    addr: SocketAddr,
    member: Template,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl EmbeddedLb {
    /// Bind, check every backend once, and start serving. One backend per
    /// unit, at `member` rendered for the unit (e.g. `{address}:{port}`).
    pub async fn start(
        opts: EmbeddedOptions,
        member: Template,
        units: &[Arc<Unit>],
    ) -> std::io::Result<EmbeddedLb> {
        let mut backends = Vec::with_capacity(units.len());
        for unit in units {
            let name = member.render(&Vars::for_unit(unit, "", "", ""));
            let addr: SocketAddr = name.parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{unit}: member `{name}` is not an ip:port address (load_balancers.member = \"{member}\")"),
                )
            })?;
            backends.push(Arc::new(Backend {
                name,
                addr,
                admin: AtomicU8::new(READY),
                weight: AtomicU32::new(1),
                healthy: AtomicBool::new(false),
                in_flight: AtomicU64::new(0),
                connections: Arc::new(AtomicU64::new(0)),
                idle: Mutex::new(Vec::new()),
            }));
        }
        let shared = Arc::new(Shared {
            current: Mutex::new(vec![0; backends.len()]),
            backends,
        });
        let listener = TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;

        // One round of checks first, so a fleet that is up is reported UP at once.
        let mut streaks = vec![0i64; shared.backends.len()];
        check_round(&shared, &opts, &mut streaks, true).await;
        let checker = tokio::spawn(check_loop(Arc::clone(&shared), opts.clone(), streaks));
        let server = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(EmbeddedLb {
            shared,
            addr,
            member,
            tasks: Mutex::new(vec![checker, server]),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Open connections from the proxy to the backend a unit maps to.
    pub fn connections(&self, unit: &Unit) -> Option<u64> {
        self.backend(unit)
            .map(|b| b.connections.load(Ordering::Acquire))
    }

    /// Stop accepting and checking. Requests in flight on open connections
    /// are not waited for.
    pub async fn shutdown(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    fn backend(&self, unit: &Unit) -> Option<&Arc<Backend>> {
        self.shared
            .find(&self.member.render(&Vars::for_unit(unit, "", "", "")))
    }

    fn endpoint(&self) -> String {
        format!("embedded balancer on {}", self.addr)
    }
}

impl Drop for EmbeddedLb {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

#[async_trait]
impl LoadBalancer for EmbeddedLb {
    fn label(&self) -> String {
        self.endpoint()
    }

    fn capabilities(&self) -> LbCapabilities {
        LbCapabilities {
            counts_sessions: true,
            distinct_disable: true,
        }
    }

    fn member_name(&self, unit: &Unit) -> String {
        self.member.render(&Vars::for_unit(unit, "", "", ""))
    }

    async fn status(&self, units: &[&Unit]) -> Vec<Result<MemberStatus, LbError>> {
        units
            .iter()
            .map(|u| {
                let b = self.backend(u).ok_or_else(|| LbError::NoSuchMember {
                    endpoint: self.endpoint(),
                    member: self.member_name(u),
                })?;
                let admin = b.admin_state();
                let healthy = b.healthy.load(Ordering::Acquire);
                Ok(MemberStatus {
                    member: b.name.clone(),
                    admin,
                    oper: if healthy {
                        OperState::Up
                    } else {
                        OperState::Down
                    },
                    weight: Some(b.weight.load(Ordering::Acquire)),
                    sessions: Some(b.in_flight.load(Ordering::Acquire)),
                    raw: match admin {
                        AdminState::Maint => "MAINT",
                        AdminState::Drain => "DRAIN",
                        AdminState::Ready if healthy => "UP",
                        AdminState::Ready => "DOWN",
                    }
                    .to_string(),
                })
            })
            .collect()
    }

    async fn apply(
        &self,
        units: &[&Unit],
        action: LbAction,
        restore: Option<&[MemberStatus]>,
    ) -> Result<(), LbError> {
        // Resolve every member first: one unknown unit changes nothing.
        let mut targets = Vec::with_capacity(units.len());
        for u in units {
            targets.push(self.backend(u).ok_or_else(|| LbError::NoSuchMember {
                endpoint: self.endpoint(),
                member: self.member_name(u),
            })?);
        }
        for (i, b) in targets.into_iter().enumerate() {
            match action {
                LbAction::Drain => {
                    b.admin.store(DRAIN, Ordering::Release);
                    // Idle pooled connections would keep the backend's
                    // sockets open (drain mode "host" counts them) and no
                    // new request may use them any more.
                    b.clear_idle();
                }
                LbAction::Disable => {
                    b.admin.store(MAINT, Ordering::Release);
                    b.clear_idle();
                }
                LbAction::Enable => {
                    if let Some(w) = restore
                        .and_then(|r| r.get(i))
                        .and_then(|s| s.weight)
                        .filter(|w| *w > 0)
                    {
                        b.weight.store(w, Ordering::Release);
                    }
                    // Connections pooled before the deploy lead to the old process.
                    b.clear_idle();
                    b.admin.store(READY, Ordering::Release);
                }
            }
        }
        Ok(())
    }
}

async fn check_loop(shared: Arc<Shared>, opts: EmbeddedOptions, mut streaks: Vec<i64>) {
    let mut tick = tokio::time::interval(opts.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        check_round(&shared, &opts, &mut streaks, false).await;
    }
}

/// Check every backend concurrently. `streaks[i]` > 0 counts consecutive
/// passes, < 0 consecutive failures. On the first round a single result
/// decides.
async fn check_round(shared: &Shared, opts: &EmbeddedOptions, streaks: &mut [i64], first: bool) {
    let results =
        futures::future::join_all(shared.backends.iter().map(|b| check(b.addr, opts))).await;
    for ((b, ok), streak) in shared.backends.iter().zip(results).zip(streaks.iter_mut()) {
        *streak = match (ok, *streak) {
            (true, s) if s > 0 => s + 1,
            (true, _) => 1,
            (false, s) if s < 0 => s - 1,
            (false, _) => -1,
        };
        if first {
            b.healthy.store(ok, Ordering::Release);
        } else if *streak >= i64::from(opts.rise) {
            b.healthy.store(true, Ordering::Release);
        } else if -*streak >= i64::from(opts.fall) {
            b.healthy.store(false, Ordering::Release);
        }
    }
}

async fn check(addr: SocketAddr, opts: &EmbeddedOptions) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let Some(path) = &opts.check_path else {
            return Some(true);
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: changeover-check\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        // "HTTP/1.1 2xx"
        Some(head.starts_with(b"HTTP/1.") && head[9] == b'2')
    };
    matches!(
        tokio::time::timeout(opts.check_timeout, attempt).await,
        Ok(Some(true))
    )
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| proxy(Arc::clone(&shared), req, peer));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(h);
    }
}

async fn proxy(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ProxyBody>, Infallible> {
    let Some(backend) = shared.pick() else {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no backend available\n",
        ));
    };
    let guard = InFlight::new(Arc::clone(&backend));
    let mut sender = match backend.checkout().await {
        Ok(s) => s,
        Err(_) => return Ok(plain(StatusCode::BAD_GATEWAY, "backend unreachable\n")),
    };
    strip_hop_by_hop(req.headers_mut());
    let forwarded = match req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = header::HeaderValue::from_str(&forwarded) {
        req.headers_mut().insert("x-forwarded-for", v);
    }
    // Origin-form towards the backend.
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    let response = match sender.send_request(req).await {
        Ok(r) => r,
        Err(_) => return Ok(plain(StatusCode::BAD_GATEWAY, "backend failed\n")),
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = Guarded {
        inner: body,
        done: false,
        sender: Some(sender),
        guard: Some(guard),
    };
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Backend>);

impl InFlight {
    fn new(b: Arc<Backend>) -> InFlight {
        b.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(b)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The backend's response body on its way to the client. When it has been
/// sent completely, the backend connection goes back to the pool and the
/// request stops counting as in flight; if it is dropped early, the
/// connection is closed instead.
struct Guarded {
    inner: Incoming,
    done: bool,
    sender: Option<SendRequest<Incoming>>,
    guard: Option<InFlight>,
}

impl Guarded {
    fn finish(&mut self) {
        if let (Some(sender), Some(guard)) = (self.sender.take(), self.guard.as_ref()) {
            let b = &guard.0;
            // Only a backend in rotation keeps connections for reuse; one
            // being drained or cut off gets its connections closed.
            if self.done && b.admin.load(Ordering::Acquire) == READY {
                b.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((sender, Instant::now()));
                // A take-out between the check and the push cleared the
                // pool before this connection was in it.
                if b.admin.load(Ordering::Acquire) != READY {
                    b.clear_idle();
                }
            }
        }
        // Pool first, then stop counting: a drain that sees 0 in flight and
        // goes on to maint then clears this connection too.
        self.guard = None;
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // hyper stops polling once `is_end_stream` says so (a body with a
        // Content-Length ends with its last data frame, never yielding
        // `None`): check after every frame, or the connection would never go
        // back to the pool and every request would pay a new connect.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended && !self.done {
            self.done = true;
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.finish();
    }
}
