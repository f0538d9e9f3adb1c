//! A load generator that counts failed requests: the judge of "zero
//! downtime" in the integration tests.
//!
//! A thin wrapper over the product's traffic witness
//! ([`changeover_adapters::witness`]), so that the tests judge deploys with
//! the very code that judges them in production. What it adds is the test
//! tool's guard rails: loopback targets only, and panics instead of errors.

use changeover_adapters::witness::{self, Witness, WitnessOptions, WitnessReport};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// How many failures are kept verbatim in [`LoadReport::failure_samples`].
pub const MAX_FAILURE_SAMPLES: usize = witness::MAX_FAILURE_SAMPLES;

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
    /// `"status 503 (request #12, new connection, at 1.250s)"`.
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

impl From<WitnessReport> for LoadReport {
    fn from(report: WitnessReport) -> LoadReport {
        LoadReport {
            requests: report.requests,
            failures: report.failures,
            failure_samples: report.failure_samples,
            failure_kinds: report.failure_kinds,
            versions_seen: report.versions_seen,
            p50: report.p50,
            p99: report.p99,
            elapsed: report.elapsed,
        }
    }
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
    witness: Witness,
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
        let witness = Witness::start(WitnessOptions {
            url: format!("http://{}{}", opts.target, opts.path),
            rps: opts.rps,
            timeout: opts.request_timeout,
            keep_alive_share: if opts.new_connection_per_request {
                0.0
            } else {
                1.0
            },
            max_duration: opts.max_duration,
            max_requests: opts.max_requests,
        })
        .unwrap_or_else(|e| panic!("cannot start the load generator: {e}"));
        LoadGen { witness }
    }

    /// Stop starting requests, wait for those in flight, and report.
    pub async fn stop(self) -> LoadReport {
        self.witness.stop().await.into()
    }

    /// Wait until the generator stops by itself (`max_duration` or
    /// `max_requests`), and report.
    pub async fn wait(self) -> LoadReport {
        self.witness.wait().await.into()
    }

    pub fn is_finished(&self) -> bool {
        self.witness.is_finished()
    }
}
