//! The JSON Lines file source: the demo directory, or any export a site
//! drops on disk. One counterparty per line, in the shape of the contract.
//!
//! A file is taken whole or not at all:
//! - a changed file is read only once it has stayed the same over two checks
//!   `directory.settle` apart (`settle.rs`), so an export written in place
//!   in pieces is never taken half done;
//! - one bad line fails the load, names the line, and the directory keeps
//!   serving what it had;
//! - an empty file, or one that would remove more than
//!   `directory.max_shrink` of the source's records, is refused until an
//!   operator accepts it (`guard.rs`, [`FileSource::accept`]).

mod guard;
mod settle;

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

pub use guard::Refusal;
use settle::{stamp, FileStamp, Pending, Settle, Step};

use super::{SnapshotSaver, SnapshotSavers, SourceHealth};
use crate::config::DirectoryConfig;
use crate::directory::{Counterparty, Directory, ReplaceReport};
use crate::logging::RequestId;
use crate::metrics::Metrics;
use crate::store::Store;

/// The name this source's records carry in the directory and the store.
pub const SOURCE: &str = "file";
/// Longest line accepted: a record is a few hundred bytes.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Largest file accepted (about four million records).
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    /// A line of the file that is not a counterparty: its number, the
    /// column (bytes, from 1) where JSON reading stopped when it did, and
    /// why, named once (serde's own "at line 1 column N", which counts in
    /// the line alone, is left out).
    #[error("line {line}{}: {problem}", at_column(.column))]
    Line {
        line: usize,
        column: Option<usize>,
        problem: String,
    },
    /// Not a failure of the file: it is read again once it has settled.
    #[error("{path} changed while it was read; it is read again once it has not changed for directory.settle")]
    ChangedWhileRead { path: PathBuf },
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// An accept asked for before the snapshot is loaded (which would
    /// replace what the accept took).
    #[error("the gateway is starting (the snapshot is not loaded yet); try again in a moment")]
    Starting,
}

/// Parses a whole JSON Lines document. Blank lines are skipped.
pub fn parse_jsonl(bytes: &[u8]) -> Result<Vec<Counterparty>, FileError> {
    let line_err = |line: usize, problem: String| FileError::Line {
        line,
        column: None,
        problem,
    };
    let mut records = Vec::with_capacity(bytes.len() / 256);
    let mut first_seen: HashMap<Box<str>, usize> = HashMap::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.len() > MAX_LINE_BYTES {
            return Err(line_err(
                line,
                format!("longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        let text =
            std::str::from_utf8(raw).map_err(|_| line_err(line, "not valid UTF-8".into()))?;
        let trimmed = text.trim_start_matches('\u{feff}').trim();
        if trimmed.is_empty() {
            continue;
        }
        // serde counts columns in the trimmed text: the file's start with it.
        let leading = text.len() - text.trim_start_matches('\u{feff}').trim_start().len();
        let text = trimmed;
        let record: Counterparty = serde_json::from_str(text).map_err(|e| FileError::Line {
            line,
            column: (e.column() > 0).then(|| leading + e.column()),
            problem: without_position(&line_problem(text, &e)),
        })?;
        record
            .validate()
            .map_err(|e| line_err(line, format!("{e} (id {:?})", record.id)))?;
        if let Some(first) = first_seen.insert(record.id.clone(), line) {
            return Err(line_err(
                line,
                format!("id {:?} was already used on line {first}", record.id),
            ));
        }
        records.push(record);
    }
    Ok(records)
}

/// Why a line that is JSON does not read as a counterparty, naming the
/// field at fault and the id (as the push API's 422 does): serde names a
/// missing or unknown field, not one whose value is wrong (`"kind":"company"`).
fn line_problem(text: &str, error: &serde_json::Error) -> String {
    let found = super::push::diagnose_text(text, error);
    let mut problem = match &found.field {
        Some(field) if !found.problem.contains(&format!("`{field}`")) => {
            format!("field `{field}`: {}", found.problem)
        }
        _ => found.problem,
    };
    if let Some(id) = found.id {
        problem.push_str(&format!(" (id {id:?})"));
    }
    problem
}

/// ", column N" when the column is known.
fn at_column(column: &Option<usize>) -> String {
    column.map_or_else(String::new, |c| format!(", column {c}"))
}

/// serde_json's message without its " at line L column C" ending: that
/// position counts in the line alone (always line 1), or in a record
/// rebuilt to find the faulty field; the file's own is said once, by
/// [`FileError::Line`].
fn without_position(problem: &str) -> String {
    let Some(at) = problem.rfind(" at line ") else {
        return problem.to_owned();
    };
    let rest = &problem[at + " at line ".len()..];
    let Some((line, after)) = rest.split_once(" column ") else {
        return problem.to_owned();
    };
    let column_len = after.bytes().take_while(u8::is_ascii_digit).count();
    if line.is_empty() || !line.bytes().all(|b| b.is_ascii_digit()) || column_len == 0 {
        return problem.to_owned();
    }
    format!("{}{}", &problem[..at], &after[column_len..])
}

/// A content fingerprint: unchanged content is not parsed or snapshotted again.
fn fingerprint(bytes: &[u8]) -> String {
    // SipHash with fixed keys: stable within a build, which is all this needs
    // (a different fingerprint after an upgrade only costs one re-read).
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    format!("{}-{:016x}", bytes.len(), h.finish())
}

/// [`fingerprint`] of a file's content, read in pieces. SipHash is a
/// stream: hashing the pieces in order equals hashing the whole.
fn fingerprint_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut h = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
        len += n as u64;
    }
    Ok(format!("{len}-{:016x}", h.finish()))
}

/// The file source's settings: `[directory]`.
#[derive(Debug, Clone)]
pub struct FileSettings {
    pub path: PathBuf,
    /// How often the file is checked ("0s": only on SIGHUP).
    pub watch_interval: Duration,
    /// How long a change must stay the same before it is read.
    pub settle: Duration,
    /// The largest share of the source's records one version may remove.
    pub max_shrink: f64,
}

impl FileSettings {
    /// The settings of `[directory]`; `None` when it names no file.
    pub fn from_config(config: &DirectoryConfig) -> Option<FileSettings> {
        Some(FileSettings {
            path: config.file.clone()?,
            watch_interval: config.watch_interval,
            settle: config.settle,
            max_shrink: config.max_shrink,
        })
    }
}

/// What a load did: the replacement (`None` when the content was already
/// loaded) and the source's record counts before and after.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub report: Option<ReplaceReport>,
    pub previous: usize,
    pub records: usize,
}

/// Whether a load applies the guard against gutting files (`guard.rs`).
#[derive(Debug, Clone, Copy)]
enum Guard {
    Apply {
        max_shrink: f64,
    },
    /// An operator's `accept-file`: the file is taken as it is.
    Off,
}

pub struct FileSource {
    settings: FileSettings,
    /// The stamp of the file as last read (taken, refused or failed), so a
    /// change made between the first load and the start of the watcher is
    /// not missed, and a refused file is not read again until it changes.
    last_read: Mutex<Option<FileStamp>>,
    /// Serializes loads: the watcher's and an operator's accept.
    loading: tokio::sync::Mutex<()>,
    /// Set once the start-up load begins (the snapshot is loaded by then).
    started: AtomicBool,
    saver: Arc<SnapshotSaver>,
    directory: Arc<Directory>,
    health: Arc<SourceHealth>,
    metrics: Arc<Metrics>,
}

impl FileSource {
    pub fn new(
        settings: FileSettings,
        directory: Arc<Directory>,
        store: Store,
        health: Arc<SourceHealth>,
        metrics: Arc<Metrics>,
        savers: &SnapshotSavers,
    ) -> FileSource {
        let saver = Arc::new(SnapshotSaver::new(SOURCE, Arc::clone(&directory), store));
        savers.register(Arc::clone(&saver));
        FileSource {
            settings,
            last_read: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
            started: AtomicBool::new(false),
            saver,
            directory,
            health,
            metrics,
        }
    }

    pub fn path(&self) -> &Path {
        &self.settings.path
    }

    fn last_read(&self) -> Option<FileStamp> {
        *self.last_read.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first load, once the snapshot is loaded. A file last modified
    /// `settle` ago or earlier is read at once; a younger one when it is
    /// `settle` old, if it has not changed meanwhile (else the watcher
    /// reads it once it settles).
    pub async fn load_at_start(&self) {
        self.started.store(true, Ordering::Release);
        let settle = self.settings.settle;
        if let Some(first) = stamp(self.path()).filter(|_| !settle.is_zero()) {
            if !first.older_than(settle, SystemTime::now()) {
                tokio::time::sleep(first.until_settled(settle, SystemTime::now())).await;
                if stamp(self.path()) != Some(first) {
                    tracing::info!(path = %self.path().display(), settle = ?settle, "directory file is being written; it is read once it has not changed for directory.settle");
                    return;
                }
            }
        }
        let _ = self.load().await;
    }

    /// Reads the file now and, when its content differs from what the
    /// directory holds for this source and passes the guard, replaces the
    /// source's records and updates the snapshot. `Ok(None)`: the content
    /// was already loaded.
    pub async fn load(&self) -> Result<Option<ReplaceReport>, FileError> {
        let guard = Guard::Apply {
            max_shrink: self.settings.max_shrink,
        };
        self.load_as(guard, None).await.map(|loaded| loaded.report)
    }

    /// An operator's `accept-file`: takes the file as it is now, once,
    /// without the guard (an empty file or one that removes most records
    /// included). Errors: the file cannot be read or is not valid.
    pub async fn accept(&self, request: RequestId) -> Result<Loaded, FileError> {
        if !self.started.load(Ordering::Acquire) {
            return Err(FileError::Starting);
        }
        self.load_as(Guard::Off, Some(request)).await
    }

    /// `request`: the admin's request that asked for the load, which its
    /// log lines name; `None` for the source's own loads.
    async fn load_as(&self, guard: Guard, request: Option<RequestId>) -> Result<Loaded, FileError> {
        let _loading = self.loading.lock().await;
        let path = self.settings.path.clone();
        let directory = Arc::clone(&self.directory);
        let read =
            tokio::task::spawn_blocking(move || read_and_replace(&path, &directory, guard)).await;
        let result = match read {
            Ok((before, result)) => {
                if !matches!(result, Err(FileError::ChangedWhileRead { .. })) {
                    *self.last_read.lock().unwrap_or_else(|p| p.into_inner()) = before;
                }
                result
            }
            Err(e) => Err(FileError::Io {
                path: self.settings.path.clone(),
                source: std::io::Error::other(e),
            }),
        };
        self.record(&result, guard, request);
        if let Ok(Loaded {
            report: Some(_), ..
        }) = &result
        {
            self.saver.save();
        }
        result
    }

    /// Logs, counts and reports to `/readyz` what a load did.
    fn record(&self, result: &Result<Loaded, FileError>, guard: Guard, request: Option<RequestId>) {
        let path = self.path().display();
        // Absent from the lines of the source's own loads.
        let request_id = request.map(tracing::field::display);
        let reloads = |outcome: &str| {
            self.metrics
                .directory_reloads
                .with_label_values(&[SOURCE, outcome])
                .inc()
        };
        match result {
            Ok(loaded) => {
                if self.health.success(SOURCE) {
                    tracing::info!(path = %path, request_id, "directory file loaded again after failures");
                }
                let Some(report) = &loaded.report else {
                    return;
                };
                reloads("ok");
                let accepted = matches!(guard, Guard::Off);
                tracing::info!(
                    path = %path,
                    records = report.records,
                    previous = loaded.previous,
                    total = report.total_records,
                    phones = report.phones,
                    ambiguous_phones = report.ambiguous_phones,
                    unusable_phones = report.unusable_phones,
                    accepted,
                    request_id,
                    "directory file loaded"
                );
            }
            Err(FileError::ChangedWhileRead { .. }) => {
                tracing::debug!(path = %path, request_id, "directory file changed while read; read again once settled");
            }
            Err(FileError::Starting) => {}
            Err(e @ FileError::Refused(_)) => {
                reloads("refused");
                self.health.failure(SOURCE, &e.to_string());
                // Every refusal is logged: one happens only when the file
                // changed (or on SIGHUP), never on every check.
                tracing::warn!(path = %path, request_id, "directory file refused: {e}");
            }
            Err(e) => {
                reloads("error");
                if self.health.failure(SOURCE, &e.to_string()) {
                    tracing::error!(path = %path, error = %e, request_id, "directory file not loaded; serving the directory as it was");
                }
            }
        }
    }

    /// Watches the file until `shutdown`: reads it once a change (of size,
    /// modification time or inode) has stayed the same over
    /// `directory.settle`, and on `reload` (SIGHUP) once it is settled too;
    /// the guard applies either way.
    pub async fn run(
        self: Arc<Self>,
        mut reload: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let rule = Settle {
            settle: self.settings.settle,
        };
        let mut ticker = (!self.settings.watch_interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(self.settings.watch_interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        // A file the start left to settle (it was being written) is checked from now.
        let first = rule.first(stamp(self.path()), self.last_read(), false, Instant::now());
        let mut pending = self.act(first, rule).await;
        loop {
            let due = pending.map(|p| p.due);
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => {
                    self.saver.finish().await;
                    return;
                }
                changed = reload.changed() => {
                    if changed.is_err() {
                        return; // the gateway is gone
                    }
                    tracing::info!(path = %self.path().display(), "reload requested");
                    let step = rule.first(stamp(self.path()), self.last_read(), true, Instant::now());
                    pending = self.act(step, rule).await;
                }
                () = tick, if pending.is_none() => {
                    let step = rule.first(stamp(self.path()), self.last_read(), false, Instant::now());
                    pending = self.act(step, rule).await;
                }
                () = sleep_until(due) => {
                    if let Some(seen) = pending {
                        let step = rule.second(seen, stamp(self.path()), Instant::now());
                        pending = self.act(step, rule).await;
                    }
                }
            }
        }
    }

    /// Carries out a check's decision; the change still to check, if any.
    async fn act(&self, step: Step, rule: Settle) -> Option<Pending> {
        match step {
            Step::Idle => None,
            Step::Wait(pending) => Some(pending),
            Step::Read => match self.load().await {
                // Written to while read: it has not settled after all.
                Err(FileError::ChangedWhileRead { .. }) => {
                    Some(rule.restart(stamp(self.path()), Instant::now()))
                }
                _ => None,
            },
        }
    }
}

/// Sleeps until `due`; forever when there is none.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Reads the file at `path` and, when its content is new and passes
/// `guard`, replaces the source's records with it. Blocking (reading,
/// hashing, parsing, building the index). Returns the file's stamp from
/// before the read, beside the outcome.
fn read_and_replace(
    path: &Path,
    directory: &Directory,
    guard: Guard,
) -> (Option<FileStamp>, Result<Loaded, FileError>) {
    let before = match std::fs::metadata(path) {
        Ok(meta) => FileStamp::of(&meta),
        Err(source) => {
            let path = path.to_owned();
            return (None, Err(FileError::Io { path, source }));
        }
    };
    (Some(before), read_stamped(path, before, directory, guard))
}

fn read_stamped(
    path: &Path,
    before: FileStamp,
    directory: &Directory,
    guard: Guard,
) -> Result<Loaded, FileError> {
    let io_err = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    if before.len() > MAX_FILE_BYTES {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
        });
    }
    let index = directory.snapshot();
    let previous = index.source_records(SOURCE);
    let held = previous.as_ref().map_or(0, |p| p.len());
    let loaded = |print: &str| {
        index
            .source(SOURCE)
            .is_some_and(|s| s.fingerprint.as_deref() == Some(print))
    };
    let unchanged = Loaded {
        report: None,
        previous: held,
        records: held,
    };
    // Hashing streams the file: an unchanged file (every restart) is
    // never held in memory whole.
    if loaded(&fingerprint_file(path).map_err(io_err)?) {
        return Ok(unchanged);
    }
    let bytes = std::fs::read(path).map_err(io_err)?;
    if stamp(path) != Some(before) {
        return Err(FileError::ChangedWhileRead {
            path: path.to_owned(),
        });
    }
    let print = fingerprint(&bytes);
    if loaded(&print) {
        return Ok(unchanged);
    }
    let records = parse_jsonl(&bytes)?;
    drop(bytes);
    if let Guard::Apply { max_shrink } = guard {
        guard::check(previous.as_deref(), &records, max_shrink)?;
    }
    drop((previous, index));
    let faults = directory.check_requisites(SOURCE, &records);
    let report = directory.replace_source(SOURCE, records, Some(print), SystemTime::now());
    directory.count_requisite_faults(SOURCE, &faults);
    super::log_requisite_faults(SOURCE, &faults);
    Ok(Loaded {
        previous: held,
        records: report.records,
        report: Some(report),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_skips_blank_ones() {
        let text = "{\"id\":\"1\",\"name\":\"A\",\"phones\":[\"+7 916 555-55-55\"]}\n\n\u{feff}{\"id\":\"2\",\"name\":\"B\"}\r\n";
        let records = parse_jsonl(text.as_bytes()).expect("valid");
        assert_eq!(records.len(), 2);
        assert_eq!(&*records[1].name, "B");
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = "{\"id\":\"1\",\"name\":\"A\"}\n{\"id\":\"2\",\"nam\":\"B\"}\n";
        let err = parse_jsonl(text.as_bytes()).expect_err("bad field");
        let msg = err.to_string();
        assert!(msg.starts_with("line 2") && msg.contains("nam"), "{msg}");
    }

    #[test]
    fn a_broken_line_names_its_line_and_column_once() {
        // Issue #16: "line 51: … at line 1 column 31". The `o` is byte 21 of
        // the line (two spaces the column counts, though serde never saw them).
        let text = "{\"id\":\"1\",\"name\":\"A\"}\n  {\"id\":\"2\",\"name\": oops}\n";
        let msg = parse_jsonl(text.as_bytes())
            .expect_err("broken")
            .to_string();
        assert!(msg.starts_with("line 2, column 21: "), "{msg}");
        assert!(!msg.contains(" at line "), "{msg}");
        assert_eq!(msg.matches("column").count(), 1, "{msg}");
        assert_eq!(
            without_position("expected value at line 1 column 19"),
            "expected value"
        );
        assert_eq!(
            without_position("missing field `name`"),
            "missing field `name`"
        );
    }

    #[test]
    fn a_mistyped_new_field_refuses_the_file_naming_line_field_and_id() {
        for (line, field) in [
            (r#"{"id":"k","name":"A","kind":"company"}"#, "kind"),
            (
                r#"{"id":"k","name":"A","links":[{"system":"b","kind":"c","url":"javascript:x"}]}"#,
                "links",
            ),
            (
                r#"{"id":"k","name":"A","ogrnip":304500116000157}"#,
                "ogrnip",
            ),
        ] {
            let text = format!("{{\"id\":\"1\",\"name\":\"A\"}}\n{line}\n");
            let msg = parse_jsonl(text.as_bytes()).expect_err(line).to_string();
            assert!(
                msg.starts_with("line 2")
                    && msg.contains(&format!("`{field}`"))
                    && msg.contains("\"k\""),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_mistyped_inn_keeps_the_file() {
        let text = "{\"id\":\"1\",\"name\":\"A\",\"inn\":\"7707083894\",\"kpp\":\"x\"}\n";
        assert_eq!(parse_jsonl(text.as_bytes()).expect("kept").len(), 1);
    }

    #[test]
    fn a_truncated_last_line_fails_the_whole_file() {
        let text = "{\"id\":\"1\",\"name\":\"A\"}\n{\"id\":\"2\",\"na";
        assert!(matches!(
            parse_jsonl(text.as_bytes()),
            Err(FileError::Line { line: 2, .. })
        ));
    }

    #[test]
    fn repeated_ids_are_refused() {
        let text = "{\"id\":\"1\",\"name\":\"A\"}\n{\"id\":\"1\",\"name\":\"B\"}\n";
        let msg = parse_jsonl(text.as_bytes()).expect_err("dup").to_string();
        assert!(msg.contains("already used on line 1"), "{msg}");
    }

    #[test]
    fn empty_name_and_invalid_utf8_are_refused() {
        assert!(parse_jsonl(b"{\"id\":\"1\",\"name\":\"\"}").is_err());
        assert!(parse_jsonl(b"{\"id\":\"1\",\"name\":\"\xff\"}").is_err());
    }

    #[test]
    fn the_shipped_demo_directory_parses() {
        let demo = include_bytes!("../../data/demo/counterparties.jsonl");
        let records = parse_jsonl(demo).expect("demo file must be valid");
        assert!(records.len() >= 40, "{} records", records.len());
    }

    #[test]
    fn streamed_fingerprint_equals_the_whole_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f.jsonl");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        assert_eq!(
            fingerprint_file(&path).expect("read"),
            fingerprint(&content)
        );
    }

    #[test]
    fn fingerprint_changes_with_content() {
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
    }
}
