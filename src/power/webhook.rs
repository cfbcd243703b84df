//! The `webhook` power type: plain HTTP calls to URLs the operator provides (a smart plug, a
//! home-made relay board, a cloud API behind a small proxy).
//!
//! Parameters (the machine's power parameters):
//! - `on_url`, `off_url`: power on is `POST on_url` (no body); power off is `POST off_url` with
//!   the JSON body `{"mode": "soft"}` or `{"mode": "hard"}` from the command;
//! - `cycle_url` (optional): power cycle is `POST cycle_url`; without it, a cycle is a hard off
//!   followed by an on;
//! - `query_url` (optional): the power state is `GET query_url`, whose body is matched against
//!   `on_regex` (default `(?i)\bon\b`) and `off_regex` (default `(?i)\boff\b`): exactly one
//!   matching gives on or off, anything else unknown. Without a query URL the state is unknown;
//! - credentials, both optional and exclusive: `token`, a bearer token, or `user` with
//!   `password` for HTTP basic authentication; secrets only as references, `{"env": NAME}` or
//!   `{"file": PATH}`, resolved at every call;
//! - `verify_tls`: `true` (default); `false` accepts self-signed certificates for this machine.
//!
//! Every call has a timeout (10 s). Errors name the driver and the URL's host (`host:port`),
//! show only the URL's path (never its user info or query string) and never a secret.

use super::{PowerDriver, PowerError, PowerFuture, PowerReport, PowerTarget};
use crate::config::SecretRef;
use crate::model::{PowerCommand, PowerOffMode, PowerState};
use reqwest::{Method, Url};
use serde_json::Value;
use std::time::Duration;

/// How long one HTTP call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

const DEFAULT_ON_REGEX: &str = r"(?i)\bon\b";
const DEFAULT_OFF_REGEX: &str = r"(?i)\boff\b";

/// Drives machines through HTTP calls.
pub struct WebhookDriver {
    timeout: Duration,
}

impl Default for WebhookDriver {
    fn default() -> Self {
        WebhookDriver {
            timeout: CALL_TIMEOUT,
        }
    }
}

impl WebhookDriver {
    /// A driver with `timeout` per call instead of 10 s.
    #[cfg(test)]
    pub fn with_timeout(timeout: Duration) -> Self {
        WebhookDriver { timeout }
    }
}

impl PowerDriver for WebhookDriver {
    fn power_type(&self) -> &'static str {
        "webhook"
    }

    fn execute<'a>(
        &'a self,
        target: &'a PowerTarget,
        command: PowerCommand,
    ) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move {
            let hook = Hook::from_target(target)?;
            match command {
                PowerCommand::On => {
                    self.call(&hook, Method::POST, &hook.on_url, None).await?;
                    Ok(PowerReport {
                        state: PowerState::On,
                        note: None,
                    })
                }
                PowerCommand::Off(PowerOffMode::Hard) => {
                    self.call(&hook, Method::POST, &hook.off_url, Some(mode("hard")))
                        .await?;
                    Ok(PowerReport {
                        state: PowerState::Off,
                        note: None,
                    })
                }
                PowerCommand::Off(PowerOffMode::Soft) => {
                    self.call(&hook, Method::POST, &hook.off_url, Some(mode("soft")))
                        .await?;
                    // A soft power-off asks the operating system to shut down: it may take a while.
                    let state = match &hook.query_url {
                        Some(_) => self.status(&hook).await?,
                        None => PowerState::Unknown,
                    };
                    let note = (state != PowerState::Off).then(|| {
                        format!(
                            "webhook {}: soft power-off requested; the machine shuts down by itself",
                            hook.host
                        )
                    });
                    Ok(PowerReport { state, note })
                }
                PowerCommand::Cycle => {
                    match &hook.cycle_url {
                        Some(url) => {
                            self.call(&hook, Method::POST, url, None).await?;
                        }
                        None => {
                            self.call(&hook, Method::POST, &hook.off_url, Some(mode("hard")))
                                .await?;
                            self.call(&hook, Method::POST, &hook.on_url, None).await?;
                        }
                    }
                    Ok(PowerReport {
                        state: PowerState::On,
                        note: None,
                    })
                }
            }
        })
    }

    fn query<'a>(&'a self, target: &'a PowerTarget) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move {
            let hook = Hook::from_target(target)?;
            let state = match &hook.query_url {
                Some(_) => self.status(&hook).await?,
                None => PowerState::Unknown,
            };
            Ok(PowerReport { state, note: None })
        })
    }
}

fn mode(mode: &str) -> Value {
    serde_json::json!({ "mode": mode })
}

impl WebhookDriver {
    async fn status(&self, hook: &Hook) -> Result<PowerState, PowerError> {
        let Some(url) = &hook.query_url else {
            return Ok(PowerState::Unknown);
        };
        let body = self.call(hook, Method::GET, url, None).await?;
        Ok(state_of(&body, &hook.on_regex, &hook.off_regex))
    }

    /// One HTTP call; its body on a 2xx answer, else an error naming the host, the method, the
    /// URL's path and the status, with every secret scrubbed.
    async fn call(
        &self,
        hook: &Hook,
        method: Method,
        url: &Url,
        body: Option<Value>,
    ) -> Result<String, PowerError> {
        let mut secrets = Vec::new();
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .danger_accept_invalid_certs(!hook.verify_tls)
            .build()
            .map_err(|error| hook.error(format!("cannot build an HTTP client: {error}")))?;
        let mut request = client.request(method.clone(), url.clone());
        match &hook.auth {
            Auth::None => {}
            Auth::Bearer(token) => {
                let token = hook
                    .stored
                    .resolve(token)
                    .map_err(|error| hook.error(format!("token: {error}")))?;
                request = request.bearer_auth(&token);
                secrets.push(token);
            }
            Auth::Basic(user, password) => {
                let password = hook
                    .stored
                    .resolve(password)
                    .map_err(|error| hook.error(format!("password: {error}")))?;
                request = request.basic_auth(user, Some(&password));
                secrets.push(password);
            }
        }
        if let Some(password) = url.password() {
            secrets.push(password.to_string());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let what = format!("{method} {}", url.path());
        tracing::debug!(host = %hook.host, call = %what, "webhook");
        let scrub = |text: String| {
            secrets
                .iter()
                .filter(|secret| !secret.is_empty())
                .fold(text, |text, secret| {
                    text.replace(secret.as_str(), "********")
                })
        };
        let send = async {
            let response = request.send().await?;
            let status = response.status();
            let text = response.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        };
        let (status, text) = match send.await {
            Ok(answer) => answer,
            Err(error) if error.is_timeout() => {
                return Err(PowerError::Timeout {
                    driver: "webhook".into(),
                    target: hook.host.clone(),
                    seconds: self.timeout.as_secs(),
                })
            }
            Err(error) if error.is_connect() => {
                return Err(hook.error(scrub(format!("cannot connect: {}", cause(&error)))))
            }
            Err(error) => {
                return Err(hook.error(scrub(format!("{what} failed: {}", cause(&error)))))
            }
        };
        if status.is_success() {
            return Ok(text);
        }
        let line = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .unwrap_or("(empty body)");
        let line: String = line.chars().take(200).collect();
        Err(hook.error(scrub(format!(
            "{what} answered {}: {line}",
            status.as_u16()
        ))))
    }
}

/// The innermost cause of a reqwest error ("Connection refused (os error 111)"); reqwest's own
/// message holds the full URL, which may carry credentials.
fn cause(error: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = error;
    while let Some(next) = source.source() {
        source = next;
    }
    if std::ptr::eq(
        source as *const dyn std::error::Error as *const u8,
        error as *const reqwest::Error as *const u8,
    ) {
        // No inner cause: reqwest's message without the URL.
        return error_without_url(error);
    }
    source.to_string()
}

fn error_without_url(error: &reqwest::Error) -> String {
    if error.is_body() || error.is_decode() {
        "the answer could not be read".into()
    } else if error.is_redirect() {
        "too many redirects".into()
    } else if error.is_builder() {
        "the request could not be built".into()
    } else {
        "the request failed".into()
    }
}

/// On when only the on regex matches, off when only the off regex does, else unknown.
fn state_of(body: &str, on: &regex::Regex, off: &regex::Regex) -> PowerState {
    match (on.is_match(body), off.is_match(body)) {
        (true, false) => PowerState::On,
        (false, true) => PowerState::Off,
        _ => PowerState::Unknown,
    }
}

enum Auth {
    None,
    Bearer(SecretRef),
    Basic(String, SecretRef),
}

/// One machine's webhook, from its parameters.
struct Hook {
    /// `host` or `host:port` of the on URL; names the machine's power endpoint in errors.
    host: String,
    on_url: Url,
    off_url: Url,
    cycle_url: Option<Url>,
    query_url: Option<Url>,
    on_regex: regex::Regex,
    off_regex: regex::Regex,
    auth: Auth,
    /// What a `{"store": ..}` token or password reads (see `PowerTarget::stored`).
    stored: super::StoredSecrets,
    verify_tls: bool,
}

impl Hook {
    fn from_target(target: &PowerTarget) -> Result<Hook, PowerError> {
        let params = &target.params;
        let invalid = |name: &str, message: String| PowerError::Driver {
            driver: "webhook".into(),
            target: name.to_string(),
            message,
        };
        let machine_fail = |message: String| invalid(&target.machine, message);
        let on_url = required_url(params, "on_url").map_err(machine_fail)?;
        let host = host_of(&on_url);
        let fail = |message: String| invalid(&host, message);
        let off_url = required_url(params, "off_url").map_err(fail)?;
        let cycle_url = optional_url(params, "cycle_url").map_err(fail)?;
        let query_url = optional_url(params, "query_url").map_err(fail)?;
        let on_regex = regex_param(params, "on_regex", DEFAULT_ON_REGEX).map_err(fail)?;
        let off_regex = regex_param(params, "off_regex", DEFAULT_OFF_REGEX).map_err(fail)?;
        let token = super::optional_secret(params, "token").map_err(fail)?;
        let password = super::optional_secret(params, "password").map_err(fail)?;
        let user = super::optional_string(params, "user").map_err(fail)?;
        let auth = match (token, user, password) {
            (None, None, None) => Auth::None,
            (Some(token), None, None) => Auth::Bearer(token),
            (None, Some(user), Some(password)) => Auth::Basic(user, password),
            (None, Some(_), None) => {
                return Err(fail("`user` is set but `password` is not".into()))
            }
            (None, None, Some(_)) => {
                return Err(fail("`password` is set but `user` is not".into()))
            }
            (Some(_), _, _) => {
                return Err(fail(
                    "give either a `token` or `user` and `password`, not both".into(),
                ))
            }
        };
        let verify_tls = match params.get("verify_tls") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(value)) => *value,
            Some(Value::String(value)) => match value.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                other => return Err(fail(format!("verify_tls `{other}` is not true or false"))),
            },
            Some(_) => return Err(fail("verify_tls must be true or false".into())),
        };
        Ok(Hook {
            host,
            on_url,
            off_url,
            cycle_url,
            query_url,
            on_regex,
            off_regex,
            auth,
            stored: target.stored.clone(),
            verify_tls,
        })
    }

    fn error(&self, message: String) -> PowerError {
        PowerError::Driver {
            driver: "webhook".into(),
            target: self.host.clone(),
            message,
        }
    }
}

/// `host` or `host:port`, never the URL's user info.
fn host_of(url: &Url) -> String {
    // IPv6 hosts come with their brackets.
    let host = url.host_str().unwrap_or("?").to_string();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

fn parse_url(key: &str, text: &str) -> Result<Url, String> {
    // The message never repeats the URL: it may hold credentials.
    let url = Url::parse(text.trim()).map_err(|error| format!("`{key}` is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "`{key}` must be an http:// or https:// URL with a host"
        ));
    }
    Ok(url)
}

fn required_url(params: &Value, key: &str) -> Result<Url, String> {
    match params.get(key) {
        Some(Value::String(text)) if !text.trim().is_empty() => parse_url(key, text),
        _ => Err(format!("no `{key}`: set the power parameter `{key}`")),
    }
}

fn optional_url(params: &Value, key: &str) -> Result<Option<Url>, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => parse_url(key, text).map(Some),
        Some(_) => Err(format!("`{key}` must be a URL")),
    }
}

fn regex_param(params: &Value, key: &str, default: &str) -> Result<regex::Regex, String> {
    let text = match params.get(key) {
        None | Some(Value::Null) => default,
        Some(Value::String(text)) => text.as_str(),
        Some(_) => return Err(format!("`{key}` must be a regular expression")),
    };
    regex::Regex::new(text).map_err(|error| format!("`{key}` is not a valid regex: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(params: Value) -> PowerTarget {
        PowerTarget {
            machine: "node-1".into(),
            power_type: "webhook".into(),
            params,
            stored: Default::default(),
        }
    }

    #[test]
    fn the_default_regexes_tell_on_from_off() {
        let on = regex::Regex::new(DEFAULT_ON_REGEX).unwrap();
        let off = regex::Regex::new(DEFAULT_OFF_REGEX).unwrap();
        assert_eq!(state_of("power: on", &on, &off), PowerState::On);
        assert_eq!(state_of("Power: OFF\n", &on, &off), PowerState::Off);
        assert_eq!(state_of("booting", &on, &off), PowerState::Unknown);
        assert_eq!(state_of("on or off", &on, &off), PowerState::Unknown);
    }

    #[test]
    fn credentials_in_urls_and_inline_tokens_stay_out_of_errors() {
        let error = Hook::from_target(&target(serde_json::json!({
            "on_url": "https://admin:hunter2@plug.example:8443/on",
            "off_url": "https://plug.example/off",
            "token": "s3cret-token"
        })))
        .err()
        .expect("refused");
        let text = error.to_string();
        assert!(
            text.starts_with("webhook plug.example:8443: the token must be a reference"),
            "{text}"
        );
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret-token"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts connections and never answers.
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let driver = WebhookDriver::with_timeout(Duration::from_secs(1));
        let started = std::time::Instant::now();
        let error = driver
            .execute(
                &target(serde_json::json!({
                    "on_url": format!("http://127.0.0.1:{port}/on"),
                    "off_url": format!("http://127.0.0.1:{port}/off"),
                })),
                PowerCommand::On,
            )
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("webhook 127.0.0.1:{port}: no answer within 1 s")
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        server.abort();
    }
}
