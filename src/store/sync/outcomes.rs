//! What each write to a system that reports outcomes came to (issue 19:
//! the 1C writer's `created`/`exists`/`updated`/`failed`, with 1C's
//! `Ref_Key` and `Code`), kept by outbox row id: a confirmed row leaves the
//! outbox, its outcome stays. Written in the transaction that settles the
//! row ([`Settle::Outcome`](super::Settle)); `notify` stays set until the
//! record's originating system was told (`System::linked`), so that an
//! outcome committed just before a crash is handed on after the next start.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use rusqlite::{params, Connection, Row, ToSql};

use super::super::writer::SyncWrite;
use super::MAX_PAGE;
use crate::store::{from_unix_ms, Store, StoreError};

/// What a write of one record came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteOutcome {
    /// The system made the record.
    Created,
    /// The system had it already (found by its key): linked, not made.
    Exists,
    /// The system's copy was changed.
    Updated,
    /// The system refused the write for good: the row is dead.
    Failed,
}

impl WriteOutcome {
    /// As stored, shown and counted: `created`, `exists`, `updated`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::Created => "created",
            WriteOutcome::Exists => "exists",
            WriteOutcome::Updated => "updated",
            WriteOutcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<WriteOutcome> {
        match s {
            "created" => Some(WriteOutcome::Created),
            "exists" => Some(WriteOutcome::Exists),
            "updated" => Some(WriteOutcome::Updated),
            "failed" => Some(WriteOutcome::Failed),
            _ => None,
        }
    }
}

/// One outbox row's outcome, as stored and as the record's originating
/// system is handed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOutcome {
    /// The outbox row's id: outcomes are handed on in its order.
    pub outbox_id: i64,
    /// The system written to (`onec`).
    pub system: String,
    pub kind: String,
    /// The local record's key (`bitrix24:company:2919`).
    pub record_key: String,
    pub outcome: WriteOutcome,
    /// The record's id in `system` (1C's `Ref_Key`); none for a failure.
    pub remote_ref: Option<String>,
    /// Its code there (1C's `Code`), where the system reports one.
    pub remote_code: Option<String>,
    /// Why it failed (`failed`).
    pub message: Option<String>,
    /// When it was committed (set by the store).
    pub at: SystemTime,
}

impl RowOutcome {
    /// The system the record comes from, as its key names it: `bitrix24`
    /// of `bitrix24:company:2919`.
    pub fn origin(&self) -> &str {
        self.record_key
            .split(':')
            .next()
            .unwrap_or(&self.record_key)
    }
}

const COLUMNS: &str =
    "outbox_id, system, kind, record_key, outcome, remote_ref, remote_code, message, at";

fn outcome_row(r: &Row<'_>) -> rusqlite::Result<RowOutcome> {
    let outcome: String = r.get(4)?;
    Ok(RowOutcome {
        outbox_id: r.get(0)?,
        system: r.get(1)?,
        kind: r.get(2)?,
        record_key: r.get(3)?,
        // The table's CHECK allows only these values.
        outcome: WriteOutcome::parse(&outcome).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("outcome {outcome:?}").into(),
            )
        })?,
        remote_ref: r.get(5)?,
        remote_code: r.get(6)?,
        message: r.get(7)?,
        at: from_unix_ms(r.get(8)?),
    })
}

/// Writes `outcome` (replacing an earlier one of the same row: a dead row
/// retried and then confirmed), to be handed on.
pub(in crate::store) fn record(
    tx: &rusqlite::Transaction<'_>,
    outcome: &RowOutcome,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO outcomes
             (outbox_id, system, kind, record_key, outcome, remote_ref, remote_code, message, at, notify)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1)",
    )?
    .execute(params![
        outcome.outbox_id,
        outcome.system,
        outcome.kind,
        outcome.record_key,
        outcome.outcome.as_str(),
        outcome.remote_ref,
        outcome.remote_code,
        outcome.message,
        now_ms
    ])?;
    Ok(())
}

/// Marks `ids` handed on.
pub(in crate::store) fn notified(
    tx: &rusqlite::Transaction<'_>,
    ids: &[i64],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached("UPDATE outcomes SET notify = 0 WHERE outbox_id = ?1")?;
    for id in ids {
        stmt.execute([id])?;
    }
    Ok(())
}

fn read_page(
    conn: &Connection,
    path: &Path,
    sql: &str,
    args: &[&dyn ToSql],
) -> Result<Vec<RowOutcome>, StoreError> {
    let read = || -> rusqlite::Result<Vec<RowOutcome>> {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(args, outcome_row)?;
        rows.collect()
    };
    read().map_err(|e| StoreError::sqlite(path, "reading the write outcomes", e))
}

impl Store {
    /// The outcomes not yet handed to their records' originating systems,
    /// oldest row first, at most `limit`.
    pub async fn outcomes_to_notify(&self, limit: u32) -> Result<Vec<RowOutcome>, StoreError> {
        self.read(move |conn, path| {
            read_page(
                conn,
                path,
                &format!(
                    "SELECT {COLUMNS} FROM outcomes WHERE notify = 1 ORDER BY outbox_id LIMIT ?1"
                ),
                &[&limit],
            )
        })
        .await
    }

    /// Marks outcomes handed on (by outbox row id).
    pub async fn outcomes_notified(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.sync_write(|reply| SyncWrite::OutcomesNotified { ids, reply })
            .await
    }

    /// The outcomes of the rows `ids`, where there are some (the outbox
    /// listing shows each row's).
    pub async fn outcomes_of(&self, ids: Vec<i64>) -> Result<HashMap<i64, RowOutcome>, StoreError> {
        self.read(move |conn, path| {
            let read = || -> rusqlite::Result<HashMap<i64, RowOutcome>> {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM outcomes WHERE outbox_id = ?1"
                ))?;
                let mut found = HashMap::new();
                for id in ids {
                    let mut rows = stmt.query_map([id], outcome_row)?;
                    if let Some(row) = rows.next() {
                        found.insert(id, row?);
                    }
                }
                Ok(found)
            };
            read().map_err(|e| StoreError::sqlite(path, "reading the write outcomes", e))
        })
        .await
    }

    /// The outcomes of rows the system confirmed (gone from the outbox),
    /// in row order: of `system` if given, after row `after`, at most
    /// `limit` (never more than [`MAX_PAGE`]).
    pub async fn outcomes_done(
        &self,
        system: Option<String>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RowOutcome>, StoreError> {
        let limit = limit.min(MAX_PAGE);
        let after = after.unwrap_or(i64::MIN);
        self.read(move |conn, path| {
            let sql = format!(
                "SELECT {COLUMNS} FROM outcomes o
                 WHERE o.outbox_id > ?1 AND (?2 IS NULL OR o.system = ?2)
                   AND NOT EXISTS (SELECT 1 FROM outbox WHERE id = o.outbox_id)
                 ORDER BY o.outbox_id LIMIT ?3"
            );
            read_page(conn, path, &sql, &[&after, &system, &limit])
        })
        .await
    }
}
