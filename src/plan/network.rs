//! Network configurations: a network template rendered for one machine (pure). STUB: the
//! `netplan` branch fills this in; the signatures are the contract the planner, cloning and the
//! deployment issue code against.

use super::{Allocation, ObservedInterface};
use crate::config::{Fleet, NetworkTemplate};
use serde::{Deserialize, Serialize};

/// One machine's rendered network configuration (its JSON form is this struct).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The template it was rendered from.
    pub template: String,
}

/// Why a template does not render for a machine (a plan error for that machine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Invalid(String),
}

/// Renders `template` for a machine with the commissioned `interfaces` and the static
/// `addresses` allocated to it (`fleet` gives the subnets: prefix, gateway, DNS, domain).
pub fn render_network(
    template: &NetworkTemplate,
    _interfaces: &[ObservedInterface],
    _addresses: &[&Allocation],
    _fleet: &Fleet,
) -> Result<NetworkConfig, NetworkError> {
    Ok(NetworkConfig {
        template: template.name.clone(),
    })
}

impl NetworkConfig {
    /// netplan v2 YAML, as written to `/etc/netplan/50-fleet.yaml` on the installed system.
    pub fn netplan_yaml(&self) -> String {
        String::new()
    }

    /// A compact table for `fleet plan`, each line indented by `indent` spaces.
    pub fn table(&self, _indent: usize) -> String {
        String::new()
    }

    /// A short digest of the configuration's JSON: what the plan compares with the stored one.
    pub fn digest(&self) -> String {
        crate::plan::fingerprint::json_digest(self)
    }
}
