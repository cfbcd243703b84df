//! The lease state shared by every DHCP socket of a controller: the in-memory table (the truth
//! while running), loaded from the store at start and written behind to it, and the lease events
//! recorded on machines, rate-limited.
//!
//! Held addresses: what machines hold in the store (applied plans) is served as their fixed
//! addresses, read again with the machines' MACs: on SQLite every [`KNOWN_MACHINES_REFRESH`];
//! on PostgreSQL as soon as a commit changes them (the `fleet_machines` notification, whoever
//! wrote), else every [`PUSHED_CHANGES_FALLBACK`].
//!
//! Several controllers on one database (PostgreSQL): each writes its leases through the
//! database's guarantees (`Store::write_lease_batch`: an address held unexpired by another MAC
//! is refused, the ACK waiting on it becomes a NAK) and reads the leases the others wrote as
//! soon as they commit them (the `fleet_leases` notification, its own skipped), at most every
//! [`PUSHED_READ_GAP`], and every [`PUSHED_CHANGES_FALLBACK`] without one (the safety net for
//! notifications lost while the LISTEN connection was down; it is also woken once each time
//! that connection is made), so that its offers avoid their addresses. The table is a cache of
//! the database for that purpose; the database decides.
//!
//! Events: only for MACs of known machines — declared in the fleet file, or in the store (added
//! by hand, enlisted; read again every few seconds) — (plus pool exhaustion, which names the machine when
//! it is known), at most one per MAC and kind per [`EVENT_INTERVAL_MS`] (a renewing machine does
//! not write one event per renewal), and one exhaustion event per subnet per interval carrying how
//! many requests went unanswered since the last one. Unknown MACs (a benchmark's thousands of
//! simulated clients) cost no event at all. Events are written by the writer task, in batches.

use super::config::{DhcpConfig, HeldFixed};
use super::handler::{handle, Context, LeaseEvent, LeaseEventKind, Outcome, StoreChange};
use super::leases::LeaseTable;
use super::persist::{Settled, WriteBehind};
use super::DhcpError;
use crate::model::MacAddr;
use crate::store::{Backend, Change, ChangeWatch, NewEvent, RefusedLease, Store};
use dhcproto::v4::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// At most one event per MAC and kind, and one exhaustion event per subnet, in this time.
pub const EVENT_INTERVAL_MS: i64 = 60_000;
const ACTOR: &str = "dhcp";

#[derive(Default)]
struct EventLimiter {
    last_machine_event: HashMap<(MacAddr, LeaseEventKind), i64>,
    /// Per subnet: when the last exhaustion event was written, and requests unanswered since.
    exhaustion: HashMap<String, (i64, u64)>,
}

/// The lease state of a controller's DHCP service.
pub struct DhcpLeases {
    /// Shared with the writer, which tells it the leases the database refused.
    table: Arc<Mutex<LeaseTable>>,
    limiter: Mutex<EventLimiter>,
    behind: Arc<WriteBehind>,
    /// Machines the store knows by MAC, read again when they change (see the module's
    /// documentation), so that machines added by hand or enlisted get lease events without a
    /// query per packet.
    store_machines: RwLock<Arc<HashMap<MacAddr, String>>>,
    /// The addresses machines hold in the store, as fixed addresses, read again with the MACs:
    /// an apply that commits an address is served without a restart, at once on PostgreSQL
    /// (within [`KNOWN_MACHINES_REFRESH`] on SQLite), whoever applied it (this controller,
    /// `--watch`, or another on PostgreSQL).
    held: RwLock<Arc<HeldFixed>>,
}

/// How often the MACs the store knows are read again on SQLite (one controller: nobody
/// notifies it).
pub const KNOWN_MACHINES_REFRESH: Duration = Duration::from_secs(2);

/// PostgreSQL: how often the other controllers' leases and the machines are read again without
/// a notification — the safety net under LISTEN/NOTIFY, for notifications lost while the LISTEN
/// connection was down.
pub const PUSHED_CHANGES_FALLBACK: Duration = Duration::from_secs(30);

/// PostgreSQL: reads of the other controllers' leases woken by notifications are at least this
/// far apart (a busy segment's batches notify every few milliseconds; the wake-ups between two
/// reads merge).
pub const PUSHED_READ_GAP: Duration = Duration::from_millis(500);

/// PostgreSQL: the same for the machines' MACs and held addresses (two reads of every machine:
/// enlisting and commissioning many machines notifies all the time).
pub const PUSHED_MACHINES_READ_GAP: Duration = Duration::from_secs(1);

/// Each read of the other controllers' leases goes back this far before the previous one (the
/// database's clock): a batch stamps its rows when it writes them but they become visible at
/// its commit, a moment later; rows of a batch that commits within this are not missed.
const FOREIGN_LEASES_OVERLAP_MS: i64 = 5_000;

impl DhcpLeases {
    /// Loads the leases kept in `store` and starts the writer task (needs a tokio runtime),
    /// under a name of its own for this process (see [`DhcpLeases::load_as`]).
    pub async fn load(store: Store, config: &DhcpConfig) -> Result<Arc<DhcpLeases>, DhcpError> {
        let controller = format!("dhcp-{:08x}", rand::random::<u32>());
        DhcpLeases::load_as(store, config, &controller).await
    }

    /// Loads the leases kept in `store` and starts the writer task (needs a tokio runtime).
    /// `controller` is written into each lease row, and the leases of rows written under other
    /// names are read again and again (on PostgreSQL, where other controllers may write).
    pub async fn load_as(
        store: Store,
        config: &DhcpConfig,
        controller: &str,
    ) -> Result<Arc<DhcpLeases>, DhcpError> {
        DhcpLeases::load_following(store, config, controller, PUSHED_CHANGES_FALLBACK).await
    }

    /// [`DhcpLeases::load_as`] with the safety net's period on PostgreSQL: how often the other
    /// controllers' leases and the machines are read again without a notification (tests make
    /// it long, to see that the notifications alone carry changes).
    pub async fn load_following(
        store: Store,
        config: &DhcpConfig,
        controller: &str,
        fallback: Duration,
    ) -> Result<Arc<DhcpLeases>, DhcpError> {
        // Before the first reads: a change committed after them wakes the readers.
        let machines_changed = store.watch_changes(Change::Machines, None);
        let leases_changed = store.watch_changes(Change::Leases, Some(controller));
        // Before the leases: what is written after this is read by the refresh.
        let read_at = store.database_clock_ms().await?;
        let stored = store.leases().await?;
        let mut table = LeaseTable::new();
        let shared_database = store.backend() == Backend::Postgres;
        if shared_database {
            // Controllers on one database start their searches at different places of the
            // pool, so that they seldom offer the same address (the database decides anyway).
            table.seed_cursors(seed_of(controller));
        }
        let restored = table.restore(&stored, config);
        tracing::info!(restored, "DHCP leases loaded from the store");
        let known = store.machine_macs().await?;
        let held = config.held_fixed(&store.held_address_macs().await?);
        tracing::info!(
            held = held.len(),
            "addresses held by machines loaded from the store"
        );
        let table = Arc::new(Mutex::new(table));
        let behind = WriteBehind::new(
            Some(store.clone()),
            controller.to_string(),
            refusal_sink(Arc::clone(&table), config.clone()),
        );
        behind.spawn_writer();
        let leases = DhcpLeases::with(table, behind);
        leases.set_store_machines(known);
        leases.set_held(held);
        // Only the subnets and the fleet file's interface MACs matter to `held_fixed`, and every
        // socket's configuration shares them.
        let base = config.clone();
        let period = match machines_changed {
            Some(_) => fallback,
            None => KNOWN_MACHINES_REFRESH,
        };
        tokio::spawn(refresh_store_machines(
            Arc::downgrade(&leases),
            store.clone(),
            base.clone(),
            Wakes::new(machines_changed, period, PUSHED_MACHINES_READ_GAP),
        ));
        if shared_database {
            let reader = ForeignLeases {
                store,
                config: base,
                since: read_at - FOREIGN_LEASES_OVERLAP_MS,
                controller: controller.to_string(),
            };
            let wakes = Wakes::new(leases_changed, fallback, PUSHED_READ_GAP);
            tokio::spawn(reader.refresh(Arc::downgrade(&leases), wakes));
        }
        Ok(leases)
    }

    fn set_held(&self, held: HeldFixed) {
        *self
            .held
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(held);
    }

    /// The addresses held in the store as the server serves them now (tests, diagnostics).
    pub fn held(&self) -> Arc<HeldFixed> {
        self.held
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_store_machines(&self, known: Vec<(MacAddr, String)>) {
        let known: HashMap<MacAddr, String> = known.into_iter().collect();
        *self
            .store_machines
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(known);
    }

    /// Leases kept in memory only (nothing written anywhere): for tests and benchmarks.
    pub fn in_memory() -> Arc<DhcpLeases> {
        let behind = WriteBehind::new(None, String::new(), Box::new(|_| {}));
        DhcpLeases::with(Arc::new(Mutex::new(LeaseTable::new())), behind)
    }

    fn with(table: Arc<Mutex<LeaseTable>>, behind: Arc<WriteBehind>) -> Arc<DhcpLeases> {
        Arc::new(DhcpLeases {
            table,
            limiter: Mutex::new(EventLimiter::default()),
            behind,
            store_machines: RwLock::new(Arc::new(HashMap::new())),
            held: RwLock::new(Arc::new(HeldFixed::default())),
        })
    }

    /// Answers one decoded request and queues what it changed for the store.
    pub fn answer(&self, request: &Message, config: &DhcpConfig, now_ms: i64) -> Outcome {
        self.answer_durably(request, config, now_ms).0
    }

    /// [`DhcpLeases::answer`], with the sequence number of the lease the reply grants (an ACK):
    /// the reply must not leave before [`DhcpLeases::committed_through`] that number.
    pub fn answer_durably(
        &self,
        request: &Message,
        config: &DhcpConfig,
        now_ms: i64,
    ) -> (Outcome, Option<u64>) {
        let (store_machines, held) = self.context_parts();
        let context = Context {
            config,
            now_ms,
            store_machines: Some(&store_machines),
            held: Some(&held),
        };
        let mut outcome = {
            let mut table = lock(&self.table);
            handle(request, &context, &mut table)
        };
        let grant = outcome.store_change.take().and_then(|change| {
            let must_wait = match &change {
                StoreChange::Upsert(lease) => !self.behind.already_durable(lease, now_ms),
                StoreChange::Delete(_) => false,
            };
            let sequence = self.behind.queue_change(change);
            sequence.filter(|_| must_wait)
        });
        if let Some(event) = outcome.event.take() {
            self.record_event(event, now_ms);
        }
        (outcome, grant)
    }

    fn context_parts(&self) -> (Arc<HashMap<MacAddr, String>>, Arc<HeldFixed>) {
        let store_machines = self
            .store_machines
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        (store_machines, self.held())
    }

    /// The NAK for `request`, whose lease the database refused (another controller's client
    /// holds the address); the table has already learnt the holder.
    pub fn refusal(&self, request: &Message, config: &DhcpConfig, now_ms: i64) -> Outcome {
        let (store_machines, held) = self.context_parts();
        let context = Context {
            config,
            now_ms,
            store_machines: Some(&store_machines),
            held: Some(&held),
        };
        let mut outcome = super::handler::refuse(request, &context);
        if let Some(event) = outcome.event.take() {
            self.record_event(event, now_ms);
        }
        outcome
    }

    /// Waits until the change numbered `sequence` is settled: committed, refused, or neither
    /// within `limit`.
    pub async fn settled(&self, sequence: u64, limit: std::time::Duration) -> Settled {
        self.behind.settled(sequence, limit).await
    }

    /// Waits until the change numbered `sequence` is in the store; false after `limit`.
    pub async fn committed_through(&self, sequence: u64, limit: std::time::Duration) -> bool {
        self.behind.committed_through(sequence, limit).await
    }

    /// Reads the table (tests, diagnostics).
    pub fn with_table<T>(&self, read: impl FnOnce(&LeaseTable) -> T) -> T {
        read(&lock(&self.table))
    }

    /// Writes everything queued so far to the store.
    pub async fn flush(&self) -> Result<(), DhcpError> {
        self.behind.flush().await
    }

    /// Writes what is queued and stops the writer task.
    pub async fn close(&self) -> Result<(), DhcpError> {
        self.behind.close().await
    }

    fn record_event(&self, event: LeaseEvent, now_ms: i64) {
        let new_event = {
            let mut limiter = lock(&self.limiter);
            if event.kind == LeaseEventKind::Exhausted {
                exhaustion_event(&mut limiter, &event, now_ms)
            } else {
                machine_event(&mut limiter, &event, now_ms)
            }
        };
        if let Some(new_event) = new_event {
            self.behind.queue_event(new_event);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn machine_event(limiter: &mut EventLimiter, event: &LeaseEvent, now_ms: i64) -> Option<NewEvent> {
    let machine = event.machine.as_ref()?;
    let last = limiter
        .last_machine_event
        .entry((event.mac, event.kind))
        .or_insert(i64::MIN);
    if now_ms.saturating_sub(*last) < EVENT_INTERVAL_MS {
        return None;
    }
    *last = now_ms;
    Some(NewEvent {
        machine: Some(machine.clone()),
        kind: "lease".to_string(),
        actor: ACTOR.to_string(),
        action: Some(event.kind.as_str().to_string()),
        from_status: None,
        to_status: None,
        reason: Some(describe(event)),
        detail: serde_json::json!({
            "mac": event.mac.to_string(),
            "ip": event.ip.map(|ip| ip.to_string()),
            "subnet": event.subnet,
        }),
    })
}

fn exhaustion_event(
    limiter: &mut EventLimiter,
    event: &LeaseEvent,
    now_ms: i64,
) -> Option<NewEvent> {
    let (last, unanswered) = limiter
        .exhaustion
        .entry(event.subnet.clone())
        .or_insert((i64::MIN, 0));
    *unanswered += 1;
    if now_ms.saturating_sub(*last) < EVENT_INTERVAL_MS {
        return None;
    }
    let count = std::mem::take(unanswered);
    *last = now_ms;
    tracing::warn!(subnet = %event.subnet, mac = %event.mac, unanswered = count,
        "DHCP pool exhausted: no address to offer");
    Some(NewEvent {
        machine: event.machine.clone(),
        kind: "lease".to_string(),
        actor: ACTOR.to_string(),
        action: Some(event.kind.as_str().to_string()),
        from_status: None,
        to_status: None,
        reason: Some(describe(event)),
        detail: serde_json::json!({
            "mac": event.mac.to_string(),
            "subnet": event.subnet,
            "unanswered": count,
        }),
    })
}

fn describe(event: &LeaseEvent) -> String {
    let ip = event.ip.map(|ip| ip.to_string()).unwrap_or_default();
    match event.kind {
        LeaseEventKind::Offer => format!("DHCP offered {ip} to {}", event.mac),
        LeaseEventKind::Ack => format!("DHCP leased {ip} to {}", event.mac),
        LeaseEventKind::Renew => format!("DHCP renewed {ip} for {}", event.mac),
        LeaseEventKind::Release => format!("{} released {ip}", event.mac),
        LeaseEventKind::Decline => format!("{} declined {ip} (in use on the network)", event.mac),
        LeaseEventKind::Nak => format!("DHCP refused {ip} to {}", event.mac),
        LeaseEventKind::Exhausted => format!(
            "no free address in subnet {} for {}: the dynamic range is exhausted",
            event.subnet, event.mac
        ),
    }
}

/// Whence each controller's pool searches start: a hash of its name.
fn seed_of(controller: &str) -> u32 {
    use std::hash::{Hash, Hasher};
    // `DefaultHasher::new` has fixed keys: the same name gives the same seed.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    controller.hash(&mut hasher);
    hasher.finish() as u32
}

/// Teaches the table the leases the database refused: the loser's binding goes, the holder's
/// lease comes in.
fn refusal_sink(table: Arc<Mutex<LeaseTable>>, config: DhcpConfig) -> super::persist::RefusalSink {
    Box::new(move |refused: &[RefusedLease]| {
        let now = crate::store::now_ms();
        let mut table = lock(&table);
        for lost in refused {
            table.forget_refused(lost.lease.mac, lost.lease.ip, rand::random());
            if let Some(holder) = &lost.holder {
                table.learn(holder, &config, now);
            }
        }
    })
}

/// Reads the leases other controllers wrote, from where the last read left off.
struct ForeignLeases {
    store: Store,
    controller: String,
    config: DhcpConfig,
    /// The next read starts here (the database's clock, Unix ms).
    since: i64,
}

impl ForeignLeases {
    async fn refresh(mut self, leases: Weak<DhcpLeases>, mut wakes: Wakes) {
        loop {
            wakes.next_read().await;
            let Some(leases) = leases.upgrade() else {
                return;
            };
            match self
                .store
                .leases_changed_since(&self.controller, self.since)
                .await
            {
                Ok(changed) => {
                    self.since = changed.read_at - FOREIGN_LEASES_OVERLAP_MS;
                    let now = crate::store::now_ms();
                    let mut table = lock(&leases.table);
                    for lease in &changed.leases {
                        table.learn(lease, &self.config, now);
                    }
                }
                Err(error) => {
                    tracing::warn!("DHCP: cannot read the other controllers' leases: {error}")
                }
            }
        }
    }
}

/// When a reader of the store reads again: at a notification (no sooner than `gap` after its
/// last read), or `period` after its last read without one.
struct Wakes {
    changes: Option<ChangeWatch>,
    period: Duration,
    gap: Duration,
    last_read: Instant,
}

impl Wakes {
    fn new(changes: Option<ChangeWatch>, period: Duration, gap: Duration) -> Wakes {
        Wakes {
            changes,
            period,
            gap,
            last_read: Instant::now(),
        }
    }

    /// Waits until the next read is due.
    async fn next_read(&mut self) {
        let timer = tokio::time::sleep_until(self.last_read + self.period);
        let woken = match self.changes.as_mut() {
            Some(changes) => tokio::select! {
                alive = changes.changed() => Some(alive),
                () = timer => None,
            },
            None => {
                timer.await;
                None
            }
        };
        if let Some(alive) = woken {
            if !alive {
                // The store's listener is gone: the timer alone from now on.
                self.changes = None;
            }
            tokio::time::sleep_until(self.last_read + self.gap).await;
        }
        self.last_read = Instant::now();
    }
}

/// Reads the store's MACs and held addresses again and again while the lease table lives; a
/// failed read keeps the last good map (the next one retries).
async fn refresh_store_machines(
    leases: Weak<DhcpLeases>,
    store: Store,
    config: DhcpConfig,
    mut wakes: Wakes,
) {
    loop {
        wakes.next_read().await;
        let Some(leases) = leases.upgrade() else {
            return;
        };
        match store.machine_macs().await {
            Ok(known) => leases.set_store_machines(known),
            Err(error) => tracing::warn!("DHCP: cannot read the machines' MACs: {error}"),
        }
        match store.held_address_macs().await {
            Ok(held) => leases.set_held(config.held_fixed(&held)),
            Err(error) => tracing::warn!("DHCP: cannot read the held addresses: {error}"),
        }
    }
}
