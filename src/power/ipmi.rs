//! The `ipmi` power type: `ipmitool` over the network (`-I lanplus` by default).
//!
//! Parameters (the machine's power parameters, as lifecycle.md lists them):
//! - `address`: the BMC, `host` or `host:port` (`[v6]:port` for IPv6 with a port);
//! - `user`; `password`: a reference only, `{"env": NAME}` or `{"file": PATH}`, resolved at
//!   every call and handed to ipmitool in `IPMITOOL_PASSWORD` (`-E`), never on its command line;
//! - `driver`: `lan20` (default, `-I lanplus`) or `lan` (`-I lan`);
//! - `cipher_suite`: default 3 (without one ipmitool asks the BMC and may wait ~10 s);
//! - `privilege`: `user`, `operator` or `admin` (default);
//! - `boot_type`: `auto` (default), `legacy` or `efi` (`efi` adds `options=efiboot` to the boot
//!   device request);
//! - `netboot`: `true` to make the next boot a network boot (`chassis bootdev pxe`) before every
//!   power-on and power-cycle; default `false`;
//! - `retries`: ipmitool's `-R`, default 1 (with `-N 1`, an unreachable BMC fails in ~2 s).
//!
//! The power-off mode (soft/hard) comes from the command. Every ipmitool run has a timeout and
//! is killed when it passes it. Errors tell a refused login from a BMC that does not answer;
//! they never contain the password.

use super::{PowerDriver, PowerError, PowerFuture, PowerReport, PowerTarget};
use crate::config::SecretRef;
use crate::model::{PowerCommand, PowerOffMode, PowerState};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// How long one ipmitool run may take before it is killed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Drives BMCs through `ipmitool`.
pub struct IpmiDriver {
    program: PathBuf,
    timeout: Duration,
}

impl Default for IpmiDriver {
    fn default() -> Self {
        IpmiDriver {
            program: PathBuf::from("ipmitool"),
            timeout: CALL_TIMEOUT,
        }
    }
}

impl IpmiDriver {
    /// A driver running `program` instead of `ipmitool` from the PATH, with `timeout` per call.
    pub fn with_program(program: impl Into<PathBuf>, timeout: Duration) -> Self {
        IpmiDriver {
            program: program.into(),
            timeout,
        }
    }
}

impl PowerDriver for IpmiDriver {
    fn power_type(&self) -> &'static str {
        "ipmi"
    }

    fn execute<'a>(
        &'a self,
        target: &'a PowerTarget,
        command: PowerCommand,
    ) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move {
            let bmc = Bmc::from_target(target)?;
            if matches!(command, PowerCommand::On | PowerCommand::Cycle) && bmc.netboot {
                let mut args = vec!["chassis", "bootdev", "pxe"];
                if bmc.efi {
                    args.push("options=efiboot");
                }
                let output = self.run(&bmc, &args).await?;
                if let Some(line) = failure_line(&output) {
                    return Err(bmc.error(format!(
                        "setting the next boot to the network failed: {line}"
                    )));
                }
            }
            let (verb, state) = match command {
                PowerCommand::On => ("on", PowerState::On),
                PowerCommand::Off(PowerOffMode::Hard) => ("off", PowerState::Off),
                PowerCommand::Off(PowerOffMode::Soft) => ("soft", PowerState::Unknown),
                PowerCommand::Cycle => ("cycle", PowerState::On),
            };
            let output = self.run(&bmc, &["chassis", "power", verb]).await?;
            if let Some(line) = failure_line(&output) {
                return Err(bmc.error(line));
            }
            if state != PowerState::Unknown {
                return Ok(PowerReport { state, note: None });
            }
            // A soft power-off asks the operating system to shut down: it may take a while.
            let state = self.status(&bmc).await?;
            Ok(super::after_soft_off("ipmi", &bmc.address, state))
        })
    }

    fn query<'a>(&'a self, target: &'a PowerTarget) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move {
            let bmc = Bmc::from_target(target)?;
            let state = self.status(&bmc).await?;
            Ok(PowerReport { state, note: None })
        })
    }
}

/// What ipmitool printed.
struct Output {
    stdout: String,
    stderr: String,
}

impl IpmiDriver {
    async fn status(&self, bmc: &Bmc) -> Result<PowerState, PowerError> {
        let output = self.run(bmc, &["chassis", "power", "status"]).await?;
        let text = output.stdout.to_ascii_lowercase();
        if text.contains("chassis power is on") {
            Ok(PowerState::On)
        } else if text.contains("chassis power is off") {
            Ok(PowerState::Off)
        } else {
            let line = failure_line(&output).unwrap_or_else(|| last_line(&output));
            Err(bmc.error(format!("unexpected power status answer: {line}")))
        }
    }

    /// Runs ipmitool with the connection arguments and `args`; a non-zero exit is an error that
    /// says whether the login was refused or nothing answered.
    async fn run(&self, bmc: &Bmc, args: &[&str]) -> Result<Output, PowerError> {
        let password = match &bmc.password {
            Some(reference) => bmc
                .stored
                .resolve(reference)
                .map_err(|error| bmc.error(format!("password: {error}")))?,
            None => String::new(),
        };
        let mut command = tokio::process::Command::new(&self.program);
        command.args(bmc.connection_args()).args(args);
        command
            .env("IPMITOOL_PASSWORD", &password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        tracing::debug!(address = %bmc.address, command = %args.join(" "), "ipmitool");
        let child = command.spawn().map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                bmc.error(format!(
                    "`{}` is not installed (Debian package ipmitool)",
                    self.program.display()
                ))
            } else {
                bmc.error(format!("cannot run `{}`: {error}", self.program.display()))
            }
        })?;
        // On timeout the child is dropped, which kills it (kill_on_drop).
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => {
                return Err(bmc.error(format!("waiting for ipmitool failed: {error}")));
            }
            Err(_) => {
                return Err(PowerError::Timeout {
                    driver: "ipmi".into(),
                    target: bmc.address.clone(),
                    seconds: self.timeout.as_secs(),
                });
            }
        };
        let scrub = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes).into_owned();
            if password.is_empty() {
                text
            } else {
                text.replace(&password, "********")
            }
        };
        let result = Output {
            stdout: scrub(&output.stdout),
            stderr: scrub(&output.stderr),
        };
        if output.status.success() {
            return Ok(result);
        }
        Err(bmc.error(classify(&result)))
    }
}

/// Why a run failed, from ipmitool's verbose output.
fn classify(output: &Output) -> String {
    let all = format!("{}\n{}", output.stdout, output.stderr);
    let lower = all.to_ascii_lowercase();
    if lower.contains("rakp 2 hmac is invalid")
        || lower.contains("unauthorized name")
        || lower.contains("invalid user name")
        || lower.contains("password is invalid")
        || lower.contains("invalid password")
    {
        return "authentication failed (wrong user or password)".into();
    }
    if lower.contains("privilege level") && lower.contains("rakp") {
        return "the BMC refused the requested privilege level".into();
    }
    if lower.contains("get auth capabilities error")
        || lower.contains("no response")
        || lower.contains("error issuing get channel authentication capabilities")
        || lower.contains("address lookup")
    {
        return "no answer from the BMC (unreachable)".into();
    }
    failure_line(output).unwrap_or_else(|| last_line(output))
}

/// The first line saying something failed (`chassis bootdev` exits 0 even then).
fn failure_line(output: &Output) -> Option<String> {
    output
        .stdout
        .lines()
        .chain(output.stderr.lines())
        .map(str::trim)
        .find(|line| {
            let lower = line.to_ascii_lowercase();
            // Verbose output has harmless "Invalid completion code" lines from probing.
            lower.contains("failed") || lower.starts_with("error:")
        })
        .map(str::to_string)
}

fn last_line(output: &Output) -> String {
    output
        .stderr
        .lines()
        .chain(output.stdout.lines())
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .unwrap_or("ipmitool failed without a message")
        .to_string()
}

/// One BMC's connection, from the machine's parameters.
struct Bmc {
    /// As the operator wrote it; names the BMC in errors.
    address: String,
    host: String,
    port: Option<u16>,
    user: Option<String>,
    password: Option<SecretRef>,
    /// What `password = {"store": ..}` reads (see `PowerTarget::stored`).
    stored: super::StoredSecrets,
    lanplus: bool,
    cipher_suite: u8,
    privilege: &'static str,
    efi: bool,
    netboot: bool,
    retries: u32,
}

impl Bmc {
    fn from_target(target: &PowerTarget) -> Result<Bmc, PowerError> {
        let params = &target.params;
        let invalid = |target_name: &str, message: String| PowerError::Driver {
            driver: "ipmi".into(),
            target: target_name.to_string(),
            message,
        };
        let address = match params.get("address") {
            Some(Value::String(address)) if !address.trim().is_empty() => {
                address.trim().to_string()
            }
            _ => {
                return Err(invalid(
                    &target.machine,
                    "no BMC address: set the power parameter `address`".into(),
                ))
            }
        };
        let fail = |message: String| invalid(&address, message);
        let (host, port) = split_address(&address).map_err(fail)?;
        let user = super::optional_string(params, "user").map_err(fail)?;
        let password = super::optional_secret(params, "password").map_err(fail)?;
        let lanplus = match text(params, "driver").as_deref() {
            None | Some("lan20") | Some("lan_2_0") | Some("lanplus") => true,
            Some("lan") => false,
            Some(other) => {
                return Err(fail(format!(
                    "unknown ipmi driver `{other}` (lan20 or lan)"
                )))
            }
        };
        let cipher_suite = match number(params, "cipher_suite").map_err(fail)? {
            None => 3,
            Some(value) if value <= 17 => value as u8,
            Some(value) => return Err(fail(format!("cipher suite {value} is not 0 to 17"))),
        };
        let privilege = match text(params, "privilege").as_deref() {
            None | Some("admin") => "ADMINISTRATOR",
            Some("operator") => "OPERATOR",
            Some("user") => "USER",
            Some(other) => {
                return Err(fail(format!(
                    "unknown privilege `{other}` (user, operator or admin)"
                )))
            }
        };
        let efi = match text(params, "boot_type").as_deref() {
            None | Some("auto") | Some("legacy") => false,
            Some("efi") => true,
            Some(other) => {
                return Err(fail(format!(
                    "unknown boot type `{other}` (auto, legacy or efi)"
                )))
            }
        };
        let netboot = match params.get("netboot") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(value)) => *value,
            Some(Value::String(value)) => match value.as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                other => return Err(fail(format!("netboot `{other}` is not true or false"))),
            },
            Some(_) => return Err(fail("netboot must be true or false".into())),
        };
        let retries = match number(params, "retries").map_err(fail)? {
            None => 1,
            Some(value) if value <= 10 => value as u32,
            Some(value) => return Err(fail(format!("retries {value} is more than 10"))),
        };
        Ok(Bmc {
            host,
            port,
            address,
            user,
            password,
            stored: target.stored.clone(),
            lanplus,
            cipher_suite,
            privilege,
            efi,
            netboot,
            retries,
        })
    }

    fn connection_args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        if self.lanplus {
            args.extend(["-I".into(), "lanplus".into()]);
            args.extend(["-C".into(), self.cipher_suite.to_string()]);
        } else {
            args.extend(["-I".into(), "lan".into()]);
        }
        args.extend(["-H".into(), self.host.clone()]);
        if let Some(port) = self.port {
            args.extend(["-p".into(), port.to_string()]);
        }
        if let Some(user) = &self.user {
            args.extend(["-U".into(), user.clone()]);
        }
        args.push("-E".into());
        args.extend(["-L".into(), self.privilege.into()]);
        args.extend([
            "-N".into(),
            "1".into(),
            "-R".into(),
            self.retries.to_string(),
        ]);
        // Verbose: the only way to tell a refused login from a silent BMC.
        args.push("-v".into());
        args
    }

    fn error(&self, message: String) -> PowerError {
        PowerError::Driver {
            driver: "ipmi".into(),
            target: self.address.clone(),
            message,
        }
    }
}

fn text(params: &Value, key: &str) -> Option<String> {
    match params.get(key) {
        Some(Value::String(value)) => Some(value.trim().to_ascii_lowercase()),
        _ => None,
    }
}

/// A number given as a JSON number or as a string of digits (`--power-param cipher_suite=3`).
fn number(params: &Value, key: &str) -> Result<Option<u64>, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(value)) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a whole number")),
        Some(Value::String(value)) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("`{key}` must be a whole number, not `{value}`")),
        Some(_) => Err(format!("`{key}` must be a whole number")),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
fn split_address(address: &str) -> Result<(String, Option<u16>), String> {
    let port_of = |port: &str| {
        port.parse::<u16>()
            .map_err(|_| format!("`{address}`: `{port}` is not a port number"))
    };
    if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{address}`: missing `]`"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port_of(port)?),
            None if after.is_empty() => None,
            None => return Err(format!("`{address}` is not host:port")),
        };
        return Ok((host.to_string(), port));
    }
    match address.matches(':').count() {
        0 => Ok((address.to_string(), None)),
        1 => {
            let (host, port) = address.split_once(':').expect("one colon");
            Ok((host.to_string(), Some(port_of(port)?)))
        }
        _ => Ok((address.to_string(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(params: Value) -> PowerTarget {
        PowerTarget {
            machine: "node-1".into(),
            power_type: "ipmi".into(),
            params,
            stored: Default::default(),
        }
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_address("10.0.0.5").unwrap(),
            ("10.0.0.5".into(), None)
        );
        assert_eq!(
            split_address("127.0.0.1:9623").unwrap(),
            ("127.0.0.1".into(), Some(9623))
        );
        assert_eq!(split_address("fe80::1").unwrap(), ("fe80::1".into(), None));
        assert_eq!(
            split_address("[fe80::1]:623").unwrap(),
            ("fe80::1".into(), Some(623))
        );
        assert!(split_address("bmc:port").is_err());
    }

    #[test]
    fn an_inline_password_is_refused_without_being_repeated() {
        let error = Bmc::from_target(&target(serde_json::json!({
            "address": "10.0.0.5", "user": "admin", "password": "hunter2"
        })))
        .err()
        .expect("refused");
        let text = error.to_string();
        assert!(
            text.starts_with("ipmi 10.0.0.5: the password must be a reference"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn connection_arguments_never_hold_the_password() {
        let bmc = Bmc::from_target(&target(serde_json::json!({
            "address": "127.0.0.1:9623", "user": "admin", "password": {"env": "BMC_PASS"},
            "cipher_suite": "17", "privilege": "operator", "netboot": "true"
        })))
        .unwrap();
        let args = bmc.connection_args().join(" ");
        assert_eq!(
            args,
            "-I lanplus -C 17 -H 127.0.0.1 -p 9623 -U admin -E -L OPERATOR -N 1 -R 1 -v"
        );
        assert!(bmc.netboot);
    }

    #[tokio::test]
    async fn a_hanging_ipmitool_is_killed_at_the_timeout() {
        let directory = tempfile::tempdir().unwrap();
        let program = directory.path().join("ipmitool");
        std::fs::write(&program, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let driver = IpmiDriver::with_program(&program, Duration::from_secs(1));
        let started = std::time::Instant::now();
        let error = driver
            .query(&target(serde_json::json!({"address": "10.0.0.5"})))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "ipmi 10.0.0.5: no answer within 1 s");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
