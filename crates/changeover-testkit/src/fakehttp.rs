//! The plumbing the in-process API fakes share: a loopback HTTP/1 server on
//! a thread of its own (its own tokio runtime, so sync tests, async tests
//! and child processes can all use it), one request read whole, one answer.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// One request, read whole.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// One answer.
#[derive(Debug, Clone)]
pub struct FakeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl FakeResponse {
    pub fn json(status: u16, value: &serde_json::Value) -> FakeResponse {
        FakeResponse {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: value.to_string(),
        }
    }

    pub fn empty(status: u16) -> FakeResponse {
        FakeResponse {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> FakeResponse {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A running server; dropping it stops it and joins its thread.
pub struct FakeServer {
    pub port: u16,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    /// Bind a free loopback port and answer every request with `handler`.
    pub fn start<H>(name: &str, handler: H) -> FakeServer
    where
        H: Fn(FakeRequest) -> FakeResponse + Send + Sync + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("{name} fake: cannot bind a loopback port: {e}"));
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("a bound address").port();
        let (shutdown, mut shutdown_rx) = oneshot::channel::<()>();
        let handler = Arc::new(handler);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-fake-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the fake");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    loop {
                        tokio::select! {
                            _ = &mut shutdown_rx => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                };
                                let handler = handler.clone();
                                tokio::spawn(async move {
                                    let service = service_fn(move |req| {
                                        let handler = handler.clone();
                                        async move { Ok::<_, Infallible>(answer(&*handler, req).await) }
                                    });
                                    let _ = http1::Builder::new()
                                        .serve_connection(TokioIo::new(stream), service)
                                        .await;
                                });
                            }
                        }
                    }
                });
            })
            .expect("a thread for the fake");
        FakeServer {
            port,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn answer<H>(handler: &H, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>>
where
    H: Fn(FakeRequest) -> FakeResponse,
{
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let r = handler(FakeRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body,
    });
    let mut out = Response::builder().status(r.status);
    for (k, v) in &r.headers {
        out = out.header(k, v);
    }
    out.body(Full::new(Bytes::from(r.body)))
        .expect("a valid response")
}
