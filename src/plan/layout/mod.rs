//! Storage layouts: a storage template resolved against one machine's commissioned disks
//! (pure). STUB: the `layout` branch fills this in; the signatures are the contract the
//! planner, cloning and the deployment issue code against.

use super::{Firmware, ObservedDisk};
use crate::config::StorageTemplate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The concrete layout of one machine: what the deploy role lays out, byte for byte.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The template it was resolved from.
    pub template: String,
}

/// Why a template does not resolve on a machine's disks (a plan error for that machine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{0}")]
    Invalid(String),
}

/// Resolves `template` against `disks` for a machine booting with `firmware`.
pub fn resolve_layout(
    template: &StorageTemplate,
    _disks: &[ObservedDisk],
    _firmware: Firmware,
) -> Result<Layout, LayoutError> {
    Ok(Layout {
        template: template.name.clone(),
    })
}

impl Layout {
    /// The same layout with its disks renamed (`source disk name → destination disk name`):
    /// what a clone of storage gives the destination.
    pub fn remap_disks(&self, _disk_map: &BTreeMap<String, String>) -> Layout {
        self.clone()
    }

    /// A compact table for `fleet plan` (one line per partition / volume), each line indented
    /// by `indent` spaces.
    pub fn table(&self, _indent: usize) -> String {
        String::new()
    }

    /// A short digest of the layout's JSON: what the plan compares with the stored layout's.
    pub fn digest(&self) -> String {
        crate::plan::fingerprint::json_digest(self)
    }
}
