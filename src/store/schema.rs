//! Opening connections, their pragmas, and the schema migrations.
//!
//! The schema version lives in `PRAGMA user_version`. Migration `n` (counted
//! from 1) takes a file from version `n - 1` to `n`; each runs in its own
//! transaction together with the version bump, so a crash mid-way leaves the
//! file at the last complete version. Append new migrations; never edit one
//! that has shipped.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::StoreError;

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
];

/// The schema version this build writes and understands.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a connection waits for a lock another process holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the writer found on opening, for the start-up log line.
pub(super) struct OpenInfo {
    pub schema_version: i64,
    pub migrated_from: Option<i64>,
    pub sources: i64,
    pub counterparties: i64,
    pub journal_last_id: i64,
}

/// Opens (creating if needed) the one read-write connection, sets its pragmas
/// and brings the schema up to date.
pub(super) fn open_writer(path: &Path) -> Result<(Connection, OpenInfo), StoreError> {
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

    let migrated_from = migrate(&mut conn, path)?;

    let (sources, counterparties): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(records), 0) FROM sources",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err("counting snapshot rows"))?;
    let journal_last_id: i64 = conn
        .query_row("SELECT coalesce(max(id), 0) FROM calls", [], |r| r.get(0))
        .map_err(err("reading the journal's last id"))?;
    Ok((
        conn,
        OpenInfo {
            schema_version: SCHEMA_VERSION,
            migrated_from,
            sources,
            counterparties,
            journal_last_id,
        },
    ))
}

/// Opens a read-only connection; the writer must have opened the file first
/// (it creates it and switches it to WAL).
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

/// Applies the migrations the file lacks. Returns the version it started
/// from when it migrated anything.
fn migrate(conn: &mut Connection, path: &Path) -> Result<Option<i64>, StoreError> {
    let err = |op| move |e| StoreError::sqlite(path, op, e);
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err("reading the schema version"))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("negative schema version {found}"),
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(None);
    }
    for (done, sql) in (found..).zip(MIGRATIONS.iter().skip(found as usize)) {
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
