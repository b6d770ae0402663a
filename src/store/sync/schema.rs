//! The sync store's migration list: its own, applied to `<name>.sync.sqlite`
//! only (the main store's list, `schema::MIGRATIONS`, knows nothing of it).
//! The same rules hold: migration `n` takes the file from version `n - 1` to
//! `n` in one transaction; append new migrations, never edit one that has
//! shipped. Every sync table goes here, later issues' too.

/// `PRAGMA application_id` of a sync store file ("ctiS"): a sync file
/// opened as the main store (or the other way round) is refused, not
/// migrated with the wrong list.
pub(in crate::store) const SYNC_APPLICATION_ID: i32 = 0x6374_6953;

/// Each entry is one migration; the sync schema's version is its position from 1.
pub(in crate::store) const SYNC_MIGRATIONS: &[&str] = &[
    // 1: the sync foundation (issue 17, item 5).
    //
    // `sources`, `counterparties` and `tombstones` are the main store's
    // snapshot tables, as they stand after its migrations: the records
    // that exist only in a CRM are a source of their own, stored with
    // `Store::apply_changes` and loaded with `Store::load_snapshot` like
    // any other, by the same code.
    //
    // Times are unix ms; hashes are the u64 hash of the synced fields,
    // stored as the i64 of the same bits.
    concat!(
        "
    PRAGMA application_id = 1668573523;
",
        snapshot_tables_sql!(),
        "
    -- The link between a local record and its copy in a system. `hash`:
    -- what was last queued or confirmed for it (NULL: never), so a change
    -- equal to it is not queued again. `remote_id` is NULL until the
    -- system has confirmed a create (several NULLs are allowed by UNIQUE).
    -- `closed_at`: the system deleted its copy; the link is kept, closed.
    CREATE TABLE idmap (
        system         TEXT NOT NULL,
        kind           TEXT NOT NULL,
        local_id       TEXT NOT NULL,
        remote_id      TEXT,
        remote_version TEXT,
        hash           INTEGER,
        closed_at      INTEGER,
        PRIMARY KEY (system, kind, local_id)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX idmap_remote ON idmap (system, kind, remote_id);

    -- Changes to send, in id order per record. `kind` (company, contact...)
    -- is what the id-map row written on confirmation needs.
    CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY,
        system     TEXT NOT NULL,
        kind       TEXT NOT NULL,
        record_key TEXT NOT NULL,
        op         TEXT NOT NULL CHECK (op IN ('upsert', 'remove')),
        body       TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    INTEGER NOT NULL,
        state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead', 'done')),
        last_error TEXT,
        created_at INTEGER NOT NULL
    );
    -- A worker's due rows (state = 'pending', next_at <= now), and the
    -- counts of `sync_status`.
    CREATE INDEX outbox_due ON outbox (system, state, next_at);

    -- Webhook bodies as received, committed before the 2xx.
    CREATE TABLE inbox (
        id          INTEGER PRIMARY KEY,
        system      TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        body        TEXT NOT NULL,
        state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed'))
    );
    CREATE INDEX inbox_system_state ON inbox (system, state, id);

    -- A field two sides disagreed on, and what was done about it.
    CREATE TABLE conflicts (
        id         INTEGER PRIMARY KEY,
        at         INTEGER NOT NULL,
        system     TEXT NOT NULL,
        record_key TEXT NOT NULL,
        field      TEXT NOT NULL,
        ours       TEXT,
        theirs     TEXT,
        resolution TEXT NOT NULL
    );
    CREATE INDEX conflicts_at ON conflicts (at);
    CREATE INDEX conflicts_system_at ON conflicts (system, at);

    -- Per record id, as JSON: legal and actual address, director, bank
    -- (kept out of memory), and what CRMs add to records linked to 1C.
    CREATE TABLE requisites (
        id   TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE overlay (
        id   TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    ) WITHOUT ROWID;
    "
    ),
    // 2: the id-map's remote ids are indexed only where there is one.
    //
    // A row is queued (its id-map row written with its hash) long before
    // its system confirms a remote id, so most rows have none, and the full
    // index held an entry per row, keyed on the random local id: a second
    // B-tree of scattered page writes per enqueued row. UNIQUE allowed
    // several NULLs anyway, and a lookup `remote_id = ?` implies NOT NULL,
    // so the partial index answers it and enforces the same rule. Measured
    // (bench/sync.sh store, this VM's disk, file and WAL after the bulk):
    // 764 -> 704 bytes per queued row; bulk enqueue 36,000-40,800 -> 55,400
    // rows/s (one quiet run; SQLite's checkpoint every 1,000 pages still).
    "
    DROP INDEX idmap_remote;
    CREATE UNIQUE INDEX idmap_remote ON idmap (system, kind, remote_id)
        WHERE remote_id IS NOT NULL;
    ",
    // 3: an outbox row carries its hash; the id-map takes it on confirmation.
    //
    // Writing each queued row's hash to its id-map row made every enqueue
    // a write into a B-tree keyed on the random local id: a bulk of 1,000
    // rows touched about as many scattered pages, whose commit fsyncs
    // (1-2.5 MB each) held the call journal's fsyncs behind them. Now an
    // enqueue only appends (the outbox's rowid and its due index, both in
    // order) and the runtime writes the id-map row when the system confirms,
    // at the system's pace. What the feed compares with is the newest queued
    // row's hash, else the id-map's (`read::last_hashes`). Measured
    // (bench/sync.sh store, this VM): bulk 94,000 -> 222,000 rows/s; the
    // journal's append p99 during the bulk 3.7-8.9x -> 0.5-0.7x its idle p99.
    // Rows queued before this migration have no hash: their id-map rows
    // already hold it.
    "
    ALTER TABLE outbox ADD COLUMN hash INTEGER;
    ",
    // 4: the sync runtime (issue 18): a dead row remembers the later row of
    // its record that the system confirmed, so that retrying it (which
    // would send an older state over a newer one) is refused naming that
    // row. Set in the confirming transaction; no index (dead rows are few,
    // found through `outbox_due`).
    "
    ALTER TABLE outbox ADD COLUMN superseded_by INTEGER;
    ",
    // 5: rows 1C pulls (issue 19, `[sync.onec] transport = "pull"`) are
    // leased to a poller rather than sent by a worker. `leased_until`
    // (unix ms) is set when a lease hands the row out and kept after it
    // expires; `lease` (the lease's id) only while the row is out, so an
    // expiry is counted once. A row a lease passed over while an earlier
    // row of its record was out is marked with `leased_until = 0`: the
    // marked rows are what a poll going on from `after` must know of (an
    // older row of a record it sees), and what an ack of a newer row of
    // the record replaces. The index holds marked rows only (a few hundred
    // at most): an enqueue stays an append, unindexed by record key.
    "
    ALTER TABLE outbox ADD COLUMN leased_until INTEGER;
    ALTER TABLE outbox ADD COLUMN lease TEXT;
    CREATE INDEX outbox_leased ON outbox (system, record_key, id)
        WHERE leased_until IS NOT NULL;
    ",
    // 6: payments (issue 19 item 4).
    //
    // `payments`: every version of a payment document handed on, once per
    // (ref_key, version) (1C's Ref_Key and DataVersion, or a push's ref and
    // version): a poll reading it again, or a push sent twice, finds it and
    // emits nothing. `posted` is the document's state in that version (0:
    // unposted, deletion-marked or gone); `event` what was reported for it
    // (`payment.posted|changed|reversed`, NULL: nothing, e.g. a draft never
    // posted). The latest row of a ref (highest id) is its current state.
    // `date` as the source wrote it (1C's local time): the OData poll's
    // window finds the documents it handed on by it.
    //
    // `payments_cursor`: per source, the (date, ref_key) of the last
    // document handed on; the poll reads from its date less `reread`.
    "
    CREATE TABLE payments (
        id          INTEGER PRIMARY KEY,
        ref_key     TEXT NOT NULL,
        version     TEXT NOT NULL,
        source      TEXT NOT NULL,
        posted      INTEGER NOT NULL,
        event       TEXT,
        date        TEXT NOT NULL,
        body        TEXT NOT NULL,
        received_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX payments_version ON payments (ref_key, version);
    CREATE INDEX payments_window ON payments (source, date);

    CREATE TABLE payments_cursor (
        source     TEXT PRIMARY KEY NOT NULL,
        date       TEXT NOT NULL,
        ref_key    TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    // 7: what each write to a system that reports it came to (issue 19:
    // the 1C writer's outcomes with 1C's Ref_Key and Code), by outbox row
    // id: a confirmed row is deleted from the outbox, its outcome stays.
    // Written in the transaction that settles the row. `notify` = 1 until
    // the record's originating system was told (`System::linked`): an
    // outcome committed just before a crash is handed on after the start.
    // The partial index holds the few not yet handed on.
    "
    CREATE TABLE outcomes (
        outbox_id   INTEGER PRIMARY KEY,
        system      TEXT NOT NULL,
        kind        TEXT NOT NULL,
        record_key  TEXT NOT NULL,
        outcome     TEXT NOT NULL CHECK (outcome IN ('created', 'exists', 'updated', 'failed')),
        remote_ref  TEXT,
        remote_code TEXT,
        message     TEXT,
        at          INTEGER NOT NULL,
        notify      INTEGER NOT NULL
    );
    CREATE INDEX outcomes_notify ON outcomes (outbox_id) WHERE notify = 1;
    ",
    // 8: an outbox row id is never given twice. `id INTEGER PRIMARY KEY`
    // takes the highest id in the table plus one, so once the newest rows
    // were confirmed (deleted), the next row got one of their ids again:
    // its outcome replaced theirs (`INSERT OR REPLACE`, perhaps before it
    // was handed on), their outcomes were no longer listed as done (a row
    // of that id existed again) and the new row was shown with theirs.
    // Found by `tests/onec_writer.rs` failing under load. AUTOINCREMENT
    // keeps the highest id ever given in `sqlite_sequence`; the table is
    // built again with it (SQLite cannot add it to a table), the rows,
    // columns and indexes as migrations 1-5 left them, and the sequence
    // starts past every id still named anywhere (outcomes, superseded_by).
    "
    CREATE TABLE outbox_next (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        system        TEXT NOT NULL,
        kind          TEXT NOT NULL,
        record_key    TEXT NOT NULL,
        op            TEXT NOT NULL CHECK (op IN ('upsert', 'remove')),
        body          TEXT NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_at       INTEGER NOT NULL,
        state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead', 'done')),
        last_error    TEXT,
        created_at    INTEGER NOT NULL,
        hash          INTEGER,
        superseded_by INTEGER,
        leased_until  INTEGER,
        lease         TEXT
    );
    INSERT INTO outbox_next (id, system, kind, record_key, op, body, attempts, next_at, state,
                             last_error, created_at, hash, superseded_by, leased_until, lease)
        SELECT id, system, kind, record_key, op, body, attempts, next_at, state,
               last_error, created_at, hash, superseded_by, leased_until, lease
        FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_next RENAME TO outbox;
    CREATE INDEX outbox_due ON outbox (system, state, next_at);
    CREATE INDEX outbox_leased ON outbox (system, record_key, id)
        WHERE leased_until IS NOT NULL;
    DELETE FROM sqlite_sequence WHERE name IN ('outbox', 'outbox_next');
    INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', max(
        (SELECT coalesce(max(id), 0) FROM outbox),
        (SELECT coalesce(max(superseded_by), 0) FROM outbox),
        (SELECT coalesce(max(outbox_id), 0) FROM outcomes)
    ));
    ",
];
