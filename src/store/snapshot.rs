//! Snapshot rows: how a counterparty becomes a row, and how a source's rows
//! are brought to a new set of records by changing only what differs.
//!
//! A full refresh from 1C usually changes a handful of a million records.
//! Rewriting every row would push the whole table (hundreds of MiB) through
//! the WAL and a checkpoint each time; instead the stored rows and the new
//! records are walked together in id order and only inserts, changed bodies
//! and deletes are written. The walk (a scan and an encode per record, the
//! expensive part) normally runs on a read connection before the writer is
//! asked (see [`plan`]); the writer then only applies the plan, unless the
//! snapshot changed in between, in which case it walks again itself.

use std::path::Path;
use std::sync::Arc;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection};

use super::{read, StoreError};
use crate::directory::{Counterparty, Entry};

/// A record the snapshot can hold: its id and its JSON row body. The
/// directory's entries carry their JSON already, so a snapshot of a
/// million entries copies bytes instead of serializing records again.
pub trait SnapshotRecord: Send + Sync {
    fn id(&self) -> &str;
    fn encode(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error>;
}

impl SnapshotRecord for Counterparty {
    fn id(&self) -> &str {
        &self.id
    }

    fn encode(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(buf, self)
    }
}

impl SnapshotRecord for Entry {
    fn id(&self) -> &str {
        Entry::id(self)
    }

    fn encode(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        buf.extend_from_slice(self.json().as_bytes());
        Ok(())
    }
}

impl<T: SnapshotRecord + ?Sized> SnapshotRecord for Arc<T> {
    fn id(&self) -> &str {
        (**self).id()
    }

    fn encode(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        (**self).encode(buf)
    }
}

/// The records of a replace, whatever holds them.
pub(super) trait RecordSet: Send + Sync {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> &dyn SnapshotRecord;
}

/// A shared slice of records as a [`RecordSet`].
pub(super) struct Held<R>(pub Arc<[R]>);

impl<R: SnapshotRecord> RecordSet for Held<R> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, i: usize) -> &dyn SnapshotRecord {
        &self.0[i]
    }
}

/// A change to one row; indexes point into the records given.
pub(super) enum RowOp {
    Insert(usize),
    Update(usize),
    Delete(String),
}

/// What it takes to bring a source's rows to a set of records.
pub(super) struct Diff {
    /// In id order.
    pub ops: Vec<RowOp>,
    pub unchanged: usize,
    /// Distinct ids among the records: the source's row count afterwards.
    pub kept: usize,
}

impl Diff {
    pub fn count(&self, which: fn(&RowOp) -> bool) -> usize {
        self.ops.iter().filter(|op| which(op)).count()
    }
}

/// A diff computed on a read connection, valid while the snapshot
/// generation is still `generation`.
pub(super) struct Plan {
    pub generation: u64,
    pub diff: Diff,
}

/// Computes the diff on a read connection, in one read transaction.
pub(super) fn plan(
    conn: &mut Connection,
    path: &Path,
    source: &str,
    records: &dyn RecordSet,
) -> Result<Diff, StoreError> {
    let mut run = || -> rusqlite::Result<Diff> {
        let tx = conn.transaction()?;
        let diff = diff_rows(&tx, source, records, &mut Vec::new())?;
        tx.commit()?;
        Ok(diff)
    };
    run().map_err(|e| StoreError::sqlite(path, "comparing a source with its snapshot", e))
}

/// Walks the source's stored rows and the records together, both in id
/// order, and lists what must change. Writes nothing (changing a table while
/// a cursor walks it is asking for trouble). Of records with the same id,
/// the last one counts.
pub(super) fn diff_rows(
    conn: &Connection,
    source: &str,
    records: &dyn RecordSet,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<Diff> {
    let sorted = sorted_last_per_id(records);
    let mut ops = Vec::new();
    let mut unchanged = 0;
    let mut next = 0usize;
    let mut stmt =
        conn.prepare_cached("SELECT id, body FROM counterparties WHERE source = ?1 ORDER BY id")?;
    let mut rows = stmt.query([source])?;
    while let Some(row) = rows.next()? {
        let id = read::text(row.get_ref(0)?, 0)?;
        while next < sorted.len() && records.get(sorted[next]).id() < id {
            ops.push(RowOp::Insert(sorted[next]));
            next += 1;
        }
        if next < sorted.len() && records.get(sorted[next]).id() == id {
            encode(records.get(sorted[next]), buf)?;
            match row.get_ref(1)? {
                ValueRef::Text(body) if body == buf.as_slice() => unchanged += 1,
                _ => ops.push(RowOp::Update(sorted[next])),
            }
            next += 1;
        } else {
            ops.push(RowOp::Delete(id.to_owned()));
        }
    }
    ops.extend(sorted[next..].iter().map(|&i| RowOp::Insert(i)));
    Ok(Diff {
        ops,
        unchanged,
        kept: sorted.len(),
    })
}

/// Applies a diff's row changes (the caller holds the write transaction).
pub(super) fn apply(
    conn: &Connection,
    source: &str,
    records: &dyn RecordSet,
    diff: &Diff,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    for op in &diff.ops {
        match *op {
            RowOp::Insert(i) | RowOp::Update(i) => put_row(conn, source, records.get(i), buf)?,
            RowOp::Delete(ref id) => delete_row(conn, source, id)?,
        }
    }
    Ok(())
}

/// Indexes of `records` sorted by id (byte-wise, as the table's key sorts),
/// with only the last record of each id kept.
fn sorted_last_per_id(records: &dyn RecordSet) -> Vec<usize> {
    let mut sorted: Vec<usize> = (0..records.len()).collect();
    // Stable: records with the same id stay in their given order...
    sorted.sort_by(|&a, &b| records.get(a).id().cmp(records.get(b).id()));
    // ...so keeping the last of each run keeps the last given.
    let mut kept: Vec<usize> = Vec::with_capacity(sorted.len());
    for i in sorted {
        match kept.last_mut() {
            Some(last) if records.get(*last).id() == records.get(i).id() => *last = i,
            _ => kept.push(i),
        }
    }
    kept
}

/// The record as its row body, in `buf`.
fn encode(record: &dyn SnapshotRecord, buf: &mut Vec<u8>) -> rusqlite::Result<()> {
    buf.clear();
    record
        .encode(buf)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Writes one row, replacing a row with the same id. The building block for
/// full replaces and, later, incremental upserts (the push API).
pub(super) fn put_row(
    conn: &Connection,
    source: &str,
    record: &dyn SnapshotRecord,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    encode(record, buf)?;
    let body = std::str::from_utf8(buf)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let id: &str = record.id();
    conn.prepare_cached(
        "INSERT INTO counterparties (source, id, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (source, id) DO UPDATE SET body = excluded.body",
    )?
    .execute(params![source, id, body])?;
    Ok(())
}

/// Removes one row (no error if it is not there).
pub(super) fn delete_row(conn: &Connection, source: &str, id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM counterparties WHERE source = ?1 AND id = ?2")?
        .execute(params![source, id])?;
    Ok(())
}
