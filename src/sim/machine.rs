//! One simulated machine: its power, and what it does when powered on — the PXE ROM's DHCP and
//! TFTP, iPXE's DHCP and boot script, then the kernel and initrd and the runner, or the
//! installed system (which calls back once after a deployment), or power off.

use super::faults::Faults;
use super::hardware::SimHardware;
use super::runner::{self, After, KernelCommandLine};
use super::wire::{dhcp_lease, tftp_get, DhcpClient};
use super::SimError;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::AbortHandle;

/// Where the controller's boot services are, and the relay address the machines' DHCP goes
/// through (a local address: the controller answers it on the port it sent from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimNetwork {
    pub dhcp: SocketAddr,
    pub tftp: SocketAddr,
    pub relay: Ipv4Addr,
}

/// How long a machine waits before booting again after a boot that went wrong (iPXE's failed
/// script sleeps 10 s; shorter here).
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// The firmware's power-on self test: from power on to its first DHCP request. Real servers
/// take from seconds to minutes. Not zero: the controller starts a machine's boot clock (and
/// with it the boot's secrets, see ARCHITECTURE "Machine credentials") once the power command
/// returns, and a machine that asked for its boot script before that would be taken for its
/// previous boot asking again (seen at 200 machines: "boot secret used twice").
const POWER_ON_SELF_TEST: Duration = Duration::from_secs(1);
/// Notes kept per machine (the newest).
const NOTES_KEPT: usize = 40;

#[derive(Default)]
struct MachineState {
    power_on: bool,
    /// The boot and the runner's heartbeats: aborted when the power goes.
    tasks: Vec<AbortHandle>,
    /// The deployment's call-back (URL, secret), for the installed system's first boot.
    callback: Option<(String, String)>,
    notes: Vec<String>,
    /// Every address a DHCP server acknowledged to it, in order (repeats kept once).
    leased: Vec<Ipv4Addr>,
    boots: u32,
    called_back: bool,
}

/// The BMC a machine reports when it enlists, as the ephemeral environment's `find_bmc` reports
/// it (the enlistment's `bmc` member): how the controller powers it from then on.
#[derive(Clone)]
pub struct ReportedBmc {
    /// `ipmi` or `redfish`.
    pub power_type: String,
    /// `HOST` or `HOST:PORT`.
    pub address: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for ReportedBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportedBmc")
            .field("power_type", &self.power_type)
            .field("address", &self.address)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

pub struct SimMachine {
    pub index: u32,
    pub hardware: SimHardware,
    pub faults: Faults,
    pub network: SimNetwork,
    /// Reported at enlistment; none: it enlists without a BMC (its power is then the
    /// simulated BMC server's webhook, written in the fleet file).
    pub reported_bmc: Option<ReportedBmc>,
    state: Mutex<MachineState>,
}

impl SimMachine {
    pub fn new(
        index: u32,
        hardware: SimHardware,
        faults: Faults,
        network: SimNetwork,
    ) -> SimMachine {
        SimMachine {
            index,
            hardware,
            faults,
            network,
            reported_bmc: None,
            state: Mutex::default(),
        }
    }

    /// The same machine, reporting `bmc` when it enlists.
    pub fn with_reported_bmc(mut self, bmc: ReportedBmc) -> SimMachine {
        self.reported_bmc = Some(bmc);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MachineState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_on(&self) -> bool {
        self.state().power_on
    }

    /// How many times it booted since it was made.
    pub fn boots(&self) -> u32 {
        self.state().boots
    }

    /// Whether its installed system called back after a deployment.
    pub fn called_back(&self) -> bool {
        self.state().called_back
    }

    /// Every address a DHCP server acknowledged to it, first first: what the clients' side
    /// says was handed out (tests check no address went to two machines).
    pub fn leased(&self) -> Vec<Ipv4Addr> {
        self.state().leased.clone()
    }

    fn record_lease(&self, ip: Ipv4Addr) {
        let mut state = self.state();
        if !state.leased.contains(&ip) {
            state.leased.push(ip);
        }
    }

    /// What it did, newest last (for a person, and for tests that fail).
    pub fn notes(&self) -> Vec<String> {
        self.state().notes.clone()
    }

    pub fn note(&self, note: String) {
        tracing::debug!(machine = self.index, "{note}");
        let mut state = self.state();
        if state.notes.len() == NOTES_KEPT {
            state.notes.remove(0);
        }
        state.notes.push(note);
    }

    /// Power on (the BMC's `on`, or the power button): it starts booting. Nothing if on.
    pub fn power_on(self: &Arc<Self>) {
        let mut state = self.state();
        if state.power_on {
            return;
        }
        state.power_on = true;
        let machine = Arc::clone(self);
        state
            .tasks
            .push(tokio::spawn(boot_loop(machine)).abort_handle());
    }

    /// Power off: whatever it was doing stops at once.
    pub fn power_off(&self) {
        let mut state = self.state();
        state.power_on = false;
        for task in state.tasks.drain(..) {
            task.abort();
        }
    }

    /// The runner powering the machine off (after `poweroff`, or a heartbeat's stop).
    pub fn power_off_by_itself(&self) {
        self.note("powering off".to_string());
        self.power_off();
    }

    /// Keeps a task that lives as long as this boot (the heartbeats).
    pub fn track(&self, task: AbortHandle) {
        self.state().tasks.push(task);
    }

    pub fn set_callback(&self, url: Option<String>, secret: Option<String>) {
        self.state().callback = url.zip(secret);
    }

    /// The address its HTTP and TFTP go out from: its lease where that is a loopback address
    /// (each machine then has an address of its own, as on a real network), else the relay's.
    fn source_address(&self, leased: Ipv4Addr) -> Ipv4Addr {
        if leased.is_loopback() {
            leased
        } else {
            self.network.relay
        }
    }
}

async fn boot_loop(machine: Arc<SimMachine>) {
    loop {
        tokio::time::sleep(POWER_ON_SELF_TEST).await;
        machine.state().boots += 1;
        let after = match boot_once(&machine).await {
            Ok(after) => after,
            Err(error) => {
                machine.note(format!("boot failed: {error}; booting again"));
                tokio::time::sleep(RETRY_AFTER).await;
                After::Reboot
            }
        };
        match after {
            After::Reboot => continue,
            After::PowerOff => {
                machine.power_off_by_itself();
                return;
            }
            After::Wait => {
                machine.note("waiting".to_string());
                std::future::pending::<()>().await;
            }
        }
    }
}

/// One boot, from the firmware's DHCP to what the boot script says.
async fn boot_once(machine: &Arc<SimMachine>) -> Result<After, SimError> {
    let network = machine.network;
    let mac = machine.hardware.boot_mac();
    let mut lost = machine.faults.lost_dhcp_replies;
    // The firmware's PXE ROM: an address and a loader over TFTP.
    let rom = dhcp_lease(
        network.dhcp,
        network.relay,
        mac,
        DhcpClient::PxeRom,
        &mut lost,
    )
    .await?;
    machine.record_lease(rom.ip);
    let loader = rom
        .boot_file
        .ok_or_else(|| SimError::Protocol("the DHCP offer names no boot file".into()))?;
    let source = machine.source_address(rom.ip);
    let bytes = tftp_get(network.tftp, source, &loader).await?;
    machine.note(format!(
        "dhcp {} and tftp {loader} ({} bytes)",
        rom.ip,
        bytes.len()
    ));
    // iPXE: again, for its script's URL.
    let ipxe = dhcp_lease(
        network.dhcp,
        network.relay,
        mac,
        DhcpClient::Ipxe,
        &mut lost,
    )
    .await?;
    machine.record_lease(ipxe.ip);
    let script_url = ipxe
        .boot_file
        .ok_or_else(|| SimError::Protocol("iPXE was given no script URL".into()))?;
    let client = reqwest::Client::builder()
        .local_address(IpAddr::V4(machine.source_address(ipxe.ip)))
        .timeout(Duration::from_secs(60))
        // One connection kept per machine, as the runner's own client keeps: a second one (a
        // heartbeat beside a script's call) is closed after use instead of idling for 90 s —
        // 10,000 machines otherwise held 20,000 sockets, past this machine's open-file limit.
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|error| SimError::Protocol(format!("an HTTP client: {error}")))?;
    let script = get_text(&client, &script_url).await?;
    if let Some(command_line) = KernelCommandLine::from_script(&script) {
        fetch_kernel_and_initrd(&client, &script).await?;
        machine.note(format!(
            "booted the ephemeral environment ({})",
            command_line.role
        ));
        // The runner gives up and powers off when it cannot start its run (its `give_up`);
        // booting again would exchange the boot's one-shot secret a second time.
        return Ok(runner::run(machine, client, command_line)
            .await
            .unwrap_or_else(|error| {
                machine.note(format!("runner: {error}; powering off"));
                After::PowerOff
            }));
    }
    if script.contains("sanboot") {
        return installed_system(machine, &client).await;
    }
    if script.contains("poweroff") {
        machine.note("the boot script says power off".to_string());
        return Ok(After::PowerOff);
    }
    machine.note(format!(
        "cannot boot: {}",
        script.lines().nth(1).unwrap_or("")
    ));
    tokio::time::sleep(RETRY_AFTER).await;
    Ok(After::Reboot)
}

async fn get_text(client: &reqwest::Client, url: &str) -> Result<String, SimError> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|error| SimError::Protocol(format!("GET {url}: {error}")))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(SimError::Protocol(format!(
            "GET {url}: HTTP {status} {}",
            text.trim()
        )));
    }
    Ok(text)
}

/// iPXE's `kernel URL ...` and `initrd URL`: the first KiB of each by a Range request (the
/// controller answers 206 for files it serves whole).
async fn fetch_kernel_and_initrd(client: &reqwest::Client, script: &str) -> Result<(), SimError> {
    for keyword in ["kernel ", "initrd "] {
        let Some(url) = script
            .lines()
            .find_map(|line| line.strip_prefix(keyword))
            .and_then(|rest| rest.split_whitespace().next())
        else {
            return Err(SimError::Protocol(format!(
                "the boot script has no {keyword}line"
            )));
        };
        let response = client
            .get(url)
            .header("Range", "bytes=0-1023")
            .send()
            .await
            .map_err(|error| SimError::Protocol(format!("GET {url}: {error}")))?;
        let status = response.status().as_u16();
        if status != 206 && status != 200 {
            return Err(SimError::Protocol(format!("GET {url}: HTTP {status}")));
        }
    }
    Ok(())
}

/// The system a deployment installed, booted from the local disk: its first boot calls back
/// once with the deployment's secret; then it runs until powered off.
async fn installed_system(
    machine: &Arc<SimMachine>,
    client: &reqwest::Client,
) -> Result<After, SimError> {
    let callback = machine.state().callback.take();
    if let Some((url, secret)) = callback {
        let body = serde_json::json!({ "callback": secret }).to_string();
        let response = client
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| SimError::Protocol(format!("POST {url}: {error}")))?;
        let status = response.status();
        machine.note(format!("installed system called back: HTTP {status}"));
        machine.state().called_back = status.is_success();
    } else {
        machine.note("booted from the local disk".to_string());
    }
    Ok(After::Wait)
}
