//! Following the history as it is written (`GET /api/v1/events/stream`, `fleet events
//! --follow`): an [`EventFeed`] hands out the events after a position, in id order, each once,
//! and waits for more.
//!
//! The table is the source of truth; a wake-up only says "read again":
//! - on PostgreSQL, the store's one listener connection (`changes.rs`, open while a feed or
//!   another reader of changes is) LISTENs on [`EVENTS_CHANNEL`], which migration 0018's trigger
//!   notifies at the commit of every transaction that inserts events, whichever controller or
//!   tool wrote them;
//! - on SQLite (one controller), every event insert of this process bumps a counter
//!   ([`event_inserted`]). That happens before the insert's commit, so a feed woken this way
//!   reads again every 50 ms for the next second, until the write is visible;
//! - every few seconds regardless ([`FALLBACK_READ`]), so a lost notification costs latency,
//!   never an event.
//!
//! No gap and no duplicate, though PostgreSQL hands out event ids at insert and transactions
//! commit in any order: event 11 may be visible while the transaction holding event 10 is still
//! open. A feed walks ids in order and never steps over a missing id until that id is settled —
//! every transaction that could still commit it has ended (it is then a rolled-back insert or a
//! retention delete, and will never appear). Settling (PostgreSQL): one statement reads the
//! newest committed id `high`; a later one, at least [`HORIZON_DELAY`] after, reads the
//! snapshot's `xmax` (every transaction that had an id by then has an xid below it); once a
//! snapshot's `xmin` reaches that horizon, every id up to `high` is settled. A missing id
//! delays what follows it by a few reads (about 0.2 s), or until every transaction that was
//! open when it was seen has ended (the snapshot's `xmin` counts the server's writing
//! transactions, whatever they write). On SQLite writers take turns and ids follow commits, so an
//! id missing below the newest is already settled. Without a missing id, nothing waits.

use super::changes::{Change, ChangeWatch};
use super::codec::get;
use super::events::event_from_row;
use super::{Backend, Event, Store, StoreError};
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The PostgreSQL channel that migration 0018's trigger notifies when events are inserted.
pub const EVENTS_CHANNEL: &str = Change::Events.channel();

/// Events read per statement.
const BATCH: i64 = 500;
/// A feed reads again this often even without a wake-up.
pub const FALLBACK_READ: Duration = Duration::from_secs(3);
/// How soon a feed reads again while an id waits to settle, or after a wake-up of this process
/// whose write it does not see yet.
const RETRY: Duration = Duration::from_millis(50);
/// How long after a wake-up of this process a feed keeps reading at [`RETRY`] (the insert's
/// transaction commits within that, or it rolled back).
const WAKE_WINDOW: Duration = Duration::from_secs(1);
/// Between the read of the newest id and the snapshot whose `xmax` settles it: covers a
/// transaction that took an id in the microseconds before its xid was assigned.
const HORIZON_DELAY: Duration = Duration::from_millis(100);

/// Bumped by every event insert of this process (whatever store), before its commit.
static INSERTED_HERE: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// Tells this process's feeds that an event was inserted (called by `insert_event`).
pub(crate) fn event_inserted() {
    INSERTED_HERE.send_modify(|count| *count = count.wrapping_add(1));
}

/// Where a feed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStart {
    /// After the event with this id (0: from the oldest kept).
    After(i64),
    /// After the newest committed event.
    Now,
}

/// The events after a position, in id order, each once (see the module's documentation).
pub struct EventFeed {
    store: Store,
    /// Only this machine's events (the walk still goes over every id).
    machine: Option<String>,
    /// Every id up to this one has been handed out or passed over.
    cursor: i64,
    /// Every id up to this one is settled: committed, or never to be.
    settled: i64,
    /// A newest id waiting to be settled (PostgreSQL).
    pending: Option<Pending>,
    /// SQLite: this process's inserts.
    local: Option<watch::Receiver<u64>>,
    /// PostgreSQL: the LISTEN connection's notifications (this process's commits included).
    notified: Option<ChangeWatch>,
    /// Until when to read at [`RETRY`] after a wake-up of this process.
    retry_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    high: i64,
    read_at: Instant,
    /// The `xmax` of a snapshot taken at least [`HORIZON_DELAY`] after `high` was read.
    horizon: Option<i64>,
}

/// What one read found.
struct Read {
    events: Vec<Event>,
    /// A full batch: read again at once.
    more: bool,
    /// Stopped at an id that is not settled yet.
    waiting: bool,
}

impl Store {
    /// A feed of the events after `start` (only `machine`'s when given).
    pub async fn event_feed(
        &self,
        start: FeedStart,
        machine: Option<String>,
    ) -> Result<EventFeed, StoreError> {
        // Subscribe first: a write after the starting point then wakes the feed.
        let local = (self.backend() == Backend::Sqlite).then(|| INSERTED_HERE.subscribe());
        let notified = self.watch_changes(Change::Events, None);
        let cursor = match start {
            FeedStart::After(id) => id.max(0),
            FeedStart::Now => self.newest_event_id().await?,
        };
        Ok(EventFeed {
            store: self.clone(),
            machine,
            cursor,
            settled: 0,
            pending: None,
            local,
            notified,
            retry_until: None,
        })
    }

    /// The id of the newest committed event (0 when there is none).
    pub async fn newest_event_id(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(id) AS high FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(get::<Option<i64>>(&row, "high")?.unwrap_or(0))
    }
}

impl EventFeed {
    /// Every id up to this one has been handed out or passed over.
    pub fn position(&self) -> i64 {
        self.cursor
    }

    /// The next events (one or more, oldest first); waits until there are some.
    pub async fn next(&mut self) -> Result<Vec<Event>, StoreError> {
        loop {
            let read = self.read().await?;
            if !read.events.is_empty() {
                return Ok(read.events);
            }
            if read.more {
                continue;
            }
            let retrying = self.retry_until.is_some_and(|until| Instant::now() < until);
            let wait = if read.waiting || retrying {
                RETRY
            } else {
                self.retry_until = None;
                FALLBACK_READ
            };
            let local = &mut self.local;
            let local = async {
                match local.as_mut() {
                    // The sender is a static: it is never dropped.
                    Some(local) => local.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let notified = &mut self.notified;
            let notified = async {
                match notified.as_mut() {
                    // The listener lives as long as the store this feed holds.
                    Some(notified) => notified.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = local => self.retry_until = Some(Instant::now() + WAKE_WINDOW),
                _ = notified => {}
            }
        }
    }

    /// One walk from the cursor: the settled events in order, up to the first id that is not.
    async fn read(&mut self) -> Result<Read, StoreError> {
        self.settle().await?;
        let rows = sqlx::query(
            "SELECT id, at, machine, kind, actor, action, from_status, to_status, reason, detail \
             FROM events WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(self.cursor)
        .bind(BATCH)
        .fetch_all(&self.store.pool)
        .await?;
        let more = rows.len() as i64 == BATCH;
        let mut events = Vec::new();
        let mut waiting = false;
        for row in &rows {
            let id: i64 = get(row, "id")?;
            if id != self.cursor + 1 && id > self.settled {
                waiting = true;
                break;
            }
            self.cursor = id;
            let machine: Option<String> = get(row, "machine")?;
            if self.machine.is_none() || machine == self.machine {
                events.push(event_from_row(row)?);
            }
        }
        if !waiting && !more && self.cursor < self.settled {
            // Ids missing at the end that will never come (rolled back or deleted).
            self.cursor = self.settled;
        }
        Ok(Read {
            events,
            more: more && !waiting,
            waiting,
        })
    }

    /// Moves `settled` forward (see the module's documentation).
    async fn settle(&mut self) -> Result<(), StoreError> {
        if self.store.backend() == Backend::Sqlite {
            self.settled = self.store.newest_event_id().await?;
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT MAX(id) AS high, \
             CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT) AS oldest, \
             CAST(CAST(pg_snapshot_xmax(pg_current_snapshot()) AS TEXT) AS BIGINT) AS next \
             FROM events",
        )
        .fetch_one(&self.store.pool)
        .await?;
        let high = get::<Option<i64>>(&row, "high")?.unwrap_or(0);
        let oldest: i64 = get(&row, "oldest")?;
        let next: i64 = get(&row, "next")?;
        let now = Instant::now();
        if let Some(pending) = &mut self.pending {
            match pending.horizon {
                Some(horizon) if oldest >= horizon => {
                    self.settled = self.settled.max(pending.high);
                    self.pending = None;
                }
                Some(_) => {}
                None if now.duration_since(pending.read_at) >= HORIZON_DELAY => {
                    pending.horizon = Some(next);
                }
                None => {}
            }
        }
        if self.pending.is_none() && high > self.settled.max(self.cursor) {
            self.pending = Some(Pending {
                high,
                read_at: now,
                horizon: None,
            });
        }
        Ok(())
    }
}
