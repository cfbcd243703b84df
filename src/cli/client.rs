//! The HTTP client every controller command uses: HTTPS to the operator API, the controller's
//! certificate pinned (`trust.rs`).

use super::trust::{client_config, Pin, PinnedVerifier};
use super::Connection;
use anyhow::{anyhow, Context};
use fleet::controller::API_URL_FILE;
use fleet::services::token::read_token_file;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const DEFAULT_SERVER: &str = "https://127.0.0.1:5240";

pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
    pin: Pin,
    verifier: Arc<PinnedVerifier>,
    /// Whether a first-use certificate has been remembered (once per run).
    trusted: AtomicBool,
}

/// An error the controller answered with.
#[derive(Debug)]
pub struct ApiFailure {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    pub fn new(connection: &Connection) -> anyhow::Result<Client> {
        let state_dir_url = read_first_line(&connection.state_dir.join(API_URL_FILE));
        let server = connection
            .server
            .clone()
            .or_else(|| state_dir_url.clone())
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let server = server.trim_end_matches('/').to_string();
        let token = connection
            .token
            .clone()
            .or_else(|| read_token_file(&connection.state_dir));
        let pin = Pin::find(
            &server,
            connection.tls_fingerprint.as_deref(),
            &connection.state_dir,
            state_dir_url.as_deref(),
        )?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedVerifier::new(&pin, provider.clone()));
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .use_preconfigured_tls(client_config(verifier.clone(), provider)?)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            server,
            token,
            pin,
            verifier,
            trusted: AtomicBool::new(false),
        })
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<Result<T, ApiFailure>> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<Result<T, ApiFailure>> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<Result<T, ApiFailure>> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    /// Calls the API. The outer error is "could not talk to the controller"; the inner one is
    /// the controller's answer.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<Result<T, ApiFailure>> {
        let url = format!("{}/api/v1{path}", self.server);
        // Who acts is the token's name, as the controller knows it: nothing else is sent.
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        self.trust_on_first_use()?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if status.is_success() {
            let value = serde_json::from_str(&text).with_context(|| {
                format!("the controller's answer to {path} is not what this fleet expects")
            })?;
            return Ok(Ok(value));
        }
        Ok(Err(failure_of(status, &text)))
    }
}

impl Client {
    /// Opens a server-sent event stream (`GET /api/v1{path}`), sending `Last-Event-ID` when
    /// given. The outer error is "could not talk to the controller"; the inner one is the
    /// controller's refusal. The answer's body is the stream: its connection has no overall
    /// time limit, but one read may wait at most `idle` (the server sends keep-alive comments).
    pub async fn open_stream(
        &self,
        path: &str,
        last_event_id: Option<i64>,
        idle: std::time::Duration,
    ) -> anyhow::Result<Result<reqwest::Response, ApiFailure>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(idle)
            .use_preconfigured_tls(client_config(self.verifier.clone(), provider)?)
            .build()
            .context("cannot build the HTTP client")?;
        let url = format!("{}/api/v1{path}", self.server);
        let mut request = http
            .get(&url)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        self.trust_on_first_use()?;
        let status = response.status();
        if status.is_success() {
            return Ok(Ok(response));
        }
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        Ok(Err(failure_of(status, &text)))
    }

    /// Why the call failed before any answer: a certificate other than the pinned one, or no
    /// controller there.
    fn unreachable(&self, error: &reqwest::Error) -> anyhow::Error {
        if let (Some(presented), Some(pinned)) = (self.verifier.presented(), self.verifier.pinned())
        {
            if presented != pinned {
                return anyhow!(self.pin.refusal(&presented, &pinned));
            }
        }
        anyhow!(
            "cannot reach the controller at {}: {}; is `fleet serve` running? (--server or FLEET_SERVER)",
            self.server,
            root_cause(error)
        )
    }

    /// The controller answered over TLS: if it was not known yet, its certificate is now.
    fn trust_on_first_use(&self) -> anyhow::Result<()> {
        if self.pin.fingerprint.is_some() || self.trusted.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        match self.verifier.pinned() {
            Some(accepted) => self.pin.trust_first_use(&accepted),
            None => Ok(()),
        }
    }
}

fn failure_of(status: StatusCode, text: &str) -> ApiFailure {
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let error = parsed.as_ref().and_then(|value| value.get("error"));
    let field = |key: &str| {
        error
            .and_then(|error| error.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    ApiFailure {
        code: field("code").unwrap_or_else(|| status.as_u16().to_string()),
        message: field("message")
            .unwrap_or_else(|| format!("the controller answered {status}: {text}")),
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

fn read_first_line(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .next()
        .map(|line| line.trim().to_string())
        .filter(|line| !line.is_empty())
}
