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
    #[error("store at {} is damaged or not an SQLite database ({detail}); stop the gateway and move the file aside: the snapshot is rebuilt from the sources on start, the call journal in that file is lost", .path.display())]
    Corrupt { path: PathBuf, detail: String },

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

    /// A short label for logs and the "same failure as last time" check.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "open",
            StoreError::ReadOnly { .. } => "read_only",
            StoreError::DiskFull { .. } => "disk_full",
            StoreError::Busy { .. } => "busy",
            StoreError::Corrupt { .. } => "corrupt",
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
