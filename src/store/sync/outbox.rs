//! What the sync runtime's workers read and write in the outbox: the rows a
//! worker may take next, the id-map links of the records it sends, and what
//! became of each row it took ([`Settle`]), written in one transaction per
//! request (SQL in `writer/outbox.rs`).
//!
//! A row leaves the outbox only in the transaction that writes what the
//! system confirmed into its id-map row, or when a later row of its record
//! replaced it before it was sent (coalescing, [`Settle::Dropped`]): a crash
//! at any moment leaves every change not yet confirmed pending.

use std::collections::HashMap;
use std::time::SystemTime;

use rusqlite::params_from_iter;

use super::super::writer::{Command, OutboxWrite};
use super::read::outbox_row;
use super::OutboxRow;
use crate::store::{Store, StoreError};

/// What became of an outbox row a worker took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// The system holds the row's change: the row is deleted and its
    /// record's id-map row gets the remote id, version and the hash the row
    /// was queued with, in the same transaction;
    /// dead rows of the same record before it are marked superseded by it
    /// (the retry endpoint then refuses them, naming it).
    Confirmed {
        id: i64,
        system: String,
        kind: String,
        record_key: String,
        remote_id: String,
        remote_version: Option<String>,
    },
    /// Not confirmed: pending again at `next_at` after `attempts` failures,
    /// or dead, with `error` as its `last_error` either way.
    Failed {
        id: i64,
        attempts: u32,
        next_at: SystemTime,
        error: String,
        dead: bool,
    },
    /// Replaced by a later row of its record before it was sent, or a
    /// `remove` of a record the system never held: deleted, nothing sent.
    Dropped { id: i64 },
    /// What a row's write came to, for a system that reports it (beside
    /// the row's `Confirmed` or `Failed`): kept by row id, to be handed to
    /// the record's originating system (`outcomes.rs`).
    Outcome(super::RowOutcome),
}

/// A record's link in the id-map, as a worker sends it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub remote_id: Option<String>,
    pub remote_version: Option<String>,
}

impl Store {
    /// The first `limit` pending rows of `system`, due or not, in id order:
    /// the window a worker picks the next rows from. Every pending row of a
    /// record before one in the window is in it too (same order), so a
    /// record whose first row waits for its retry holds its later rows back.
    pub async fn outbox_pending(
        &self,
        system: &str,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let system = system.to_owned();
        self.read(move |conn, path| {
            // `+system`, `+state`: walk the table in id order and stop at
            // `limit`, rather than the `outbox_due` index and a sort of
            // every pending row (100,000 behind a slow system).
            let read = || -> rusqlite::Result<Vec<OutboxRow>> {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, system, kind, record_key, op, body, attempts, next_at, state, last_error, created_at
                     FROM outbox WHERE +system = ?1 AND +state = 'pending' ORDER BY id LIMIT ?2",
                )?;
                let rows = stmt.query_map(rusqlite::params![system, limit], outbox_row)?;
                rows.collect()
            };
            read().map_err(|e| StoreError::sqlite(path, "reading the outbox's pending rows", e))
        })
        .await
    }

    /// The id-map links of `keys` (local ids) for `system` and `kind`: an
    /// open link with a remote id is an update, anything else a create.
    pub async fn outbox_links(
        &self,
        system: &str,
        kind: &str,
        keys: Vec<String>,
    ) -> Result<HashMap<String, Link>, StoreError> {
        let (system, kind) = (system.to_owned(), kind.to_owned());
        self.read(move |conn, path| {
            let read = || -> rusqlite::Result<HashMap<String, Link>> {
                let mut links = HashMap::with_capacity(keys.len());
                let mut stmt = conn.prepare_cached(
                    "SELECT remote_id, remote_version FROM idmap
                     WHERE system = ?1 AND kind = ?2 AND local_id = ?3 AND closed_at IS NULL",
                )?;
                for key in keys {
                    let mut rows = stmt.query(params_from_iter([&system, &kind, &key]))?;
                    if let Some(row) = rows.next()? {
                        let link = Link {
                            remote_id: row.get(0)?,
                            remote_version: row.get(1)?,
                        };
                        links.insert(key, link);
                    }
                }
                Ok(links)
            };
            read().map_err(|e| StoreError::sqlite(path, "reading the id-map's links", e))
        })
        .await
    }

    /// Writes what became of rows a worker took, in one transaction; on
    /// `Err` none of it is.
    pub async fn outbox_settle(&self, settled: Vec<Settle>) -> Result<(), StoreError> {
        if settled.is_empty() {
            return Ok(());
        }
        self.request(|reply| Command::Outbox(OutboxWrite::Settle { settled, reply }))
            .await
    }

    /// Marks `system`'s pending rows queued before `created_before` dead
    /// with `error` as their `last_error` (`[sync.<system>] dead_after`
    /// passed while they waited: through a block or the system's backoff
    /// no row fails of its own, so this is what ages them); how many.
    pub async fn outbox_expire(
        &self,
        system: &str,
        created_before: SystemTime,
        error: String,
    ) -> Result<u64, StoreError> {
        let system = system.to_owned();
        let created_before_ms = crate::store::unix_ms(created_before);
        self.request(|reply| {
            Command::Outbox(OutboxWrite::Expire {
                system,
                created_before_ms,
                error,
                reply,
            })
        })
        .await
    }
}
