//! The JSON the API returns. These shapes are the `--json` contract of the CLI: fields are
//! added, never renamed or removed. Times are RFC 3339 in UTC.

use crate::model::{Action, MacAddr, PowerCommand, PowerState, Status};
use crate::services::actions::ActionDone;
use crate::store::{Disk, Event, Interface, MachineRecord, MachineSummary, ScriptResult};
use serde::{Deserialize, Serialize};

pub use crate::model::rfc3339;

/// One row of `fleet machines --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineRow {
    pub name: String,
    pub status: Status,
    pub power: PowerState,
    pub locked: bool,
    pub arch: Option<String>,
    pub cpus: Option<i64>,
    pub memory_mib: Option<i64>,
    pub storage_bytes: Option<i64>,
    pub owner: Option<String>,
}

impl From<MachineSummary> for MachineRow {
    fn from(summary: MachineSummary) -> Self {
        MachineRow {
            name: summary.name.to_string(),
            status: summary.status,
            power: summary.power,
            locked: summary.locked,
            arch: summary.arch,
            cpus: summary.cpus,
            memory_mib: summary.memory_mib,
            storage_bytes: summary.storage_bytes,
            owner: summary.owner,
        }
    }
}

/// One machine in full (`fleet machine show --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineView {
    pub name: String,
    pub status: Status,
    pub status_label: String,
    pub status_reason: Option<String>,
    pub status_since: String,
    pub previous_status: Option<Status>,
    pub power: PowerState,
    pub locked: bool,
    pub owner: Option<String>,
    pub commissioned: bool,
    pub deployed_os: Option<String>,
    pub arch: Option<String>,
    pub power_type: String,
    /// Secrets appear only as references (`{"env": "BMC_PASSWORD"}`).
    pub power_params: serde_json::Value,
    pub bmc_address: Option<String>,
    pub image: Option<String>,
    pub tags: Vec<String>,
    pub macs: Vec<MacAddr>,
    /// The MAC it netboots from (recorded when it was created; absent for older records).
    #[serde(default)]
    pub boot_mac: Option<MacAddr>,
    pub hardware: HardwareView,
    pub interfaces: Vec<Interface>,
    pub disks: Vec<Disk>,
    pub generation: i64,
    pub last_heard: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HardwareView {
    pub cpus: Option<i64>,
    pub cpu_model: Option<String>,
    pub cpu_speed_mhz: Option<i64>,
    pub memory_mib: Option<i64>,
    pub storage_bytes: Option<i64>,
    pub facts: serde_json::Value,
}

impl From<&MachineRecord> for MachineView {
    fn from(record: &MachineRecord) -> Self {
        let life = &record.lifecycle;
        let storage: i64 = record.disks.iter().map(|disk| disk.size_bytes).sum();
        MachineView {
            name: record.name.to_string(),
            status: life.status,
            status_label: life.status.label().to_string(),
            status_reason: record.status_reason.clone(),
            status_since: rfc3339(record.status_since),
            previous_status: life.previous_status,
            power: life.power,
            locked: life.locked,
            owner: life.owner.clone(),
            commissioned: life.commissioned,
            deployed_os: life.deployed_os.clone(),
            arch: record.arch.clone(),
            power_type: record.power_type.clone(),
            power_params: record.power_params.clone(),
            bmc_address: record.bmc_address.clone(),
            image: record.image.clone(),
            tags: record.tags.clone(),
            macs: record
                .interfaces
                .iter()
                .map(|interface| interface.mac)
                .collect(),
            boot_mac: record.boot_mac,
            hardware: HardwareView {
                cpus: record.hardware.cpus,
                cpu_model: record.hardware.cpu_model.clone(),
                cpu_speed_mhz: record.hardware.cpu_speed_mhz,
                memory_mib: record.hardware.memory_mib,
                storage_bytes: (!record.disks.is_empty()).then_some(storage),
                facts: record.hardware.facts.clone(),
            },
            interfaces: record.interfaces.clone(),
            disks: record.disks.clone(),
            generation: record.generation,
            last_heard: record.last_heard.map(rfc3339),
            created_at: rfc3339(record.created_at),
            updated_at: rfc3339(record.updated_at),
        }
    }
}

/// `fleet machine show`: the machine, its script results and its recent events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineDetail {
    pub machine: MachineView,
    /// The clocks watching the machine now (in-progress statuses only): its status's limit and,
    /// while the machine works, the boot clock until its first call, then the heartbeat clock.
    #[serde(default)]
    pub clocks: Vec<ClockView>,
    pub script_results: Vec<ScriptResultView>,
    pub recent_events: Vec<EventView>,
    /// The static addresses the machine holds (from applied plans), by interface.
    #[serde(default)]
    pub addresses: Vec<AddressView>,
    /// In rescue mode: how to reach the machine (from its rescue script's results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescue: Option<RescueView>,
    /// The last progress its deploying run reported (kept after the run, until the next one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressView>,
}

/// How to reach a machine in rescue mode: SSH as `user` to one of `addresses` on `port`, where
/// the server shows `host_key`; no server (`ssh` false) when the fleet file gave it no keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RescueView {
    pub ssh: bool,
    /// `ssh root@10.99.0.57`, to the first address (IPv4 first).
    pub command: Option<String>,
    pub user: String,
    pub port: u16,
    pub addresses: Vec<std::net::IpAddr>,
    pub host_key: Option<String>,
    /// Why there is no SSH server, when there is none.
    pub note: Option<String>,
    /// One line for people: `ssh root@10.99.0.57 (host key SHA256:...)`.
    pub summary: String,
}

impl From<crate::commissioning::RescueAccess> for RescueView {
    fn from(access: crate::commissioning::RescueAccess) -> Self {
        RescueView {
            ssh: access.ssh,
            command: access.command(),
            summary: access.describe(),
            user: access.user,
            port: access.port,
            addresses: access.addresses,
            host_key: access.host_key,
            note: access.note,
        }
    }
}

/// How far a deployment got, as its heartbeats last said.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProgressView {
    /// fetch, check, clear, partition, format, mount, write-image, verify, bootloader, configure.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// The runner's stage (`running fleet-deploy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    pub at: String,
}

impl From<crate::store::ReportedProgress> for ProgressView {
    fn from(reported: crate::store::ReportedProgress) -> Self {
        ProgressView {
            phase: reported.progress.phase,
            done: reported.progress.done,
            total: reported.progress.total,
            stage: reported.stage,
            at: rfc3339(reported.at),
        }
    }
}

/// A static address a machine holds: it stays the machine's until the machine is deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddressView {
    pub interface: String,
    pub subnet: String,
    pub ip: std::net::IpAddr,
    /// When an apply committed it.
    pub since: String,
}

impl From<crate::store::StoredAddress> for AddressView {
    fn from(address: crate::store::StoredAddress) -> Self {
        AddressView {
            interface: address.interface,
            subnet: address.subnet,
            ip: address.ip,
            since: rfc3339(address.created_at),
        }
    }
}

/// A clock that is running (`model::watch`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClockView {
    /// `status`, `boot`, `heartbeat` or `callback`.
    pub kind: crate::model::ClockKind,
    pub since: String,
    pub limit_seconds: u32,
    /// When the machine fails if nothing happens before.
    pub runs_out_at: String,
    /// Seconds on the clock when the controller answered.
    pub elapsed_seconds: i64,
}

impl ClockView {
    pub fn new(clock: &crate::model::RunningClock, now: i64) -> ClockView {
        ClockView {
            kind: clock.kind,
            since: rfc3339(clock.since),
            limit_seconds: clock.limit_seconds,
            runs_out_at: rfc3339(clock.deadline()),
            elapsed_seconds: (now - clock.since).max(0) / 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScriptResultView {
    pub run_id: String,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub exit_code: Option<i64>,
    pub runtime_ms: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub results: serde_json::Value,
    pub at: String,
}

impl From<ScriptResult> for ScriptResultView {
    fn from(result: ScriptResult) -> Self {
        ScriptResultView {
            run_id: result.run_id,
            name: result.name,
            kind: result.kind,
            status: result.status,
            exit_code: result.exit_code,
            runtime_ms: result.runtime_ms,
            stdout: result.stdout,
            stderr: result.stderr,
            results: result.results,
            at: rfc3339(result.at),
        }
    }
}

/// One entry of `fleet events --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventView {
    pub id: i64,
    pub at: String,
    pub machine: Option<String>,
    pub kind: String,
    pub actor: String,
    pub action: Option<String>,
    pub from: Option<Status>,
    pub to: Option<Status>,
    pub reason: Option<String>,
    pub detail: serde_json::Value,
}

impl From<Event> for EventView {
    fn from(event: Event) -> Self {
        EventView {
            id: event.id,
            at: rfc3339(event.at),
            machine: event.machine,
            kind: event.kind,
            actor: event.actor,
            action: event.action,
            from: event.from_status,
            to: event.to_status,
            reason: event.reason,
            detail: event.detail,
        }
    }
}

/// The answer to an accepted action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionView {
    pub machine: String,
    pub action: Action,
    /// The statuses it went through, starting with the one it had (empty: no status change).
    pub statuses: Vec<Status>,
    pub power_command: Option<PowerCommand>,
    pub notes: Vec<String>,
    /// The machine afterwards; absent once deleted.
    pub after: Option<MachineView>,
}

impl From<ActionDone> for ActionView {
    fn from(done: ActionDone) -> Self {
        ActionView {
            machine: done.machine,
            action: done.action,
            statuses: done.statuses,
            power_command: done.power_command,
            notes: done.notes,
            after: done.record.as_ref().map(MachineView::from),
        }
    }
}

/// `POST /api/v1/machines`: a machine to add.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AddMachine {
    pub name: String,
    #[serde(default)]
    pub macs: Vec<String>,
    #[serde(default)]
    pub arch: Option<String>,
    /// `{"type": "manual"}`, `{"type": "ipmi", "address": ..., "password": {"env": "X"}}`;
    /// absent: unconfigured.
    #[serde(default)]
    pub power: Option<serde_json::Value>,
    #[serde(default)]
    pub bmc_address: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Commission at once (default true), as lifecycle.md says of machines added by hand.
    #[serde(default)]
    pub commission: Option<bool>,
    /// Added live: created deployed, never netbooted or commissioned.
    #[serde(default)]
    pub deployed: bool,
    /// The OS a live machine runs.
    #[serde(default)]
    pub deployed_os: Option<String>,
}

/// The answer to an add.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddedView {
    pub machine: MachineView,
    /// The commissioning started, if any.
    pub commission: Option<ActionView>,
    /// Why commissioning did not start, if it was asked for and refused.
    pub commission_refused: Option<String>,
}

/// `POST /api/v1/machines/{name}/actions/{action}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub options: crate::model::ActionOptions,
}

/// One row of `fleet token list --json`: a token without its secret (fleet does not have it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenView {
    pub name: String,
    pub role: crate::store::OperatorRole,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl From<&crate::store::OperatorToken> for TokenView {
    fn from(token: &crate::store::OperatorToken) -> Self {
        TokenView {
            name: token.name.clone(),
            role: token.role,
            created_at: rfc3339(token.created_at),
            last_used_at: token.last_used_at.map(rfc3339),
            expires_at: token.expires_at.map(rfc3339),
            revoked_at: token.revoked_at.map(rfc3339),
        }
    }
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// Default: admin.
    #[serde(default)]
    pub role: Option<crate::store::OperatorRole>,
    /// The token expires this many seconds after its creation; none: it does not expire.
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// A token just created or rotated, with its secret: the only time anyone sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IssuedTokenView {
    pub token: TokenView,
    pub secret: String,
}

/// `POST /api/v1/machines/{source}/clone`: copy the source's storage and/or interfaces onto
/// the destinations. Neither storage nor interfaces is assumed: at least one must be true.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CloneBody {
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default)]
    pub storage: bool,
    #[serde(default)]
    pub interfaces: bool,
    /// Check every destination and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a clone request: one result per destination, in the order asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CloneView {
    pub source: String,
    pub storage: bool,
    pub interfaces: bool,
    pub dry_run: bool,
    pub results: Vec<CloneResultView>,
}

/// What became of one destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CloneResultView {
    pub destination: String,
    /// `cloned`, `would_clone` (a dry run) or `refused`.
    pub outcome: CloneOutcome,
    /// Why it was refused: every reason, each a sentence (empty unless refused).
    pub reasons: Vec<String>,
    /// Source disk → destination disk, when storage is cloned (or would be).
    pub disks: Option<std::collections::BTreeMap<String, String>>,
    /// Source interface → destination interface, when interfaces are cloned (or would be).
    pub interfaces: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CloneOutcome {
    Cloned,
    WouldClone,
    Refused,
}

impl From<crate::services::clone::CloneResult> for CloneResultView {
    fn from(result: crate::services::clone::CloneResult) -> Self {
        use crate::store::CloneVerdict;
        let (outcome, reasons, mapping) = match result.verdict {
            CloneVerdict::Cloned(mapping) => (CloneOutcome::Cloned, Vec::new(), mapping),
            CloneVerdict::WouldClone(mapping) => (CloneOutcome::WouldClone, Vec::new(), mapping),
            CloneVerdict::Refused(reasons) => (CloneOutcome::Refused, reasons, Default::default()),
        };
        CloneResultView {
            destination: result.destination,
            outcome,
            reasons,
            disks: mapping.disks,
            interfaces: mapping.interfaces,
        }
    }
}

/// `GET /api/v1/images` rows and `POST /api/v1/images/prune`'s answer (the boot layer's types,
/// part of this contract).
pub use crate::boot::images::{ImageFileView, PruneReport, PrunedFile};

/// `POST /api/v1/images/prune`'s body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneImages {
    /// Only say what would be removed.
    #[serde(default)]
    pub dry_run: bool,
}

/// One row of `fleet controllers --json`: a controller on this store as its last heartbeat
/// described it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ControllerView {
    pub id: String,
    pub hostname: String,
    pub api_url: String,
    pub boot_url: String,
    /// What its DHCP serves (`INTERFACE ADDRESS`, `relayed ADDRESS`); empty: no DHCP.
    pub networks: Vec<String>,
    pub version: String,
    pub started_at: String,
    pub heartbeat_at: String,
    /// Seconds since the last heartbeat, by the clock of the controller that answers.
    pub heartbeat_age_seconds: i64,
    /// No heartbeat for three intervals: stopped, or cut off from the store.
    pub silent: bool,
    /// The one that answered this request.
    pub this_one: bool,
    /// Holds the current leadership term (runs the reconcile loop, the executor, the timeout
    /// watch, the power poll and retention).
    #[serde(default)]
    pub leader: bool,
    /// The term's generation, on the leader's row.
    #[serde(default)]
    pub leader_term: Option<i64>,
}
