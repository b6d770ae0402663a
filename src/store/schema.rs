//! Opening connections, their pragmas, the checks made before opening, and
//! the schema migrations.
//!
//! Before the writer opens a file, [`check_presence`] refuses to create a
//! store where one was expected (SQLite would silently take a missing or
//! empty file as a new database), and [`claim_alone`] lets a maintenance
//! command make sure no gateway has the file open.
//!
//! The schema version lives in `PRAGMA user_version`. Migration `n` (counted
//! from 1) takes a file from version `n - 1` to `n`; each runs in its own
//! transaction together with the version bump, so a crash mid-way leaves the
//! file at the last complete version. Append new migrations; never edit one
//! that has shipped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{StoreError, StoreRole, StoredSet};

/// Each entry is one migration; the schema version is its position from 1.
const MIGRATIONS: &[&str] = &[
    // 1: directory snapshot and call journal.
    "
    CREATE TABLE sources (
        source      TEXT PRIMARY KEY NOT NULL,
        fingerprint TEXT,
        saved_at    INTEGER NOT NULL,   -- unix ms
        records     INTEGER NOT NULL
    );
    CREATE TABLE counterparties (
        source TEXT NOT NULL REFERENCES sources(source) ON DELETE CASCADE,
        id     TEXT NOT NULL,
        body   TEXT NOT NULL,          -- the Counterparty as JSON
        PRIMARY KEY (source, id)
    ) WITHOUT ROWID;
    CREATE TABLE calls (
        id              INTEGER PRIMARY KEY,
        at              INTEGER NOT NULL,  -- unix ms
        raw_number      TEXT NOT NULL,
        number          TEXT NOT NULL,
        key             TEXT NOT NULL,
        counterparty_id TEXT,
        delivered       INTEGER NOT NULL   -- screens the pop-up reached
    );
    CREATE INDEX calls_key_at ON calls (key, at);
    CREATE INDEX calls_at ON calls (at);
    ",
    // 2: when the gateway received each row's version (unix ms). When two
    // sources hold one id, the newer version answers, after a restart too.
    // NULL (rows from before): the source's saved_at stands in.
    "
    ALTER TABLE counterparties ADD COLUMN received_at INTEGER;
    ",
    // 3: the pop-up sequence number each call got, so that a key's numbers
    // continue after a restart (a screen reconnecting with `after=N` must
    // not skip the new run's first calls). NULL: rows from before, or a call
    // to a key no operator has. Journal retention must keep each key's
    // newest row, or the key would start again from a smaller number.
    "
    ALTER TABLE calls ADD COLUMN seq INTEGER;
    CREATE INDEX calls_key_seq ON calls (key, seq);
    ",
    // 4: deletions as tombstones. A DELETE of an id hides each other
    // source's copy while that copy's content is the one deleted (`content`,
    // the directory's content hash); the copy's own rows stay as its source
    // holds them. A tombstone is forgotten once its copy changes.
    "
    CREATE TABLE tombstones (
        id         TEXT NOT NULL,
        source     TEXT NOT NULL,
        content    INTEGER NOT NULL,  -- u64 content hash, stored as i64 bits
        deleted_at INTEGER NOT NULL,  -- unix ms
        PRIMARY KEY (id, source)
    ) WITHOUT ROWID;
    ",
    // 5: the journal by caller (`GET /api/v1/calls?number=`: a client's
    // call history), newest first without a sort.
    "
    CREATE INDEX calls_number_at ON calls (number, at);
    ",
];

/// Which migration list a file takes: each kind of store file has its own,
/// so the sync store's tables never appear in the main store (whose list,
/// [`MIGRATIONS`], stays as it shipped) and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Schema {
    /// The main store and the 1C snapshot's cache: [`MIGRATIONS`].
    Main,
    /// The sync store: [`SYNC_MIGRATIONS`](super::sync::SYNC_MIGRATIONS).
    Sync,
    /// The SERVIO snapshot and its ledger:
    /// [`SERVIO_MIGRATIONS`](super::servio::SERVIO_MIGRATIONS).
    Servio,
}

impl Schema {
    fn migrations(self) -> &'static [&'static str] {
        match self {
            Schema::Main => MIGRATIONS,
            Schema::Sync => super::sync::SYNC_MIGRATIONS,
            Schema::Servio => super::servio::SERVIO_MIGRATIONS,
        }
    }

    /// The version this build writes and understands.
    pub(super) fn version(self) -> i64 {
        self.migrations().len() as i64
    }

    /// `PRAGMA application_id` of a file of this schema (set by its first
    /// migration; 0 for the main store, which never set one): a sync file
    /// opened as the main store, or the other way round, is refused
    /// instead of being migrated with the other list.
    fn application_id(self) -> i32 {
        match self {
            Schema::Main => 0,
            Schema::Sync => super::sync::SYNC_APPLICATION_ID,
            Schema::Servio => super::servio::SERVIO_APPLICATION_ID,
        }
    }

    /// What a file of this schema is, for the message refusing another.
    fn name(self) -> &'static str {
        match self {
            Schema::Main => "a main store or 1C snapshot file",
            Schema::Sync => "a sync store file",
            Schema::Servio => "a SERVIO snapshot file",
        }
    }
}

/// How long a connection waits for a lock another process holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The sync file's WAL cap, in pages (4 KiB: 128 MiB): where SQLite's own
/// checkpoint runs, in the commit that reaches it; below it the checkpoint
/// thread folds the WAL in once the writer is idle (`writer/checkpoint.rs`).
/// A bulk of 100,000 rows in commands of 1,000 writes about 30,000 frames
/// (each commit rewrites the id-map leaves it touches, and the keys are
/// random), so it reaches the cap once, near its end: one inline checkpoint
/// per about 100,000 rows instead of one per 5 commits. `journal_size_limit`
/// (64 MiB) truncates the WAL again after a checkpoint.
const SYNC_WAL_CAP_PAGES: i64 = 32_768;

/// How long a maintenance command waits for another process to let go of
/// the file: a running gateway never does, so a short wait is enough.
const ALONE_WAIT: Duration = Duration::from_millis(500);

/// What the writer found on opening, for the start-up log line.
pub(super) struct OpenInfo {
    pub schema_version: i64,
    pub migrated_from: Option<i64>,
    pub sources: i64,
    pub counterparties: i64,
    /// The main schema's journal; `None` for the sync store (no journal).
    pub journal_last_id: Option<i64>,
    /// The sync store's outbox rows waiting to be sent; `None` elsewhere.
    pub outbox_pending: Option<i64>,
}

/// Opens (creating if needed) the one read-write connection, sets its pragmas
/// and brings the file up to date with `schema`'s migrations.
pub(super) fn open_writer(
    path: &Path,
    schema: Schema,
) -> Result<(Connection, OpenInfo), StoreError> {
    let err = |op| move |e| StoreError::sqlite(path, op, e);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    // SQLite silently falls back to read-only when the file is not writable:
    // refuse here, at start-up, rather than on the first call's journal write.
    if conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(err("checking the file mode"))?
    {
        return Err(StoreError::ReadOnly {
            path: path.to_path_buf(),
            detail: "the file is not writable".into(),
        });
    }
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(err("setting busy_timeout"))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(err("switching to WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            cause: format!(
                "the file system does not support WAL (journal mode stays {mode:?}); use a local disk, not a network share"
            ),
        });
    }
    // FULL: an acknowledged commit survives power loss, not only a crash of
    // the process. Group commit keeps the fsyncs per call low.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err("setting synchronous"))?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(err("enabling foreign keys"))?;
    // After a big snapshot write the WAL is checkpointed; do not keep it at
    // that size on disk.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(err("setting journal_size_limit"))?;
    // Snapshot rows arrive in the source's order, not the key's: a larger
    // page cache keeps a full replace from thrashing the B-tree.
    conn.pragma_update(None, "cache_size", -32 * 1024)
        .map_err(err("setting cache_size"))?;
    if matches!(schema, Schema::Sync) {
        // The sync file is checkpointed by a thread of its own when its
        // writer is idle (`writer/checkpoint.rs`); SQLite's own checkpoint,
        // run in a commit, is kept only as the WAL's cap.
        conn.pragma_update(None, "wal_autocheckpoint", SYNC_WAL_CAP_PAGES)
            .map_err(err("setting wal_autocheckpoint"))?;
    }

    let migrated_from = migrate(&mut conn, path, schema)?;

    let (sources, counterparties): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(records), 0) FROM sources",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err("counting snapshot rows"))?;
    let (journal_last_id, outbox_pending) = match schema {
        Schema::Main => {
            let last: i64 = conn
                .query_row("SELECT coalesce(max(id), 0) FROM calls", [], |r| r.get(0))
                .map_err(err("reading the journal's last id"))?;
            (Some(last), None)
        }
        Schema::Servio => (None, None),
        Schema::Sync => {
            let pending: i64 = conn
                .query_row(
                    "SELECT count(*) FROM outbox WHERE state = 'pending'",
                    [],
                    |r| r.get(0),
                )
                .map_err(err("counting the outbox"))?;
            (None, Some(pending))
        }
    };
    Ok((
        conn,
        OpenInfo {
            schema_version: schema.version(),
            migrated_from,
            sources,
            counterparties,
            journal_last_id,
            outbox_pending,
        },
    ))
}

/// Opens a read-only connection; the writer must have opened the file first
/// (it creates it and switches it to WAL).
/// The sync file's checkpoint connection (`writer/checkpoint.rs`): read-write,
/// never creating (the writer opened and migrated the file), and quick to
/// give up on a lock: a checkpoint that cannot run now runs on the next round.
pub(super) fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    conn.busy_timeout(Duration::from_millis(100))
        .map_err(|e| StoreError::sqlite(path, "setting busy_timeout", e))?;
    Ok(conn)
}

pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| StoreError::sqlite(path, "setting busy_timeout", e))?;
    Ok(conn)
}

/// Refuses to open the store at `path` as a new one when it is missing or
/// empty (0 bytes) while something shows a store was there: its `-wal` or
/// `-shm` file, one of `companions` (files that exist only beside a store),
/// or the empty file itself (SQLite never leaves a database empty once it
/// has written to it). A fresh install (no file, nothing beside it) passes.
///
/// With `new_store` it passes too, with a warning; a `-wal` file left
/// beside is then renamed aside (SQLite would delete it, and it may hold the
/// last commits of the store that was there).
pub(super) fn check_presence(
    path: &Path,
    role: &StoreRole,
    new_store: bool,
    companions: &[PathBuf],
) -> Result<(), StoreError> {
    let Some(found) = expected_but_absent(path, companions) else {
        return Ok(());
    };
    if !new_store {
        return Err(StoreError::Missing {
            path: path.to_path_buf(),
            found,
            role: role.clone(),
        });
    }
    tracing::warn!(
        path = %path.display(),
        found = %found,
        "store: beginning with an empty store, as --new-store asks"
    );
    set_wal_aside(path)
}

/// What was found at `path` when it is missing or empty while a store was
/// expected there; `None` when the file has content, or nothing shows a
/// store was there, or the file cannot be examined (opening reports that).
fn expected_but_absent(path: &Path, companions: &[PathBuf]) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 => None,
        Ok(_) => Some(
            "is empty (0 bytes), which SQLite never leaves once it has written a store".to_owned(),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            [sibling(path, "-wal"), sibling(path, "-shm")]
                .iter()
                .chain(companions)
                .find(|p| p.exists())
                .map(|p| format!("is missing while {} is there", p.display()))
        }
        Err(_) => None,
    }
}

/// `path` with `suffix` appended to its file name (`store.sqlite-wal`).
pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Renames the `-wal` file beside `path`, if any, to
/// `<name>-wal.before-new-store-<unix seconds>`.
fn set_wal_aside(path: &Path) -> Result<(), StoreError> {
    let wal = sibling(path, "-wal");
    if !wal.exists() {
        return Ok(());
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = sibling(path, &format!("-wal.before-new-store-{secs}"));
    std::fs::rename(&wal, &aside).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        cause: format!(
            "cannot move {} aside to {}: {e}",
            wal.display(),
            aside.display()
        ),
    })?;
    tracing::warn!(
        from = %wal.display(),
        to = %aside.display(),
        "store: the old store's write-ahead log was moved aside, not deleted"
    );
    Ok(())
}

/// For a maintenance command, which must not run beside a gateway: checks
/// that no other process has the store at `path` open, and lists the
/// snapshot's sets. Refuses a missing or empty file (there is nothing to
/// work on, and nothing is created).
///
/// The connection asks for exclusive locking before its first access: the
/// first access to a WAL database then needs the file to itself, which any
/// other open connection (a running gateway's) prevents. It is closed before
/// returning, so the caller's own connections can open the file.
pub(super) fn claim_alone(path: &Path) -> Result<Vec<StoredSet>, StoreError> {
    let no_store = |cause: String| StoreError::Open {
        path: path.to_path_buf(),
        cause,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 => {}
        Ok(_) => {
            return Err(no_store(
                "the file is empty (0 bytes): there is no store in it".into(),
            ))
        }
        Err(e) => return Err(no_store(e.to_string())),
    }
    let err = |op| move |e| StoreError::sqlite(path, op, e);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| no_store(e.to_string()))?;
    conn.busy_timeout(ALONE_WAIT)
        .map_err(err("setting busy_timeout"))?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(err("asking for exclusive locking"))?;
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::InUse {
                path: path.to_path_buf(),
            },
            _ => StoreError::sqlite(path, "taking the file alone", e),
        })?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err("reading the schema version"))?;
    // Version 0: an empty database, no sets (the `sources` table comes with migration 1).
    let sets = if version >= 1 {
        list_sets(&conn).map_err(err("listing the snapshot's sets"))?
    } else {
        Vec::new()
    };
    conn.execute_batch("ROLLBACK")
        .map_err(err("ending the check"))?;
    Ok(sets)
}

/// Every snapshot set, by name, with its row count.
fn list_sets(conn: &Connection) -> rusqlite::Result<Vec<StoredSet>> {
    let mut stmt = conn.prepare("SELECT source, records FROM sources ORDER BY source")?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredSet {
            source: r.get(0)?,
            records: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
        })
    })?;
    rows.collect()
}

/// Applies the migrations of `schema` the file lacks. Returns the version
/// it started from when it migrated anything.
fn migrate(conn: &mut Connection, path: &Path, schema: Schema) -> Result<Option<i64>, StoreError> {
    let err = |op| move |e| StoreError::sqlite(path, op, e);
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err("reading the schema version"))?;
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(err("reading the application id"))?;
    // A file with tables of its own (version above 0) must be of this
    // schema: the other list's migrations would fail on it half-way, or
    // (a newer main file read as a sync file) name the wrong remedy.
    if found > 0 && app_id != schema.application_id() {
        let is = [Schema::Main, Schema::Sync, Schema::Servio]
            .into_iter()
            .find(|s| s.application_id() == app_id)
            .map_or("a file of another program", |s| s.name());
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            cause: format!(
                "the file is {is}, not {}; check store.path and that no file was renamed or copied over another",
                schema.name()
            ),
        });
    }
    let supported = schema.version();
    if found > supported {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    if found < 0 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("negative schema version {found}"),
            // The store puts its own role in (`StoreError::in_role`).
            role: StoreRole::Main,
        });
    }
    if found == supported {
        return Ok(None);
    }
    for (done, sql) in (found..).zip(schema.migrations().iter().skip(found as usize)) {
        let to = done + 1;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("starting a migration"))?;
        tx.execute_batch(sql).map_err(err("migrating the schema"))?;
        tx.pragma_update(None, "user_version", to)
            .map_err(err("recording the schema version"))?;
        tx.commit().map_err(err("committing a migration"))?;
        tracing::info!(path = %path.display(), from = done, to, "store schema migrated");
    }
    Ok(Some(found))
}

#[cfg(test)]
pub(super) fn set_user_version(path: &Path, version: i64) {
    let conn = Connection::open(path).expect("open for test");
    conn.pragma_update(None, "user_version", version)
        .expect("set user_version");
}
