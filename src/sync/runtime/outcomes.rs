//! Hands the committed write outcomes (the 1C writer's `created` with 1C's
//! `Ref_Key` and `Code`, `exists`, `updated`, `failed`) to the system each
//! record comes from ([`System::linked`]), so that a CRM module can write
//! the code back to its record: in outbox order, once per outcome, after
//! the commit. An outcome is marked handed on once the call returned; one
//! committed before a crash (or a stop) is handed on after the next start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::store::Store;
use crate::sync::system::System;

/// Outcomes read per look.
const BATCH: u32 = 100;

/// How long one module's hook may take before the next outcome is handed
/// on (the outcome counts as handed on: at most once).
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// How often outcomes are looked for when no worker said so (a store
/// failure, a start with some waiting).
const POLL: Duration = Duration::from_secs(5);

/// Runs until `stop`: hands each outcome waiting in `store` to its
/// record's originating system among `systems` (one it is not: dropped
/// as handed on), woken by `wake` after a commit.
pub async fn run(
    systems: Vec<Arc<dyn System>>,
    store: Store,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let waiting = match store.outcomes_to_notify(BATCH).await {
            Ok(waiting) => waiting,
            Err(e) => {
                tracing::warn!(error = %e, "sync: write outcomes not read; tried again later");
                Vec::new()
            }
        };
        if waiting.is_empty() {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        let mut handed = Vec::with_capacity(waiting.len());
        for outcome in &waiting {
            if let Some(origin) = systems.iter().find(|s| s.spec().name() == outcome.origin()) {
                tokio::select! {
                    done = tokio::time::timeout(HOOK_TIMEOUT, origin.linked(outcome)) => {
                        if done.is_err() {
                            tracing::warn!(system = %origin.spec().name(), record = %crate::logging::Escaped(&outcome.record_key), "sync: a module took too long over a write outcome; going on");
                        }
                    }
                    // Not marked: handed on again after the next start.
                    _ = stop.changed() => break,
                }
            }
            handed.push(outcome.outbox_id);
        }
        let whole = handed.len() == waiting.len();
        if let Err(e) = store.outcomes_notified(handed).await {
            tracing::warn!(error = %e, "sync: write outcomes handed on but not marked so; they will be handed on again");
            tokio::time::sleep(POLL).await;
        }
        if !whole {
            return;
        }
    }
}
