//! The HTTP side: the accept loop, one request's parsing (query, token,
//! body), the request log, the checks every endpoint shares (outage,
//! datacenter, ACL token, clean path), routing, blocking queries and the
//! answers' headers.

use super::state::{Shared, State};
use super::url::{clean_path, find_token, parse_query, percent_decode, query_escape, redact_token};
use super::{catalog, duration, kv, session, txn, LoggedRequest};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Blocking queries wait this long when `wait` is not given (Consul's default).
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// And never longer than this (Consul's cap).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// What a client agent answers while the servers have no leader.
pub(crate) const NO_LEADER: &str = "rpc error making call: No cluster leader";
/// The leader's address, as `/v1/status/leader` gives it.
pub(crate) const LEADER: &str = "127.0.0.1:8300";

/// Serve until `shutdown` fires (or its sender is dropped).
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener)
        .expect("consul fake: the listener cannot join the runtime");
    let reaper = tokio::spawn(session::reaper(shared.clone()));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    // A client that goes away mid-request (or fails the
                    // TLS handshake) is its own business.
                    match tls {
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        }
    }
    reaper.abort();
}

/// A TLS acceptor presenting `files`' server certificate.
pub(crate) fn tls_acceptor(files: &crate::tls::TlsFiles) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.server_cert)
        .expect("consul fake: read the server certificate")
        .collect::<Result<_, _>>()
        .expect("consul fake: parse the server certificate");
    let key = PrivateKeyDer::from_pem_file(&files.server_key).expect("consul fake: the server key");
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("consul fake: a TLS server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Whom the request's token makes the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// ACLs off, or the configured token.
    Allowed,
    /// ACLs on and no token: the anonymous token, which may do nothing.
    Anonymous,
    /// ACLs on and a token that is not the configured one.
    UnknownToken,
}

/// One request, parsed.
pub(crate) struct Req {
    pub method: Method,
    /// As received (percent-encoding kept).
    pub path: String,
    /// Decoded query pairs, in order.
    pub params: Vec<(String, String)>,
    pub access: Access,
    pub body: Bytes,
}

impl Req {
    /// Whether the parameter is present at all (Consul's `params[x]; ok`).
    pub fn has(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }

    /// The first value of the parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Go's `url.Values.Encode()`: sorted by key, values in order.
    pub fn encode_params(&self) -> String {
        let mut pairs: Vec<&(String, String)> = self.params.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// One answer, before it becomes a hyper response.
pub(crate) struct Resp {
    pub status: StatusCode,
    pub content_type: Option<&'static str>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// JSON as Consul writes it: compact, or indented by four spaces with a
    /// newline under `?pretty`.
    pub fn json(req: &Req, value: &Value) -> Resp {
        let body = if req.has("pretty") {
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(value, &mut ser).expect("JSON to memory");
            out.push(b'\n');
            out
        } else {
            serde_json::to_vec(value).expect("JSON to memory")
        };
        Resp {
            status: StatusCode::OK,
            content_type: Some("application/json"),
            headers: Vec::new(),
            body,
        }
    }

    /// A plain-text answer (Go's net/http sniffs it as this type).
    pub fn text(status: StatusCode, body: impl Into<String>) -> Resp {
        Resp {
            status,
            content_type: Some("text/plain; charset=utf-8"),
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    pub fn empty(status: StatusCode) -> Resp {
        Resp {
            status,
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The headers of a read endpoint's answer.
    pub fn with_index(mut self, index: u64) -> Resp {
        self.headers.push(("X-Consul-Index", index.to_string()));
        self.headers
            .push(("X-Consul-KnownLeader", "true".to_string()));
        self.headers.push(("X-Consul-LastContact", "0".to_string()));
        self
    }

    fn into_hyper(self, acl_policy: &'static str) -> Response<Full<Bytes>> {
        let mut builder = Response::builder()
            .status(self.status)
            .header("X-Consul-Default-ACL-Policy", acl_policy);
        if let Some(ct) = self.content_type {
            builder = builder.header("Content-Type", ct);
        }
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(Bytes::from(self.body)))
            .expect("valid response parts")
    }
}

/// `?index` and `?wait` of a blocking query.
pub(crate) struct Blocking {
    pub min_index: u64,
    pub wait: Duration,
}

/// Parses them as Consul does: 400 "Invalid wait time" / "Invalid index".
pub(crate) fn blocking_params(req: &Req) -> Result<Blocking, Resp> {
    let mut wait = DEFAULT_WAIT;
    if let Some(w) = req.get("wait") {
        let d = duration::parse_go_duration(w)
            .map_err(|_| Resp::text(StatusCode::BAD_REQUEST, "Invalid wait time"))?;
        if d > 0 {
            wait = Duration::from_nanos(d as u64).min(MAX_WAIT);
        }
    }
    let mut min_index = 0;
    if let Some(i) = req.get("index") {
        min_index = i
            .parse::<u64>()
            .map_err(|_| Resp::text(StatusCode::BAD_REQUEST, "Invalid index"))?;
    }
    Ok(Blocking { min_index, wait })
}

/// Runs `query` until its index is past `?index` or `?wait` has elapsed,
/// woken by every write (no polling). Indexes are never below 1.
pub(crate) async fn block<T>(
    shared: &Shared,
    blocking: &Blocking,
    mut query: impl FnMut(&State) -> (u64, T),
) -> (u64, T) {
    let mut changes = shared.subscribe();
    let deadline = tokio::time::Instant::now() + blocking.wait;
    loop {
        let (index, value) = query(&shared.lock());
        let index = index.max(1);
        if blocking.min_index == 0 || index > blocking.min_index {
            return (index, value);
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out (or the fake is going away): the data as it is.
            _ => return (index, value),
        }
    }
}

/// The 403 that Consul gives the anonymous token for an action it lacks.
pub(crate) fn permission_denied(resource: &str, level: &str, name: &str) -> Resp {
    let on = if name.is_empty() {
        String::new()
    } else {
        format!(" on {}", serde_json::Value::String(name.to_string()))
    };
    Resp::text(
        StatusCode::FORBIDDEN,
        format!(
            "Permission denied: anonymous token lacks permission '{resource}:{level}'{on}. \
             The anonymous token is used implicitly when a request does not specify a token."
        ),
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let acl_policy = if shared.config.acl_token.is_some() {
        "deny"
    } else {
        "allow"
    };
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Resp::text(StatusCode::BAD_REQUEST, format!("body read failed: {e}"))
                .into_hyper(acl_policy)
        }
    };
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let params = parse_query(&raw_query);
    let token = find_token(&params, &parts.headers);
    let access = match (&shared.config.acl_token, &token) {
        (None, _) => Access::Allowed,
        (Some(_), None) => Access::Anonymous,
        (Some(want), Some(got)) if want == got => Access::Allowed,
        (Some(_), Some(_)) => Access::UnknownToken,
    };
    let had_token = token.is_some() && access == Access::Allowed;
    shared.lock().log.push(LoggedRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        query: redact_token(&raw_query),
        had_token,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let req = Req {
        method: parts.method,
        path,
        params,
        access,
        body,
    };
    dispatch(&shared, &req).await.into_hyper(acl_policy)
}

async fn dispatch(shared: &Shared, req: &Req) -> Resp {
    // Go's ServeMux answers a path that is not clean with a redirect to the
    // clean one, before any handler runs: `/v1/kv//a` is not key "/a".
    let clean = clean_path(&req.path);
    if clean != req.path {
        return redirect(req, &clean);
    }
    let leader = req.path == "/v1/status/leader";
    if let Some(dc) = req.get("dc") {
        if !dc.is_empty() && dc != shared.config.datacenter {
            return Resp::text(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter");
        }
    }
    if shared.lock().outage {
        if leader {
            // No leader: the endpoint answers, with no address.
            return Resp::json(req, &Value::String(String::new()));
        }
        return Resp::text(StatusCode::INTERNAL_SERVER_ERROR, NO_LEADER);
    }
    if req.access == Access::UnknownToken && !leader {
        return Resp::text(StatusCode::FORBIDDEN, "ACL not found");
    }
    let route = route(&req.path);
    let Some((allowed, endpoint)) = route else {
        return Resp::text(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    if req.method == Method::OPTIONS {
        let mut resp = Resp::empty(StatusCode::OK);
        resp.headers
            .push(("Allow", format!("OPTIONS,{}", allowed.join(","))));
        return resp;
    }
    if !allowed.iter().any(|m| *m == req.method.as_str()) {
        let mut resp = Resp::text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed", req.method),
        );
        resp.headers.push(("Allow", allowed.join(",")));
        return resp;
    }
    match endpoint {
        Endpoint::Leader => Resp::json(req, &Value::String(LEADER.to_string())),
        Endpoint::Kv(key) => kv::handle(shared, req, key).await,
        Endpoint::SessionCreate => session::create(shared, req),
        Endpoint::SessionDestroy(id) => session::destroy(shared, req, id),
        Endpoint::SessionRenew(id) => session::renew(shared, req, id),
        Endpoint::SessionInfo(id) => session::info(shared, req, id).await,
        Endpoint::SessionList => session::list(shared, req, None).await,
        Endpoint::SessionNode(node) => session::list(shared, req, Some(node)).await,
        Endpoint::Health(service) => catalog::health_service(shared, req, service).await,
        Endpoint::Catalog(service) => catalog::catalog_service(shared, req, service).await,
        Endpoint::Txn => txn::handle(shared, req),
    }
}

enum Endpoint {
    Leader,
    Kv(String),
    SessionCreate,
    SessionDestroy(String),
    SessionRenew(String),
    SessionInfo(String),
    SessionList,
    SessionNode(String),
    Health(String),
    Catalog(String),
    Txn,
}

/// The methods an endpoint takes (as Consul registers them) and the
/// endpoint with its decoded path argument.
fn route(path: &str) -> Option<(&'static [&'static str], Endpoint)> {
    const GET: &[&str] = &["GET"];
    const PUT: &[&str] = &["PUT"];
    let tail = |prefix: &str| path.strip_prefix(prefix).map(percent_decode);
    if path == "/v1/status/leader" {
        return Some((GET, Endpoint::Leader));
    }
    if let Some(key) = tail("/v1/kv/") {
        return Some((&["GET", "PUT", "DELETE"], Endpoint::Kv(key)));
    }
    if path == "/v1/txn" {
        return Some((PUT, Endpoint::Txn));
    }
    if path == "/v1/session/create" {
        return Some((PUT, Endpoint::SessionCreate));
    }
    if path == "/v1/session/list" {
        return Some((GET, Endpoint::SessionList));
    }
    if let Some(id) = tail("/v1/session/destroy/") {
        return Some((PUT, Endpoint::SessionDestroy(id)));
    }
    if let Some(id) = tail("/v1/session/renew/") {
        return Some((PUT, Endpoint::SessionRenew(id)));
    }
    if let Some(id) = tail("/v1/session/info/") {
        return Some((GET, Endpoint::SessionInfo(id)));
    }
    if let Some(node) = tail("/v1/session/node/") {
        return Some((GET, Endpoint::SessionNode(node)));
    }
    if let Some(service) = tail("/v1/health/service/") {
        return Some((GET, Endpoint::Health(service)));
    }
    if let Some(service) = tail("/v1/catalog/service/") {
        return Some((GET, Endpoint::Catalog(service)));
    }
    None
}

/// Go's ServeMux redirect (301, Location keeps the query).
fn redirect(req: &Req, clean: &str) -> Resp {
    let query = req.encode_params();
    let location = if query.is_empty() {
        clean.to_string()
    } else {
        format!("{clean}?{query}")
    };
    let mut resp = Resp::empty(StatusCode::MOVED_PERMANENTLY);
    if req.method == Method::GET || req.method == Method::HEAD {
        resp.content_type = Some("text/html; charset=utf-8");
    }
    if req.method == Method::GET {
        resp.body = format!("<a href=\"{location}\">Moved Permanently</a>.\n\n").into_bytes();
    }
    resp.headers.push(("Location", location));
    resp
}
