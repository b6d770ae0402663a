//! The JSON Lines file source: the demo directory, or any export a site
//! drops on disk. One counterparty per line, in the shape of the contract.
//!
//! A file is taken whole or not at all: one bad line fails the reload, names
//! the line, and the directory keeps serving what it had. A half-written
//! file (an export still in progress) therefore never empties the directory;
//! the next check after the writer finishes picks it up.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{SnapshotSaver, SnapshotSavers, SourceHealth};
use crate::directory::{Counterparty, Directory, ReplaceReport};
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
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
}

/// Parses a whole JSON Lines document. Blank lines are skipped.
pub fn parse_jsonl(bytes: &[u8]) -> Result<Vec<Counterparty>, FileError> {
    let line_err = |line: usize, problem: String| FileError::Line { line, problem };
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
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        let record: Counterparty =
            serde_json::from_str(text).map_err(|e| line_err(line, e.to_string()))?;
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

/// Size and modification time: what the watcher compares between checks.
type FileStamp = Option<(u64, Option<SystemTime>)>;

fn stamp(path: &Path) -> FileStamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
}

pub struct FileSource {
    path: PathBuf,
    /// The stamp of the file as last read, so a change made between the
    /// first load and the start of the watcher is not missed.
    last_read: std::sync::Mutex<FileStamp>,
    saver: Arc<SnapshotSaver>,
    interval: Duration,
    directory: Arc<Directory>,
    health: Arc<SourceHealth>,
    metrics: Arc<Metrics>,
}

impl FileSource {
    pub fn new(
        path: PathBuf,
        interval: Duration,
        directory: Arc<Directory>,
        store: Store,
        health: Arc<SourceHealth>,
        metrics: Arc<Metrics>,
        savers: &SnapshotSavers,
    ) -> FileSource {
        let saver = Arc::new(SnapshotSaver::new(SOURCE, Arc::clone(&directory), store));
        savers.register(Arc::clone(&saver));
        FileSource {
            path,
            last_read: std::sync::Mutex::new(None),
            saver,
            interval,
            directory,
            health,
            metrics,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file and, when its content differs from what the directory
    /// holds for this source, replaces the source's records and updates the
    /// snapshot. `Ok(None)`: the content was already loaded.
    pub async fn load(&self) -> Result<Option<ReplaceReport>, FileError> {
        let result = self.load_inner().await;
        match &result {
            Ok(report) => {
                if self.health.success(SOURCE) {
                    tracing::info!(path = %self.path.display(), "directory file readable again");
                }
                if report.is_some() {
                    self.metrics
                        .directory_reloads
                        .with_label_values(&[SOURCE, "ok"])
                        .inc();
                }
            }
            Err(e) => {
                self.metrics
                    .directory_reloads
                    .with_label_values(&[SOURCE, "error"])
                    .inc();
                if self.health.failure(SOURCE, &e.to_string()) {
                    tracing::error!(path = %self.path.display(), error = %e, "directory file not loaded; serving the directory as it was");
                }
            }
        }
        result
    }

    async fn load_inner(&self) -> Result<Option<ReplaceReport>, FileError> {
        let path = self.path.clone();
        let io_err = |source| FileError::Io {
            path: path.clone(),
            source,
        };
        let meta = tokio::fs::metadata(&path).await;
        *self.last_read.lock().unwrap_or_else(|p| p.into_inner()) =
            meta.as_ref().ok().map(|m| (m.len(), m.modified().ok()));
        let meta = meta.map_err(io_err)?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(FileError::TooLarge { path });
        }
        let directory = Arc::clone(&self.directory);
        let outcome = tokio::task::spawn_blocking(move || -> Result<_, FileError> {
            let io_err = |source| FileError::Io {
                path: path.clone(),
                source,
            };
            let loaded = |print: &str| {
                directory
                    .snapshot()
                    .source(SOURCE)
                    .is_some_and(|s| s.fingerprint.as_deref() == Some(print))
            };
            // Hashing streams the file: an unchanged file (every restart) is
            // never held in memory whole.
            if loaded(&fingerprint_file(&path).map_err(io_err)?) {
                return Ok(None);
            }
            let bytes = std::fs::read(&path).map_err(io_err)?;
            let print = fingerprint(&bytes);
            if loaded(&print) {
                return Ok(None);
            }
            let records = parse_jsonl(&bytes)?;
            drop(bytes);
            let report = directory.replace_source(SOURCE, records, Some(print), SystemTime::now());
            Ok(Some(report))
        })
        .await
        .map_err(|e| FileError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })??;
        let Some(report) = outcome else {
            return Ok(None);
        };
        tracing::info!(
            path = %self.path.display(),
            records = report.records,
            total = report.total_records,
            phones = report.phones,
            ambiguous_phones = report.ambiguous_phones,
            unusable_phones = report.unusable_phones,
            "directory file loaded"
        );
        self.saver.save();
        Ok(Some(report))
    }

    /// Watches the file until `shutdown`: reloads when its size or
    /// modification time changes, and whenever `reload` changes (SIGHUP).
    pub async fn run(self, mut reload: watch::Receiver<u64>, mut shutdown: watch::Receiver<bool>) {
        let last_read = || *self.last_read.lock().unwrap_or_else(|p| p.into_inner());
        let mut ticker = (!self.interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(self.interval);
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
                _ = shutdown.changed() => {
                    self.saver.finish().await;
                    return;
                }
                changed = reload.changed() => {
                    if changed.is_err() {
                        return; // the gateway is gone
                    }
                    tracing::info!(path = %self.path.display(), "reload requested");
                    let _ = self.load().await;
                }
                () = tick => {
                    if stamp(&self.path) != last_read() {
                        let _ = self.load().await;
                    }
                }
            }
        }
    }
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
        assert!(msg.starts_with("line 2:") && msg.contains("nam"), "{msg}");
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
