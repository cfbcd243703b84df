//! The machine API's credentials (see ARCHITECTURE.md, "machine credentials"):
//!
//! - a **boot secret**, one-shot, put in each iPXE script of a machine that boots the ephemeral
//!   environment (`fleet.boot=`): one boot makes one exchange with any of its secrets; a second
//!   exchange in the same boot is refused, recorded with both addresses and fails the machine's
//!   in-progress status (someone else read a boot script: possible impersonation);
//! - a **registration secret**, one-shot, valid an hour, which an operator makes for a machine
//!   added live (`fleet machine registration NAME`) and `register-live.sh` exchanges;
//! - a **run token**, which an exchange (or the enlistment that created the machine) hands out
//!   once: valid only while its run is the machine's current run and not over.
//!
//! Only SHA-256s reach the store; no secret or token is in an event or a log line.

use super::rules::Role;
use super::{record_event, MachineApiSettings};
use crate::model::{Settlement, Status};
use crate::power::PowerDrivers;
use crate::services::actions::{fail_and_power_off, ActionError};
pub use crate::store::{new_secret, secret_hash};
use crate::store::{
    now_ms, MachineRecord, MachineRun, SecretUse, Store, StoreError, BOOT_OVERFLOW,
};

/// How long a registration secret lasts.
pub const REGISTRATION_LIFETIME_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// No credential, an unknown one, or one that expired (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A credential that is not this machine's, or a secret already spent (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The machine is not in a status the credential is for (409).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Action(#[from] ActionError),
}

/// A run a token opens: the machine as it is now and the run.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// The machine's row as it is now, without its hardware detail (facts beyond the firmware,
    /// interfaces, disks: [`Store::machine_row_and_state`]); what needs them loads the machine.
    pub record: MachineRecord,
    pub run: String,
    pub role: Role,
}

/// A run just started: its id, role and token (given to the caller once, kept only hashed).
#[derive(Debug, Clone)]
pub struct StartedRun {
    pub run: String,
    pub role: Role,
    pub token: String,
}

/// The machine and run `token` opens, if it is the token of `name`'s current run and that run
/// is not over. An ended run's token is "expired"; another machine's is forbidden.
pub async fn authorize(
    store: &Store,
    name: &str,
    token: &str,
) -> Result<Authorized, CredentialError> {
    let no_machine = || CredentialError::NotFound(format!("no machine named {name}"));
    // One query: every machine API call comes here first.
    let (record, state) = store
        .machine_row_and_state(name)
        .await?
        .ok_or_else(no_machine)?;
    let hash = secret_hash(token);
    if state.run_token_hash.as_deref() != Some(hash.as_str()) {
        return Err(match store.machine_of_run_token(&hash).await? {
            Some(other) if other != name => {
                CredentialError::Forbidden(format!("this token is not machine {name}'s"))
            }
            _ => CredentialError::Unauthorized(format!(
                "unknown token for {name}: a run's token comes from the exchange of a boot or \
                 registration secret (or the enlistment), and only the current run's is taken"
            )),
        });
    }
    let run = state.run.ok_or_else(|| {
        CredentialError::Unauthorized(format!("token expired: {name} has no run"))
    })?;
    let role = Role::parse(&run.role).unwrap_or(Role::None);
    if state.run_ended_at.is_some() || !role.still_running_in(record.lifecycle.status) {
        return Err(CredentialError::Unauthorized(format!(
            "token expired: run {} of {name} ended",
            run.id
        )));
    }
    Ok(Authorized {
        record,
        run: run.id,
        role,
    })
}

/// Starts a run of `role` for the machine with a new token; whatever it was doing before is
/// over (its running scripts are marked aborted).
pub async fn start_run(
    store: &Store,
    settings: &MachineApiSettings,
    record: &MachineRecord,
    role: Role,
    how: &str,
) -> Result<StartedRun, StoreError> {
    let name = record.name.as_str();
    let run = format!("{}-{}", role.as_str(), now_ms());
    let token = new_secret();
    store.abort_running_scripts(record.id).await?;
    let machine_run = MachineRun {
        id: run.clone(),
        role: role.as_str().to_string(),
    };
    store
        .start_machine_run(name, &machine_run, &secret_hash(&token))
        .await?;
    let scripts = super::scripts_of_run(store, settings, name, role).await?;
    let names: Vec<&str> = scripts.iter().map(|script| script.name.as_str()).collect();
    record_event(
        store,
        name,
        "run",
        format!(
            "{} run {run} started ({how}): {} scripts",
            role.as_str(),
            names.len()
        ),
        serde_json::json!({ "run": run, "role": role.as_str(), "scripts": names }),
    )
    .await;
    Ok(StartedRun { run, role, token })
}

/// The answer to an exchange: a run and its token, or nothing to run (`role none`).
#[derive(Debug, Clone)]
pub enum Exchanged {
    Run(StartedRun),
    Nothing { status: Status },
}

/// Trades a boot secret for a run token, once per boot. `from` is the caller's address.
pub async fn exchange_boot_secret(
    store: &Store,
    drivers: &PowerDrivers,
    settings: &MachineApiSettings,
    name: &str,
    secret: &str,
    from: &str,
) -> Result<Exchanged, CredentialError> {
    let record = machine_named(store, name).await?;
    let hash = secret_hash(secret);
    match store
        .use_boot_secret(name, &hash, from, record.boot_started)
        .await?
    {
        SecretUse::Won => {}
        SecretUse::AlreadyUsed { first_from } => {
            return Err(used_twice(store, drivers, &record, &first_from, from).await?)
        }
        SecretUse::Unknown | SecretUse::Expired { .. } => {
            return Err(CredentialError::Forbidden(format!(
                "this is not a boot secret of {name}'s current boot: each boot's secret comes \
                 with its iPXE script (/boot/MAC.ipxe)"
            )))
        }
    }
    let status = record.lifecycle.status;
    if Role::booted_for(status) == Role::None {
        return Err(CredentialError::Conflict(format!(
            "machine {name} is {status}: it has nothing to run in the ephemeral environment"
        )));
    }
    // The machine's first call of this boot (an enlistment, anonymous, is not one).
    store.heard_from(name).await?;
    match Role::for_run(status, false) {
        Role::None => Ok(Exchanged::Nothing { status }),
        role => {
            let how = format!("boot secret exchanged from {from}");
            let started = start_run(store, settings, &record, role, &how).await?;
            Ok(Exchanged::Run(started))
        }
    }
}

/// A second exchange in one boot: recorded with both addresses, and the in-progress status
/// fails, so a run someone else started with a boot secret never ends well unnoticed.
async fn used_twice(
    store: &Store,
    drivers: &PowerDrivers,
    record: &MachineRecord,
    first_from: &str,
    from: &str,
) -> Result<CredentialError, CredentialError> {
    let name = record.name.as_str();
    let reason = if first_from == BOOT_OVERFLOW {
        format!(
            "the boot secret of {name} was used after more boot scripts were served for one \
             boot than a machine fetches (then exchanged from {from}): possible impersonation"
        )
    } else {
        format!(
            "the boot secret of {name} was used twice (first from {first_from}, again from \
             {from}): possible impersonation"
        )
    };
    record_event(
        store,
        name,
        "security",
        reason.clone(),
        serde_json::json!({ "first_from": first_from, "again_from": from }),
    )
    .await;
    if record.lifecycle.status.is_in_progress() {
        let settlement = Settlement::Failed {
            reason: reason.clone(),
        };
        fail_and_power_off(store, drivers, name, &settlement, None).await?;
    }
    Ok(CredentialError::Forbidden(reason))
}

/// Makes a one-shot registration secret for a machine added live; returns it and its expiry.
pub async fn make_registration(
    store: &Store,
    name: &str,
    actor: &str,
) -> Result<(String, i64), CredentialError> {
    let record = machine_named(store, name).await?;
    let status = record.lifecycle.status;
    if status != Status::Deployed {
        return Err(CredentialError::Conflict(format!(
            "machine {name} is {status}: a registration secret is for a machine running a \
             workload (deployed), which register-live.sh commissions in place"
        )));
    }
    let secret = new_secret();
    let expires_at = now_ms() + REGISTRATION_LIFETIME_MS;
    store
        .set_registration(name, &secret_hash(&secret), expires_at)
        .await?;
    let event = crate::store::NewEvent {
        machine: Some(name.to_string()),
        kind: "registration".to_string(),
        actor: actor.to_string(),
        action: None,
        from_status: None,
        to_status: None,
        reason: Some(format!(
            "a one-shot registration secret was made, valid until {}",
            crate::model::words::rfc3339(expires_at)
        )),
        detail: serde_json::json!({ "expires_at": expires_at }),
    };
    if let Err(error) = store.append_event(&event).await {
        tracing::warn!("cannot record a registration event for {name}: {error}");
    }
    Ok((secret, expires_at))
}

/// Trades a registration secret for a register-live run token, once, before it expires.
pub async fn exchange_registration(
    store: &Store,
    settings: &MachineApiSettings,
    name: &str,
    secret: &str,
    from: &str,
) -> Result<StartedRun, CredentialError> {
    let record = machine_named(store, name).await?;
    let again = "make a new one with `fleet machine registration NAME`";
    match store
        .use_registration(name, &secret_hash(secret), from)
        .await?
    {
        SecretUse::Won => {}
        SecretUse::AlreadyUsed { first_from } => {
            let reason = format!(
                "the registration secret of {name} was already used (from {first_from}); \
                 refused from {from}: {again}"
            );
            record_event(
                store,
                name,
                "security",
                reason.clone(),
                serde_json::json!({ "first_from": first_from, "again_from": from }),
            )
            .await;
            return Err(CredentialError::Forbidden(reason));
        }
        SecretUse::Expired { at } => {
            return Err(CredentialError::Unauthorized(format!(
                "the registration secret of {name} expired at {}: {again}",
                crate::model::words::rfc3339(at)
            )))
        }
        SecretUse::Unknown => {
            return Err(CredentialError::Forbidden(format!(
                "this is not {name}'s registration secret: {again}"
            )))
        }
    }
    store.heard_from(name).await?;
    let how = format!("registration secret exchanged from {from}");
    Ok(start_run(store, settings, &record, Role::RegisterLive, &how).await?)
}

/// The machine called `name`, or `NotFound` saying so.
async fn machine_named(store: &Store, name: &str) -> Result<MachineRecord, CredentialError> {
    store
        .machine(name)
        .await?
        .ok_or_else(|| CredentialError::NotFound(format!("no machine named {name}")))
}
