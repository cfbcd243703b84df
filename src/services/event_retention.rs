//! Event retention (`[policy.events]`): at start and every `prune_every_seconds`, the controller
//! deletes the events older than `max_age_days`, then those beyond the newest `max_count`, the
//! oldest first, in batches of [`BATCH`] with a pause between them so that other writers get
//! the store, and at most [`BATCHES_PER_PASS`] batches per pass (a pass that hit that bound is
//! followed by another a second later, so a large backlog drains without one long pass).
//! Events of a machine's current run are never deleted (see `store::events`); nothing else
//! reads old events (the machine API keeps its runs in `machine_state` and `script_results`).

use crate::config::EventPolicy;
use crate::store::{now_ms, Store, StoreError};
use std::time::Duration;

/// Events deleted by one statement.
pub const BATCH: u32 = 5_000;
/// Statements per pass.
pub const BATCHES_PER_PASS: u32 = 40;
/// The pause between two statements of a pass.
const PAUSE: Duration = Duration::from_millis(20);

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub by_age: u64,
    pub by_count: u64,
    /// The pass stopped at its bound with more to delete.
    pub more: bool,
}

/// One bounded pass of retention.
pub async fn prune_once(store: &Store, policy: &EventPolicy) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    let mut statements = 0;
    let day_ms = 24 * 60 * 60 * 1000;
    let older_than = now_ms().saturating_sub(i64::from(policy.max_age_days) * day_ms);
    while statements < BATCHES_PER_PASS {
        statements += 1;
        let deleted = store.delete_events_older_than(older_than, BATCH).await?;
        pruned.by_age += deleted;
        if deleted < u64::from(BATCH) {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    if let Some(last_id) = store.events_beyond_count(policy.max_count).await? {
        while statements < BATCHES_PER_PASS {
            statements += 1;
            let deleted = store.delete_events_up_to(last_id, BATCH).await?;
            pruned.by_count += deleted;
            if deleted < u64::from(BATCH) {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    pruned.more = statements >= BATCHES_PER_PASS;
    Ok(pruned)
}

/// Runs retention now and then every `prune_every_seconds` until the task is aborted; each
/// pass that deleted something is one line on stderr.
pub fn start(store: &Store, policy: EventPolicy) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    eprintln!(
        "  events  kept {} days, at most {} (pruned at start and every {} s)",
        policy.max_age_days, policy.max_count, policy.prune_every_seconds
    );
    tokio::spawn(async move {
        let every = Duration::from_secs(u64::from(policy.prune_every_seconds.max(1)));
        loop {
            let next = match prune_once(&store, &policy).await {
                Ok(pruned) => {
                    if pruned.by_age + pruned.by_count > 0 {
                        eprintln!(
                            "  events  pruned {} older than {} days and {} beyond {}{}",
                            pruned.by_age,
                            policy.max_age_days,
                            pruned.by_count,
                            policy.max_count,
                            if pruned.more { "; more to prune" } else { "" }
                        );
                    }
                    if pruned.more {
                        Duration::from_secs(1)
                    } else {
                        every
                    }
                }
                Err(error) => {
                    eprintln!("  events  cannot prune: {error}; trying again later");
                    every
                }
            };
            tokio::time::sleep(next).await;
        }
    })
}
