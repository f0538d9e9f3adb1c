//! The JSON gateway client: endpoints, TLS, the auth token, base64 keys,
//! and how its failures become [`StoreError`]s.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use changeover_core::plan::EtcdSpec;
use changeover_core::store::StoreError;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// gRPC status codes etcd puts in its error answers.
const CODE_INVALID_ARGUMENT: i64 = 3;
const CODE_NOT_FOUND: i64 = 5;
const CODE_PERMISSION_DENIED: i64 = 7;
const CODE_UNAUTHENTICATED: i64 = 16;

pub(super) struct Inner {
    pub(super) client: reqwest::Client,
    pub(super) endpoints: Vec<String>,
    pub(super) prefix: String,
    pub(super) login: Option<Login>,
    pub(super) token: Mutex<Option<String>>,
    pub(super) lock_ttl: Duration,
    pub(super) timeout: Duration,
    /// The endpoint that answered last: tried first.
    pub(super) current: AtomicUsize,
}

pub(super) struct Login {
    pub(super) username: String,
    password: String,
}

/// Why one call failed, before it becomes a [`StoreError`].
#[derive(Debug)]
pub(super) enum Failure {
    /// No endpoint could be connected to.
    Unreachable(String),
    /// `endpoint` answered with an error.
    Etcd {
        endpoint: String,
        status: u16,
        code: i64,
        message: String,
    },
    /// `endpoint` was connected to but gave no usable answer (timeout,
    /// cut connection, not JSON).
    Broken { endpoint: String, message: String },
    /// `endpoint` refused us before any answer (the TLS client certificate).
    Refused { endpoint: String, message: String },
    /// The password variable is missing, the TLS files are unreadable, …
    Setup(String),
}

impl Failure {
    pub(super) fn is_not_found(&self) -> bool {
        matches!(self, Failure::Etcd { code, .. } if *code == CODE_NOT_FOUND)
    }

    /// The token expired, or etcd restarted and forgot it.
    fn is_stale_token(&self) -> bool {
        match self {
            Failure::Etcd { code, message, .. } => {
                *code == CODE_UNAUTHENTICATED
                    || message.contains("invalid auth token")
                    || message.contains("auth store is old")
            }
            _ => false,
        }
    }
}

impl Inner {
    pub(super) fn new(spec: &EtcdSpec) -> Result<Inner, StoreError> {
        let name = format!("etcd {}", spec.endpoints.join(","));
        let setup = |message: String| StoreError::Denied {
            store: name.clone(),
            message,
        };
        if spec.endpoints.is_empty() {
            return Err(setup("no endpoints".into()));
        }
        let mut builder = reqwest::Client::builder()
            // The cluster is on a private network; a proxy from the
            // operator's environment would not reach it.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(spec.timeout)
            .connect_timeout(spec.timeout)
            .user_agent(concat!("changeover/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &spec.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| setup(format!("cannot read ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                setup(format!(
                    "ca_file {} is not PEM certificates: {}",
                    ca.display(),
                    error_chain(&e)
                ))
            })?;
            builder = builder.tls_certs_only(certs);
        }
        match (&spec.cert_file, &spec.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert)
                    .map_err(|e| setup(format!("cannot read cert_file {}: {e}", cert.display())))?;
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(key).map_err(|e| {
                        setup(format!("cannot read key_file {}: {e}", key.display()))
                    })?,
                );
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    setup(format!(
                        "cert_file {} + key_file {} are not a PEM certificate and key: {}",
                        cert.display(),
                        key.display(),
                        error_chain(&e)
                    ))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(setup(
                    "a client certificate needs both cert_file and key_file".into(),
                ))
            }
        }
        let client = builder.build().map_err(|e| {
            setup(format!(
                "cannot set up the HTTP client: {}",
                error_chain(&e)
            ))
        })?;
        let login = match (&spec.username, &spec.password_env) {
            (Some(username), Some(var)) => {
                let password = std::env::var(var).map_err(|_| {
                    setup(format!(
                        "the environment variable {var} (password_env, the password of etcd user {username}) is not set"
                    ))
                })?;
                Some(Login {
                    username: username.clone(),
                    password,
                })
            }
            (None, None) => None,
            _ => {
                return Err(setup(
                    "etcd authentication needs both username and password_env".into(),
                ))
            }
        };
        let prefix = if spec.prefix.ends_with('/') {
            spec.prefix.clone()
        } else {
            format!("{}/", spec.prefix)
        };
        Ok(Inner {
            client,
            endpoints: spec
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            prefix,
            login,
            token: Mutex::new(None),
            lock_ttl: spec.lock_ttl,
            timeout: spec.timeout,
            current: AtomicUsize::new(0),
        })
    }

    pub(super) fn describe(&self) -> String {
        format!("etcd {} {}", self.endpoints.join(","), self.prefix)
    }

    /// Never lets the password (or the token) through, whatever a library
    /// put in a message.
    fn redact(&self, text: String) -> String {
        let mut text = text;
        if let Some(login) = &self.login {
            if !login.password.is_empty() {
                text = text.replace(&login.password, "<password>");
            }
        }
        if let Some(token) = self.token.lock().unwrap().as_ref() {
            if !token.is_empty() {
                text = text.replace(token.as_str(), "<token>");
            }
        }
        text
    }

    pub(super) fn error(&self, failure: Failure) -> StoreError {
        match failure {
            Failure::Unreachable(message) => StoreError::Unavailable {
                store: format!("etcd {}", self.endpoints.join(",")),
                message: self.redact(message),
            },
            Failure::Setup(message) => StoreError::Denied {
                store: format!("etcd {}", self.endpoints.join(",")),
                message: self.redact(message),
            },
            Failure::Broken { endpoint, message } => StoreError::Unavailable {
                store: format!("etcd {endpoint}"),
                message: self.redact(message),
            },
            Failure::Refused { endpoint, message } => StoreError::Denied {
                store: format!("etcd {endpoint}"),
                message: self.redact(message),
            },
            Failure::Etcd {
                endpoint,
                status,
                code,
                message,
            } => {
                let store = format!("etcd {endpoint}");
                let denied = status == 401
                    || status == 403
                    || code == CODE_UNAUTHENTICATED
                    || code == CODE_PERMISSION_DENIED
                    || (code == CODE_INVALID_ARGUMENT
                        && (message.contains("authentication failed")
                            || message.contains("user name is empty")));
                let message = if code == CODE_PERMISSION_DENIED {
                    match &self.login {
                        Some(l) => format!(
                            "{message} (etcd user {} may not use keys under {})",
                            l.username, self.prefix
                        ),
                        None => format!("{message} (keys under {})", self.prefix),
                    }
                } else if message.contains("user name is empty") {
                    format!("{message}: this cluster requires authentication; set username and password_env in [store]")
                } else {
                    message
                };
                let message = self.redact(message);
                if denied {
                    StoreError::Denied { store, message }
                } else {
                    StoreError::Unavailable { store, message }
                }
            }
        }
    }

    pub(super) fn corrupt(&self, key: &str, message: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            store: self.describe(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// The full etcd key of a relative one, base64.
    pub(super) fn key(&self, key: &str) -> Result<String, StoreError> {
        if key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(StoreError::Unavailable {
                store: self.describe(),
                message: format!("invalid key `{key}`"),
            });
        }
        Ok(B64.encode(format!("{}{key}", self.prefix)))
    }

    /// One call, with the token, re-authenticating once when it went stale.
    pub(super) async fn call(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call_timeout(path, body, None).await
    }

    pub(super) async fn call_timeout(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value, Failure> {
        let started = std::time::Instant::now();
        let result = self.call_untraced(path, body, timeout).await;
        // `-v`: the call, never the body (an authenticate body holds the password).
        let ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => tracing::debug!(ms, "etcd {path}"),
            Err(f) => tracing::debug!(ms, "etcd {path} failed: {f:?}"),
        }
        result
    }

    async fn call_untraced(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value, Failure> {
        let token = self.token.lock().unwrap().clone();
        match self.send(path, body, token.as_deref(), timeout).await {
            Err(f) if f.is_stale_token() && self.login.is_some() => {
                self.authenticate().await?;
                let token = self.token.lock().unwrap().clone();
                self.send(path, body, token.as_deref(), timeout).await
            }
            other => other,
        }
    }

    pub(super) async fn authenticate(&self) -> Result<(), Failure> {
        let Some(login) = &self.login else {
            return Ok(());
        };
        let body = json!({ "name": login.username, "password": login.password });
        let answer = self
            .send("/v3/auth/authenticate", &body, None, None)
            .await?;
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::Setup(
                    "etcd accepted the login but sent no token: is authentication enabled on the cluster?"
                        .into(),
                )
            })?;
        *self.token.lock().unwrap() = Some(token.to_string());
        Ok(())
    }

    /// POST `body` to `path` on the first endpoint that can be connected to.
    async fn send(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Value, Failure> {
        let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut unreachable = Vec::new();
        for i in 0..n {
            let index = (first + i) % n;
            let endpoint = &self.endpoints[index];
            let mut request = self
                .client
                .post(format!("{endpoint}{path}"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.clone());
            if let Some(token) = token {
                request = request.header(reqwest::header::AUTHORIZATION, token);
            }
            let limit = timeout.unwrap_or(self.timeout);
            if let Some(t) = timeout {
                request = request.timeout(t);
            }
            let response = match request.send().await {
                Ok(r) => r,
                // Nothing was sent: the next endpoint may do.
                Err(e) if e.is_connect() => {
                    unreachable.push(format!("{endpoint}: {}", reason(&e)));
                    continue;
                }
                // Sent, perhaps applied: trying elsewhere could apply it twice.
                Err(e) if e.is_timeout() => {
                    return Err(Failure::Broken {
                        endpoint: endpoint.clone(),
                        message: format!("no answer to {path} within {}", secs(limit)),
                    })
                }
                Err(e) => {
                    let why = reason(&e);
                    // TLS 1.3: a refused client certificate only shows on
                    // the first read, as an alert from the server.
                    if CLIENT_CERT_ALERTS.iter().any(|a| why.contains(a)) {
                        return Err(Failure::Refused {
                            endpoint: endpoint.clone(),
                            message: format!(
                                "etcd refused the client certificate (cert_file, key_file): {why}"
                            ),
                        });
                    }
                    return Err(Failure::Broken {
                        endpoint: endpoint.clone(),
                        message: format!("{path}: {why}"),
                    });
                }
            };
            self.current.store(index, Ordering::Relaxed);
            let status = response.status();
            let body = response.bytes().await.map_err(|e| Failure::Broken {
                endpoint: endpoint.clone(),
                message: if e.is_timeout() {
                    format!("no answer to {path} within {}", secs(limit))
                } else {
                    format!("{path}: {}", reason(&e))
                },
            })?;
            // A streaming call (keepalive) answers `{"result": …}` or
            // `{"error": …}`; take the first document.
            let parsed: Option<Value> = serde_json::Deserializer::from_slice(&body)
                .into_iter::<Value>()
                .next()
                .and_then(Result::ok);
            let parsed = match parsed {
                Some(Value::Object(mut o)) if o.contains_key("result") && o.len() == 1 => {
                    o.remove("result").unwrap_or(Value::Null)
                }
                Some(Value::Object(mut o))
                    if o.len() == 1 && o.get("error").is_some_and(Value::is_object) =>
                {
                    o.remove("error").unwrap_or(Value::Null)
                }
                Some(v) => v,
                None => {
                    let text = String::from_utf8_lossy(&body);
                    return Err(Failure::Broken {
                        endpoint: endpoint.clone(),
                        message: format!(
                            "{path} answered HTTP {status} with something that is not JSON: {}",
                            text.chars().take(200).collect::<String>()
                        ),
                    });
                }
            };
            let code = parsed.get("code").map(number).unwrap_or(0);
            if status.is_success() && code == 0 {
                return Ok(parsed);
            }
            let message = parsed
                .get("message")
                .or_else(|| parsed.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(Failure::Etcd {
                endpoint: endpoint.clone(),
                status: status.as_u16(),
                code,
                message: format!("{path}: {message}"),
            });
        }
        Err(Failure::Unreachable(format!(
            "cannot connect to any endpoint ({})",
            unreachable.join("; ")
        )))
    }
}

/// The gateway writes 64-bit numbers as strings, and leaves zeros out.
pub(super) fn number(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

pub(super) fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// TLS alerts a server sends when it does not accept our certificate.
const CLIENT_CERT_ALERTS: &[&str] = &[
    "received fatal alert: BadCertificate",
    "received fatal alert: CertificateRequired",
    "received fatal alert: UnknownCA",
    "received fatal alert: CertificateUnknown",
    "received fatal alert: CertificateExpired",
    "received fatal alert: AccessDenied",
];

/// Why a request failed, without reqwest's "error sending request for url
/// (…)" (the endpoint is named beside it anyway), with a hint for a server
/// certificate the client does not trust.
fn reason(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    let mut text = if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    };
    text = text.replace('\n', " ");
    if text.contains("invalid peer certificate") {
        text.push_str(" (is ca_file the CA that signed etcd's certificate?)");
    }
    text
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::super::EtcdStore;
    use super::*;
    use std::sync::Arc;

    fn inner(password: &str) -> Inner {
        let spec = EtcdSpec {
            endpoints: vec!["http://127.0.0.1:9".into()],
            prefix: "/changeover/shop/".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_env: None,
            lock_ttl: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        };
        let mut inner = Inner::new(&spec).expect("a client");
        inner.login = Some(Login {
            username: "deployer".into(),
            password: password.into(),
        });
        inner
    }

    fn etcd_failure(status: u16, code: i64, message: &str) -> Failure {
        Failure::Etcd {
            endpoint: "http://127.0.0.1:9".into(),
            status,
            code,
            message: message.into(),
        }
    }

    #[test]
    fn refusals_are_denied_and_outages_unavailable() {
        let inner = inner("pw");
        let denied = [
            etcd_failure(
                400,
                3,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            etcd_failure(401, 16, "etcdserver: invalid auth token"),
            etcd_failure(403, 7, "etcdserver: permission denied"),
            etcd_failure(400, 3, "etcdserver: user name is empty"),
        ];
        for f in denied {
            let e = inner.error(f);
            assert!(matches!(e, StoreError::Denied { .. }), "{e:?}");
            assert!(
                e.to_string().starts_with("etcd http://127.0.0.1:9: "),
                "{e}"
            );
        }
        let unavailable = [
            etcd_failure(503, 14, "etcdserver: no leader"),
            etcd_failure(500, 2, "etcdserver: request timed out"),
        ];
        for f in unavailable {
            let e = inner.error(f);
            assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        }
        let e = inner.error(Failure::Unreachable("cannot connect".into()));
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    }

    #[test]
    fn errors_never_carry_the_password_or_the_token() {
        let inner = inner("hunter2-secret");
        *inner.token.lock().unwrap() = Some("tok.en-123".into());
        let e = inner.error(etcd_failure(
            400,
            3,
            "echoing hunter2-secret and tok.en-123 back",
        ));
        let text = e.to_string();
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(!text.contains("tok.en-123"), "{text}");
        assert!(
            text.contains("<password>") && text.contains("<token>"),
            "{text}"
        );
        let debug = format!(
            "{:?}",
            EtcdStore {
                inner: Arc::new(inner)
            }
        );
        assert!(
            !debug.contains("hunter2-secret") && !debug.contains("tok.en-123"),
            "{debug}"
        );
    }

    #[test]
    fn a_missing_password_variable_is_denied_by_name() {
        let spec = EtcdSpec {
            endpoints: vec!["http://127.0.0.1:9".into()],
            prefix: "/changeover/shop/".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: Some("deployer".into()),
            password_env: Some("CHANGEOVER_UNIT_TEST_NO_SUCH_VARIABLE".into()),
            lock_ttl: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        };
        let Err(e) = Inner::new(&spec) else {
            panic!("connected without a password");
        };
        assert!(matches!(e, StoreError::Denied { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("CHANGEOVER_UNIT_TEST_NO_SUCH_VARIABLE"),
            "{e}"
        );
    }

    #[test]
    fn keys_are_under_the_prefix_and_checked() {
        let inner = inner("pw");
        let k = inner.key("pointers/production").unwrap();
        assert_eq!(
            B64.decode(k).unwrap(),
            b"/changeover/shop/pointers/production"
        );
        for bad in ["", "/abs", "a//b", "a/../b", "trailing/"] {
            assert!(inner.key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numbers_come_as_strings_or_not_at_all() {
        assert_eq!(number(&json!("42")), 42);
        assert_eq!(number(&json!(7)), 7);
        assert_eq!(number(&Value::Null), 0);
    }
}
