//! The `qemu` power type: a local QEMU virtual machine, driven through its QMP socket (the
//! end-to-end tests and the demo).
//!
//! Parameters (the machine's power parameters):
//! - `qmp_socket`: the path of the VM's QMP socket (`-qmp unix:PATH,server=on,wait=off`);
//! - `command` (optional): the argv that starts the VM, an array of strings (a string is split at
//!   whitespace). Fleet adds `-qmp unix:PATH,server=on,wait=off` and `-no-shutdown` when the
//!   argv lacks them.
//!
//! The VM is expected to run with `-no-shutdown` and without `-no-reboot` (which turns every
//! reset, also QMP's `system_reset`, into a shutdown), so that a guest's power-off leaves QEMU alive
//! in status `shutdown` and a later power-on can boot it again. A QEMU process that is alive is
//! "the machine"; whether it is on is its run status:
//! - query: `query-status`; `running` (and `suspended`, a guest in ACPI S3) is on, every other
//!   status (`prelaunch` of `-S`, `paused`, `shutdown`, `inmigrate`, `guest-panicked` ...) off;
//! - on: `system_reset` then `cont`, always a fresh boot from the VM's boot order (which
//!   netboots when it says so), also when the VM runs already. A BMC ignores power-on of a
//!   running machine; this driver is for test and demo VMs, and rebooting means a commission or
//!   deploy netboots even when the power state fleet had stored was stale;
//! - off (hard): `stop` then `system_reset`: the vCPUs stop at once and the VM is left reset,
//!   in status `prelaunch` (off), ready for a fresh boot by `on` (`system_reset` from a stopped
//!   VM moves it to `prelaunch`; from `shutdown` it is what QEMU requires before running again);
//! - off (soft): `system_powerdown`, an ACPI power-button press, when it runs; the guest shuts
//!   down by itself (a guest without an OS or without ACPI ignores it and stays on; the report
//!   says so);
//! - cycle: `system_reset` then `cont`: a reboot when it runs, a boot when it is off.
//!
//! When nothing listens on the socket: with a `command`, `on` and `cycle` start the VM
//! (detached, in its own process group, output in `<qmp_socket>.log`) and query and off say
//! off; without one, every call fails with "no QEMU listening on PATH (is the VM started?)".
//!
//! Every QMP exchange (connecting with the greeting and `qmp_capabilities`, then each command)
//! has a timeout (5 s). Asynchronous events between replies are skipped. QEMU serves one QMP
//! client at a time: a call waits (up to the timeout) while another client holds the socket.

use super::{PowerDriver, PowerError, PowerFuture, PowerReport, PowerTarget};
use crate::model::{PowerCommand, PowerOffMode, PowerState};
use serde_json::{json, Value};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// How long one QMP exchange may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a VM started by `command` may take to open its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A QMP line longer than this is not something we asked for.
const MAX_LINE: usize = 1 << 20;

/// Drives local QEMU virtual machines through QMP.
pub struct QemuDriver {
    timeout: Duration,
    start_timeout: Duration,
}

impl Default for QemuDriver {
    fn default() -> Self {
        QemuDriver {
            timeout: CALL_TIMEOUT,
            start_timeout: START_TIMEOUT,
        }
    }
}

impl QemuDriver {
    /// A driver with `timeout` per QMP exchange instead of 5 s.
    pub fn with_timeout(timeout: Duration) -> Self {
        QemuDriver {
            timeout,
            start_timeout: START_TIMEOUT,
        }
    }
}

impl PowerDriver for QemuDriver {
    fn power_type(&self) -> &'static str {
        "qemu"
    }

    fn execute<'a>(
        &'a self,
        target: &'a PowerTarget,
        command: PowerCommand,
    ) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move {
            let vm = Vm::from_target(target)?;
            let Some(mut qmp) = self.connect(&vm).await? else {
                return self.when_nobody_listens(&vm, command).await;
            };
            let state = match command {
                PowerCommand::On | PowerCommand::Cycle => {
                    qmp.execute(self, "system_reset").await?;
                    qmp.leave_shutdown(self).await?;
                    qmp.execute(self, "cont").await?;
                    qmp.state(self).await?
                }
                PowerCommand::Off(PowerOffMode::Hard) => {
                    qmp.execute(self, "stop").await?;
                    qmp.execute(self, "system_reset").await?;
                    qmp.state(self).await?
                }
                PowerCommand::Off(PowerOffMode::Soft) => {
                    if qmp.state(self).await? == PowerState::On {
                        qmp.execute(self, "system_powerdown").await?;
                    }
                    let state = qmp.state(self).await?;
                    let note = (state != PowerState::Off).then(|| {
                        format!(
                            "qemu {}: ACPI power-off requested; the guest shuts down by itself \
                             (one without an OS or ACPI ignores it: power it off hard)",
                            vm.machine
                        )
                    });
                    return Ok(PowerReport { state, note });
                }
            };
            Ok(PowerReport { state, note: None })
        })
    }

    fn query<'a>(&'a self, target: &'a PowerTarget) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move {
            let vm = Vm::from_target(target)?;
            let state = match self.connect(&vm).await? {
                Some(mut qmp) => qmp.state(self).await?,
                None if vm.command.is_some() => PowerState::Off,
                None => return Err(vm.not_listening()),
            };
            Ok(PowerReport { state, note: None })
        })
    }
}

impl QemuDriver {
    /// Nothing listens on the socket: the VM process is not there. With a command, that is off
    /// (and on/cycle start it); without one, fleet cannot tell or help.
    async fn when_nobody_listens(
        &self,
        vm: &Vm,
        command: PowerCommand,
    ) -> Result<PowerReport, PowerError> {
        let Some(argv) = &vm.command else {
            return Err(vm.not_listening());
        };
        match command {
            PowerCommand::Off(_) => Ok(PowerReport {
                state: PowerState::Off,
                note: None,
            }),
            PowerCommand::On | PowerCommand::Cycle => {
                let mut qmp = self.start(vm, argv).await?;
                if qmp.state(self).await? != PowerState::On {
                    // Started with -S: a fresh VM needs no reset, only to run.
                    qmp.execute(self, "cont").await?;
                }
                let state = qmp.state(self).await?;
                Ok(PowerReport { state, note: None })
            }
        }
    }

    /// Connects, reads the greeting and leaves negotiation mode. `None` when nothing listens.
    async fn connect(&self, vm: &Vm) -> Result<Option<Qmp>, PowerError> {
        let stream = match UnixStream::connect(&vm.socket).await {
            Ok(stream) => stream,
            Err(error) if nobody_listens(&error) => return Ok(None),
            Err(error) => {
                return Err(vm.error(format!(
                    "cannot connect to the QMP socket {}: {}",
                    vm.socket.display(),
                    io_text(&error)
                )))
            }
        };
        let (read, write) = stream.into_split();
        let mut qmp = Qmp {
            vm: vm.clone(),
            reader: BufReader::new(read),
            writer: write,
            next_id: 0,
        };
        let greeting = self
            .within(vm, "the QMP greeting", qmp.read_message())
            .await?;
        if greeting.get("QMP").is_none() {
            return Err(vm.error(format!(
                "{} is not a QMP socket (it greeted with {})",
                vm.socket.display(),
                excerpt(&greeting.to_string())
            )));
        }
        qmp.execute(self, "qmp_capabilities").await?;
        Ok(Some(qmp))
    }

    /// Starts the VM with `argv` (detached) and connects once its QMP socket answers.
    async fn start(&self, vm: &Vm, argv: &[String]) -> Result<Qmp, PowerError> {
        let argv = full_argv(argv, &vm.socket);
        let log_path = log_path(&vm.socket);
        let log = std::fs::File::create(&log_path).map_err(|error| {
            vm.error(format!(
                "cannot create the VM's log {}: {}",
                log_path.display(),
                io_text(&error)
            ))
        })?;
        let log_err = log.try_clone().map_err(|error| {
            vm.error(format!(
                "cannot open the VM's log {}: {}",
                log_path.display(),
                io_text(&error)
            ))
        })?;
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C to the controller does not stop the VM.
            .process_group(0)
            .spawn()
            .map_err(|error| {
                vm.error(format!(
                    "cannot start the VM's command `{}`: {}",
                    argv[0],
                    io_text(&error)
                ))
            })?;
        tracing::info!(machine = %vm.machine, program = %argv[0], pid = child.id(), "qemu: VM started");
        let deadline = tokio::time::Instant::now() + self.start_timeout;
        loop {
            if let Some(qmp) = self.connect(vm).await? {
                // The child is reaped by tokio in the background once it exits.
                drop(child);
                return Ok(qmp);
            }
            match child.try_wait() {
                // `-daemonize` exits 0 while the VM runs on: keep waiting for the socket.
                Ok(Some(status)) if !status.success() => {
                    return Err(vm.error(format!(
                        "the VM's command `{}` exited at once ({status}): {}; see {}",
                        argv[0],
                        last_line(&log_path),
                        log_path.display()
                    )));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(vm.error(format!(
                    "the VM's command `{}` started but nothing listens on {} after {} s \
                     (does it use that QMP socket?); see {}",
                    argv[0],
                    vm.socket.display(),
                    self.start_timeout.as_secs(),
                    log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn within<T>(
        &self,
        vm: &Vm,
        what: &str,
        call: impl std::future::Future<Output = Result<T, PowerError>>,
    ) -> Result<T, PowerError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(vm.error(format!(
                "no answer to {what} on {} within {} s (is the VM hung, or another client \
                 connected to its QMP socket?)",
                vm.socket.display(),
                self.timeout.as_secs_f64()
            ))),
        }
    }
}

/// The machine's parameters, read.
#[derive(Debug, Clone)]
struct Vm {
    machine: String,
    socket: PathBuf,
    command: Option<Vec<String>>,
}

impl Vm {
    fn from_target(target: &PowerTarget) -> Result<Vm, PowerError> {
        let error = |message: String| PowerError::Driver {
            driver: "qemu".into(),
            target: target.machine.clone(),
            message,
        };
        let socket =
            match super::optional_string(&target.params, "qmp_socket").map_err(error)? {
                Some(socket) if !socket.is_empty() => PathBuf::from(socket),
                _ => return Err(error(
                    "no `qmp_socket`: set the power parameter `qmp_socket` to the VM's QMP socket \
                     (-qmp unix:PATH,server=on,wait=off)"
                        .into(),
                )),
            };
        let command = match target.params.get("command") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => {
                Some(text.split_whitespace().map(str::to_string).collect())
            }
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| item.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| error("`command` must be a list of strings".into()))?,
            ),
            Some(_) => return Err(error("`command` must be a list of strings".into())),
        };
        if command.as_ref().is_some_and(Vec::is_empty) {
            return Err(error(
                "`command` is empty: give the argv that starts the VM".into(),
            ));
        }
        Ok(Vm {
            machine: target.machine.clone(),
            socket,
            command,
        })
    }

    fn error(&self, message: String) -> PowerError {
        PowerError::Driver {
            driver: "qemu".into(),
            target: self.machine.clone(),
            message,
        }
    }

    fn not_listening(&self) -> PowerError {
        self.error(format!(
            "no QEMU listening on {} (is the VM started?)",
            self.socket.display()
        ))
    }
}

/// One QMP connection.
struct Qmp {
    vm: Vm,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Qmp {
    /// Runs `command` (no arguments) and returns its `return` value.
    async fn execute(&mut self, driver: &QemuDriver, command: &str) -> Result<Value, PowerError> {
        let vm = self.vm.clone();
        driver
            .within(&vm, &format!("`{command}`"), self.exchange(command))
            .await
    }

    /// Waits until a `system_reset` requested of a VM in status `shutdown` (a guest that
    /// powered itself off under `-no-shutdown`) has been carried out: QEMU resets
    /// asynchronously, and `cont` before that fails with "Resetting the Virtual Machine is
    /// required".
    async fn leave_shutdown(&mut self, driver: &QemuDriver) -> Result<(), PowerError> {
        for _ in 0..100 {
            let answer = self.execute(driver, "query-status").await?;
            if answer.get("status").and_then(Value::as_str) != Some("shutdown") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(self.vm.error(
            "the VM stayed shut down after `system_reset` (2 s): was it started with \
             -no-reboot? QEMU then turns every reset into a shutdown; start it without"
                .to_string(),
        ))
    }

    /// The VM's power state from `query-status`.
    async fn state(&mut self, driver: &QemuDriver) -> Result<PowerState, PowerError> {
        let answer = self.execute(driver, "query-status").await?;
        match answer.get("status").and_then(Value::as_str) {
            Some(status) => Ok(state_of(status)),
            None => Err(self.vm.error(format!(
                "`query-status` answered without a status: {}",
                excerpt(&answer.to_string())
            ))),
        }
    }

    async fn exchange(&mut self, command: &str) -> Result<Value, PowerError> {
        self.next_id += 1;
        let id = format!("fleet-{}", self.next_id);
        let mut line = json!({ "execute": command, "id": id }).to_string();
        line.push('\n');
        tracing::debug!(machine = %self.vm.machine, command, "qmp");
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|error| self.lost(&error))?;
        loop {
            let message = self.read_message().await?;
            if message.get("event").is_some() {
                continue;
            }
            if message.get("id").is_some_and(|got| got != id.as_str()) {
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let class = error.get("class").and_then(Value::as_str).unwrap_or("");
                let desc = error
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no description");
                return Err(self.vm.error(format!(
                    "QMP `{command}` failed: {desc}{}",
                    if class.is_empty() || class == "GenericError" {
                        String::new()
                    } else {
                        format!(" ({class})")
                    }
                )));
            }
            return Err(self.vm.error(format!(
                "unexpected QMP answer to `{command}`: {}",
                excerpt(&message.to_string())
            )));
        }
    }

    /// One JSON message (one line).
    async fn read_message(&mut self) -> Result<Value, PowerError> {
        let mut line = String::new();
        let mut limited = (&mut self.reader).take(MAX_LINE as u64);
        let read = limited.read_line(&mut line).await;
        let read = read.map_err(|error| self.lost(&error))?;
        if read == 0 {
            return Err(self.vm.error(format!(
                "QEMU closed the QMP connection on {} (did the VM exit?)",
                self.vm.socket.display()
            )));
        }
        serde_json::from_str(line.trim()).map_err(|_| {
            self.vm.error(format!(
                "{} does not speak QMP (it sent {})",
                self.vm.socket.display(),
                excerpt(line.trim())
            ))
        })
    }

    fn lost(&self, error: &std::io::Error) -> PowerError {
        self.vm.error(format!(
            "the QMP connection on {} failed: {}",
            self.vm.socket.display(),
            io_text(error)
        ))
    }
}

/// `query-status`'s status as a power state: running (or a guest suspended to RAM) is on.
fn state_of(status: &str) -> PowerState {
    match status {
        "running" | "suspended" => PowerState::On,
        _ => PowerState::Off,
    }
}

/// No socket file, or a stale one nobody accepts on.
fn nobody_listens(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::NotFound | ErrorKind::ConnectionRefused
    )
}

/// The argv with the QMP socket and `-no-shutdown` added when missing.
fn full_argv(argv: &[String], socket: &Path) -> Vec<String> {
    let mut full = argv.to_vec();
    if !argv.iter().any(|arg| arg == "-qmp" || arg == "--qmp") {
        full.push("-qmp".into());
        full.push(format!("unix:{},server=on,wait=off", socket.display()));
    }
    if !argv
        .iter()
        .any(|arg| arg == "-no-shutdown" || arg == "--no-shutdown")
    {
        full.push("-no-shutdown".into());
    }
    full
}

fn log_path(socket: &Path) -> PathBuf {
    let mut path = socket.as_os_str().to_owned();
    path.push(".log");
    PathBuf::from(path)
}

fn last_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .unwrap_or("(no output)");
    excerpt(line)
}

fn excerpt(text: &str) -> String {
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// An IO error without Rust's `(os error N)` suffix.
fn io_text(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    fn target(params: Value) -> PowerTarget {
        PowerTarget {
            machine: "vm-1".into(),
            power_type: "qemu".into(),
            params,
            stored: Default::default(),
        }
    }

    #[test]
    fn parameters_are_read_with_clear_errors() {
        let vm = Vm::from_target(&target(json!({"qmp_socket": "/run/vm.qmp"}))).unwrap();
        assert_eq!(vm.socket, PathBuf::from("/run/vm.qmp"));
        assert_eq!(vm.command, None);
        let vm = Vm::from_target(&target(
            json!({"qmp_socket": "/s", "command": "qemu-system-x86_64 -S  -m 64"}),
        ))
        .unwrap();
        assert_eq!(
            vm.command.unwrap(),
            ["qemu-system-x86_64", "-S", "-m", "64"]
        );
        let error = Vm::from_target(&target(json!({}))).unwrap_err().to_string();
        assert!(
            error.starts_with("qemu vm-1: no `qmp_socket`: set the power parameter"),
            "{error}"
        );
        let error = Vm::from_target(&target(json!({"qmp_socket": "/s", "command": [1]})))
            .unwrap_err()
            .to_string();
        assert_eq!(error, "qemu vm-1: `command` must be a list of strings");
        let error = Vm::from_target(&target(json!({"qmp_socket": "/s", "command": []})))
            .unwrap_err()
            .to_string();
        assert!(error.contains("`command` is empty"), "{error}");
    }

    #[test]
    fn the_socket_and_no_shutdown_are_added_once() {
        let socket = Path::new("/tmp/vm.qmp");
        let argv = full_argv(&["qemu".to_string()], socket);
        assert_eq!(
            argv,
            [
                "qemu",
                "-qmp",
                "unix:/tmp/vm.qmp,server=on,wait=off",
                "-no-shutdown"
            ]
        );
        assert_eq!(full_argv(&argv, socket), argv);
    }

    #[test]
    fn statuses_map_to_power_states() {
        assert_eq!(state_of("running"), PowerState::On);
        for status in [
            "prelaunch",
            "paused",
            "shutdown",
            "inmigrate",
            "guest-panicked",
        ] {
            assert_eq!(state_of(status), PowerState::Off, "{status}");
        }
    }

    /// A fake QMP server: greets, then answers each line with what `answer` says (events first).
    async fn fake_qmp(
        socket: &Path,
        answer: fn(&str) -> Vec<String>,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut seen = Vec::new();
            write
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            while let Ok(Some(line)) = lines.next_line().await {
                let message: Value = serde_json::from_str(&line).unwrap();
                let command = message["execute"].as_str().unwrap().to_string();
                let id = message["id"].clone();
                for reply in answer(&command) {
                    let reply = reply.replace("$ID", &id.to_string());
                    write.write_all(reply.as_bytes()).await.unwrap();
                    write.write_all(b"\n").await.unwrap();
                }
                seen.push(command);
            }
            seen
        })
    }

    #[tokio::test]
    async fn events_are_skipped_and_errors_are_named() {
        let directory = tempfile::tempdir().unwrap();
        let socket = directory.path().join("qmp");
        let server = fake_qmp(&socket, |command| match command {
            "qmp_capabilities" => vec![r#"{"return": {}, "id": $ID}"#.into()],
            "stop" => vec![
                r#"{"event": "STOP", "timestamp": {}}"#.into(),
                r#"{"return": {}, "id": $ID}"#.into(),
            ],
            "system_reset" => vec![
                r#"{"error": {"class": "GenericError", "desc": "reset refused"}, "id": $ID}"#
                    .into(),
            ],
            _ => vec![],
        })
        .await;
        let machine = target(json!({"qmp_socket": socket}));
        let error = QemuDriver::default()
            .execute(&machine, PowerCommand::Off(PowerOffMode::Hard))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "qemu vm-1: QMP `system_reset` failed: reset refused"
        );
        assert_eq!(
            server.await.unwrap(),
            ["qmp_capabilities", "stop", "system_reset"]
        );
    }

    #[tokio::test]
    async fn a_silent_qemu_times_out_and_a_missing_one_is_named() {
        let directory = tempfile::tempdir().unwrap();
        let socket = directory.path().join("qmp");
        let _server = fake_qmp(&socket, |command| match command {
            "qmp_capabilities" => vec![r#"{"return": {}, "id": $ID}"#.into()],
            _ => vec![],
        })
        .await;
        let driver = QemuDriver::with_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let error = driver
            .query(&target(json!({"qmp_socket": socket})))
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            error,
            format!(
                "qemu vm-1: no answer to `query-status` on {} within 0.3 s (is the VM hung, or \
                 another client connected to its QMP socket?)",
                socket.display()
            )
        );

        let nobody = directory.path().join("nobody");
        let error = driver
            .query(&target(json!({"qmp_socket": nobody})))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "qemu vm-1: no QEMU listening on {} (is the VM started?)",
                nobody.display()
            )
        );
        let report = driver
            .query(&target(
                json!({"qmp_socket": nobody, "command": ["qemu-system-x86_64"]}),
            ))
            .await
            .unwrap();
        assert_eq!(report.state, PowerState::Off);
    }
}
