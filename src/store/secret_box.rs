//! The controllers' secret key and what it seals: secrets kept in the shared store (a BMC
//! password an enlisting machine reported) are encrypted with XChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`), a random 24-byte nonce per secret (random nonces of that size never
//! collide in practice), and associated data that binds the ciphertext to its machine and its
//! purpose: a row copied onto another machine, or to another purpose, does not decrypt.
//!
//! Every controller on one database must be given the same key (`FLEET_SECRET_KEY`, a key file,
//! or the `<state_dir>/secret.key` a lone controller makes for itself). A key is known by its
//! id, the first 8 bytes of the SHA-256 of the key in hex: stored beside each secret so that a
//! controller with another key says so instead of "cannot decrypt". The id tells nothing of the
//! key (256 random bits behind a hash).
//!
//! Nothing here shows a key or a secret: `Debug` of [`SecretKey`] shows the id only.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The environment variable that gives a controller its secret key (64 hex digits, or 32 bytes
/// in base64).
pub const SECRET_KEY_ENV: &str = "FLEET_SECRET_KEY";
/// The key file a controller makes in its state directory when it is given no key.
pub const SECRET_KEY_FILE: &str = "secret.key";
/// Bytes in a key.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// A 256-bit key shared by the controllers of one store.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
    id: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "SecretKey({})", self.id)
    }
}

/// Why a key could not be had. Never shows the key.
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("the secret key {source_name} is not a key: give 32 bytes, 64 hex digits or 32 bytes in base64 (e.g. `head -c 32 /dev/urandom > FILE` or `openssl rand -hex 32`)")]
    Malformed { source_name: String },
    #[error("cannot read the secret key file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the secret key file {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A sealed secret as the store keeps it (both parts go into TEXT columns as hex).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    /// The ciphertext with its 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Sealed({} bytes)", self.ciphertext.len())
    }
}

/// Opening a sealed secret failed: the key is another, or the bytes or their binding changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the secret does not decrypt with this key and binding (another key, or altered or moved data)"
)]
pub struct OpenError;

impl SecretKey {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> SecretKey {
        let id = hex::encode(&Sha256::digest(bytes)[..8]);
        let cipher = XChaCha20Poly1305::new(&bytes.into());
        SecretKey { cipher, id }
    }

    /// A new random key.
    pub fn generate() -> SecretKey {
        SecretKey::from_bytes(random_key())
    }

    /// A key as written: exactly 32 bytes, or 64 hex digits, or base64 of 32 bytes (surrounding
    /// white space and a trailing newline ignored). `source_name` says where it came from, for
    /// the error.
    pub fn parse(bytes: &[u8], source_name: &str) -> Result<SecretKey, SecretKeyError> {
        use base64::Engine;
        if let Ok(raw) = <[u8; KEY_BYTES]>::try_from(bytes) {
            return Ok(SecretKey::from_bytes(raw));
        }
        let malformed = || SecretKeyError::Malformed {
            source_name: source_name.to_string(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| malformed())?.trim();
        let decoded = if text.len() == 2 * KEY_BYTES {
            hex::decode(text).ok()
        } else {
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        };
        decoded
            .and_then(|bytes| <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).ok())
            .map(SecretKey::from_bytes)
            .ok_or_else(malformed)
    }

    /// The key in `path`.
    pub fn read_file(path: &Path) -> Result<SecretKey, SecretKeyError> {
        let bytes = std::fs::read(path).map_err(|source| SecretKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        SecretKey::parse(&bytes, &format!("in {}", path.display()))
    }

    /// The key in `path`, made (32 random bytes, mode 0600) if there is none; `true` if made.
    pub fn read_or_create_file(path: &Path) -> Result<(SecretKey, bool), SecretKeyError> {
        if path.exists() {
            return Ok((SecretKey::read_file(path)?, false));
        }
        let bytes = random_key();
        super::private::write_private_file(path, &bytes).map_err(|source| {
            SecretKeyError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok((SecretKey::from_bytes(bytes), true))
    }

    /// The key's id: 16 hex digits of its SHA-256.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext` bound to `associated_data`, with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], associated_data: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: associated_data,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message shorter than 256 GiB");
        Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Decrypts what [`SecretKey::seal`] made with this key and the same associated data.
    pub fn open(&self, sealed: &Sealed, associated_data: &[u8]) -> Result<Vec<u8>, OpenError> {
        let nonce =
            <[u8; NONCE_BYTES]>::try_from(sealed.nonce.as_slice()).map_err(|_| OpenError)?;
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: associated_data,
                },
            )
            .map_err(|_| OpenError)
    }
}

impl SecretKey {
    /// A proof that `message` comes from a holder of this key (the controllers' requests to
    /// each other): the Poly1305 tag of sealing nothing with `message` as associated data,
    /// under a fresh nonce, as hex `NONCE.TAG`. An AEAD with an empty plaintext is a MAC; it
    /// keeps the one key and the one cipher the controllers already share (no second primitive).
    pub fn prove(&self, message: &[u8]) -> String {
        let sealed = self.seal(b"", message);
        format!(
            "{}.{}",
            hex::encode(&sealed.nonce),
            hex::encode(&sealed.ciphertext)
        )
    }

    /// Whether `proof` is what [`SecretKey::prove`] made for `message` with this key.
    pub fn check_proof(&self, message: &[u8], proof: &str) -> bool {
        let Some((nonce, tag)) = proof.split_once('.') else {
            return false;
        };
        let (Ok(nonce), Ok(ciphertext)) = (hex::decode(nonce), hex::decode(tag)) else {
            return false;
        };
        let sealed = Sealed { nonce, ciphertext };
        self.open(&sealed, message)
            .is_ok_and(|plaintext| plaintext.is_empty())
    }
}

fn random_key() -> [u8; KEY_BYTES] {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// What binds a stored secret to its machine (by id: a machine re-added under the same name is
/// another machine) and its purpose.
pub fn associated_data(machine_id: i64, purpose: &str) -> Vec<u8> {
    format!("fleet secret v1\nmachine {machine_id}\npurpose {purpose}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_checks_with_its_key_and_message_only() {
        let key = SecretKey::generate();
        let proof = key.prove(b"fleet peer image v1\nabc\n1");
        assert!(key.check_proof(b"fleet peer image v1\nabc\n1", &proof));
        assert_ne!(
            proof,
            key.prove(b"fleet peer image v1\nabc\n1"),
            "a nonce per proof"
        );
        assert!(!key.check_proof(b"fleet peer image v1\nabd\n1", &proof));
        assert!(!SecretKey::generate().check_proof(b"fleet peer image v1\nabc\n1", &proof));
        for broken in ["", "00.00", "zz.zz", &proof[1..], &proof.replace('.', "")] {
            assert!(
                !key.check_proof(b"fleet peer image v1\nabc\n1", broken),
                "{broken}"
            );
        }
        // A sealed secret is no proof: its plaintext is not empty.
        let sealed = key.seal(b"x", b"m");
        let text = format!(
            "{}.{}",
            hex::encode(&sealed.nonce),
            hex::encode(&sealed.ciphertext)
        );
        assert!(!key.check_proof(b"m", &text));
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_and_binding() {
        let key = SecretKey::generate();
        let binding = associated_data(7, "bmc-password");
        let sealed = key.seal(b"hunter2-S3cret", &binding);
        assert_eq!(sealed.nonce.len(), 24);
        assert!(!sealed
            .ciphertext
            .windows(14)
            .any(|window| window == b"hunter2-S3cret"));
        assert_eq!(key.open(&sealed, &binding).unwrap(), b"hunter2-S3cret");
    }

    #[test]
    fn every_seal_has_its_own_nonce() {
        let key = SecretKey::generate();
        let binding = associated_data(1, "bmc-password");
        let first = key.seal(b"same", &binding);
        let second = key.seal(b"same", &binding);
        assert_ne!(first.nonce, second.nonce);
        assert_ne!(first.ciphertext, second.ciphertext);
    }

    #[test]
    fn a_tampered_secret_does_not_open() {
        let key = SecretKey::generate();
        let binding = associated_data(7, "bmc-password");
        let sealed = key.seal(b"hunter2", &binding);
        for at in 0..sealed.ciphertext.len() {
            let mut tampered = sealed.clone();
            tampered.ciphertext[at] ^= 0x01;
            assert_eq!(key.open(&tampered, &binding), Err(OpenError), "byte {at}");
        }
        let mut tampered = sealed.clone();
        tampered.nonce[0] ^= 0x80;
        assert_eq!(key.open(&tampered, &binding), Err(OpenError));
        let mut cut = sealed.clone();
        cut.ciphertext.truncate(4);
        assert_eq!(key.open(&cut, &binding), Err(OpenError));
        let mut short_nonce = sealed;
        short_nonce.nonce.pop();
        assert_eq!(key.open(&short_nonce, &binding), Err(OpenError));
    }

    #[test]
    fn a_secret_moved_to_another_machine_or_purpose_does_not_open() {
        let key = SecretKey::generate();
        let sealed = key.seal(b"hunter2", &associated_data(7, "bmc-password"));
        assert_eq!(
            key.open(&sealed, &associated_data(8, "bmc-password")),
            Err(OpenError)
        );
        assert_eq!(
            key.open(&sealed, &associated_data(7, "other")),
            Err(OpenError)
        );
    }

    #[test]
    fn another_key_does_not_open_and_has_another_id() {
        let key = SecretKey::generate();
        let other = SecretKey::generate();
        let binding = associated_data(7, "bmc-password");
        let sealed = key.seal(b"hunter2", &binding);
        assert_eq!(other.open(&sealed, &binding), Err(OpenError));
        assert_ne!(key.id(), other.id());
        assert_eq!(key.id().len(), 16);
    }

    #[test]
    fn keys_are_read_raw_hex_or_base64_and_their_id_is_stable() {
        let bytes = [0x5au8; 32];
        let raw = SecretKey::parse(&bytes, "raw").unwrap();
        let hex_text = format!("{}\n", hex::encode(bytes));
        let from_hex = SecretKey::parse(hex_text.as_bytes(), "hex").unwrap();
        use base64::Engine;
        let base64_text = base64::engine::general_purpose::STANDARD.encode(bytes);
        let from_base64 = SecretKey::parse(base64_text.as_bytes(), "b64").unwrap();
        assert_eq!(raw.id(), from_hex.id());
        assert_eq!(raw.id(), from_base64.id());
        let sealed = raw.seal(b"x", b"ad");
        assert_eq!(from_hex.open(&sealed, b"ad").unwrap(), b"x");
        for bad in [&b"short"[..], &[b'a'; 63][..], &[0u8; 33][..]] {
            let error = SecretKey::parse(bad, "in test").unwrap_err().to_string();
            assert!(error.contains("in test"), "{error}");
        }
    }

    #[test]
    fn debug_shows_the_id_only() {
        let key = SecretKey::from_bytes([1u8; 32]);
        let shown = format!("{key:?}");
        assert_eq!(shown, format!("SecretKey({})", key.id()));
        assert!(!shown.contains("0101"));
    }

    #[test]
    fn a_key_file_is_made_once_0600() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(SECRET_KEY_FILE);
        let (made, created) = SecretKey::read_or_create_file(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        let (again, created) = SecretKey::read_or_create_file(&path).unwrap();
        assert!(!created);
        assert_eq!(made.id(), again.id());
    }
}
