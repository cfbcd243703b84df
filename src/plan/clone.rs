//! Cloning one machine's storage and/or interfaces onto others (pure): MAAS's rules and
//! messages. STUB: the `clone` branch fills this in; the signatures are the contract the
//! planner and the clone service code against.

use super::ObservedMachine;
use crate::model::MachineName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A clone the store recorded (`fleet clone` from the command line): the destination keeps the
/// source's storage and/or interfaces until the fleet file says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneRecord {
    pub source: MachineName,
    pub storage: bool,
    pub interfaces: bool,
    /// Unix ms.
    pub at: i64,
}

/// What a valid clone maps: the source's disks onto the destination's, its interfaces onto the
/// destination's by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneMapping {
    /// Source disk name → destination disk name (`None`: storage not cloned).
    pub disks: Option<BTreeMap<String, String>>,
    /// Source interface name → destination interface name (`None`: interfaces not cloned).
    pub interfaces: Option<BTreeMap<String, String>>,
}

/// Checks that `destination` can take `source`'s storage and/or interfaces. `Err`: every
/// reason it cannot, each a sentence.
pub fn check_clone(
    source: &ObservedMachine,
    destination: &ObservedMachine,
    storage: bool,
    interfaces: bool,
) -> Result<CloneMapping, Vec<String>> {
    if !storage && !interfaces {
        return Err(vec![
            "either storage or interfaces must be chosen".to_string()
        ]);
    }
    if source.name == destination.name {
        return Err(vec![format!(
            "source machine {} cannot be a destination machine",
            source.name
        )]);
    }
    let by_name = |names: Vec<String>| -> BTreeMap<String, String> {
        names.into_iter().map(|name| (name.clone(), name)).collect()
    };
    let disks = source
        .hardware
        .disks
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let nics = source
        .hardware
        .interfaces
        .iter()
        .map(|i| i.name.clone())
        .collect();
    Ok(CloneMapping {
        disks: storage.then(|| by_name(disks)),
        interfaces: interfaces.then(|| by_name(nics)),
    })
}
