//! Queries on a read-only connection. Run inside `spawn_blocking`; in WAL
//! mode they neither wait for the writer nor make it wait.

use std::path::Path;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Mutex, PoisonError};

use rusqlite::types::{FromSqlError, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, Transaction};

use super::{from_unix_ms, SourceSnapshot, StoreError, StoredCall};
use crate::directory::{Counterparty, Tombstone};

/// A snapshot as read, with what did not decode.
pub(super) struct Loaded {
    pub sources: Vec<LoadedSource>,
}

pub(super) struct LoadedSource {
    pub snapshot: SourceSnapshot,
    pub saved_at_ms: i64,
    /// Rows whose body did not decode into a Counterparty (skipped).
    pub bad_rows: u64,
    /// The first decode error, for the log.
    pub first_error: Option<String>,
    /// What the `sources` row says the source had.
    pub expected: i64,
}

/// Upper bound for the capacity hint taken from the `sources` table.
const MAX_CAPACITY_HINT: usize = 10_000_000;

/// Rows handed to a parser thread at a time.
const CHUNK_ROWS: usize = 2048;

/// Most parser threads, whatever the machine has.
const MAX_PARSERS: usize = 4;

/// Reads every source's snapshot in one read transaction (one consistent
/// view). Rows come in primary-key order, so grouping by source is a walk.
///
/// Decoding the JSON costs about three times what SQLite spends reading
/// the rows, so this thread only reads, copying bodies into chunks, and
/// parser threads (one per core) turn chunks into records.
pub(super) fn load_snapshot(conn: &mut Connection, path: &Path) -> Result<Loaded, StoreError> {
    load(conn).map_err(|e| StoreError::sqlite(path, "loading the snapshot", e))
}

fn load(conn: &mut Connection) -> rusqlite::Result<Loaded> {
    let tx = conn.transaction()?;
    let mut sources = read_sources(&tx)?;
    let names: Vec<String> = sources.iter().map(|s| s.snapshot.source.clone()).collect();
    let parsers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_PARSERS);
    let (work_tx, work_rx) = mpsc::sync_channel::<Chunk>(parsers * 2);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = mpsc::channel::<Parsed>();
    // Parsed chunks' buffers go back to the reader for reuse.
    let (spare_tx, spare_rx) = mpsc::channel::<Buffers>();
    let mut parsed = std::thread::scope(|scope| {
        for _ in 0..parsers {
            let (work_rx, done_tx, spare_tx) = (&work_rx, done_tx.clone(), spare_tx.clone());
            scope.spawn(move || loop {
                // The guard must drop before parsing, or parsers take turns.
                let next = work_rx
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv();
                let Ok(chunk) = next else { break };
                let (parsed, spare) = chunk.parse();
                let _ = spare_tx.send(spare);
                if done_tx.send(parsed).is_err() {
                    break;
                }
            });
        }
        drop((done_tx, spare_tx));
        // `scan` owns the sender: when it returns, by error too, the parsers
        // run out of work and end.
        scan(&tx, &names, work_tx, &spare_rx)?;
        Ok::<_, rusqlite::Error>(done_rx.iter().collect::<Vec<Parsed>>())
    })?;
    tx.commit()?;
    parsed.sort_unstable_by_key(|p| p.seq);
    for p in parsed {
        let into = &mut sources[p.source];
        into.snapshot.records.extend(p.records);
        into.snapshot.received_at_ms.extend(p.received_at_ms);
        into.bad_rows += p.bad_rows;
        if into.first_error.is_none() {
            into.first_error = p.first_error;
        }
    }
    Ok(Loaded { sources })
}

fn read_sources(tx: &Transaction<'_>) -> rusqlite::Result<Vec<LoadedSource>> {
    let mut stmt =
        tx.prepare("SELECT source, fingerprint, records, saved_at FROM sources ORDER BY source")?;
    let mut rows = stmt.query([])?;
    let mut sources = Vec::new();
    while let Some(row) = rows.next()? {
        let expected: i64 = row.get(2)?;
        let capacity = usize::try_from(expected)
            .unwrap_or(0)
            .min(MAX_CAPACITY_HINT);
        sources.push(LoadedSource {
            snapshot: SourceSnapshot {
                source: row.get(0)?,
                fingerprint: row.get(1)?,
                saved_at: std::time::UNIX_EPOCH,
                records: Vec::with_capacity(capacity),
                received_at_ms: Vec::with_capacity(capacity),
            },
            saved_at_ms: row.get(3)?,
            bad_rows: 0,
            first_error: None,
            expected,
        });
    }
    Ok(sources)
}

/// Reads all snapshot rows in key order and sends their bodies, a chunk at a
/// time, to the parsers. A chunk holds rows of one source only.
fn scan(
    tx: &Transaction<'_>,
    names: &[String],
    work: SyncSender<Chunk>,
    spare: &mpsc::Receiver<Buffers>,
) -> rusqlite::Result<()> {
    let mut stmt =
        tx.prepare("SELECT source, body, received_at FROM counterparties ORDER BY source, id")?;
    let mut rows = stmt.query([])?;
    // Both queries are in `source` order (BINARY collation), so the
    // source of the current row is at `cur` or after it.
    let mut cur = 0usize;
    let mut chunk = Chunk::new(0, 0, Buffers::default());
    while let Some(row) = rows.next()? {
        let source = text(row.get_ref(0)?, 0)?;
        if names.get(cur).is_none_or(|n| n != source) {
            match names[cur..].iter().position(|n| n == source) {
                Some(ahead) => cur += ahead,
                // A row without its `sources` row: foreign keys forbid
                // it, only a file edited by hand gets here. Skip it.
                None => continue,
            }
        }
        if chunk.source != cur || chunk.rows() == CHUNK_ROWS {
            let buffers = spare.try_recv().unwrap_or_default();
            let next = Chunk::new(chunk.seq + 1, cur, buffers);
            let full = std::mem::replace(&mut chunk, next);
            if full.rows() > 0 && work.send(full).is_err() {
                // Every parser is gone (one panicked): the scope reports it.
                return Ok(());
            }
        }
        match row.get_ref(1)? {
            // UTF-8 is checked by the parser (in parallel), not here.
            ValueRef::Text(body) => chunk.push(body, row.get::<_, Option<i64>>(2).ok().flatten()),
            other => chunk.bad(format!("body is {}, not text", other.data_type())),
        }
    }
    if chunk.rows() > 0 {
        let _ = work.send(chunk);
    }
    Ok(())
}

/// Row bodies back to back, where each ends, and when each was received.
#[derive(Default)]
struct Buffers {
    text: Vec<u8>,
    ends: Vec<usize>,
    received_at_ms: Vec<Option<i64>>,
}

/// Consecutive rows of one source.
struct Chunk {
    seq: usize,
    source: usize,
    buf: Buffers,
    bad_rows: u64,
    first_error: Option<String>,
}

/// The records of one chunk.
struct Parsed {
    seq: usize,
    source: usize,
    records: Vec<Counterparty>,
    /// Beside `records`, one for one.
    received_at_ms: Vec<Option<i64>>,
    bad_rows: u64,
    first_error: Option<String>,
}

impl Chunk {
    fn new(seq: usize, source: usize, buf: Buffers) -> Chunk {
        Chunk {
            seq,
            source,
            buf,
            bad_rows: 0,
            first_error: None,
        }
    }

    fn rows(&self) -> usize {
        self.buf.ends.len() + self.bad_rows as usize
    }

    fn push(&mut self, body: &[u8], received_at_ms: Option<i64>) {
        if self.buf.text.capacity() == 0 {
            self.buf.text.reserve(body.len() * CHUNK_ROWS);
            self.buf.ends.reserve(CHUNK_ROWS);
            self.buf.received_at_ms.reserve(CHUNK_ROWS);
        }
        self.buf.text.extend_from_slice(body);
        self.buf.ends.push(self.buf.text.len());
        self.buf.received_at_ms.push(received_at_ms);
    }

    fn bad(&mut self, error: String) {
        self.bad_rows += 1;
        self.first_error.get_or_insert(error);
    }

    /// Decodes every body; hands back the emptied buffers.
    fn parse(self) -> (Parsed, Buffers) {
        let Chunk {
            seq,
            source,
            mut buf,
            mut bad_rows,
            mut first_error,
        } = self;
        let mut records = Vec::with_capacity(buf.ends.len());
        // One deserializer over the whole chunk (the bodies are objects,
        // which need no separator), so its scratch buffer is reused. It must
        // stop exactly where each row ends.
        let mut stream =
            serde_json::Deserializer::from_slice(&buf.text).into_iter::<Counterparty>();
        for &end in &buf.ends {
            match stream.next() {
                Some(Ok(record)) if stream.byte_offset() == end => records.push(record),
                _ => break,
            }
        }
        // From the first row it could not take on: one row at a time, so a
        // bad row costs only itself.
        let done = records.len();
        let mut received_at_ms: Vec<Option<i64>> = buf.received_at_ms[..done].to_vec();
        let mut start = done.checked_sub(1).map_or(0, |last| buf.ends[last]);
        for (i, &end) in buf.ends.iter().enumerate().skip(done) {
            match serde_json::from_slice::<Counterparty>(&buf.text[start..end]) {
                Ok(record) => {
                    records.push(record);
                    received_at_ms.push(buf.received_at_ms.get(i).copied().flatten());
                }
                Err(e) => {
                    bad_rows += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
            start = end;
        }
        buf.text.clear();
        buf.ends.clear();
        buf.received_at_ms.clear();
        let parsed = Parsed {
            seq,
            source,
            records,
            received_at_ms,
            bad_rows,
            first_error,
        };
        (parsed, buf)
    }
}

/// A column that must be text, as `&str`.
pub(super) fn text(v: ValueRef<'_>, col: usize) -> rusqlite::Result<&str> {
    v.as_str().map_err(|e| {
        let ty = v.data_type();
        match e {
            FromSqlError::InvalidType => rusqlite::Error::InvalidColumnType(col, String::new(), ty),
            other => rusqlite::Error::FromSqlConversionFailure(col, ty, Box::new(other)),
        }
    })
}

/// The fingerprint stored for `source`; `None` if it was never saved.
pub(super) fn source_fingerprint(
    conn: &Connection,
    path: &Path,
    source: &str,
) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT fingerprint FROM sources WHERE source = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([source], |r| r.get::<_, Option<String>>(0))
                .optional()
        })
        .map(Option::flatten)
        .map_err(|e| StoreError::sqlite(path, "reading a source's fingerprint", e))
}

/// [`calls_page_sql`] without paging: what the query-plan test checks.
#[cfg(test)]
pub(super) fn calls_sql(by_key: bool, by_number: bool, since: bool) -> String {
    calls_page_sql(by_key, by_number, since, false)
}

/// Which journal rows [`calls`] reads (a `CallQuery` with the time in unix ms
/// and the limit capped).
pub(super) struct CallFilter {
    pub key: Option<String>,
    pub number: Option<String>,
    pub since_ms: Option<i64>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// The journal query for a filter combination: one statement each, so each
/// walks an index (`calls_key_at`, `calls_number_at` or `calls_at`) in
/// order, with no sort. With `before`, it starts after call `?b` in the
/// journal's order (by `at`, then id, newest first), still as an index
/// range. When that call is not there (an id never given, or one removed),
/// the position is the latest time of the calls with a smaller id, so none
/// of those is left out. Parameters: the key if filtered, the number if
/// filtered, the time if filtered, the call id if paging, the limit.
pub(super) fn calls_page_sql(by_key: bool, by_number: bool, since: bool, before: bool) -> String {
    let mut conditions = Vec::with_capacity(4);
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    if by_key {
        conditions.push(format!("key = ?{}", next()));
    }
    if by_number {
        conditions.push(format!("number = ?{}", next()));
    }
    if since {
        conditions.push(format!("at >= ?{}", next()));
    }
    if before {
        let b = next();
        conditions.push(format!(
            "(at, id) < (coalesce((SELECT at FROM calls WHERE id = ?{b}), \
            (SELECT max(at) FROM calls WHERE id < ?{b})), ?{b})"
        ));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!(
        "SELECT id, at, raw_number, number, key, counterparty_id, delivered, seq
        FROM calls{filter} ORDER BY at DESC, id DESC LIMIT ?{}",
        next()
    )
}

/// Journal rows, newest first, optionally for one key, one number, from a
/// time on, and before a journal position (see [`calls_page_sql`]).
pub(super) fn calls(
    conn: &Connection,
    path: &Path,
    filter: &CallFilter,
) -> Result<Vec<StoredCall>, StoreError> {
    let sql = calls_page_sql(
        filter.key.is_some(),
        filter.number.is_some(),
        filter.since_ms.is_some(),
        filter.before.is_some(),
    );
    let mut args: Vec<&dyn ToSql> = Vec::with_capacity(5);
    if let Some(k) = &filter.key {
        args.push(k);
    }
    if let Some(n) = &filter.number {
        args.push(n);
    }
    if let Some(s) = &filter.since_ms {
        args.push(s);
    }
    if let Some(b) = &filter.before {
        args.push(b);
    }
    args.push(&filter.limit);
    let query = || -> rusqlite::Result<Vec<StoredCall>> {
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(args.as_slice(), |r| {
            let delivered: i64 = r.get(6)?;
            Ok(StoredCall {
                id: r.get(0)?,
                at: from_unix_ms(r.get(1)?),
                raw_number: r.get(2)?,
                number: r.get(3)?,
                key: r.get(4)?,
                counterparty_id: r.get(5)?,
                delivered: u32::try_from(delivered.max(0)).unwrap_or(u32::MAX),
                seq: r
                    .get::<_, Option<i64>>(7)?
                    .and_then(|s| u64::try_from(s).ok()),
            })
        })?;
        rows.collect()
    };
    query().map_err(|e| StoreError::sqlite(path, "reading the call journal", e))
}

/// Each operator key's largest journaled pop-up sequence number: where the
/// key's numbers continue after a restart. One walk of `calls_key_seq`.
pub(super) fn last_seqs(conn: &Connection, path: &Path) -> Result<Vec<(String, u64)>, StoreError> {
    let query = || -> rusqlite::Result<Vec<(String, u64)>> {
        let mut stmt = conn
            .prepare_cached("SELECT key, max(seq) FROM calls WHERE seq IS NOT NULL GROUP BY key")?;
        let rows = stmt.query_map([], |r| {
            let seq: i64 = r.get(1)?;
            Ok((r.get::<_, String>(0)?, u64::try_from(seq).unwrap_or(0)))
        })?;
        rows.collect()
    };
    query().map_err(|e| StoreError::sqlite(path, "reading the pop-up sequence numbers", e))
}

/// Every tombstone (see `Store::apply_changes`).
pub(super) fn tombstones(conn: &Connection, path: &Path) -> Result<Vec<Tombstone>, StoreError> {
    let query = || -> rusqlite::Result<Vec<Tombstone>> {
        let mut stmt = conn.prepare_cached("SELECT id, source, content FROM tombstones")?;
        let rows = stmt.query_map([], |r| {
            Ok(Tombstone {
                id: r.get::<_, String>(0)?.into(),
                source: r.get::<_, String>(1)?.into(),
                // Stored as the i64 of the same bits.
                content: r.get::<_, i64>(2)? as u64,
            })
        })?;
        rows.collect()
    };
    query().map_err(|e| StoreError::sqlite(path, "reading the tombstones", e))
}
