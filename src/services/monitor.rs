//! The watch over machines at work, with the clocks of `model::watch`: an in-progress status that
//! runs past the policy's limit fails with "operation X timed out after N minutes"; a machine
//! powered on for a step that has not called within the boot limit fails with "did not boot
//! within N minutes"; one that called and then fell silent for the heartbeat limit fails with
//! "not heard from for N minutes". Either way the machine is then powered off. The watch acts on
//! a machine only at the generation it read: one that moved on meanwhile is left alone.

use super::actions::fail_and_power_off;
use super::machine_api::SharedSettings;
use crate::config::Timeouts;
use crate::model::{Settlement, Status};
use crate::power::PowerDrivers;
use crate::store::{now_ms, InProgress, Store};
use std::time::Duration;

/// What the watch does to one machine at `now` (Unix ms). Pure. A deployment that runs out of
/// time says how far it got (the phase of its last progress).
pub fn verdict(machine: &InProgress, timeouts: &Timeouts, now: i64) -> Option<Settlement> {
    let settlement = machine
        .watched()
        .verdict(&timeouts.watch_limits(machine.status), now)?;
    Some(super::machine_api::rules::with_progress(
        settlement,
        machine.progress.as_ref(),
    ))
}

/// How often the watch looks: often enough that a limit is noticed within a few percent of it.
fn tick(timeouts: &Timeouts) -> Duration {
    let shortest = Status::ALL
        .into_iter()
        .filter_map(|status| timeouts.limit_seconds(status))
        .chain([timeouts.boot, timeouts.heartbeat, timeouts.callback])
        .min()
        .unwrap_or(60);
    Duration::from_millis((u64::from(shortest) * 1000 / 20).clamp(250, 10_000))
}

/// Runs the watch until the task is dropped or aborted, with the limits in force at each look.
pub fn start_monitor(
    store: Store,
    drivers: PowerDrivers,
    settings: SharedSettings,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut period = tick(&settings.current().timeouts);
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let timeouts = settings.current().timeouts;
            if tick(&timeouts) != period {
                period = tick(&timeouts);
                interval = tokio::time::interval(period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            if let Err(error) = check_once(&store, &drivers, &timeouts).await {
                tracing::warn!("the timeout watch could not check the machines: {error}");
            }
        }
    })
}

/// One look at every machine in progress. The machines it fails are failed and powered off side
/// by side: one machine's slow or silent BMC does not hold up the others'.
pub async fn check_once(
    store: &Store,
    drivers: &PowerDrivers,
    timeouts: &Timeouts,
) -> Result<(), crate::store::StoreError> {
    let now = now_ms();
    let mut failing = tokio::task::JoinSet::new();
    for machine in store.in_progress_machines().await? {
        let Some(settlement) = verdict(&machine, timeouts, now) else {
            continue;
        };
        let (store, drivers) = (store.clone(), drivers.clone());
        failing.spawn(async move {
            let generation = Some(machine.generation);
            let result =
                fail_and_power_off(&store, &drivers, &machine.name, &settlement, generation).await;
            (machine.name, settlement, result)
        });
    }
    let mut first_store_error = None;
    while let Some(joined) = failing.join_next().await {
        let Ok((name, settlement, result)) = joined else {
            continue;
        };
        match result {
            Ok(false) => tracing::debug!("{name}: moved on before the watch acted"),
            Ok(true) => tracing::info!("{name}: {}", settlement.reason().unwrap_or_default()),
            Err(crate::services::actions::ActionError::Store(error)) => {
                first_store_error.get_or_insert(error);
            }
            Err(error) => tracing::warn!("{name}: {error}"),
        }
    }
    first_store_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(status: Status, since: i64, heard: Option<i64>) -> InProgress {
        InProgress {
            name: "node-1".into(),
            status,
            status_since: since,
            last_heard: heard,
            boot_started: Some(since + 1_000),
            generation: 7,
            install_done: None,
            progress: None,
            power_pending: false,
        }
    }

    #[test]
    fn the_policys_limits_reach_the_clocks() {
        let timeouts = Timeouts {
            commissioning: 600,
            boot: 60,
            heartbeat: 20,
            ..Timeouts::default()
        };
        let reason = |machine: InProgress, now| {
            verdict(&machine, &timeouts, now).and_then(|settlement| settlement.reason())
        };
        // Booting: the boot limit, not the heartbeat limit.
        assert_eq!(
            reason(machine(Status::Commissioning, 0, None), 40_000),
            None
        );
        assert_eq!(
            reason(machine(Status::Commissioning, 0, None), 61_001).as_deref(),
            Some("did not boot within 1 minute")
        );
        // Called, then silent for longer than the heartbeat limit.
        assert_eq!(
            reason(machine(Status::Commissioning, 0, Some(5_000)), 26_000).as_deref(),
            Some("not heard from for 20 seconds")
        );
        // Past the status's limit, however chatty.
        assert_eq!(
            reason(machine(Status::Commissioning, 0, Some(600_500)), 601_000).as_deref(),
            Some("operation commissioning timed out after 10 minutes")
        );
        // Releasing sends no heartbeats: only its limit applies.
        assert_eq!(reason(machine(Status::Releasing, 0, None), 200_000), None);
        // Resting statuses are not watched.
        assert_eq!(reason(machine(Status::Ready, 0, None), 10_000_000), None);
    }

    #[test]
    fn the_watch_looks_often_enough_for_short_limits() {
        let short = Timeouts {
            heartbeat: 20,
            ..Timeouts::default()
        };
        assert_eq!(tick(&short), Duration::from_secs(1));
        assert_eq!(tick(&Timeouts::default()), Duration::from_secs(10));
    }
}
