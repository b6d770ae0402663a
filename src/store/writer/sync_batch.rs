//! The writes of `store/sync/batch.rs`, on the writer thread: a
//! [`SyncBatch`] in one transaction, and the removal of requisites.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use rusqlite::{params, Transaction};

use super::{add_to_source_count, Writer};
use crate::store::snapshot;
use crate::store::sync::{hash_to_sql, IdMapLink, NewConflict, NewOutboxRow, SyncBatch};
use crate::store::{unix_ms, StoreError};

impl Writer {
    /// Commits `batch` in one transaction (see [`SyncBatch`] for the order).
    pub(super) fn sync_batch(&mut self, batch: &SyncBatch) -> Result<(), StoreError> {
        let now = unix_ms(SystemTime::now());
        let result = self.transact("writing an inbound change", |tx| {
            for key in &batch.unlinks {
                tx.prepare_cached(
                    "DELETE FROM idmap WHERE system = ?1 AND kind = ?2 AND local_id = ?3",
                )?
                .execute(params![key.system, key.kind, key.local_id])?;
            }
            for key in &batch.closes {
                idmap_close(tx, &key.system, &key.kind, &key.local_id, now)?;
            }
            for link in &batch.links {
                idmap_link(tx, link)?;
            }
            if !batch.outbox.is_empty() {
                enqueue(tx, &batch.outbox, now)?;
            }
            for conflict in &batch.conflicts {
                conflict_add(tx, conflict, now)?;
            }
            if !batch.overlays.is_empty() {
                overlay_put(tx, &batch.overlays)?;
            }
            let mut removed = false;
            for (source, id) in &batch.snapshot_removals {
                let n = snapshot::delete_row(tx, source, id)?;
                if n > 0 {
                    add_to_source_count(tx, source, -(n as i64))?;
                    removed = true;
                }
            }
            Ok(removed)
        });
        match result {
            Ok(removed) => {
                if removed {
                    // Snapshot plans computed before this commit are stale.
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                self.metrics.outbox_ok.inc_by(batch.outbox.len() as u64);
                Ok(())
            }
            Err(e) => {
                self.metrics.outbox_error.inc_by(batch.outbox.len() as u64);
                self.failures.failed("sync inbound change", 1, &e);
                Err(e)
            }
        }
    }

    /// Deletes the requisites of `ids`; gives how many there were.
    pub(super) fn requisites_delete(&mut self, ids: &[String]) -> Result<usize, StoreError> {
        let result = self.transact("deleting requisites", |tx| {
            let mut delete = tx.prepare_cached("DELETE FROM requisites WHERE id = ?1")?;
            let mut n = 0;
            for id in ids {
                n += delete.execute([id])?;
            }
            Ok(n)
        });
        if let Err(e) = &result {
            self.failures.failed("sync requisites", 1, e);
        }
        result
    }
}

/// Queues `rows`, each with its hash (see `Store::enqueue`: only appends;
/// the id-map takes the hash when the system confirms); gives the rows' ids.
pub(super) fn enqueue(
    tx: &Transaction<'_>,
    rows: &[NewOutboxRow],
    now: i64,
) -> rusqlite::Result<Vec<i64>> {
    let mut outbox = tx.prepare_cached(
        "INSERT INTO outbox (system, kind, record_key, op, body, attempts, next_at, state, created_at, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, 'pending', ?6, ?7)",
    )?;
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        outbox.execute(params![
            row.system,
            row.kind,
            row.record_key,
            row.op.as_str(),
            row.body,
            now,
            hash_to_sql(row.hash)
        ])?;
        ids.push(tx.last_insert_rowid());
    }
    Ok(ids)
}

/// Records a conflict at `now`; gives its id.
pub(super) fn conflict_add(
    tx: &Transaction<'_>,
    conflict: &NewConflict,
    now: i64,
) -> rusqlite::Result<i64> {
    tx.prepare_cached(
        "INSERT INTO conflicts (at, system, record_key, field, ours, theirs, resolution)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        now,
        conflict.system,
        conflict.record_key,
        conflict.field,
        conflict.ours,
        conflict.theirs,
        conflict.resolution
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Links a local record with a remote one (unique both ways: the remote
/// record leaves any other link first).
pub(super) fn idmap_link(tx: &Transaction<'_>, link: &IdMapLink) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "DELETE FROM idmap WHERE system = ?1 AND kind = ?2 AND remote_id = ?3
         AND local_id <> ?4",
    )?
    .execute(params![
        link.system,
        link.kind,
        link.remote_id,
        link.local_id
    ])?;
    tx.prepare_cached(
        "INSERT INTO idmap (system, kind, local_id, remote_id, hash)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (system, kind, local_id) DO UPDATE SET
             remote_id = excluded.remote_id,
             hash = COALESCE(excluded.hash, idmap.hash),
             closed_at = NULL",
    )?
    .execute(params![
        link.system,
        link.kind,
        link.local_id,
        link.remote_id,
        link.hash.map(hash_to_sql)
    ])?;
    Ok(())
}

/// Closes an open link; gives whether one was.
pub(super) fn idmap_close(
    tx: &Transaction<'_>,
    system: &str,
    kind: &str,
    local_id: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let closed = tx
        .prepare_cached(
            "UPDATE idmap SET closed_at = ?4
             WHERE system = ?1 AND kind = ?2 AND local_id = ?3 AND closed_at IS NULL",
        )?
        .execute(params![system, kind, local_id, now])?;
    Ok(closed > 0)
}

/// Writes overlay bodies by id; `None` deletes the id's.
pub(super) fn overlay_put(
    tx: &Transaction<'_>,
    entries: &[(String, Option<String>)],
) -> rusqlite::Result<()> {
    let mut put = tx.prepare_cached(
        "INSERT INTO overlay (id, body) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET body = excluded.body",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM overlay WHERE id = ?1")?;
    for (id, body) in entries {
        match body {
            Some(body) => put.execute(params![id, body])?,
            None => delete.execute([id])?,
        };
    }
    Ok(())
}
