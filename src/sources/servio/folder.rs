//! The folders: which files of `import_dir` are candidates, when a file is
//! settled, and moving or copying a file out (across file systems too).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A file of `import_dir` that may be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub name: String,
    pub size: u64,
    /// Modification time, unix ms.
    pub mtime_ms: i64,
}

/// Regular files of `dir` (symlinks, dot-files, `*.tmp`, `*.part` left
/// out), oldest modification time first, then by name.
pub fn candidates(dir: &Path) -> io::Result<Vec<Candidate>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not UTF-8: no pattern can name it
        };
        let lower = name.to_lowercase();
        if name.starts_with('.') || lower.ends_with(".tmp") || lower.ends_with(".part") {
            continue;
        }
        // `DirEntry::metadata` does not follow symlinks.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.file_type().is_file() {
            continue;
        }
        found.push(Candidate {
            path: entry.path(),
            name,
            size: meta.len(),
            mtime_ms: mtime_ms(&meta),
        });
    }
    found.sort_by(|a, b| (a.mtime_ms, &a.name).cmp(&(b.mtime_ms, &b.name)));
    Ok(found)
}

pub fn mtime_ms(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// When files are settled: their size and modification time held over two
/// scans `settle` apart, or their modification time is `settle` old already
/// (a file being written has a fresh one), or their ready marker exists.
#[derive(Debug, Default)]
pub struct Settling {
    /// Each file seen unsettled: its size and mtime, and when first seen so.
    seen: HashMap<PathBuf, (u64, i64, SystemTime)>,
}

impl Settling {
    pub fn settled(
        &mut self,
        file: &Candidate,
        settle: Duration,
        marker: Option<&str>,
        now: SystemTime,
    ) -> bool {
        if let Some(marker) = marker {
            let marker = marker.replace("{name}", &file.name);
            return file.path.with_file_name(marker).exists();
        }
        if settle.is_zero() {
            return true;
        }
        let settle_ms = i64::try_from(settle.as_millis()).unwrap_or(i64::MAX);
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        if file.mtime_ms.saturating_add(settle_ms) <= now_ms {
            self.seen.remove(&file.path);
            return true;
        }
        match self.seen.get(&file.path) {
            Some((size, mtime, since))
                if *size == file.size
                    && *mtime == file.mtime_ms
                    && now.duration_since(*since).unwrap_or_default() >= settle =>
            {
                self.seen.remove(&file.path);
                true
            }
            Some((size, mtime, _)) if *size == file.size && *mtime == file.mtime_ms => false,
            _ => {
                self.seen
                    .insert(file.path.clone(), (file.size, file.mtime_ms, now));
                false
            }
        }
    }

    /// Forgets files no longer in the folder.
    pub fn keep_only(&mut self, present: &[Candidate]) {
        self.seen
            .retain(|path, _| present.iter().any(|c| &c.path == path));
    }
}

/// `<UTC time>-<name>`, e.g. `20261205T110702.123Z-Clients.xml`.
pub fn archived_name(name: &str, now: SystemTime) -> String {
    let ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:03}Z-{name}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Moves `from` to `to`: a rename, or across file systems a copy, fsync
/// and delete.
pub fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_file(from, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

/// Copies `from` to `to` and makes the copy durable.
pub fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    fs::copy(from, to)?;
    File::open(to)?.sync_all()?;
    if let Some(dir) = to.parent() {
        // The new name too.
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_names_carry_utc_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_468_822_123);
        assert_eq!(archived_name("a.xml", t), "20261205T110702.123Z-a.xml");
        assert_eq!(archived_name("b", UNIX_EPOCH), "19700101T000000.000Z-b");
    }

    #[test]
    fn candidates_skip_hidden_partial_and_linked_files_oldest_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["b.xml", "a.xml", ".hidden.xml", "c.xml.tmp", "d.PART"] {
            fs::write(dir.path().join(name), "x").expect("write");
        }
        std::os::unix::fs::symlink(dir.path().join("a.xml"), dir.path().join("link.xml"))
            .expect("symlink");
        fs::create_dir(dir.path().join("sub.xml")).expect("dir");
        let names: Vec<String> = candidates(dir.path())
            .expect("list")
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"a.xml".to_owned()) && names.contains(&"b.xml".to_owned()));
    }

    #[test]
    fn a_file_settles_over_two_scans_or_by_age_or_marker() {
        let now = SystemTime::now();
        let now_ms = now.duration_since(UNIX_EPOCH).expect("now").as_millis() as i64;
        let file = Candidate {
            path: PathBuf::from("/nowhere/a.xml"),
            name: "a.xml".into(),
            size: 10,
            mtime_ms: now_ms,
        };
        let settle = Duration::from_secs(2);
        let mut s = Settling::default();
        assert!(!s.settled(&file, settle, None, now));
        assert!(!s.settled(&file, settle, None, now + Duration::from_secs(1)));
        assert!(s.settled(&file, settle, None, now + Duration::from_secs(2)));
        let grown = Candidate {
            size: 11,
            ..file.clone()
        };
        assert!(!s.settled(&grown, settle, None, now + Duration::from_secs(1)));
        let old = Candidate {
            mtime_ms: now_ms - 5_000,
            ..file.clone()
        };
        assert!(s.settled(&old, settle, None, now));
        assert!(!s.settled(&old, settle, Some("{name}.ok"), now));
        assert!(s.settled(&file, Duration::ZERO, None, now));
    }
}
