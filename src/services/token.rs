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
    std::fs::write(&temporary, format!("{token}\n"))?;
    set_owner_only(&temporary)?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

#[cfg(unix)]
fn set_owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_owner_only(_path: &Path) -> std::io::Result<()> {
    Ok(())
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
