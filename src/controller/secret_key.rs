//! Which secret key the controller seals the store's secrets with: `FLEET_SECRET_KEY` or the
//! key file given (`--secret-key-file`, else `[controller] secret_key_file`), not both (two
//! sources may hold two keys; which one wins would be a guess); with neither,
//! `<state_dir>/secret.key`, made (32 random bytes, 0600) on the first start, so that a lone
//! controller works out of the box. Every controller on one database must have the same key.

use crate::store::{SecretKey, SecretKeyError, SECRET_KEY_ENV, SECRET_KEY_FILE};
use std::path::{Path, PathBuf};

/// Where the key came from, as the start-up line says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    File(PathBuf),
    /// `<state_dir>/secret.key`; `true` if made at this start.
    StateDir(PathBuf, bool),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Environment => write!(formatter, "from {SECRET_KEY_ENV}"),
            KeySource::File(path) => write!(formatter, "from {}", path.display()),
            KeySource::StateDir(path, false) => write!(formatter, "from {}", path.display()),
            KeySource::StateDir(path, true) => write!(
                formatter,
                "made now in {} (another controller on this database needs this key: copy the \
                 file and give it with --secret-key-file)",
                path.display()
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyChoiceError {
    #[error(transparent)]
    Key(#[from] SecretKeyError),
    #[error("both {SECRET_KEY_ENV} and the key file {file} give a secret key: give one")]
    Both { file: PathBuf },
}

/// The key and where it came from: the environment's `FLEET_SECRET_KEY` (`environment`, passed
/// in so that tests need not set the process's), else `file`, else the state directory's.
pub fn choose_secret_key(
    environment: Option<&std::ffi::OsStr>,
    file: Option<&Path>,
    state_dir: &Path,
) -> Result<(SecretKey, KeySource), KeyChoiceError> {
    let environment = environment.filter(|value| !value.is_empty());
    match (environment, file) {
        (Some(_), Some(file)) => Err(KeyChoiceError::Both {
            file: file.to_path_buf(),
        }),
        (Some(value), None) => {
            use std::os::unix::ffi::OsStrExt;
            let key = SecretKey::parse(value.as_bytes(), &format!("in {SECRET_KEY_ENV}"))?;
            Ok((key, KeySource::Environment))
        }
        (None, Some(file)) => Ok((
            SecretKey::read_file(file)?,
            KeySource::File(file.to_path_buf()),
        )),
        (None, None) => {
            let path = state_dir.join(SECRET_KEY_FILE);
            let (key, made) = SecretKey::read_or_create_file(&path)?;
            Ok((key, KeySource::StateDir(path, made)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_a_file_or_the_state_directory_gives_the_key() {
        let directory = tempfile::tempdir().unwrap();
        let hex_key = "11".repeat(32);
        let (from_env, source) =
            choose_secret_key(Some(hex_key.as_ref()), None, directory.path()).unwrap();
        assert_eq!(source, KeySource::Environment);
        let file = directory.path().join("given.key");
        std::fs::write(&file, format!("{hex_key}\n")).unwrap();
        let (from_file, source) = choose_secret_key(None, Some(&file), directory.path()).unwrap();
        assert_eq!(source, KeySource::File(file.clone()));
        assert_eq!(from_env.id(), from_file.id());
        assert!(!directory.path().join(SECRET_KEY_FILE).exists());

        let error = choose_secret_key(Some(hex_key.as_ref()), Some(&file), directory.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("give one"), "{error}");

        let (made, source) = choose_secret_key(Some("".as_ref()), None, directory.path()).unwrap();
        let path = directory.path().join(SECRET_KEY_FILE);
        assert_eq!(source, KeySource::StateDir(path.clone(), true));
        assert!(source.to_string().contains("made now"), "{source}");
        let (again, source) = choose_secret_key(None, None, directory.path()).unwrap();
        assert_eq!(source, KeySource::StateDir(path, false));
        assert_eq!(made.id(), again.id());

        let bad = choose_secret_key(Some("S3cret-but-short".as_ref()), None, directory.path())
            .unwrap_err()
            .to_string();
        assert!(bad.contains(SECRET_KEY_ENV), "{bad}");
        assert!(!bad.contains("S3cret-but-short"), "{bad}");
    }
}
