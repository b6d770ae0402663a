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
//!
//! Both the walk and the apply go a step at a time ([`walk_rows`] and
//! [`apply`] stop at a [`Limit`]), so the writer can commit a large replace
//! in chunks and serve the call journal in between (see `writer.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};

use super::{read, unix_ms, StoreError};
use crate::directory::{Counterparty, Entry};

/// A record the snapshot can hold: its id and its JSON row body. The
/// directory's entries write their canonical JSON from their compact form
/// (see `directory::Entry::write_json`).
pub trait SnapshotRecord: Send + Sync {
    fn id(&self) -> &str;
    fn encode(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error>;
    /// When the gateway received this version, if known.
    fn received_at(&self) -> Option<SystemTime> {
        None
    }
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
        self.write_json(buf)
    }

    fn received_at(&self) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_millis(self.received_at_ms()))
    }
}

impl<T: SnapshotRecord + ?Sized> SnapshotRecord for Arc<T> {
    fn id(&self) -> &str {
        (**self).id()
    }

    fn encode(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        (**self).encode(buf)
    }

    fn received_at(&self) -> Option<SystemTime> {
        (**self).received_at()
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
    /// Indexes of the records in id order, the last of each id: the rows
    /// the source has afterwards. Kept so that a stale plan can be walked
    /// again on the writer without sorting again.
    pub sorted: Vec<usize>,
    /// In id order.
    pub ops: Vec<RowOp>,
    pub unchanged: usize,
}

impl Diff {
    /// Distinct ids among the records: the source's row count afterwards.
    pub fn kept(&self) -> usize {
        self.sorted.len()
    }
}

/// A diff computed on a read connection, valid while the snapshot
/// generation is still `generation`.
pub(super) struct Plan {
    pub generation: u64,
    pub diff: Diff,
}

/// How much one step of a stepwise diff or apply may do: at most `ops` row
/// changes, and no more once `deadline` has passed (checked every few rows).
/// A step always makes progress, whatever the limit.
#[derive(Clone, Copy)]
pub(super) struct Limit {
    pub ops: usize,
    pub deadline: Option<Instant>,
}

impl Limit {
    pub const NONE: Limit = Limit {
        ops: usize::MAX,
        deadline: None,
    };

    /// Whether a step that has made `ops` changes and looked at `seen` rows
    /// (counting from 1) must stop now.
    fn reached(&self, ops: usize, seen: usize) -> bool {
        ops >= self.ops
            || (seen % DEADLINE_EVERY == 0 && self.deadline.is_some_and(|d| Instant::now() >= d))
    }
}

/// Rows between two looks at the clock (a row costs microseconds).
const DEADLINE_EVERY: usize = 32;

/// Computes the diff on a read connection, in one read transaction.
pub(super) fn plan(
    conn: &mut Connection,
    path: &Path,
    source: &str,
    records: &dyn RecordSet,
) -> Result<Diff, StoreError> {
    let mut run = || -> rusqlite::Result<Diff> {
        let sorted = sorted_last_per_id(records);
        let tx = conn.transaction()?;
        let mut walk = Walk::default();
        let ops = walk_rows(
            &tx,
            source,
            records,
            &sorted,
            &mut walk,
            Limit::NONE,
            &mut Vec::new(),
        )?;
        tx.commit()?;
        debug_assert!(walk.done);
        Ok(Diff {
            sorted,
            ops,
            unchanged: walk.unchanged,
        })
    };
    run().map_err(|e| StoreError::sqlite(path, "comparing a source with its snapshot", e))
}

/// Where a stepwise diff stands. Every id up to `after` is settled, among
/// the records and among the stored rows alike: the next step starts after
/// it, so the rows written in between (the changes of the ids up to it) are
/// never read again.
#[derive(Default)]
pub(super) struct Walk {
    /// The next record, as a position in the sorted indexes.
    next: usize,
    /// The last settled id; `None` before the first step.
    after: Option<String>,
    /// Records found equal to their row so far.
    pub unchanged: usize,
    /// Every record and every stored row settled.
    pub done: bool,
}

/// The last id a step settled.
#[derive(Clone, Copy)]
enum Settled {
    Nothing,
    /// A record (inserted, updated or unchanged), by index.
    Record(usize),
    /// A stored row without a record: the last op, a delete.
    Deleted,
}

/// What one step of a walk has listed so far, and when it must stop.
struct Step {
    ops: Vec<RowOp>,
    settled: Settled,
    /// Rows and records looked at, counting from 1.
    seen: usize,
    limit: Limit,
}

impl Step {
    fn new(limit: Limit) -> Step {
        Step {
            ops: Vec::new(),
            settled: Settled::Nothing,
            seen: 0,
            limit,
        }
    }

    /// Whether the step stops before looking at one more row or record:
    /// once the limit is reached, but only after settling something.
    fn full(&mut self) -> bool {
        self.seen += 1;
        !matches!(self.settled, Settled::Nothing) && self.limit.reached(self.ops.len(), self.seen)
    }

    /// Lists the records from where `walk` stands up to `before` (all that
    /// are left when `None`) as inserts, moving `walk` on; false when the
    /// step filled up first.
    fn insert_records(
        &mut self,
        records: &dyn RecordSet,
        sorted: &[usize],
        walk: &mut Walk,
        before: Option<&str>,
    ) -> bool {
        while let Some(&i) = sorted.get(walk.next) {
            if before.is_some_and(|id| records.get(i).id() >= id) {
                break;
            }
            if self.full() {
                return false;
            }
            self.ops.push(RowOp::Insert(i));
            self.settled = Settled::Record(i);
            walk.next += 1;
        }
        true
    }

    /// The last id settled, if any: where the next step starts.
    fn settled_id(&self, records: &dyn RecordSet) -> Option<String> {
        match self.settled {
            Settled::Nothing => None,
            Settled::Record(i) => Some(records.get(i).id().to_owned()),
            Settled::Deleted => match self.ops.last() {
                Some(RowOp::Delete(id)) => Some(id.clone()),
                _ => None,
            },
        }
    }
}

/// One step of walking the source's stored rows and the records together,
/// both in id order (`sorted` from [`sorted_last_per_id`]), from where
/// `walk` stands: lists what must change for the ids it passes, up to
/// `limit`, and moves `walk` on. Writes nothing (changing a table while a
/// cursor walks it is asking for trouble); apply the changes, then take the
/// next step, in the same transaction or a later one, as long as nothing
/// else writes the source's rows in between.
pub(super) fn walk_rows(
    conn: &Connection,
    source: &str,
    records: &dyn RecordSet,
    sorted: &[usize],
    walk: &mut Walk,
    limit: Limit,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<Vec<RowOp>> {
    let mut step = Step::new(limit);
    let mut stmt = conn.prepare_cached(match walk.after {
        Some(_) => "SELECT id, body FROM counterparties WHERE source = ?1 AND id > ?2 ORDER BY id",
        None => "SELECT id, body FROM counterparties WHERE source = ?1 ORDER BY id",
    })?;
    let mut rows = match &walk.after {
        Some(after) => stmt.query(params![source, after])?,
        None => stmt.query([source])?,
    };
    loop {
        let Some(row) = rows.next()? else {
            // No stored rows left: the remaining records are new.
            if step.insert_records(records, sorted, walk, None) {
                walk.done = true;
            }
            break;
        };
        let id = read::text(row.get_ref(0)?, 0)?;
        // Records before this row are new. Stopping among them leaves the
        // row unsettled: the next step reads it again.
        if !step.insert_records(records, sorted, walk, Some(id)) || step.full() {
            break;
        }
        match sorted.get(walk.next) {
            Some(&i) if records.get(i).id() == id => {
                encode(records.get(i), buf)?;
                match row.get_ref(1)? {
                    ValueRef::Text(body) if body == buf.as_slice() => walk.unchanged += 1,
                    _ => step.ops.push(RowOp::Update(i)),
                }
                step.settled = Settled::Record(i);
                walk.next += 1;
            }
            _ => {
                step.ops.push(RowOp::Delete(id.to_owned()));
                step.settled = Settled::Deleted;
            }
        }
    }
    if let Some(after) = step.settled_id(records) {
        walk.after = Some(after);
    }
    Ok(step.ops)
}

/// Applies a diff's row changes in order (the caller holds the write
/// transaction) until `limit` says stop; returns how many it applied, at
/// least one if there are any. `counts` adds up what was done.
pub(super) fn apply(
    conn: &Connection,
    source: &str,
    records: &dyn RecordSet,
    ops: &[RowOp],
    limit: Limit,
    counts: &mut OpCounts,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<usize> {
    for (done, op) in ops.iter().enumerate() {
        if done > 0 && limit.reached(done, done) {
            return Ok(done);
        }
        match *op {
            RowOp::Insert(i) => {
                put_row(conn, source, records.get(i), buf)?;
                counts.inserted += 1;
            }
            RowOp::Update(i) => {
                put_row(conn, source, records.get(i), buf)?;
                counts.updated += 1;
            }
            RowOp::Delete(ref id) => {
                delete_row(conn, source, id)?;
                counts.deleted += 1;
            }
        }
    }
    Ok(ops.len())
}

/// Row changes written, by kind.
#[derive(Default, Clone, Copy)]
pub(super) struct OpCounts {
    pub inserted: usize,
    pub updated: usize,
    pub deleted: usize,
}

impl OpCounts {
    pub fn total(&self) -> usize {
        self.inserted + self.updated + self.deleted
    }
}

/// Indexes of `records` sorted by id (byte-wise, as the table's key sorts),
/// with only the last record of each id kept.
pub(super) fn sorted_last_per_id(records: &dyn RecordSet) -> Vec<usize> {
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
/// full replaces and for upserts ([`upsert_row`]).
pub(super) fn put_row(
    conn: &Connection,
    source: &str,
    record: &dyn SnapshotRecord,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    encode(record, buf)?;
    write_row(
        conn,
        source,
        record.id(),
        body_text(buf)?,
        record.received_at().map(unix_ms),
    )
}

/// What [`upsert_row`] did to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upserted {
    Inserted,
    Updated,
    /// The stored body was already this record's: nothing written.
    Unchanged,
}

/// Brings one row to `record` (the body encoded as a replace encodes it) and
/// says whether the row was new, changed or already equal.
pub(super) fn upsert_row(
    conn: &Connection,
    source: &str,
    record: &dyn SnapshotRecord,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<Upserted> {
    encode(record, buf)?;
    let body = body_text(buf)?;
    let id = record.id();
    let received_at = record.received_at().map(unix_ms);
    let stored: Option<(bool, Option<i64>)> = conn
        .prepare_cached(
            "SELECT body = ?3, received_at FROM counterparties WHERE source = ?1 AND id = ?2",
        )?
        .query_row(params![source, id, body], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let done = match stored {
        Some((true, at)) => {
            // The same content received again: it is now as new as that.
            if received_at.is_some() && at != received_at {
                conn.prepare_cached(
                    "UPDATE counterparties SET received_at = ?3 WHERE source = ?1 AND id = ?2",
                )?
                .execute(params![source, id, received_at])?;
            }
            return Ok(Upserted::Unchanged);
        }
        Some((false, _)) => Upserted::Updated,
        None => Upserted::Inserted,
    };
    write_row(conn, source, id, body, received_at)?;
    Ok(done)
}

fn body_text(buf: &[u8]) -> rusqlite::Result<&str> {
    std::str::from_utf8(buf).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn write_row(
    conn: &Connection,
    source: &str,
    id: &str,
    body: &str,
    received_at: Option<i64>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO counterparties (source, id, body, received_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (source, id) DO UPDATE SET body = excluded.body, received_at = excluded.received_at",
    )?
    .execute(params![source, id, body, received_at])?;
    Ok(())
}

/// Removes one row (no error if it is not there); returns the rows removed.
pub(super) fn delete_row(conn: &Connection, source: &str, id: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM counterparties WHERE source = ?1 AND id = ?2")?
        .execute(params![source, id])
}
