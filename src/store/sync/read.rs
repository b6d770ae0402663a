//! The sync store's queries, on a read-only connection inside
//! `spawn_blocking` (see `store::read`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, ToSql};

use super::{
    hash_from_sql, Conflict, IdMapRow, OutboxOp, OutboxQuery, OutboxRow, OutboxState, SystemStatus,
};
use crate::store::{from_unix_ms, StoreError};

/// The last hash queued or confirmed per local id (see `Store::last_hashes`).
pub(super) fn last_hashes(
    conn: &Connection,
    path: &Path,
    system: &str,
    kind: &str,
) -> Result<HashMap<String, u64>, StoreError> {
    let query = || -> rusqlite::Result<HashMap<String, u64>> {
        let mut confirmed = conn.prepare_cached(
            "SELECT local_id, hash FROM idmap
             WHERE system = ?1 AND kind = ?2 AND closed_at IS NULL AND hash IS NOT NULL",
        )?;
        let mut hashes = confirmed
            .query_map([system, kind], |r| {
                Ok((r.get::<_, String>(0)?, hash_from_sql(r.get(1)?)))
            })?
            .collect::<rusqlite::Result<HashMap<_, _>>>()?;
        // Queued rows in id order: the newest of a key is the last one. The
        // outbox is scanned whole (no index on the random record keys: that
        // is what keeps an enqueue an append); a closed link stays out.
        let mut queued = conn.prepare_cached(
            "SELECT o.record_key, o.hash FROM outbox o
             WHERE o.system = ?1 AND o.kind = ?2 AND o.hash IS NOT NULL AND o.state != 'done'
               AND NOT EXISTS (SELECT 1 FROM idmap i
                               WHERE i.system = o.system AND i.kind = o.kind
                                 AND i.local_id = o.record_key AND i.closed_at IS NOT NULL)
             ORDER BY o.id",
        )?;
        let rows = queued.query_map([system, kind], |r| {
            Ok((r.get::<_, String>(0)?, hash_from_sql(r.get(1)?)))
        })?;
        for row in rows {
            let (key, hash) = row?;
            hashes.insert(key, hash);
        }
        Ok(hashes)
    };
    query().map_err(|e| StoreError::sqlite(path, "reading the last queued hashes", e))
}

/// The local ids of `system`'s closed links of `kind` (the system deleted
/// its copies).
pub(super) fn idmap_closed(
    conn: &Connection,
    path: &Path,
    system: &str,
    kind: &str,
) -> Result<Vec<String>, StoreError> {
    let query = || -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare_cached(
            "SELECT local_id FROM idmap WHERE system = ?1 AND kind = ?2 AND closed_at IS NOT NULL",
        )?;
        let rows = stmt.query_map([system, kind], |r| r.get::<_, String>(0))?;
        rows.collect()
    };
    query().map_err(|e| StoreError::sqlite(path, "reading the id-map's closed links", e))
}

/// Every overlay body, in id order.
pub(super) fn overlay_all(
    conn: &Connection,
    path: &Path,
) -> Result<Vec<(String, String)>, StoreError> {
    let query = || -> rusqlite::Result<Vec<(String, String)>> {
        let mut stmt = conn.prepare_cached("SELECT id, body FROM overlay ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    };
    query().map_err(|e| StoreError::sqlite(path, "reading the overlay", e))
}

/// The overlay body of record `id`.
pub(super) fn overlay_get(
    conn: &Connection,
    path: &Path,
    id: &str,
) -> Result<Option<String>, StoreError> {
    body_of(conn, path, BodyTable::Overlay, id)
}

/// The per-record JSON tables of the sync store.
#[derive(Clone, Copy)]
enum BodyTable {
    Overlay,
    Requisites,
}

/// The body of record `id` in `table`.
fn body_of(
    conn: &Connection,
    path: &Path,
    table: BodyTable,
    id: &str,
) -> Result<Option<String>, StoreError> {
    let (sql, what) = match table {
        BodyTable::Overlay => (
            "SELECT body FROM overlay WHERE id = ?1",
            "reading a record's overlay",
        ),
        BodyTable::Requisites => (
            "SELECT body FROM requisites WHERE id = ?1",
            "reading a record's requisites",
        ),
    };
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.query_row([id], |r| r.get(0)).optional())
        .map_err(|e| StoreError::sqlite(path, what, e))
}

/// The id-map row of `system`'s record `remote_id` of `kind`, open or closed.
pub(super) fn idmap_by_remote(
    conn: &Connection,
    path: &Path,
    system: &str,
    kind: &str,
    remote_id: &str,
) -> Result<Option<IdMapRow>, StoreError> {
    conn.prepare_cached(
        "SELECT kind, local_id, remote_id, remote_version, hash, closed_at FROM idmap
         WHERE system = ?1 AND kind = ?2 AND remote_id = ?3",
    )
    .and_then(|mut stmt| {
        stmt.query_row([system, kind, remote_id], idmap_row)
            .optional()
    })
    .map_err(|e| StoreError::sqlite(path, "reading the id-map by remote id", e))
}

/// The id-map row of local record `local_id` for `system` and `kind`.
pub(super) fn idmap_get(
    conn: &Connection,
    path: &Path,
    system: &str,
    kind: &str,
    local_id: &str,
) -> Result<Option<IdMapRow>, StoreError> {
    conn.prepare_cached(
        "SELECT kind, local_id, remote_id, remote_version, hash, closed_at FROM idmap
         WHERE system = ?1 AND kind = ?2 AND local_id = ?3",
    )
    .and_then(|mut stmt| {
        stmt.query_row([system, kind, local_id], idmap_row)
            .optional()
    })
    .map_err(|e| StoreError::sqlite(path, "reading the id-map by local id", e))
}

/// An id-map row of the columns `kind, local_id, remote_id, remote_version,
/// hash, closed_at`.
fn idmap_row(r: &Row<'_>) -> rusqlite::Result<IdMapRow> {
    Ok(IdMapRow {
        kind: r.get(0)?,
        local_id: r.get(1)?,
        remote_id: r.get(2)?,
        remote_version: r.get(3)?,
        hash: r.get::<_, Option<i64>>(4)?.map(hash_from_sql),
        closed_at: r.get::<_, Option<i64>>(5)?.map(from_unix_ms),
    })
}

/// The requisites body of record `id`.
pub(super) fn requisites_get(
    conn: &Connection,
    path: &Path,
    id: &str,
) -> Result<Option<String>, StoreError> {
    body_of(conn, path, BodyTable::Requisites, id)
}

/// Per system: pending rows, the oldest pending row's age at `now_ms`, dead
/// rows. One pass over the `outbox_due` index, plus the pending rows'
/// creation times.
pub(super) fn sync_status(
    conn: &Connection,
    path: &Path,
    now_ms: i64,
) -> Result<Vec<SystemStatus>, StoreError> {
    let query = || -> rusqlite::Result<Vec<SystemStatus>> {
        let mut stmt = conn.prepare_cached(
            "SELECT system,
                    sum(state = 'pending'),
                    min(CASE WHEN state = 'pending' THEN created_at END),
                    sum(state = 'dead')
             FROM outbox GROUP BY system ORDER BY system",
        )?;
        let rows = stmt.query_map([], |r| {
            let oldest: Option<i64> = r.get(2)?;
            Ok(SystemStatus {
                system: r.get(0)?,
                pending: count(r.get(1)?),
                oldest_pending_age: oldest
                    .map(|at| Duration::from_millis(count(now_ms.saturating_sub(at)))),
                dead: count(r.get(3)?),
            })
        })?;
        rows.collect()
    };
    query().map_err(|e| StoreError::sqlite(path, "counting the outbox", e))
}

/// A count or span that SQLite gives as i64 (never negative here but for
/// clock steps), as u64.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The outbox rows `query` selects (its limit already capped), in id order.
pub(super) fn outbox_page(
    conn: &Connection,
    path: &Path,
    query: &OutboxQuery,
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut conditions = Vec::with_capacity(3);
    let mut args: Vec<&dyn ToSql> = Vec::with_capacity(4);
    if let Some(system) = &query.system {
        args.push(system);
        conditions.push(format!("system = ?{}", args.len()));
    }
    let state = query.state.map(OutboxState::as_str);
    if let Some(state) = &state {
        args.push(state);
        conditions.push(format!("state = ?{}", args.len()));
    }
    if let Some(after) = &query.after {
        args.push(after);
        conditions.push(format!("id > ?{}", args.len()));
    }
    args.push(&query.limit);
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT id, system, kind, record_key, op, body, attempts, next_at, state, last_error, created_at
         FROM outbox{filter} ORDER BY id LIMIT ?{}",
        args.len()
    );
    let read = || -> rusqlite::Result<Vec<OutboxRow>> {
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(args.as_slice(), outbox_row)?;
        rows.collect()
    };
    read().map_err(|e| StoreError::sqlite(path, "reading the outbox", e))
}

pub(in crate::store) fn outbox_row(r: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    let op: String = r.get(4)?;
    let state: String = r.get(8)?;
    let attempts: i64 = r.get(6)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        system: r.get(1)?,
        kind: r.get(2)?,
        record_key: r.get(3)?,
        // The table's CHECKs allow only these values.
        op: OutboxOp::parse(&op).ok_or_else(|| bad_value(4, "op", &op))?,
        body: r.get(5)?,
        attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
        next_at: from_unix_ms(r.get(7)?),
        state: OutboxState::parse(&state).ok_or_else(|| bad_value(8, "state", &state))?,
        last_error: r.get(9)?,
        created_at: from_unix_ms(r.get(10)?),
    })
}

/// A column holding a value the schema's CHECK should have refused.
fn bad_value(col: usize, name: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        format!("unknown outbox {name} {value:?}").into(),
    )
}

/// Conflicts in id order, optionally of one system and from a time on.
pub(super) fn conflicts_page(
    conn: &Connection,
    path: &Path,
    system: Option<&str>,
    since_ms: Option<i64>,
    limit: u32,
) -> Result<Vec<Conflict>, StoreError> {
    // NULL parameters stand for "any": four fixed statements' worth of
    // plans are not worth it for an admin query.
    let read = || -> rusqlite::Result<Vec<Conflict>> {
        let mut stmt = conn.prepare_cached(
            "SELECT id, at, system, record_key, field, ours, theirs, resolution FROM conflicts
             WHERE (?1 IS NULL OR system = ?1) AND (?2 IS NULL OR at >= ?2)
             ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(rusqlite::params![system, since_ms, limit], |r| {
            Ok(Conflict {
                id: r.get(0)?,
                at: from_unix_ms(r.get(1)?),
                system: r.get(2)?,
                record_key: r.get(3)?,
                field: r.get(4)?,
                ours: r.get(5)?,
                theirs: r.get(6)?,
                resolution: r.get(7)?,
            })
        })?;
        rows.collect()
    };
    read().map_err(|e| StoreError::sqlite(path, "reading the conflicts", e))
}

/// At most `limit` id-map rows of `system` after (kind, local id) `after`,
/// in that order: one walk of the primary key.
pub(super) fn idmap_chunk(
    conn: &Connection,
    path: &Path,
    system: &str,
    after: Option<&(String, String)>,
    limit: u32,
) -> Result<Vec<IdMapRow>, StoreError> {
    let read = || -> rusqlite::Result<Vec<IdMapRow>> {
        let columns =
            "SELECT kind, local_id, remote_id, remote_version, hash, closed_at FROM idmap";
        let map = idmap_row;
        match after {
            None => {
                let mut stmt = conn.prepare_cached(&format!(
                    "{columns} WHERE system = ?1 ORDER BY kind, local_id LIMIT ?2"
                ))?;
                let rows = stmt.query_map(rusqlite::params![system, limit], map)?;
                rows.collect()
            }
            Some((kind, local_id)) => {
                let mut stmt = conn.prepare_cached(&format!(
                    "{columns} WHERE system = ?1 AND (kind, local_id) > (?2, ?3)
                     ORDER BY kind, local_id LIMIT ?4"
                ))?;
                let rows = stmt.query_map(rusqlite::params![system, kind, local_id, limit], map)?;
                rows.collect()
            }
        }
    };
    read().map_err(|e| StoreError::sqlite(path, "reading the id-map", e))
}
