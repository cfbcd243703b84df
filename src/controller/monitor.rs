//! The watch over machines at work: an in-progress status that runs past the policy's limit
//! fails with "operation X timed out after N minutes"; a machine that should be reporting and
//! has been silent for the heartbeat limit fails with "not heard from for N minutes". Either
//! way the machine is then powered off.

use super::machine_api::{fail_and_power_off, SharedSettings};
use crate::config::Timeouts;
use crate::model::{Settlement, Status};
use crate::power::PowerDrivers;
use crate::store::{now_ms, InProgress, Store};
use std::time::Duration;

/// Statuses in which the machine itself runs the ephemeral environment and sends heartbeats.
/// (Releasing and exiting rescue end when the controller's power command has run.)
pub fn expects_heartbeats(status: Status) -> bool {
    matches!(
        status,
        Status::Commissioning
            | Status::Testing
            | Status::Deploying
            | Status::DiskErasing
            | Status::EnteringRescueMode
    )
}

/// What the watch does to one machine at `now` (Unix ms). Pure.
pub fn verdict(machine: &InProgress, timeouts: &Timeouts, now: i64) -> Option<Settlement> {
    let limit = timeouts.limit_seconds(machine.status)?;
    if now - machine.status_since > i64::from(limit) * 1000 {
        return Some(Settlement::TimedOut {
            operation: machine.status.as_str().to_string(),
            seconds: u64::from(limit),
        });
    }
    if !expects_heartbeats(machine.status) {
        return None;
    }
    // A machine has the whole heartbeat limit to boot and call for the first time.
    let silent_since = machine.last_heard.unwrap_or(0).max(machine.status_since);
    (now - silent_since > i64::from(timeouts.heartbeat) * 1000).then(|| Settlement::NotHeardFrom {
        seconds: u64::from(timeouts.heartbeat),
    })
}

/// How often the watch looks: often enough that a limit is noticed within a few percent of it.
fn tick(timeouts: &Timeouts) -> Duration {
    let shortest = Status::ALL
        .into_iter()
        .filter_map(|status| timeouts.limit_seconds(status))
        .chain(std::iter::once(timeouts.heartbeat))
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

/// One look at every machine in progress.
pub async fn check_once(
    store: &Store,
    drivers: &PowerDrivers,
    timeouts: &Timeouts,
) -> Result<(), crate::store::StoreError> {
    let now = now_ms();
    for machine in store.in_progress_machines().await? {
        let Some(settlement) = verdict(&machine, timeouts, now) else {
            continue;
        };
        match fail_and_power_off(store, drivers, &machine.name, &settlement).await {
            Ok(()) => tracing::info!(
                "{}: {}",
                machine.name,
                settlement.reason().unwrap_or_default()
            ),
            Err(crate::controller::actions::ActionError::Store(error)) => return Err(error),
            Err(error) => tracing::warn!("{}: {error}", machine.name),
        }
    }
    Ok(())
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
        }
    }

    #[test]
    fn limits_and_silence_fail_machines_at_work() {
        let timeouts = Timeouts {
            commissioning: 600,
            heartbeat: 20,
            ..Timeouts::default()
        };
        let reason = |machine: InProgress, now| {
            verdict(&machine, &timeouts, now).and_then(|settlement| settlement.reason())
        };
        // Within both limits.
        assert_eq!(
            reason(machine(Status::Commissioning, 0, Some(15_000)), 30_000),
            None
        );
        // Silent for longer than the heartbeat limit.
        assert_eq!(
            reason(machine(Status::Commissioning, 0, Some(5_000)), 26_000).as_deref(),
            Some("not heard from for 20 seconds")
        );
        // Never heard from: counted from when the status began.
        assert_eq!(
            reason(machine(Status::Commissioning, 10_000, None), 29_000),
            None
        );
        // Past the status's limit, however chatty.
        assert_eq!(
            reason(machine(Status::Commissioning, 0, Some(600_500)), 601_000).as_deref(),
            Some("operation commissioning timed out after 10 minutes")
        );
        // Releasing sends no heartbeats: only its limit applies.
        assert_eq!(reason(machine(Status::Releasing, 0, None), 60_000), None);
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
