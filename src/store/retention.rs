//! Journal retention (`store.journal_retention`): rows older than it are
//! deleted in small batches, each its own short transaction on the writer,
//! with a pause between two, so journal appends wait for one batch at most
//! and the pass takes little of the CPU the calls need.

use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{unix_ms, Store, StoreError};

/// Rows deleted per transaction: a few milliseconds of writer time.
pub const PRUNE_BATCH: u32 = 1_000;

/// The pause between two batches of one pass.
pub const PRUNE_PAUSE: Duration = Duration::from_millis(200);

/// How often a pass runs (the first right at start-up).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Store {
    /// Deletes every journal row older than `cutoff`, `batch` rows per
    /// transaction with `pause` between two; resolves with how many went.
    /// Each batch waits behind the appends already queued (see the writer).
    pub async fn prune_calls_before(
        &self,
        cutoff: SystemTime,
        batch: u32,
        pause: Duration,
    ) -> Result<u64, StoreError> {
        let before_ms = unix_ms(cutoff);
        let batch = batch.max(1);
        let mut total = 0u64;
        loop {
            let n = self
                .request(|reply| super::Command::PruneCalls {
                    before_ms,
                    limit: batch,
                    reply,
                })
                .await?;
            total += n as u64;
            if n < batch as usize {
                return Ok(total);
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Until `stop` turns true: once an hour (and once at start), deletes the
/// journal rows older than `keep`. A zero `keep` keeps them forever (the
/// task is then not needed; it returns at once).
pub async fn keep_journal_for(store: Store, keep: Duration, mut stop: watch::Receiver<bool>) {
    if keep.is_zero() {
        tracing::info!("store.journal_retention = 0: the call journal is kept forever");
        return;
    }
    loop {
        let Some(cutoff) = SystemTime::now().checked_sub(keep) else {
            return;
        };
        let pass = store.prune_calls_before(cutoff, PRUNE_BATCH, PRUNE_PAUSE);
        tokio::select! {
            result = pass => match result {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    rows = n,
                    older_than = %humantime::format_rfc3339_seconds(cutoff),
                    "store: call journal rows past store.journal_retention deleted"
                ),
                // The writer logged the failure (once per change of state).
                Err(StoreError::Closed) => return,
                Err(e) => tracing::debug!(error = %e, "store: journal retention pass failed; the next pass tries again"),
            },
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
