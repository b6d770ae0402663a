//! The sync store's writes, on the writer thread.
//!
//! Outbox enqueues and inbox appends are group-committed like the
//! journal's appends: what waits in the channel when one arrives goes into
//! the same transaction (one fsync), up to [`GROUP_CAP`](super::GROUP_CAP)
//! commands or [`GROUP_ROWS`] outbox rows, and every caller in it gets the
//! commit's outcome. They cannot fail one by one (no constraint an
//! enqueue or an append could break: the id-map upsert touches no remote
//! id), so a failure is the file's (disk full, read-only) and is everyone's.
//! The other writes (overlay, requisites, retry, conflict) are a
//! transaction each.

use std::time::SystemTime;

use rusqlite::{params, OptionalExtension};

use super::{sync_batch, Reply, Writer};
use crate::store::sync::{IdMapLink, NewConflict, NewOutboxRow, RetryOutcome, SyncBatch};
use crate::store::{unix_ms, StoreError};

/// Most outbox rows gathered into one group: a group of bulk commands
/// (1,000 rows each) stays a transaction of tens of milliseconds, so an
/// inbox append waiting behind it is not held up for seconds.
const GROUP_ROWS: usize = 8_192;

/// A sync write of its own transaction.
pub(in crate::store) enum SyncWrite {
    OverlayPut {
        entries: Vec<(String, Option<String>)>,
        reply: Reply<()>,
    },
    RequisitesPut {
        entries: Vec<(String, String)>,
        reply: Reply<()>,
    },
    OutboxRetry {
        id: i64,
        reply: Reply<RetryOutcome>,
    },
    ConflictAdd {
        conflict: NewConflict,
        reply: Reply<i64>,
    },
    /// Write outcomes handed to their originating systems, by row id.
    OutcomesNotified {
        ids: Vec<i64>,
        reply: Reply<()>,
    },
    IdmapLink {
        link: IdMapLink,
        reply: Reply<()>,
    },
    IdmapClose {
        system: String,
        kind: String,
        local_id: String,
        reply: Reply<bool>,
    },
    /// Several writes of one inbound change (`store/sync/batch.rs`).
    Batch {
        batch: SyncBatch,
        reply: Reply<()>,
    },
    RequisitesDelete {
        ids: Vec<String>,
        reply: Reply<usize>,
    },
    /// The inbox task's writes (`writer/inbox.rs`).
    Inbox(super::InboxWrite),
    /// Payments and their events (`writer/payments.rs`).
    Payments(super::PaymentsWrite),
}

/// The enqueues and inbox appends of the next sync group commit.
#[derive(Default)]
pub(super) struct SyncGroup {
    enqueues: Vec<(Vec<NewOutboxRow>, Reply<Vec<i64>>)>,
    /// Outbox rows in `enqueues`.
    rows: usize,
    inbox: Vec<(String, String, Reply<i64>)>,
}

impl SyncGroup {
    pub(super) fn enqueue(&mut self, rows: Vec<NewOutboxRow>, reply: Reply<Vec<i64>>) {
        self.rows += rows.len();
        self.enqueues.push((rows, reply));
    }

    pub(super) fn inbox(&mut self, system: String, body: String, reply: Reply<i64>) {
        self.inbox.push((system, body, reply));
    }

    /// Commands gathered.
    pub(super) fn commands(&self) -> usize {
        self.enqueues.len() + self.inbox.len()
    }

    /// Holds enough outbox rows for one transaction.
    pub(super) fn is_full(&self) -> bool {
        self.rows >= GROUP_ROWS
    }
}

impl Writer {
    /// Commits the gathered enqueues and inbox appends in one transaction
    /// and answers each; returns how many commands it answered.
    pub(super) fn commit_sync_group(&mut self) -> usize {
        let group = std::mem::take(&mut self.sync_group);
        let n = group.commands();
        if n == 0 {
            return 0;
        }
        let SyncGroup {
            enqueues,
            rows,
            inbox,
        } = group;
        let now = unix_ms(SystemTime::now());
        let result = self.transact("queueing sync changes", |tx| {
            let mut ids: Vec<Vec<i64>> = Vec::with_capacity(enqueues.len());
            for (command, _) in &enqueues {
                ids.push(sync_batch::enqueue(tx, command, now)?);
            }
            let mut append = tx.prepare_cached(
                "INSERT INTO inbox (system, received_at, body, state) VALUES (?1, ?2, ?3, 'pending')",
            )?;
            let mut inbox_ids = Vec::with_capacity(inbox.len());
            for (system, body, _) in &inbox {
                append.execute(params![system, now, body])?;
                inbox_ids.push(tx.last_insert_rowid());
            }
            Ok((ids, inbox_ids))
        });
        match result {
            Ok((ids, inbox_ids)) => {
                self.metrics.outbox_ok.inc_by(rows as u64);
                self.metrics.inbox_ok.inc_by(inbox.len() as u64);
                for ((_, reply), ids) in enqueues.into_iter().zip(ids) {
                    let _ = reply.send(Ok(ids));
                }
                for ((_, _, reply), id) in inbox.into_iter().zip(inbox_ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(e) => {
                self.metrics.outbox_error.inc_by(rows as u64);
                self.metrics.inbox_error.inc_by(inbox.len() as u64);
                self.failures.failed("sync outbox and inbox", n, &e);
                for (_, reply) in enqueues {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, _, reply) in inbox {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        n
    }

    /// Runs one sync write in its own transaction and answers it.
    pub(super) fn sync_write(&mut self, write: SyncWrite) {
        match write {
            SyncWrite::OverlayPut { entries, reply } => {
                let result = self.logged("sync overlay", "writing the overlay", |tx| {
                    sync_batch::overlay_put(tx, &entries)
                });
                let _ = reply.send(result);
            }
            SyncWrite::RequisitesPut { entries, reply } => {
                let result = self.logged("sync requisites", "writing requisites", |tx| {
                    let mut put = tx.prepare_cached(
                        "INSERT INTO requisites (id, body) VALUES (?1, ?2)
                         ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                    )?;
                    for (id, body) in &entries {
                        put.execute(params![id, body])?;
                    }
                    Ok(())
                });
                let _ = reply.send(result);
            }
            SyncWrite::OutboxRetry { id, reply } => {
                let now = unix_ms(SystemTime::now());
                let result = self.logged("sync outbox retry", "retrying an outbox row", |tx| {
                    let row: Option<(String, Option<i64>)> = tx
                        .prepare_cached("SELECT state, superseded_by FROM outbox WHERE id = ?1")?
                        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    Ok(match row {
                        None => RetryOutcome::NotFound,
                        Some((state, Some(by))) if state == "dead" => {
                            RetryOutcome::Superseded { by }
                        }
                        Some((state, None)) if state == "dead" => {
                            tx.prepare_cached(
                                "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?2
                                 WHERE id = ?1",
                            )?
                            .execute(params![id, now])?;
                            RetryOutcome::Retried
                        }
                        Some(_) => RetryOutcome::NotDead,
                    })
                });
                let _ = reply.send(result);
            }
            SyncWrite::OutcomesNotified { ids, reply } => {
                let result = self.logged("sync outcomes", "marking outcomes handed on", |tx| {
                    crate::store::sync::outcomes_mark_notified(tx, &ids)
                });
                let _ = reply.send(result);
            }
            SyncWrite::ConflictAdd { conflict, reply } => {
                let now = unix_ms(SystemTime::now());
                let result = self.logged("sync conflict", "recording a conflict", |tx| {
                    sync_batch::conflict_add(tx, &conflict, now)
                });
                let _ = reply.send(result);
            }
            SyncWrite::IdmapLink { link, reply } => {
                let result = self.logged("sync id-map", "linking a record", |tx| {
                    sync_batch::idmap_link(tx, &link)
                });
                let _ = reply.send(result);
            }
            SyncWrite::IdmapClose {
                system,
                kind,
                local_id,
                reply,
            } => {
                let now = unix_ms(SystemTime::now());
                let result = self.logged("sync id-map", "closing a link", |tx| {
                    sync_batch::idmap_close(tx, &system, &kind, &local_id, now)
                });
                let _ = reply.send(result);
            }
            SyncWrite::Batch { batch, reply } => {
                let _ = reply.send(self.sync_batch(&batch));
            }
            SyncWrite::RequisitesDelete { ids, reply } => {
                let _ = reply.send(self.requisites_delete(&ids));
            }
            SyncWrite::Inbox(write) => self.inbox_write(write),
            SyncWrite::Payments(write) => self.payments_write(write),
        }
    }

    /// [`Writer::transact`], with a failure logged (once per state) as
    /// `what`.
    pub(super) fn logged<T>(
        &mut self,
        what: &'static str,
        op: &'static str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let result = self.transact(op, f);
        if let Err(e) = &result {
            self.failures.failed(what, 1, e);
        }
        result
    }
}
