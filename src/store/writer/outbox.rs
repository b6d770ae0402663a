//! The sync runtime's outbox writes, on the writer thread: what became of
//! the rows a worker took (see `store::sync::outbox`), one transaction per
//! request the worker made.

use rusqlite::params;

use super::{Reply, Writer};
use crate::store::sync::{Ack, AckOutcome, LeaseRequest, LeaseSweep, Leased, Settle, Swept};
use crate::store::unix_ms;

/// An outbox write of the sync runtime, or of a poller (`writer/lease.rs`).
pub(in crate::store) enum OutboxWrite {
    Settle {
        settled: Vec<Settle>,
        reply: Reply<()>,
    },
    Lease {
        request: LeaseRequest,
        reply: Reply<Leased>,
    },
    Ack {
        system: String,
        acks: Vec<Ack>,
        now: std::time::SystemTime,
        reply: Reply<Vec<AckOutcome>>,
    },
    /// Leases that ran out ended, without a poll (`writer/lease.rs`).
    Sweep {
        request: LeaseSweep,
        reply: Reply<Swept>,
    },
    /// `system`'s pending rows queued before `created_before_ms` made dead
    /// with `error`; the reply is how many.
    Expire {
        system: String,
        created_before_ms: i64,
        error: String,
        reply: Reply<u64>,
    },
}

impl Writer {
    pub(super) fn outbox_write(&mut self, write: OutboxWrite) {
        match write {
            OutboxWrite::Settle { settled, reply } => {
                let result = self.transact("settling sent outbox rows", |tx| {
                    for settle in &settled {
                        settle_one(tx, settle)?;
                    }
                    Ok(())
                });
                if let Err(e) = &result {
                    self.failures.failed("sync outbox settle", settled.len(), e);
                }
                let _ = reply.send(result);
            }
            OutboxWrite::Lease { request, reply } => {
                let result = self.transact("leasing outbox rows to a poller", |tx| {
                    super::lease::lease(tx, &request)
                });
                if let Err(e) = &result {
                    self.failures.failed("sync outbox lease", 1, e);
                }
                let _ = reply.send(result);
            }
            OutboxWrite::Ack {
                system,
                acks,
                now,
                reply,
            } => {
                let result = self.transact("writing a poller's acks", |tx| {
                    super::lease::ack(tx, &system, &acks, now)
                });
                if let Err(e) = &result {
                    self.failures.failed("sync outbox ack", acks.len(), e);
                }
                let _ = reply.send(result);
            }
            OutboxWrite::Sweep { request, reply } => {
                let result = self.transact("ending a poller's leases that ran out", |tx| {
                    super::lease::sweep(tx, &request)
                });
                if let Err(e) = &result {
                    self.failures.failed("sync outbox lease sweep", 1, e);
                }
                let _ = reply.send(result);
            }
            OutboxWrite::Expire {
                system,
                created_before_ms,
                error,
                reply,
            } => {
                let result = self.transact("marking outbox rows past dead_after dead", |tx| {
                    let n = tx
                        .prepare_cached(
                            "UPDATE outbox SET state = 'dead', last_error = ?3
                             WHERE system = ?1 AND state = 'pending' AND created_at < ?2",
                        )?
                        .execute(params![system, created_before_ms, error])?;
                    Ok(n as u64)
                });
                if let Err(e) = &result {
                    self.failures.failed("sync outbox expire", 1, e);
                }
                let _ = reply.send(result);
            }
        }
    }
}

pub(super) fn settle_one(tx: &rusqlite::Transaction<'_>, settle: &Settle) -> rusqlite::Result<()> {
    match settle {
        Settle::Confirmed {
            id,
            system,
            kind,
            record_key,
            remote_id,
            remote_version,
        } => {
            // Unique both ways: a remote record linked to another local
            // record (found by `find_existing` under another id) is this
            // one's now, as `idmap_link` does.
            tx.prepare_cached(
                "DELETE FROM idmap WHERE system = ?1 AND kind = ?2 AND remote_id = ?3
                 AND local_id <> ?4",
            )?
            .execute(params![system, kind, remote_id, record_key])?;
            // The link takes the hash the row was queued with (an enqueue
            // writes no id-map row: see `Store::enqueue`); a later row of the
            // record still queued is newer, and the feed compares with that
            // (`Store::last_hashes`). A row queued before the outbox kept
            // hashes (NULL) leaves the link's as it is.
            tx.prepare_cached(
                "INSERT INTO idmap (system, kind, local_id, remote_id, remote_version, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, (SELECT hash FROM outbox WHERE id = ?6))
                 ON CONFLICT (system, kind, local_id) DO UPDATE SET
                     remote_id = excluded.remote_id,
                     remote_version = excluded.remote_version,
                     hash = COALESCE(excluded.hash, idmap.hash)",
            )?
            .execute(params![
                system,
                kind,
                record_key,
                remote_id,
                remote_version,
                id
            ])?;
            tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                .execute([id])?;
            // Dead rows of the record before this one: retrying one would
            // send an older state over the one the system now holds.
            tx.prepare_cached(
                "UPDATE outbox SET superseded_by = ?4
                 WHERE system = ?1 AND state = 'dead' AND record_key = ?2 AND kind = ?3 AND id < ?4",
            )?
            .execute(params![system, record_key, kind, id])?;
        }
        Settle::Failed {
            id,
            attempts,
            next_at,
            error,
            dead,
        } => {
            tx.prepare_cached(
                "UPDATE outbox SET attempts = ?2, next_at = ?3, last_error = ?4,
                     state = CASE WHEN ?5 THEN 'dead' ELSE 'pending' END
                 WHERE id = ?1 AND state = 'pending'",
            )?
            .execute(params![id, attempts, unix_ms(*next_at), error, dead])?;
        }
        Settle::Dropped { id } => {
            tx.prepare_cached("DELETE FROM outbox WHERE id = ?1 AND state = 'pending'")?
                .execute([id])?;
        }
        Settle::Outcome(outcome) => {
            crate::store::sync::outcome_record(tx, outcome, unix_ms(std::time::SystemTime::now()))?;
        }
    }
    Ok(())
}
