//! Taking SERVIO's files from `servio.import_dir`, each applied once.
//!
//! A scan (every `servio.poll`, on SIGHUP and on `Gateway::reload`) runs on
//! the source's lowest-priority worker (`cti-servio`), never on the
//! runtime. For each settled file matching the mapping, oldest first:
//! hash (SHA-256, streamed) → already in the ledger? (a duplicate: moved
//! out, never applied again) → parse from the same handle → changed
//! meanwhile? (left for the next scan) → directory → snapshot committed →
//! ledger committed → moved to `archive_dir` (`take = leave`: copied, the
//! file stays and is known by name, size and mtime). A crash between two
//! steps applies the last file again at most, harmlessly: whole clients,
//! in order. The delta files of one scan go to the directory in one apply.
//! A bad file changes nothing: it goes to `error_dir` with
//! `<name>.error.txt`, is ledgered as failed, and does not hold up the next.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::folder::{self, Candidate, Settling};
use super::mapping::{FileRule, Mapping, Mode};
use super::metrics::ServioMetrics;
use super::read::{read_each, read_records, Parsed, Problem, LIMITS, MAX_PROBLEMS};
use super::SOURCE;
use crate::config::{ServioConfig, ServioTake};
use crate::directory::{BuiltSet, Counterparty, Directory};
use crate::sources::{LowPriority, SourceHealth};
use crate::store::{LedgerRow, LeftRow, Store};

/// The delta files of one scan applied together, at most this many...
const MAX_BATCH_FILES: usize = 64;
/// ...holding at most this many clients.
const MAX_BATCH_CLIENTS: usize = 100_000;

/// A full file's records are made into directory entries this many at a
/// time, as they are read (see [`Inner::read_full`]): a few MB of records
/// held, not the whole file's.
const FULL_CHUNK: usize = 4_096;

/// `[servio]` as the source uses it.
#[derive(Debug, Clone)]
pub struct ServioSettings {
    pub import_dir: PathBuf,
    pub archive_dir: PathBuf,
    pub error_dir: PathBuf,
    pub poll: Duration,
    pub settle: Duration,
    pub ready_marker: Option<String>,
    pub take: ServioTake,
    pub max_records: usize,
    /// `directory.max_shrink`: the most of SERVIO's clients a full file may remove.
    pub max_shrink: f64,
}

impl ServioSettings {
    pub fn from_config(config: &ServioConfig, max_shrink: f64) -> ServioSettings {
        ServioSettings {
            import_dir: config.import_dir.clone(),
            archive_dir: config.archive_dir.clone(),
            error_dir: config.error_dir.clone(),
            poll: config.poll,
            settle: config.settle,
            ready_marker: config.ready_marker.clone(),
            take: config.take,
            max_records: config.max_records,
            max_shrink,
        }
    }
}

/// The SERVIO source: its task scans the folder; see the module's doc.
pub struct ServioSource {
    inner: Arc<Inner>,
    worker: LowPriority,
}

struct Inner {
    settings: ServioSettings,
    mapping: Mapping,
    directory: Arc<Directory>,
    store: Store,
    health: Arc<SourceHealth>,
    metrics: ServioMetrics,
    /// Held for a whole scan: scans never overlap.
    state: tokio::sync::Mutex<ScanState>,
}

#[derive(Default)]
struct ScanState {
    settling: Settling,
    /// Why the source fails, until a file applies: the last file failed, or
    /// one could not be moved.
    failure: Option<String>,
}

impl ServioSource {
    pub fn new(
        settings: ServioSettings,
        mapping: Mapping,
        directory: Arc<Directory>,
        store: Store,
        health: Arc<SourceHealth>,
        registry: &prometheus::Registry,
    ) -> Result<ServioSource, String> {
        let metrics = ServioMetrics::register(registry).map_err(|e| e.to_string())?;
        let worker = LowPriority::start("cti-servio")
            .map_err(|e| format!("cannot start the SERVIO worker thread: {e}"))?;
        Ok(ServioSource {
            inner: Arc::new(Inner {
                settings,
                mapping,
                directory,
                store,
                health,
                metrics,
                state: tokio::sync::Mutex::new(ScanState::default()),
            }),
            worker,
        })
    }

    /// Scans at once, then every `poll` and on each reload, until `shutdown`.
    pub async fn run(self, mut reload: watch::Receiver<u64>, mut shutdown: watch::Receiver<bool>) {
        self.scan().await;
        let mut ticker = (!self.inner.settings.poll.is_zero()).then(|| {
            let mut t = tokio::time::interval(self.inner.settings.poll);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = reload.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.scan().await;
                }
                () = tick => self.scan().await,
            }
        }
    }

    /// One scan of the folder, on the worker thread.
    pub async fn scan(&self) {
        let inner = Arc::clone(&self.inner);
        if let Err(e) = self
            .worker
            .run_future("cti-servio", async move { inner.scan().await })
            .await
        {
            self.inner.health.failure(SOURCE, &e.to_string());
        }
    }
}

/// What became of a file.
enum Taken {
    /// Applied, or a duplicate moved out, or failed: it is done with.
    Done,
    /// Not taken now (changed while read, cannot be opened): next scan.
    Later,
}

/// Delta files waiting to be applied together.
#[derive(Default)]
struct Batch {
    upserts: HashMap<Box<str>, Counterparty>,
    removals: HashSet<Box<str>>,
    files: Vec<(Candidate, String, usize)>,
    clients: usize,
}

impl Batch {
    /// Adds a file's changes; a later file's change of an id wins.
    fn add(&mut self, file: Candidate, hash: String, parsed: Parsed) {
        for id in parsed.removals {
            self.upserts.remove(&id);
            self.removals.insert(id);
        }
        for record in parsed.upserts {
            self.removals.remove(&record.id);
            self.upserts.insert(record.id.clone(), record);
        }
        self.clients += parsed.clients;
        self.files.push((file, hash, parsed.clients));
    }

    fn is_full(&self) -> bool {
        self.files.len() >= MAX_BATCH_FILES || self.clients >= MAX_BATCH_CLIENTS
    }
}

impl Inner {
    async fn scan(&self) {
        let mut state = self.state.lock().await;
        let settings = &self.settings;
        for (key, dir) in [
            ("servio.archive_dir", &settings.archive_dir),
            ("servio.error_dir", &settings.error_dir),
        ] {
            if let Err(e) = std::fs::create_dir_all(dir) {
                let why = format!("cannot create {key} {}: {e}", dir.display());
                self.report_failure(&why);
                return;
            }
        }
        let list = match folder::candidates(&settings.import_dir) {
            Ok(list) => list,
            Err(e) => {
                let why = format!(
                    "cannot read servio.import_dir {}: {e}",
                    settings.import_dir.display()
                );
                self.report_failure(&why);
                return;
            }
        };
        let list: Vec<Candidate> = list
            .into_iter()
            .filter(|c| self.mapping.rule_for(&c.name).is_some())
            .collect();
        state.settling.keep_only(&list);
        let now = SystemTime::now();
        let mut pending = 0;
        let mut batch = Batch::default();
        for file in list {
            let marker = settings.ready_marker.as_deref();
            if !state.settling.settled(&file, settings.settle, marker, now) {
                pending += 1;
                continue;
            }
            let Some(rule) = self.mapping.rule_for(&file.name).cloned() else {
                continue;
            };
            if let Taken::Later = self.take(file, &rule, &mut batch, &mut state).await {
                pending += 1;
            }
            if batch.is_full() {
                self.apply_batch(std::mem::take(&mut batch), &mut state)
                    .await;
            }
        }
        self.apply_batch(batch, &mut state).await;
        self.metrics.pending.set(pending);
        match &state.failure {
            Some(why) => {
                self.health.failure(SOURCE, why);
            }
            None => {
                if self.health.success(SOURCE) {
                    tracing::info!("SERVIO source working again");
                }
            }
        }
    }

    fn report_failure(&self, why: &str) {
        if self.health.failure(SOURCE, why) {
            tracing::error!("SERVIO: {why}");
        }
    }

    async fn take(
        &self,
        file: Candidate,
        rule: &FileRule,
        batch: &mut Batch,
        state: &mut ScanState,
    ) -> Taken {
        let settings = &self.settings;
        if settings.take == ServioTake::Leave {
            // Left in place: known by name, size and mtime (taken, or found
            // to be a duplicate, before; by this process or an earlier one),
            // not hashed again.
            match self
                .store
                .servio_left_known(&file.name, file.size, file.mtime_ms)
                .await
            {
                Ok(true) => return Taken::Done,
                Ok(false) => {}
                Err(e) => {
                    self.report_failure(&format!("SERVIO ledger cannot be read: {e}"));
                    return Taken::Later;
                }
            }
        }
        let mut handle = match File::open(&file.path) {
            Ok(handle) => handle,
            Err(e) => {
                tracing::warn!(file = %file.name, error = %e, "SERVIO file cannot be opened; tried again at the next scan");
                return Taken::Later;
            }
        };
        if file.size > LIMITS.max_document_bytes {
            return self.refuse_oversized(file, &mut handle, rule, state).await;
        }
        let started = Instant::now();
        let hash = match sha256(&mut handle) {
            Ok(hash) => hash,
            Err(e) => {
                tracing::warn!(file = %file.name, error = %e, "SERVIO file cannot be read; tried again at the next scan");
                return Taken::Later;
            }
        };
        self.observe("hash", started);
        match self.store.servio_file(&hash).await {
            Ok(Some(row)) => {
                self.duplicate(&file, &hash, &row, state).await;
                return Taken::Done;
            }
            Ok(None) => {}
            Err(e) => {
                self.report_failure(&format!("SERVIO ledger cannot be read: {e}"));
                return Taken::Later;
            }
        }
        if let Err(e) = handle.seek(SeekFrom::Start(0)) {
            tracing::warn!(file = %file.name, error = %e, "SERVIO file cannot be read; tried again at the next scan");
            return Taken::Later;
        }
        if rule.mode == Mode::Full {
            // Files apply in order: the deltas before this one first, so
            // that its set is made against the directory they leave.
            self.apply_batch(std::mem::take(batch), state).await;
            let started = Instant::now();
            let read = self.read_full(&handle, rule, &hash);
            self.observe("parse", started);
            if !unchanged_since_taken(&handle, &file) {
                return Taken::Later;
            }
            drop(handle);
            match read {
                Ok((set, clients)) => self.apply_full(file, hash, set, clients, state).await,
                Err(problems) => self.fail(&file, &hash, rule.mode, problems, state).await,
            }
            return Taken::Done;
        }
        let started = Instant::now();
        let parsed = read_records(&handle, rule, &self.mapping, settings.max_records);
        self.observe("parse", started);
        if !unchanged_since_taken(&handle, &file) {
            return Taken::Later;
        }
        drop(handle);
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(problems) => {
                self.fail(&file, &hash, rule.mode, problems, state).await;
                return Taken::Done;
            }
        };
        // A client without a mapped manager is stored without one (here and
        // in `read_full`): its
        // manager (another source's record with the same INN, else
        // `default_manager_phone`) is chosen when a call is answered
        // (`directory::inherited`), so that a manager changed in 1C is
        // followed. A snapshot written before that has the default frozen
        // into such clients' `manager_phone`; it is kept as it is (they
        // answer with the default, as they did) until SERVIO sends the
        // client again.
        batch.add(file, hash, parsed);
        Taken::Done
    }

    /// A file over the size limit, refused before it is read (parsed or
    /// hashed whole). Its ledger key is [`sample_key`]'s: the same file
    /// dropped again, under any name, is known as a duplicate of the refused
    /// one; a different file of the same name is not.
    async fn refuse_oversized(
        &self,
        file: Candidate,
        handle: &mut File,
        rule: &FileRule,
        state: &mut ScanState,
    ) -> Taken {
        let key = match sample_key(handle, file.size) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(file = %file.name, error = %e, "SERVIO file cannot be read; tried again at the next scan");
                return Taken::Later;
            }
        };
        match self.store.servio_file(&key).await {
            Ok(Some(row)) => {
                self.duplicate(&file, &key, &row, state).await;
                return Taken::Done;
            }
            Ok(None) => {}
            Err(e) => {
                self.report_failure(&format!("SERVIO ledger cannot be read: {e}"));
                return Taken::Later;
            }
        }
        let problem = Problem {
            line: 0,
            path: String::new(),
            field: None,
            message: format!(
                "the file is larger than {} bytes ({} bytes): refused before reading",
                LIMITS.max_document_bytes, file.size
            ),
        };
        self.fail(&file, &key, rule.mode, vec![problem], state)
            .await;
        Taken::Done
    }

    /// A file whose bytes (ledger key `key`) were taken before, as `row`:
    /// counted, never applied again; moved out (to `archive_dir`, or
    /// `error_dir` when they were refused), or with `take = leave`
    /// remembered by name, size and mtime so that it is not hashed again.
    async fn duplicate(&self, file: &Candidate, key: &str, row: &LedgerRow, state: &mut ScanState) {
        let settings = &self.settings;
        self.metrics.files.with_label_values(&["duplicate"]).inc();
        tracing::info!(file = %file.name, first = %row.name, outcome = %row.outcome, "SERVIO file already taken (the same bytes): not applied again");
        if settings.take == ServioTake::Leave {
            // Not copied out again: its bytes are out already. Remembered
            // durably; were that to fail, it is hashed again next scan, and
            // found a duplicate again: nothing worse.
            let left = LeftRow {
                name: file.name.clone(),
                size: file.size,
                mtime_ms: file.mtime_ms,
                hash: key.to_owned(),
                at_ms: now_ms(),
            };
            if let Err(e) = self.store.servio_left(left).await {
                tracing::warn!(file = %file.name, error = %e, "SERVIO: a duplicate left in place could not be remembered; it is hashed again at the next scan");
            }
        } else if row.outcome == "applied" {
            self.dispose(file, &settings.archive_dir, None, state);
        } else {
            let text = format!(
                "{}: the same bytes were refused before, as {}; see its .error.txt\n",
                file.name, row.name
            );
            self.dispose(file, &settings.error_dir, Some(text), state);
        }
    }

    /// Reads a full file straight into SERVIO's new directory set, a
    /// [`FULL_CHUNK`] of records at a time, and gives it (not yet put in)
    /// with the number of clients the file had.
    ///
    /// Why not read every record, then `replace_source`: a record read
    /// (a `Counterparty`, a dozen strings) takes more memory than its entry,
    /// and an unchanged client's entry is the one the directory holds
    /// already, so holding all of a 100,000-client file's records at once
    /// was the peak of a re-import (75 MB above the steady RSS). Made as
    /// it is read, the set costs the entries of the clients that changed.
    /// It is the same set `replace_source` would make (the same entries,
    /// fingerprint and swap); a file found bad drops it, changing nothing.
    fn read_full(
        &self,
        handle: &File,
        rule: &FileRule,
        hash: &str,
    ) -> Result<(BuiltSet<'_>, usize), Vec<Problem>> {
        let mut set = self.directory.build_set(SOURCE, SystemTime::now());
        let mut chunk = Vec::with_capacity(FULL_CHUNK);
        let read = read_each(
            handle,
            rule,
            &self.mapping,
            self.settings.max_records,
            &mut |record| {
                chunk.push(record);
                if chunk.len() >= FULL_CHUNK {
                    set.add(std::mem::replace(
                        &mut chunk,
                        Vec::with_capacity(FULL_CHUNK),
                    ));
                }
            },
        )?;
        set.add(chunk);
        Ok((set.finish(Some(hash.to_owned())), read.clients))
    }

    async fn apply_full(
        &self,
        file: Candidate,
        hash: String,
        set: BuiltSet<'_>,
        clients: usize,
        state: &mut ScanState,
    ) {
        let problem = |message: String| Problem {
            line: 0,
            path: String::new(),
            field: None,
            message,
        };
        if set.is_empty() {
            let message = "a full file with no clients is refused: it would empty SERVIO's part of the directory".to_owned();
            return self
                .fail(&file, &hash, Mode::Full, vec![problem(message)], state)
                .await;
        }
        let (removed, previous) = set.removes();
        if previous > 0 {
            let share = removed as f64 / previous as f64;
            if share > self.settings.max_shrink {
                let message = format!(
                    "a full file that would remove {removed} of SERVIO's {previous} clients (more than directory.max_shrink = {}) is refused",
                    self.settings.max_shrink
                );
                return self
                    .fail(&file, &hash, Mode::Full, vec![problem(message)], state)
                    .await;
            }
        }
        let upserts = set.len();
        let started = Instant::now();
        set.put();
        self.observe("apply", started);
        let started = Instant::now();
        let entries = self
            .directory
            .snapshot()
            .source_records(SOURCE)
            .unwrap_or_else(|| Arc::from(Vec::new()));
        if let Err(e) = self.store.replace_source(SOURCE, &hash, entries).await {
            // Not ledgered: the next scan takes the file again.
            self.report_failure(&format!("SERVIO snapshot not saved: {e}"));
            return;
        }
        if !self
            .ledger(&file, &hash, Mode::Full, clients, "applied")
            .await
        {
            return;
        }
        self.observe("save", started);
        self.applied(1, upserts, 0, state);
        self.dispose(&file, &self.settings.archive_dir, None, state);
        tracing::info!(file = %file.name, clients, "SERVIO full file applied");
    }

    async fn apply_batch(&self, batch: Batch, state: &mut ScanState) {
        if batch.files.is_empty() {
            return;
        }
        let upserts: Vec<Counterparty> = batch.upserts.into_values().collect();
        let removals: Vec<Box<str>> = batch.removals.into_iter().collect();
        let (n_up, n_rm) = (upserts.len(), removals.len());
        let started = Instant::now();
        self.directory
            .apply_changes(SOURCE, upserts.clone(), &removals, &[], SystemTime::now());
        self.observe("apply", started);
        let started = Instant::now();
        if let Err(e) = self
            .store
            .apply_changes(SOURCE, Arc::<[Counterparty]>::from(upserts), &removals, &[])
            .await
        {
            self.report_failure(&format!("SERVIO snapshot not saved: {e}"));
            return;
        }
        for (file, hash, clients) in &batch.files {
            if !self
                .ledger(file, hash, Mode::Delta, *clients, "applied")
                .await
            {
                return;
            }
        }
        self.observe("save", started);
        self.applied(batch.files.len(), n_up, n_rm, state);
        for (file, _, clients) in &batch.files {
            self.dispose(file, &self.settings.archive_dir, None, state);
            tracing::info!(file = %file.name, clients, "SERVIO delta file applied");
        }
    }

    fn applied(&self, files: usize, upserts: usize, removals: usize, state: &mut ScanState) {
        let m = &self.metrics;
        m.files.with_label_values(&["applied"]).inc_by(files as u64);
        m.records
            .with_label_values(&["upsert"])
            .inc_by(upserts as u64);
        m.records
            .with_label_values(&["remove"])
            .inc_by(removals as u64);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        m.last_applied.set(i64::try_from(now).unwrap_or(i64::MAX));
        state.failure = None;
        // At once, not at the scan's end: whoever sees the file archived
        // sees the source's state too.
        if self.health.success(SOURCE) {
            tracing::info!("SERVIO source working again");
        }
    }

    /// Writes a ledger row; false (and the source failing) when it could not be.
    async fn ledger(
        &self,
        file: &Candidate,
        hash: &str,
        mode: Mode,
        records: usize,
        outcome: &str,
    ) -> bool {
        let row = LedgerRow {
            hash: hash.to_owned(),
            name: file.name.clone(),
            size: file.size,
            mtime_ms: file.mtime_ms,
            mode: mode.as_str().to_owned(),
            records: records as u64,
            outcome: outcome.to_owned(),
            at_ms: now_ms(),
        };
        match self.store.servio_ledger(row).await {
            Ok(()) => true,
            Err(e) => {
                self.report_failure(&format!("SERVIO ledger not written: {e}"));
                false
            }
        }
    }

    /// A file refused: ledgered as failed, moved (or copied) to `error_dir`
    /// with `<name>.error.txt`, the source failing with its first problem.
    async fn fail(
        &self,
        file: &Candidate,
        hash: &str,
        mode: Mode,
        problems: Vec<Problem>,
        state: &mut ScanState,
    ) {
        self.metrics.files.with_label_values(&["failed"]).inc();
        let mut text = format!(
            "{}: refused; nothing of it was applied. The first {} problems:\n",
            file.name,
            problems.len().min(MAX_PROBLEMS)
        );
        for problem in problems.iter().take(MAX_PROBLEMS) {
            text.push_str(&format!("{}: {problem}\n", file.name));
        }
        let first = problems
            .first()
            .map_or_else(String::new, ToString::to_string);
        let why = format!("file {}: {first}", file.name);
        tracing::error!(file = %file.name, problems = problems.len(), first = %first, "SERVIO file refused; moved to servio.error_dir");
        self.ledger(file, hash, mode, 0, "failed").await;
        self.health.failure(SOURCE, &why);
        state.failure = Some(why);
        self.dispose(file, &self.settings.error_dir, Some(text), state);
    }

    /// Moves (`take = move`) or copies (`take = leave`) a taken file to
    /// `dir` as `<UTC time>-<name>`, with `error_text` beside it as
    /// `<that name>.error.txt`. A file that cannot be moved fails the
    /// source with the OS error; it is ledgered already, so it is not
    /// applied again.
    fn dispose(
        &self,
        file: &Candidate,
        dir: &Path,
        error_text: Option<String>,
        state: &mut ScanState,
    ) {
        let name = folder::archived_name(&file.name, SystemTime::now());
        let to = dir.join(&name);
        let moved = match self.settings.take {
            ServioTake::Move => folder::move_file(&file.path, &to),
            ServioTake::Leave => folder::copy_file(&file.path, &to),
        };
        if let Err(e) = moved {
            let why = format!(
                "file {} could not be {} to {}: {e}",
                file.name,
                if self.settings.take == ServioTake::Move {
                    "moved"
                } else {
                    "copied"
                },
                to.display()
            );
            tracing::error!("SERVIO: {why}");
            state.failure = Some(why);
            return;
        }
        if let Some(text) = error_text {
            if let Err(e) = std::fs::write(dir.join(format!("{name}.error.txt")), text) {
                tracing::warn!(file = %file.name, error = %e, "SERVIO: the .error.txt could not be written");
            }
        }
        if self.settings.take == ServioTake::Move {
            if let Some(marker) = &self.settings.ready_marker {
                let _ = std::fs::remove_file(
                    file.path
                        .with_file_name(marker.replace("{name}", &file.name)),
                );
            }
        }
    }

    fn observe(&self, stage: &str, started: Instant) {
        self.metrics
            .seconds
            .with_label_values(&[stage])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Now, unix ms.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Bytes of an oversized file's start and of its end that [`sample_key`] reads.
const SAMPLE_BYTES: u64 = 1 << 20;

/// The ledger key of a file too large to be read: `sample:` and the
/// SHA-256, lowercase hex, of its size (8 bytes, little-endian), its first
/// and its last MiB. Bounded (2 MiB read, whatever the size) and stable:
/// the same file dropped again under any name or mtime has the same key,
/// and a file of other bytes (a new export of the same name) almost surely
/// not. Two different files that agree in size, first and last MiB would
/// share a key; the second would then be called a duplicate of the first,
/// which was refused, and be refused too: what it would have been anyway,
/// being as large. Not the whole-file hash (SHA-256 of every byte) that
/// other files are keyed by, nor ever equal to one (the prefix).
fn sample_key(input: &mut File, size: u64) -> std::io::Result<String> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&size.to_le_bytes());
    let mut buf = vec![0u8; 64 * 1024];
    for start in [0, size.saturating_sub(SAMPLE_BYTES)] {
        input.seek(SeekFrom::Start(start))?;
        let mut part = input.by_ref().take(SAMPLE_BYTES);
        loop {
            let n = match part.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            context.update(&buf[..n]);
        }
    }
    Ok(format!("sample:{}", hex(context.finish().as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the file read through `handle` still has the size and mtime it
/// was taken with; if not, it is left for the next scan.
fn unchanged_since_taken(handle: &File, file: &Candidate) -> bool {
    let unchanged = handle
        .metadata()
        .is_ok_and(|m| m.len() == file.size && folder::mtime_ms(&m) == file.mtime_ms);
    if !unchanged {
        tracing::info!(file = %file.name, "SERVIO file changed while it was read; taken once it has settled again");
    }
    unchanged
}

/// SHA-256 of what `input` holds from where it stands, lowercase hex.
fn sha256(input: &mut impl Read) -> std::io::Result<String> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        context.update(&buf[..n]);
    }
    Ok(hex(context.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_files_key_reads_its_size_start_and_end_only() {
        let dir = tempfile::tempdir().expect("dir");
        let key = |bytes: &[u8]| {
            let path = dir.path().join("f");
            std::fs::write(&path, bytes).expect("write");
            let mut file = File::open(&path).expect("open");
            sample_key(&mut file, bytes.len() as u64).expect("key")
        };
        let len = 3 * SAMPLE_BYTES as usize;
        let base = vec![b'a'; len];
        let same = key(&base);
        assert!(
            same.starts_with("sample:") && same.len() == 7 + 64,
            "{same}"
        );
        assert_eq!(key(&base), same, "stable");
        let mut middle = base.clone();
        middle[len / 2] = b'b';
        assert_eq!(key(&middle), same, "the middle is not read");
        for at in [0, len - 1] {
            let mut other = base.clone();
            other[at] = b'b';
            assert_ne!(key(&other), same, "byte {at}");
        }
        assert_ne!(key(&base[..len - 1]), same, "the size");
    }

    #[test]
    fn sha256_of_a_stream() {
        let mut empty: &[u8] = b"";
        assert_eq!(
            sha256(&mut empty).expect("hash"),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let big = vec![b'a'; 200_000];
        let mut input: &[u8] = &big;
        let whole = ring::digest::digest(&ring::digest::SHA256, &big);
        let hex: String = whole.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sha256(&mut input).expect("hash"), hex);
    }
}
