//! Power polling: every `policy.power_poll_seconds` (0: never) the controller asks the power
//! driver of every machine whose power can be queried (not `manual`, not unconfigured) for its
//! power state, a few machines at a time, and stores what it finds when it differs from what
//! the store says, with a `power` event ("power found off (was on), changed outside fleet").
//! A machine switched off behind fleet's back thus shows in the next plan as drift.
//!
//! A query that fails stores power `error`, with the driver's message in the event, once: a
//! machine whose BMC stays unreachable does not add an event per poll. A driver that cannot
//! tell (`unknown`, e.g. a webhook without a query URL) changes nothing. A poll that finds
//! nothing new writes nothing. The query and the write happen in the machine's power turn (a
//! machine whose queue is busy is skipped) and the write is guarded by the generation read
//! before the query, so a poll never overwrites what an action stored meanwhile.
//!
//! What is found is judged against fleet's recorded power intent (`machines.power_intent`),
//! not a quiet time: a command fleet ran, or a machine told to power itself off after its run,
//! records what the power should become. Finding that is recorded as fleet's own doing ("power
//! found off (was on), as fleet expected: ..."); finding the state a cycle passes through (off,
//! on its way to on) is not recorded at all; anything else is a change made outside fleet,
//! however soon after fleet's action it comes. The intent ends when a query confirms it or
//! finds otherwise, or when the next command records its own.

use crate::model::PowerState;
use crate::power::PowerDrivers;
use crate::store::{MachineRecord, PowerIntent, Store};
use std::time::Duration;
use tokio::task::JoinSet;

/// The actor of the events the poller records.
pub const ACTOR: &str = "power-poll";

/// Machines queried at once.
const CONCURRENCY: usize = 4;

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
async fn poll_machine(store: &Store, drivers: &PowerDrivers, listed: &MachineRecord) -> bool {
    // A command in flight or waiting for this machine will store what it did: the poll does
    // not query beside it (a QMP socket takes one client; a BMC may answer mid-change).
    let Some(turn) = drivers.try_turn(listed.name.as_str()) else {
        return false;
    };
    let query = async {
        let target = super::actions::power_target(store, listed).await?;
        drivers.query(&target).await
    };
    let answer = tokio::time::timeout(QUERY_LIMIT, query).await;
    // The steady case, most machines on most polls: found as listed, nothing expected. No
    // second read (a fresh intent that this answer fulfils waits for the next poll).
    if let Ok(Ok(report)) = &answer {
        if report.state == listed.lifecycle.power && listed.power_intent.is_none() {
            return false;
        }
    }
    // Otherwise judged against the machine as it is in our turn, not as the poll's list read
    // it: a command that ended since then has stored its state and its intent.
    let record = match store.machine(listed.name.as_str()).await {
        Ok(Some(record)) => record,
        Ok(None) => return false,
        Err(error) => {
            tracing::warn!(machine = %listed.name, %error, "power poll: cannot read the machine");
            return false;
        }
    };
    let record = &record;
    let before = record.lifecycle.power;
    let intent = record.power_intent.as_ref();
    let (found, reason) = match answer {
        Ok(Ok(report)) if report.state == PowerState::Unknown => return false,
        Ok(Ok(report)) => {
            let found = report.state;
            match intent {
                // Fleet's intent confirmed while the store already says so: settled quietly.
                Some(intent) if found == before && found == intent.target => {
                    if let Err(error) = store.fulfil_power_intent(record).await {
                        tracing::warn!(machine = %record.name, %error, "power poll: cannot settle the power intent");
                    }
                    return false;
                }
                // On its way (a cycle's off): nothing to record yet.
                Some(intent) if intent.passing == Some(found) => return false,
                _ => (found, found_reason(found, before, intent)),
            }
        }
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
    // Still in the machine's turn: no command runs between the query and the write.
    let written = store
        .record_found_power(record, found, ACTOR, &reason)
        .await;
    drop(turn);
    match written {
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

/// "power found off (was on), changed outside fleet": a change between two known states that
/// is not what fleet expects (`intent`) was made by someone else; "..., as fleet expected: WHY"
/// when it is.
fn found_reason(found: PowerState, before: PowerState, intent: Option<&PowerIntent>) -> String {
    match intent {
        Some(intent) if intent.target == found => {
            format!(
                "power found {found} (was {before}), as fleet expected: {}",
                intent.why
            )
        }
        _ => match before {
            PowerState::On | PowerState::Off => {
                format!("power found {found} (was {before}), changed outside fleet")
            }
            PowerState::Unknown | PowerState::Error => {
                format!("power found {found} (was {before})")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_say_what_changed() {
        assert_eq!(
            found_reason(PowerState::Off, PowerState::On, None),
            "power found off (was on), changed outside fleet"
        );
        assert_eq!(
            found_reason(PowerState::On, PowerState::Error, None),
            "power found on (was error)"
        );
        let off = PowerIntent {
            target: PowerState::Off,
            passing: None,
            why: "the machine powered itself off at the end of its run".into(),
        };
        assert_eq!(
            found_reason(PowerState::Off, PowerState::On, Some(&off)),
            "power found off (was on), as fleet expected: the machine powered itself off at \
             the end of its run"
        );
        assert_eq!(
            found_reason(PowerState::On, PowerState::Off, Some(&off)),
            "power found on (was off), changed outside fleet"
        );
        assert!(pollable("qemu") && pollable("ipmi"));
        assert!(!pollable("manual") && !pollable("unconfigured"));
    }
}
