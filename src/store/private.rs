//! The store's files are the controller's alone: the SQLite database holds the operator token's
//! record and every machine's token, so another local user must not read it. Directories the
//! store creates are 0700; the database file is created 0600 before SQLite opens it (SQLite
//! gives its `-wal` and `-shm` files the database file's mode), and a database, WAL or SHM file
//! left more open by an older fleet is tightened to 0600.

use std::path::Path;

/// Creates `directory` and any missing parents, each new one 0700 (parents that exist are left
/// as they are).
pub fn create_private_directory(directory: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(directory)
}

/// Makes `directory` (which exists) readable by its owner only.
pub fn restrict_directory(directory: &Path) -> std::io::Result<()> {
    set_mode(directory, 0o700)
}

/// Creates the SQLite file at `database` 0600 if it is missing, and brings it and its `-wal`
/// and `-shm` files to 0600 if they exist.
pub fn prepare_database_file(database: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(database)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        let path = Path::new(&name);
        if path.exists() {
            set_mode(path, 0o600)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current == mode {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Writes `path` whole and private (0600) from the start: through a temporary file created
/// 0600 and renamed over it, so the bytes are never readable by others, not even for a moment,
/// and a reader never sees half of them.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
