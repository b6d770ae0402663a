//! Finding the CRM-only records another source's new record is the same
//! client as (issue 17 item 8): when 1C's read (or the file, or a push)
//! brings a record whose business key a system's CRM-only record has, the
//! CRM-only record is linked to it ([`Applier::link_if_same_client`]): it
//! leaves its source, its numbers, manager and page become the record's
//! overlay, in one swap.
//!
//! The trigger sits beside the change feed, on the directory's change
//! reports: they name the ids a change added or rebuilt (the feed sees
//! 1C's added ids), and only the inbound path (which knows the business
//! key, the id-map and the overlays) decides. The report is handed over
//! without waiting (a bounded channel; when it is full the ids are dropped
//! and logged: the system's next change of its record finds the match on
//! the inbound path), and a task applies them, one system's inbound turn
//! at a time.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::directory::{ChangeSink, Directory, ReplaceReport};
use crate::logging::Escaped;

use super::inbound::Applier;

/// Change reports held before one is dropped.
const CAPACITY: usize = 256;

/// The directory's side: hands each report's added and rebuilt ids over.
#[derive(Clone)]
pub struct LinkSink {
    sender: mpsc::Sender<Vec<Box<str>>>,
    /// The sources whose records are never linked elsewhere (the CRMs').
    crm_sources: Arc<HashSet<String>>,
    dropped: Arc<AtomicBool>,
}

/// The task's side, for [`spawn`].
pub struct LinkInput {
    receiver: mpsc::Receiver<Vec<Box<str>>>,
}

/// A sink and its input; `crm_sources` are the registered systems' names.
pub fn channel(crm_sources: impl IntoIterator<Item = String>) -> (LinkSink, LinkInput) {
    let (sender, receiver) = mpsc::channel(CAPACITY);
    (
        LinkSink {
            sender,
            crm_sources: Arc::new(crm_sources.into_iter().collect()),
            dropped: Arc::new(AtomicBool::new(false)),
        },
        LinkInput { receiver },
    )
}

impl LinkSink {
    /// Hands over the ids a change of a source other than a CRM's added or
    /// rebuilt (a record that gained an INN may be a CRM's client now).
    /// Never waits.
    pub fn hand_over(&self, report: &ReplaceReport) {
        if self.crm_sources.contains(&*report.source) {
            return;
        }
        let ids: Vec<Box<str>> = report
            .changes
            .added
            .iter()
            .chain(&report.changes.rebuilt)
            .cloned()
            .collect();
        if ids.is_empty() {
            return;
        }
        match self.sender.try_send(ids) {
            Ok(()) => {
                self.dropped.store(false, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(ids)) => {
                if !self.dropped.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        source = %Escaped(&report.source),
                        ids = ids.len(),
                        "sync: too many changes at once to look for CRM-only records of the same clients; a system's next change of such a record links it"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// `first` then this sink, as one [`ChangeSink`] for the directory.
    pub fn after(&self, first: ChangeSink) -> ChangeSink {
        let this = self.clone();
        Arc::new(move |report: &ReplaceReport| {
            first(report);
            this.hand_over(report);
        })
    }
}

/// Links what the reports call for, with the systems' appliers, until
/// `stop`.
pub fn spawn(
    input: LinkInput,
    directory: Arc<Directory>,
    appliers: Vec<Arc<Applier>>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(input, directory, appliers, stop))
}

async fn run(
    mut input: LinkInput,
    directory: Arc<Directory>,
    appliers: Vec<Arc<Applier>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut batches = Vec::new();
        tokio::select! {
            got = input.receiver.recv_many(&mut batches, 64) => {
                if got == 0 {
                    return;
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut ids: Vec<Box<str>> = batches.into_iter().flatten().collect();
        ids.sort_unstable();
        ids.dedup();
        for (n, id) in ids.into_iter().enumerate() {
            // A 1C read reports every id it rebuilt: the calls' runtime
            // gets its turn between them.
            if n % 256 == 255 {
                tokio::task::yield_now().await;
            }
            let Some(entry) = directory.lookup_id(&id) else {
                continue;
            };
            for applier in &appliers {
                if let Err(e) = applier.link_if_same_client(&entry).await {
                    tracing::warn!(
                        system = applier.system(),
                        id = %Escaped(&id),
                        error = %e,
                        "sync: a CRM-only record of the same client was not linked; the system's next change of it tries again"
                    );
                }
            }
        }
    }
}
