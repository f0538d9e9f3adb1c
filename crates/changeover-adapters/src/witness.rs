//! The traffic witness: steady HTTP requests through the balancer while a
//! deploy runs, every failed one counted. It is the evidence behind "zero
//! downtime", for the operator during a real deploy and for the integration
//! tests (the testkit's load generator is a thin wrapper over it).
//!
//! Written on raw TCP rather than an HTTP client library on purpose: a
//! library retries, pools and papers over resets and malformed answers, and
//! those are exactly what a deploy must not cause. The only retry here is the
//! one every HTTP client makes and RFC 9112 §9.3.1 allows: a GET on a reused
//! keep-alive connection that the server closed before answering anything
//! goes again on a fresh connection (the server may close an idle connection
//! at any moment; that is not a lost request). Everything else is judged as
//! is: a success is a complete HTTP response with a 2xx status.
//!
//! Two kinds of request are interleaved, because a deploy can break one and
//! not the other: some go on kept-alive connections (a balancer that drops
//! established connections on reload shows up there), the rest each on a new
//! connection (a refused or reset connect shows up there).
//!
//! Every loop is bounded by `max_duration` and `max_requests`, and every
//! request by `timeout`, so a forgotten witness stops by itself.
//!
//! The URL may carry credentials (userinfo, a token in the query string).
//! They are sent, but never shown: everything printable about the target is
//! `http://host:port/path`.

use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, OnceCell};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

/// How many failures are kept verbatim in [`WitnessReport::failure_samples`].
pub const MAX_FAILURE_SAMPLES: usize = 20;

/// Requests outstanding at once. Beyond that the server is not keeping up,
/// and a tick that cannot send counts as a failure rather than piling up
/// tasks without bound.
const MAX_IN_FLIGHT: usize = 512;

/// Limits that keep a misbehaving server from making the witness buffer
/// without bound.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Longest body still taken as a version when there is no `X-App-Version`.
const MAX_VERSION_BODY: usize = 64;

#[derive(Clone, PartialEq)]
pub struct WitnessOptions {
    /// `http://host[:port][/path][?query]`; the port defaults to 80. The
    /// host is resolved once, by the first request that needs it.
    pub url: String,
    /// Requests started per second.
    pub rps: u32,
    /// Connect, send and read the whole response within this.
    pub timeout: Duration,
    /// Share of requests sent on a kept-alive connection, from 0.0 to 1.0;
    /// the rest each go on a new connection with `Connection: close`.
    pub keep_alive_share: f64,
    /// The witness stops by itself after this long...
    pub max_duration: Duration,
    /// ...or after starting this many requests.
    pub max_requests: u64,
}

impl WitnessOptions {
    /// 20 requests per second, half of them on kept-alive connections, a 2 s
    /// timeout, for at most an hour.
    pub fn new(url: impl Into<String>) -> WitnessOptions {
        WitnessOptions {
            url: url.into(),
            rps: 20,
            timeout: Duration::from_secs(2),
            keep_alive_share: 0.5,
            max_duration: Duration::from_secs(3600),
            max_requests: 20 * 3600,
        }
    }
}

// By hand: a derived Debug would print the URL's credentials into logs.
impl fmt::Debug for WitnessOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = Target::parse(&self.url).map_or_else(
            |_| "<not a valid http:// URL>".to_string(),
            |t| t.redacted(),
        );
        f.debug_struct("WitnessOptions")
            .field("url", &url)
            .field("rps", &self.rps)
            .field("timeout", &self.timeout)
            .field("keep_alive_share", &self.keep_alive_share)
            .field("max_duration", &self.max_duration)
            .field("max_requests", &self.max_requests)
            .finish()
    }
}

/// Why a witness cannot start. No message quotes any part of the URL: a
/// mistyped URL can put a password where the host or port should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    #[error("https is not supported by the witness yet; point it at an http:// address")]
    Https,
    #[error("the witness URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("invalid witness options: {0}")]
    InvalidOptions(String),
    #[error("the witness needs a Tokio runtime")]
    NoRuntime,
}

/// A cheap snapshot of a running witness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WitnessCounts {
    /// Requests judged so far (answered, failed or given up on).
    pub requests: u64,
    pub failures: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WitnessReport {
    /// `http://host:port/path`: never the userinfo or the query.
    pub target: String,
    /// Requests started (and all judged: stopping waits for them).
    pub requests: u64,
    pub failures: u64,
    /// Failures counted by reason: `"connect: refused"`, `"reset"`,
    /// `"timeout"`, `"status 503"`, `"truncated response"`, ….
    pub failure_kinds: BTreeMap<String, u64>,
    /// The first [`MAX_FAILURE_SAMPLES`] failures, reason first:
    /// `"status 503 (request #12, new connection, at 1.250s)"`.
    pub failure_samples: Vec<String>,
    /// Successful responses per version (the `X-App-Version` header, else a
    /// short one-line body).
    pub versions_seen: BTreeMap<String, u64>,
    /// Latency of the successful requests.
    #[serde(rename = "p50_ms", serialize_with = "millis")]
    pub p50: Duration,
    #[serde(rename = "p90_ms", serialize_with = "millis")]
    pub p90: Duration,
    #[serde(rename = "p99_ms", serialize_with = "millis")]
    pub p99: Duration,
    #[serde(rename = "max_ms", serialize_with = "millis")]
    pub max: Duration,
    /// From start to the last request finishing.
    #[serde(rename = "elapsed_ms", serialize_with = "millis")]
    pub elapsed: Duration,
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl fmt::Display for WitnessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} requests, {} failed in {:.1?} (p50 {:.1?}, p90 {:.1?}, p99 {:.1?}, max {:.1?}); versions {:?}",
            self.target,
            self.requests,
            self.failures,
            self.elapsed,
            self.p50,
            self.p90,
            self.p99,
            self.max,
            self.versions_seen
        )?;
        for (kind, count) in &self.failure_kinds {
            write!(f, "\n  {count} x {kind}")?;
        }
        for sample in &self.failure_samples {
            write!(f, "\n  - {sample}")?;
        }
        Ok(())
    }
}

/// A running witness. Dropping it aborts the background task; [`stop`]
/// it to get the report.
///
/// [`stop`]: Witness::stop
pub struct Witness {
    target: String,
    counts: Arc<LiveCounts>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<WitnessReport>>,
}

impl fmt::Debug for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Witness")
            .field("target", &self.target)
            .field("live", &self.live())
            .finish_non_exhaustive()
    }
}

impl Witness {
    /// Start sending requests in the background, on the current Tokio
    /// runtime. Checks the URL and the options; the host is resolved by the
    /// first request, so a name that does not resolve shows up as failed
    /// requests (`resolve failed`), retried until it resolves.
    pub fn start(opts: WitnessOptions) -> Result<Witness, WitnessError> {
        if opts.rps == 0 {
            return Err(WitnessError::InvalidOptions(
                "rps must be at least 1".to_string(),
            ));
        }
        if !(0.0..=1.0).contains(&opts.keep_alive_share) {
            return Err(WitnessError::InvalidOptions(format!(
                "keep_alive_share must be from 0.0 to 1.0, not {}",
                opts.keep_alive_share
            )));
        }
        if opts.timeout.is_zero() {
            return Err(WitnessError::InvalidOptions(
                "the timeout must be more than zero".to_string(),
            ));
        }
        let target = Target::parse(&opts.url)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WitnessError::NoRuntime)?;
        let counts = Arc::new(LiveCounts::default());
        let (stop, stop_rx) = watch::channel(false);
        let redacted = target.redacted();
        let task = runtime.spawn(run(opts, target, counts.clone(), stop_rx));
        Ok(Witness {
            target: redacted,
            counts,
            stop,
            task: Some(task),
        })
    }

    /// `http://host:port/path`, safe to print.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn live(&self) -> WitnessCounts {
        WitnessCounts {
            requests: self.counts.requests.load(Ordering::Relaxed),
            failures: self.counts.failures.load(Ordering::Relaxed),
        }
    }

    /// Stop starting requests, wait for those in flight (each ends within
    /// its timeout), and report.
    pub async fn stop(mut self) -> WitnessReport {
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Wait until the witness stops by itself (`max_duration` or
    /// `max_requests`), and report.
    pub async fn wait(mut self) -> WitnessReport {
        self.join().await
    }

    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    async fn join(&mut self) -> WitnessReport {
        let task = self.task.take().expect("joined once");
        match task.await {
            Ok(report) => report,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a runtime shutting down cancels the task: nobody is left
            // to read the report.
            Err(_) => WitnessReport {
                target: self.target.clone(),
                ..WitnessReport::default()
            },
        }
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[derive(Default)]
struct LiveCounts {
    requests: AtomicU64,
    failures: AtomicU64,
}

/// Where the requests go, parsed from the URL.
struct Target {
    /// A DNS name or an IP address, without brackets.
    host: String,
    port: u16,
    /// Path and query as sent: the query is never printed.
    request_target: String,
    /// The path alone, for printing.
    path: String,
    host_header: String,
    /// From the URL's userinfo.
    authorization: Option<String>,
}

impl Target {
    fn parse(url: &str) -> Result<Target, WitnessError> {
        let invalid = |reason: &str| WitnessError::InvalidUrl(reason.to_string());
        let url = url.trim();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected http://host:port/path"))?;
        if scheme.eq_ignore_ascii_case("https") {
            return Err(WitnessError::Https);
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(invalid("only http:// URLs are supported"));
        }
        // A fragment is never sent.
        let rest = rest.split('#').next().unwrap_or("");
        let (authority, path_and_query) =
            rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let (host, port) = match host_port.strip_prefix('[') {
            Some(bracketed) => {
                let (ip, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| invalid("an IPv6 host needs its closing `]`"))?;
                if ip.parse::<Ipv6Addr>().is_err() {
                    return Err(invalid("the host in brackets is not an IPv6 address"));
                }
                let port = match after {
                    "" => None,
                    _ => Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| invalid("expected `:port` after the IPv6 host"))?,
                    ),
                };
                (ip, port)
            }
            None => match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            },
        };
        if host.is_empty() {
            return Err(invalid("no host (expected http://host:port/path)"));
        }
        let is_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if !host_port.starts_with('[') && !host.chars().all(is_name) {
            return Err(invalid("the host is not a DNS name or an IP address"));
        }
        let port = match port {
            None | Some("") => 80,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))?,
        };
        // Sent on the request line and in a header, so nothing that could
        // end the line or split it.
        let sendable = |s: &str| s.chars().all(|c| c.is_ascii_graphic());
        if !sendable(path_and_query) {
            return Err(invalid(
                "the path or query holds a space, a control or a non-ASCII character; percent-encode it",
            ));
        }
        if userinfo.is_some_and(|u| !sendable(u)) {
            return Err(invalid(
                "the user or password holds a space, a control or a non-ASCII character; percent-encode it",
            ));
        }
        let request_target = if path_and_query.starts_with('/') {
            path_and_query.to_string()
        } else {
            format!("/{path_and_query}")
        };
        let path = request_target.split('?').next().unwrap_or("/").to_string();
        let host_for_url = if host_port.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let host_header = if port == 80 {
            host_for_url
        } else {
            format!("{host_for_url}:{port}")
        };
        // Userinfo means basic authentication, as in curl and browsers.
        let authorization = userinfo.map(|u| {
            let (user, password) = u.split_once(':').unwrap_or((u, ""));
            let mut credentials = percent_decode(user);
            credentials.push(b':');
            credentials.extend(percent_decode(password));
            format!("Basic {}", base64(&credentials))
        });
        Ok(Target {
            host: host.to_string(),
            port,
            request_target,
            path,
            host_header,
            authorization,
        })
    }

    fn redacted(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            format!("http://{}:{}{}", self.host, self.port, self.path)
        }
    }

    fn request(&self, keep_alive: bool) -> Vec<u8> {
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: changeover-witness\r\nAccept: */*\r\n",
            self.request_target, self.host_header
        );
        if let Some(authorization) = &self.authorization {
            request.push_str(&format!("Authorization: {authorization}\r\n"));
        }
        if !keep_alive {
            request.push_str("Connection: close\r\n");
        }
        request.push_str("\r\n");
        request.into_bytes()
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some([hi, lo]) = bytes.get(i + 1..i + 3) {
                if let (Some(hi), Some(lo)) = (hex(*hi), hex(*lo)) {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether request number `n` (from 1) goes on a kept-alive connection.
/// Spreads the kept-alive requests evenly and exactly: after `n` requests,
/// `floor(n * share)` of them were kept-alive.
fn is_keep_alive(n: u64, share: f64) -> bool {
    (n as f64 * share).floor() > ((n - 1) as f64 * share).floor()
}

/// What every request task shares.
struct Shared {
    target: Target,
    timeout: Duration,
    keep_alive_request: Vec<u8>,
    close_request: Vec<u8>,
    /// Resolved by the first request that connects; left empty on failure
    /// so that the next request tries again.
    addrs: OnceCell<Vec<SocketAddr>>,
    /// Keep-alive connections waiting for their next request.
    idle: Mutex<Vec<Conn>>,
}

enum Outcome {
    Success {
        latency: Duration,
        version: Option<String>,
    },
    Failure {
        kind: String,
        detail: Option<String>,
    },
}

/// One judged request: its number, when it was started, on which kind of
/// connection, and how it went.
struct Judged {
    number: u64,
    offset: Duration,
    keep_alive: bool,
    outcome: Outcome,
}

async fn run(
    opts: WitnessOptions,
    target: Target,
    counts: Arc<LiveCounts>,
    mut stop: watch::Receiver<bool>,
) -> WitnessReport {
    let started = Instant::now();
    let deadline = started + opts.max_duration;
    let period = Duration::from_secs_f64(1.0 / f64::from(opts.rps));
    let redacted = target.redacted();
    let shared = Arc::new(Shared {
        keep_alive_request: target.request(true),
        close_request: target.request(false),
        target,
        timeout: opts.timeout,
        addrs: OnceCell::new(),
        idle: Mutex::new(Vec::new()),
    });

    let mut tally = Tally::new(counts);
    let mut in_flight: JoinSet<Judged> = JoinSet::new();
    let mut ticker = tokio::time::interval_at(started, period);
    // After a stall (a starved runner), keep the pace instead of bursting to
    // catch up: a burst is load nobody asked for.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sent: u64 = 0;
    while sent < opts.max_requests {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                tally.record(joined);
            }
            at = ticker.tick() => {
                sent += 1;
                let number = sent;
                let offset = at.saturating_duration_since(started);
                let keep_alive = is_keep_alive(number, opts.keep_alive_share);
                if in_flight.len() >= MAX_IN_FLIGHT {
                    tally.record(Ok(Judged {
                        number,
                        offset,
                        keep_alive,
                        outcome: Outcome::Failure {
                            kind: "not sent: too many requests in flight".to_string(),
                            detail: None,
                        },
                    }));
                    continue;
                }
                let shared = shared.clone();
                in_flight.spawn(async move {
                    let outcome = one_request(&shared, keep_alive).await;
                    Judged { number, offset, keep_alive, outcome }
                });
            }
        }
    }
    // Requests already sent are judged too: each ends within its timeout.
    while let Some(joined) = in_flight.join_next().await {
        tally.record(joined);
    }
    tally.into_report(redacted, started.elapsed())
}

struct Tally {
    live: Arc<LiveCounts>,
    requests: u64,
    failures: u64,
    failure_samples: Vec<String>,
    failure_kinds: BTreeMap<String, u64>,
    versions_seen: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

impl Tally {
    fn new(live: Arc<LiveCounts>) -> Tally {
        Tally {
            live,
            requests: 0,
            failures: 0,
            failure_samples: Vec::new(),
            failure_kinds: BTreeMap::new(),
            versions_seen: BTreeMap::new(),
            latencies: Vec::new(),
        }
    }

    fn record(&mut self, joined: Result<Judged, tokio::task::JoinError>) {
        let judged = joined.unwrap_or_else(|e| Judged {
            number: 0,
            offset: Duration::ZERO,
            keep_alive: false,
            outcome: Outcome::Failure {
                kind: "witness task failed".to_string(),
                detail: Some(e.to_string()),
            },
        });
        self.requests += 1;
        match judged.outcome {
            Outcome::Success { latency, version } => {
                self.latencies.push(latency);
                if let Some(version) = version {
                    *self.versions_seen.entry(version).or_default() += 1;
                }
            }
            Outcome::Failure { kind, detail } => {
                self.failures += 1;
                self.live.failures.fetch_add(1, Ordering::Relaxed);
                if self.failure_samples.len() < MAX_FAILURE_SAMPLES {
                    let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
                    let connection = if judged.keep_alive {
                        "kept-alive connection"
                    } else {
                        "new connection"
                    };
                    self.failure_samples.push(format!(
                        "{kind}{detail} (request #{}, {connection}, at {:.3}s)",
                        judged.number,
                        judged.offset.as_secs_f64()
                    ));
                }
                *self.failure_kinds.entry(kind).or_default() += 1;
            }
        }
        // After the failure, so that a snapshot never shows more failures
        // than requests.
        self.live.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn into_report(mut self, target: String, elapsed: Duration) -> WitnessReport {
        self.latencies.sort_unstable();
        WitnessReport {
            target,
            requests: self.requests,
            failures: self.failures,
            failure_kinds: self.failure_kinds,
            failure_samples: self.failure_samples,
            versions_seen: self.versions_seen,
            p50: percentile(&self.latencies, 0.50),
            p90: percentile(&self.latencies, 0.90),
            p99: percentile(&self.latencies, 0.99),
            max: self.latencies.last().copied().unwrap_or_default(),
            elapsed,
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn one_request(shared: &Shared, keep_alive: bool) -> Outcome {
    let started = Instant::now();
    match tokio::time::timeout(shared.timeout, exchange(shared, keep_alive)).await {
        Err(_) => Outcome::Failure {
            kind: "timeout".to_string(),
            detail: None,
        },
        Ok(Err(failure)) => Outcome::Failure {
            kind: failure.kind,
            detail: failure.detail,
        },
        Ok(Ok(response)) if (200..300).contains(&response.status) => Outcome::Success {
            latency: started.elapsed(),
            version: response.version(),
        },
        Ok(Ok(response)) => Outcome::Failure {
            kind: format!("status {}", response.status),
            detail: None,
        },
    }
}

/// One request and its response, on a reused connection when it is a
/// keep-alive request and there is one.
async fn exchange(shared: &Shared, keep_alive: bool) -> Result<Response, Failure> {
    if keep_alive {
        if let Some(conn) = take_idle(shared) {
            match round_trip(shared, conn, true).await {
                Err(failure) if failure.retryable_on_reuse => {}
                done => return done,
            }
        }
    }
    let stream = connect(shared).await?;
    // One small write per request; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let conn = Conn {
        stream,
        buf: Vec::new(),
    };
    round_trip(shared, conn, keep_alive).await
}

/// Tries every resolved address in turn, as other HTTP clients do, so that
/// `localhost` works whichever of `::1` and `127.0.0.1` the server is on.
async fn connect(shared: &Shared) -> Result<TcpStream, Failure> {
    let addrs = shared
        .addrs
        .get_or_try_init(|| resolve(&shared.target))
        .await?;
    let mut first_error = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(Failure::connect(
        &first_error.expect("resolve returns at least one address"),
    ))
}

async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, Failure> {
    match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(Failure::new(
                    "resolve failed",
                    Some("no address".to_string()),
                ))
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(Failure::new("resolve failed", Some(e.to_string()))),
    }
}

fn take_idle(shared: &Shared) -> Option<Conn> {
    let mut idle = shared.idle.lock().expect("not poisoned");
    while let Some(conn) = idle.pop() {
        if conn.looks_open() {
            return Some(conn);
        }
    }
    None
}

async fn round_trip(
    shared: &Shared,
    mut conn: Conn,
    keep_alive: bool,
) -> Result<Response, Failure> {
    let request = if keep_alive {
        &shared.keep_alive_request
    } else {
        &shared.close_request
    };
    conn.stream
        .write_all(request)
        .await
        .map_err(|e| Failure::io(&e, false))?;
    let (response, reusable) = conn.read_response().await?;
    if reusable && keep_alive {
        let mut idle = shared.idle.lock().expect("not poisoned");
        if idle.len() < MAX_IN_FLIGHT {
            idle.push(conn);
        }
    }
    Ok(response)
}

/// Why a request failed. `kind` is the stable part, counted in the report.
#[derive(Debug)]
struct Failure {
    kind: String,
    detail: Option<String>,
    /// The connection broke before any byte of the response arrived: on a
    /// reused keep-alive connection that is the server closing an idle
    /// connection, not a lost request.
    retryable_on_reuse: bool,
}

impl Failure {
    fn new(kind: &str, detail: Option<String>) -> Failure {
        Failure {
            kind: kind.to_string(),
            detail,
            retryable_on_reuse: false,
        }
    }

    fn connect(e: &io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Failure::new("connect: refused", None),
            kind => Failure::new(&format!("connect: {kind}"), Some(e.to_string())),
        }
    }

    fn io(e: &io::Error, received_any: bool) -> Failure {
        let mut failure = match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                Failure::new("reset", None)
            }
            io::ErrorKind::BrokenPipe => Failure::new("reset", Some("broken pipe".to_string())),
            kind => Failure::new(&format!("i/o error: {kind}"), Some(e.to_string())),
        };
        failure.retryable_on_reuse = !received_any && failure.kind == "reset";
        failure
    }

    fn eof(received_any: bool) -> Failure {
        if received_any {
            Failure::new("truncated response", None)
        } else {
            Failure {
                retryable_on_reuse: true,
                ..Failure::new("closed before response", None)
            }
        }
    }

    fn malformed(detail: impl Into<String>) -> Failure {
        Failure::new("malformed response", Some(detail.into()))
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn version(&self) -> Option<String> {
        if let Some(v) = self.header("x-app-version") {
            return Some(v.to_string());
        }
        let body = std::str::from_utf8(&self.body).ok()?.trim();
        let one_line = !body.is_empty() && body.len() <= MAX_VERSION_BODY && !body.contains('\n');
        one_line.then(|| body.to_string())
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes read but not consumed yet.
    buf: Vec<u8>,
}

/// The response head: status line and headers.
struct Head {
    http11: bool,
    status: u16,
    headers: Vec<(String, String)>,
}

enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

impl Conn {
    /// An idle connection the server has closed (or written to, which it
    /// should not) is not worth a request.
    fn looks_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Read one complete response. Returns it and whether the connection
    /// can carry another request.
    async fn read_response(&mut self) -> Result<(Response, bool), Failure> {
        let head = loop {
            let head = self.read_head().await?;
            match head.status {
                // An interim answer; the real one follows.
                100 | 102 | 103 => continue,
                101 => return Err(Failure::malformed("101 Switching Protocols to a GET")),
                _ => break head,
            }
        };
        let framing = framing(&head)?;
        let body = match framing {
            Framing::None => Vec::new(),
            Framing::Length(n) => self.take_exact(n).await?,
            Framing::Chunked => self.read_chunked().await?,
            Framing::UntilClose => self.read_until_close().await?,
        };
        let close = head
            .headers
            .iter()
            .any(|(n, v)| n == "connection" && v.to_ascii_lowercase().contains("close"));
        let reusable = head.http11
            && !close
            && !matches!(framing, Framing::UntilClose)
            // Leftover bytes would be read as the next response.
            && self.buf.is_empty();
        let response = Response {
            status: head.status,
            headers: head.headers,
            body,
        };
        Ok((response, reusable))
    }

    /// Read more bytes into the buffer. `Ok(false)` at end of stream.
    async fn fill(&mut self, received_any: bool) -> Result<bool, Failure> {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) => Err(Failure::io(&e, received_any)),
        }
    }

    async fn read_head(&mut self) -> Result<Head, Failure> {
        let mut received_any = !self.buf.is_empty();
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return parse_head(&head[..end]);
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(Failure::malformed("response head too large"));
            }
            if !self.fill(received_any).await? {
                return Err(Failure::eof(received_any));
            }
            received_any = true;
        }
    }

    async fn take_exact(&mut self, n: usize) -> Result<Vec<u8>, Failure> {
        if n > MAX_BODY_BYTES {
            return Err(Failure::malformed(format!("body of {n} bytes")));
        }
        while self.buf.len() < n {
            if !self.fill(true).await? {
                return Err(Failure::eof(true));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn read_line(&mut self) -> Result<String, Failure> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return String::from_utf8(line[..end].to_vec())
                    .map_err(|_| Failure::malformed("chunk line is not UTF-8"));
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(Failure::malformed("chunk line too long"));
            }
            if !self.fill(true).await? {
                return Err(Failure::eof(true));
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| Failure::malformed(format!("chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY_BYTES {
                return Err(Failure::malformed("chunked body too large"));
            }
            let chunk = self.take_exact(size).await?;
            body.extend_from_slice(&chunk);
            if !self.read_line().await?.is_empty() {
                return Err(Failure::malformed("chunk not followed by CRLF"));
            }
        }
    }

    async fn read_until_close(&mut self) -> Result<Vec<u8>, Failure> {
        while self.fill(true).await? {
            if self.buf.len() > MAX_BODY_BYTES {
                return Err(Failure::malformed("body too large"));
            }
        }
        Ok(std::mem::take(&mut self.buf))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<Head, Failure> {
    let text = std::str::from_utf8(head).map_err(|_| Failure::malformed("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let http11 = match parts.next() {
        Some("HTTP/1.1") => true,
        Some("HTTP/1.0") => false,
        _ => return Err(Failure::malformed(format!("status line {status_line:?}"))),
    };
    let status = parts
        .next()
        .filter(|code| code.len() == 3)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (100..600).contains(code))
        .ok_or_else(|| Failure::malformed(format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| Failure::malformed(format!("header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head {
        http11,
        status,
        headers,
    })
}

fn framing(head: &Head) -> Result<Framing, Failure> {
    if head.status == 204 || head.status == 304 {
        return Ok(Framing::None);
    }
    fn header<'a>(head: &'a Head, name: &'a str) -> impl Iterator<Item = &'a str> {
        head.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    if let Some(te) = header(head, "transfer-encoding").last() {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for value in header(head, "content-length") {
        let n: usize = value
            .parse()
            .map_err(|_| Failure::malformed(format!("content-length {value:?}")))?;
        if length.is_some_and(|l| l != n) {
            return Err(Failure::malformed("conflicting content-length headers"));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.90), Duration::from_millis(90));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
        assert_eq!(
            percentile(&[Duration::from_millis(7)], 0.5),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn keep_alive_requests_are_spread_evenly() {
        let pattern = |share: f64| -> String {
            (1..=10)
                .map(|n| if is_keep_alive(n, share) { 'k' } else { 'n' })
                .collect()
        };
        assert_eq!(pattern(0.0), "nnnnnnnnnn");
        assert_eq!(pattern(1.0), "kkkkkkkkkk");
        assert_eq!(pattern(0.5), "nknknknknk");
        assert_eq!(pattern(0.2), "nnnnknnnnk");
        let kept = (1..=1000).filter(|&n| is_keep_alive(n, 0.37)).count();
        assert_eq!(kept, 370);
    }

    #[test]
    fn parses_a_url_into_what_is_sent_and_what_is_shown() {
        let t =
            Target::parse("http://u%40x:p%3Ass@example.com:8080/a/b?token=s3cret#frag").unwrap();
        assert_eq!(t.host, "example.com");
        assert_eq!(t.port, 8080);
        assert_eq!(t.request_target, "/a/b?token=s3cret");
        assert_eq!(t.host_header, "example.com:8080");
        // base64("u@x:p:ss")
        assert_eq!(t.authorization.as_deref(), Some("Basic dUB4OnA6c3M="));
        assert_eq!(t.redacted(), "http://example.com:8080/a/b");

        let t = Target::parse("HTTP://[::1]?q=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(t.request_target, "/?q=1");
        assert_eq!(t.host_header, "[::1]");
        assert_eq!(t.redacted(), "http://[::1]:80/");

        let t = Target::parse("http://10.0.0.5:/").unwrap();
        assert_eq!(t.port, 80);
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%20b"), b"a b");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%+f%4"), b"%+f%4");
    }

    #[test]
    fn parses_status_and_headers() {
        let head = parse_head(
            b"HTTP/1.1 503 Service Unavailable\r\nX-App-Version: v2\r\nContent-Length: 3",
        )
        .map_err(|f| f.kind)
        .unwrap();
        assert!(head.http11);
        assert_eq!(head.status, 503);
        assert_eq!(head.headers[0], ("x-app-version".into(), "v2".into()));
        assert!(matches!(framing(&head), Ok(Framing::Length(3))));
    }

    #[test]
    fn rejects_garbage_status_lines() {
        for bad in [
            &b"SSH-2.0-OpenSSH_9.6"[..],
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 abc OK",
        ] {
            let failure = parse_head(bad).err().expect("malformed");
            assert_eq!(failure.kind, "malformed response");
        }
    }

    #[test]
    fn version_from_header_then_short_body() {
        let with_header = Response {
            status: 200,
            headers: vec![("x-app-version".into(), "v3".into())],
            body: b"whatever\n".to_vec(),
        };
        assert_eq!(with_header.version().as_deref(), Some("v3"));
        let body_only = Response {
            status: 200,
            headers: vec![],
            body: b"v4\n".to_vec(),
        };
        assert_eq!(body_only.version().as_deref(), Some("v4"));
        let page = Response {
            status: 200,
            headers: vec![],
            body: b"<html>\n<body>hi</body>\n</html>\n".to_vec(),
        };
        assert_eq!(page.version(), None);
    }
}
