//! Power drivers: how the controller turns machines on, off and into the network boot.
//!
//! A driver is picked by the machine's power type. Every call returns a [`PowerError`] that says
//! which machine, which driver and what went wrong, never a secret. Drivers do IO; the decision
//! of *which* command to send is the life-cycle's (`model::decide`), not theirs.

mod ipmi;
mod manual;
mod qemu;
pub mod queue;
mod redfish;
mod webhook;

pub use ipmi::IpmiDriver;
pub use manual::ManualDriver;
pub use qemu::QemuDriver;
pub use queue::PowerTurn;

use crate::config::{SecretError, SecretRef, SecretValue};
use crate::model::{PowerCommand, PowerState};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a driver needs to know about the machine it drives.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerTarget {
    pub machine: String,
    pub power_type: String,
    /// Driver parameters; secrets only as references, resolved by the driver when it acts.
    pub params: serde_json::Value,
    /// The secrets the params name as `{"store": PURPOSE}`, read from the store for this call
    /// (the services fill it; a driver cannot reach the store).
    pub stored: StoredSecrets,
}

impl PowerTarget {
    /// A target whose params name no stored secret (or whose stored secrets are read later).
    pub fn new(
        machine: impl Into<String>,
        power_type: impl Into<String>,
        params: serde_json::Value,
    ) -> PowerTarget {
        PowerTarget {
            machine: machine.into(),
            power_type: power_type.into(),
            params,
            stored: StoredSecrets::default(),
        }
    }

    /// Reads a secret reference now: `env` and `file` as [`SecretRef::resolve`] does, `store`
    /// from the secrets read for this call.
    pub fn resolve_secret(&self, reference: &SecretRef) -> Result<String, SecretError> {
        self.stored.resolve(reference)
    }
}

/// The purposes of every `{"store": PURPOSE}` reference among `params`' values.
pub fn stored_purposes(params: &serde_json::Value) -> Vec<String> {
    let mut purposes: Vec<String> = params
        .as_object()
        .into_iter()
        .flat_map(|object| object.values())
        .filter_map(|value| match SecretRef::from_json(value) {
            Some(SecretRef::Store(purpose)) => Some(purpose),
            _ => None,
        })
        .collect();
    purposes.sort();
    purposes.dedup();
    purposes
}

/// Secrets read from the store for one power call, by purpose. `Debug` shows the purposes
/// only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredSecrets(BTreeMap<String, SecretValue>);

impl StoredSecrets {
    pub fn insert(&mut self, purpose: impl Into<String>, secret: SecretValue) {
        self.0.insert(purpose.into(), secret);
    }

    pub fn get(&self, purpose: &str) -> Option<&SecretValue> {
        self.0.get(purpose)
    }

    /// Reads a secret reference now: `env` and `file` as [`SecretRef::resolve`] does, `store`
    /// from these.
    pub fn resolve(&self, reference: &SecretRef) -> Result<String, SecretError> {
        match reference {
            SecretRef::Store(purpose) => self
                .get(purpose)
                .map(|secret| secret.expose().to_string())
                .ok_or_else(|| SecretError::InStore(purpose.clone())),
            other => other.resolve(),
        }
    }
}

impl std::fmt::Debug for StoredSecrets {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_list().entries(self.0.keys()).finish()
    }
}

/// What a driver reports after a command or a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerReport {
    /// The power state as far as the driver knows (`unknown` when it cannot tell).
    pub state: PowerState,
    /// Something a person must know or do ("manual power: switch node-1 on now").
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowerError {
    #[error("machine `{machine}` has no power type; set one (manual if a person powers it)")]
    Unconfigured { machine: String },
    #[error("machine `{machine}`: no power driver for type `{power_type}` in this controller")]
    NoDriver { machine: String, power_type: String },
    #[error("{driver} {target}: {message}")]
    Driver {
        driver: String,
        target: String,
        message: String,
    },
    /// A secret the params name could not be had (no key, another key, none kept).
    #[error("{message}")]
    Secret { machine: String, message: String },
    #[error("{driver} {target}: no answer within {seconds} s")]
    Timeout {
        driver: String,
        target: String,
        seconds: u64,
    },
}

pub type PowerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PowerError>> + Send + 'a>>;

/// A power driver. Implementations must be cheap to share between tasks.
pub trait PowerDriver: Send + Sync {
    /// The power type it serves (`manual`, `ipmi` ...).
    fn power_type(&self) -> &'static str;
    /// Carries out a power command.
    fn execute<'a>(
        &'a self,
        target: &'a PowerTarget,
        command: PowerCommand,
    ) -> PowerFuture<'a, PowerReport>;
    /// Reads the power state.
    fn query<'a>(&'a self, target: &'a PowerTarget) -> PowerFuture<'a, PowerReport>;
}

/// The drivers a controller has, by power type.
#[derive(Clone, Default)]
pub struct PowerDrivers {
    drivers: BTreeMap<&'static str, Arc<dyn PowerDriver>>,
    /// One queue per machine, shared by every clone (see [`queue`]).
    queues: Arc<queue::MachineQueues>,
}

impl PowerDrivers {
    /// The drivers this build has.
    pub fn standard() -> Self {
        let mut drivers = PowerDrivers::default();
        drivers.add(Arc::new(ManualDriver));
        drivers.add(Arc::new(IpmiDriver::default()));
        drivers.add(Arc::new(redfish::RedfishDriver::default()));
        drivers.add(Arc::new(webhook::WebhookDriver::default()));
        drivers.add(Arc::new(QemuDriver::default()));
        drivers
    }

    pub fn add(&mut self, driver: Arc<dyn PowerDriver>) {
        self.drivers.insert(driver.power_type(), driver);
    }

    /// The power types a machine may be given.
    pub fn power_types(&self) -> Vec<&'static str> {
        self.drivers.keys().copied().collect()
    }

    pub fn driver_for(&self, target: &PowerTarget) -> Result<Arc<dyn PowerDriver>, PowerError> {
        if target.power_type == "unconfigured" || target.power_type.is_empty() {
            return Err(PowerError::Unconfigured {
                machine: target.machine.clone(),
            });
        }
        self.drivers
            .get(target.power_type.as_str())
            .cloned()
            .ok_or_else(|| PowerError::NoDriver {
                machine: target.machine.clone(),
                power_type: target.power_type.clone(),
            })
    }

    pub async fn execute(
        &self,
        target: &PowerTarget,
        command: PowerCommand,
    ) -> Result<PowerReport, PowerError> {
        self.driver_for(target)?.execute(target, command).await
    }

    pub async fn query(&self, target: &PowerTarget) -> Result<PowerReport, PowerError> {
        self.driver_for(target)?.query(target).await
    }

    /// Waits for `machine`'s turn in its power queue (after every turn asked for before).
    pub async fn turn(&self, machine: &str) -> PowerTurn {
        queue::turn(&self.queues, machine).await
    }

    /// `machine`'s turn if no command for it is in flight or waiting.
    pub fn try_turn(&self, machine: &str) -> Option<PowerTurn> {
        queue::try_turn(&self.queues, machine)
    }

    /// How many machines have a power command in flight or waiting.
    pub fn busy_machines(&self) -> usize {
        self.queues.busy_machines()
    }
}

/// An optional string parameter; anything but a string is an error for the driver to report.
pub(crate) fn optional_string(
    params: &serde_json::Value,
    key: &str,
) -> Result<Option<String>, String> {
    match params.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

/// An optional secret parameter: only a reference (`{"env": ..}` / `{"file": ..}` /
/// `{"store": ..}`), never a
/// value, and the error never repeats what was given.
pub(crate) fn optional_secret(
    params: &serde_json::Value,
    key: &str,
) -> Result<Option<SecretRef>, String> {
    match params.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => SecretRef::from_json(value).map(Some).ok_or_else(|| {
            format!(
                "the {key} must be a reference, {{\"env\": \"NAME\"}}, {{\"file\": \"PATH\"}} or {{\"store\": \"bmc-password\"}}, not a value"
            )
        }),
    }
}

/// What a soft power-off reports once the driver has asked for it: the state read back, and
/// while the machine is still on, a note that its operating system shuts it down by itself.
pub fn after_soft_off(driver: &str, address: &str, state: PowerState) -> PowerReport {
    let note = (state == PowerState::On).then(|| {
        format!("{driver} {address}: soft power-off requested; the machine shuts down by itself")
    });
    PowerReport { state, note }
}
