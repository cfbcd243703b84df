//! Enlistment: an unknown machine registers itself (anonymous). Matching follows
//! lifecycle.md: by BMC address when it reports a BMC and a machine with that address is new or
//! commissioning; else by any of its MACs; else a new record, in status new.

use crate::commissioning::Inventory;
use crate::model::{MacAddr, MachineName, Status};
use crate::store::{Interface, MachineRecord, NewMachine, Store, StoreError};
use serde::Deserialize;

/// The built-in scripts whose findings replace the stored interfaces and disks.
const INTERFACES_SCRIPT: &str = "40-fleet-interfaces";
const DISKS_SCRIPT: &str = "30-fleet-disks";

/// What an enlisting machine sends, as received (checked by [`EnlistRequest::check`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnlistBody {
    pub architecture: Option<String>,
    pub boot_mac: Option<String>,
    pub macs: Option<Vec<String>>,
    pub bmc: Option<BmcBody>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcBody {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub address: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// A checked enlistment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnlistRequest {
    pub architecture: String,
    pub boot_mac: MacAddr,
    /// Every MAC, the boot MAC first, without duplicates.
    pub macs: Vec<MacAddr>,
    pub bmc: Option<Bmc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmc {
    /// `ipmi` or `redfish`.
    pub kind: String,
    pub address: String,
    pub user: Option<String>,
    /// Reported by the machine; never stored (see [`power_params`]).
    pub password_given: bool,
}

impl EnlistBody {
    /// Every problem is a reason for a 400; nothing is stored for a bad request.
    pub fn check(self) -> Result<EnlistRequest, String> {
        let architecture = self
            .architecture
            .ok_or("`architecture` is missing (e.g. \"amd64\")")?;
        if crate::config::Arch::parse(&architecture).is_none() {
            return Err(format!(
                "`architecture` {architecture:?} is not one of {}",
                crate::config::Arch::NAMES.join(", ")
            ));
        }
        let boot_mac = self.boot_mac.ok_or("`boot_mac` is missing")?;
        let boot_mac = MacAddr::parse(&boot_mac).map_err(|error| format!("`boot_mac`: {error}"))?;
        let mut macs = vec![boot_mac];
        for text in self
            .macs
            .ok_or("`macs` is missing (every MAC of the machine)")?
        {
            let mac = MacAddr::parse(&text).map_err(|error| format!("`macs`: {error}"))?;
            if !macs.contains(&mac) {
                macs.push(mac);
            }
        }
        if macs.len() > 64 {
            return Err(format!("`macs` lists {} MACs; at most 64", macs.len()));
        }
        let bmc = self.bmc.map(check_bmc).transpose()?;
        Ok(EnlistRequest {
            architecture,
            boot_mac,
            macs,
            bmc,
        })
    }
}

fn check_bmc(bmc: BmcBody) -> Result<Bmc, String> {
    let kind = bmc.kind.ok_or("`bmc.type` is missing (ipmi or redfish)")?;
    if kind != "ipmi" && kind != "redfish" {
        return Err(format!("`bmc.type` {kind:?} is not ipmi or redfish"));
    }
    let address = bmc.address.ok_or("`bmc.address` is missing")?;
    let plain = !address.is_empty()
        && address.len() <= 253
        && address
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'));
    if !plain {
        return Err(format!(
            "`bmc.address` {address:?} is not a host name or address"
        ));
    }
    Ok(Bmc {
        kind,
        address,
        user: bmc.user,
        password_given: bmc.password.is_some_and(|password| !password.is_empty()),
    })
}

/// How an enlistment ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Enlisted {
    Created(MachineRecord),
    Matched(MachineRecord),
    /// The machine is known and past enlistment: it must not take over the record.
    Known(MachineRecord),
}

/// Finds the machine's record, or creates one in status new.
pub async fn enlist(store: &Store, request: &EnlistRequest) -> Result<Enlisted, StoreError> {
    if let Some(bmc) = &request.bmc {
        let candidates = store.machines_by_bmc_address(&bmc.address).await?;
        if let Some(record) = candidates
            .into_iter()
            .find(|record| matches!(record.lifecycle.status, Status::New | Status::Commissioning))
        {
            return Ok(Enlisted::Matched(record));
        }
    }
    for mac in &request.macs {
        if let Some(record) = store.machine_by_mac(*mac).await? {
            return Ok(
                if matches!(record.lifecycle.status, Status::New | Status::Commissioning) {
                    Enlisted::Matched(record)
                } else {
                    Enlisted::Known(record)
                },
            );
        }
    }
    let new = new_machine(request);
    match store.create_machine(&new, "enlistment").await {
        Ok(record) => Ok(Enlisted::Created(record)),
        // Two boots of one machine racing: the other one created it.
        Err(StoreError::DuplicateName(_)) => match store.machine(new.name.as_str()).await? {
            Some(record) => Ok(Enlisted::Matched(record)),
            None => Err(StoreError::Conflict(new.name.to_string())),
        },
        Err(error) => Err(error),
    }
}

/// `enlisted-525400123456`: stable for the machine, so a second boot finds its record.
pub fn enlisted_name(boot_mac: MacAddr) -> MachineName {
    let hex: String = boot_mac
        .0
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    MachineName::parse(&format!("enlisted-{hex}")).expect("a valid machine name")
}

fn new_machine(request: &EnlistRequest) -> NewMachine {
    let (power_type, power_params, bmc_address) = match &request.bmc {
        Some(bmc) => (
            bmc.kind.clone(),
            power_params(bmc),
            Some(bmc.address.clone()),
        ),
        None => ("unconfigured".to_string(), serde_json::json!({}), None),
    };
    NewMachine {
        name: enlisted_name(request.boot_mac),
        status: Status::New,
        macs: request.macs.clone(),
        arch: Some(request.architecture.clone()),
        power_type,
        power_params,
        bmc_address,
        image: None,
        tags: Vec::new(),
        deployed_os: None,
    }
}

/// The BMC as a power driver's parameters. The password a machine reports is not kept: fleet
/// stores secrets only as references, so the operator gives it in the fleet file
/// (`password = { env = "..." }`) when adopting the machine.
fn power_params(bmc: &Bmc) -> serde_json::Value {
    let mut params = serde_json::json!({ "address": bmc.address });
    if let Some(user) = &bmc.user {
        params["user"] = serde_json::Value::String(user.clone());
    }
    params
}

/// The inventory to store: what the run's scripts found, and what the record already had
/// for the parts no script has reported yet (`reported(script)`).
pub fn merge_inventory(
    record: &MachineRecord,
    found: Inventory,
    reported: impl Fn(&str) -> bool,
) -> Inventory {
    let hardware = &record.hardware;
    let mut merged = found;
    merged.arch = merged.arch.or_else(|| record.arch.clone());
    let mine = &mut merged.hardware;
    mine.cpus = mine.cpus.or(hardware.cpus);
    mine.cpu_model = mine.cpu_model.take().or_else(|| hardware.cpu_model.clone());
    mine.cpu_speed_mhz = mine.cpu_speed_mhz.or(hardware.cpu_speed_mhz);
    mine.memory_mib = mine.memory_mib.or(hardware.memory_mib);
    if let (Some(found), Some(old)) = (mine.facts.as_object_mut(), hardware.facts.as_object()) {
        for (key, value) in old {
            found.entry(key.clone()).or_insert_with(|| value.clone());
        }
    } else if mine.facts.is_null() {
        mine.facts = hardware.facts.clone();
    }
    if !reported(INTERFACES_SCRIPT) || merged.interfaces.is_empty() {
        merged.interfaces = record.interfaces.clone();
    } else {
        keep_unreported_macs(&mut merged.interfaces, &record.interfaces);
    }
    if !reported(DISKS_SCRIPT) {
        merged.disks = record.disks.clone();
    }
    merged
}

/// A MAC the machine was known by (its boot MAC, one given by hand) stays, even when the
/// ephemeral environment did not see that interface (no driver for it).
fn keep_unreported_macs(found: &mut Vec<Interface>, known: &[Interface]) {
    for interface in known {
        if !found.iter().any(|seen| seen.mac == interface.mac) {
            found.push(interface.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> Result<EnlistRequest, String> {
        serde_json::from_value::<EnlistBody>(json)
            .map_err(|error| error.to_string())?
            .check()
    }

    #[test]
    fn a_good_enlistment_lists_the_boot_mac_first_once() {
        let request = body(serde_json::json!({
            "architecture": "amd64",
            "boot_mac": "52:54:00:00:00:02",
            "macs": ["52:54:00:00:00:01", "52:54:00:00:00:02"],
            "bmc": {"type": "ipmi", "address": "10.0.0.5", "user": "admin", "password": "pw"}
        }))
        .unwrap();
        assert_eq!(request.macs.len(), 2);
        assert_eq!(request.macs[0].to_string(), "52:54:00:00:00:02");
        let bmc = request.bmc.unwrap();
        assert!(bmc.password_given);
        assert_eq!(
            power_params(&bmc),
            serde_json::json!({"address": "10.0.0.5", "user": "admin"})
        );
    }

    #[test]
    fn bad_enlistments_say_what_is_wrong() {
        for (json, expected) in [
            (
                serde_json::json!({"boot_mac": "52:54:00:00:00:01", "macs": []}),
                "`architecture` is missing",
            ),
            (
                serde_json::json!({"architecture": "sparc", "boot_mac": "52:54:00:00:00:01", "macs": []}),
                "not one of",
            ),
            (
                serde_json::json!({"architecture": "amd64", "macs": []}),
                "`boot_mac` is missing",
            ),
            (
                serde_json::json!({"architecture": "amd64", "boot_mac": "zz", "macs": []}),
                "`boot_mac`",
            ),
            (
                serde_json::json!({"architecture": "amd64", "boot_mac": "52:54:00:00:00:01"}),
                "`macs` is missing",
            ),
            (
                serde_json::json!({"architecture": "amd64", "boot_mac": "52:54:00:00:00:01", "macs": [], "bmc": {"type": "ilo", "address": "x"}}),
                "not ipmi or redfish",
            ),
            (
                serde_json::json!({"architecture": "amd64", "boot_mac": "52:54:00:00:00:01", "macs": [], "bmc": {"type": "ipmi", "address": "a b"}}),
                "not a host name",
            ),
            (
                serde_json::json!({"architecture": "amd64", "boot_mac": "52:54:00:00:00:01", "macs": [], "extra": 1}),
                "unknown field",
            ),
        ] {
            let error = body(json.clone()).unwrap_err();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn enlisted_names_come_from_the_boot_mac() {
        let mac = MacAddr::parse("52:54:00:12:34:56").unwrap();
        assert_eq!(enlisted_name(mac).as_str(), "enlisted-525400123456");
    }
}
