//! The power outbox's courier, one of the leader's duties: every [`EVERY`] it carries out the
//! power decisions (`machines.power_pending`, see `store/power_outbox.rs`) that nobody has
//! worked on for [`PENDING_POWER_STALE_MS`] — those a controller decided and then died before
//! or while sending — through the same `carry_out_power` as any command (the machine's power
//! queue, the overtaken check, the result stored), followed by what the decision asked for.
//! A machine no longer waits for its status timeout because its controller crashed.

use crate::power::PowerDrivers;
use crate::services::actions::{carry_out_pending_power, PENDING_POWER_STALE_MS};
use crate::store::Store;
use std::time::Duration;
use tokio::task::JoinSet;

/// How often the leader looks for forgotten power decisions.
const EVERY: Duration = Duration::from_secs(2);
/// Decisions taken up per round (each in its machine's power queue, in parallel): a
/// controller that died mid-apply can leave hundreds; 64 a round took 20 s for 600.
const BATCH: i64 = 512;

/// Starts the courier; aborting the task aborts the commands it has under way.
pub fn start(store: &Store, drivers: &PowerDrivers) -> tokio::task::JoinHandle<()> {
    let (store, drivers) = (store.clone(), drivers.clone());
    tokio::spawn(async move {
        let mut running = JoinSet::new();
        loop {
            match store
                .stale_pending_power(PENDING_POWER_STALE_MS, BATCH)
                .await
            {
                Ok(rows) => {
                    for row in rows {
                        let (store, drivers) = (store.clone(), drivers.clone());
                        running.spawn(async move {
                            if let Err(error) = carry_out_pending_power(&store, &drivers, &row).await {
                                tracing::warn!(machine = %row.name, %error, "cannot carry out a pending power decision");
                            }
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot read the pending power decisions"),
            }
            tokio::time::sleep(EVERY).await;
            while running.try_join_next().is_some() {}
        }
    })
}
