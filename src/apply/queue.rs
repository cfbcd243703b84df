//! The leader's executor: it carries out the applies any controller's API queued, one at a time,
//! in the leader's name; at the start of a term it first resumes the apply an earlier leader
//! left applying. It runs as one of the leader's duties, on the store fenced with the term, and
//! owns the tasks of the apply it runs: when the term ends and the duty is aborted, they stop.

use super::{run_apply, ApplyError, APPLY_LOCK, RUNNING, STALE_LOCK_MS};
use crate::metrics::Metrics;
use crate::power::PowerDrivers;
use crate::store::{PlanInFlight, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How often the leader looks for queued applies (another controller's API queues without
/// telling it; this controller's API wakes it at once).
pub const QUEUE_POLL: Duration = Duration::from_millis(500);
/// How long the executor waits before trying again an apply whose run stopped on an error (the
/// database unreachable): the apply stays applying and is resumed.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the executor needs: the term's (fenced) store, and the holder of the term.
pub struct Executor {
    pub store: Store,
    pub drivers: PowerDrivers,
    pub metrics: Arc<Metrics>,
    /// The leader's holder, `CONTROLLER_ID/INSTANCE` (the term's): the lock is taken in its
    /// name, and the apply's events carry it.
    pub holder: String,
    /// Notified when this controller's API queues an apply.
    pub wake: Arc<Notify>,
}

impl Executor {
    /// Runs until aborted (the term ends): takes the oldest apply in flight — applying ones
    /// first, which an earlier term left — whenever none runs here.
    pub async fn run(self) {
        let mut tasks: JoinSet<Result<(), ApplyError>> = JoinSet::new();
        // The apply running here, by id.
        let mut running: Option<String> = None;
        let mut not_before = Instant::now();
        loop {
            if running.is_none() && Instant::now() >= not_before {
                match self.next().await {
                    Ok(Some(id)) => {
                        let (store, drivers, metrics) = (
                            self.store.clone(),
                            self.drivers.clone(),
                            self.metrics.clone(),
                        );
                        let (apply, holder) = (id.clone(), self.holder.clone());
                        tasks.spawn(async move {
                            run_apply(&store, &drivers, &metrics, &apply, &holder).await
                        });
                        running = Some(id);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        eprintln!("  apply   cannot take the next apply: {error}");
                        not_before = Instant::now() + RETRY_AFTER;
                    }
                }
            }
            tokio::select! {
                Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                    let id = running.take().unwrap_or_default();
                    let failed = match ended {
                        Ok(Ok(())) => None,
                        Ok(Err(error)) => Some(error.to_string()),
                        Err(error) => Some(error.to_string()),
                    };
                    if let Some(error) = failed {
                        eprintln!("  apply   {id} stopped: {error}");
                        not_before = Instant::now() + RETRY_AFTER;
                    }
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(QUEUE_POLL) => {}
            }
        }
    }

    /// The next apply to run here, its lock taken and its status applying; `None` when none is
    /// in flight, or another holder's lock is live (it waits for the next look).
    async fn next(&self) -> Result<Option<String>, ApplyError> {
        let Some(next) = self.store.plans_in_flight().await?.into_iter().next() else {
            return Ok(None);
        };
        let taken = self
            .store
            .try_lock_for_term(APPLY_LOCK, &self.holder, STALE_LOCK_MS)
            .await?;
        if let Err(other) = taken {
            tracing::info!(apply = %next.id, holder = %other.holder, "the apply lock is held; waiting");
            return Ok(None);
        }
        self.begin(&next).await?;
        Ok(Some(next.id))
    }

    /// Marks a queued apply applying, or says that an applying one is resumed.
    async fn begin(&self, next: &PlanInFlight) -> Result<(), ApplyError> {
        if next.status == RUNNING {
            eprintln!(
                "  apply   resuming {} (left applying when its leader stopped)",
                next.id
            );
            return Ok(());
        }
        self.store.set_plan_status(&next.id, RUNNING).await?;
        Ok(())
    }
}
