//! Image files from the other controllers of the store (issue 16): a controller that needs a
//! file it has neither cached nor can read where the fleet file says (a `path` on another
//! controller's disk, or a `url` that failed) asks the live controllers that `fleet controllers`
//! lists, one after the other, for the file by its SHA-256 (`GET /boot/peer/files/SHA256` on
//! their boot listener), and keeps it only if the bytes have the fleet file's SHA-256.
//!
//! Who may ask: a controller of the same store, proving it with the controllers' secret key
//! (the one that seals the store's secrets): the header `x-fleet-peer: UNIX_MS PROOF`, where
//! PROOF is [`crate::store::SecretKey::prove`] of the digest and the time, accepted within
//! [`PROOF_WINDOW_MS`] of the answering controller's clock. The digest check, not the proof, is
//! what guarantees the bytes: a peer (or anyone between) sending other bytes is refused.

use super::download::{self, DownloadError};
use crate::store::{
    now_ms, ControllerRecord, SecretKey, Store, HEARTBEAT_INTERVAL, SILENT_AFTER_INTERVALS,
};
use reqwest::header::{HeaderMap, HeaderValue};
use std::path::Path;

/// The route on the boot listener, followed by `/SHA256`.
pub const PEER_FILES_PATH: &str = "/boot/peer/files";
/// The header a peer request proves itself with: `UNIX_MS PROOF`.
pub const PROOF_HEADER: &str = "x-fleet-peer";
/// How far a request's time may be from the answering controller's clock (5 minutes): a proof
/// overheard on the network opens the same file for no longer than this.
pub const PROOF_WINDOW_MS: i64 = 300_000;
/// Attempts per peer (a cut transfer is resumed with Range).
const ATTEMPTS_PER_PEER: u32 = 3;

/// This controller among the others of its store.
#[derive(Debug, Clone)]
pub struct Peers {
    pub store: Store,
    /// Its own row in `controllers`, never asked.
    pub controller_id: String,
}

/// Why a peer request was refused (401), as the answer says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    #[error(
        "no {PROOF_HEADER} header: image files are given only to the other controllers of this \
         store, which prove it with the controllers' secret key"
    )]
    Missing,
    #[error("the {PROOF_HEADER} header is not `UNIX_MS PROOF`")]
    Malformed,
    #[error(
        "the request says it was made at {at} (Unix ms), {skew_s} s from this controller's clock \
         (at most {} s): check the controllers' clocks",
        PROOF_WINDOW_MS / 1000
    )]
    Stale { at: i64, skew_s: i64 },
    #[error(
        "the proof does not check with this controller's secret key (id {key_id}): every \
         controller on one store must be given the same key"
    )]
    WrongKey { key_id: String },
    #[error("this controller has no secret key, so it cannot check a peer's proof")]
    NoKey,
}

/// What is proven: the file asked for and when.
fn proof_message(sha256: &str, at_ms: i64) -> Vec<u8> {
    let sha256 = sha256.to_ascii_lowercase();
    format!("fleet peer image v1\nGET {sha256}\nat {at_ms}").into_bytes()
}

/// The header value of a request for `sha256` made now.
pub fn proof_header(key: &SecretKey, sha256: &str, at_ms: i64) -> String {
    format!("{at_ms} {}", key.prove(&proof_message(sha256, at_ms)))
}

/// Whether `header` proves a request for `sha256` from a holder of `key`, made within the window
/// around `now_ms`.
pub fn check_proof_header(
    key: Option<&SecretKey>,
    header: Option<&str>,
    sha256: &str,
    now_ms: i64,
) -> Result<(), PeerRefusal> {
    let key = key.ok_or(PeerRefusal::NoKey)?;
    let header = header.ok_or(PeerRefusal::Missing)?;
    let (at, proof) = header
        .trim()
        .split_once(' ')
        .ok_or(PeerRefusal::Malformed)?;
    let at: i64 = at.parse().map_err(|_| PeerRefusal::Malformed)?;
    let skew = now_ms.saturating_sub(at);
    if skew.abs() > PROOF_WINDOW_MS {
        return Err(PeerRefusal::Stale {
            at,
            skew_s: skew / 1000,
        });
    }
    if !key.check_proof(&proof_message(sha256, at), proof.trim()) {
        return Err(PeerRefusal::WrongKey {
            key_id: key.id().to_string(),
        });
    }
    Ok(())
}

/// The other controllers whose heartbeat is recent (judged by this controller's clock, as
/// `fleet controllers` judges it), freshest first; and how many others are silent.
async fn live_peers(peers: &Peers) -> Result<(Vec<ControllerRecord>, usize), String> {
    let rows = peers
        .store
        .controllers()
        .await
        .map_err(|error| format!("cannot list the other controllers in the store: {error}"))?;
    let limit = SILENT_AFTER_INTERVALS * HEARTBEAT_INTERVAL.as_millis() as i64;
    let now = now_ms();
    let (mut live, silent): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .filter(|row| row.id != peers.controller_id)
        .partition(|row| now - row.heartbeat_at <= limit);
    live.sort_by_key(|row| std::cmp::Reverse(row.heartbeat_at));
    Ok((live, silent.len()))
}

/// What a successful fetch says it came from (the manifest's `source`).
fn describe(peer: &ControllerRecord) -> String {
    format!("controller `{}` ({})", peer.id, peer.boot_url)
}

/// Fetches the file with SHA-256 `expected` from the first live peer that has it into `partial`
/// (resumed with Range after a cut), checking the digest; returns where it came from and its
/// size. A peer whose bytes have another digest is refused (the partial file removed) and the
/// next one asked. The error names every controller asked and why each failed.
pub async fn fetch_from_peers(
    peers: &Peers,
    expected: &str,
    partial: &Path,
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<(String, u64), String> {
    let key = peers.store.secret_key().ok_or(
        "this controller has no secret key, so it cannot ask the other controllers".to_string(),
    )?;
    let (live, silent) = live_peers(peers).await?;
    if live.is_empty() {
        return Err(format!(
            "no other controller of the store is alive to ask ({silent} silent; `fleet \
             controllers` lists them): the file is cached nowhere this controller can reach"
        ));
    }
    let client = download::client()?;
    let mut reasons = Vec::new();
    for peer in &live {
        match fetch_from(&client, key, peer, expected, partial, progress).await {
            Ok(size) => return Ok((describe(peer), size)),
            Err(reason) => reasons.push(format!("{}: {reason}", describe(peer))),
        }
    }
    Err(format!(
        "no other controller gave it (asked {}): {}",
        live.len(),
        reasons.join("; ")
    ))
}

/// One peer, a few attempts; `Ok(size)` only with the right digest.
async fn fetch_from(
    client: &reqwest::Client,
    key: &SecretKey,
    peer: &ControllerRecord,
    expected: &str,
    partial: &Path,
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<u64, String> {
    let url = format!(
        "{}{PEER_FILES_PATH}/{}",
        peer.boot_url.trim_end_matches('/'),
        expected.to_ascii_lowercase()
    );
    let mut last_error = String::new();
    for _ in 0..ATTEMPTS_PER_PEER {
        let mut headers = HeaderMap::new();
        let proof = proof_header(key, expected, now_ms());
        let value = HeaderValue::from_str(&proof).map_err(|error| error.to_string())?;
        headers.insert(PROOF_HEADER, value);
        match download::fetch_once(client, &url, headers, partial, progress).await {
            Ok((sha256, size)) if sha256.eq_ignore_ascii_case(expected) => return Ok(size),
            Ok((sha256, size)) => {
                let _ = tokio::fs::remove_file(partial).await;
                return Err(format!(
                    "sent {size} bytes with SHA-256 {sha256}, but the fleet file says {}: \
                     refused, nothing cached",
                    expected.to_ascii_lowercase()
                ));
            }
            Err(DownloadError::Fatal(reason)) => return Err(reason),
            Err(DownloadError::Retry(reason)) => last_error = reason,
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_header_opens_its_digest_within_the_window_under_the_same_key_only() {
        let key = SecretKey::generate();
        let sha = "ab".repeat(32);
        let now = 1_700_000_000_000;
        let header = proof_header(&key, &sha, now);
        assert_eq!(
            check_proof_header(Some(&key), Some(&header), &sha, now),
            Ok(())
        );
        let upper = sha.to_ascii_uppercase();
        assert_eq!(
            check_proof_header(Some(&key), Some(&header), &upper, now + 1000),
            Ok(())
        );
        let other = "cd".repeat(32);
        assert!(matches!(
            check_proof_header(Some(&key), Some(&header), &other, now),
            Err(PeerRefusal::WrongKey { .. })
        ));
        assert!(matches!(
            check_proof_header(Some(&SecretKey::generate()), Some(&header), &sha, now),
            Err(PeerRefusal::WrongKey { .. })
        ));
        assert_eq!(
            check_proof_header(
                Some(&key),
                Some(&header),
                &sha,
                now + PROOF_WINDOW_MS + 1000
            ),
            Err(PeerRefusal::Stale {
                at: now,
                skew_s: PROOF_WINDOW_MS / 1000 + 1
            })
        );
        assert_eq!(
            check_proof_header(Some(&key), None, &sha, now),
            Err(PeerRefusal::Missing)
        );
        assert_eq!(
            check_proof_header(Some(&key), Some("soon abc"), &sha, now),
            Err(PeerRefusal::Malformed)
        );
        assert_eq!(
            check_proof_header(None, Some(&header), &sha, now),
            Err(PeerRefusal::NoKey)
        );
    }
}
