//! The records of machines and their history as the store keeps them and everyone else reads
//! them: a machine with its hardware, a new machine, an event, a script result, a DHCP lease.
//! Plain data (serde), no IO: the store fills them, the planner, the commissioning fact parser
//! and the DHCP decisions read them without reaching the store.

use super::{Lifecycle, MacAddr, MachineName, PowerState, Status, Watched};
use serde::{Deserialize, Serialize};

/// A machine as the store holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub id: i64,
    pub name: MachineName,
    pub lifecycle: Lifecycle,
    /// Bumped by every update; guards against stale writers.
    pub generation: i64,
    /// Why it is in its status (a failure reason, the comment of mark-broken), if any.
    pub status_reason: Option<String>,
    /// When it entered its status (Unix ms).
    pub status_since: i64,
    /// The last time the machine itself was heard from (Unix ms).
    pub last_heard: Option<i64>,
    /// When the latest power command that boots the machine (on, cycle) ran (Unix ms): the boot
    /// clock runs from it to the machine's first call.
    pub boot_started: Option<i64>,
    /// The generation of the latest decision that asked for a power command; a command made for
    /// an older generation is stale (see `controller::power`).
    pub power_decided: i64,
    /// The MAC it netboots from, as recorded when it was created (an enlisting machine's boot
    /// MAC, a fleet file's `pxe_mac`); `None` for records older than the column.
    #[serde(default)]
    pub boot_mac: Option<MacAddr>,
    /// What fleet expects the power to become after its own doing, not confirmed yet by a
    /// power query (see `services::power_poll`).
    #[serde(default)]
    pub power_intent: Option<PowerIntent>,
    pub arch: Option<String>,
    /// `unconfigured`, `manual`, `ipmi`, `redfish`, `webhook`, `qemu`.
    pub power_type: String,
    /// The power driver's parameters; secrets only as references (`{"env": "NAME"}`).
    pub power_params: serde_json::Value,
    pub bmc_address: Option<String>,
    /// The image to deploy (or deployed).
    pub image: Option<String>,
    pub tags: Vec<String>,
    pub hardware: Hardware,
    pub interfaces: Vec<Interface>,
    pub disks: Vec<Disk>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl MachineRecord {
    /// What the clocks of `model::watch` need.
    pub fn watched(&self) -> Watched {
        Watched {
            status: self.lifecycle.status,
            status_since: self.status_since,
            boot_started: self.boot_started,
            last_heard: self.last_heard,
            // Kept by the machine API (`machine_state`): the callers that need it fill it in.
            install_done: None,
            // Read by the watch's own query (`Store::in_progress_machines`).
            power_pending: false,
        }
    }
}

/// What fleet expects a machine's power to become: `target`, perhaps `passing` through another
/// state on the way (a cycle: off, then on), because of `why` ("power cycle by fleet", ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerIntent {
    pub target: PowerState,
    pub passing: Option<PowerState>,
    pub why: String,
}

/// A power command decided with a life-cycle change and not carried out yet: the power outbox
/// (`machines.power_pending`). Whoever runs the command clears it; the leader runs those left
/// behind by a controller that died between the decision and the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPower {
    pub command: crate::model::PowerCommand,
    pub follow_up: crate::model::FollowUp,
    pub actor: String,
    /// The power-off that follows a failure: if it fails, that is only logged (the machine has
    /// failed already).
    pub after_failure: bool,
}

/// Hardware facts found by commissioning (empty until then).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    pub cpus: Option<i64>,
    pub cpu_model: Option<String>,
    pub cpu_speed_mhz: Option<i64>,
    pub memory_mib: Option<i64>,
    /// Everything else (PCI, USB, DMI ...) as found.
    pub facts: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: MacAddr,
    pub link_up: Option<bool>,
    pub speed_mbps: Option<i64>,
    pub driver: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub name: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub id_path: Option<String>,
    /// The bus it sits on as the disk script reports it: `virtio`, `nvme`, `ata`, `scsi`
    /// (virtio-scsi too), `usb`, `mmc`, `other`; `None` when not reported (older records).
    #[serde(default)]
    pub bus: Option<String>,
    pub size_bytes: i64,
    pub block_size: Option<i64>,
    pub rotational: Option<bool>,
}

/// One row of `fleet machines`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineSummary {
    pub name: MachineName,
    pub status: Status,
    pub power: PowerState,
    pub locked: bool,
    pub arch: Option<String>,
    pub cpus: Option<i64>,
    pub memory_mib: Option<i64>,
    /// Sum of the disks' sizes, if any are known.
    pub storage_bytes: Option<i64>,
    pub owner: Option<String>,
}

/// A machine to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMachine {
    pub name: MachineName,
    /// `new`, `missing`, `retired`, or `deployed` for a machine added live.
    pub status: Status,
    /// The first is the MAC it netboots from (recorded as the record's `boot_mac`).
    pub macs: Vec<MacAddr>,
    pub arch: Option<String>,
    pub power_type: String,
    pub power_params: serde_json::Value,
    pub bmc_address: Option<String>,
    pub image: Option<String>,
    pub tags: Vec<String>,
    /// For a machine added live: the OS it runs.
    pub deployed_os: Option<String>,
}

/// One entry of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    /// Unix ms.
    pub at: i64,
    pub machine: Option<String>,
    /// `created`, `deleted`, `action`, `refused`, `status`, `power`, `boot`, `lease`, `script`, ...
    pub kind: String,
    pub actor: String,
    pub action: Option<String>,
    pub from_status: Option<Status>,
    pub to_status: Option<Status>,
    pub reason: Option<String>,
    pub detail: serde_json::Value,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub machine: Option<String>,
    pub kind: String,
    pub actor: String,
    pub action: Option<String>,
    pub from_status: Option<Status>,
    pub to_status: Option<Status>,
    pub reason: Option<String>,
    pub detail: serde_json::Value,
}

/// Which events to read, newest last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    pub machine: Option<String>,
    /// Only events with an id greater than this.
    pub after_id: Option<i64>,
    /// At most this many (the newest ones).
    pub limit: Option<i64>,
}

/// A script result uploaded by a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptResult {
    pub id: i64,
    pub machine_id: i64,
    /// Which run (commissioning, testing ...) it belongs to.
    pub run_id: String,
    pub name: String,
    /// `commissioning` or `testing`.
    pub kind: String,
    /// pending, running, passed, failed, timed_out, aborted, degraded, skipped.
    pub status: String,
    pub exit_code: Option<i64>,
    pub runtime_ms: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub results: serde_json::Value,
    pub at: i64,
}

/// A DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: std::net::Ipv4Addr,
    pub subnet: String,
    pub hostname: Option<String>,
    pub machine: Option<String>,
    pub expires_at: i64,
}
