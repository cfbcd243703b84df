//! Operator tokens: named, each `admin` or `read-only`, kept in the store as the SHA-256 of the
//! secret (so every controller on a shared database accepts every token, and a copy of the
//! store gives no one a working token). A secret is 32 random bytes, shown once when created
//! or rotated.
//!
//! At start a controller makes sure someone can manage tokens: the plain token an older fleet
//! kept in `settings` is hashed into the table as `operator`; if no valid admin token exists,
//! one is made (`operator`, or `operator-2`, ... when that name is taken by a revoked or expired
//! token) and written to `<state_dir>/operator-token` (0600) for commands on the same host.

use crate::store::{NewOperatorToken, OperatorRole, OperatorToken, Store, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where fleet before named tokens kept the one operator token, in plain text.
const PLAIN_SETTING_KEY: &str = "operator_token";
/// The file in the state directory that holds the start-up admin token.
pub const TOKEN_FILE: &str = "operator-token";
/// The name of the admin token a controller makes at start.
pub const FIRST_ADMIN_NAME: &str = "operator";
/// The longest token name (it is every event's actor).
const MAX_NAME_LENGTH: usize = 64;

/// Who is calling: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: OperatorRole,
}

/// What a presented secret turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identified {
    Operator(Operator),
    /// A token that expired at `at` (Unix ms).
    Expired {
        name: String,
        at: i64,
    },
    /// A token revoked at `at` (Unix ms).
    Revoked {
        name: String,
        at: i64,
    },
    /// No token has this secret.
    Unknown,
}

/// A new secret: 32 random bytes, hex (64 characters).
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// What the store keeps of a secret: its SHA-256, hex. One fast hash is enough: the secrets
/// are 256 random bits, so there is no dictionary to try and nothing for a slow hash to slow.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Which token `secret` is, as the store has it now (so a revocation on one controller holds
/// on all at once): one indexed read by the secret's hash.
pub async fn identify(store: &Store, secret: &str) -> Result<Identified, StoreError> {
    let Some(token) = store.operator_token_by_hash(&secret_hash(secret)).await? else {
        return Ok(Identified::Unknown);
    };
    let now = crate::store::now_ms();
    if let Some(at) = token.revoked_at {
        return Ok(Identified::Revoked {
            name: token.name.clone(),
            at,
        });
    }
    if let Some(at) = token.expires_at.filter(|at| *at <= now) {
        return Ok(Identified::Expired {
            name: token.name.clone(),
            at,
        });
    }
    store
        .note_operator_token_use(&token.name, token.last_used_at, now)
        .await?;
    Ok(Identified::Operator(Operator {
        name: token.name.clone(),
        role: token.role,
    }))
}

/// Checks a token name: 1 to 64 letters, digits, `.`, `_`, `-`, `@`, starting with a letter or
/// digit (it is a path segment of the API and every event's actor).
pub fn check_token_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() > MAX_NAME_LENGTH || !starts_well || !name.chars().all(allowed) {
        return Err(format!(
            "`{name}` is not a token name: 1 to {MAX_NAME_LENGTH} letters, digits, `.`, `_`, `-` or `@`, starting with a letter or digit"
        ));
    }
    Ok(())
}

/// A token just created or rotated, with its secret (shown this once).
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: OperatorToken,
    pub secret: String,
}

/// Creates a token (the caller checked the name); `actor` is recorded.
pub async fn create_token(
    store: &Store,
    name: &str,
    role: OperatorRole,
    expires_at: Option<i64>,
    actor: &str,
) -> Result<IssuedToken, StoreError> {
    let secret = random_secret();
    let hash = secret_hash(&secret);
    let new = NewOperatorToken {
        name,
        role,
        secret_hash: &hash,
        expires_at,
    };
    let token = store
        .create_operator_token(&new, actor, crate::store::now_ms())
        .await?;
    Ok(IssuedToken { token, secret })
}

/// Gives a token a new secret; the former one stops working at once.
pub async fn rotate_token(
    store: &Store,
    name: &str,
    actor: &str,
) -> Result<IssuedToken, StoreError> {
    let secret = random_secret();
    let token = store
        .rotate_operator_token(name, &secret_hash(&secret), actor, crate::store::now_ms())
        .await?;
    Ok(IssuedToken { token, secret })
}

/// What the controller did about tokens at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartTokens {
    /// No valid admin token existed: this one was made; its secret goes to the token file.
    Made { name: String, secret: String },
    /// An older fleet's plain token was hashed into the table under this name (the token file
    /// holding it keeps working).
    Moved { name: String },
    /// A valid admin token exists already.
    Present,
}

/// Moves an older fleet's plain token into the table, then makes an admin token if no valid
/// one exists.
pub async fn prepare_at_start(store: &Store) -> Result<StartTokens, StoreError> {
    if let Some(name) = move_plain_token(store).await? {
        return Ok(StartTokens::Moved { name });
    }
    let name = free_name(&store.operator_tokens().await?, FIRST_ADMIN_NAME);
    let secret = random_secret();
    let made = store
        .create_first_admin_token(&name, &secret_hash(&secret), crate::store::now_ms())
        .await?;
    Ok(match made {
        Some(token) => StartTokens::Made {
            name: token.name,
            secret,
        },
        None => StartTokens::Present,
    })
}

/// Hashes the plain `operator_token` setting of an older fleet into the table and deletes it.
async fn move_plain_token(store: &Store) -> Result<Option<String>, StoreError> {
    let Some(plain) = store.setting(PLAIN_SETTING_KEY).await? else {
        return Ok(None);
    };
    let name = free_name(&store.operator_tokens().await?, FIRST_ADMIN_NAME);
    let moved = store
        .move_plain_operator_token(
            PLAIN_SETTING_KEY,
            &name,
            &secret_hash(&plain),
            crate::store::now_ms(),
        )
        .await?;
    Ok(moved.then_some(name))
}

/// `base`, or `base-2`, `base-3`, ... : the first name no token has (names are never reused).
fn free_name(tokens: &[OperatorToken], base: &str) -> String {
    let taken = |name: &str| tokens.iter().any(|token| token.name == name);
    std::iter::once(base.to_string())
        .chain((2..).map(|n| format!("{base}-{n}")))
        .find(|name| !taken(name))
        .expect("an unbounded sequence has a free name")
}

/// Writes the token to `<state_dir>/operator-token`, readable by its owner only.
pub fn write_token_file(state_dir: &Path, token: &str) -> std::io::Result<PathBuf> {
    let path = state_dir.join(TOKEN_FILE);
    // Created 0600 from the start: never readable by others, not even for a moment.
    crate::store::private::write_private_file(&path, format!("{token}\n").as_bytes())?;
    Ok(path)
}

/// Reads the token a controller left in `state_dir`, if any.
pub fn read_token_file(state_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state_dir.join(TOKEN_FILE)).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_sha256_of_the_secret_and_not_the_secret() {
        // sha256("abc"), FIPS 180-2's first example.
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let secret = random_secret();
        assert_eq!(secret.len(), 64);
        assert_ne!(secret_hash(&secret), secret);
        assert_ne!(random_secret(), secret);
    }

    #[test]
    fn token_names_are_plain_path_segments() {
        for good in ["operator", "ci", "alice@laptop", "deploy-bot.2", "a"] {
            assert_eq!(check_token_name(good), Ok(()), "{good}");
        }
        for bad in ["", "-x", "a/b", "a b", "ü", &"x".repeat(65), "..", "a\n"] {
            assert!(check_token_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_taken_name_gets_the_next_number() {
        let token = |name: &str| OperatorToken {
            name: name.into(),
            role: OperatorRole::Admin,
            secret_hash: String::new(),
            created_at: 0,
            last_used_at: None,
            expires_at: None,
            revoked_at: Some(1),
        };
        assert_eq!(free_name(&[], "operator"), "operator");
        let taken = [token("operator"), token("operator-2")];
        assert_eq!(free_name(&taken, "operator"), "operator-3");
    }
}
