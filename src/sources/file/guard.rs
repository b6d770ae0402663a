//! The guard against a file that would empty or gut the directory: an
//! export that failed half-way, a truncated copy, `: > file`. Such a file is
//! refused (the directory keeps serving what it had) until an operator
//! accepts it with `cti-gateway accept-file`, or raises
//! `directory.max_shrink`. SIGHUP does not accept it: logrotate and
//! `systemctl reload` send SIGHUP routinely.

use std::collections::HashSet;
use std::sync::Arc;

use crate::directory::{Counterparty, Entry};

/// Why a file that parsed was not taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the file has no records while the file source holds {previous}; refused, the directory keeps serving them. If it is meant to be empty, run `cti-gateway accept-file` (SIGHUP does not take it)")]
    Empty { previous: usize },
    #[error("the file lists {now} counterparties and would remove {removed} of the {previous} the file source holds ({percent}%, more than directory.max_shrink = {max_shrink}); refused, the directory keeps serving them. To take this file once, run `cti-gateway accept-file` (SIGHUP does not take it), or raise directory.max_shrink", percent = percent(*.removed, *.previous))]
    Shrink {
        previous: usize,
        now: usize,
        removed: usize,
        max_shrink: f64,
    },
}

fn percent(part: usize, whole: usize) -> u64 {
    if whole == 0 {
        return 0;
    }
    (part as f64 * 100.0 / whole as f64).round() as u64
}

/// Checks `records`, the file's new version, against `previous`, the
/// file source's records in the directory now. An empty file is refused
/// when the source holds records (with none, it loads as empty); so is one
/// that would remove more than `max_shrink` of them (1: never).
pub(super) fn check(
    previous: Option<&[Arc<Entry>]>,
    records: &[Counterparty],
    max_shrink: f64,
) -> Result<(), Refusal> {
    let previous = previous.unwrap_or_default();
    if previous.is_empty() {
        return Ok(());
    }
    if records.is_empty() {
        return Err(Refusal::Empty {
            previous: previous.len(),
        });
    }
    let kept: HashSet<&str> = records.iter().map(|r| &*r.id).collect();
    let removed = previous.iter().filter(|e| !kept.contains(e.id())).count();
    if removed as f64 > max_shrink * previous.len() as f64 {
        return Err(Refusal::Shrink {
            previous: previous.len(),
            now: records.len(),
            removed,
            max_shrink,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::directory::Directory;

    fn record(id: usize) -> Counterparty {
        serde_json::from_value(serde_json::json!({"id": id.to_string(), "name": "N"}))
            .expect("record")
    }

    fn holding(ids: std::ops::Range<usize>) -> Arc<[Arc<Entry>]> {
        let dir = Directory::new(|c| c.name.as_bytes().into());
        dir.replace_source("file", ids.map(record).collect(), None, SystemTime::now());
        dir.snapshot()
            .source_records("file")
            .expect("the file's set")
    }

    #[test]
    fn an_empty_file_is_refused_only_when_there_are_records_to_lose() {
        assert_eq!(check(None, &[], 0.5), Ok(()));
        assert_eq!(check(Some(&holding(0..0)), &[], 0.5), Ok(()));
        assert_eq!(
            check(Some(&holding(0..3)), &[], 1.0),
            Err(Refusal::Empty { previous: 3 })
        );
    }

    #[test]
    fn removing_more_than_max_shrink_is_refused_and_up_to_it_is_not() {
        let ten = holding(0..10);
        let four: Vec<_> = (0..4).map(record).collect();
        let five: Vec<_> = (0..5).map(record).collect();
        let refused = check(Some(&ten), &four, 0.5).expect_err("60% removed");
        assert_eq!(
            refused,
            Refusal::Shrink {
                previous: 10,
                now: 4,
                removed: 6,
                max_shrink: 0.5
            }
        );
        let message = refused.to_string();
        for words in [
            "lists 4",
            "remove 6 of the 10",
            "60%",
            "max_shrink = 0.5",
            "cti-gateway accept-file",
        ] {
            assert!(message.contains(words), "{words}: {message}");
        }
        assert_eq!(check(Some(&ten), &five, 0.5), Ok(()));
        assert_eq!(check(Some(&ten), &four, 0.6), Ok(()));
        assert_eq!(check(Some(&ten), &four, 1.0), Ok(()));
    }

    #[test]
    fn removed_counts_ids_that_are_gone_not_the_difference_in_size() {
        // Ten new ids in place of ten old ones: all ten are removed.
        let renamed: Vec<_> = (10..20).map(record).collect();
        assert!(matches!(
            check(Some(&holding(0..10)), &renamed, 0.5),
            Err(Refusal::Shrink { removed: 10, .. })
        ));
    }
}
