//! One reading of every machine in an in-progress status, shared by the tasks of an apply that
//! follow their machines to rest. Each task used to read its own machine whole every 100 ms:
//! with a thousand machines commissioning at once that was ten thousand reads of five queries a
//! second, most of the controller's work. The board reads them all in one query, at most every
//! [`StatusBoard::refresh_every`], whichever task asks first; the others take that reading.

use crate::store::{MachineRecord, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The in-progress machines by name, as one query read them (lean records: no hardware detail).
pub(super) type InProgress = Arc<HashMap<String, MachineRecord>>;

pub(super) struct StatusBoard {
    store: Store,
    latest: tokio::sync::Mutex<Option<(Instant, InProgress)>>,
}

impl StatusBoard {
    pub(super) fn new(store: Store) -> StatusBoard {
        StatusBoard {
            store,
            latest: tokio::sync::Mutex::new(None),
        }
    }

    /// How old a reading may be: 100 ms, and 0.1 ms more per machine it held (a reading of
    /// 10,000 machines is taken about once a second, so reading them never takes most of the
    /// time).
    fn refresh_every(machines: usize) -> Duration {
        Duration::from_millis(100) + Duration::from_micros(100 * machines as u64)
    }

    /// The machines in an in-progress status, read at most [`Self::refresh_every`] ago. One
    /// caller reads while the others wait for its reading.
    pub(super) async fn in_progress(&self) -> Result<InProgress, StoreError> {
        let mut latest = self.latest.lock().await;
        if let Some((at, reading)) = latest.as_ref() {
            if at.elapsed() < Self::refresh_every(reading.len()) {
                return Ok(reading.clone());
            }
        }
        let rows = self.store.in_progress_rows().await?;
        let reading: InProgress = Arc::new(
            rows.into_iter()
                .map(|record| (record.name.as_str().to_string(), record))
                .collect(),
        );
        *latest = Some((Instant::now(), reading.clone()));
        Ok(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::StatusBoard;
    use std::time::Duration;

    #[test]
    fn a_bigger_reading_is_refreshed_less_often() {
        assert_eq!(StatusBoard::refresh_every(0), Duration::from_millis(100));
        assert_eq!(
            StatusBoard::refresh_every(1_000),
            Duration::from_millis(200)
        );
        assert_eq!(
            StatusBoard::refresh_every(10_000),
            Duration::from_millis(1_100)
        );
    }
}
