//! Power polling: every `policy.power_poll_seconds` (0: never) the controller asks the power
//! driver of every machine whose power can be queried (not `manual`, not unconfigured) for its
//! power state, a few machines at a time, and stores what it finds when it differs from what
//! the store says, with a `power` event ("power found off (was on), changed outside fleet").
//! A machine switched off behind fleet's back thus shows in the next plan as drift.
//!
//! A query that fails stores power `error`, with the driver's message in the event, once: a
//! machine whose BMC stays unreachable does not add an event per poll. A driver that cannot
//! tell (`unknown`, e.g. a webhook without a query URL) changes nothing. A poll that finds
//! nothing new writes nothing. Writes are guarded by the generation read before the query and
//! wait a moment (an action in flight stores its own result first), so a poll never overwrites
//! what an action stored meanwhile nor records fleet's own change as made outside it.

use crate::model::PowerState;
use crate::power::{PowerDrivers, PowerTarget};
use crate::store::{MachineRecord, Store};
use std::time::Duration;
use tokio::task::JoinSet;

/// The actor of the events the poller records.
pub const ACTOR: &str = "power-poll";

/// Machines queried at once.
const CONCURRENCY: usize = 4;

/// How long a change found waits before it is stored. An action stores the power it set only
/// after its command returns; a poll that queried meanwhile would otherwise record fleet's own
/// change as made outside fleet. The action's write bumps the machine's generation, and the
/// poll's guarded write then does nothing.
const CONFIRM_DELAY: Duration = Duration::from_secs(2);

/// A query that takes longer than this (drivers have their own, shorter, timeouts) is an error.
const QUERY_LIMIT: Duration = Duration::from_secs(60);

/// Starts polling every `seconds` (the first poll at once); `None` when `seconds` is 0.
pub fn start(
    store: &Store,
    drivers: &PowerDrivers,
    seconds: u32,
) -> Option<tokio::task::JoinHandle<()>> {
    if seconds == 0 {
        eprintln!("  power   not polled (power_poll_seconds = 0)");
        return None;
    }
    eprintln!("  power   polled every {seconds} s");
    let (store, drivers) = (store.clone(), drivers.clone());
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(u64::from(seconds)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = poll_once(&store, &drivers).await {
                tracing::warn!(%error, "power poll: cannot read the machines");
            }
        }
    }))
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollSummary {
    /// Machines whose driver was asked.
    pub queried: usize,
    /// Machines whose stored power changed.
    pub changed: usize,
}

/// Queries every pollable machine once and stores what changed.
pub async fn poll_once(
    store: &Store,
    drivers: &PowerDrivers,
) -> Result<PollSummary, crate::store::StoreError> {
    let records: Vec<MachineRecord> = store
        .planning_records()
        .await?
        .into_iter()
        .filter(|record| pollable(&record.power_type))
        .collect();
    let mut summary = PollSummary::default();
    let mut running = JoinSet::new();
    for record in records {
        while running.len() >= CONCURRENCY {
            if let Some(Ok(changed)) = running.join_next().await {
                summary.changed += usize::from(changed);
            }
        }
        summary.queried += 1;
        let (store, drivers) = (store.clone(), drivers.clone());
        running.spawn(async move { poll_machine(&store, &drivers, &record).await });
    }
    while let Some(result) = running.join_next().await {
        if let Ok(changed) = result {
            summary.changed += usize::from(changed);
        }
    }
    Ok(summary)
}

/// Power types whose state a query can tell.
fn pollable(power_type: &str) -> bool {
    !matches!(power_type, "" | "unconfigured" | "manual")
}

/// Queries one machine; `true` if its stored power changed.
async fn poll_machine(store: &Store, drivers: &PowerDrivers, record: &MachineRecord) -> bool {
    let target = PowerTarget {
        machine: record.name.to_string(),
        power_type: record.power_type.clone(),
        params: record.power_params.clone(),
    };
    let before = record.lifecycle.power;
    // A command in flight or waiting for this machine will store what it did: the poll does
    // not query beside it (a QMP socket takes one client; a BMC may answer mid-change).
    let Some(turn) = drivers.try_turn(&target.machine) else {
        return false;
    };
    let answer = tokio::time::timeout(QUERY_LIMIT, drivers.query(&target)).await;
    drop(turn);
    let (found, reason) = match answer {
        Ok(Ok(report)) if report.state == PowerState::Unknown => return false,
        Ok(Ok(report)) => (report.state, found_reason(report.state, before)),
        Ok(Err(error)) => (PowerState::Error, format!("power query failed: {error}")),
        Err(_) => (
            PowerState::Error,
            format!(
                "power query failed: no answer from the {} driver within {} s",
                record.power_type,
                QUERY_LIMIT.as_secs()
            ),
        ),
    };
    if found == before {
        return false;
    }
    tokio::time::sleep(CONFIRM_DELAY).await;
    match store
        .record_found_power(record, found, ACTOR, &reason)
        .await
    {
        Ok(changed) => {
            if changed {
                tracing::info!(machine = %record.name, from = %before, to = %found, "{reason}");
            }
            changed
        }
        Err(error) => {
            tracing::warn!(machine = %record.name, %error, "power poll: cannot store the power state");
            false
        }
    }
}

/// "power found off (was on), changed outside fleet": fleet's own commands store what they did,
/// so a change between two known states found by a poll was made by someone else.
fn found_reason(found: PowerState, before: PowerState) -> String {
    match before {
        PowerState::On | PowerState::Off => {
            format!("power found {found} (was {before}), changed outside fleet")
        }
        PowerState::Unknown | PowerState::Error => format!("power found {found} (was {before})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_say_what_changed() {
        assert_eq!(
            found_reason(PowerState::Off, PowerState::On),
            "power found off (was on), changed outside fleet"
        );
        assert_eq!(
            found_reason(PowerState::On, PowerState::Error),
            "power found on (was error)"
        );
        assert!(pollable("qemu") && pollable("ipmi"));
        assert!(!pollable("manual") && !pollable("unconfigured"));
    }
}
