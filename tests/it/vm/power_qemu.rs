//! The `qemu` power driver against real QEMU virtual machines: `qemu-system-x86_64 -accel tcg
//! -no-shutdown -S` with no disk and no network device (`-nic none`: not a packet leaves), 64 MB,
//! a QMP socket in a temporary directory; started by the test and killed when dropped (also on a
//! panic). One VM boots a real guest (Debian's cloud kernel and a busybox initramfs that powers
//! off). Through the driver, through a real controller and the CLI, and the controller's power
//! poll noticing a VM stopped behind fleet's back; the poll's store writes on both backends.

use crate::support::controller::{stderr, stdout, TestController};
use fleet::model::{PowerCommand, PowerOffMode, PowerState};
use fleet::power::{PowerDrivers, PowerTarget};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const QEMU: &str = "qemu-system-x86_64";

/// The arguments of every VM here, before its QMP socket and pid file.
fn base_args() -> Vec<String> {
    [
        "-accel",
        "tcg",
        "-nographic",
        "-display",
        "none",
        "-no-shutdown",
        "-S",
        "-m",
        "64",
        "-nic",
        "none",
        "-serial",
        "none",
        "-monitor",
        "none",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

/// A QEMU process the test owns: killed (by its pid file, and as our child) when dropped.
struct Vm {
    child: Option<Child>,
    pidfile: PathBuf,
    socket: PathBuf,
    _directory: TempDir,
}

impl Vm {
    /// A stopped VM (`-S`: status prelaunch) listening on its QMP socket.
    fn start() -> Vm {
        Vm::start_with(tempfile::tempdir().expect("a directory"), base_args())
    }

    /// A VM with `args` (and its QMP socket and pid file in `directory`).
    fn start_with(directory: TempDir, args: Vec<String>) -> Vm {
        let socket = directory.path().join("qmp.sock");
        let pidfile = directory.path().join("qemu.pid");
        let child = Command::new(QEMU)
            .args(args)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .arg("-pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 starts (the netboot setup installs it)");
        let vm = Vm {
            child: Some(child),
            pidfile,
            socket,
            _directory: directory,
        };
        vm.wait_for_socket();
        vm
    }

    /// A VM that fleet is to start: its directory, socket and pid file, and the command.
    fn planned() -> (Vm, Vec<String>) {
        let directory = tempfile::tempdir().expect("a directory");
        let socket = directory.path().join("qmp.sock");
        let pidfile = directory.path().join("qemu.pid");
        let mut command = vec![QEMU.to_string()];
        command.extend(base_args());
        command.push("-pidfile".into());
        command.push(pidfile.display().to_string());
        let vm = Vm {
            child: None,
            pidfile,
            socket,
            _directory: directory,
        };
        (vm, command)
    }

    fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "QEMU opened no QMP socket");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn params(&self) -> Value {
        json!({ "qmp_socket": self.socket })
    }

    /// `query-status`'s status, asked behind fleet's back.
    fn status(&self) -> String {
        qmp(&self.socket, "query-status")["status"]
            .as_str()
            .expect("a status")
            .to_string()
    }

    /// The pid in the pid file, if that process is this VM (its command line names our socket).
    fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|text| text.trim().parse().ok())?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let socket = self.socket.display().to_string();
        String::from_utf8_lossy(&cmdline)
            .contains(&socket)
            .then_some(pid)
    }

    /// Kills the VM and waits until it is gone.
    fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists()
                && !is_zombie(pid)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_file(&self.pidfile);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.contains(") Z "))
        .unwrap_or(true)
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One QMP command on a connection of its own (QEMU serves one client at a time: closed at once).
fn qmp(socket: &Path, command: &str) -> Value {
    let stream = UnixStream::connect(socket).expect("QMP connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut read = || {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a QMP line");
        serde_json::from_str::<Value>(&line).expect("QMP JSON")
    };
    assert!(read().get("QMP").is_some(), "a QMP greeting");
    let mut answer = Value::Null;
    for execute in ["qmp_capabilities", command] {
        writeln!(writer, "{}", json!({ "execute": execute })).unwrap();
        answer = loop {
            let message = read();
            if message.get("event").is_none() {
                break message;
            }
        };
        assert!(answer.get("return").is_some(), "{execute}: {answer}");
    }
    answer["return"].clone()
}

fn target(params: Value) -> PowerTarget {
    PowerTarget {
        machine: "vm-1".into(),
        power_type: "qemu".into(),
        params,
        stored: Default::default(),
    }
}

#[tokio::test]
async fn qemu_on_off_cycle_and_query_a_real_vm() {
    let vm = Vm::start();
    let drivers = PowerDrivers::standard();
    assert!(drivers.power_types().contains(&"qemu"));
    let machine = target(vm.params());
    let started = Instant::now();

    // -S: prelaunch, off.
    assert_eq!(vm.status(), "prelaunch");
    assert_eq!(
        drivers.query(&machine).await.unwrap().state,
        PowerState::Off
    );

    let report = drivers.execute(&machine, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(report.note, None);
    assert_eq!(vm.status(), "running");
    assert_eq!(drivers.query(&machine).await.unwrap().state, PowerState::On);
    // On when on is a fresh boot too (unlike a BMC): the VM runs on.
    let report = drivers.execute(&machine, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);

    // Hard off: stopped and reset, left in prelaunch, ready for a fresh boot.
    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Hard))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off);
    assert_eq!(vm.status(), "prelaunch");
    assert_eq!(
        drivers.query(&machine).await.unwrap().state,
        PowerState::Off
    );

    // On again, then a cycle (a reboot) while on, and a cycle while off (a boot).
    let report = drivers.execute(&machine, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(vm.status(), "running");
    let report = drivers
        .execute(&machine, PowerCommand::Cycle)
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(vm.status(), "running");
    qmp(&vm.socket, "stop");
    assert_eq!(vm.status(), "paused");
    assert_eq!(
        drivers.query(&machine).await.unwrap().state,
        PowerState::Off
    );
    let report = drivers
        .execute(&machine, PowerCommand::Cycle)
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(vm.status(), "running");

    // Soft off is an ACPI power-button press: a VM without an OS ignores it and stays on, and
    // the report says so.
    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Soft))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::On);
    let note = report.note.expect("a note");
    assert!(
        note.starts_with("qemu vm-1: ACPI power-off requested; the guest shuts down by itself"),
        "{note}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(drivers.query(&machine).await.unwrap().state, PowerState::On);
    assert_eq!(vm.status(), "running");
    // Soft off of an off VM sends nothing and says off.
    qmp(&vm.socket, "stop");
    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Soft))
        .await
        .unwrap();
    assert_eq!((report.state, report.note), (PowerState::Off, None));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// The Debian cloud kernel .ci/setup-netboot unpacks.
const KERNEL: &str = "/var/cache/fleet-netboot/vmlinuz";

/// A VM with a real guest: the cloud kernel and an initramfs whose /init prints a line on the
/// serial port and powers the machine off (`poweroff -f`, ACPI S5), at every boot.
fn start_guest_that_powers_off() -> (Vm, PathBuf) {
    assert!(
        Path::new(KERNEL).exists(),
        "{KERNEL} is missing: run .ci/setup-netboot as root"
    );
    let directory = tempfile::tempdir().expect("a directory");
    let root = directory.path().join("initramfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("a static busybox (busybox-static)");
    std::fs::write(
        root.join("init"),
        "#!/bin/busybox sh\n/bin/busybox echo fleet-guest-up\n/bin/busybox poweroff -f\n",
    )
    .unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("chmod 755 init && find . | busybox cpio -o -H newc > ../initramfs.cpio 2>/dev/null")
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success(), "the initramfs was not made");
    let serial = directory.path().join("serial.log");
    let mut args = base_args();
    // 64 MB is too little for the kernel; its console goes to a file.
    let at = |args: &[String], option: &str| args.iter().position(|arg| arg == option).unwrap() + 1;
    let memory = at(&args, "-m");
    args[memory] = "256".into();
    let port = at(&args, "-serial");
    args[port] = format!("file:{}", serial.display());
    args.extend([
        "-kernel".to_string(),
        KERNEL.to_string(),
        "-initrd".to_string(),
        directory
            .path()
            .join("initramfs.cpio")
            .display()
            .to_string(),
        "-append".to_string(),
        "console=ttyS0 panic=-1 rdinit=/init".to_string(),
    ]);
    (Vm::start_with(directory, args), serial)
}

fn wait_for_status(vm: &Vm, status: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = vm.status();
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the VM is still {now} after {limit:?}, expected {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn qemu_guest_poweroff_is_off_and_on_boots_it_again() {
    let (vm, serial) = start_guest_that_powers_off();
    let drivers = PowerDrivers::standard();
    let machine = target(vm.params());
    let boots = || {
        std::fs::read_to_string(&serial)
            .unwrap_or_default()
            .matches("fleet-guest-up")
            .count()
    };
    assert_eq!(
        drivers.query(&machine).await.unwrap().state,
        PowerState::Off
    );

    // On: the guest boots and powers itself off; -no-shutdown keeps QEMU, in status shutdown.
    let started = Instant::now();
    let report = drivers.execute(&machine, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    wait_for_status(&vm, "shutdown", Duration::from_secs(90));
    eprintln!("guest up and off in {:?}", started.elapsed());
    assert_eq!(boots(), 1);
    assert_eq!(
        drivers.query(&machine).await.unwrap().state,
        PowerState::Off
    );

    // On again is a fresh boot (QEMU wants a reset after a shutdown: the driver resets first).
    let report = drivers.execute(&machine, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    wait_for_status(&vm, "shutdown", Duration::from_secs(90));
    assert_eq!(boots(), 2);

    // Hard off of a VM that is already shut down leaves it reset, in prelaunch.
    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Hard))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off);
    assert_eq!(vm.status(), "prelaunch");
    // And a cycle from there boots it too.
    let report = drivers
        .execute(&machine, PowerCommand::Cycle)
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::On);
    wait_for_status(&vm, "shutdown", Duration::from_secs(90));
    assert_eq!(boots(), 3);
}

#[tokio::test]
async fn qemu_with_nobody_listening_says_so() {
    let directory = tempfile::tempdir().unwrap();
    let drivers = PowerDrivers::standard();
    // No socket file at all, and a stale one nobody accepts on.
    let missing = directory.path().join("missing.sock");
    let stale = directory.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for socket in [missing, stale] {
        let machine = target(json!({ "qmp_socket": socket }));
        let expected = format!(
            "qemu vm-1: no QEMU listening on {} (is the VM started?)",
            socket.display()
        );
        let started = Instant::now();
        let error = drivers.query(&machine).await.unwrap_err();
        assert_eq!(error.to_string(), expected);
        for command in [
            PowerCommand::On,
            PowerCommand::Off(PowerOffMode::Hard),
            PowerCommand::Cycle,
        ] {
            let error = drivers.execute(&machine, command).await.unwrap_err();
            assert_eq!(error.to_string(), expected, "{command:?}");
        }
        // At once: not one of the eight calls waited out the driver's 5 s call timeout (the
        // margin is for a loaded host).
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    // No socket parameter.
    let error = drivers.query(&target(json!({}))).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("qemu vm-1: no `qmp_socket`: set the power parameter `qmp_socket`"),
        "{error}"
    );
}

#[tokio::test]
async fn qemu_command_starts_the_vm() {
    let (vm, command) = Vm::planned();
    let drivers = PowerDrivers::standard();
    let machine = target(json!({ "qmp_socket": vm.socket, "command": command }));

    // Nothing runs: with a command, that is off, and off is nothing to do.
    assert_eq!(
        drivers.query(&machine).await.unwrap().state,
        PowerState::Off
    );
    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Hard))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off);
    assert_eq!(vm.pid(), None);

    // On starts it (fleet adds -qmp and -no-shutdown) and runs it past -S.
    let started = Instant::now();
    let report = drivers.execute(&machine, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    let pid = vm.pid().expect("QEMU wrote its pid file");
    assert_eq!(vm.status(), "running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&format!(
            "-qmp unix:{},server=on,wait=off",
            vm.socket.display()
        )) && cmdline.contains("-no-shutdown"),
        "{cmdline}"
    );
    eprintln!("started by the driver in {:?}", started.elapsed());

    // Once it runs, the command is not run again: off and on go through QMP.
    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Hard))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off);
    let report = drivers
        .execute(&machine, PowerCommand::Cycle)
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(vm.pid(), Some(pid));
    drop(vm);

    // A command that cannot start, and one that exits at once, name the reason.
    let (vm, _) = Vm::planned();
    let machine = target(json!({
        "qmp_socket": vm.socket,
        "command": ["/nonexistent/qemu-system-x86_64", "-S"],
    }));
    let error = drivers
        .execute(&machine, PowerCommand::On)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "qemu vm-1: cannot start the VM's command `/nonexistent/qemu-system-x86_64`: \
         No such file or directory"
    );
    let machine = target(json!({
        "qmp_socket": vm.socket,
        "command": [QEMU, "-accel", "tcg", "-nic", "none", "-no-such-option"],
    }));
    let error = drivers
        .execute(&machine, PowerCommand::On)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "qemu vm-1: the VM's command `{QEMU}` exited at once (exit status: 1): "
        )) && error.contains("-no-such-option")
            && error.ends_with(&format!("see {}.log", vm.socket.display())),
        "{error}"
    );
}

/// `fleet machine show NAME --json`'s power.
fn add_qemu_machine(controller: &TestController, name: &str, socket: &Path) {
    let socket = format!("qmp_socket={}", socket.display());
    let output = controller.fleet(&[
        "machine",
        "add",
        name,
        "--power-type",
        "qemu",
        "--power-param",
        &socket,
        "--no-commission",
    ]);
    assert!(output.status.success(), "add: {}", stderr(&output));
}

#[tokio::test]
async fn qemu_power_through_the_controller_and_the_cli() {
    let vm = Vm::start();
    let controller = TestController::start();
    add_qemu_machine(&controller, "vm-1", &vm.socket);
    let store = controller.store().await;
    controller.make_deployed(&store, "vm-1").await;

    for (action, power, status) in [
        ("power-on", "on", "running"),
        ("power-off", "off", "prelaunch"),
        ("power-on", "on", "running"),
        ("power-cycle", "on", "running"),
        ("power-off", "off", "prelaunch"),
        ("power-cycle", "on", "running"),
    ] {
        let output = controller.fleet(&["machine", action, "vm-1"]);
        assert!(
            output.status.success(),
            "{action}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        assert_eq!(controller.shown_power("vm-1"), json!(power), "{action}");
        assert_eq!(vm.status(), status, "{action}");
    }

    // The VM gone: the action fails with the driver's message, and show says error.
    drop(vm);
    let output = controller.fleet(&["machine", "power-off", "vm-1"]);
    assert!(!output.status.success());
    let text = format!("{}{}", stdout(&output), stderr(&output));
    assert!(
        text.contains("qemu vm-1: no QEMU listening on") && text.contains("(is the VM started?)"),
        "{text}"
    );
    assert_eq!(controller.shown_power("vm-1"), json!("error"));
}

/// `fleet events NAME --json`: the power events' reasons.
#[tokio::test]
async fn power_poll_notices_a_vm_stopped_behind_fleets_back() {
    let mut vm = Vm::start();
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("fleet.toml");
    std::fs::write(
        &file,
        "[controller]\ntftp_listen = \"127.0.0.1:0\"\n\n[policy]\npower_poll_seconds = 1\n",
    )
    .unwrap();
    let state = directory.path().join("state");
    let controller = TestController::start_in(&state, &["-f", &file.to_string_lossy()]);
    add_qemu_machine(&controller, "vm-1", &vm.socket);
    let store = controller.store().await;
    controller.make_deployed(&store, "vm-1").await;
    // The first polls find the VM off (prelaunch).
    controller.wait_for_shown_power("vm-1", "off", Duration::from_secs(10));
    let output = controller.fleet(&["machine", "power-on", "vm-1"]);
    assert!(output.status.success(), "power-on: {}", stderr(&output));
    assert_eq!(controller.shown_power("vm-1"), json!("on"));

    // fleet's own power actions, polled meanwhile, are not taken for changes made outside it.
    for action in [
        "power-off",
        "power-on",
        "power-cycle",
        "power-off",
        "power-on",
    ] {
        let output = controller.fleet(&["machine", action, "vm-1"]);
        assert!(output.status.success(), "{action}: {}", stderr(&output));
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(controller.shown_power("vm-1"), json!("on"));

    // A poll that finds what the store says writes nothing.
    let generation = store.machine("vm-1").await.unwrap().unwrap().generation;
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        store.machine("vm-1").await.unwrap().unwrap().generation,
        generation
    );

    let outside: Vec<String> = controller
        .power_reasons("vm-1")
        .into_iter()
        .filter(|reason| reason.contains("outside fleet"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");

    // Stopped behind fleet's back: within a few seconds fleet says off, and why.
    let stopped = Instant::now();
    qmp(&vm.socket, "stop");
    controller.wait_for_shown_power("vm-1", "off", Duration::from_secs(10));
    eprintln!("found off {:?} after the stop", stopped.elapsed());
    let reasons = controller.power_reasons("vm-1");
    assert!(
        reasons
            .iter()
            .any(|reason| reason == "power found off (was on), changed outside fleet"),
        "{reasons:?}"
    );
    let output = controller.fleet(&["events", "vm-1"]);
    assert!(
        stdout(&output).contains("power found off (was on), changed outside fleet"),
        "{}",
        stdout(&output)
    );

    // The VM gone: power error with the driver's message, once, however many polls follow.
    vm.kill();
    controller.wait_for_shown_power("vm-1", "error", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(3000));
    let failures: Vec<String> = controller
        .power_reasons("vm-1")
        .into_iter()
        .filter(|reason| reason.starts_with("power query failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("qemu vm-1: no QEMU listening on")
            && failures[0].ends_with("(is the VM started?)"),
        "{failures:?}"
    );
}

fn new_machine(name: &str, power_type: &str, params: Value) -> fleet::store::NewMachine {
    fleet::store::NewMachine {
        name: fleet::model::MachineName::parse(name).unwrap(),
        status: fleet::model::Status::New,
        macs: Vec::new(),
        arch: None,
        power_type: power_type.into(),
        power_params: params,
        bmc_address: None,
        image: None,
        tags: Vec::new(),
        deployed_os: None,
    }
}

async fn power_events(store: &fleet::store::Store, name: &str) -> Vec<fleet::store::Event> {
    let filter = fleet::store::EventFilter {
        machine: Some(name.into()),
        ..Default::default()
    };
    let events = store.events(&filter).await.unwrap();
    events
        .into_iter()
        .filter(|event| event.kind == "power")
        .collect()
}

crate::both_backends!(
    a_poll_stores_only_what_is_new_and_only_on_the_record_it_read,
    |store| async move {
        use fleet::services::power_poll::{poll_once, PollSummary, ACTOR};
        let socket = "/nonexistent/fleet-test/qmp.sock";
        store
            .create_machine(
                &new_machine("vm-1", "qemu", json!({ "qmp_socket": socket })),
                "test",
            )
            .await
            .unwrap();
        store
            .create_machine(&new_machine("plain", "manual", json!({})), "test")
            .await
            .unwrap();
        let record = store.machine("vm-1").await.unwrap().unwrap();
        assert_eq!(record.lifecycle.power, PowerState::Unknown);

        // What the store says already: nothing written, no generation bump.
        let written = store
            .record_found_power(&record, PowerState::Unknown, ACTOR, "same")
            .await
            .unwrap();
        assert!(!written);
        let written = store
            .record_found_power(
                &record,
                PowerState::Off,
                ACTOR,
                "power found off (was unknown)",
            )
            .await
            .unwrap();
        assert!(written);
        let after = store.machine("vm-1").await.unwrap().unwrap();
        assert_eq!(after.lifecycle.power, PowerState::Off);
        assert_eq!(after.generation, record.generation + 1);
        let events = power_events(&store, "vm-1").await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].actor, ACTOR);
        assert_eq!(
            events[0].reason.as_deref(),
            Some("power found off (was unknown)")
        );
        assert_eq!(events[0].detail, json!({ "from": "unknown", "to": "off" }));
        // A record read before another write is stale: the poll writes nothing.
        let written = store
            .record_found_power(&record, PowerState::On, ACTOR, "stale")
            .await
            .unwrap();
        assert!(!written);
        assert_eq!(
            store
                .machine("vm-1")
                .await
                .unwrap()
                .unwrap()
                .lifecycle
                .power,
            PowerState::Off
        );

        // A poll: the qemu machine's query fails (nobody listens), the manual one is not asked.
        let drivers = PowerDrivers::standard();
        let summary = poll_once(&store, &drivers).await.unwrap();
        assert_eq!(
            summary,
            PollSummary {
                queried: 1,
                changed: 1
            }
        );
        let after = store.machine("vm-1").await.unwrap().unwrap();
        assert_eq!(after.lifecycle.power, PowerState::Error);
        let events = power_events(&store, "vm-1").await;
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].reason.as_deref(),
            Some(
                "power query failed: qemu vm-1: no QEMU listening on \
                 /nonexistent/fleet-test/qmp.sock (is the VM started?)"
            )
        );
        // The same failure again: nothing new, no event storm.
        let summary = poll_once(&store, &drivers).await.unwrap();
        assert_eq!(
            summary,
            PollSummary {
                queried: 1,
                changed: 0
            }
        );
        assert_eq!(power_events(&store, "vm-1").await.len(), 2);
        assert_eq!(
            store.machine("vm-1").await.unwrap().unwrap().generation,
            after.generation
        );
    }
);
