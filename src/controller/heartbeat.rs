//! The controller's row in the shared store (`fleet controllers`): written at start, then every
//! [`HEARTBEAT_INTERVAL`] (10 s). Its id lives in the state directory, so a restarted controller keeps
//! its row instead of adding one.

use crate::store::{now_ms, ControllerRecord, Store, HEARTBEAT_INTERVAL};
use std::path::Path;
/// The file in the state directory that keeps the controller's id.
const ID_FILE: &str = "controller-id";

/// The controller's id: read from the state directory, or made (`HOSTNAME-8 hex digits`) and
/// kept there on the first start.
pub fn controller_id(state_dir: &Path) -> std::io::Result<String> {
    let path = state_dir.join(ID_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let id = format!("{}-{:08x}", hostname(), rand::random::<u32>());
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Writes `record` now, then every interval until the task is aborted. A failed write is
/// logged and tried again at the next beat (the controller serves on without it).
pub async fn start_heartbeat(
    store: &Store,
    mut record: ControllerRecord,
) -> tokio::task::JoinHandle<()> {
    if let Err(error) = store.record_controller(&record).await {
        eprintln!("  peers   cannot record this controller in the store: {error}");
    }
    let store = store.clone();
    tokio::spawn(async move {
        let mut beats = tokio::time::interval(HEARTBEAT_INTERVAL);
        beats.tick().await;
        loop {
            beats.tick().await;
            record.heartbeat_at = now_ms();
            if let Err(error) = store.record_controller(&record).await {
                tracing::warn!(%error, "cannot write this controller's heartbeat");
            }
        }
    })
}
