//! The inbox's reads and writes for the task that applies it (issue 18
//! item 7): its pending rows in id order, a row deleted once applied or
//! set aside as `failed`, and the depths the webhook endpoint checks
//! against `[sync] max_pending`. Appends are `Store::inbox_append`'s
//! (group-committed with the outbox's enqueues).

use std::path::Path;
use std::time::SystemTime;

use rusqlite::Connection;

use super::super::writer::InboxWrite;
use crate::store::{from_unix_ms, Store, StoreError};

/// A webhook body as the inbox holds it, waiting to be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    pub id: i64,
    pub system: String,
    pub received_at: SystemTime,
    /// As `Store::inbox_append` was given it.
    pub body: String,
}

/// How much `system` has waiting: rows pending in its inbox and its
/// outbox, and the inbox rows set aside as failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncDepth {
    pub inbox: u64,
    pub outbox: u64,
    pub inbox_failed: u64,
}

impl Store {
    /// `system`'s pending inbox rows after id `after`, in id order (the
    /// order they were received), at most `limit`.
    pub async fn inbox_pending(
        &self,
        system: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<InboxRow>, StoreError> {
        let system = system.to_owned();
        self.read(move |conn, path| pending(conn, path, &system, after, limit))
            .await
    }

    /// The pending rows of `system`'s inbox and outbox, and its failed
    /// inbox rows (counts over their indexes).
    pub async fn sync_depth(&self, system: &str) -> Result<SyncDepth, StoreError> {
        let system = system.to_owned();
        self.read(move |conn, path| depth(conn, path, &system))
            .await
    }

    /// Deletes inbox row `id` (applied); resolves with whether it was there.
    pub async fn inbox_delete(&self, id: i64) -> Result<bool, StoreError> {
        self.sync_write(|reply| InboxWrite::Delete { id, reply }.into())
            .await
    }

    /// Deletes the inbox rows `ids` (applied) in one transaction; resolves
    /// with how many were there.
    pub async fn inbox_delete_many(&self, ids: Vec<i64>) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.sync_write(|reply| InboxWrite::DeleteMany { ids, reply }.into())
            .await
    }

    /// Sets inbox row `id` aside as `failed` (kept for an operator, never
    /// applied again by the task); resolves with whether it was there.
    pub async fn inbox_fail(&self, id: i64) -> Result<bool, StoreError> {
        self.sync_write(|reply| InboxWrite::Fail { id, reply }.into())
            .await
    }
}

fn pending(
    conn: &Connection,
    path: &Path,
    system: &str,
    after: i64,
    limit: u32,
) -> Result<Vec<InboxRow>, StoreError> {
    let query = || -> rusqlite::Result<Vec<InboxRow>> {
        let mut stmt = conn.prepare_cached(
            "SELECT id, system, received_at, body FROM inbox
             WHERE system = ?1 AND state = 'pending' AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(rusqlite::params![system, after, limit], |r| {
            Ok(InboxRow {
                id: r.get(0)?,
                system: r.get(1)?,
                received_at: from_unix_ms(r.get(2)?),
                body: r.get(3)?,
            })
        })?;
        rows.collect()
    };
    query().map_err(|e| StoreError::sqlite(path, "reading the inbox", e))
}

fn depth(conn: &Connection, path: &Path, system: &str) -> Result<SyncDepth, StoreError> {
    let query = || -> rusqlite::Result<SyncDepth> {
        let inbox: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM inbox WHERE system = ?1 AND state = 'pending'")?
            .query_row([system], |r| r.get(0))?;
        let inbox_failed: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM inbox WHERE system = ?1 AND state = 'failed'")?
            .query_row([system], |r| r.get(0))?;
        let outbox: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM outbox WHERE system = ?1 AND state = 'pending'")?
            .query_row([system], |r| r.get(0))?;
        Ok(SyncDepth {
            inbox: inbox.max(0) as u64,
            outbox: outbox.max(0) as u64,
            inbox_failed: inbox_failed.max(0) as u64,
        })
    };
    query().map_err(|e| StoreError::sqlite(path, "counting the inbox and outbox", e))
}
