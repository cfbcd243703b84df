//! The deployment a deploying run fetches (`GET /metadata/v1/machines/NAME/deployment`, the JSON
//! of CONTRACT.md) and the call-back of the installed system (`POST .../deployed`).
//!
//! The source of truth is what the plan's configure step stored (`deployment_configs`: layout
//! and network), the deploy settings of the controller's fleet file (kernel parameters, SSH
//! keys, user and vendor data: `MachineSpec.deploy` after profiles), the image the deploy action
//! recorded (`machines.image`) and that image's root file as the controller serves it. A machine
//! planned before it was commissioned has no stored layout: it is resolved now ([`resolve`],
//! pure) from its commissioned disks and its template in the controller's fleet file (MAAS's
//! default, flat on the first disk, without one), and the network from its template with the
//! addresses it holds; what resolves from the fleet file's templates is stored as the plan
//! would have stored it. A layout that does not fit fails the deployment at once.
//!
//! The call-back secret is minted at each fetch (a refetch voids the one before); only its
//! SHA-256 is kept. Its one use moves the machine to deployed.

use super::credentials::{secret_hash, Authorized};
use super::{record_event, MachineApiError, MachineApiSettings};
use crate::config::{Fleet, MachineSpec, StorageLayout, StorageTemplate};
use crate::model::{Settlement, Status};
use crate::plan::layout::{resolve_layout, select_disk};
use crate::plan::network::{render_machine_network, NetworkConfig};
use crate::plan::{AddressOrigin, Allocation, ObservedMachine, FIRMWARE_ASSUMED};
use crate::power::PowerDrivers;
use crate::services::actions::{fail_and_power_off, settle_and_carry_out};
use crate::store::{new_secret, now_ms, SecretUse, Store, StoredAddress, StoredDeployment};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The image of a deployment as the controller serves it (CONTRACT.md's `image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployImage {
    pub name: String,
    /// tgz | tar-xz | tar-zst (root tarballs) or raw | raw-gz | raw-xz | raw-zst (whole disk).
    pub format: String,
    pub url: String,
    /// The bytes served, and their SHA-256.
    pub size: u64,
    pub sha256: String,
    /// The decompressed stream, where known.
    pub raw_size: Option<u64>,
    pub raw_sha256: Option<String>,
}

impl DeployImage {
    /// A whole-disk image (written to `target_disk`; the layout must be blank).
    pub fn is_whole_disk(&self) -> bool {
        self.format.starts_with("raw")
    }
}

/// One of the machine's disks, as the deploy role finds it (serial first, then name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployDisk {
    pub name: String,
    pub serial: Option<String>,
    pub id_path: Option<String>,
    pub size: i64,
}

/// The installed system's network configuration: netplan, and the rendered JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployNetwork {
    pub netplan: String,
    pub json: Value,
}

/// Where and with what the installed system calls back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployCallback {
    pub url: String,
    pub secret: String,
}

/// The deployment JSON (CONTRACT.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentDocument {
    pub machine: String,
    pub hostname: String,
    /// bios | uefi
    pub firmware: String,
    pub image: DeployImage,
    /// The Layout JSON, each disk with the machine's own serial and by-id path.
    pub layout: Value,
    pub disks: Vec<DeployDisk>,
    pub target_disk: String,
    pub network: Option<DeployNetwork>,
    pub kernel_params: String,
    pub ssh_keys: Vec<String>,
    pub user_data: Option<String>,
    pub vendor_data: Value,
    pub callback: DeployCallback,
}

/// What [`resolve`] reads.
pub struct DeploymentInputs<'a> {
    pub machine: &'a ObservedMachine,
    pub stored: Option<&'a StoredDeployment>,
    /// The controller's fleet file (`fleet serve -f`), if it has one.
    pub fleet: Option<&'a Fleet>,
    /// The addresses the machine holds.
    pub held: &'a [StoredAddress],
    pub image: DeployImage,
}

/// The document (its call-back still to fill in) and what was resolved now from the fleet
/// file's templates, for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub document: DeploymentDocument,
    pub to_store: Option<StoredDeployment>,
}

/// The deployment of a machine, or why it cannot be deployed (the failed_deployment reason).
/// Pure.
pub fn resolve(inputs: &DeploymentInputs<'_>) -> Result<Resolved, String> {
    let machine = inputs.machine;
    let name = machine.name.as_str();
    let spec = inputs.fleet.and_then(|fleet| fleet.machine(name));
    let disks = &machine.hardware.disks;
    if disks.is_empty() {
        return Err(format!(
            "{name} has no commissioned disks to deploy to: commission it first"
        ));
    }
    let firmware = machine.hardware.firmware.unwrap_or(FIRMWARE_ASSUMED);
    let template = spec
        .and_then(|spec| spec.storage.as_deref())
        .and_then(|template| inputs.fleet?.storage_templates.get(template));
    let whole_disk = inputs.image.is_whole_disk();
    let default = default_template(whole_disk);
    let (layout, new_layout) = match inputs.stored.and_then(|stored| stored.layout.clone()) {
        Some(layout) => (layout, None),
        None => {
            let chosen = template.unwrap_or(&default);
            let layout = resolve_layout(chosen, disks, firmware)
                .map_err(|error| format!("storage `{}`: {error}", chosen.name))?
                .without_disk_identities();
            let value = serde_json::to_value(&layout).map_err(|error| error.to_string())?;
            let digest = layout.digest();
            (value.clone(), template.map(|_| (value, digest)))
        }
    };
    let kind = layout.get("kind").and_then(Value::as_str).unwrap_or("");
    if whole_disk && kind != "blank" {
        return Err(format!(
            "image `{}` is a whole-disk image ({}): the storage layout must be blank, not {kind}",
            inputs.image.name, inputs.image.format
        ));
    }
    let target_disk = target_disk(&layout, template, machine)?;
    let (network, new_network) = network_of(inputs, spec)?;
    let to_store = (new_layout.is_some() || new_network.is_some()).then(|| {
        let stored = inputs.stored;
        let (layout, layout_digest) = match new_layout {
            Some((layout, digest)) => (Some(layout), Some(digest)),
            None => (
                stored.and_then(|s| s.layout.clone()),
                stored.and_then(|s| s.layout_digest.clone()),
            ),
        };
        let (network, network_digest) = match &new_network {
            Some(network) => (serde_json::to_value(network).ok(), Some(network.digest())),
            None => (
                stored.and_then(|s| s.network.clone()),
                stored.and_then(|s| s.network_digest.clone()),
            ),
        };
        StoredDeployment {
            layout,
            layout_digest,
            network,
            network_digest,
            origin: "fleet file".to_string(),
        }
    });
    let deploy = spec.map(|spec| spec.deploy.as_ref());
    let document = DeploymentDocument {
        machine: name.to_string(),
        hostname: name.to_string(),
        firmware: firmware.as_str().to_string(),
        image: inputs.image.clone(),
        layout: with_disk_identities(layout, machine),
        disks: disks
            .iter()
            .map(|disk| DeployDisk {
                name: disk.name.clone(),
                serial: disk.serial.clone(),
                id_path: disk.id_path.clone(),
                size: disk.size_bytes,
            })
            .collect(),
        target_disk,
        network,
        kernel_params: deploy.map(|d| d.kernel_command_line()).unwrap_or_default(),
        ssh_keys: deploy.map(|d| d.ssh_keys.clone()).unwrap_or_default(),
        user_data: deploy.and_then(|d| d.user_data.as_ref().map(|u| u.text.clone())),
        vendor_data: deploy
            .and_then(|d| serde_json::to_value(&d.vendor_data).ok())
            .map(without_nulls)
            .unwrap_or_else(|| json!({})),
        callback: DeployCallback {
            url: String::new(),
            secret: String::new(),
        },
    };
    Ok(Resolved { document, to_store })
}

/// MAAS's default layout: flat on the first disk; blank for a whole-disk image.
fn default_template(whole_disk: bool) -> StorageTemplate {
    StorageTemplate {
        name: if whole_disk {
            "default (blank)"
        } else {
            "default (flat)"
        }
        .to_string(),
        layout: if whole_disk {
            StorageLayout::Blank
        } else {
            StorageLayout::Flat
        },
        efi_size: None,
        boot_size: None,
        root_size: None,
        root_device: None,
    }
}

/// The disk the image goes to: the layout's boot disk; for a blank layout (whole-disk image),
/// the template's `root_device`, else the first disk.
fn target_disk(
    layout: &Value,
    template: Option<&StorageTemplate>,
    machine: &ObservedMachine,
) -> Result<String, String> {
    let disks = &machine.hardware.disks;
    let laid_out: Vec<&Value> = layout
        .get("disks")
        .and_then(Value::as_array)
        .map(|disks| disks.iter().collect())
        .unwrap_or_default();
    let boot = laid_out
        .iter()
        .find(|disk| disk.get("boot").and_then(Value::as_bool) == Some(true))
        .or(laid_out.first())
        .and_then(|disk| disk.get("name")?.as_str());
    if let Some(boot) = boot {
        return Ok(boot.to_string());
    }
    let at = match template.and_then(|template| template.root_device.as_ref()) {
        Some(selector) => select_disk(selector, disks).map_err(|error| error.to_string())?,
        None => 0,
    };
    Ok(disks[at].name.clone())
}

/// The stored network, else the machine's template rendered with the addresses it holds.
fn network_of(
    inputs: &DeploymentInputs<'_>,
    spec: Option<&MachineSpec>,
) -> Result<(Option<DeployNetwork>, Option<NetworkConfig>), String> {
    let stored = inputs
        .stored
        .and_then(|stored| stored.network.clone())
        .filter(|network| !network.is_null());
    if let Some(json) = stored {
        let config: NetworkConfig = serde_json::from_value(json.clone())
            .map_err(|error| format!("the stored network configuration is unreadable: {error}"))?;
        let netplan = config.netplan_yaml();
        return Ok((Some(DeployNetwork { netplan, json }), None));
    }
    let (Some(fleet), Some(spec)) = (inputs.fleet, spec) else {
        return Ok((None, None));
    };
    let Some(template_name) = spec.network.as_deref() else {
        return Ok((None, None));
    };
    let Some(template) = fleet.network_templates.get(template_name) else {
        return Ok((None, None));
    };
    let allocations: Vec<Allocation> = inputs
        .held
        .iter()
        .map(|held| Allocation {
            machine: spec.name.clone(),
            interface: held.interface.clone(),
            subnet: held.subnet.clone(),
            ip: held.ip,
            origin: AddressOrigin::Held,
        })
        .collect();
    let addresses: Vec<&Allocation> = allocations.iter().collect();
    let interfaces = &inputs.machine.hardware.interfaces;
    let config = render_machine_network(template, Some(spec), interfaces, &addresses, fleet)
        .map_err(|error| format!("network `{template_name}`: {error}"))?;
    let json = serde_json::to_value(&config).map_err(|error| error.to_string())?;
    let netplan = config.netplan_yaml();
    Ok((Some(DeployNetwork { netplan, json }), Some(config)))
}

/// The layout with each disk's serial and by-id path: this machine's own (a stored layout may
/// be shared, without them).
fn with_disk_identities(mut layout: Value, machine: &ObservedMachine) -> Value {
    let Some(disks) = layout.get_mut("disks").and_then(Value::as_array_mut) else {
        return layout;
    };
    for disk in disks.iter_mut() {
        let Some(name) = disk.get("name").and_then(Value::as_str) else {
            continue;
        };
        let Some(own) = machine.hardware.disks.iter().find(|own| own.name == name) else {
            continue;
        };
        let (serial, id_path) = (own.serial.clone(), own.id_path.clone());
        if let Some(object) = disk.as_object_mut() {
            if let Some(serial) = serial {
                object.insert("serial".into(), Value::String(serial));
            }
            if let Some(id_path) = id_path {
                object.insert("id_path".into(), Value::String(id_path));
            }
        }
    }
    layout
}

fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

/// Serves the deployment of the run `authorized` opened: resolves it (failing the deployment
/// at once when it cannot be resolved), stores what was resolved now, mints the call-back
/// secret and answers the JSON. `image` is the deploy action's image as the controller serves
/// it, or why it cannot be served.
pub async fn fetch(
    store: &Store,
    drivers: &PowerDrivers,
    settings: &MachineApiSettings,
    authorized: &Authorized,
    image: Result<DeployImage, String>,
    base_url: &str,
) -> Result<DeploymentDocument, MachineApiError> {
    let record = &authorized.record;
    let name = record.name.as_str();
    super::heard_from(store, settings, record).await?;
    if authorized.role != super::Role::Deploying || record.lifecycle.status != Status::Deploying {
        return Err(MachineApiError::Stop(format!(
            "machine {name} is {}: it has no deployment to fetch",
            record.lifecycle.status
        )));
    }
    let stored = store.deployment(name).await?;
    let held = store.machine_addresses(name).await?;
    // With its disks and interfaces, which the layout and the network are resolved against.
    let full = store
        .machine(name)
        .await?
        .ok_or_else(|| crate::store::StoreError::UnknownMachine(name.to_string()))?;
    let machine = ObservedMachine::from_record(&full);
    let resolved = image.and_then(|image| {
        resolve(&DeploymentInputs {
            machine: &machine,
            stored: stored.as_ref(),
            fleet: settings.fleet.as_deref(),
            held: &held,
            image,
        })
    });
    let resolved = match resolved {
        Ok(resolved) => resolved,
        Err(reason) => {
            let settlement = Settlement::Failed {
                reason: reason.clone(),
            };
            fail_and_power_off(store, drivers, name, &settlement, None).await?;
            return Err(MachineApiError::Stop(reason));
        }
    };
    if let Some(to_store) = &resolved.to_store {
        store.store_deployment(name, to_store).await?;
    }
    let secret = new_secret();
    store
        .set_callback(name, &authorized.run, &secret_hash(&secret))
        .await?;
    let mut document = resolved.document;
    document.callback = DeployCallback {
        url: format!("{base_url}/metadata/v1/machines/{name}/deployed"),
        secret,
    };
    record_event(
        store,
        name,
        "deployment",
        format!(
            "deployment fetched: image {} ({}), layout {}, target disk {}{}",
            document.image.name,
            document.image.format,
            document
                .layout
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            document.target_disk,
            if resolved.to_store.is_some() {
                " (resolved now from the fleet file: the plan was made before commissioning)"
            } else {
                ""
            }
        ),
        json!({ "run": authorized.run, "image": document.image.name }),
    )
    .await;
    Ok(document)
}

/// Why a call-back was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// A wrong or used secret (403; a security event was recorded).
    #[error("{0}")]
    Forbidden(String),
    /// The machine is not waiting for a call-back (409).
    #[error("{0}")]
    NotWaiting(String),
    #[error("no machine named {0}")]
    NotFound(String),
    #[error(transparent)]
    Api(#[from] MachineApiError),
}

impl From<crate::store::StoreError> for CallbackError {
    fn from(error: crate::store::StoreError) -> Self {
        CallbackError::Api(error.into())
    }
}

/// The installed system's call-back with its one-shot secret: the machine is deployed.
pub async fn call_back(
    store: &Store,
    drivers: &PowerDrivers,
    name: &str,
    secret: &str,
    from: &str,
) -> Result<(), CallbackError> {
    let record = store
        .machine(name)
        .await?
        .ok_or_else(|| CallbackError::NotFound(name.to_string()))?;
    let state = store.machine_state(name).await?.unwrap_or_default();
    let hash = secret_hash(secret);
    let callback = state
        .callback
        .as_ref()
        .filter(|callback| callback.hash == hash);
    if let Some(first_from) = callback.and_then(|callback| callback.used_from.as_deref()) {
        let reason = format!(
            "the call-back secret of {name} was used again (first from {first_from}, again \
             from {from}): possible impersonation"
        );
        return Err(refused(store, name, reason, from).await);
    }
    let mut watched = record.watched();
    watched.install_done = state.install_done_at;
    if watched.install_done_at().is_none() {
        return Err(CallbackError::NotWaiting(format!(
            "machine {name} is {} and not waiting for its installed system to call back",
            record.lifecycle.status
        )));
    }
    if callback.is_none() {
        let reason = format!(
            "a call-back for {name} from {from} carried a secret that is not its deployment's \
             (a later fetch of the deployment voids the one before)"
        );
        return Err(refused(store, name, reason, from).await);
    }
    match store.use_callback(name, &hash, from).await? {
        SecretUse::Won => {}
        SecretUse::AlreadyUsed { first_from } => {
            let reason = format!(
                "the call-back secret of {name} was used again (first from {first_from}, \
                 again from {from}): possible impersonation"
            );
            return Err(refused(store, name, reason, from).await);
        }
        _ => {
            let reason = format!("a call-back for {name} from {from} carried a void secret");
            return Err(refused(store, name, reason, from).await);
        }
    }
    record_event(
        store,
        name,
        "deployment",
        format!("the installed system called back from {from}"),
        json!({ "from": from, "after_ms": now_ms() - state.install_done_at.unwrap_or(0) }),
    )
    .await;
    settle_and_carry_out(store, drivers, name, "machine", &Settlement::Succeeded)
        .await
        .map_err(MachineApiError::from)?;
    Ok(())
}

async fn refused(store: &Store, name: &str, reason: String, from: &str) -> CallbackError {
    record_event(
        store,
        name,
        "security",
        reason.clone(),
        json!({ "from": from }),
    )
    .await;
    CallbackError::Forbidden(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ObservedDisk, ObservedHardware, PowerParams};

    const GIB: i64 = 1024 * 1024 * 1024;

    const FLEET: &str = r#"
[storage_templates.flat]
layout = "flat"

[storage_templates.whole]
layout = "blank"
root_device = { pick = "largest" }

[[machine]]
name = "m1"
macs = ["52:54:00:00:00:01"]
storage = "flat"
kernel_params = "console=ttyS0"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA3ldeHeRPLQ0TyMDBzbdW7Y36B+kNNg1blrHZsywfgX ops@base"]

[[machine]]
name = "m2"
macs = ["52:54:00:00:00:02"]
storage = "whole"
"#;

    fn fleet() -> Fleet {
        crate::config::load_str("fleet.toml", FLEET).expect("the fleet loads")
    }

    fn machine(name: &str, disks: &[(&str, i64)]) -> ObservedMachine {
        ObservedMachine {
            name: crate::model::MachineName::parse(name).unwrap(),
            status: Status::Deploying,
            previous_status: None,
            status_reason: None,
            power: crate::model::PowerState::On,
            power_error: None,
            locked: false,
            owner: Some("ops".into()),
            commissioned: true,
            deployed_os: None,
            power_type: "manual".into(),
            power_params: PowerParams::from_value(&json!({})),
            image: Some("noble".into()),
            tags: vec![],
            arch: Some("amd64".into()),
            macs: vec![],
            hardware: ObservedHardware {
                disks: disks
                    .iter()
                    .map(|(name, size)| ObservedDisk {
                        name: name.to_string(),
                        size_bytes: *size,
                        serial: Some(format!("S-{name}")),
                        id_path: Some(format!("/dev/disk/by-id/ata-{name}")),
                        model: None,
                        bus: Some("ata".into()),
                        rotational: Some(false),
                    })
                    .collect(),
                firmware: Some(crate::plan::Firmware::Bios),
                ..ObservedHardware::default()
            },
            generation: 1,
            heard_from: true,
            cloned_from: None,
            deployment: None,
        }
    }

    fn image(format: &str) -> DeployImage {
        DeployImage {
            name: "noble".into(),
            format: format.into(),
            url: "http://10.99.0.1:5248/boot/files/noble/root".into(),
            size: 1234,
            sha256: "a".repeat(64),
            raw_size: None,
            raw_sha256: None,
        }
    }

    fn resolved(
        machine: &ObservedMachine,
        stored: Option<&StoredDeployment>,
        format: &str,
    ) -> Result<Resolved, String> {
        let fleet = fleet();
        resolve(&DeploymentInputs {
            machine,
            stored,
            fleet: Some(&fleet),
            held: &[],
            image: image(format),
        })
    }

    #[test]
    fn a_layout_not_stored_is_resolved_from_the_template_and_kept_without_serials() {
        let m1 = machine("m1", &[("sda", 32 * GIB), ("sdb", 64 * GIB)]);
        let resolved = resolved(&m1, None, "tgz").unwrap();
        let document = &resolved.document;
        assert_eq!(document.layout["kind"], "flat");
        assert_eq!(document.layout["disks"][0]["serial"], "S-sda");
        assert_eq!(document.target_disk, "sda");
        assert_eq!(document.disks.len(), 2);
        assert_eq!(document.kernel_params, "console=ttyS0");
        assert_eq!(document.ssh_keys.len(), 1);
        assert_eq!(document.vendor_data, json!({}));
        assert_eq!(document.firmware, "bios");
        let stored = resolved
            .to_store
            .expect("resolved from the fleet file: stored");
        let layout = stored.layout.unwrap();
        assert!(layout["disks"][0].get("serial").is_none(), "{layout}");
        let digest = crate::plan::layout::resolve_layout(
            fleet().storage_templates.get("flat").unwrap(),
            &m1.hardware.disks,
            crate::plan::Firmware::Bios,
        )
        .unwrap()
        .without_disk_identities()
        .digest();
        assert_eq!(stored.layout_digest, Some(digest), "the plan's digest");
    }

    #[test]
    fn a_stored_layout_wins_and_is_not_stored_again() {
        let m1 = machine("m1", &[("sda", 32 * GIB)]);
        let stored = StoredDeployment {
            layout: Some(json!({"kind": "lvm", "disks": [{"name": "sda", "boot": true}]})),
            layout_digest: Some("0123456789abcdef".into()),
            network: None,
            network_digest: None,
            origin: "fleet file".into(),
        };
        let resolved = resolved(&m1, Some(&stored), "tgz").unwrap();
        assert_eq!(resolved.document.layout["kind"], "lvm");
        assert_eq!(
            resolved.document.layout["disks"][0]["id_path"],
            "/dev/disk/by-id/ata-sda"
        );
        assert_eq!(resolved.to_store, None);
    }

    #[test]
    fn a_whole_disk_image_needs_a_blank_layout() {
        let disks = [("sda", 32 * GIB), ("sdb", 64 * GIB)];
        let refused = resolved(&machine("m1", &disks), None, "raw-xz").unwrap_err();
        assert_eq!(
            refused,
            "image `noble` is a whole-disk image (raw-xz): the storage layout must be blank, not flat"
        );
        // The template's root_device picks the target disk.
        let whole = resolved(&machine("m2", &disks), None, "raw-xz").unwrap();
        assert_eq!(whole.document.layout["kind"], "blank");
        assert_eq!(whole.document.target_disk, "sdb");
        // Not in the fleet file: blank (MAAS's default for a whole-disk image) on the first disk.
        let unknown = resolved(&machine("m9", &disks), None, "raw").unwrap();
        assert_eq!(unknown.document.target_disk, "sda");
        assert_eq!(
            unknown.to_store, None,
            "a default is not the plan's: not stored"
        );
        assert_eq!(unknown.document.ssh_keys, Vec::<String>::new());
    }

    #[test]
    fn without_a_template_the_default_is_flat_on_the_first_disk() {
        let unknown = resolved(&machine("m9", &[("vda", 20 * GIB)]), None, "tgz").unwrap();
        assert_eq!(unknown.document.layout["kind"], "flat");
        assert_eq!(unknown.document.target_disk, "vda");
        assert_eq!(unknown.to_store, None);
    }

    #[test]
    fn what_cannot_be_deployed_says_why() {
        let tiny = resolved(&machine("m1", &[("sda", 2 * GIB)]), None, "tgz").unwrap_err();
        assert!(tiny.starts_with("storage `flat`: "), "{tiny}");
        let none = resolved(&machine("m1", &[]), None, "tgz").unwrap_err();
        assert_eq!(
            none,
            "m1 has no commissioned disks to deploy to: commission it first"
        );
    }
}
