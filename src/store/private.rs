//! The store's files are the gateway user's alone: the counterparties and
//! the call journal are nobody else's to read, whatever the umask.
//!
//! - A folder the gateway creates for the store is made 0700.
//! - The database file is created 0600 before SQLite opens it; SQLite gives
//!   its `-wal` and `-shm` files the database file's mode. Files left
//!   0644 by an earlier version lose the others' bits at each start (0600).
//! - An existing folder open to others loses the others' bits (0700) when it is the
//!   store's own (it holds nothing but the store's files, and this user
//!   owns it: the default `var/`, made 0755 by earlier versions). Any other
//!   folder (a home, `/srv`, a folder shared with the directory file) is
//!   left as it is, said once at info level: what else lives there and who
//!   needs it is not the gateway's to know, and the files in it are 0600
//!   anyway, so nothing of the store can be read there (a warning at every
//!   start would be noise about a choice that is the administrator's).

use std::collections::HashSet;
use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::schema::sibling;

/// The store's folder: the owner only.
pub const FOLDER_MODE: u32 = 0o700;
/// The store's files: the owner only.
pub const FILE_MODE: u32 = 0o600;

/// Folders already logged about in this process (the main store and 1C's
/// snapshot share one).
static WARNED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Makes `dir` (and missing parents) 0700 if it does not exist; tightens
/// it if it is the store's own (see the module's notes), else warns once.
/// `store` is the store file's path in it.
pub fn prepare_folder(dir: &Path, store: &Path) -> io::Result<()> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(FOLDER_MODE)
            .create(dir)?;
        // The umask may have taken bits the owner needs.
        return std::fs::set_permissions(dir, Permissions::from_mode(FOLDER_MODE));
    }
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 == 0 {
        return Ok(());
    }
    let was = meta.permissions().mode() & 0o7777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ours = meta.uid() == unsafe { libc::geteuid() };
    if ours && holds_only_store_files(dir, store) {
        // Only what others had is taken: an owner's read-only folder stays
        // read-only (and is refused as such when the store opens).
        let now = was & FOLDER_MODE;
        std::fs::set_permissions(dir, Permissions::from_mode(now))?;
        tracing::warn!(
            folder = %dir.display(),
            was = format!("{was:o}"),
            now = format!("{now:o}"),
            "store: the store's folder was open to other users; now it is the owner's only"
        );
    } else if first_notice(dir) {
        tracing::info!(
            folder = %dir.display(),
            mode = format!("{was:o}"),
            "store: the folder the store is in is open to other users; left as it is because other things live in it (the store's own files are 600). A folder of the store's own is best: point store.path into one, or run chmod 700 {}",
            dir.display()
        );
    }
    Ok(())
}

/// Creates the store file at `path`, empty and 0600, if it does not exist,
/// so that SQLite (which keeps an existing file's mode, and gives its
/// `-wal` and `-shm` files the same) never makes it world-readable.
pub fn create_file(path: &Path) -> io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(file) => file.set_permissions(Permissions::from_mode(FILE_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Takes the group's and others' bits from the store file and its `-wal`
/// and `-shm` files, those that exist (an earlier version left them 0644):
/// 0600, or 0400 for a file its owner made read-only (refused as such
/// when the store opens).
pub fn tighten_files(path: &Path) -> io::Result<()> {
    for file in [
        path.to_path_buf(),
        sibling(path, "-wal"),
        sibling(path, "-shm"),
    ] {
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                let now = meta.permissions().mode() & FILE_MODE;
                std::fs::set_permissions(&file, Permissions::from_mode(now))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Every entry of `dir` is one of the store's files: its name starts with
/// the store file's name up to its first dot (`cti-gateway.sqlite`,
/// `-wal`, `-shm`, `cti-gateway.onec.sqlite`...).
fn holds_only_store_files(dir: &Path, store: &Path) -> bool {
    let Some(name) = store.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let stem = name.split('.').next().unwrap_or(name);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|entry| {
        entry.is_ok_and(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(stem) && n[stem.len()..].starts_with('.'))
        })
    })
}

fn first_notice(dir: &Path) -> bool {
    let mut warned = WARNED.lock().unwrap_or_else(PoisonError::into_inner);
    warned
        .get_or_insert_with(HashSet::new)
        .insert(dir.to_path_buf())
}
