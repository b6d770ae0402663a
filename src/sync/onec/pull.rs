//! The pull exchange (`[sync.onec] transport = "pull"`): 1C, on a schedule
//! of its own, leases the `onec` outbox's pending rows, checks each
//! counterparty by INN, creates or updates it, and acknowledges what became
//! of each row. No worker sends the `onec` outbox then; the limiter does
//! not apply (1C paces itself); a lease counts as an attempt for the
//! runtime's dead-letter rule ([`MAX_ATTEMPTS`] leases without an ack, or
//! `dead_after`). The rules of leases are the store's
//! (`store::sync::lease`); this is the use case between them and the HTTP
//! endpoints (`http/exchange.rs`): the items 1C is handed, the acks it
//! sends, `cti_onec_pull_items_total`.
//!
//! A removal is never handed out: 1C is told nothing (see the store's
//! rules), so the counterparty stays in 1C; `op` is `create` or `update`.
//!
//! Leases that ran out end at the next poll; if 1C stops polling, the
//! sweep ([`Pull::run_sweeps`], every quarter of the lease, at most a
//! minute apart) ends them instead, so a row leased too often dies (and
//! shows in the status and `cti_onec_pull_items_total{event="dead"}`)
//! whether or not 1C comes back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::{Map, Value};

use crate::config::{SyncSystemConfig, ONEC_SYSTEM};
use crate::store::{
    Ack, AckOutcome, AckResult, LeaseRequest, LeaseSweep, LeasedRow, Store, StoreError, Swept,
};
use crate::sync::runtime::MAX_ATTEMPTS;

/// The most rows one lease hands out, whatever `limit` asks.
pub const MAX_LIMIT: u32 = 500;
/// Rows a lease hands out unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 100;

/// A row handed to 1C.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The outbox row's id: what the ack names.
    pub id: i64,
    /// `create` when 1C holds no copy the id-map knows, else `update`.
    pub op: &'static str,
    /// The local record's id (`bitrix24:company:2919`).
    pub key: String,
    /// 1C's `Ref_Key` of its copy, from the id-map.
    pub onec_ref: Option<String>,
    /// The record as the outbox row holds it (requisites, phones, e-mails,
    /// bank), with the sync store's `requisites` of it, if any.
    pub counterparty: Value,
}

/// What a lease hands out.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub lease: String,
    pub items: Vec<Item>,
    /// The `after` of the next poll: every row up to it was looked at.
    pub next_after: i64,
}

/// What 1C says became of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// 1C created the counterparty.
    Created,
    /// 1C had it (found by INN/KPP): adopted, not created again.
    Exists,
    /// 1C updated its copy.
    Updated,
    /// 1C refused: the row is dead with 1C's message.
    Failed,
}

impl AckStatus {
    pub const NAMES: &'static [&'static str] = &["created", "exists", "updated", "failed"];

    pub fn parse(s: &str) -> Option<AckStatus> {
        match s {
            "created" => Some(AckStatus::Created),
            "exists" => Some(AckStatus::Exists),
            "updated" => Some(AckStatus::Updated),
            "failed" => Some(AckStatus::Failed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Created => "created",
            AckStatus::Exists => "exists",
            AckStatus::Updated => "updated",
            AckStatus::Failed => "failed",
        }
    }
}

/// One result of an ack, checked by the endpoint: `onec_ref` is a GUID
/// whenever `status` is not `failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckItem {
    pub id: i64,
    pub status: AckStatus,
    pub onec_ref: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
}

/// `cti_onec_pull_items_total{event}`.
#[derive(Clone)]
pub struct PullMetrics {
    items: IntCounterVec,
}

/// The events counted, each series made at 0.
const EVENTS: &[&str] = &[
    "leased",
    "acked_created",
    "acked_exists",
    "acked_updated",
    "acked_failed",
    "expired",
    "dead",
    "ignored",
];

impl PullMetrics {
    pub fn new(registry: &Registry) -> Result<PullMetrics, prometheus::Error> {
        let items = IntCounterVec::new(
            Opts::new(
                "cti_onec_pull_items_total",
                "Rows of the onec outbox in the pull exchange, by event: leased (handed to 1C), acked_created, acked_exists, acked_updated, acked_failed (1C's acks), expired (a lease ended without an ack), dead (given up after too many leases or dead_after), ignored (an ack of a row unknown or finished).",
            ),
            &["event"],
        )?;
        registry.register(Box::new(items.clone()))?;
        for event in EVENTS {
            items.with_label_values(&[event]);
        }
        Ok(PullMetrics { items })
    }

    fn add(&self, event: &str, n: u64) {
        if n > 0 {
            self.items.with_label_values(&[event]).inc_by(n);
        }
    }
}

/// The pull exchange of system `onec`.
#[derive(Clone)]
pub struct Pull {
    store: Store,
    metrics: PullMetrics,
    lease_for: Duration,
    dead_after: Duration,
}

/// Leases made by this process: part of each lease's id.
static LEASES: AtomicU64 = AtomicU64::new(0);

impl Pull {
    /// Over the sync store, with `[sync.onec]`'s `lease` and `dead_after`.
    pub fn new(store: Store, table: &SyncSystemConfig, metrics: PullMetrics) -> Pull {
        Pull {
            store,
            metrics,
            lease_for: table.lease(),
            dead_after: table.dead_after,
        }
    }

    /// Leases at most `limit` (1..=[`MAX_LIMIT`]) pending rows after `after`.
    pub async fn lease(&self, after: Option<i64>, limit: u32) -> Result<Lease, StoreError> {
        let now = SystemTime::now();
        let lease = lease_id(now);
        let leased = self
            .store
            .outbox_lease(LeaseRequest {
                system: ONEC_SYSTEM.to_owned(),
                after,
                limit: limit.clamp(1, MAX_LIMIT),
                lease: lease.clone(),
                now,
                lease_for: self.lease_for,
                max_attempts: MAX_ATTEMPTS,
                dead_after: self.dead_after,
            })
            .await?;
        self.metrics.add("leased", leased.rows.len() as u64);
        self.metrics.add("expired", leased.expired);
        self.metrics.add("dead", leased.dead);
        if leased.dead > 0 {
            tracing::warn!(
                rows = leased.dead,
                "1C pull: rows leased too often (or pending past dead_after) without an ack are dead"
            );
        }
        let items = leased.rows.into_iter().map(item).collect();
        Ok(Lease {
            lease,
            items,
            next_after: leased.next_after,
        })
    }

    /// Writes 1C's results, all in one transaction: an outcome per result,
    /// in order.
    pub async fn ack(&self, results: Vec<AckItem>) -> Result<Vec<AckOutcome>, StoreError> {
        let acks = results
            .iter()
            .map(|r| Ack {
                id: r.id,
                result: match (r.status, &r.onec_ref) {
                    (AckStatus::Failed, _) | (_, None) => AckResult::Failed {
                        error: failure_text(r),
                    },
                    (_, Some(remote_id)) => AckResult::Confirmed {
                        remote_id: remote_id.clone(),
                    },
                },
            })
            .collect();
        let outcomes = self
            .store
            .outbox_ack(ONEC_SYSTEM, acks, SystemTime::now())
            .await?;
        for (result, outcome) in results.iter().zip(&outcomes) {
            match outcome {
                AckOutcome::Ignored => self.metrics.add("ignored", 1),
                AckOutcome::Done | AckOutcome::Dead => {
                    let event = format!("acked_{}", result.status.as_str());
                    self.metrics.add(&event, 1);
                }
            }
            if *outcome == AckOutcome::Dead {
                tracing::warn!(id = result.id, code = ?result.code, message = %crate::logging::Escaped(result.message.as_deref().unwrap_or("")), "1C pull: 1C refused a counterparty: the row is dead");
            }
        }
        Ok(outcomes)
    }

    /// Ends the leases that ran out without an ack, as the next lease would
    /// (rows pending again, or dead when leased too often or too old),
    /// counted as a lease counts them.
    pub async fn sweep(&self) -> Result<Swept, StoreError> {
        let swept = self
            .store
            .outbox_lease_sweep(LeaseSweep {
                system: ONEC_SYSTEM.to_owned(),
                now: SystemTime::now(),
                max_attempts: MAX_ATTEMPTS,
                dead_after: self.dead_after,
            })
            .await?;
        self.metrics.add("expired", swept.expired);
        self.metrics.add("dead", swept.dead);
        if swept.dead > 0 {
            tracing::warn!(
                rows = swept.dead,
                "1C pull: leases ran out with no poll since: rows leased too often (or pending past dead_after) without an ack are dead (GET /api/v1/sync/outbox?system=onec&state=dead)"
            );
        }
        Ok(swept)
    }

    /// How often [`Pull::run_sweeps`] sweeps: a quarter of the lease, from
    /// 100 ms to a minute (a row is dead at most that long after its last
    /// lease ran out).
    pub fn sweep_every(&self) -> Duration {
        (self.lease_for / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Sweeps every [`Pull::sweep_every`] until `stop`. A sweep that fails
    /// (the store cannot write) is tried again at the next tick; the next
    /// lease ends the same leases anyway.
    pub async fn run_sweeps(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.sweep_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "1C pull: ended leases not swept; tried again later");
            }
        }
    }

    /// Rows leased out now (the status API).
    pub async fn leased_now(&self) -> Result<u64, StoreError> {
        self.store
            .outbox_leased(ONEC_SYSTEM, SystemTime::now())
            .await
    }
}

/// A lease's id: unique in this process, and across restarts by the time.
fn lease_id(now: SystemTime) -> String {
    let ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = LEASES.fetch_add(1, Ordering::Relaxed);
    format!("{ms:x}-{n:x}")
}

/// The dead row's error: 1C's code and message.
fn failure_text(r: &AckItem) -> String {
    let message = r.message.as_deref().unwrap_or("no message").trim();
    match r.code.as_deref() {
        Some(code) if !code.is_empty() => format!("1C refused ({code}): {message}"),
        _ => format!("1C refused: {message}"),
    }
}

/// A leased row as 1C is handed it.
fn item(leased: LeasedRow) -> Item {
    let LeasedRow {
        row,
        link,
        requisites,
    } = leased;
    // The feed writes a record's JSON object; anything else is handed on
    // as it is, under `record`, rather than lost.
    let mut counterparty = match serde_json::from_str::<Value>(&row.body) {
        Ok(Value::Object(map)) => map,
        Ok(other) => Map::from_iter([("record".to_owned(), other)]),
        Err(_) => Map::from_iter([("record".to_owned(), Value::String(row.body.clone()))]),
    };
    if let Some(requisites) = requisites {
        if let Ok(value) = serde_json::from_str::<Value>(&requisites) {
            counterparty.insert("requisites".to_owned(), value);
        }
    }
    let onec_ref = link.remote_id;
    Item {
        id: row.id,
        op: if onec_ref.is_some() {
            "update"
        } else {
            "create"
        },
        key: row.record_key,
        onec_ref,
        counterparty: Value::Object(counterparty),
    }
}

/// Whether `text` is a GUID as 1C writes a `Ref_Key`
/// (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hexadecimal digits).
pub fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guid_is_what_1c_writes_for_a_ref() {
        assert!(is_guid("0d8f6e5c-1b2a-11ef-9c3d-00155d012345"));
        assert!(is_guid("0D8F6E5C-1B2A-11EF-9C3D-00155D012345"));
        assert!(!is_guid("0d8f6e5c1b2a11ef9c3d00155d012345"));
        assert!(!is_guid("0d8f6e5c-1b2a-11ef-9c3d-00155d01234g"));
        assert!(!is_guid(""));
    }

    #[test]
    fn a_failure_keeps_1cs_code_and_message() {
        let item = AckItem {
            id: 1,
            status: AckStatus::Failed,
            onec_ref: None,
            code: Some("E1".into()),
            message: Some(" ИНН не прошёл проверку ".into()),
        };
        assert_eq!(
            failure_text(&item),
            "1C refused (E1): ИНН не прошёл проверку"
        );
    }
}
