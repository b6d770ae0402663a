//! A source replace on the writer: the source's rows brought to a new set of
//! records, committed in chunks with the journal appends that wait served
//! in between, and how the size of the next chunk is chosen.
//!
//! Crash safety across chunks: the first chunk's transaction sets the
//! source's fingerprint to NULL (and its row count to the new one), and only
//! the last chunk's transaction writes the fingerprint. A crash or an error
//! in between leaves a source without fingerprint, which nothing takes for a
//! complete snapshot: the source does not find its fingerprint, so it is
//! read and saved again. A replace that fits in one chunk is one
//! transaction: the NULL is never seen. A failure in the first chunk leaves
//! the old snapshot whole.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, Transaction};

use super::Writer;
use crate::store::snapshot::{self, Limit, OpCounts, Plan, RecordSet, RowOp, Walk};
use crate::store::{unix_ms, StoreError};

/// What one chunk of a source replace should take, from BEGIN to the end of
/// COMMIT: an append that arrives during a chunk waits about this long, plus
/// its own commit. Also the most a chunk's row changes may take before it
/// commits, whatever its size.
pub(in crate::store) const CHUNK_TIME: Duration = Duration::from_millis(100);

/// Row changes in the first chunk of a replace. Later chunks are sized from
/// the time the previous one took, commit included: rows in key order
/// (a first save) pack many per page and go fast; changes scattered over a
/// large table dirty a page each, and their commit costs more than their
/// statements.
const FIRST_CHUNK_OPS: usize = 1_000;

/// Bounds for the size of later chunks, in row changes. The upper one keeps
/// a fast machine's transactions (and their WAL) moderate; a chunk grows at
/// most twofold from one to the next.
const MIN_CHUNK_OPS: usize = 100;
pub(in crate::store) const MAX_CHUNK_OPS: usize = 20_000;

/// What is left of a replace between two chunks.
enum Work {
    /// Applying a diff computed beforehand, from `ops[done]` on.
    Planned { ops: Vec<RowOp>, done: usize },
    /// Walking the stored rows and the records together on the writer.
    Walking { sorted: Vec<usize>, walk: Walk },
}

/// One source replace as it is written, chunk after chunk.
struct Replace<'a> {
    source: &'a str,
    fingerprint: &'a str,
    records: &'a dyn RecordSet,
    work: Work,
    /// Distinct ids among the records: the source's row count afterwards.
    kept: usize,
    /// Whether the diff computed off the writer is applied (else the writer
    /// walks the rows itself).
    planned: bool,
    /// Records found equal to their row, when the plan is applied.
    planned_unchanged: usize,
    /// The `saved_at` every chunk writes.
    saved_at: i64,
    /// Row changes committed so far.
    counts: OpCounts,
    /// Chunks committed so far.
    chunks: usize,
}

impl<'a> Replace<'a> {
    /// Uses `plan` when it was computed at the current snapshot
    /// `generation`, else walks the rows (in the plan's order when there is
    /// one, since the records have not changed).
    fn new(
        source: &'a str,
        fingerprint: &'a str,
        records: &'a dyn RecordSet,
        plan: Option<Plan>,
        generation: u64,
    ) -> Replace<'a> {
        let planned = plan.as_ref().is_some_and(|p| p.generation == generation);
        let walking = |sorted: Vec<usize>| Work::Walking {
            sorted,
            walk: Walk::default(),
        };
        let (work, kept, planned_unchanged) = match plan {
            Some(Plan { diff, .. }) if planned => {
                let kept = diff.kept();
                let work = Work::Planned {
                    ops: diff.ops,
                    done: 0,
                };
                (work, kept, diff.unchanged)
            }
            // Stale: the rows changed, but the order of the records holds.
            Some(Plan { diff, .. }) => {
                let kept = diff.kept();
                (walking(diff.sorted), kept, 0)
            }
            // Planning failed. Sorting here holds the writer (a fraction of
            // a second for a million records), but only the read side failed.
            None => {
                let sorted = snapshot::sorted_last_per_id(records);
                let kept = sorted.len();
                (walking(sorted), kept, 0)
            }
        };
        Replace {
            source,
            fingerprint,
            records,
            work,
            kept,
            planned,
            planned_unchanged,
            saved_at: unix_ms(SystemTime::now()),
            counts: OpCounts::default(),
            chunks: 0,
        }
    }

    /// Writes the next chunk in `tx`: row changes up to `limit` (a walk on
    /// the writer stops at `walk_limit`, leaving time for its changes);
    /// returns whether the replace is finished. The first chunk marks the
    /// source as being written, the last one writes its fingerprint.
    fn write_chunk(
        &mut self,
        tx: &Transaction<'_>,
        limit: Limit,
        walk_limit: Limit,
        buf: &mut Vec<u8>,
    ) -> rusqlite::Result<bool> {
        if self.chunks == 0 {
            put_source(tx, self.source, None, self.saved_at, self.kept)?;
        }
        let finished = match &mut self.work {
            Work::Planned { ops, done } => {
                let rest = &ops[*done..];
                *done += snapshot::apply(
                    tx,
                    self.source,
                    self.records,
                    rest,
                    limit,
                    &mut self.counts,
                    buf,
                )?;
                *done == ops.len()
            }
            Work::Walking { sorted, walk } => {
                let ops = snapshot::walk_rows(
                    tx,
                    self.source,
                    self.records,
                    sorted,
                    walk,
                    walk_limit,
                    buf,
                )?;
                snapshot::apply(
                    tx,
                    self.source,
                    self.records,
                    &ops,
                    Limit::NONE,
                    &mut self.counts,
                    buf,
                )?;
                walk.done
            }
        };
        if finished {
            put_source(
                tx,
                self.source,
                Some(self.fingerprint),
                self.saved_at,
                self.kept,
            )?;
        }
        Ok(finished)
    }

    /// Records found equal to their row (not written).
    fn unchanged(&self) -> usize {
        match &self.work {
            Work::Planned { .. } => self.planned_unchanged,
            Work::Walking { walk, .. } => walk.unchanged,
        }
    }
}

impl Writer {
    /// Brings the source's snapshot rows to exactly `records` (the last one
    /// of each id) and its `sources` row to `fingerprint`, writing only the
    /// rows that differ. Uses `plan` when no snapshot write happened since it
    /// was computed, else walks the rows here. Committed in chunks, with the
    /// journal appends that wait served in between; crash-safe across them
    /// (see the top of this file).
    pub(super) fn replace_source(
        &mut self,
        source: &str,
        fingerprint: &str,
        records: &dyn RecordSet,
        plan: Option<Plan>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        let mut replace = Replace::new(source, fingerprint, records, plan, generation);
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.write_chunks(&mut replace, &mut buf);
        self.buf = buf;
        self.report_replace(&replace, started, result)
    }

    /// Commits the replace chunk after chunk, each sized from the pace of
    /// the last, and commits the appends that wait between two.
    fn write_chunks(
        &mut self,
        replace: &mut Replace<'_>,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut chunk_ops = FIRST_CHUNK_OPS.min(self.max_chunk_ops);
        loop {
            let chunk_time = self.chunk_time;
            let chunk_started = Instant::now();
            let limit = Limit {
                ops: chunk_ops,
                deadline: Some(chunk_started + chunk_time),
            };
            // A walk takes half the time, its changes the rest.
            let walk_limit = Limit {
                deadline: Some(chunk_started + chunk_time / 2),
                ..limit
            };
            let counts_before = replace.counts;
            let chunk = self.transact("replacing a source's snapshot", |tx| {
                replace.write_chunk(tx, limit, walk_limit, buf)
            });
            let finished = match chunk {
                Ok(finished) => finished,
                Err(e) => {
                    // Rolled back: report what was committed.
                    replace.counts = counts_before;
                    return Err(e);
                }
            };
            replace.chunks += 1;
            // Plans computed before this commit are stale now.
            self.generation.fetch_add(1, Ordering::AcqRel);
            if finished {
                return Ok(());
            }
            let did = replace.counts.total() - counts_before.total();
            let took = chunk_started.elapsed();
            tracing::trace!(
                source = replace.source,
                chunk = replace.chunks,
                ops = did,
                took_us = took.as_micros() as u64,
                "store: replace chunk committed"
            );
            chunk_ops = next_chunk_ops(chunk_ops, did, took, chunk_time, self.max_chunk_ops);
            self.serve_waiting_appends();
        }
    }

    /// Counts and logs how the replace ended; passes its result on.
    fn report_replace(
        &mut self,
        replace: &Replace<'_>,
        started: Instant,
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let (source, counts) = (replace.source, replace.counts);
        match result {
            Ok(()) => {
                self.metrics.snapshot_ok.inc();
                tracing::info!(
                    source,
                    records = replace.kept,
                    inserted = counts.inserted,
                    updated = counts.updated,
                    deleted = counts.deleted,
                    unchanged = replace.unchanged(),
                    duplicate_ids = replace.records.len() - replace.kept,
                    planned_off_writer = replace.planned,
                    chunks = replace.chunks,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "store: source snapshot saved"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.snapshot_error.inc();
                self.failures.failed("source snapshot replace", 1, &e);
                if replace.chunks > 0 {
                    tracing::warn!(
                        source,
                        chunks_committed = replace.chunks,
                        inserted = counts.inserted,
                        updated = counts.updated,
                        deleted = counts.deleted,
                        "store: a source replace failed part-way; the source is left without fingerprint and is saved again on its next read"
                    );
                }
                Err(e)
            }
        }
    }
}

/// The size of a replace's next chunk: as many row changes as fit in
/// `target` at the pace of the last chunk (`did` changes in `took`), at
/// least [`MIN_CHUNK_OPS`], at most twice the last size and at most `max`.
fn next_chunk_ops(last: usize, did: usize, took: Duration, target: Duration, max: usize) -> usize {
    if did == 0 {
        // A stretch of unchanged rows: nothing learnt about row changes.
        return last;
    }
    let fit = did as f64 * target.as_secs_f64() / took.as_secs_f64().max(1e-6);
    let grown = last.saturating_mul(2).min(max);
    (fit as usize).clamp(MIN_CHUNK_OPS.min(grown), grown)
}

/// Writes a source's `sources` row. `None` for the fingerprint marks a
/// snapshot being written (or left incomplete by a crash or an error).
fn put_source(
    tx: &Transaction<'_>,
    source: &str,
    fingerprint: Option<&str>,
    saved_at: i64,
    records: usize,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO sources (source, fingerprint, saved_at, records)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (source) DO UPDATE SET fingerprint = excluded.fingerprint,
             saved_at = excluded.saved_at, records = excluded.records",
    )?
    .execute(params![source, fingerprint, saved_at, records as i64])?;
    Ok(())
}
