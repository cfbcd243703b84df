//! Writing lease changes and lease events behind the server: the server loop only queues them
//! (coalesced per MAC), and a writer task commits whole batches, many leases per transaction, so
//! that the socket loop never waits for the database and a flood costs a few transactions a
//! second. A change's sequence number tells when it is durable ([`WriteBehind::settled`]): an
//! ACK leaves only after the lease it grants is committed, so a controller that crashes right
//! after ACKing forgets no lease a client holds.
//!
//! Several controllers on one database: the batch (`Store::write_lease_batch`) never takes an
//! address another MAC holds unexpired; a lease the database refuses is reported to its waiting
//! ACK, which becomes a NAK, and to the lease table (`learn_refused`), which learns the holder.
use super::handler::StoreChange;
use super::DhcpError;
use crate::model::MacAddr;
use crate::store::{Lease, NewEvent, RefusedLease, Store};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long the writer waits after the first queued change, to gather a batch. ACKs wait for
/// their batch, so this is most of what durability adds to an exchange; under a flood batches
/// grow anyway while the previous one is written.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// After a failed write, wait this long before trying again.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// A refused change's number is kept this long for the ACK waiting on it (which waits at most
/// 4 s, `server::ACK_COMMIT_LIMIT`).
const REFUSALS_KEPT: Duration = Duration::from_secs(60);
/// Events waiting beyond this are dropped (and counted), so a stuck store cannot eat memory.
const MAXIMUM_PENDING_EVENTS: usize = 10_000;

#[derive(Default)]
struct Pending {
    /// The newest change per MAC, with the order it was queued in.
    leases: HashMap<MacAddr, (u64, StoreChange)>,
    next_sequence: u64,
    events: Vec<NewEvent>,
    dropped_events: u64,
}

/// What became of a lease change an ACK waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// In the store: the ACK may leave.
    Committed,
    /// The database refused it: another MAC holds the address (another controller's lease).
    Refused,
    /// Not written in time (the store is failing).
    TimedOut,
}

/// Told the leases the database refused, after their batch committed and before the ACKs
/// waiting on them learn it.
pub type RefusalSink = Box<dyn Fn(&[RefusedLease]) + Send + Sync>;

/// The queue and the writer's side of it. Shared by the servers and the writer task.
pub struct WriteBehind {
    store: Option<Store>,
    /// Written into each lease row: which controller leased it.
    controller: String,
    learn_refused: RefusalSink,
    /// Sequence numbers of refused changes, with when they were refused.
    refused: Mutex<HashMap<u64, Instant>>,
    pending: Mutex<Pending>,
    wake: Notify,
    /// Held while a batch is written, so that `flush` and the writer task never interleave.
    writing: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// The highest sequence number committed: every change queued with a number up to it is in
    /// the store (or was replaced, for its MAC, by a later change that is).
    committed: tokio::sync::watch::Sender<u64>,
    /// Each MAC's lease as last committed (address, expiry): a retransmitted REQUEST for a
    /// lease the store already holds needs no wait (see [`WriteBehind::already_durable`]).
    committed_leases: Mutex<HashMap<MacAddr, (Ipv4Addr, i64)>>,
}

impl WriteBehind {
    /// Without a store, changes are dropped (an in-memory server, for the benchmark).
    pub fn new(
        store: Option<Store>,
        controller: String,
        learn_refused: RefusalSink,
    ) -> Arc<WriteBehind> {
        Arc::new(WriteBehind {
            store,
            controller,
            learn_refused,
            refused: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            writing: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            committed: tokio::sync::watch::Sender::new(0),
            committed_leases: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the writer task (on the current tokio runtime).
    pub fn spawn_writer(self: &Arc<Self>) {
        if self.store.is_none() {
            return;
        }
        let behind = Arc::clone(self);
        tokio::spawn(async move { behind.run().await });
    }

    /// Queues a change; its sequence number, for [`WriteBehind::committed_through`] (`None`
    /// without a store: nothing will ever be written).
    pub fn queue_change(&self, change: StoreChange) -> Option<u64> {
        self.store.as_ref()?;
        let (was_idle, sequence) = {
            let mut pending = lock(&self.pending);
            let was_idle = pending.leases.is_empty() && pending.events.is_empty();
            // A change for a MAC whose lease for the same address is still waiting replaces it
            // under its number: a retransmitted REQUEST waits for the batch the first one
            // waits for, not the one after (under load, twice as long: its ACK was dropped and
            // the client asked again, and again).
            let sequence = match (pending.leases.get(&change.mac()), &change) {
                (Some((sequence, StoreChange::Upsert(waiting))), StoreChange::Upsert(lease))
                    if waiting.ip == lease.ip =>
                {
                    *sequence
                }
                _ => {
                    // From 1: `committed` starts at 0, "nothing yet".
                    pending.next_sequence += 1;
                    pending.next_sequence
                }
            };
            pending.leases.insert(change.mac(), (sequence, change));
            (was_idle, sequence)
        };
        if was_idle {
            self.wake.notify_one();
        }
        Some(sequence)
    }

    /// The store already holds `lease`'s address for its MAC until at least seven eighths of
    /// the lease from `now_ms`: an ACK for it may leave at once. (A client renews at half its
    /// lease, RFC 2131 4.4.5, so after a crash the stored lease still covers it until then; a
    /// retransmitted REQUEST a few seconds later is granted without waiting for a write.)
    pub fn already_durable(&self, lease: &Lease, now_ms: i64) -> bool {
        let margin = (lease.expires_at - now_ms).max(0) / 8;
        lock(&self.committed_leases)
            .get(&lease.mac)
            .is_some_and(|(ip, expires_at)| {
                *ip == lease.ip && *expires_at >= lease.expires_at - margin
            })
    }

    /// Waits until the change numbered `sequence` is committed; false when `limit` passed first
    /// (the store is failing: the writer keeps retrying, and the caller gives up on what waited).
    pub async fn committed_through(&self, sequence: u64, limit: Duration) -> bool {
        let mut committed = self.committed.subscribe();
        let reached = tokio::time::timeout(limit, async {
            committed
                .wait_for(|through| *through >= sequence)
                .await
                .is_ok()
        })
        .await;
        reached.unwrap_or(false)
    }

    /// Waits until the change numbered `sequence` is settled: committed, refused by the
    /// database, or not written within `limit`.
    pub async fn settled(&self, sequence: u64, limit: Duration) -> Settled {
        if !self.committed_through(sequence, limit).await {
            return Settled::TimedOut;
        }
        if lock(&self.refused).contains_key(&sequence) {
            Settled::Refused
        } else {
            Settled::Committed
        }
    }

    pub fn queue_event(&self, event: NewEvent) {
        if self.store.is_none() {
            return;
        }
        {
            let mut pending = lock(&self.pending);
            if pending.events.len() >= MAXIMUM_PENDING_EVENTS {
                pending.dropped_events += 1;
                return;
            }
            pending.events.push(event);
        }
        self.wake.notify_one();
    }

    /// Writes everything queued so far; returns when it is committed.
    pub async fn flush(&self) -> Result<(), DhcpError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _writing = self.writing.lock().await;
        let (changes, events, dropped_events) = {
            let mut pending = lock(&self.pending);
            let dropped = std::mem::take(&mut pending.dropped_events);
            (
                std::mem::take(&mut pending.leases),
                std::mem::take(&mut pending.events),
                dropped,
            )
        };
        if dropped_events > 0 {
            tracing::warn!(
                dropped_events,
                "DHCP lease events dropped: the store is not keeping up"
            );
        }
        let ordered = in_queue_order(changes);
        let newest = ordered.iter().map(|(sequence, _)| *sequence).max();
        let (leases, released) = split(&ordered);
        let refused = match store
            .write_lease_batch(&self.controller, &leases, &released)
            .await
        {
            Ok(refused) => refused,
            Err(error) => {
                self.requeue(ordered);
                return Err(error.into());
            }
        };
        self.note_committed(&ordered, &refused);
        // Everything queued before this batch was taken is in it or in an earlier one.
        if let Some(newest) = newest {
            self.committed.send_if_modified(|through| {
                let newer = newest > *through;
                *through = (*through).max(newest);
                newer
            });
        }
        for event in &events {
            if let Err(error) = store.append_event(event).await {
                tracing::warn!(%error, "cannot record a DHCP lease event");
            }
        }
        Ok(())
    }

    /// Remembers what a committed batch stored, and which of its changes were refused; tells
    /// the lease table about the refusals before any waiting ACK learns of them.
    fn note_committed(&self, ordered: &[(u64, StoreChange)], refused: &[RefusedLease]) {
        let refused_macs: HashSet<MacAddr> = refused.iter().map(|lost| lost.lease.mac).collect();
        {
            let mut committed = lock(&self.committed_leases);
            for (_, change) in ordered {
                match change {
                    StoreChange::Upsert(lease) if !refused_macs.contains(&lease.mac) => {
                        committed.insert(lease.mac, (lease.ip, lease.expires_at));
                    }
                    _ => {
                        committed.remove(&change.mac());
                    }
                }
            }
        }
        let now = Instant::now();
        {
            let mut numbers = lock(&self.refused);
            numbers.retain(|_, at| now.duration_since(*at) < REFUSALS_KEPT);
            for (sequence, change) in ordered {
                if refused_macs.contains(&change.mac()) {
                    numbers.insert(*sequence, now);
                }
            }
        }
        if !refused.is_empty() {
            tracing::debug!(
                refused = refused.len(),
                "DHCP leases refused by the store: their addresses are held by other MACs"
            );
            (self.learn_refused)(refused);
        }
    }

    /// Stops the writer task after a last flush.
    pub async fn close(&self) -> Result<(), DhcpError> {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        self.flush().await
    }

    /// Puts back the changes of a failed batch, unless a newer change for the MAC came meanwhile.
    fn requeue(&self, changes: Vec<(u64, StoreChange)>) {
        let mut pending = lock(&self.pending);
        for (sequence, change) in changes {
            pending
                .leases
                .entry(change.mac())
                .or_insert((sequence, change));
        }
    }

    async fn run(self: Arc<Self>) {
        while !self.closed.load(Ordering::SeqCst) {
            self.wake.notified().await;
            tokio::time::sleep(BATCH_WINDOW).await;
            if let Err(error) = self.flush().await {
                tracing::warn!(%error, "cannot write DHCP leases to the store; retrying");
                tokio::time::sleep(RETRY_DELAY).await;
                self.wake.notify_one();
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind: keep using it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The changes in the order they were made. When two queued leases name one IP (a MAC whose
/// expired address went to another MAC before the first write), only the newer one is kept and
/// the older MAC's row is deleted, so the batch never breaks "an IP leased at most once".
fn in_queue_order(changes: HashMap<MacAddr, (u64, StoreChange)>) -> Vec<(u64, StoreChange)> {
    let mut ordered: Vec<(u64, StoreChange)> = changes.into_values().collect();
    ordered.sort_by_key(|(sequence, _)| std::cmp::Reverse(*sequence));
    let mut seen_ips = std::collections::HashSet::new();
    for (_, change) in ordered.iter_mut() {
        if let StoreChange::Upsert(lease) = change {
            if !seen_ips.insert(lease.ip) {
                *change = StoreChange::Delete(lease.mac);
            }
        }
    }
    ordered.reverse();
    ordered
}

/// The leases to store and the MACs whose leases go.
fn split(ordered: &[(u64, StoreChange)]) -> (Vec<Lease>, Vec<MacAddr>) {
    let mut leases = Vec::new();
    let mut released = Vec::new();
    for (_, change) in ordered {
        match change {
            StoreChange::Upsert(lease) => leases.push(lease.clone()),
            StoreChange::Delete(mac) => released.push(*mac),
        }
    }
    (leases, released)
}
