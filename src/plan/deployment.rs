//! What a declared machine is deployed with, decided at plan time (pure): its storage template
//! resolved against its commissioned disks, its network template rendered with its interfaces
//! and the addresses the allocator gave it — or another machine's, cloned onto it.
//!
//! - Addresses are allocated once per plan ([`allocate_with`]) and looked up per machine.
//! - A layout depends only on the template, the disks and the firmware: each planning thread
//!   keeps a memo ([`LayoutMemo`]) that resolves every distinct combination once and shares it
//!   (`Arc`); the plan writes each layout once, in `Plan::layouts`, under its digest.
//! - A clone (the fleet file's `clone_from`, else the store's record of `fleet clone`) takes the
//!   source's layout remapped onto the destination's disks and/or the source's network template
//!   rendered with the destination's own interfaces and its own addresses (a static address is
//!   never copied), once [`check_clone`] accepts it; a refusal holds the machine, every reason
//!   named.

use super::clone::{check_clone, CloneRecord};
use super::layout::{resolve_layout, Layout, LayoutError};
use super::network::{render_machine_network, NetworkConfig};
use super::{
    allocate_with, Allocation, AttributeChange, Firmware, Observed, ObservedDisk, ObservedMachine,
};
use crate::config::{
    CloneSpec, Fleet, LinkMode, MachineInterface, MachineSpec, StorageLayout, StorageTemplate,
};
use crate::model::{MachineName, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The firmware a layout is resolved for when commissioning did not report one (the plan says
/// so): servers of the last decade boot UEFI, and arm64 has nothing else.
pub const FIRMWARE_ASSUMED: Firmware = Firmware::Uefi;

/// What the store holds of a machine's stored deployment configuration: what the plan compares
/// with, and what a configure step stores (the structures themselves come from the plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedDeployment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_digest: Option<String>,
    /// `fleet file`, or `clone of NAME`.
    pub origin: String,
}

/// One disk of a machine as the deploy role finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskIdentity {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_path: Option<String>,
}

/// A machine's deployment section of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// `fleet file`, or `clone of NAME`.
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_template: Option<String>,
    /// The firmware the layout was resolved for (reported, or [`FIRMWARE_ASSUMED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// The layout's digest: its key in the plan's `layouts` (shared by machines with the same
    /// template and disk set, so it names disks only by their commissioning names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// This machine's own disks the layout names, with their serials and by-id paths: what
    /// the deploy role finds them by (kernel names may change between boots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_digest: Option<String>,
    /// What a reader should know: an assumed firmware, what waits for commissioning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Deployment {
    fn new(origin: String) -> Deployment {
        Deployment {
            origin,
            storage_template: None,
            network_template: None,
            firmware: None,
            layout: None,
            disks: Vec::new(),
            network: None,
            network_digest: None,
            notes: Vec::new(),
        }
    }

    /// The storage side is decided (resolved, or no template): only then is it compared with
    /// the stored one. (A template that does not resolve holds the machine anyway.)
    fn storage_settled(&self) -> bool {
        self.storage_template.is_none() || self.layout.is_some()
    }

    fn network_settled(&self) -> bool {
        self.network_template.is_none() || self.network_digest.is_some()
    }

    /// The differences from what the store holds (`storage layout`, `network`), and what a
    /// configure step stores to end them; nothing while a side waits for commissioning.
    pub(super) fn changes_from(
        &self,
        stored: Option<&AppliedDeployment>,
    ) -> Option<(AppliedDeployment, Vec<AttributeChange>)> {
        let stored_layout = stored.and_then(|stored| stored.layout_digest.as_ref());
        let stored_network = stored.and_then(|stored| stored.network_digest.as_ref());
        let described = |digest: Option<&String>, origin: &str| {
            digest.map(|digest| format!("{digest} ({origin})"))
        };
        let stored_origin = stored.map_or("", |stored| stored.origin.as_str());
        let mut changes = Vec::new();
        if self.storage_settled() && self.layout.as_ref() != stored_layout {
            changes.push(AttributeChange {
                field: "storage layout".into(),
                from: described(stored_layout, stored_origin),
                to: described(self.layout.as_ref(), &self.origin),
            });
        }
        if self.network_settled() && self.network_digest.as_ref() != stored_network {
            changes.push(AttributeChange {
                field: "network".into(),
                from: described(stored_network, stored_origin),
                to: described(self.network_digest.as_ref(), &self.origin),
            });
        }
        if changes.is_empty() {
            return None;
        }
        // A side still waiting keeps what is stored.
        let applied = AppliedDeployment {
            layout_digest: if self.storage_settled() {
                self.layout.clone()
            } else {
                stored_layout.cloned()
            },
            network_digest: if self.network_settled() {
                self.network_digest.clone()
            } else {
                stored_network.cloned()
            },
            origin: self.origin.clone(),
        };
        Some((applied, changes))
    }
}

/// A difference from the store that makes no step, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotedChange {
    pub field: String,
    /// Canonical text, `None` if unset.
    pub from: Option<String>,
    pub to: Option<String>,
    /// "takes effect on redeploy", ...
    pub note: String,
}

/// The note on a deployed machine's new layout or network.
pub const TAKES_EFFECT_ON_REDEPLOY: &str = "takes effect on redeploy";
/// The note on a clone the store recorded and the fleet files do not declare.
pub const RECORDED_CLONE: &str =
    "recorded by `fleet clone`, not declared in the fleet files (the plan keeps it)";
/// The note on a recorded clone the fleet file's `clone_from` replaces.
pub const REPLACED_CLONE: &str =
    "the fleet file's clone_from replaces the clone `fleet clone` recorded";

/// `clone_from = { source = "...", storage = ..., interfaces = ... }`: the fleet TOML that
/// declares a clone the store recorded.
pub fn clone_toml(record: &CloneRecord) -> String {
    format!(
        "clone_from = {{ source = {}, storage = {}, interfaces = {} }}",
        serde_json::Value::String(record.source.to_string()),
        record.storage,
        record.interfaces
    )
}

fn clone_text(source: &MachineName, storage: bool, interfaces: bool) -> String {
    format!(
        "{{ source = {}, storage = {storage}, interfaces = {interfaces} }}",
        serde_json::Value::String(source.to_string())
    )
}

/// One machine's clone, from whichever side declares it.
struct CloneIntent<'a> {
    source: &'a MachineName,
    storage: bool,
    interfaces: bool,
}

impl<'a> CloneIntent<'a> {
    fn of(spec: &'a MachineSpec, observed: Option<&'a ObservedMachine>) -> Option<Self> {
        let declared = spec.clone_from.as_ref().map(|clone| CloneIntent {
            source: &clone.source,
            storage: clone.storage,
            interfaces: clone.interfaces,
        });
        declared.or_else(|| {
            let record = observed?.cloned_from.as_ref()?;
            Some(CloneIntent {
                source: &record.source,
                storage: record.storage,
                interfaces: record.interfaces,
            })
        })
    }
}

fn same_clone(declared: &CloneSpec, record: &CloneRecord) -> bool {
    declared.source == record.source
        && declared.storage == record.storage
        && declared.interfaces == record.interfaces
}

/// One machine's part: its deployment section, its addresses, and what holds it.
pub(super) struct Resolved {
    pub deployment: Option<Deployment>,
    pub addresses: Vec<Allocation>,
    /// Plan errors (a full subnet, a bad static address, a layout that does not fit, a clone
    /// refused): the machine is held, each named.
    pub problems: Vec<String>,
    pub noted: Vec<NotedChange>,
    pub clone_toml: Option<String>,
}

/// What every planning thread shares: the fleet, the snapshot and the plan's allocations.
pub(super) struct DeploymentContext<'a> {
    fleet: &'a Fleet,
    observed: &'a Observed,
    /// In machine-name then interface order (the allocator's), so a machine's are found by
    /// binary search.
    allocations: Vec<Allocation>,
    /// Address problems per machine, as sentences.
    address_problems: HashMap<String, Vec<String>>,
}

impl<'a> DeploymentContext<'a> {
    pub fn new(fleet: &'a Fleet, observed: &'a Observed) -> Self {
        let destinations = cloned_network_destinations(fleet, observed);
        let addresses = allocate_with(fleet, &observed.addresses, &destinations);
        let mut address_problems: HashMap<String, Vec<String>> = HashMap::new();
        for problem in addresses.problems {
            address_problems
                .entry(problem.machine.to_string())
                .or_default()
                .push(format!(
                    "address of interface {} on subnet `{}`: {}",
                    problem.interface, problem.subnet, problem.message
                ));
        }
        let mut allocations = addresses.allocations;
        // The allocator's order already; sorted again (cheaply) so the lookup never misses.
        if !allocations.is_sorted_by(|a, b| a.machine <= b.machine) {
            allocations.sort_by(|a, b| (&a.machine, &a.interface).cmp(&(&b.machine, &b.interface)));
        }
        DeploymentContext {
            fleet,
            observed,
            allocations,
            address_problems,
        }
    }

    fn allocations_of(&self, name: &MachineName) -> &[Allocation] {
        let all = &self.allocations;
        let start = all.partition_point(|allocation| allocation.machine < *name);
        let length = all[start..].partition_point(|allocation| allocation.machine == *name);
        &all[start..start + length]
    }

    /// Everything the plan decides of `spec`'s deployment.
    pub fn resolve(
        &self,
        spec: &'a MachineSpec,
        observed: Option<&'a ObservedMachine>,
        memo: &mut LayoutMemo<'a>,
    ) -> Resolved {
        let addresses = self.allocations_of(&spec.name).to_vec();
        let mut resolved = Resolved {
            deployment: None,
            addresses,
            // (Looked up only when there are any: the usual plan has none.)
            problems: if self.address_problems.is_empty() {
                Vec::new()
            } else {
                self.address_problems
                    .get(spec.name.as_str())
                    .cloned()
                    .unwrap_or_default()
            },
            noted: Vec::new(),
            clone_toml: None,
        };
        note_recorded_clone(spec, observed, &mut resolved);
        let clone = CloneIntent::of(spec, observed);
        let source_spec = clone
            .as_ref()
            .and_then(|c| self.fleet.machine(c.source.as_str()));
        let storage_template = match &clone {
            Some(clone) if clone.storage => {
                source_spec.and_then(|source| source.storage.as_deref())
            }
            _ => spec.storage.as_deref(),
        };
        let network_template = match &clone {
            Some(clone) if clone.interfaces => {
                source_spec.and_then(|source| source.network.as_deref())
            }
            _ => spec.network.as_deref(),
        };
        if storage_template.is_none() && network_template.is_none() && clone.is_none() {
            return resolved;
        }
        let origin = match &clone {
            Some(clone) => format!("clone of {}", clone.source),
            None => "fleet file".to_string(),
        };
        let mut deployment = Deployment::new(origin);
        deployment.storage_template = storage_template.map(str::to_string);
        deployment.network_template = network_template.map(str::to_string);
        let remap = match &clone {
            Some(clone)
                if !self.commissioned(clone.source.as_str())
                    && !self.commissioned(spec.name.as_str()) =>
            {
                // Neither is commissioned yet: not refused, the source is declared (the fleet
                // file's checks make sure) and will be; holding this machine would stop it
                // being added and commissioned too. (A commissioned destination whose source
                // is missing is held: it could otherwise be deployed without its clone.)
                deployment.notes.push(format!(
                    "clone from {} waits until {} has been commissioned: plan again then",
                    clone.source, clone.source
                ));
                None
            }
            Some(clone) => match self.check_clone(clone, observed) {
                Ok(remap) => remap,
                Err(reasons) => {
                    resolved.problems.extend(reasons);
                    resolved.deployment = Some(deployment);
                    return resolved;
                }
            },
            None => None,
        };
        self.resolve_storage(
            spec,
            observed,
            &clone,
            remap,
            memo,
            &mut deployment,
            &mut resolved,
        );
        self.resolve_network(
            spec,
            observed,
            network_template,
            &mut deployment,
            &mut resolved,
        );
        resolved.deployment = Some(deployment);
        resolved
    }

    /// The store has the machine and commissioning has reported its disks or interfaces.
    fn commissioned(&self, name: &str) -> bool {
        self.observed.machine(name).is_some_and(|machine| {
            !machine.hardware.disks.is_empty() || !machine.hardware.interfaces.is_empty()
        })
    }

    /// `Ok(Some(disk map))` when the storage is cloned, `Ok(None)` when it is not (or the
    /// destination is not commissioned yet), `Err(every reason)` when the clone is refused.
    fn check_clone(
        &self,
        clone: &CloneIntent<'_>,
        destination: Option<&ObservedMachine>,
    ) -> Result<Option<BTreeMap<String, String>>, Vec<String>> {
        let refused =
            |reason: String| vec![format!("clone from {} refused: {reason}", clone.source)];
        let Some(source) = self.observed.machine(clone.source.as_str()) else {
            return Err(refused(format!(
                "the source machine `{}` is not in the store",
                clone.source
            )));
        };
        let Some(destination) = destination
            .filter(|d| !d.hardware.disks.is_empty() || !d.hardware.interfaces.is_empty())
        else {
            return Ok(None);
        };
        // The plan stores the configuration whatever the destination's status (a deployed
        // one takes it on redeploy); `fleet clone` checks the status when it copies.
        let as_ready;
        let destination = if matches!(destination.status, Status::Ready | Status::FailedTesting) {
            destination
        } else {
            as_ready = ObservedMachine {
                status: Status::Ready,
                ..destination.clone()
            };
            &as_ready
        };
        match check_clone(source, destination, clone.storage, clone.interfaces) {
            Ok(mapping) => Ok(mapping.disks),
            Err(reasons) => Err(reasons
                .into_iter()
                .map(|reason| format!("clone from {} refused: {reason}", clone.source))
                .collect()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn resolve_storage(
        &self,
        spec: &MachineSpec,
        observed: Option<&'a ObservedMachine>,
        clone: &Option<CloneIntent<'_>>,
        remap: Option<BTreeMap<String, String>>,
        memo: &mut LayoutMemo<'a>,
        deployment: &mut Deployment,
        resolved: &mut Resolved,
    ) {
        let Some(template_name) = deployment.storage_template.clone() else {
            if let Some(clone) = clone.as_ref().filter(|clone| clone.storage) {
                resolved.problems.push(format!(
                    "clone from {} refused: the source has no storage template to clone",
                    clone.source
                ));
            }
            return;
        };
        let Some(template) = self.fleet.storage_templates.get(&template_name) else {
            return;
        };
        // A cloned layout is the source's, resolved on the source's disks and firmware.
        let cloned = clone.as_ref().filter(|clone| clone.storage);
        let laid_out = match cloned {
            Some(clone) => self.observed.machine(clone.source.as_str()),
            None => observed,
        };
        let destination_disks = observed.map_or(&[][..], |machine| &machine.hardware.disks[..]);
        let source_disks = laid_out.map_or(&[][..], |machine| &machine.hardware.disks[..]);
        let unmapped = cloned.is_some() && remap.is_none();
        if destination_disks.is_empty() || source_disks.is_empty() || unmapped {
            deployment.notes.push(format!(
                "storage `{template_name}` is resolved against the disks commissioning finds: plan again once {} has been commissioned",
                spec.name
            ));
            return;
        }
        let firmware = match laid_out.and_then(|machine| machine.hardware.firmware) {
            Some(firmware) => firmware,
            None => {
                deployment.notes.push(format!(
                    "firmware not reported by commissioning: the layout is resolved for {} (the default)",
                    FIRMWARE_ASSUMED.as_str()
                ));
                FIRMWARE_ASSUMED
            }
        };
        deployment.firmware = Some(firmware);
        match memo.resolve(template, source_disks, firmware) {
            Ok((layout, digest)) => {
                // A remapped layout names the destination's disks already.
                let digest = match &remap {
                    Some(disk_map) => {
                        let remapped = layout.remap_disks(disk_map);
                        let names = remapped.disks.iter().map(|disk| disk.name.as_str());
                        deployment.disks = disk_identities(names, destination_disks);
                        memo.add(remapped)
                    }
                    None => {
                        let names = layout.disks.iter().map(|disk| disk.name.as_str());
                        deployment.disks = disk_identities(names, destination_disks);
                        digest
                    }
                };
                deployment.layout = Some(digest);
            }
            Err(error) => resolved
                .problems
                .push(format!("storage `{template_name}`: {error}")),
        }
    }

    fn resolve_network(
        &self,
        spec: &MachineSpec,
        observed: Option<&ObservedMachine>,
        template_name: Option<&str>,
        deployment: &mut Deployment,
        resolved: &mut Resolved,
    ) {
        let Some(template_name) = template_name else {
            return;
        };
        let Some(template) = self.fleet.network_templates.get(template_name) else {
            return;
        };
        let interfaces = observed.map_or(&[][..], |machine| &machine.hardware.interfaces[..]);
        if interfaces.is_empty() {
            deployment.notes.push(format!(
                "network `{template_name}` is rendered with the interfaces commissioning finds: plan again once it has run"
            ));
            return;
        }
        let addresses: Vec<&Allocation> = resolved.addresses.iter().collect();
        match render_machine_network(template, Some(spec), interfaces, &addresses, self.fleet) {
            Ok(network) => {
                deployment.network_digest = Some(network.digest());
                deployment.network = Some(network);
            }
            Err(error) => resolved
                .problems
                .push(format!("network `{template_name}`: {error}")),
        }
    }
}

/// The identities of the machine's disks a layout names, in the layout's order.
/// (In a vector of their number: collected from a filter, two took the room of four.)
fn disk_identities<'n>(
    names: impl ExactSizeIterator<Item = &'n str>,
    disks: &[ObservedDisk],
) -> Vec<DiskIdentity> {
    let mut identities = Vec::with_capacity(names.len());
    let named = names.filter_map(|name| disks.iter().find(|disk| disk.name == name));
    identities.extend(named.map(|disk| DiskIdentity {
        name: disk.name.clone(),
        serial: disk.serial.clone(),
        id_path: disk.id_path.clone(),
    }));
    identities
}

/// A clone the store recorded that the fleet file does not declare (or declares otherwise):
/// a noted difference, and the TOML that keeps it.
fn note_recorded_clone(
    spec: &MachineSpec,
    observed: Option<&ObservedMachine>,
    resolved: &mut Resolved,
) {
    let Some(record) = observed.and_then(|machine| machine.cloned_from.as_ref()) else {
        return;
    };
    let declared = spec.clone_from.as_ref();
    if declared.is_some_and(|declared| same_clone(declared, record)) {
        return;
    }
    resolved.noted.push(NotedChange {
        field: "clone_from".into(),
        from: Some(clone_text(
            &record.source,
            record.storage,
            record.interfaces,
        )),
        to: declared.map(|clone| clone_text(&clone.source, clone.storage, clone.interfaces)),
        note: if declared.is_some() {
            REPLACED_CLONE.into()
        } else {
            RECORDED_CLONE.into()
        },
    });
    if declared.is_none() {
        resolved.clone_toml = Some(clone_toml(record));
    }
}

/// Each interface-clone destination as the allocator must see it — on its source's network
/// template, a `static` link of it asking for a new address — sorted by name; empty when no
/// clone needs that (the usual case).
fn cloned_network_destinations(fleet: &Fleet, observed: &Observed) -> Vec<MachineSpec> {
    // Only the clones are looked at (the fleet's and the store's), not every machine.
    let declared = fleet
        .machines
        .iter()
        .filter(|spec| spec.clone_from.is_some())
        .map(|spec| (spec, observed.machine(spec.name.as_str())));
    let recorded = observed
        .machines
        .iter()
        .filter(|machine| machine.cloned_from.is_some())
        .filter_map(|machine| Some((fleet.machine(machine.name.as_str())?, Some(machine))))
        .filter(|(spec, _)| spec.clone_from.is_none());
    let mut changes: Vec<(MachineName, Option<String>)> = Vec::new();
    for (spec, observed) in declared.chain(recorded) {
        let Some(clone) = CloneIntent::of(spec, observed).filter(|clone| clone.interfaces) else {
            continue;
        };
        let Some(source) = fleet.machine(clone.source.as_str()) else {
            continue;
        };
        let static_links = source
            .network
            .as_deref()
            .and_then(|name| fleet.network_templates.get(name))
            .is_some_and(|template| {
                template
                    .interfaces
                    .iter()
                    .any(|interface| interface.link == LinkMode::Static)
            });
        if source.network != spec.network || static_links {
            changes.push((spec.name.clone(), source.network.clone()));
        }
    }
    let mut destinations = Vec::with_capacity(changes.len());
    for (name, network) in changes {
        let Some(spec) = fleet.machine(name.as_str()) else {
            continue;
        };
        let mut destination = spec.clone();
        // A static address written for the destination is not the source's: the clone's
        // addresses are allocated afresh on the source template's subnets — a `static` link
        // of the source's template too (MAAS: a cloned static address is a new one on the
        // same subnet), so it asks for an automatic one.
        destination
            .interfaces
            .retain(|interface| interface.ip.is_none());
        let template = network
            .as_deref()
            .and_then(|name| fleet.network_templates.get(name));
        for interface in template.map_or(&[][..], |template| &template.interfaces[..]) {
            let (LinkMode::Static, Some(subnet)) = (interface.link, &interface.subnet) else {
                continue;
            };
            if destination
                .interfaces
                .iter()
                .all(|own| own.name != interface.name)
            {
                destination.interfaces.push(MachineInterface {
                    name: interface.name.clone(),
                    subnet: subnet.clone(),
                    ip: None,
                    mac: None,
                });
            }
        }
        destination.network = network;
        destinations.push(destination);
    }
    destinations.sort_by(|a, b| a.name.cmp(&b.name));
    destinations.dedup_by(|a, b| a.name == b.name);
    destinations
}

/// The layouts one planning thread has resolved: each distinct template, disk set and firmware
/// once, shared by every machine that has them.
#[derive(Default)]
pub(super) struct LayoutMemo<'a> {
    resolved: HashMap<LayoutKey<'a>, Result<(Arc<Layout>, String), LayoutError>>,
    /// Every layout handed out, by digest (the plan's `layouts`).
    pub layouts: BTreeMap<String, Arc<Layout>>,
}

impl<'a> LayoutMemo<'a> {
    fn resolve(
        &mut self,
        template: &'a StorageTemplate,
        disks: &'a [ObservedDisk],
        firmware: Firmware,
    ) -> Result<(Arc<Layout>, String), LayoutError> {
        let key = LayoutKey {
            template,
            disks,
            firmware,
        };
        if let Some(known) = self.resolved.get(&key) {
            return known.clone();
        }
        let result = resolve_layout(template, disks, firmware).map(|layout| {
            let layout = layout.without_disk_identities();
            let digest = layout.digest();
            let layout = self
                .layouts
                .entry(digest.clone())
                .or_insert_with(|| Arc::new(layout))
                .clone();
            (layout, digest)
        });
        self.resolved.insert(key, result.clone());
        result
    }

    /// Keeps a layout made outside the memo (a clone's remapped one); its digest.
    fn add(&mut self, layout: Layout) -> String {
        let layout = layout.without_disk_identities();
        let digest = layout.digest();
        self.layouts
            .entry(digest.clone())
            .or_insert_with(|| Arc::new(layout));
        digest
    }
}

/// What a layout depends on: the template, the firmware, and of each disk its name, size,
/// rotation and bus (bcache chooses its cache by them) — and its serial and by-id path only
/// when the template names a root device (which may name one by them). Serials differ from
/// machine to machine, so keying on them always would share nothing.
struct LayoutKey<'a> {
    template: &'a StorageTemplate,
    disks: &'a [ObservedDisk],
    firmware: Firmware,
}

impl LayoutKey<'_> {
    /// Disk selectors (a root device, a bcache cache device, a custom layout's disks) may
    /// choose by serial, by-id path or model: then those are part of the key.
    fn names_devices(&self) -> bool {
        self.template.root_device.is_some()
            || !matches!(
                self.template.layout,
                StorageLayout::Flat | StorageLayout::Lvm { .. } | StorageLayout::Blank
            )
    }
}

impl Hash for LayoutKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.template.name.hash(state);
        self.firmware.hash(state);
        self.disks.len().hash(state);
        let identified = self.names_devices();
        for disk in self.disks {
            disk.name.hash(state);
            disk.size_bytes.hash(state);
            disk.rotational.hash(state);
            disk.bus.hash(state);
            if identified {
                disk.serial.hash(state);
                disk.id_path.hash(state);
            }
        }
    }
}

impl PartialEq for LayoutKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        let identified = self.names_devices();
        self.template.name == other.template.name
            && self.firmware == other.firmware
            && self.disks.len() == other.disks.len()
            && self.disks.iter().zip(other.disks).all(|(a, b)| {
                a.name == b.name
                    && a.size_bytes == b.size_bytes
                    && a.rotational == b.rotational
                    && a.bus == b.bus
                    && (!identified || (a.serial == b.serial && a.id_path == b.id_path))
            })
    }
}

impl Eq for LayoutKey<'_> {}
