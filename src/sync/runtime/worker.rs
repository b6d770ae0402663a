//! One system's worker: takes the outbox's due rows ([`super::plan`]),
//! sends them in batches, up to `[sync.<system>] concurrency` requests at
//! once, and writes what became of each row (`Store::outbox_settle`).
//!
//! Failures, and whose they are:
//! - `Retry` (5xx, timeout, refused connection, malformed answer) is the
//!   row's own failure only when the system answered some request since
//!   the row's previous failure (or, for its first, since the worker
//!   started): then its attempts grow, it waits by the backoff
//!   (`retry_first` doubling up to `retry_max`), and it is dead after
//!   [`MAX_ATTEMPTS`]. Otherwise nothing shows that the system answers at
//!   all: the failure is the system's, no row's attempts grow, and after
//!   [`SYSTEM_FAILURES`] requests in a row without a success the whole
//!   system waits by the same backoff (one request per wait, so fresh rows
//!   never hammer a failing API) and is `failing`. An outage of hours
//!   dead-letters nothing; a row the system keeps refusing while it
//!   answers others dies. A row pending longer than `dead_after` dies: at
//!   its next failure, whoever's, and by a sweep of the outbox (once a
//!   minute, or a quarter of a shorter `dead_after`) while it waits through
//!   a block or the system's backoff, when it is never tried.
//! - `Permanent` (the remote's validation error): dead at once, with the
//!   remote's message.
//! - `Limited`: the limiter pauses the whole system until `retry_after`
//!   (else the system's backoff); attempts do not grow.
//! - `Blocked`: sending stops; one probe (a request of one row) every
//!   `block_probe`, or at once on `POST /api/v1/sync/{system}/resume`.
//!
//! Before a create (no remote id in the id-map) the worker asks the system
//! for the record (`System::find_existing`) and adopts what it finds, so a
//! crash between the remote's accept and our commit never creates a record
//! twice; the same lookup tells whether a `remove` of a record without a
//! remote id has anything to remove (if not, nothing is sent and the row
//! is dropped).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::task::{JoinError, JoinSet};

use super::metrics::{Method, RequestOutcome, RuntimeMetrics};
use super::plan::plan;
use crate::config::SyncSystemConfig;
use crate::sources::backoff::Backoff;
use crate::store::{OutboxOp, OutboxRow, Settle, Store};
use crate::sync::health::SyncHealth;
use crate::sync::limiter::Limiter;
use crate::sync::system::{Outcome, OutgoingRow, Remote, RowOutcome, System, WriteOutcome};

/// A row's own failures before it is dead.
pub const MAX_ATTEMPTS: u32 = 10;

/// Requests in a row without a success before the system itself waits.
pub const SYSTEM_FAILURES: u32 = 3;

/// Pending rows read per look at the outbox (see `Store::outbox_pending`):
/// four times what the free slots take, so that records waiting (in
/// flight, or for their retry) leave others to pick, within these bounds.
/// Any prefix of the pending rows keeps the order per record.
const WINDOW: (usize, usize) = (200, 2_000);

/// How often an idle worker looks for new rows.
const POLL: Duration = Duration::from_millis(100);

/// How often the outbox gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// How often pending rows are checked against `dead_after`: once a minute,
/// or a quarter of a shorter `dead_after` (never more often than 100 ms).
fn sweep_every(dead_after: Duration) -> Duration {
    (dead_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// A worker's settings, from its `[sync.<system>]` table.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub retry_first: Duration,
    pub retry_max: Duration,
    pub timeout: Duration,
    pub dead_after: Duration,
    pub block_probe: Duration,
}

impl From<&SyncSystemConfig> for WorkerSettings {
    fn from(table: &SyncSystemConfig) -> WorkerSettings {
        WorkerSettings {
            concurrency: table.concurrency.max(1),
            retry_first: table.retry_first,
            retry_max: table.retry_max.max(table.retry_first),
            timeout: table.timeout,
            dead_after: table.dead_after,
            block_probe: table.block_probe,
        }
    }
}

/// What a worker needs.
pub struct Worker {
    pub system: Arc<dyn System>,
    pub store: Store,
    pub limiter: Arc<Limiter>,
    pub health: Arc<SyncHealth>,
    pub metrics: RuntimeMetrics,
    pub settings: WorkerSettings,
    /// Notified by `POST /api/v1/sync/{system}/resume`: probe now.
    pub resume: Arc<Notify>,
    /// Notified when write outcomes were committed: the task handing them
    /// to their records' originating systems looks now.
    pub outcomes: Arc<Notify>,
}

/// A row as taken: the stored row (its attempts, age) and what is sent.
struct Taken {
    row: OutboxRow,
    outgoing: OutgoingRow,
}

/// What a request's rows came to.
enum RowResult {
    Outcome(Outcome),
    /// A `remove` of a record the system does not hold: nothing to send.
    NothingToRemove,
}

/// A finished request.
struct Done {
    rows: Vec<Taken>,
    results: Vec<RowResult>,
    /// Whether the system answered anything (a confirmation, a refusal, a
    /// lookup's answer).
    answered: bool,
    timed_out: bool,
    /// The one request a blocked system was sent.
    probe: bool,
}

/// The worker's memory between requests.
struct State {
    in_flight: HashSet<String>,
    /// Requests that got an answer, ever (see the module's rule).
    answers: u64,
    /// Per row id: `answers` when it last failed.
    failed_at: HashMap<i64, u64>,
    /// Requests in a row without a success.
    failures_in_a_row: u32,
    /// The system's own wait after failures in a row.
    paused_until: Option<Instant>,
    /// While blocked: when the next probe goes.
    probe_at: Option<Instant>,
    /// A probe is in flight: nothing else is sent.
    probing: bool,
}

/// What holds a system's sending back, as [`Worker::fill`] gates on it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Held {
    blocked: bool,
    paused: bool,
    failing: bool,
}

impl Held {
    fn of(state: &State, now: Instant) -> Held {
        Held {
            blocked: state.probe_at.is_some(),
            paused: state.paused_until.is_some_and(|until| until > now),
            failing: state.failures_in_a_row >= SYSTEM_FAILURES,
        }
    }

    /// Whether `self` holds back something `before` did not.
    fn more_than(self, before: Held) -> bool {
        (self.blocked && !before.blocked)
            || (self.paused && !before.paused)
            || (self.failing && !before.failing)
    }
}

impl Worker {
    fn name(&self) -> &str {
        self.system.spec().name()
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.settings.retry_first, self.settings.retry_max)
    }

    /// Runs until `stop`. Requests in flight are dropped then: their rows
    /// stay pending (nothing is deleted before its confirmation is
    /// committed), so the next start sends them again.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut state = State {
            in_flight: HashSet::new(),
            answers: 0,
            failed_at: HashMap::new(),
            failures_in_a_row: 0,
            paused_until: None,
            probe_at: None,
            probing: false,
        };
        let mut requests: JoinSet<Done> = JoinSet::new();
        let mut gauges_at = Instant::now();
        let mut sweep_at = Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            if sweep_at <= Instant::now() {
                this.expire_old_rows().await;
                sweep_at = Instant::now() + sweep_every(this.settings.dead_after);
            }
            if gauges_at <= Instant::now() {
                this.refresh_gauges().await;
                gauges_at = Instant::now() + GAUGES_EVERY;
            }
            this.fill(&mut state, &mut requests).await;
            // A blocked or paused system still sweeps at its time.
            let wake = this.next_wake(&state).min(sweep_at);
            tokio::select! {
                _ = stop.changed() => break,
                Some(done) = requests.join_next(), if !requests.is_empty() => {
                    this.finished(&mut state, &requests, done).await;
                }
                () = this.resume.notified() => {
                    if state.probe_at.is_some() {
                        tracing::info!(system = %this.name(), "sync: resume asked: probing the blocked system now");
                        state.probe_at = Some(Instant::now());
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        requests.abort_all();
    }

    /// Settles a request that ended (or logs its task's failure); once none
    /// is in flight, every record is free again.
    async fn finished(
        &self,
        state: &mut State,
        requests: &JoinSet<Done>,
        done: Result<Done, JoinError>,
    ) {
        match done {
            Ok(done) => self.settle(state, done).await,
            Err(e) => {
                // A system's module panicked: its rows stay pending; their
                // records are free again once nothing else is in flight.
                tracing::error!(system = %self.name(), error = %e, "sync: a request task failed; its rows stay pending");
            }
        }
        if requests.is_empty() {
            state.in_flight.clear();
            state.probing = false;
        }
    }

    /// When to look at the outbox again without another reason.
    fn next_wake(&self, state: &State) -> Instant {
        let now = Instant::now();
        let mut wake = now + POLL;
        if let Some(probe) = state.probe_at {
            wake = if state.probing {
                after(self.settings.block_probe)
            } else {
                probe.max(now)
            };
        } else if let Some(until) = state.paused_until {
            wake = wake.max(until);
        }
        wake
    }

    /// Starts requests for due rows while there is room.
    ///
    /// The outbox is read before anything is sent, and a request may end
    /// meanwhile with an answer that holds the system back (its block page,
    /// or the failure that pauses it): ended requests are settled before
    /// sending, and when one of them held the system back, what may be sent
    /// is decided again, so that no request follows such an answer (seen
    /// under load: a row queued after a block page went out before the page
    /// was settled). A limit answer needs none of this: the limiter it
    /// pauses holds every request back where it is sent.
    async fn fill(self: &Arc<Self>, state: &mut State, requests: &mut JoinSet<Done>) {
        loop {
            if self.fill_once(state, requests).await {
                return;
            }
        }
    }

    /// One look at the outbox for [`fill`](Self::fill): `false` when a
    /// request that ended during it held the system back (settled, nothing
    /// sent: look again), else `true`.
    async fn fill_once(self: &Arc<Self>, state: &mut State, requests: &mut JoinSet<Done>) -> bool {
        let now = Instant::now();
        // Blocked: nothing but one probe at its time.
        let (slots, batch) = match state.probe_at {
            Some(_) if state.probing => return true,
            Some(at) if at > now => return true,
            Some(_) => (1, 1),
            None => {
                if state.paused_until.is_some_and(|until| until > now) {
                    return true;
                }
                state.paused_until = None;
                // A failing system gets one request at a time until it
                // answers: fresh rows never hammer it.
                let room = if state.failures_in_a_row >= SYSTEM_FAILURES {
                    usize::from(requests.is_empty())
                } else {
                    self.settings.concurrency.saturating_sub(requests.len())
                };
                (room, self.system.batch_size().max(1))
            }
        };
        if slots == 0 {
            return true;
        }
        let size = (slots * batch * 4).clamp(WINDOW.0, WINDOW.1);
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let window = match self.store.outbox_pending(self.name(), size).await {
            Ok(window) => window,
            Err(e) => {
                tracing::error!(system = %self.name(), error = %e, "sync: the outbox could not be read; trying again shortly");
                return true;
            }
        };
        if window.is_empty() {
            return true;
        }
        let plan = plan(&window, &state.in_flight, SystemTime::now(), slots * batch);
        if !plan.drop.is_empty() {
            let dropped = plan.drop.len();
            for id in &plan.drop {
                state.failed_at.remove(id);
            }
            let settle = plan
                .drop
                .into_iter()
                .map(|id| Settle::Dropped { id })
                .collect();
            if let Err(e) = self.store.outbox_settle(settle).await {
                tracing::error!(system = %self.name(), error = %e, "sync: replaced outbox rows could not be dropped; nothing sent this round");
                return true;
            }
            tracing::debug!(system = %self.name(), rows = dropped, "sync: rows replaced by later changes of their records dropped");
        }
        if plan.send.is_empty() {
            return true;
        }
        let taken = match self.take(plan.send).await {
            Ok(taken) => taken,
            Err(e) => {
                tracing::error!(system = %self.name(), error = %e, "sync: the id-map could not be read; trying again shortly");
                return true;
            }
        };
        let held = Held::of(state, now);
        while let Some(done) = requests.try_join_next() {
            self.finished(state, requests, done).await;
        }
        if Held::of(state, Instant::now()).more_than(held) {
            return false;
        }
        let mut taken = taken.into_iter();
        loop {
            let rows: Vec<Taken> = taken.by_ref().take(batch).collect();
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                state.in_flight.insert(row.row.record_key.clone());
            }
            let probe = state.probe_at.is_some();
            state.probing |= probe;
            let worker = Arc::clone(self);
            requests.spawn(async move { worker.request(rows, probe).await });
        }
        true
    }

    /// The rows with their records' id-map links.
    async fn take(&self, rows: Vec<OutboxRow>) -> Result<Vec<Taken>, crate::store::StoreError> {
        let mut kinds: HashMap<&str, Vec<String>> = HashMap::new();
        for row in &rows {
            kinds
                .entry(row.kind.as_str())
                .or_default()
                .push(row.record_key.clone());
        }
        let mut links = HashMap::new();
        for (kind, keys) in kinds {
            for (key, link) in self.store.outbox_links(self.name(), kind, keys).await? {
                links.insert((kind.to_owned(), key), link);
            }
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let link = links
                    .remove(&(row.kind.clone(), row.record_key.clone()))
                    .unwrap_or_default();
                let outgoing = OutgoingRow {
                    id: row.id,
                    kind: row.kind.clone(),
                    record_key: row.record_key.clone(),
                    op: row.op,
                    body: row.body.clone(),
                    remote_id: link.remote_id,
                    remote_version: link.remote_version,
                };
                Taken { row, outgoing }
            })
            .collect())
    }

    /// One request: lookups before creates (and before removes of records
    /// without a remote id), then one send of the rows left.
    async fn request(self: Arc<Self>, mut rows: Vec<Taken>, probe: bool) -> Done {
        let mut results: Vec<Option<RowResult>> = rows.iter().map(|_| None).collect();
        let mut answered = false;
        let mut timed_out = false;
        for (taken, result) in rows.iter_mut().zip(results.iter_mut()) {
            if taken.outgoing.remote_id.is_some() {
                continue;
            }
            self.limiter.acquire().await;
            let found = tokio::time::timeout(
                self.settings.timeout,
                self.system.find_existing(&taken.outgoing),
            )
            .await;
            match found {
                Ok(Ok(found)) => {
                    answered = true;
                    self.metrics
                        .request(self.name(), Method::FindExisting, RequestOutcome::Ok);
                    match found {
                        Some(Remote {
                            remote_id,
                            remote_version,
                            ..
                        }) => {
                            tracing::info!(system = %self.name(), record = %crate::logging::Escaped(&taken.outgoing.record_key), "sync: the system holds the record already: adopted, not created again");
                            taken.outgoing.remote_id = Some(remote_id);
                            taken.outgoing.remote_version = remote_version;
                        }
                        None if taken.outgoing.op == OutboxOp::Remove => {
                            *result = Some(RowResult::NothingToRemove);
                        }
                        None => {}
                    }
                }
                Ok(Err(outcome)) => {
                    self.metrics.request(
                        self.name(),
                        Method::FindExisting,
                        RequestOutcome::of(std::slice::from_ref(&outcome)),
                    );
                    let outcome = match outcome {
                        Outcome::Confirmed(_) => Outcome::Retry(
                            "the lookup before a create answered a confirmation".into(),
                        ),
                        other => other,
                    };
                    *result = Some(RowResult::Outcome(outcome));
                }
                Err(_) => {
                    timed_out = true;
                    self.metrics.request(
                        self.name(),
                        Method::FindExisting,
                        RequestOutcome::Timeout,
                    );
                    *result = Some(RowResult::Outcome(Outcome::Retry(format!(
                        "no answer to the lookup within {}",
                        humantime::format_duration(self.settings.timeout)
                    ))));
                }
            }
        }
        let to_send: Vec<usize> = (0..rows.len()).filter(|&i| results[i].is_none()).collect();
        if !to_send.is_empty() {
            let outgoing: Vec<OutgoingRow> =
                to_send.iter().map(|&i| rows[i].outgoing.clone()).collect();
            self.limiter.acquire().await;
            let sent =
                tokio::time::timeout(self.settings.timeout, self.system.send(&outgoing)).await;
            let outcomes = match sent {
                Ok(outcomes) if outcomes.len() == outgoing.len() => {
                    let outcome = RequestOutcome::of(&outcomes);
                    self.metrics.request(self.name(), Method::Send, outcome);
                    answered |= outcome == RequestOutcome::Ok;
                    outcomes
                }
                Ok(outcomes) => {
                    self.metrics
                        .request(self.name(), Method::Send, RequestOutcome::Retry);
                    let why = format!(
                        "the system's module answered {} outcomes for {} rows",
                        outcomes.len(),
                        outgoing.len()
                    );
                    outgoing
                        .iter()
                        .map(|_| Outcome::Retry(why.clone()))
                        .collect()
                }
                Err(_) => {
                    timed_out = true;
                    self.metrics
                        .request(self.name(), Method::Send, RequestOutcome::Timeout);
                    let why = format!(
                        "no answer within {}",
                        humantime::format_duration(self.settings.timeout)
                    );
                    outgoing
                        .iter()
                        .map(|_| Outcome::Retry(why.clone()))
                        .collect()
                }
            };
            for (i, outcome) in to_send.into_iter().zip(outcomes) {
                results[i] = Some(RowResult::Outcome(outcome));
            }
        }
        let results = results
            .into_iter()
            .map(|r| r.unwrap_or(RowResult::Outcome(Outcome::Retry("not sent".into()))))
            .collect();
        Done {
            rows,
            results,
            answered,
            timed_out,
            probe,
        }
    }

    /// Writes what became of a request's rows and adjusts the system's state.
    async fn settle(&self, state: &mut State, done: Done) {
        let Done {
            rows,
            results,
            answered,
            timed_out,
            probe: was_probe,
        } = done;
        if was_probe {
            state.probing = false;
        }
        for taken in &rows {
            state.in_flight.remove(&taken.row.record_key);
        }
        if answered {
            state.answers += 1;
        }
        let now = SystemTime::now();
        let backoff = self.backoff();
        let mut settle = Vec::with_capacity(rows.len());
        let mut limited: Option<Option<Duration>> = None;
        let mut blocked: Option<String> = None;
        let mut failure: Option<String> = None;
        let reports = self.system.reports_outcomes();
        let mut reported = false;
        for (taken, result) in rows.iter().zip(results) {
            let row = &taken.row;
            match result {
                RowResult::NothingToRemove => settle.push(Settle::Dropped { id: row.id }),
                RowResult::Outcome(Outcome::Confirmed(remote)) => {
                    state.failed_at.remove(&row.id);
                    if let (true, Some(report)) = (reports, &remote.report) {
                        settle.push(Settle::Outcome(outcome_of(
                            row,
                            report.outcome,
                            Some(remote.remote_id.clone()),
                            report.code.clone(),
                            None,
                        )));
                        reported = true;
                    }
                    settle.push(Settle::Confirmed {
                        id: row.id,
                        system: row.system.clone(),
                        kind: row.kind.clone(),
                        record_key: row.record_key.clone(),
                        remote_id: remote.remote_id,
                        remote_version: remote.remote_version,
                    });
                }
                RowResult::Outcome(Outcome::Permanent(message)) => {
                    state.failed_at.remove(&row.id);
                    tracing::warn!(system = %self.name(), id = row.id, record = %crate::logging::Escaped(&row.record_key), error = %crate::logging::Escaped(&message), "sync: the system refused a change for good: the row is dead");
                    if reports {
                        settle.push(failed(row, &message));
                        reported = true;
                    }
                    settle.push(Settle::Failed {
                        id: row.id,
                        attempts: row.attempts + 1,
                        next_at: now,
                        error: message,
                        dead: true,
                    });
                }
                RowResult::Outcome(Outcome::Limited { retry_after }) => {
                    limited = Some(limited.flatten().max(retry_after));
                }
                RowResult::Outcome(Outcome::Blocked(reason)) => blocked = Some(reason),
                RowResult::Outcome(Outcome::Retry(error)) => {
                    let since = state.failed_at.insert(row.id, state.answers).unwrap_or(0);
                    let own = state.answers > since;
                    let too_old = row
                        .created_at
                        .checked_add(self.settings.dead_after)
                        .is_some_and(|limit| limit <= now);
                    let attempts = if own { row.attempts + 1 } else { row.attempts };
                    let dead = too_old || attempts >= MAX_ATTEMPTS;
                    let error = if too_old {
                        format!(
                            "pending for more than {} (dead_after); last error: {error}",
                            humantime::format_duration(self.settings.dead_after)
                        )
                    } else {
                        error
                    };
                    if dead {
                        state.failed_at.remove(&row.id);
                        tracing::warn!(system = %self.name(), id = row.id, record = %crate::logging::Escaped(&row.record_key), attempts, error = %crate::logging::Escaped(&error), "sync: a change failed too often: the row is dead");
                        if reports {
                            settle.push(failed(row, &error));
                            reported = true;
                        }
                    }
                    // The system's own failure waits with the system (below);
                    // the row is due again as soon as the system is.
                    let next_at = if own {
                        now.checked_add(backoff.delay(attempts)).unwrap_or(now)
                    } else {
                        now
                    };
                    settle.push(Settle::Failed {
                        id: row.id,
                        attempts,
                        next_at,
                        error: error.clone(),
                        dead,
                    });
                    failure = Some(error);
                }
            }
        }
        match self.store.outbox_settle(settle).await {
            Ok(()) if reported => self.outcomes.notify_one(),
            Ok(()) => {}
            Err(e) => {
                // Nothing of it is written: the rows stay pending as they
                // were and are sent again (a create adopts what it finds
                // first).
                tracing::error!(system = %self.name(), error = %e, "sync: what the system answered could not be written; its rows will be sent again");
            }
        }
        self.adjust(
            state, answered, timed_out, limited, blocked, failure, was_probe,
        );
    }

    /// The system's state after a request: ok, limited, blocked, failing.
    #[allow(clippy::too_many_arguments)]
    fn adjust(
        &self,
        state: &mut State,
        answered: bool,
        timed_out: bool,
        limited: Option<Option<Duration>>,
        blocked: Option<String>,
        failure: Option<String>,
        was_probe: bool,
    ) {
        let backoff = self.backoff();
        if let Some(reason) = blocked {
            if state.probe_at.is_none() {
                tracing::warn!(system = %self.name(), reason = %crate::logging::Escaped(&reason), probe_every = %humantime::format_duration(self.settings.block_probe), "sync: the system blocks the gateway: sending stops, one probe at a time (POST /api/v1/sync/{}/resume probes now)", self.name());
            }
            self.health.blocked(&reason);
            state.probe_at = Some(after(self.settings.block_probe));
            return;
        }
        if let Some(retry_after) = limited {
            state.failures_in_a_row += 1;
            let wait = retry_after.unwrap_or_else(|| backoff.delay(state.failures_in_a_row));
            self.limiter.pause_until(after(wait));
            self.health.limited(
                SystemTime::now()
                    .checked_add(wait)
                    .unwrap_or_else(SystemTime::now),
            );
            if was_probe {
                state.probe_at = None;
            }
            return;
        }
        if answered {
            state.failures_in_a_row = 0;
            state.paused_until = None;
            if state.probe_at.take().is_some() {
                tracing::info!(system = %self.name(), "sync: the blocked system answered the probe: sending again");
            }
            self.health.ok();
            return;
        }
        let Some(failure) = failure else {
            return;
        };
        state.failures_in_a_row += 1;
        if was_probe {
            // A blocked system's probe failed otherwise: still blocked.
            state.probe_at = Some(after(self.settings.block_probe));
            return;
        }
        if state.failures_in_a_row >= SYSTEM_FAILURES {
            let wait = backoff.delay(state.failures_in_a_row - SYSTEM_FAILURES + 1);
            state.paused_until = Some(after(wait));
            let reason = if timed_out {
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.settings.timeout)
                )
            } else {
                failure
            };
            self.health.failing(&reason);
        }
    }

    /// Marks the rows pending longer than `dead_after` dead, whatever the
    /// system's state: a block or an outage never ages a row by failures.
    async fn expire_old_rows(&self) {
        let now = SystemTime::now();
        let Some(before) = now.checked_sub(self.settings.dead_after) else {
            return;
        };
        let dead_after = humantime::format_duration(self.settings.dead_after);
        let state = self.health.state();
        let error = if state != crate::sync::health::SyncState::Ok {
            format!(
                "pending longer than dead_after ({dead_after}) while the system was {}",
                state.name()
            )
        } else {
            format!("pending longer than dead_after ({dead_after})")
        };
        match self.store.outbox_expire(self.name(), before, error).await {
            Ok(0) => {}
            Ok(rows) => {
                tracing::warn!(system = %self.name(), rows, dead_after = %dead_after, state = state.name(), "sync: rows pending longer than dead_after are dead (GET /api/v1/sync/outbox?state=dead; retry with POST /api/v1/sync/outbox/{{id}}/retry)");
            }
            Err(e) => {
                tracing::warn!(system = %self.name(), error = %e, "sync: rows past dead_after not marked dead; tried again later");
            }
        }
    }

    async fn refresh_gauges(&self) {
        match self.store.sync_status().await {
            Ok(all) => {
                let mine = all.iter().find(|s| s.system == self.name());
                self.metrics.outbox(self.name(), mine);
            }
            Err(e) => {
                tracing::debug!(system = %self.name(), error = %e, "sync: outbox gauges not refreshed")
            }
        }
    }
}

/// A row's outcome as stored (the store sets its time).
/// The `failed` outcome of a row that died with `message`.
fn failed(row: &OutboxRow, message: &str) -> Settle {
    Settle::Outcome(outcome_of(
        row,
        WriteOutcome::Failed,
        None,
        None,
        Some(message.to_owned()),
    ))
}

fn outcome_of(
    row: &OutboxRow,
    outcome: WriteOutcome,
    remote_ref: Option<String>,
    remote_code: Option<String>,
    message: Option<String>,
) -> RowOutcome {
    RowOutcome {
        outbox_id: row.id,
        system: row.system.clone(),
        kind: row.kind.clone(),
        record_key: row.record_key.clone(),
        outcome,
        remote_ref,
        remote_code,
        message,
        at: SystemTime::now(),
    }
}

/// `wait` from now; a wait past what the clock can hold (a configured
/// "1000y") is a year.
fn after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}
