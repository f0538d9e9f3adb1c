//! A load generator that counts failed requests: the judge of "zero
//! downtime" in the integration tests.
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
//! Every loop is bounded by `max_duration` and `max_requests`, and every
//! request by `request_timeout`, so a forgotten generator stops by itself.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

/// How many failures are kept verbatim in [`LoadReport::failure_samples`].
pub const MAX_FAILURE_SAMPLES: usize = 20;

/// Requests outstanding at once. Beyond that the server is not keeping up,
/// and a tick that cannot send counts as a failure rather than piling up
/// tasks without bound.
const MAX_IN_FLIGHT: usize = 512;

/// Limits that keep a misbehaving server from making the generator buffer
/// without bound.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Longest body still taken as a version when there is no `X-App-Version`.
const MAX_VERSION_BODY: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Must be a loopback address: this is a test tool.
    pub target: SocketAddr,
    /// Request path, e.g. `/`.
    pub path: String,
    /// Requests started per second.
    pub rps: u32,
    /// `Connection: close` and a new connection for every request; otherwise
    /// keep-alive connections are reused.
    pub new_connection_per_request: bool,
    /// Connect, send and read the whole response within this.
    pub request_timeout: Duration,
    /// The generator stops by itself after this long...
    pub max_duration: Duration,
    /// ...or after starting this many requests.
    pub max_requests: u64,
}

impl LoadOptions {
    /// `GET /` at 100 requests per second on keep-alive connections, a 5 s
    /// request timeout, for at most 2 minutes.
    pub fn new(target: SocketAddr) -> LoadOptions {
        LoadOptions {
            target,
            path: "/".to_string(),
            rps: 100,
            new_connection_per_request: false,
            request_timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(120),
            max_requests: 12_000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests started (and all finished: stopping waits for them).
    pub requests: u64,
    pub failures: u64,
    /// The first [`MAX_FAILURE_SAMPLES`] failures, reason first:
    /// `"status 503 (request #12 at 1.250s)"`.
    pub failure_samples: Vec<String>,
    /// Failures counted by reason: `"connect: refused"`, `"reset"`,
    /// `"timeout"`, `"status 503"`, `"truncated response"`, ….
    pub failure_kinds: BTreeMap<String, u64>,
    /// Successful responses per version (the `X-App-Version` header, else a
    /// short one-line body).
    pub versions_seen: BTreeMap<String, u64>,
    /// Latency of the successful requests.
    pub p50: Duration,
    pub p99: Duration,
    /// From start to the last request finishing.
    pub elapsed: Duration,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests, {} failed in {:.1?} (p50 {:.1?}, p99 {:.1?}); versions {:?}",
            self.requests, self.failures, self.elapsed, self.p50, self.p99, self.versions_seen
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

/// A running load generator. Dropping it aborts the background task.
#[derive(Debug)]
pub struct LoadGen {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<LoadReport>>,
}

impl LoadGen {
    /// Start sending requests in the background. Needs a Tokio runtime.
    ///
    /// # Panics
    ///
    /// When the target is not a loopback address, `rps` is 0, or the path
    /// is not an absolute path on one line.
    pub fn start(opts: LoadOptions) -> LoadGen {
        assert!(
            opts.target.ip().is_loopback(),
            "the load generator only targets loopback addresses, not {}",
            opts.target
        );
        assert!(opts.rps > 0, "rps must be at least 1");
        assert!(
            opts.path.starts_with('/') && !opts.path.contains(['\r', '\n', ' ']),
            "path must be an absolute path on one line: {:?}",
            opts.path
        );
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(opts, stop_rx));
        LoadGen {
            stop,
            task: Some(task),
        }
    }

    /// Stop starting requests, wait for those in flight, and report.
    pub async fn stop(mut self) -> LoadReport {
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Wait until the generator stops by itself (`max_duration` or
    /// `max_requests`), and report.
    pub async fn wait(mut self) -> LoadReport {
        self.join().await
    }

    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    async fn join(&mut self) -> LoadReport {
        let task = self.task.take().expect("joined once");
        match task.await {
            Ok(report) => report,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What every request task shares.
struct Shared {
    opts: LoadOptions,
    request: Vec<u8>,
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

async fn run(opts: LoadOptions, mut stop: watch::Receiver<bool>) -> LoadReport {
    let started = Instant::now();
    let deadline = started + opts.max_duration;
    let mut request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", opts.path, opts.target);
    request.push_str("User-Agent: changeover-testkit-loadgen\r\nAccept: */*\r\n");
    if opts.new_connection_per_request {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    let period = Duration::from_secs_f64(1.0 / f64::from(opts.rps));
    let max_requests = opts.max_requests;
    let shared = Arc::new(Shared {
        opts,
        request: request.into_bytes(),
        idle: Mutex::new(Vec::new()),
    });

    let mut tally = Tally::default();
    let mut in_flight: JoinSet<(u64, Duration, Outcome)> = JoinSet::new();
    let mut ticker = tokio::time::interval_at(started, period);
    // After a stall (a starved test runner), keep the pace instead of
    // bursting to catch up: a burst is load the test did not ask for.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sent: u64 = 0;
    while sent < max_requests {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                tally.record(joined);
            }
            at = ticker.tick() => {
                sent += 1;
                let offset = at.saturating_duration_since(started);
                if in_flight.len() >= MAX_IN_FLIGHT {
                    tally.record(Ok((sent, offset, Outcome::Failure {
                        kind: "not sent: too many requests in flight".to_string(),
                        detail: None,
                    })));
                    continue;
                }
                let shared = shared.clone();
                let number = sent;
                in_flight.spawn(async move {
                    (number, offset, one_request(&shared).await)
                });
            }
        }
    }
    // Requests already sent are judged too: each ends within its timeout.
    while let Some(joined) = in_flight.join_next().await {
        tally.record(joined);
    }
    tally.into_report(started.elapsed())
}

#[derive(Default)]
struct Tally {
    requests: u64,
    failures: u64,
    failure_samples: Vec<String>,
    failure_kinds: BTreeMap<String, u64>,
    versions_seen: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

impl Tally {
    fn record(&mut self, joined: Result<(u64, Duration, Outcome), tokio::task::JoinError>) {
        self.requests += 1;
        let (number, offset, outcome) = match joined {
            Ok(done) => done,
            Err(e) => (
                0,
                Duration::ZERO,
                Outcome::Failure {
                    kind: "load generator task failed".to_string(),
                    detail: Some(e.to_string()),
                },
            ),
        };
        match outcome {
            Outcome::Success { latency, version } => {
                self.latencies.push(latency);
                if let Some(version) = version {
                    *self.versions_seen.entry(version).or_default() += 1;
                }
            }
            Outcome::Failure { kind, detail } => {
                self.failures += 1;
                if self.failure_samples.len() < MAX_FAILURE_SAMPLES {
                    let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
                    self.failure_samples.push(format!(
                        "{kind}{detail} (request #{number} at {:.3}s)",
                        offset.as_secs_f64()
                    ));
                }
                *self.failure_kinds.entry(kind).or_default() += 1;
            }
        }
    }

    fn into_report(mut self, elapsed: Duration) -> LoadReport {
        self.latencies.sort_unstable();
        LoadReport {
            requests: self.requests,
            failures: self.failures,
            failure_samples: self.failure_samples,
            failure_kinds: self.failure_kinds,
            versions_seen: self.versions_seen,
            p50: percentile(&self.latencies, 0.50),
            p99: percentile(&self.latencies, 0.99),
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

async fn one_request(shared: &Shared) -> Outcome {
    let started = Instant::now();
    match tokio::time::timeout(shared.opts.request_timeout, exchange(shared)).await {
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

/// One request and its response, on a reused connection when there is one.
async fn exchange(shared: &Shared) -> Result<Response, Failure> {
    if !shared.opts.new_connection_per_request {
        if let Some(conn) = take_idle(shared) {
            match round_trip(shared, conn).await {
                Err(failure) if failure.retryable_on_reuse => {}
                done => return done,
            }
        }
    }
    let stream = TcpStream::connect(shared.opts.target)
        .await
        .map_err(|e| Failure::connect(&e))?;
    // One small write per request; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    round_trip(
        shared,
        Conn {
            stream,
            buf: Vec::new(),
        },
    )
    .await
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

async fn round_trip(shared: &Shared, mut conn: Conn) -> Result<Response, Failure> {
    conn.stream
        .write_all(&shared.request)
        .await
        .map_err(|e| Failure::io(&e, false))?;
    let (response, reusable) = conn.read_response().await?;
    if reusable && !shared.opts.new_connection_per_request {
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
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
        assert_eq!(
            percentile(&[Duration::from_millis(7)], 0.5),
            Duration::from_millis(7)
        );
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
