//! The SERVIO snapshot file (`<name>.servio.sqlite`): SERVIO's records, as
//! every store's snapshot holds them, and the ledger of the files taken,
//! `servio_files`, so that a file is applied once whatever happens after
//! (re-drops, a file left in a folder 1C reads, kill -9). Its own migration
//! list and `PRAGMA application_id`, like the sync store's.

use rusqlite::{params, Connection, OptionalExtension};

use super::{Store, StoreError};

/// `PRAGMA application_id` of a SERVIO snapshot file ("ctiV").
pub(super) const SERVIO_APPLICATION_ID: i32 = 0x6374_6956;

/// Each entry is one migration; the schema's version is its position from 1.
pub(super) const SERVIO_MIGRATIONS: &[&str] = &[
    // 1: the snapshot tables as the main store's stand after its
    // migrations (loaded and saved by the same code), and the ledger.
    // `hash`: SHA-256 of the file's bytes, hex. `mtime`: unix ms.
    // `outcome`: applied | failed. `at`: unix ms when it was ledgered.
    concat!(
        "
    PRAGMA application_id = 1668573526;
",
        snapshot_tables_sql!(),
        "
    CREATE TABLE servio_files (
        hash    TEXT PRIMARY KEY NOT NULL,
        name    TEXT NOT NULL,
        size    INTEGER NOT NULL,
        mtime   INTEGER NOT NULL,
        mode    TEXT NOT NULL,
        records INTEGER NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('applied', 'failed')),
        at      INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX servio_files_name ON servio_files (name, size, mtime);
    "
    ),
    // 2: the files left in place (`take = leave`) whose bytes were taken
    // before under another name: known by name, size and mtime, so that a
    // restart does not hash them again (the ledger knows a file's bytes
    // under the name they first came with only). `hash`: the ledger row
    // whose bytes it holds. `at`: unix ms when it was found.
    "
    CREATE TABLE servio_left (
        name  TEXT NOT NULL,
        size  INTEGER NOT NULL,
        mtime INTEGER NOT NULL,
        hash  TEXT NOT NULL,
        at    INTEGER NOT NULL,
        PRIMARY KEY (name, size, mtime)
    ) WITHOUT ROWID;
    ",
];

/// One file in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// SHA-256 of the file's bytes, lowercase hex.
    pub hash: String,
    pub name: String,
    pub size: u64,
    /// Modification time, unix ms.
    pub mtime_ms: i64,
    /// `full` or `delta`.
    pub mode: String,
    /// Clients the file held (0 when it failed before they were counted).
    pub records: u64,
    /// `applied` or `failed`.
    pub outcome: String,
    /// When it was ledgered, unix ms.
    pub at_ms: i64,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerRow> {
    Ok(LedgerRow {
        hash: r.get(0)?,
        name: r.get(1)?,
        size: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
        mtime_ms: r.get(3)?,
        mode: r.get(4)?,
        records: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        outcome: r.get(6)?,
        at_ms: r.get(7)?,
    })
}

const COLUMNS: &str = "hash, name, size, mtime, mode, records, outcome, at";

pub(super) fn insert(tx: &rusqlite::Transaction<'_>, r: &LedgerRow) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO servio_files (hash, name, size, mtime, mode, records, outcome, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        r.hash,
        r.name,
        i64::try_from(r.size).unwrap_or(i64::MAX),
        r.mtime_ms,
        r.mode,
        i64::try_from(r.records).unwrap_or(i64::MAX),
        r.outcome,
        r.at_ms
    ])?;
    Ok(())
}

/// A file left in place that holds bytes the ledger has under another
/// name (`servio_left`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftRow {
    pub name: String,
    pub size: u64,
    /// Modification time, unix ms.
    pub mtime_ms: i64,
    /// The ledger's key of its bytes.
    pub hash: String,
    /// When it was found, unix ms.
    pub at_ms: i64,
}

pub(super) fn insert_left(tx: &rusqlite::Transaction<'_>, r: &LeftRow) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO servio_left (name, size, mtime, hash, at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        r.name,
        i64::try_from(r.size).unwrap_or(i64::MAX),
        r.mtime_ms,
        r.hash,
        r.at_ms
    ])?;
    Ok(())
}

fn by_hash(conn: &Connection, hash: &str) -> rusqlite::Result<Option<LedgerRow>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM servio_files WHERE hash = ?1"
    ))?
    .query_row([hash], row)
    .optional()
}

fn left_known(conn: &Connection, name: &str, size: u64, mtime_ms: i64) -> rusqlite::Result<bool> {
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM servio_files WHERE name = ?1 AND size = ?2 AND mtime = ?3)
             OR EXISTS (SELECT 1 FROM servio_left WHERE name = ?1 AND size = ?2 AND mtime = ?3)",
    )?
    .query_row(params![name, size, mtime_ms], |r| r.get(0))
}

impl Store {
    /// The ledger's row for a file's hash, if it was taken before.
    pub async fn servio_file(&self, hash: &str) -> Result<Option<LedgerRow>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |conn, path| {
            by_hash(conn, &hash)
                .map_err(|e| StoreError::sqlite(path, "reading the SERVIO ledger", e))
        })
        .await
    }

    /// Whether a file of this name, size and modification time was taken
    /// (the ledger) or found to be a duplicate (`servio_left`) before: a
    /// file left in place (`take = leave`) is known without being hashed
    /// again, across restarts.
    pub async fn servio_left_known(
        &self,
        name: &str,
        size: u64,
        mtime_ms: i64,
    ) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.read(move |conn, path| {
            left_known(conn, &name, size, mtime_ms)
                .map_err(|e| StoreError::sqlite(path, "reading the SERVIO ledger", e))
        })
        .await
    }

    /// Remembers a file left in place as holding bytes taken before;
    /// resolves once it is committed.
    pub async fn servio_left(&self, row: LeftRow) -> Result<(), StoreError> {
        self.request(|reply| super::writer::Command::ServioLeft { row, reply })
            .await
    }

    /// Writes a file's ledger row; resolves once it is committed.
    pub async fn servio_ledger(&self, row: LedgerRow) -> Result<(), StoreError> {
        self.request(|reply| super::writer::Command::ServioLedger { row, reply })
            .await
    }
}
