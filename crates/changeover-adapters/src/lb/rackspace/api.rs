//! Rackspace's HTTP APIs: identity v2.0 sign-in (API key) and the Cloud
//! Load Balancers v1.0 calls changeover makes, with their answers mapped
//! to [`LbError`]s.
//!
//! From the Cloud Load Balancers developer guide: a change is accepted with
//! 202 and applied later (the balancer is `PENDING_UPDATE` meanwhile); a
//! balancer takes one change at a time and answers 422 "immutable" to any
//! other; rate limits answer 413 with `Retry-After`; a 413 without it is an
//! absolute limit. A 401 means the token expired: sign in again, once.
//!
//! Secrets: the API key goes only into the sign-in body and the token only
//! into the `X-Auth-Token` header. Neither is ever put into an error, a log
//! line or an event; answers quoted in errors are the balancer's own text.

use changeover_core::lb::LbError;
use serde::Deserialize;
use std::time::Duration;

/// How long one HTTP exchange may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the credentials come from (names of environment variables).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username_env: String,
    pub api_key_env: String,
}

/// A signed-in session: the token and the region's endpoint.
#[derive(Clone)]
pub(super) struct Session {
    token: String,
    /// `https://ord.loadbalancers.api.rackspacecloud.com/v1.0/<tenant>`.
    pub(super) endpoint: String,
}

impl Session {
    pub(super) fn same(&self, other: &Session) -> bool {
        self.token == other.token
    }
}

/// The balancer as `GET /loadbalancers/{id}` shows it.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct LbView {
    pub(super) status: String,
    #[serde(default)]
    pub(super) nodes: Vec<Node>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Node {
    pub(super) id: u64,
    pub(super) address: String,
    pub(super) port: u16,
    pub(super) condition: String,
    #[serde(default)]
    pub(super) status: Option<String>,
    #[serde(default)]
    pub(super) weight: Option<u32>,
}

#[derive(Deserialize)]
struct LbEnvelope {
    #[serde(rename = "loadBalancer")]
    load_balancer: LbView,
}

pub(super) struct Api {
    http: reqwest::Client,
    identity_url: String,
    region: String,
    credentials: Credentials,
    /// For messages: `rackspace load balancer 1234 (ORD)`.
    pub(super) label: String,
}

/// What a call sends, for messages (never with secrets).
fn request_text(method: &str, path: &str) -> String {
    format!("{method} {path}")
}

impl Api {
    pub(super) fn new(
        identity_url: String,
        region: String,
        credentials: Credentials,
        label: String,
    ) -> Api {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with rustls");
        Api {
            http,
            identity_url,
            region,
            credentials,
            label,
        }
    }

    fn secret(&self, var: &str, key: &str) -> Result<String, LbError> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => Err(LbError::Other(format!(
                "{}: the environment variable {var} ({key}) is not set: export it before running changeover",
                self.label
            ))),
        }
    }

    /// Sign in with the API key (identity v2.0, `RAX-KSKEY:apiKeyCredentials`)
    /// and find the region's Cloud Load Balancers endpoint in the catalog.
    pub(super) async fn sign_in(&self) -> Result<Session, LbError> {
        let username = self.secret(&self.credentials.username_env, "username_env")?;
        let api_key = self.secret(&self.credentials.api_key_env, "api_key_env")?;
        let body = serde_json::json!({"auth": {"RAX-KSKEY:apiKeyCredentials": {"username": username, "apiKey": api_key}}});
        let url = format!("{}/tokens", self.identity_url);
        let request = request_text("POST", &url);
        let answer = self
            .http
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.unreachable(&url, &e))?;
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap_or_default();
        if status == 401 || status == 403 {
            return Err(LbError::Refused {
                endpoint: self.identity_url.clone(),
                request,
                answer: format!(
                    "{status}: the identity service refused the credentials in ${} / ${}: check them",
                    self.credentials.username_env, self.credentials.api_key_env
                ),
            });
        }
        if status != 200 {
            return Err(self.error_for(status, None, &text, &request));
        }
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LbError::Protocol {
                endpoint: self.identity_url.clone(),
                request: request.clone(),
                detail: format!("not JSON: {e}"),
            })?;
        let token = value["access"]["token"]["id"].as_str().map(str::to_string);
        let endpoint = value["access"]["serviceCatalog"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["type"] == "rax:load-balancer")
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .find(|e| {
                e["region"]
                    .as_str()
                    .is_some_and(|r| r.eq_ignore_ascii_case(&self.region))
            })
            .and_then(|e| {
                e["publicURL"]
                    .as_str()
                    .map(|u| u.trim_end_matches('/').to_string())
            });
        match (token, endpoint) {
            (Some(token), Some(endpoint)) => Ok(Session { token, endpoint }),
            (None, _) => Err(LbError::Protocol {
                endpoint: self.identity_url.clone(),
                request,
                detail: "no access.token.id in the answer".into(),
            }),
            (_, None) => Err(LbError::Refused {
                endpoint: self.identity_url.clone(),
                request,
                answer: format!(
                    "the service catalog has no Cloud Load Balancers (rax:load-balancer) endpoint in region {}: check `region`",
                    self.region
                ),
            }),
        }
    }

    /// `GET /loadbalancers/{id}`: the balancer's status and its nodes.
    pub(super) async fn get_lb(&self, s: &Session, id: u64) -> Result<LbView, Answer> {
        let path = format!("/loadbalancers/{id}");
        let answer = self.call(s, reqwest::Method::GET, &path, None).await?;
        if answer.status != 200 {
            return Err(Answer::Http(answer));
        }
        serde_json::from_str::<LbEnvelope>(&answer.body)
            .map(|e| e.load_balancer)
            .map_err(|e| {
                Answer::Failed(LbError::Protocol {
                    endpoint: s.endpoint.clone(),
                    request: request_text("GET", &path),
                    detail: format!("not a loadBalancer: {e}"),
                })
            })
    }

    /// `PUT /loadbalancers/{id}/nodes/{node}`; Ok once accepted (202).
    pub(super) async fn put_node(
        &self,
        s: &Session,
        id: u64,
        node: u64,
        body: &serde_json::Value,
    ) -> Result<(), Answer> {
        let path = format!("/loadbalancers/{id}/nodes/{node}");
        let answer = self
            .call(s, reqwest::Method::PUT, &path, Some(body.to_string()))
            .await?;
        match answer.status {
            200 | 202 | 204 => Ok(()),
            _ => Err(Answer::Http(answer)),
        }
    }

    async fn call(
        &self,
        s: &Session,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<HttpAnswer, Answer> {
        let url = format!("{}{path}", s.endpoint);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("X-Auth-Token", &s.token)
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        let answer = req
            .send()
            .await
            .map_err(|e| Answer::Failed(self.unreachable(&s.endpoint, &e)))?;
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = answer.text().await.unwrap_or_default();
        Ok(HttpAnswer {
            request: request_text(method.as_str(), path),
            endpoint: s.endpoint.clone(),
            status,
            retry_after,
            body,
        })
    }

    fn unreachable(&self, endpoint: &str, e: &reqwest::Error) -> LbError {
        // reqwest's message names the URL, which holds no secret.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        LbError::Unreachable {
            endpoint: endpoint.to_string(),
            message,
        }
    }

    /// An HTTP error answer as an [`LbError`].
    pub(super) fn error_for(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        body: &str,
        request: &str,
    ) -> LbError {
        let endpoint = self.label.clone();
        let said = said(body);
        match status {
            422 => LbError::Busy {
                endpoint,
                detail: format!("422 {said}"),
                retry_after,
            },
            413 if retry_after.is_some() => LbError::Throttled {
                endpoint,
                detail: format!("413 {said}"),
                retry_after,
            },
            500 | 502 | 503 | 504 => LbError::Unavailable {
                endpoint,
                detail: format!("{status} {said}"),
                retry_after,
            },
            _ => LbError::Refused {
                endpoint,
                request: request.to_string(),
                answer: format!("{status} {said}"),
            },
        }
    }
}

/// The balancer's own words from an error body: `message` (JSON faults),
/// else the start of the body.
fn said(body: &str) -> String {
    let v: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = v.as_ref().and_then(|v| {
        v["message"]
            .as_str()
            .or_else(|| v.as_object()?.values().find_map(|f| f["message"].as_str()))
            .map(str::to_string)
    });
    let text = message.unwrap_or_else(|| body.trim().to_string());
    let mut text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    if text.is_empty() {
        text = "(no body)".into();
    }
    text
}

pub(super) struct HttpAnswer {
    pub(super) request: String,
    pub(super) endpoint: String,
    pub(super) status: u16,
    pub(super) retry_after: Option<Duration>,
    pub(super) body: String,
}

/// A call that did not succeed: an HTTP answer to map (401 is signed in
/// again by the caller), or a failure already mapped.
pub(super) enum Answer {
    Http(HttpAnswer),
    Failed(LbError),
}
