//! What can go wrong in the store, each said with what to do about it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::ErrorCode;

/// A store operation that did not happen. A write that answers with any of
/// these was **not** committed (with the one exception of [`StoreError::WriterGone`],
/// where the writer died and the outcome is unknown).
///
/// Cheap to clone: one failed group commit answers every call in it with the
/// same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file or its folder could not be created or opened.
    #[error("cannot open store at {}: {cause}; check store.path and that the gateway's user may create and write files there", .path.display())]
    Open { path: PathBuf, cause: String },

    /// The file, its folder or the volume does not allow writing.
    #[error("store at {} is read-only ({detail}); make the file and its folder writable by the gateway's user, or change store.path", .path.display())]
    ReadOnly { path: PathBuf, detail: String },

    /// The volume is full (or the file hit SQLite's size limit).
    #[error("disk full writing store at {} ({detail}); free space on that volume or move store.path; this write was not saved", .path.display())]
    DiskFull { path: PathBuf, detail: String },

    /// Another process holds a lock on the file for longer than the busy timeout.
    #[error("store at {} is locked by another process ({detail}); is a second cti-gateway or an sqlite3 shell using the same store.path?", .path.display())]
    Busy { path: PathBuf, detail: String },

    /// The file is not an SQLite database or is damaged.
    #[error("store at {} is damaged or not an SQLite database ({detail}); {}", .path.display(), .role.if_damaged())]
    Corrupt {
        path: PathBuf,
        detail: String,
        /// What the file holds: what moving it aside costs.
        role: StoreRole,
    },

    /// The file is missing or empty (0 bytes) where something shows that a
    /// store was there: taken as a new store, it would lose what that store
    /// held without a word. `--new-store` lets it begin empty.
    #[error("store at {} {found}: a store was there, and starting would replace it with an empty one; {}", .path.display(), .role.if_missing())]
    Missing {
        path: PathBuf,
        /// What was found and what shows a store existed, e.g. "is missing
        /// while store.sqlite-wal is there".
        found: String,
        role: StoreRole,
    },

    /// Another process has the file open while a maintenance command needs
    /// it alone.
    #[error("store at {} is in use by another process (a running cti-gateway?); stop the gateway first, then run this command again", .path.display())]
    InUse { path: PathBuf },

    /// The file was written by a newer cti-gateway.
    #[error("store at {} has schema version {found}, this build knows versions up to {supported}; run the newer cti-gateway that wrote it, or point store.path to another file", .path.display())]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// An SQLite failure not covered above.
    #[error("store at {}: {op} failed: {source}; if it repeats, check the disk and the log lines before this one", .path.display())]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Arc<rusqlite::Error>,
    },

    /// The store's metrics could not be registered.
    #[error("cannot register the store's metrics: {detail}; open the store once per metrics registry (close it before opening it again)")]
    Metrics { detail: String },

    /// The writer thread could not be started.
    #[error("cannot start the store writer thread: {cause}; the machine may be out of threads or memory")]
    Spawn { cause: String },

    /// [`Store::close`](super::Store::close) was called: nothing more is read or written.
    #[error("the store is closed (the gateway is shutting down); nothing was read or saved")]
    Closed,

    /// The writer thread ended without answering: the outcome of this write is unknown.
    #[error("the store writer stopped without answering; this write may not have been saved; restart the gateway and look for an earlier error in the log")]
    WriterGone,

    /// A blocking read task failed (panicked or was cancelled).
    #[error("a store read task failed: {detail}; restart the gateway if this repeats")]
    ReadTask { detail: String },
}

/// What a store file holds, which decides what losing it costs and so what
/// the messages about a damaged or missing file advise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRole {
    /// The main store (`store.path`): the call journal, the records pushed
    /// through the API (their only copy) and the file source's snapshot.
    Main,
    /// A cache of one source's records in a file of its own (1C's snapshot,
    /// `<name>.onec.sqlite`): the source's next read rebuilds it.
    Cache {
        /// The source whose snapshot it holds (`onec`).
        source: String,
    },
    /// The sync store (`<name>.sync.sqlite`): the outbox of changes not yet
    /// sent to CRMs, the id links to CRM records, the records that exist
    /// only in a CRM, and the CRM-side details of records (requisites,
    /// overlay). Losing it loses the unsent changes and the links.
    Sync,
}

impl StoreRole {
    /// What to do about a damaged file of this role.
    fn if_damaged(&self) -> String {
        match self {
            StoreRole::Main => "this file holds the call journal, the records pushed through the API \
                 and the file's snapshot: stop the gateway, restore the file from a backup, or move \
                 the file aside (with its -wal and -shm files) and start once with `cti-gateway serve \
                 --new-store` to begin with an empty store (the file's snapshot is read again from \
                 the file; the journal and the pushed records are lost)"
                .to_owned(),
            StoreRole::Cache { source } => format!(
                "this file holds only the `{source}` source's snapshot, a cache of that source \
                 (no call journal, no pushed records): stop the gateway and delete it with its -wal \
                 and -shm files; it is rebuilt by the source's next read"
            ),
            StoreRole::Sync => "this file is the sync store: the outbox of changes not yet sent \
                 to CRMs, the id links to CRM records and the records kept only in a CRM (no call \
                 journal, no directory of 1C): stop the gateway, restore the file from a backup, \
                 or move the file aside (with its -wal and -shm files) and start once with \
                 `cti-gateway serve --new-store`; the unsent changes are lost, and each CRM's \
                 links must be rebuilt (relink) before anything is sent, or records are created \
                 twice"
                .to_owned(),
        }
    }

    /// What to do about a missing or empty file of this role.
    fn if_missing(&self) -> String {
        match self {
            StoreRole::Main => "it held the call journal, the records pushed through the API and \
                 the file's snapshot: restore the file from a backup, or start once with \
                 `cti-gateway serve --new-store` to begin with an empty store"
                .to_owned(),
            StoreRole::Cache { source } => format!(
                "it held only the `{source}` source's snapshot, a cache that the source's next \
                 read rebuilds: delete what is left of it, or start once with `cti-gateway serve \
                 --new-store` to begin with an empty one"
            ),
            StoreRole::Sync => {
                "it was the sync store: the outbox of changes not yet sent to CRMs, \
                 the id links to CRM records and the records kept only in a CRM: restore the file \
                 from a backup, or start once with `cti-gateway serve --new-store` to begin with \
                 an empty one (the unsent changes are lost, and each CRM's links must be rebuilt, \
                 relink, before anything is sent, or records are created twice)"
                    .to_owned()
            }
        }
    }
}

impl StoreError {
    /// Sorts an SQLite error by what the admin should do about it.
    pub(super) fn sqlite(path: &Path, op: &'static str, err: rusqlite::Error) -> StoreError {
        let path = path.to_path_buf();
        let detail = || err.to_string();
        match err.sqlite_error_code() {
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly {
                path,
                detail: detail(),
            },
            Some(ErrorCode::DiskFull) => StoreError::DiskFull {
                path,
                detail: detail(),
            },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy {
                path,
                detail: detail(),
            },
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
                path,
                detail: detail(),
                // The store that hit it puts its own role in (`in_role`).
                role: StoreRole::Main,
            },
            Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => StoreError::Open {
                path,
                cause: detail(),
            },
            _ => StoreError::Sqlite {
                path,
                op,
                source: Arc::new(err),
            },
        }
    }

    /// This error as the store with `role` reports it: the message about a
    /// damaged file says what that file holds. The store applies
    /// it to every error it hands out, so errors built without knowing the
    /// store (by [`StoreError::sqlite`]) say the right thing.
    pub(super) fn in_role(self, store_role: &StoreRole) -> StoreError {
        match self {
            StoreError::Corrupt { path, detail, .. } => StoreError::Corrupt {
                path,
                detail,
                role: store_role.clone(),
            },
            other => other,
        }
    }

    /// A short label for logs and the "same failure as last time" check.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "open",
            StoreError::ReadOnly { .. } => "read_only",
            StoreError::DiskFull { .. } => "disk_full",
            StoreError::Busy { .. } => "busy",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Missing { .. } => "missing",
            StoreError::InUse { .. } => "in_use",
            StoreError::NewerSchema { .. } => "newer_schema",
            StoreError::Sqlite { .. } => "sqlite",
            StoreError::Metrics { .. } => "metrics",
            StoreError::Spawn { .. } => "spawn",
            StoreError::Closed => "closed",
            StoreError::WriterGone => "writer_gone",
            StoreError::ReadTask { .. } => "read_task",
        }
    }
}
