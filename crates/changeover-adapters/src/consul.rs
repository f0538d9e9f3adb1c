//! A small client of Consul's HTTP API, shared by discovery, the Consul
//! gate and the Consul store: the agent's address, TLS, the ACL token from
//! the environment, the datacenter, and how failures read.
//!
//! The token goes in the `X-Consul-Token` header, never in a URL, and is
//! scrubbed from anything Consul answers before it reaches a message.

use changeover_core::plan::ConsulEndpoint;
use std::time::Duration;

/// Why a call failed. `Display` reads after "failed to …".
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsulError {
    /// The agent could not be reached, or cut the answer short.
    #[error("consul {address} is unreachable: {message}")]
    Unreachable { address: String, message: String },
    /// 401/403: the ACL token is missing, wrong or not allowed this.
    #[error("consul {address} refused the request: {message}")]
    Denied { address: String, message: String },
    /// Any other error status.
    #[error("consul {address} answered {status}: {message}")]
    Failed {
        address: String,
        status: u16,
        message: String,
    },
    /// Before any request: the token variable is unset, the CA unreadable.
    #[error("consul {address}: {message}")]
    Setup { address: String, message: String },
}

impl ConsulError {
    /// Worth asking again later (the agent restarting, no leader yet).
    pub fn is_transient(&self) -> bool {
        match self {
            ConsulError::Unreachable { .. } => true,
            ConsulError::Failed { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// One answer: the status, Consul's `X-Consul-Index`, the body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub index: Option<u64>,
    pub body: Vec<u8>,
}

pub struct ConsulClient {
    client: reqwest::Client,
    address: String,
    token: Option<String>,
    token_env: Option<String>,
    datacenter: Option<String>,
    timeout: Duration,
}

impl ConsulClient {
    pub fn new(endpoint: &ConsulEndpoint) -> Result<ConsulClient, ConsulError> {
        let setup = |message: String| ConsulError::Setup {
            address: endpoint.address.clone(),
            message,
        };
        let token = match &endpoint.token_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(t) if !t.is_empty() => Some(t),
                _ => {
                    return Err(setup(format!(
                        "token_env names ${var}, which is not set: export the ACL token in it"
                    )))
                }
            },
        };
        let mut builder = reqwest::Client::builder()
            // The agent is on a private network; an operator's proxy would
            // not reach it (and would see the token).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(endpoint.timeout)
            .user_agent(concat!("changeover/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &endpoint.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| setup(format!("cannot read ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                setup(format!(
                    "ca_file {} is not PEM certificates: {e}",
                    ca.display()
                ))
            })?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| setup(format!("cannot set up the HTTP client: {e}")))?;
        Ok(ConsulClient {
            client,
            address: endpoint.address.clone(),
            token,
            token_env: endpoint.token_env.clone(),
            datacenter: endpoint.datacenter.clone(),
            timeout: endpoint.timeout,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// `GET` (or another method) of `path` (`/v1/...`) with `query`; `wait`
    /// is added to the timeout for a blocking query. Every status comes
    /// back as an [`Answer`] except 401/403 and 5xx, which are errors.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        wait: Duration,
    ) -> Result<Answer, ConsulError> {
        let mut query: Vec<(&str, String)> = query.to_vec();
        if let Some(dc) = &self.datacenter {
            query.push(("dc", dc.clone()));
        }
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.to_string()
                } else {
                    format!("{k}={}", query_escape(v))
                }
            })
            .collect();
        let url = if qs.is_empty() {
            format!("{}{path}", self.address)
        } else {
            format!("{}{path}?{}", self.address, qs.join("&"))
        };
        let mut req = self
            .client
            .request(method, url)
            .timeout(self.timeout + wait);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let started = std::time::Instant::now();
        let sent = req.send().await;
        // `-v`: the path, never the token (it is in a header).
        match &sent {
            Ok(r) => tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                status = r.status().as_u16(),
                "consul {path}"
            ),
            Err(e) => tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                "consul {path} failed: {}",
                self.scrub(e.to_string().as_bytes())
            ),
        }
        let resp = sent.map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.unreachable(&e))?
            .to_vec();
        match status {
            401 | 403 => Err(ConsulError::Denied {
                address: self.address.clone(),
                message: format!(
                    "{} ({})",
                    self.scrub(&body),
                    match &self.token_env {
                        Some(v) => format!("check that the token in ${v} has the rights"),
                        None => "the agent needs an ACL token: set token_env".into(),
                    }
                ),
            }),
            s if s >= 500 => Err(ConsulError::Failed {
                address: self.address.clone(),
                status: s,
                message: self.scrub(&body),
            }),
            _ => Ok(Answer {
                status,
                index,
                body,
            }),
        }
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Answer, ConsulError> {
        self.call(reqwest::Method::GET, path, query, None, Duration::ZERO)
            .await
    }

    pub async fn put(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, ConsulError> {
        self.call(
            reqwest::Method::PUT,
            path,
            query,
            Some(body),
            Duration::ZERO,
        )
        .await
    }

    /// A status the caller did not expect, as an error.
    pub fn unexpected(&self, answer: &Answer) -> ConsulError {
        ConsulError::Failed {
            address: self.address.clone(),
            status: answer.status,
            message: self.scrub(&answer.body),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> ConsulError {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        ConsulError::Unreachable {
            address: self.address.clone(),
            message: self.scrub(message.as_bytes()),
        }
    }

    /// The first line of an answer, at most 300 characters, without the
    /// token even if the agent echoed it.
    fn scrub(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let mut line: String = text
            .trim()
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        if line.is_empty() {
            line = "(no message)".into();
        }
        match &self.token {
            Some(t) => line.replace(t.as_str(), "<token>"),
            None => line,
        }
    }
}

/// Percent-encode a KV key or a service name for a URL path, keeping `/`.
pub fn path_escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Percent-encode a query value.
fn query_escape(v: &str) -> String {
    path_escape(v).replace('/', "%2F")
}
