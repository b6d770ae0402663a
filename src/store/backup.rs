//! Copies of a live store (`cti-gateway backup --to DIR`): SQLite's online
//! backup API, from a read connection of the copy's own, never the writer's.
//!
//! The copy is consistent: the source connection holds one read transaction
//! for the whole copy, so every page comes from one WAL snapshot (the
//! journal as committed when the copy began) and concurrent commits never
//! make the backup restart. In WAL mode a reader never blocks the writer, so
//! journal appends go on meanwhile; the copy runs in steps of
//! [`BACKUP_STEP_PAGES`] pages with a pause between two, leaving the CPU and
//! the disk to the calls. The copy is written under a temporary name, synced
//! and renamed: a file with the store's name in DIR is always whole.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::{private, schema, Store, StoreError};

/// Pages copied per step: 1 MiB with 4 KiB pages, a few milliseconds.
pub const BACKUP_STEP_PAGES: i32 = 256;

/// The pause between two steps.
const BACKUP_PAUSE: Duration = Duration::from_millis(5);

/// Copies started by this process, for their temporary names.
static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One file a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    /// The store's own file.
    pub source: PathBuf,
    /// Its copy.
    pub path: PathBuf,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Why a backup was not made, each with whose move it is.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackupError {
    /// The request itself is wrong (a relative path): fix the request.
    #[error("{0}")]
    BadTarget(String),
    /// The folder cannot take the copy (missing, not a folder, not
    /// writable, the store's own folder): fix the folder or pick another.
    #[error("{0}")]
    Unusable(String),
    /// Reading the store or writing the copy failed part-way.
    #[error("{0}")]
    Failed(String),
}

/// Checks that `dir` can take copies of `stores`: an absolute path to an
/// existing folder, writable, and not the folder of any of the stores (a
/// copy there would take the name of the store itself, or sit beside it on
/// the same disk, which is no backup). Answers the folder, canonical.
pub fn check_target(dir: &Path, stores: &[Store]) -> Result<PathBuf, BackupError> {
    if !dir.is_absolute() {
        return Err(BackupError::BadTarget(format!(
            "backup folder {} is not an absolute path (the gateway's working directory is not yours): give the full path",
            dir.display()
        )));
    }
    let canonical = dir.canonicalize().map_err(|e| {
        BackupError::Unusable(format!(
            "backup folder {} cannot be used: {e}; create it first (on another disk than the store, ideally)",
            dir.display()
        ))
    })?;
    if !canonical.is_dir() {
        return Err(BackupError::Unusable(format!(
            "backup target {} is not a folder",
            dir.display()
        )));
    }
    for store in stores {
        let folder = store.path().parent().and_then(|p| p.canonicalize().ok());
        if folder.as_deref() == Some(canonical.as_path()) {
            return Err(BackupError::Unusable(format!(
                "backup folder {} is the store's own folder: a copy there would take the store's name; give another folder (on another disk, ideally)",
                dir.display()
            )));
        }
    }
    // Whether the gateway's user may write there: a probe file.
    let probe = canonical.join(format!(".cti-gateway-backup-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => {
            return Err(BackupError::Unusable(format!(
                "backup folder {} is not writable by the gateway's user: {e}",
                dir.display()
            )))
        }
    }
    Ok(canonical)
}

impl Store {
    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Copies the store into `dir` (checked with [`check_target`]) under its
    /// own file name, replacing a copy there; see the module's comment.
    pub async fn backup_into(&self, dir: &Path) -> Result<BackupFile, BackupError> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(BackupError::Failed(StoreError::Closed.to_string()));
        }
        let source = self.inner.path.clone();
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || copy(&source, &dir))
            .await
            .map_err(|e| BackupError::Failed(format!("the backup task failed: {e}")))?
    }
}

/// The copy itself, on a blocking thread.
fn copy(source: &Path, dir: &Path) -> Result<BackupFile, BackupError> {
    let started = Instant::now();
    let name = source
        .file_name()
        .ok_or_else(|| BackupError::Failed(format!("{} has no file name", source.display())))?;
    let target = dir.join(name);
    // A name of this copy's own: a copy still running when its request went
    // away (the HTTP client gave up) never shares a file with the next one.
    let mut partial_name = name.to_os_string();
    partial_name.push(format!(
        ".partial-{}-{}",
        std::process::id(),
        COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let partial = dir.join(partial_name);
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        BackupError::Failed(format!(
            "backup of {} into {}: {what} failed: {e}",
            source.display(),
            dir.display()
        ))
    };
    let result = (|| {
        let from = schema::open_reader(source).map_err(|e| failed("opening the store", &e))?;
        // One read transaction for the whole copy: one consistent snapshot.
        from.execute_batch("BEGIN")
            .map_err(|e| failed("beginning the read", &e))?;
        from.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| failed("beginning the read", &e))?;
        // 0600 like the store: the copy holds the same callers' numbers.
        private::create_file(&partial).map_err(|e| failed("creating the copy", &e))?;
        let mut to = Connection::open_with_flags(
            &partial,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|e| failed("creating the copy", &e))?;
        {
            let backup =
                Backup::new(&from, &mut to).map_err(|e| failed("starting the copy", &e))?;
            loop {
                match backup
                    .step(BACKUP_STEP_PAGES)
                    .map_err(|e| failed("copying", &e))?
                {
                    StepResult::Done => break,
                    // More, or the copy's file busy for a moment: go on
                    // after a pause either way.
                    _ => std::thread::sleep(BACKUP_PAUSE),
                }
            }
        }
        let _ = from.execute_batch("COMMIT");
        drop(from);
        // The copy keeps no WAL beside it: one self-contained file (the
        // gateway turns WAL on again when it opens a restored copy).
        to.query_row("PRAGMA journal_mode = DELETE", [], |r| {
            r.get::<_, String>(0)
        })
        .map_err(|e| failed("finishing the copy", &e))?;
        to.close()
            .map_err(|(_, e)| failed("closing the copy", &e))?;
        let file = std::fs::File::open(&partial).map_err(|e| failed("syncing the copy", &e))?;
        file.sync_all()
            .map_err(|e| failed("syncing the copy", &e))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        std::fs::rename(&partial, &target).map_err(|e| failed("renaming the copy", &e))?;
        if let Ok(folder) = std::fs::File::open(dir) {
            let _ = folder.sync_all();
        }
        Ok(bytes)
    })();
    match result {
        Ok(bytes) => Ok(BackupFile {
            source: source.to_path_buf(),
            path: target,
            bytes,
            elapsed: started.elapsed(),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash can come at any moment of a copy: at no moment before the
    /// end is there a file under the store's name in the folder (only the
    /// `.partial-…` one, which no one takes for a backup), and at the end
    /// there is only the whole copy.
    #[test]
    fn until_the_copy_is_whole_no_file_has_the_stores_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("cti-gateway.sqlite");
        {
            let conn = Connection::open(&source).expect("source");
            conn.execute_batch("CREATE TABLE bulk (b BLOB)")
                .expect("table");
            // About 8 MB: some thirty steps, a pause after each.
            for _ in 0..2_000 {
                conn.execute("INSERT INTO bulk VALUES (zeroblob(4000))", [])
                    .expect("insert");
            }
        }
        let target = tempfile::tempdir().expect("backup dir");
        let copying = {
            let (source, target) = (source.clone(), target.path().to_path_buf());
            std::thread::spawn(move || copy(&source, &target))
        };
        let named = target.path().join("cti-gateway.sqlite");
        let mut partial_seen = false;
        let partials = || {
            std::fs::read_dir(target.path())
                .expect("read dir")
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
                .count()
        };
        while !copying.is_finished() {
            // The name appears only by the rename of the whole copy: once it
            // is there, the partial file is gone.
            if named.exists() {
                assert_eq!(partials(), 0, "the store's name beside a partial copy");
            } else if partials() > 0 {
                partial_seen = true;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let copied = copying.join().expect("copy thread").expect("copy");
        assert!(
            partial_seen,
            "the copy was never seen under its temporary name"
        );
        assert_eq!(copied.path, named);
        let names: Vec<String> = std::fs::read_dir(target.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["cti-gateway.sqlite"]);
    }
}
