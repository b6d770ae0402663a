//! The sync store's API: the outbox (changes not yet sent to a system),
//! the id-map (links between local records and their copies in each
//! system), the inbox (webhook bodies, committed before their 2xx), the
//! conflicts, and the requisites and overlay kept per record id.
//!
//! Only a store opened with [`OpenOptions::sync`](super::OpenOptions::sync)
//! has these tables; on another store every call here fails with an SQL
//! error naming the table. The SQL of the writes is in `writer/sync.rs`, of
//! the reads in `read.rs` here, the tables in `schema.rs`.
//!
//! [`Store::enqueue`] and [`Store::inbox_append`] are group-committed like
//! the journal's appends: the commands waiting in the writer's channel share
//! one transaction (one fsync); each caller is answered after COMMIT.

mod batch;
mod inbox;
mod lease;
mod outbox;
mod outcomes;
pub(super) mod payments;
mod read;
mod schema;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::writer::{Command, SyncWrite};
use super::{unix_ms, Store, StoreError};
pub use batch::{IdMapKey, SyncBatch};
pub use inbox::{InboxRow, SyncDepth};
pub use lease::{Ack, AckOutcome, AckResult, LeaseRequest, LeaseSweep, Leased, LeasedRow, Swept};
pub use outbox::{Link, Settle};
pub(in crate::store) use outcomes::{notified as outcomes_mark_notified, record as outcome_record};
pub use outcomes::{RowOutcome, WriteOutcome};
pub use payments::{
    NewPayment, PaymentCursor, PaymentEvent, PaymentsBatch, PaymentsCommitted, PostedPayment,
    StoredPayment, PAYMENT_KIND,
};
pub(in crate::store) use read::outbox_row;
pub(super) use schema::{SYNC_APPLICATION_ID, SYNC_MIGRATIONS};

/// The most rows one [`Store::outbox_page`] or [`Store::conflicts_page`]
/// answers, whatever `limit` asks.
pub const MAX_PAGE: u32 = 1_000;

/// Rows per chunk of [`Store::idmap_export`].
pub const EXPORT_CHUNK: u32 = 1_000;

/// What an outbox row asks a system to do with its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxOp {
    /// Create the record, or update the copy the id-map links to.
    Upsert,
    /// Mark the system's copy removed (modules never hard-delete).
    Remove,
}

impl OutboxOp {
    /// As stored and shown by the admin API: `upsert`, `remove`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxOp::Upsert => "upsert",
            OutboxOp::Remove => "remove",
        }
    }

    fn parse(s: &str) -> Option<OutboxOp> {
        match s {
            "upsert" => Some(OutboxOp::Upsert),
            "remove" => Some(OutboxOp::Remove),
            _ => None,
        }
    }
}

/// Where an outbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxState {
    /// Waiting to be sent (at `next_at` at the earliest).
    Pending,
    /// Given up on (see `last_error`); an admin may retry it.
    Dead,
    /// Confirmed by the system (the runtime may delete such rows instead).
    Done,
}

impl OutboxState {
    /// As stored and as the admin API's `state=` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Dead => "dead",
            OutboxState::Done => "done",
        }
    }

    /// `pending`, `dead` or `done`; `None` for anything else.
    pub fn parse(s: &str) -> Option<OutboxState> {
        match s {
            "pending" => Some(OutboxState::Pending),
            "dead" => Some(OutboxState::Dead),
            "done" => Some(OutboxState::Done),
            _ => None,
        }
    }
}

/// A change to queue for a system ([`Store::enqueue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxRow {
    /// The system it is for (`bitrix24`).
    pub system: String,
    /// The kind of record in that system (`company`, `contact`).
    pub kind: String,
    /// The local record's id: the id-map's `local_id`.
    pub record_key: String,
    pub op: OutboxOp,
    /// What to send, as JSON.
    pub body: String,
    /// The hash of the synced fields of this version: kept with the row; the
    /// id-map row of (system, kind, record_key) takes it when the system
    /// confirms the row.
    pub hash: u64,
}

/// An outbox row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Grows with every enqueue: the order of a record's changes.
    pub id: i64,
    pub system: String,
    pub kind: String,
    pub record_key: String,
    pub op: OutboxOp,
    pub body: String,
    /// Failed sends so far.
    pub attempts: u32,
    /// Not sent before this.
    pub next_at: SystemTime,
    pub state: OutboxState,
    /// Why the last send failed.
    pub last_error: Option<String>,
    pub created_at: SystemTime,
}

/// Which outbox rows [`Store::outbox_page`] reads: in id order, those after
/// `after`, at most `limit` (never more than [`MAX_PAGE`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxQuery {
    /// Only this system's rows.
    pub system: Option<String>,
    /// Only rows in this state.
    pub state: Option<OutboxState>,
    /// Only rows with a larger id (the last id of the previous page).
    pub after: Option<i64>,
    pub limit: u32,
}

/// What [`Store::outbox_retry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The dead row is pending again: attempts 0, due now.
    Retried,
    /// No row has that id.
    NotFound,
    /// The row is not dead (pending or done): nothing changed.
    NotDead,
    /// The row is dead, and row `by`, a later change of its record, was
    /// confirmed by the system since: sending this one would put an older
    /// state over it. Nothing changed.
    Superseded { by: i64 },
}

/// One system's outbox, as [`Store::sync_status`] counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemStatus {
    pub system: String,
    /// Rows waiting to be sent.
    pub pending: u64,
    /// How long the oldest of them has waited; `None` when none waits.
    pub oldest_pending_age: Option<Duration>,
    /// Rows given up on.
    pub dead: u64,
}

/// A disagreement to record ([`Store::conflict_add`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConflict {
    pub system: String,
    /// The local record's id.
    pub record_key: String,
    /// The field the sides disagree on (`inn`), or what happened (`deleted`).
    pub field: String,
    /// Our value, if any.
    pub ours: Option<String>,
    /// The system's value, if any.
    pub theirs: Option<String>,
    /// What was done (`kept_ours`, `sent_ours_back`, `link_closed`...).
    pub resolution: String,
}

/// A conflict as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub id: i64,
    /// When it was recorded (millisecond precision).
    pub at: SystemTime,
    pub system: String,
    pub record_key: String,
    pub field: String,
    pub ours: Option<String>,
    pub theirs: Option<String>,
    pub resolution: String,
}

/// Which conflicts [`Store::conflicts_page`] reads: in id order (the order
/// they were recorded), from `since` on, at most `limit` (never more than
/// [`MAX_PAGE`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictQuery {
    /// Only this system's conflicts.
    pub system: Option<String>,
    /// Only those recorded at this time or later.
    pub since: Option<SystemTime>,
    pub limit: u32,
}

/// An id-map row, as [`Store::idmap_export`] hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapRow {
    pub kind: String,
    pub local_id: String,
    /// `None` until the system confirmed a create.
    pub remote_id: Option<String>,
    pub remote_version: Option<String>,
    /// What was last queued or confirmed; `None`: never.
    pub hash: Option<u64>,
    /// When the system's copy was deleted (the link is closed).
    pub closed_at: Option<SystemTime>,
}

/// A link to make ([`Store::idmap_link`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapLink {
    pub system: String,
    pub kind: String,
    pub local_id: String,
    pub remote_id: String,
    /// The new hash of the link; `None` keeps the row's.
    pub hash: Option<u64>,
}

impl Store {
    /// Queues `rows` (1..n), each with its hash, in one transaction that
    /// only appends: the id-map is written when a system confirms a row, so
    /// a bulk enqueue never rewrites pages scattered by the random local
    /// ids. The change feed compares the next change with the newest queued
    /// hash ([`Store::last_hashes`]), and a reconcile after a crash finds
    /// what never was queued. Resolves with the rows' ids, in order, once
    /// committed; on `Err` nothing of it is. Commands waiting together share one transaction (group commit).
    /// Dropping the future once sent does not cancel the write.
    pub async fn enqueue(&self, rows: Vec<NewOutboxRow>) -> Result<Vec<i64>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.request(|reply| Command::Enqueue { rows, reply }).await
    }

    /// Commits a webhook `body` from `system` to the inbox (group commit);
    /// resolves with its id once committed.
    pub async fn inbox_append(&self, system: &str, body: String) -> Result<i64, StoreError> {
        let system = system.to_owned();
        self.request(|reply| Command::InboxAppend {
            system,
            body,
            reply,
        })
        .await
    }

    /// The last hash queued or confirmed for each of `system`'s records of
    /// `kind`, by local id: the newest outbox row's (pending or dead), else
    /// the id-map's. What the reconcile compares each record with. Closed
    /// links (the system deleted its copy) and records never queued are left
    /// out.
    pub async fn last_hashes(
        &self,
        system: &str,
        kind: &str,
    ) -> Result<HashMap<String, u64>, StoreError> {
        let (system, kind) = (system.to_owned(), kind.to_owned());
        self.read(move |conn, path| read::last_hashes(conn, path, &system, &kind))
            .await
    }

    /// The local ids of `system`'s closed links of `kind`: records that
    /// system deleted, which are not to be sent to it again.
    pub async fn idmap_closed(&self, system: &str, kind: &str) -> Result<Vec<String>, StoreError> {
        let (system, kind) = (system.to_owned(), kind.to_owned());
        self.read(move |conn, path| read::idmap_closed(conn, path, &system, &kind))
            .await
    }

    /// Writes overlay bodies (JSON) by record id; `None` deletes the id's.
    /// One transaction.
    pub async fn overlay_put(
        &self,
        entries: Vec<(String, Option<String>)>,
    ) -> Result<(), StoreError> {
        self.sync_write(|reply| SyncWrite::OverlayPut { entries, reply })
            .await
    }

    /// Every overlay body, by record id, in id order.
    pub async fn overlay_all(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|conn, path| read::overlay_all(conn, path)).await
    }

    /// The overlay body (JSON) of record `id`, if any.
    pub async fn overlay_get(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn, path| read::overlay_get(conn, path, &id))
            .await
    }

    /// The id-map row linking `system`'s record `remote_id` of `kind`, open
    /// or closed (see [`IdMapRow::closed_at`]).
    pub async fn idmap_by_remote(
        &self,
        system: &str,
        kind: &str,
        remote_id: &str,
    ) -> Result<Option<IdMapRow>, StoreError> {
        let (system, kind, remote_id) = (system.to_owned(), kind.to_owned(), remote_id.to_owned());
        self.read(move |conn, path| read::idmap_by_remote(conn, path, &system, &kind, &remote_id))
            .await
    }

    /// The id-map row of local record `local_id` for `system` and `kind`.
    pub async fn idmap_get(
        &self,
        system: &str,
        kind: &str,
        local_id: &str,
    ) -> Result<Option<IdMapRow>, StoreError> {
        let (system, kind, local_id) = (system.to_owned(), kind.to_owned(), local_id.to_owned());
        self.read(move |conn, path| read::idmap_get(conn, path, &system, &kind, &local_id))
            .await
    }

    /// Links local record `local_id` with `system`'s record `remote_id` (of
    /// `kind`), open: a closed link is opened again. `hash`, when given,
    /// becomes the link's hash (what both sides now hold); `None` keeps the
    /// one it has. A link of `remote_id` to another local record is taken
    /// away in the same transaction (the id-map is unique both ways: the
    /// system's record is one client, now this one).
    pub async fn idmap_link(&self, link: IdMapLink) -> Result<(), StoreError> {
        self.sync_write(|reply| SyncWrite::IdmapLink { link, reply })
            .await
    }

    /// Closes the link of local record `local_id` for `system` and `kind`
    /// (the system deleted its copy): the row stays, with `closed_at` now.
    /// Resolves with whether an open link was closed.
    pub async fn idmap_close(
        &self,
        system: &str,
        kind: &str,
        local_id: &str,
    ) -> Result<bool, StoreError> {
        let (system, kind, local_id) = (system.to_owned(), kind.to_owned(), local_id.to_owned());
        self.sync_write(|reply| SyncWrite::IdmapClose {
            system,
            kind,
            local_id,
            reply,
        })
        .await
    }

    /// Writes requisites bodies (JSON) by record id, replacing what was
    /// there. One transaction.
    pub async fn requisites_put(&self, entries: Vec<(String, String)>) -> Result<(), StoreError> {
        self.sync_write(|reply| SyncWrite::RequisitesPut { entries, reply })
            .await
    }

    /// The requisites body of record `id`, if any.
    pub async fn requisites_get(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn, path| read::requisites_get(conn, path, &id))
            .await
    }

    /// Per system with outbox rows, in system order: rows pending, the age
    /// of the oldest pending one, rows dead. A system with no rows is not
    /// listed (the registry of systems knows it).
    pub async fn sync_status(&self) -> Result<Vec<SystemStatus>, StoreError> {
        let now_ms = unix_ms(SystemTime::now());
        self.read(move |conn, path| read::sync_status(conn, path, now_ms))
            .await
    }

    /// The outbox rows `query` selects, in id order.
    pub async fn outbox_page(&self, query: OutboxQuery) -> Result<Vec<OutboxRow>, StoreError> {
        let query = OutboxQuery {
            limit: query.limit.min(MAX_PAGE),
            ..query
        };
        self.read(move |conn, path| read::outbox_page(conn, path, &query))
            .await
    }

    /// Makes dead row `id` pending again, with attempts 0 and due now
    /// (`last_error` stays, as the reason it died); a row that is not dead
    /// is left as it is.
    pub async fn outbox_retry(&self, id: i64) -> Result<RetryOutcome, StoreError> {
        self.sync_write(|reply| SyncWrite::OutboxRetry { id, reply })
            .await
    }

    /// The conflicts `query` selects, in the order they were recorded.
    pub async fn conflicts_page(&self, query: ConflictQuery) -> Result<Vec<Conflict>, StoreError> {
        let limit = query.limit.min(MAX_PAGE);
        let since_ms = query.since.map(unix_ms);
        let system = query.system;
        self.read(move |conn, path| {
            read::conflicts_page(conn, path, system.as_deref(), since_ms, limit)
        })
        .await
    }

    /// Records a conflict, at now; resolves with its id once committed.
    pub async fn conflict_add(&self, conflict: NewConflict) -> Result<i64, StoreError> {
        self.sync_write(|reply| SyncWrite::ConflictAdd { conflict, reply })
            .await
    }

    /// Hands `system`'s id-map rows to `sink` in chunks of [`EXPORT_CHUNK`],
    /// in (kind, local id) order; resolves with the rows handed over. Each
    /// chunk is its own short read, so a slow reader of the export holds no
    /// read transaction open (which would keep the WAL from being
    /// checkpointed); rows changed during the export appear as they were
    /// when their chunk was read. Stops early, without an error, when the
    /// sink's receiver is gone.
    pub async fn idmap_export(
        &self,
        system: &str,
        sink: mpsc::Sender<Vec<IdMapRow>>,
    ) -> Result<u64, StoreError> {
        let mut after: Option<(String, String)> = None;
        let mut sent = 0u64;
        loop {
            let (system, from) = (system.to_owned(), after.take());
            let chunk = self
                .read(move |conn, path| {
                    read::idmap_chunk(conn, path, &system, from.as_ref(), EXPORT_CHUNK)
                })
                .await?;
            let Some(last) = chunk.last() else {
                break;
            };
            after = Some((last.kind.clone(), last.local_id.clone()));
            let n = chunk.len();
            if sink.send(chunk).await.is_err() {
                break;
            }
            sent += n as u64;
            if n < EXPORT_CHUNK as usize {
                break;
            }
        }
        Ok(sent)
    }

    /// Sends one single-transaction sync write to the writer.
    pub(super) async fn sync_write<T>(
        &self,
        write: impl FnOnce(super::writer::Reply<T>) -> SyncWrite,
    ) -> Result<T, StoreError> {
        self.request(|reply| Command::Sync(write(reply))).await
    }

    /// Whether this store holds the sync tables (opened with
    /// [`OpenOptions::sync`](super::OpenOptions::sync)).
    pub fn is_sync(&self) -> bool {
        self.inner.role == super::StoreRole::Sync
    }
}

/// A hash as SQLite stores it: the i64 of the same bits.
pub(in crate::store) fn hash_to_sql(hash: u64) -> i64 {
    hash as i64
}

/// A stored hash back to the u64 it was.
fn hash_from_sql(stored: i64) -> u64 {
    stored as u64
}
