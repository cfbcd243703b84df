//! The store and the operator token are the controller's alone: the state directory is 0700,
//! the SQLite file and its WAL and SHM files 0600, the token file 0600 from the moment it is
//! written. Another local user (uid 65534, through util-linux's `setpriv`) reads none of them,
//! even where the directories above are open to everyone; a store left 0644 by an older fleet is
//! tightened when the controller starts.

use crate::support::controller::TestController;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn open_to_all(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What `cat PATH` run as uid 65534 says: `Ok(contents)` or `Err(stderr)`.
fn read_as_nobody(path: &Path) -> Result<String, String> {
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .output()
        .expect("setpriv (util-linux) runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn the_store_and_the_operator_token_are_the_controllers_alone() {
    let directory = tempfile::tempdir().unwrap();
    // Directories above the state directory open to everyone: only the store's own modes
    // keep another user out.
    open_to_all(directory.path(), 0o755);
    let state = directory.path().join("state");
    let controller = TestController::start_in(&state, &[]);
    let database = state.join("fleet.db");
    let files = [
        database.clone(),
        state.join("fleet.db-wal"),
        state.join("fleet.db-shm"),
        state.join("operator-token"),
    ];
    assert_eq!(mode(&state), 0o700, "the state directory");
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    // Even with the state directory opened (an operator's chmod), no file can be read.
    open_to_all(&state, 0o755);
    for file in &files {
        let refused = read_as_nobody(file).expect_err(&file.display().to_string());
        assert!(refused.contains("Permission denied"), "{refused}");
    }
    // The check can tell: a file that is open to all is read.
    let control = state.join("control");
    std::fs::write(&control, "readable").unwrap();
    open_to_all(&control, 0o644);
    assert_eq!(read_as_nobody(&control).as_deref(), Ok("readable"));
    drop(controller);

    // A store an older fleet left 0644 (and its directory 0755) is tightened at the next start.
    open_to_all(&database, 0o644);
    let controller = TestController::start_in(&state, &[]);
    assert_eq!(mode(&database), 0o600);
    assert_eq!(mode(&state), 0o700);
    drop(controller);
}
