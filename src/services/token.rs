//! The operator token: created by the first controller that starts on a store, kept in the
//! store (so every controller on a shared database accepts it) and written to the state
//! directory (so commands on the same host find it without being told).

use crate::store::{Store, StoreError};
use rand::RngCore;
use std::path::{Path, PathBuf};

const SETTING_KEY: &str = "operator_token";
/// The file in the state directory that holds the token.
pub const TOKEN_FILE: &str = "operator-token";

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The token in force for this store, created if there is none yet.
pub async fn operator_token(store: &Store) -> Result<String, StoreError> {
    store.setting_or_insert(SETTING_KEY, &random_token()).await
}

/// Writes the token to `<state_dir>/operator-token`, readable by its owner only.
pub fn write_token_file(state_dir: &Path, token: &str) -> std::io::Result<PathBuf> {
    let path = state_dir.join(TOKEN_FILE);
    let temporary = state_dir.join(format!("{TOKEN_FILE}.tmp"));
    // Created 0600 from the start: never readable by others, not even for a moment.
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

/// Reads the token a controller left in `state_dir`, if any.
pub fn read_token_file(state_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state_dir.join(TOKEN_FILE)).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Compares without leaking where the first difference is.
pub fn tokens_match(expected: &str, given: &str) -> bool {
    let (expected, given) = (expected.as_bytes(), given.as_bytes());
    expected.len() == given.len()
        && expected
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
