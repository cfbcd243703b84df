//! Changes other controllers commit, pushed to this one (PostgreSQL's LISTEN/NOTIFY, issue 16).
//!
//! One listener connection per store (sqlx's `PgListener`, beside the pool, open while anything
//! waits for a change) LISTENs on every [`Change`]'s channel, which triggers notify at the
//! commit of the transactions that change the tables behind it (migrations 0018 and 0022), and
//! the leader notifies when it takes a new fleet into force. A notification is a wake-up only:
//! the tables are the truth, and whoever is woken reads them again. So a lost notification
//! costs latency, never a change, provided every reader also reads again on a slow timer (its
//! safety net) — and every reader is woken once right after the listener (re)connects, for
//! whatever was committed while nobody listened.
//!
//! SQLite (one controller) has no listener: [`Store::watch_changes`] gives `None` and readers
//! keep their own timers.

use super::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// What a notification says changed, one channel each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Events were inserted (migration 0018; payload empty).
    Events,
    /// DHCP leases were written (migration 0022; payload: the `controller` of the rows).
    Leases,
    /// Machines, their interfaces or their held addresses changed: what DHCP knows machines by
    /// (migration 0022; payload empty).
    Machines,
    /// The leader took a new fleet into force (`Store::announce_fleet`; payload: its digest).
    Fleet,
}

impl Change {
    const ALL: [Change; 4] = [
        Change::Events,
        Change::Leases,
        Change::Machines,
        Change::Fleet,
    ];

    /// The PostgreSQL channel.
    pub const fn channel(self) -> &'static str {
        match self {
            Change::Events => "fleet_events",
            Change::Leases => "fleet_leases",
            Change::Machines => "fleet_machines",
            Change::Fleet => "fleet_reload",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn from_channel(channel: &str) -> Option<Change> {
        Change::ALL
            .into_iter()
            .find(|change| change.channel() == channel)
    }
}

/// How long the listener waits before connecting again after an error.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// A channel's wake-ups so far, by writer (the payload) where a reader may skip its own.
#[derive(Debug, Clone, Default)]
struct Tally {
    total: u64,
    /// [`Change::Leases`] only; cleared past [`MAX_WRITERS`] (costs each reader one extra read).
    by_writer: HashMap<String, u64>,
}

/// Writers remembered per channel (controllers, and the random names of tests' tables).
const MAX_WRITERS: usize = 256;

impl Tally {
    /// Wake-ups not written by `ignored`.
    fn others(&self, ignored: Option<&str>) -> u64 {
        let own = ignored
            .and_then(|writer| self.by_writer.get(writer))
            .copied()
            .unwrap_or(0);
        self.total.wrapping_sub(own)
    }
}

/// A store's LISTEN connection on PostgreSQL: started by the first watcher, ended when the last
/// one is dropped.
pub(crate) struct ChangeHub {
    /// The database URL (with its password: never printed; `Debug` leaves it out).
    url: String,
    /// One per [`Change`], in [`Change::ALL`]'s order.
    channels: [watch::Sender<Tally>; 4],
    /// Whether the listener task runs (changed only under this lock, with the receivers counted).
    listening: Mutex<bool>,
}

impl std::fmt::Debug for ChangeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeHub")
            .field("watchers", &self.watchers())
            .finish_non_exhaustive()
    }
}

/// Wake-ups for one [`Change`]: [`ChangeWatch::changed`] returns at each notification (its
/// own writer's skipped) and after each (re)connection of the listener.
#[derive(Debug)]
pub struct ChangeWatch {
    receiver: watch::Receiver<Tally>,
    ignored: Option<String>,
    seen: u64,
}

impl ChangeWatch {
    /// Waits for the next wake-up; `false` once the store's listener is gone for good (the
    /// caller then keeps to its timer).
    pub async fn changed(&mut self) -> bool {
        loop {
            if self.receiver.changed().await.is_err() {
                return false;
            }
            let others = self
                .receiver
                .borrow_and_update()
                .others(self.ignored.as_deref());
            if others != self.seen {
                self.seen = others;
                return true;
            }
        }
    }
}

impl ChangeHub {
    pub(crate) fn new(url: &str) -> Arc<ChangeHub> {
        Arc::new(ChangeHub {
            url: url.to_string(),
            channels: std::array::from_fn(|_| watch::Sender::new(Tally::default())),
            listening: Mutex::new(false),
        })
    }

    fn watchers(&self) -> usize {
        self.channels
            .iter()
            .map(watch::Sender::receiver_count)
            .sum()
    }

    pub(crate) fn subscribe(
        self: &Arc<Self>,
        change: Change,
        ignored: Option<&str>,
    ) -> ChangeWatch {
        let mut listening = self
            .listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let receiver = self.channels[change.index()].subscribe();
        if !*listening {
            *listening = true;
            tokio::spawn(listen(self.clone()));
        }
        let seen = receiver.borrow().others(ignored);
        ChangeWatch {
            receiver,
            ignored: ignored.map(str::to_string),
            seen,
        }
    }

    fn notified(&self, change: Change, payload: &str) {
        self.channels[change.index()].send_modify(|tally| {
            tally.total = tally.total.wrapping_add(1);
            if change == Change::Leases {
                if tally.by_writer.len() >= MAX_WRITERS && !tally.by_writer.contains_key(payload) {
                    tally.by_writer.clear();
                }
                let count = tally.by_writer.entry(payload.to_string()).or_default();
                *count = count.wrapping_add(1);
            }
        });
    }

    /// Wakes every watcher: notifications may have been lost.
    fn wake_all(&self) {
        for change in Change::ALL {
            self.notified(change, "");
        }
    }

    /// Completes when no watcher is left on any channel (checked again under the lock).
    async fn unwatched(&self) {
        for channel in &self.channels {
            channel.closed().await;
        }
    }
}

/// The listener task: forwards notifications as wake-ups until no watcher is left.
async fn listen(hub: Arc<ChangeHub>) {
    let mut listener: Option<sqlx::postgres::PgListener> = None;
    // Said once per outage, not at every attempt.
    let mut failing = false;
    loop {
        if listener.is_none() {
            match connect_listener(&hub.url).await {
                Ok(connected) => {
                    listener = Some(connected);
                    if failing {
                        tracing::info!("listening for changes again");
                    }
                    failing = false;
                    // Whatever was committed while nobody listened is read now.
                    hub.wake_all();
                }
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(
                        "cannot LISTEN for changes on {}: {error}; each reader keeps to its \
                         slow timer until it can",
                        super::redact_url(&hub.url),
                    );
                }
                Err(error) => tracing::debug!("cannot LISTEN for changes yet: {error}"),
            }
        }
        let received = async {
            match listener.as_mut() {
                Some(listener) => Some(listener.try_recv().await),
                None => {
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    None
                }
            }
        };
        let received = tokio::select! {
            received = received => received,
            () = hub.unwatched() => {
                let mut listening = hub.listening.lock().unwrap_or_else(PoisonError::into_inner);
                if hub.watchers() == 0 {
                    *listening = false;
                    return;
                }
                continue;
            }
        };
        match received {
            Some(Ok(Some(notification))) => {
                if let Some(change) = Change::from_channel(notification.channel()) {
                    hub.notified(change, notification.payload());
                }
            }
            // The connection was lost and sqlx has connected and LISTENed again (its eager
            // reconnection): what was committed meanwhile is read now.
            Some(Ok(None)) => {
                tracing::warn!("the LISTEN connection for changes was lost; connected again");
                hub.wake_all();
            }
            Some(Err(error)) => {
                tracing::warn!(
                    "the LISTEN connection for changes failed: {error}; connecting again"
                );
                listener = None;
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
            None => {}
        }
    }
}

async fn connect_listener(url: &str) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    let channels: Vec<&str> = Change::ALL.iter().map(|change| change.channel()).collect();
    listener.listen_all(channels).await?;
    Ok(listener)
}

impl Store {
    /// Wake-ups for `change`, whoever commits it (skipping the notifications whose payload is
    /// `ignored_writer`: a controller's own lease writes); `None` on SQLite, which has no
    /// other controller to hear from.
    pub fn watch_changes(
        &self,
        change: Change,
        ignored_writer: Option<&str>,
    ) -> Option<ChangeWatch> {
        self.changes
            .as_ref()
            .map(|hub| hub.subscribe(change, ignored_writer))
    }
}
