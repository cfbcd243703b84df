//! The `redfish` power type: a BMC's Redfish API over HTTPS (reqwest with rustls), basic auth.
//!
//! Parameters (the machine's power parameters):
//! - `address`: the BMC, `host`, `host:port` or a URL (`https://bmc:8443`, `http://...`); a bare
//!   host means `https://`;
//! - `user`; `password`: a reference only, `{"env": NAME}` or `{"file": PATH}`, resolved at every
//!   call, sent in the basic-auth header, never in an error;
//! - `system_id`: the system's `Id` or `Name` under `/redfish/v1/Systems`; without it the BMC
//!   must have exactly one system;
//! - `verify_tls`: `false` accepts self-signed certificates; default `true`.
//!
//! Power on and power cycle first set a one-time network boot (`BootSourceOverrideTarget: Pxe`,
//! `Once`), then reset the system (`On` / `ForceRestart`); power off is `ForceOff` (hard) or
//! `GracefulShutdown` (soft). Every request has a timeout.

use super::{PowerDriver, PowerError, PowerFuture, PowerReport, PowerTarget};
use crate::config::SecretRef;
use crate::model::{PowerCommand, PowerOffMode, PowerState};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// How long one request may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Drives BMCs through their Redfish API.
pub struct RedfishDriver {
    timeout: Duration,
}

impl Default for RedfishDriver {
    fn default() -> Self {
        RedfishDriver {
            timeout: CALL_TIMEOUT,
        }
    }
}

impl PowerDriver for RedfishDriver {
    fn power_type(&self) -> &'static str {
        "redfish"
    }

    fn execute<'a>(
        &'a self,
        target: &'a PowerTarget,
        command: PowerCommand,
    ) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move {
            let bmc = Bmc::connect(target, self.timeout)?;
            let system = bmc.system().await?;
            if matches!(command, PowerCommand::On | PowerCommand::Cycle) {
                let boot = json!({"Boot": {
                    "BootSourceOverrideTarget": "Pxe",
                    "BootSourceOverrideEnabled": "Once"
                }});
                bmc.call(Method::PATCH, &system.path, Some(&boot))
                    .await
                    .map_err(|error| match error {
                        PowerError::Driver {
                            driver,
                            target,
                            message,
                        } => PowerError::Driver {
                            driver,
                            target,
                            message: format!(
                                "setting the next boot to the network failed: {message}"
                            ),
                        },
                        other => other,
                    })?;
            }
            let (reset, state) = match command {
                PowerCommand::On => ("On", PowerState::On),
                PowerCommand::Off(PowerOffMode::Hard) => ("ForceOff", PowerState::Off),
                PowerCommand::Off(PowerOffMode::Soft) => ("GracefulShutdown", PowerState::Unknown),
                PowerCommand::Cycle => ("ForceRestart", PowerState::On),
            };
            let action = format!("{}/Actions/ComputerSystem.Reset", system.path);
            bmc.call(Method::POST, &action, Some(&json!({"ResetType": reset})))
                .await?;
            if state != PowerState::Unknown {
                return Ok(PowerReport { state, note: None });
            }
            // A graceful shutdown asks the operating system to stop: it may take a while.
            let state = bmc.power_state(&system.path).await?;
            Ok(super::after_soft_off("redfish", &bmc.address, state))
        })
    }

    fn query<'a>(&'a self, target: &'a PowerTarget) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move {
            let bmc = Bmc::connect(target, self.timeout)?;
            let system = bmc.system().await?;
            let state = power_state_of(&bmc, &system.body)?;
            Ok(PowerReport { state, note: None })
        })
    }
}

/// A system found under `/redfish/v1/Systems`.
struct System {
    /// Its path on the BMC (`/redfish/v1/Systems/<id>`).
    path: String,
    body: Value,
}

/// One BMC's connection, from the machine's parameters.
struct Bmc {
    /// As the operator wrote it; names the BMC in errors.
    address: String,
    /// `scheme://host[:port]`, no trailing slash.
    base: String,
    user: Option<String>,
    password: Option<SecretRef>,
    /// What `password = {"store": ..}` reads (see `PowerTarget::stored`).
    stored: super::StoredSecrets,
    system_id: Option<String>,
    client: reqwest::Client,
    timeout: Duration,
}

impl Bmc {
    fn connect(target: &PowerTarget, timeout: Duration) -> Result<Bmc, PowerError> {
        let params = &target.params;
        let address = match params.get("address") {
            Some(Value::String(address)) if !address.trim().is_empty() => {
                address.trim().to_string()
            }
            _ => {
                return Err(driver_error(
                    &target.machine,
                    "no BMC address: set the power parameter `address`".into(),
                ))
            }
        };
        let fail = |message: String| driver_error(&address, message);
        let base = if address.contains("://") {
            address.trim_end_matches('/').to_string()
        } else {
            format!("https://{address}")
        };
        let base = match reqwest::Url::parse(&base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                base.trim_end_matches("/redfish/v1").to_string()
            }
            _ => return Err(fail(format!("`{address}` is not a host or URL"))),
        };
        let user = super::optional_string(params, "user").map_err(fail)?;
        let password = super::optional_secret(params, "password").map_err(fail)?;
        let system_id = match params.get("system_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if id.trim().is_empty() => None,
            Some(Value::String(id)) => Some(id.trim().to_string()),
            Some(_) => return Err(fail("`system_id` must be a string".into())),
        };
        let verify_tls = match params.get("verify_tls") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(value)) => *value,
            Some(Value::String(value)) => match value.trim() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                other => return Err(fail(format!("verify_tls `{other}` is not true or false"))),
            },
            Some(_) => return Err(fail("verify_tls must be true or false".into())),
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .danger_accept_invalid_certs(!verify_tls)
            .build()
            .map_err(|error| fail(format!("cannot set up the HTTP client: {error}")))?;
        Ok(Bmc {
            address,
            base,
            user,
            password,
            stored: target.stored.clone(),
            system_id,
            client,
            timeout,
        })
    }

    fn error(&self, message: String) -> PowerError {
        driver_error(&self.address, message)
    }

    /// Sends one request; a body that is JSON comes back parsed (`Null` when empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, PowerError> {
        let password = match &self.password {
            Some(reference) => Some(
                self.stored
                    .resolve(reference)
                    .map_err(|error| self.error(format!("password: {error}")))?,
            ),
            None => None,
        };
        let url = format!("{}{}", self.base, path);
        let mut request = self
            .client
            .request(method.clone(), &url)
            .header("Accept", "application/json");
        if self.user.is_some() || password.is_some() {
            request = request.basic_auth(self.user.as_deref().unwrap_or(""), password.as_deref());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        tracing::debug!(address = %self.address, %method, %path, "redfish");
        let scrub = |text: String| match password.as_deref() {
            Some(secret) if !secret.is_empty() => text.replace(secret, "********"),
            _ => text,
        };
        let response = request
            .send()
            .await
            .map_err(|error| self.transport(error, &scrub))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|error| self.transport(error, &scrub))?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(self.error("authentication failed (wrong user or password)".into()));
        }
        if !status.is_success() {
            let line = first_line(&scrub(text));
            return Err(self.error(format!("{method} {path}: {status}{line}")));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|_| {
            self.error(format!(
                "{method} {path}: the answer is not JSON{}",
                first_line(&scrub(text))
            ))
        })
    }

    fn transport(&self, error: reqwest::Error, scrub: &dyn Fn(String) -> String) -> PowerError {
        if error.is_timeout() {
            return PowerError::Timeout {
                driver: "redfish".into(),
                target: self.address.clone(),
                seconds: self.timeout.as_secs().max(1),
            };
        }
        if error.is_connect() {
            // The chain says why (refused, no route, certificate ...).
            let mut cause = String::new();
            let mut source = std::error::Error::source(&error);
            while let Some(inner) = source {
                cause = inner.to_string();
                source = inner.source();
            }
            let lower = cause.to_ascii_lowercase();
            if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
            {
                return self.error(scrub(format!(
                    "TLS failed ({cause}); set verify_tls = false for a self-signed certificate"
                )));
            }
            return self.error("cannot connect".into());
        }
        self.error(scrub(format!("request failed: {}", error.without_url())))
    }

    /// The system this machine is: `system_id` by Id, Name or path, or the only one.
    async fn system(&self) -> Result<System, PowerError> {
        let collection = self.call(Method::GET, "/redfish/v1/Systems", None).await?;
        let paths: Vec<String> = collection
            .get("Members")
            .and_then(Value::as_array)
            .map(|members| {
                members
                    .iter()
                    .filter_map(|member| member.get("@odata.id").and_then(Value::as_str))
                    .map(|path| path.trim_end_matches('/').to_string())
                    .collect()
            })
            .unwrap_or_default();
        let mut systems = Vec::new();
        for path in paths {
            let body = self.call(Method::GET, &path, None).await?;
            systems.push(System { path, body });
        }
        let label = |system: &System| {
            let id = system.body.get("Id").and_then(Value::as_str);
            let name = system.body.get("Name").and_then(Value::as_str);
            match (id, name) {
                (Some(id), Some(name)) if id != name => format!("{name} ({id})"),
                (Some(id), _) => id.to_string(),
                (None, Some(name)) => name.to_string(),
                (None, None) => system.path.clone(),
            }
        };
        let listing = |systems: &[System]| {
            if systems.is_empty() {
                "none".to_string()
            } else {
                systems.iter().map(label).collect::<Vec<_>>().join(", ")
            }
        };
        match &self.system_id {
            Some(wanted) => {
                let position = systems.iter().position(|system| {
                    let field = |key: &str| system.body.get(key).and_then(Value::as_str);
                    field("Id") == Some(wanted.as_str())
                        || field("Name") == Some(wanted.as_str())
                        || system.path.rsplit('/').next() == Some(wanted.as_str())
                });
                match position {
                    Some(index) => Ok(systems.swap_remove(index)),
                    None => Err(self.error(format!(
                        "no system `{wanted}` (systems: {})",
                        listing(&systems)
                    ))),
                }
            }
            None if systems.len() == 1 => Ok(systems.pop().expect("one system")),
            None => Err(self.error(format!(
                "{} systems, set the power parameter `system_id` (systems: {})",
                if systems.is_empty() { "no" } else { "several" },
                listing(&systems)
            ))),
        }
    }

    async fn power_state(&self, path: &str) -> Result<PowerState, PowerError> {
        let body = self.call(Method::GET, path, None).await?;
        power_state_of(self, &body)
    }
}

fn power_state_of(bmc: &Bmc, system: &Value) -> Result<PowerState, PowerError> {
    match system.get("PowerState").and_then(Value::as_str) {
        Some("On") | Some("PoweringOff") => Ok(PowerState::On),
        Some("Off") | Some("PoweringOn") => Ok(PowerState::Off),
        Some(other) => Err(bmc.error(format!("unexpected PowerState `{other}`"))),
        None => Err(bmc.error("the system has no PowerState".into())),
    }
}

fn driver_error(target: &str, message: String) -> PowerError {
    PowerError::Driver {
        driver: "redfish".into(),
        target: target.to_string(),
        message,
    }
}

/// `: <first non-empty line>` of a body, at most 200 characters; empty when there is none.
fn first_line(text: &str) -> String {
    match text.lines().map(str::trim).find(|line| !line.is_empty()) {
        Some(line) => format!(": {}", line.chars().take(200).collect::<String>()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(params: Value) -> PowerTarget {
        PowerTarget {
            machine: "node-1".into(),
            power_type: "redfish".into(),
            params,
            stored: Default::default(),
        }
    }

    #[test]
    fn an_inline_password_is_refused_without_being_repeated() {
        let error = Bmc::connect(
            &target(json!({"address": "10.0.0.5", "user": "admin", "password": "hunter2"})),
            CALL_TIMEOUT,
        )
        .err()
        .expect("refused");
        let text = error.to_string();
        assert!(
            text.starts_with("redfish 10.0.0.5: the password must be a reference"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_bare_host_means_https() {
        let bmc = Bmc::connect(&target(json!({"address": "10.0.0.5:8443"})), CALL_TIMEOUT).unwrap();
        assert_eq!(bmc.base, "https://10.0.0.5:8443");
        let bmc = Bmc::connect(
            &target(json!({"address": "http://127.0.0.1:8000/redfish/v1/", "verify_tls": "false"})),
            CALL_TIMEOUT,
        )
        .unwrap();
        assert_eq!(bmc.base, "http://127.0.0.1:8000");
    }
}
