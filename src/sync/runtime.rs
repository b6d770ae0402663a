//! The sync runtime: one worker per started system sends its outbox
//! ([`worker`]: order per record, coalescing ([`plan`]), batches,
//! concurrency, retries, dead letters, limits, blocks), all on one thread
//! of their own at the lowest priority (`sources::LowPriority`, as 1C's
//! full read): a CRM's HTTP never takes a core from a ringing call.

pub mod metrics;
pub mod outcomes;
pub mod plan;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::sources::LowPriority;
use crate::store::Store;
use crate::sync::parts::SyncRuntimeParts;
use crate::sync::system::System;
pub use metrics::{Method, RequestOutcome, RuntimeMetrics};
pub use worker::{WorkerSettings, MAX_ATTEMPTS, SYSTEM_FAILURES};

/// The running workers' handles the admin API needs: `resume` by system.
#[derive(Clone, Default)]
pub struct Runtime {
    resume: BTreeMap<String, Arc<Notify>>,
}

impl Runtime {
    /// The handles of a worker for each of `systems`, made before the
    /// workers start (the HTTP front takes them first).
    pub fn new(systems: &[Arc<dyn System>]) -> Runtime {
        Runtime {
            resume: systems
                .iter()
                .map(|s| (s.spec().name().to_owned(), Arc::new(Notify::new())))
                .collect(),
        }
    }

    /// Asks `system`'s worker to probe now if the system blocked it (`POST
    /// /api/v1/sync/{system}/resume`); `false` when no worker runs for it.
    pub fn resume(&self, system: &str) -> bool {
        match self.resume.get(system) {
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Starts a worker for each of `systems` (those started, with their
/// `[sync.<name>]` table; `runtime` made from the same list; not one whose
/// remote pulls its outbox, `transport = "pull"`), on one
/// lowest-priority thread, with the limiter, health and settings `parts`
/// holds for it; each runs until `stop`.
pub fn spawn(
    runtime: &Runtime,
    systems: &[Arc<dyn System>],
    parts: &SyncRuntimeParts,
    store: &Store,
    metrics: &RuntimeMetrics,
    stop: &watch::Sender<bool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    if systems.is_empty() {
        return Ok(tasks);
    }
    let low = Arc::new(LowPriority::start("cti-sync-send")?);
    // Write outcomes go to their records' originating systems, when any
    // system reports them.
    let outcomes_committed = Arc::new(Notify::new());
    if systems.iter().any(|s| s.reports_outcomes()) {
        let hand_on = outcomes::run(
            systems.to_vec(),
            store.clone(),
            Arc::clone(&outcomes_committed),
            stop.subscribe(),
        );
        let low = Arc::clone(&low);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = low.run_future("cti-sync-send", hand_on).await {
                tracing::error!(error = %e, "sync: the task handing write outcomes on stopped");
            }
        }));
    }
    for system in systems {
        let name = system.spec().name().to_owned();
        let Some(part) = parts.get(&name) else {
            // Built from the same list at start: never seen.
            tracing::error!(system = %name, "sync: no limiter or health for the system; not started");
            continue;
        };
        if part.config.pulled() {
            // `[sync.onec] transport = "pull"`: 1C leases the rows itself
            // (`sync::onec::pull`); nothing is sent from here.
            tracing::info!(system = %name, "sync: the system pulls its outbox (transport = \"pull\"): no worker sends it");
            continue;
        }
        let resume = runtime
            .resume
            .get(&name)
            .cloned()
            .unwrap_or_else(|| Arc::new(Notify::new()));
        let worker = worker::Worker {
            limiter: Arc::clone(&part.limiter),
            health: Arc::clone(&part.health),
            system: Arc::clone(system),
            store: store.clone(),
            metrics: metrics.clone(),
            settings: WorkerSettings::from(&part.config),
            resume,
            outcomes: Arc::clone(&outcomes_committed),
        };
        let low = Arc::clone(&low);
        let stop = stop.subscribe();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = low.run_future("cti-sync-send", worker.run(stop)).await {
                tracing::error!(system = %name, error = %e, "sync: the worker stopped");
            }
        }));
    }
    Ok(tasks)
}
