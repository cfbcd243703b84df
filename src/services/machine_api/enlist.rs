//! Enlistment: an unknown machine registers itself (anonymous). Matching follows
//! lifecycle.md: by BMC address when it reports a BMC and a machine with that address is new or
//! commissioning (then it only fills that record's empty fields); else by any of its MACs (known:
//! nothing changes); else a new record, in status new.
//!
//! A BMC password the machine reports (the runner made a user `fleet` on its BMC) is kept in
//! the store, sealed with the controllers' secret key and bound to the machine (`store::secrets`),
//! in the transaction that creates the machine or fills its BMC fields, so every controller on
//! the database can power it; the power parameters say `password = {"store": "bmc-password"}`.
//! It never goes into an event or a log. Older controllers kept it in
//! `<state_dir>/secrets/<machine>.bmc-password`; [`move_password_files_into_store`] moves such
//! files into the store at start.

use crate::commissioning::Inventory;
use crate::config::{
    IpmiBootType, IpmiDriver, IpmiPrivilege, PowerSpec, SecretRef, SecretValue, STORED_BMC_PASSWORD,
};
use crate::model::{MacAddr, MachineName, PowerOffMode, Status};
use crate::store::{Interface, MachineRecord, NewMachine, Store, StoreError};
use serde::Deserialize;
use std::path::{Path, PathBuf};

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
    /// Reported by the machine; kept only sealed in the store (see [`enlist`]).
    pub password: Option<BmcPassword>,
}

impl Bmc {
    pub fn password_given(&self) -> bool {
        self.password.is_some()
    }
}

/// A BMC password as received. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BmcPassword(String);

impl BmcPassword {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BmcPassword {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("BmcPassword(..)")
    }
}

/// IPMI v2.0 passwords are at most 20 bytes; Redfish ones have no such limit, but a sane one.
const IPMI_PASSWORD_MAX: usize = 20;
const PASSWORD_MAX: usize = 255;

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
    // Errors about the password never repeat it.
    let password = match bmc.password.filter(|password| !password.is_empty()) {
        None => None,
        Some(password) => {
            let limit = if kind == "ipmi" {
                IPMI_PASSWORD_MAX
            } else {
                PASSWORD_MAX
            };
            if password.len() > limit {
                return Err(format!(
                    "`bmc.password` is {} bytes; a {kind} password is at most {limit}",
                    password.len()
                ));
            }
            if password.chars().any(char::is_control) {
                return Err("`bmc.password` holds control characters".to_string());
            }
            Some(BmcPassword(password))
        }
    };
    if let Some(user) = &bmc.user {
        let plain = !user.is_empty() && user.len() <= 64 && !user.chars().any(char::is_control);
        if !plain {
            return Err(
                "`bmc.user` is empty, longer than 64 bytes or holds control characters".into(),
            );
        }
    }
    Ok(Bmc {
        kind,
        address,
        user: bmc.user,
        password,
    })
}

/// How an enlistment ended. Only a record the enlistment created is the caller's own: it alone
/// gets a run token (an anonymous caller never gets an existing machine's credentials).
#[derive(Debug, Clone, PartialEq)]
pub enum Enlisted {
    Created(MachineRecord),
    /// A machine added by hand, found by its BMC address while new or commissioning: the
    /// enlistment filled the fields it left empty (named here), nothing else.
    MatchedByBmc {
        record: MachineRecord,
        filled: Vec<&'static str>,
    },
    /// The machine is known by one of its MACs: it does not enlist again.
    Known(MachineRecord),
}

/// What became of the BMC password the machine reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordKept {
    /// None was reported.
    NotGiven,
    /// Kept in the store, sealed; the power parameters name it (`{"store": "bmc-password"}`).
    Kept,
    /// Not kept, and why (no secret in it).
    NotKept(String),
}

/// `<secrets_dir>/<machine>.bmc-password`: where controllers before the store kept a reported
/// BMC password (see [`move_password_files_into_store`]).
pub fn bmc_password_path(secrets_dir: &Path, machine: &str) -> PathBuf {
    secrets_dir.join(format!("{machine}.bmc-password"))
}

/// The reported password, if the store can keep it (else why not).
fn password_to_keep(request: &EnlistRequest, store: &Store) -> Result<Option<SecretValue>, String> {
    let Some(password) = request.bmc.as_ref().and_then(|bmc| bmc.password.as_ref()) else {
        return Ok(None);
    };
    if store.secret_key_id().is_none() {
        return Err("this controller has no secret key to keep it in the store with".into());
    }
    Ok(Some(SecretValue::new(password.expose())))
}

/// Finds the machine's record, or creates one in status new. A reported BMC password is kept
/// in the store (sealed with the store's key, in the transaction that creates the machine or
/// fills its BMC fields); a store without a key does not keep it.
pub async fn enlist(
    store: &Store,
    request: &EnlistRequest,
) -> Result<(Enlisted, PasswordKept), StoreError> {
    if let Some(bmc) = &request.bmc {
        let candidates = store.machines_by_bmc_address(&bmc.address).await?;
        if let Some(record) = candidates
            .into_iter()
            .find(|record| matches!(record.lifecycle.status, Status::New | Status::Commissioning))
        {
            return fill_empty_fields(store, request, bmc, record).await;
        }
    }
    for mac in &request.macs {
        if let Some(record) = store.machine_by_mac(*mac).await? {
            return Ok((Enlisted::Known(record), PasswordKept::NotGiven));
        }
    }
    let (password, kept) = match password_to_keep(request, store) {
        Ok(Some(password)) => (Some(password), PasswordKept::Kept),
        Ok(None) => (None, PasswordKept::NotGiven),
        Err(why) => (None, PasswordKept::NotKept(why)),
    };
    let new = new_machine(request, password.is_some());
    let secrets: Vec<(&str, &SecretValue)> = password
        .iter()
        .map(|password| (STORED_BMC_PASSWORD, password))
        .collect();
    match store
        .create_machine_with_secrets(&new, "enlistment", &secrets)
        .await
    {
        Ok(record) => Ok((Enlisted::Created(record), kept)),
        // Two boots of one machine racing: the other one created it (and has its token).
        Err(StoreError::DuplicateName(_)) => match store.machine(new.name.as_str()).await? {
            Some(record) => Ok((Enlisted::Known(record), PasswordKept::NotGiven)),
            None => Err(StoreError::Conflict(new.name.to_string())),
        },
        Err(error) => Err(error),
    }
}

/// A machine added by hand with its BMC only (lifecycle.md: the BMC address is its identity
/// until it first boots): the enlistment fills what the record leaves empty — its MACs and
/// architecture when it has none, the BMC user and password when none is stored and the
/// power type is the BMC's — and never replaces what is there (an anonymous caller could
/// otherwise point the controller at a password or a BMC of its choosing).
async fn fill_empty_fields(
    store: &Store,
    request: &EnlistRequest,
    bmc: &Bmc,
    record: MachineRecord,
) -> Result<(Enlisted, PasswordKept), StoreError> {
    let name = record.name.as_str();
    let mut filled = Vec::new();
    if record.interfaces.is_empty() {
        let interfaces: Vec<Interface> = request
            .macs
            .iter()
            .enumerate()
            .map(|(index, mac)| Interface {
                name: format!("eth{index}"),
                mac: *mac,
                link_up: None,
                speed_mbps: None,
                driver: None,
            })
            .collect();
        let arch = record
            .arch
            .is_none()
            .then_some(request.architecture.as_str());
        store
            .replace_hardware(name, arch, &record.hardware, &interfaces, &record.disks)
            .await?;
        filled.push("macs");
        if arch.is_some() {
            filled.push("architecture");
        }
    }
    let mut kept = PasswordKept::NotGiven;
    let mut to_keep = None;
    let mut params = record.power_params.clone();
    if record.power_type == bmc.kind {
        if let Some(params) = params.as_object_mut() {
            if let (false, Some(user)) = (params.contains_key("user"), &bmc.user) {
                params.insert("user".into(), user.clone().into());
                filled.push("bmc user");
            }
            if bmc.password_given() && !params.contains_key("password") {
                match password_to_keep(request, store) {
                    Ok(Some(password)) => {
                        params.insert(
                            "password".into(),
                            serde_json::json!({ "store": STORED_BMC_PASSWORD }),
                        );
                        filled.push("bmc password");
                        to_keep = Some(password);
                        kept = PasswordKept::Kept;
                    }
                    Ok(None) => {}
                    Err(why) => kept = PasswordKept::NotKept(why),
                }
            }
        }
    }
    if bmc.password_given() && !filled.contains(&"bmc password") && kept == PasswordKept::NotGiven {
        kept = PasswordKept::NotKept(format!(
            "the record {name} has a BMC password or power parameters of its own, which an \
             enlistment never replaces"
        ));
    }
    if let Some(password) = &to_keep {
        // The password and the parameters that name it, in one transaction.
        store
            .keep_secret(name, STORED_BMC_PASSWORD, password, Some(&params))
            .await?;
    } else if params != record.power_params {
        store
            .update_config(name, &record.power_type, &params, &record.tags, None)
            .await?;
    }
    let record = store
        .machine(name)
        .await?
        .ok_or_else(|| StoreError::UnknownMachine(name.to_string()))?;
    Ok((Enlisted::MatchedByBmc { record, filled }, kept))
}

/// What [`move_password_files_into_store`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MovedPasswords {
    /// Machines whose password file is now in the store (file removed, reference rewritten).
    pub moved: Vec<String>,
    /// Machines whose file stays, and why (no secret in it).
    pub failed: Vec<(String, String)>,
}

/// The upgrade from controllers that kept reported BMC passwords in
/// `<state_dir>/secrets/NAME.bmc-password`: every machine whose power parameters point at a
/// file in `secrets_dir` gets it moved into the store — read, sealed and stored with the
/// parameters rewritten to `{"store": "bmc-password"}` in one transaction, then the file
/// removed. A machine that fails keeps its file and its reference (the next start tries again).
pub async fn move_password_files_into_store(
    store: &Store,
    secrets_dir: &Path,
) -> Result<MovedPasswords, StoreError> {
    let mut report = MovedPasswords::default();
    let Ok(directory) = secrets_dir.canonicalize() else {
        return Ok(report); // No directory: nothing was ever kept there.
    };
    // Every start after the move finds none: no need to read every machine then.
    let any_file = std::fs::read_dir(&directory).is_ok_and(|mut entries| {
        entries.any(|entry| {
            entry.is_ok_and(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".bmc-password")
            })
        })
    });
    if !any_file {
        return Ok(report);
    }
    for record in store.planning_records().await? {
        let Some(SecretRef::File(path)) = record
            .power_params
            .get("password")
            .and_then(SecretRef::from_json)
        else {
            continue;
        };
        let in_directory = path
            .parent()
            .and_then(|parent| parent.canonicalize().ok())
            .is_some_and(|parent| parent == directory);
        if !in_directory {
            continue;
        }
        let name = record.name.to_string();
        let moved = async {
            let secret = SecretRef::File(path.clone())
                .resolve()
                .map_err(|error| error.to_string())?;
            let mut params = record.power_params.clone();
            params["password"] = serde_json::json!({ "store": STORED_BMC_PASSWORD });
            store
                .keep_secret(
                    &name,
                    STORED_BMC_PASSWORD,
                    &SecretValue::new(secret),
                    Some(&params),
                )
                .await
                .map_err(|error| error.to_string())?;
            std::fs::remove_file(&path).map_err(|error| {
                format!(
                    "moved into the store, but {} stays: {error}",
                    path.display()
                )
            })
        };
        match moved.await {
            Ok(()) => report.moved.push(name),
            Err(why) => report.failed.push((name, why)),
        }
    }
    Ok(report)
}

/// Writes `secret` (and a newline) to `path` with mode 0600, atomically: a temporary file in
/// the same directory (made 0700 if new), synced, then renamed over `path`.
pub fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let directory = path
        .parent()
        .ok_or_else(|| std::io::Error::other("the path has no directory"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(directory)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    let serial = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = directory.join(format!(
        ".{}.{}.{serial}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(secret.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
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

fn new_machine(request: &EnlistRequest, password_kept: bool) -> NewMachine {
    let (power_type, power_params, bmc_address) = match &request.bmc {
        Some(bmc) => (
            bmc.kind.clone(),
            power_params(bmc, password_kept),
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

/// The BMC as a power driver's parameters, spelled as a fleet file's `[machine.power]` is
/// stored (so that adopting the machine writes what the fleet file reads): for IPMI, LAN 2.0,
/// cipher suite 3, ADMINISTRATOR, hard power-off, automatic boot type, as MAAS enlists. The
/// password only as a reference to what the store keeps.
fn power_params(bmc: &Bmc, password_kept: bool) -> serde_json::Value {
    let password = password_kept.then(|| SecretRef::Store(STORED_BMC_PASSWORD.to_string()));
    let spec = if bmc.kind == "ipmi" {
        PowerSpec::Ipmi {
            address: bmc.address.clone(),
            user: bmc.user.clone(),
            password,
            driver: IpmiDriver::Lan20,
            cipher_suite: Some(3),
            privilege: IpmiPrivilege::Admin,
            power_off_mode: PowerOffMode::Hard,
            boot_type: IpmiBootType::Auto,
        }
    } else {
        PowerSpec::Redfish {
            address: bmc.address.clone(),
            user: bmc.user.clone(),
            password,
            system_id: None,
            verify_tls: true,
        }
    };
    crate::plan::desired_power(&spec).1
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
        assert!(bmc.password_given());
        assert_eq!(
            power_params(&bmc, true),
            serde_json::json!({
                "address": "10.0.0.5",
                "user": "admin",
                "password": {"store": "bmc-password"},
                "driver": "lan_2_0",
                "cipher_suite": 3,
                "privilege": "admin",
                "power_off_mode": "hard",
                "boot_type": "auto",
            })
        );
        assert!(!format!("{bmc:?}").contains("pw\""), "{bmc:?}");
    }

    #[test]
    fn a_password_is_written_0600_and_atomically_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let path = bmc_password_path(&directory.path().join("secrets"), "m-1");
        write_secret_file(&path, "first").unwrap();
        write_secret_file(&path, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
        assert_eq!(
            SecretRef::File(path).resolve().unwrap(),
            "second",
            "the ipmi driver reads it back"
        );
    }

    #[test]
    fn bad_passwords_are_refused_without_being_repeated() {
        for (password, expected) in [
            ("abcdefghijklmnopqrstu", "at most 20"),
            ("line\nbreak", "control characters"),
        ] {
            let error = body(serde_json::json!({
                "architecture": "amd64", "boot_mac": "52:54:00:00:00:01", "macs": [],
                "bmc": {"type": "ipmi", "address": "10.0.0.5", "user": "fleet", "password": password}
            }))
            .unwrap_err();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains(password), "{error}");
        }
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
