//! Events for requests nobody vouches for: at most one per kind (and machine) per interval.
//!
//! A boot script fetched for an unknown MAC, a refused or throttled request, a TFTP request, a
//! known machine's boot fetches: anyone can make them, so writing one event per request lets
//! anyone fill the store. Each is an [`Occurrence`] with a key (what it is, the machine when the
//! request names a known one, and a variant from a fixed set such as an image file's name). The
//! first occurrence of a key is written as its own event at once, so one machine booting leaves
//! the usual record; the ones after it in the same interval are only counted, and when the
//! interval ends one summary event says how many there were, from how many addresses, with a
//! few examples ("1,234 more boot-script requests for unknown MACs from 3 addresses in the last
//! minute"), and is logged too. A key is forgotten after a quiet interval, so the map holds only
//! keys seen lately: at most the fixed kinds, and the known machines.

use crate::store::{NewEvent, Store};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Addresses counted per window of the unknown's keys, and of one machine's (there are as many
/// of those as machines); beyond, the summary says "at least".
const ADDRESSES_COUNTED: usize = 10_000;
const ADDRESSES_COUNTED_PER_MACHINE: usize = 64;
/// Examples kept per window for the summary.
const SAMPLES_KEPT: usize = 3;
/// The longest example, in characters (paths and stages come from the client).
const SAMPLE_CHARACTERS: usize = 64;

/// One request to be recorded or counted.
#[derive(Debug, Clone)]
pub struct Occurrence {
    /// What is counted, in the plural, for the summary: "boot-script requests for unknown MACs".
    pub what: &'static str,
    /// The known machine the request is about, if any (its own key: one event per machine).
    pub machine: Option<String>,
    /// A refinement from a fixed set (an image file's name); never free text from the client.
    pub variant: Option<String>,
    pub source: Option<IpAddr>,
    /// A short example for the summary (a MAC, a stage, a path).
    pub sample: Option<String>,
    /// The event written when this occurrence is the first of its key in an interval.
    pub event: NewEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    what: &'static str,
    machine: Option<String>,
    variant: Option<String>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// Occurrences counted since `opened` (the first one, written as its own event, is not).
    count: u64,
    addresses: HashSet<IpAddr>,
    samples: Vec<String>,
    /// Wall-clock times (Unix ms) of the first and the last occurrence counted, so a summary
    /// written later still says when its requests came.
    first_counted_ms: Option<i64>,
    last_counted_ms: Option<i64>,
    kind: String,
    actor: String,
}

/// The windows of every key seen lately; cloned handles share them.
#[derive(Debug, Clone)]
pub struct EventSummaries {
    windows: Arc<Mutex<HashMap<Key, Window>>>,
    interval: Duration,
}

impl EventSummaries {
    pub fn new(interval: Duration) -> EventSummaries {
        EventSummaries {
            windows: Arc::default(),
            interval: interval.max(Duration::from_millis(1)),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The event to write now for `occurrence` (the first of its key in an interval), or `None`
    /// when it was counted for the summary.
    pub fn note(&self, occurrence: Occurrence) -> Option<NewEvent> {
        self.note_at(occurrence, Instant::now())
    }

    pub fn note_at(&self, occurrence: Occurrence, now: Instant) -> Option<NewEvent> {
        let key = Key {
            what: occurrence.what,
            machine: occurrence.machine.clone(),
            variant: occurrence.variant.clone(),
        };
        let mut windows = self.lock();
        match windows.get_mut(&key) {
            Some(window) => {
                window.count += 1;
                let wall_clock = unix_ms_now();
                window.first_counted_ms.get_or_insert(wall_clock);
                window.last_counted_ms = Some(wall_clock);
                if let Some(source) = occurrence.source {
                    if window.addresses.len() < addresses_counted(&key) {
                        window.addresses.insert(source);
                    }
                }
                if let Some(sample) = occurrence.sample {
                    let sample: String = sample
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .take(SAMPLE_CHARACTERS)
                        .collect();
                    if window.samples.len() < SAMPLES_KEPT && !window.samples.contains(&sample) {
                        window.samples.push(sample);
                    }
                }
                None
            }
            None => {
                windows.insert(
                    key,
                    Window {
                        opened: now,
                        count: 0,
                        addresses: HashSet::new(),
                        samples: Vec::new(),
                        first_counted_ms: None,
                        last_counted_ms: None,
                        kind: occurrence.event.kind.clone(),
                        actor: occurrence.event.actor.clone(),
                    },
                );
                Some(occurrence.event)
            }
        }
    }

    /// The summaries of the windows whose interval has ended with something counted (each
    /// window starts again, so the next event of its key waits another interval); windows that
    /// ended quiet are forgotten.
    pub fn due_at(&self, now: Instant) -> Vec<NewEvent> {
        let mut windows = self.lock();
        let mut summaries = Vec::new();
        windows.retain(|key, window| {
            if now.saturating_duration_since(window.opened) < self.interval {
                return true;
            }
            if window.count == 0 {
                return false;
            }
            summaries.push(summary_event(key, window, self.interval));
            window.opened = now;
            window.count = 0;
            window.addresses.clear();
            window.samples.clear();
            window.first_counted_ms = None;
            window.last_counted_ms = None;
            true
        });
        summaries
    }

    /// Notes `occurrence` and writes its event when it is the first of its key.
    pub async fn record(&self, store: &Store, occurrence: Occurrence) {
        if let Some(event) = self.note(occurrence) {
            append(store, &event).await;
        }
    }

    /// Writes the summaries as their intervals end, until `stop` changes or is dropped; then
    /// writes what was counted so far.
    pub fn spawn_writer(
        &self,
        store: Store,
        mut stop: tokio::sync::watch::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let summaries = self.clone();
        let tick = (self.interval / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(tick) => {}
                }
                for event in summaries.due_at(Instant::now()) {
                    append(&store, &event).await;
                }
            }
            let end = Instant::now() + summaries.interval;
            for event in summaries.due_at(end) {
                append(&store, &event).await;
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Window>> {
        self.windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn summary_event(key: &Key, window: &Window, interval: Duration) -> NewEvent {
    let addresses = window.addresses.len();
    let from = match addresses {
        0 => String::new(),
        1 => " from 1 address".to_string(),
        _ if addresses >= addresses_counted(key) => {
            format!(" from at least {} addresses", thousands(addresses as u64))
        }
        _ => format!(" from {} addresses", thousands(addresses as u64)),
    };
    let about = match (&key.machine, &key.variant) {
        (Some(machine), Some(variant)) => format!(" ({variant}, machine {machine})"),
        (Some(machine), None) => format!(" (machine {machine})"),
        (None, Some(variant)) => format!(" ({variant})"),
        (None, None) => String::new(),
    };
    let examples = if window.samples.is_empty() {
        String::new()
    } else {
        format!("; e.g. {}", window.samples.join(", "))
    };
    let reason = format!(
        "{} more {}{about}{from} in the last {}{examples}",
        thousands(window.count),
        key.what,
        interval_words(interval)
    );
    if key.machine.is_none() {
        tracing::warn!("{reason}");
    } else {
        tracing::info!("{reason}");
    }
    let mut sources: Vec<String> = window
        .addresses
        .iter()
        .take(SAMPLES_KEPT)
        .map(IpAddr::to_string)
        .collect();
    sources.sort();
    NewEvent {
        machine: key.machine.clone(),
        kind: window.kind.clone(),
        actor: window.actor.clone(),
        action: Some("summary".to_string()),
        from_status: None,
        to_status: None,
        reason: Some(reason),
        detail: serde_json::json!({
            "summary": key.what,
            "variant": key.variant,
            "count": window.count,
            "addresses": addresses,
            "some_addresses": sources,
            "examples": window.samples,
            "interval_seconds": interval.as_secs(),
            "first_at": window.first_counted_ms,
            "last_at": window.last_counted_ms,
        }),
    }
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn addresses_counted(key: &Key) -> usize {
    if key.machine.is_some() {
        ADDRESSES_COUNTED_PER_MACHINE
    } else {
        ADDRESSES_COUNTED
    }
}

/// "second", "minute", "10 seconds", "5 minutes".
fn interval_words(interval: Duration) -> String {
    match interval.as_secs() {
        0 | 1 => "second".to_string(),
        60 => "minute".to_string(),
        seconds => crate::model::describe_seconds(seconds.max(1)),
    }
}

/// 1234567 → "1,234,567".
fn thousands(number: u64) -> String {
    let digits = number.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Events are the record, but a boot must not fail because one could not be written.
pub async fn append(store: &Store, event: &NewEvent) {
    if let Err(error) = store.append_event(event).await {
        tracing::warn!("cannot record a {} event: {error}", event.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occurrence(machine: Option<&str>, source: u8, sample: &str) -> Occurrence {
        Occurrence {
            what: "boot-script requests for unknown MACs",
            machine: machine.map(str::to_string),
            variant: None,
            source: Some(IpAddr::from([10, 0, 0, source])),
            sample: Some(sample.to_string()),
            event: NewEvent {
                machine: machine.map(str::to_string),
                kind: "boot".to_string(),
                actor: "boot".to_string(),
                action: None,
                from_status: None,
                to_status: None,
                reason: Some(format!("iPXE script served for {sample}")),
                detail: serde_json::json!({}),
            },
        }
    }

    #[test]
    fn the_first_is_written_the_rest_summarised_once_per_interval() {
        let summaries = EventSummaries::new(Duration::from_secs(60));
        let start = Instant::now();
        let first = summaries.note_at(occurrence(None, 1, "52:54:00:00:00:01"), start);
        assert_eq!(
            first.and_then(|event| event.reason).as_deref(),
            Some("iPXE script served for 52:54:00:00:00:01")
        );
        for index in 0..1234u32 {
            let sample = format!("52:54:00:00:{:02x}:{:02x}", index / 256, index % 256);
            let at = start + Duration::from_millis(u64::from(index));
            assert!(summaries
                .note_at(occurrence(None, (index % 3) as u8, &sample), at)
                .is_none());
        }
        assert!(summaries.due_at(start + Duration::from_secs(59)).is_empty());
        let due = summaries.due_at(start + Duration::from_secs(60));
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].reason.as_deref(),
            Some(
                "1,234 more boot-script requests for unknown MACs from 3 addresses in the last \
                 minute; e.g. 52:54:00:00:00:00, 52:54:00:00:00:01, 52:54:00:00:00:02"
            )
        );
        assert_eq!(due[0].detail["count"], 1234);
        // When the counted requests came (wall clock), since the summary is written later.
        let (first_at, last_at) = (&due[0].detail["first_at"], &due[0].detail["last_at"]);
        assert!(
            first_at.as_i64().unwrap() > 0 && first_at.as_i64() <= last_at.as_i64(),
            "{first_at} {last_at}"
        );
        // The next interval: counted again, nothing written at once; a quiet one forgets the key.
        let later = start + Duration::from_secs(61);
        assert!(summaries.note_at(occurrence(None, 1, "x"), later).is_none());
        assert_eq!(summaries.due_at(start + Duration::from_secs(120)).len(), 1);
        assert!(summaries
            .due_at(start + Duration::from_secs(180))
            .is_empty());
        assert!(summaries
            .note_at(occurrence(None, 1, "y"), start + Duration::from_secs(181))
            .is_some());
    }

    #[test]
    fn each_known_machine_has_its_own_key() {
        let summaries = EventSummaries::new(Duration::from_secs(60));
        let now = Instant::now();
        assert!(summaries
            .note_at(occurrence(Some("a"), 1, "a"), now)
            .is_some());
        assert!(summaries
            .note_at(occurrence(Some("b"), 1, "b"), now)
            .is_some());
        assert!(summaries
            .note_at(occurrence(Some("a"), 1, "a"), now)
            .is_none());
        assert!(summaries.note_at(occurrence(None, 1, "c"), now).is_some());
    }

    #[test]
    fn numbers_read_with_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
