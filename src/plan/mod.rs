//! The planner: the fleet files (what the operator wants) and a snapshot of the store (what was
//! observed) in, an immutable [`Plan`] out.
//!
//! Invariants:
//! - Pure: no IO, no clock, no randomness. The same fleet and snapshot give the same plan, and
//!   the same plan renders to the same bytes.
//! - The planner never proposes what the life-cycle refuses: every step is found by running
//!   [`crate::model::decide`] (and [`crate::model::settle`] for the in-progress statuses) on a
//!   simulated copy of the machine.
//! - A plan leaves no choice to execution time: each step carries its action, options and the
//!   status the machine must reach; the executor only carries steps out.
//! - A locked or protected machine never gets a destructive step; its plan says why instead.
//! - A plan records its parent: the fleet files' digest and, per machine, a fingerprint of what
//!   was observed. Only machines whose fingerprint still matches may be applied.

mod addresses;
mod adopt;
pub mod clone;
mod deployment;
mod desired;
mod fingerprint;
pub mod layout;
pub mod network;
mod params;
mod planner;
mod render;
mod route;
mod simulate;
mod snapshot_reader;
mod synthetic;

pub use addresses::{
    allocate, allocate_with, duplicates, excluded, AddressOrigin, AddressProblem, Addresses,
    Allocation, HeldAddress,
};
pub use adopt::{adopt_machine_toml, adopt_toml};
pub use deployment::{clone_toml, AppliedDeployment, Deployment, NotedChange, FIRMWARE_ASSUMED};
pub use desired::{desired_power, normalized_params};
pub use fingerprint::{fingerprint, hardware_digest};
pub use params::PowerParams;
pub use planner::plan;
pub use render::{render_human, render_human_in_parts, render_json, summary_line, RenderOptions};
pub use simulate::{apply_step, settle_to_rest, SimulationError};
pub use snapshot_reader::SnapshotReader;
pub use synthetic::synthetic_observed;

use crate::model::records::{MachineRecord, NewMachine};
use crate::model::{Action, ActionOptions, Lifecycle, MacAddr, MachineName, PowerState, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The version of the plan's JSON shape (`format_version`); bumped when a field changes meaning.
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// What the store has observed: every machine it knows, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub machines: Vec<ObservedMachine>,
    /// Every static address the store says a machine holds (from applied plans): they stay
    /// taken whatever the fleet file says later, until the machine is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<HeldAddress>,
}

impl Observed {
    /// A snapshot from store records (sorted by name here, whatever order they came in).
    pub fn from_records(records: &[MachineRecord]) -> Observed {
        let mut machines: Vec<ObservedMachine> =
            records.iter().map(ObservedMachine::from_record).collect();
        machines.sort_by(|a, b| a.name.cmp(&b.name));
        Observed {
            machines,
            addresses: Vec::new(),
        }
    }

    pub fn machine(&self, name: &str) -> Option<&ObservedMachine> {
        self.machines
            .binary_search_by(|machine| machine.name.as_str().cmp(name))
            .ok()
            .map(|at| &self.machines[at])
    }

    /// Reads a snapshot's JSON (`GET /api/v1/observed`, `fleet plan --observed FILE`): what
    /// `serde_json::from_slice` gives, with room for the machines reserved from the text's
    /// length instead of grown by doubling (which copied 100,000 records over and over).
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<Observed> {
        use serde::de::DeserializeSeed;
        let seed = ObservedSeed {
            capacity: bytes.len() / MIN_OBSERVED_MACHINE_BYTES,
        };
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let observed = seed.deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(observed)
    }
}

/// Fewer bytes than one machine of a snapshot takes (about 550 with IPMI power); room reserved
/// beyond the real count is never touched.
const MIN_OBSERVED_MACHINE_BYTES: usize = 400;

/// [`Observed`]'s derived reading, with the machines' vector reserved up front.
struct ObservedSeed {
    capacity: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for ObservedSeed {
    type Value = Observed;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Observed, D::Error> {
        deserializer.deserialize_struct("Observed", &["machines"], self)
    }
}

impl<'de> serde::de::Visitor<'de> for ObservedSeed {
    type Value = Observed;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("struct Observed")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Observed, A::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            Machines,
            Addresses,
            #[serde(other)]
            Other,
        }
        let mut machines = None;
        let mut addresses = Vec::new();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Machines if machines.is_some() => {
                    return Err(serde::de::Error::duplicate_field("machines"))
                }
                Field::Machines => {
                    machines = Some(map.next_value_seed(MachinesSeed(self.capacity))?);
                }
                Field::Addresses => addresses = map.next_value()?,
                Field::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let machines = machines.ok_or_else(|| serde::de::Error::missing_field("machines"))?;
        Ok(Observed {
            machines,
            addresses,
        })
    }
}

struct MachinesSeed(usize);

impl<'de> serde::de::DeserializeSeed<'de> for MachinesSeed {
    type Value = Vec<ObservedMachine>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Vec<ObservedMachine>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for MachinesSeed {
    type Value = Vec<ObservedMachine>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a list of machines")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut sequence: A,
    ) -> Result<Vec<ObservedMachine>, A::Error> {
        let mut machines = Vec::with_capacity(self.0);
        while let Some(machine) = sequence.next_element()? {
            machines.push(machine);
        }
        Ok(machines)
    }
}

/// A list read from a snapshot in a vector of exactly its length. Read element by element, a
/// vector grows to room for four at least (two disks took the room of four, 272 bytes more per
/// machine).
fn exact_vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Vec::<T>::deserialize(deserializer).map(exact)
}

/// `list` in a vector of exactly its length: moved into a fresh one when it has room to spare
/// (shrinking in place would keep a block that is still half used).
fn exact<T>(list: Vec<T>) -> Vec<T> {
    if list.capacity() == list.len() {
        return list;
    }
    let mut exact = Vec::with_capacity(list.len());
    exact.extend(list);
    exact
}

/// One machine as the store holds it, reduced to what planning reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedMachine {
    pub name: MachineName,
    pub status: Status,
    pub previous_status: Option<Status>,
    /// Why it is in its status (the failure a retry names).
    pub status_reason: Option<String>,
    pub power: PowerState,
    /// The power driver's message when `power` is `error` (from the power event that stored
    /// it); absent otherwise, and in snapshots saved before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_error: Option<String>,
    pub locked: bool,
    pub owner: Option<String>,
    pub commissioned: bool,
    pub deployed_os: Option<String>,
    pub power_type: String,
    pub power_params: PowerParams,
    pub image: Option<String>,
    #[serde(deserialize_with = "exact_vec")]
    pub tags: Vec<String>,
    pub arch: Option<String>,
    /// The MAC it netboots from first (the recorded boot MAC), then the others.
    #[serde(deserialize_with = "exact_vec")]
    pub macs: Vec<MacAddr>,
    pub hardware: ObservedHardware,
    /// The store's generation number of the record.
    pub generation: i64,
    /// The machine itself has reported in at least once.
    pub heard_from: bool,
    /// A clone `fleet clone` recorded onto this machine (it keeps the source's storage and/or
    /// interfaces until the fleet file says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloned_from: Option<clone::CloneRecord>,
    /// The deployment configuration a configure step last stored for it (digests and origin):
    /// what the plan compares the fleet file's layout and network with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<AppliedDeployment>,
}

/// What commissioning found, as far as expectations, layouts, network configurations and
/// cloning need it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedHardware {
    pub cpus: Option<i64>,
    pub memory_mib: Option<i64>,
    /// Every disk's size in bytes, largest first.
    #[serde(deserialize_with = "exact_vec")]
    pub disk_sizes: Vec<i64>,
    /// Every disk as commissioning reported it, in the order the machine listed them
    /// (layouts resolve against these; empty in snapshots saved before they were added).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "exact_vec"
    )]
    pub disks: Vec<ObservedDisk>,
    /// Every interface commissioning found, in the machine's order (network configurations
    /// match the installed OS's NICs by these MACs).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "exact_vec"
    )]
    pub interfaces: Vec<ObservedInterface>,
    /// How the machine booted the commissioning environment (`None`: not reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
}

/// One disk of a commissioned machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObservedDisk {
    /// The kernel's name in the commissioning environment (`sda`, `nvme0n1`): it may change
    /// between boots, serials and by-id paths do not.
    pub name: String,
    pub size_bytes: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// `/dev/disk/by-id/...`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `virtio`, `nvme`, `ata`, `scsi`, `usb`, `mmc`, `other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

impl ObservedDisk {
    pub fn from_record(disk: &crate::model::records::Disk) -> ObservedDisk {
        ObservedDisk {
            name: disk.name.clone(),
            size_bytes: disk.size_bytes,
            serial: disk.serial.clone(),
            id_path: disk.id_path.clone(),
            model: disk.model.clone(),
            bus: disk.bus.clone(),
            rotational: disk.rotational,
        }
    }

    /// MAAS's automatic disk tags: `ssd` or `rotary` (from `rotational`), and the bus
    /// (`nvme`, `virtio`...) when known. Sorted.
    pub fn tags(&self) -> Vec<String> {
        let mut tags = Vec::new();
        match self.rotational {
            Some(true) => tags.push("rotary".to_string()),
            Some(false) => tags.push("ssd".to_string()),
            None => {}
        }
        if let Some(bus) = &self.bus {
            tags.push(bus.clone());
        }
        tags.sort();
        tags
    }
}

/// One network interface of a commissioned machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedInterface {
    /// The name in the commissioning environment (the installed OS may name it otherwise).
    pub name: String,
    pub mac: MacAddr,
}

/// The firmware a machine boots with: decides GPT + EFI partition or MBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    /// From commissioning's `arch ... firmware=uefi|bios` fact.
    pub fn from_facts(facts: &serde_json::Value) -> Option<Firmware> {
        match facts.get("arch")?.get("firmware")?.as_str()? {
            "uefi" => Some(Firmware::Uefi),
            "bios" => Some(Firmware::Bios),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl ObservedHardware {
    /// Commissioning has reported something.
    pub fn is_known(&self) -> bool {
        self.cpus.is_some() || self.memory_mib.is_some() || !self.disk_sizes.is_empty()
    }
}

/// The record's MACs in its interfaces' order, but the one it netboots from (its recorded boot
/// MAC) first: commissioning stores the interfaces in the order the machine lists them.
fn boot_mac_first(record: &MachineRecord) -> Vec<MacAddr> {
    let mut macs: Vec<MacAddr> = record
        .interfaces
        .iter()
        .map(|interface| interface.mac)
        .collect();
    if let Some(at) = record
        .boot_mac
        .and_then(|boot| macs.iter().position(|mac| *mac == boot))
    {
        macs[..=at].rotate_right(1);
    }
    macs
}

impl ObservedMachine {
    pub fn from_record(record: &MachineRecord) -> ObservedMachine {
        let life = &record.lifecycle;
        let mut disk_sizes: Vec<i64> = record.disks.iter().map(|disk| disk.size_bytes).collect();
        disk_sizes.sort_unstable_by(|a, b| b.cmp(a));
        let mut tags = record.tags.clone();
        tags.sort();
        ObservedMachine {
            name: record.name.clone(),
            status: life.status,
            previous_status: life.previous_status,
            status_reason: record.status_reason.clone(),
            power: life.power,
            // The store keeps the message in the power event, not in the record:
            // `crate::apply::observe` fills it in.
            power_error: None,
            locked: life.locked,
            owner: life.owner.clone(),
            commissioned: life.commissioned,
            deployed_os: life.deployed_os.clone(),
            power_type: record.power_type.clone(),
            power_params: PowerParams::from_value(&record.power_params),
            image: record.image.clone(),
            tags,
            arch: record.arch.clone(),
            macs: boot_mac_first(record),
            hardware: ObservedHardware {
                cpus: record.hardware.cpus,
                memory_mib: record.hardware.memory_mib,
                disk_sizes,
                disks: record.disks.iter().map(ObservedDisk::from_record).collect(),
                interfaces: record
                    .interfaces
                    .iter()
                    .map(|interface| ObservedInterface {
                        name: interface.name.clone(),
                        mac: interface.mac,
                    })
                    .collect(),
                firmware: Firmware::from_facts(&record.hardware.facts),
            },
            generation: record.generation,
            heard_from: record.last_heard.is_some(),
            // The store keeps clones in their own table: `crate::apply::observe` fills it in.
            cloned_from: None,
            // So are the stored deployment configurations.
            deployment: None,
        }
    }

    /// The part of the machine the life-cycle rules read.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            status: self.status,
            previous_status: self.previous_status,
            locked: self.locked,
            power: self.power,
            owner: self.owner.clone(),
            commissioned: self.commissioned,
            deployed_os: self.deployed_os.clone(),
            power_configured: self.power_type != "unconfigured",
        }
    }
}

/// A plan: per machine, the ordered steps from what was observed to what the fleet files say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    /// The digest of the fleet files the plan was made from (`Fleet::digest`).
    pub fleet_digest: String,
    /// What the executor must respect, copied from the fleet's `[policy]`.
    pub policy: PlanPolicy,
    pub summary: Summary,
    /// Declared machines and discovered ones, sorted by name.
    pub machines: Vec<MachinePlan>,
    /// Every storage layout a machine's deployment section names, by its digest: machines with
    /// the same template and disks share one (written once, not once per machine).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layouts: BTreeMap<String, layout::Layout>,
}

impl Plan {
    /// No machine has a step: applying it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.machines.iter().all(|machine| machine.steps.is_empty())
    }

    pub fn machine(&self, name: &str) -> Option<&MachinePlan> {
        self.machines
            .binary_search_by(|machine| machine.name.as_str().cmp(name))
            .ok()
            .map(|at| &self.machines[at])
    }

    pub fn destructive_steps(&self) -> usize {
        self.machines
            .iter()
            .flat_map(|machine| &machine.steps)
            .filter(|step| step.class == StepClass::Destructive)
            .count()
    }
}

/// The executor's limits, as the plan was made with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPolicy {
    /// Machines worked on at once.
    pub parallelism: u32,
    /// `None`: no cap on destructive steps per apply.
    pub max_destructive_per_apply: Option<u32>,
    /// Per in-progress status, in minutes.
    pub timeout_minutes: BTreeMap<Status, u32>,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Steps per verb ("commission", "release (destructive)"), in life-cycle order.
    pub steps: Vec<SummaryCount>,
    pub machines_changing: usize,
    pub destructive_steps: usize,
    pub blocked: usize,
    pub waiting: usize,
    pub discovered: usize,
    /// Deployed machines whose new layout or network takes effect on their next deployment.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub on_redeploy: usize,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryCount {
    pub verb: String,
    pub destructive: bool,
    pub count: usize,
}

/// What happens to one machine, as a glyph: `+` created, `~` changed in place, `-` something
/// is destroyed (release of a deployed machine), `-/+` destroyed and rebuilt (redeploy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Nothing to do.
    None,
    Create,
    Update,
    Destroy,
    Replace,
    /// Steps are held back; `blocked` says why.
    Blocked,
    /// In an in-progress status; `waiting` says what on.
    Waiting,
    /// Enlisted but not declared; `adopt_toml` declares it.
    Discovered,
}

impl Change {
    pub fn glyph(self) -> &'static str {
        match self {
            Change::None => "=",
            Change::Create => "+",
            Change::Update => "~",
            Change::Destroy => "-",
            Change::Replace => "-/+",
            Change::Blocked => "!",
            Change::Waiting => "…",
            Change::Discovered => "?",
        }
    }
}

/// What was observed of a machine when the plan was made: what the fingerprint covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedState {
    pub status: Status,
    pub power: PowerState,
    pub locked: bool,
    pub hardware_digest: String,
    pub generation: i64,
}

impl ObservedState {
    pub fn of(machine: &ObservedMachine) -> ObservedState {
        ObservedState {
            status: machine.status,
            power: machine.power,
            locked: machine.locked,
            hardware_digest: hardware_digest(&machine.hardware, &machine.macs),
            generation: machine.generation,
        }
    }

    /// What differs from `now`, for a person ("status ready → deployed"); empty if nothing.
    pub fn differences(&self, now: &ObservedState) -> Vec<String> {
        let mut changes = Vec::new();
        if self.status != now.status {
            changes.push(format!("status {} → {}", self.status, now.status));
        }
        if self.power != now.power {
            changes.push(format!("power {} → {}", self.power, now.power));
        }
        if self.locked != now.locked {
            changes.push(format!("locked {} → {}", self.locked, now.locked));
        }
        if self.hardware_digest != now.hardware_digest {
            changes.push("hardware changed (recommissioned)".into());
        }
        if changes.is_empty() && self.generation != now.generation {
            changes.push(format!(
                "record changed (generation {} → {})",
                self.generation, now.generation
            ));
        }
        changes
    }
}

/// One machine's part of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachinePlan {
    pub name: String,
    /// In the fleet files (else discovered).
    pub declared: bool,
    pub change: Change,
    /// `None`: the store has no such machine yet.
    pub observed: Option<ObservedState>,
    /// The status the fleet files ask for (`None` for a discovered machine).
    pub desired: Option<Status>,
    /// Digest of `observed` (`absent` when there is no record): what a saved plan is checked by.
    pub fingerprint: String,
    pub steps: Vec<Step>,
    /// Attribute changes (power, tags, image) the `configure` step makes.
    pub attributes: Vec<AttributeChange>,
    /// What it waits on instead of steps.
    pub waiting: Option<String>,
    /// Why steps are held back (hardware drift, lock, protection, no route).
    pub blocked: Vec<String>,
    /// Fleet TOML that declares a discovered machine as it is.
    pub adopt_toml: Option<String>,
    /// The machine's static addresses as this plan decided them (static, held or newly
    /// allocated): apply commits the new ones under the store's unique (subnet, address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Allocation>,
    /// What it is (or will be) deployed with: its storage layout, network configuration and
    /// where they come from (its templates, or a clone); `None` without templates or clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
    /// Differences from the store that make no step, each saying why: a deployed machine's new
    /// layout or network (takes effect on redeploy), a clone the store recorded that the fleet
    /// files do not declare.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub noted: Vec<NotedChange>,
    /// The `clone_from` line that declares the clone the store recorded (to keep it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_toml: Option<String>,
}

/// One step: an operation, why, and how dangerous it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub operation: Operation,
    pub class: StepClass,
    pub reason: String,
    /// The status the machine is in once the step has finished (in-progress statuses settled).
    pub expect: Status,
}

impl Step {
    /// The verb for people and for the summary ("commission", "configure", "add").
    pub fn verb(&self) -> &'static str {
        match &self.operation {
            Operation::Add { .. } => "add",
            Operation::Configure { .. } => "configure",
            Operation::Act { action, .. } => action.cli_name(),
        }
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// Create the record.
    Add { machine: NewMachine },
    /// Set what the fleet file says of the machine: power, tags, image.
    Configure {
        power_type: String,
        power_params: serde_json::Value,
        tags: Vec<String>,
        /// `None`: keep the image recorded.
        image: Option<String>,
        /// The deployment configuration to store (digests and origin; the executor takes the
        /// layout from the plan's `layouts` and the network from the machine's deployment
        /// section); `None`: keep the stored one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment: Option<AppliedDeployment>,
    },
    /// A life-cycle action.
    Act {
        action: Action,
        #[serde(default)]
        options: ActionOptions,
    },
}

/// How much a step can hurt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepClass {
    /// Changes records, or powers a machine that runs nothing.
    Safe,
    /// Powers off or reboots a machine that runs a workload.
    Disruptive,
    /// Loses data or a running system: erase, redeploy, release of a deployed machine.
    Destructive,
}

impl StepClass {
    pub fn as_str(self) -> &'static str {
        match self {
            StepClass::Safe => "safe",
            StepClass::Disruptive => "disruptive",
            StepClass::Destructive => "destructive",
        }
    }
}

/// One attribute the fleet file sets differently from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeChange {
    pub field: String,
    /// Canonical text (sorted JSON), `None` if unset.
    pub from: Option<String>,
    pub to: Option<String>,
}
