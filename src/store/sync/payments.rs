//! Payments in the sync store: each version of a payment document once
//! (deduplicated on its ref and version), the event it made, and that
//! event's outbox rows for the systems that take payments, all committed in
//! one transaction with the poll's cursor. The tables are migration 5's
//! (`schema.rs`); the writes run on the writer thread (`writer/payments.rs`).
//!
//! Which event a version makes is decided here, inside the transaction,
//! from the ref's latest stored row: the OData poll and a push (or two
//! pushes) can never both report the same change.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::super::writer::{Command, PaymentsWrite};
use crate::store::{from_unix_ms, Store, StoreError};
use std::time::SystemTime;

/// The outbox `kind` of a payment event: never a record kind of the feed
/// (`company`), so the reconcile never reads such rows, and the sending
/// runtime never coalesces them (each event reaches its system).
pub const PAYMENT_KIND: &str = "payment";

/// What a payment version is to the systems that take payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentEvent {
    /// First seen posted, or posted again after a reversal.
    Posted,
    /// A new version of a payment already posted, still posted.
    Changed,
    /// Unposted, marked for deletion, or deleted, after it was posted.
    Reversed,
}

impl PaymentEvent {
    /// The event's name: `payment.posted`, `payment.changed`, `payment.reversed`.
    pub fn name(self) -> &'static str {
        match self {
            PaymentEvent::Posted => "payment.posted",
            PaymentEvent::Changed => "payment.changed",
            PaymentEvent::Reversed => "payment.reversed",
        }
    }

    /// The metric label: `posted`, `changed`, `reversed`.
    pub fn label(self) -> &'static str {
        match self {
            PaymentEvent::Posted => "posted",
            PaymentEvent::Changed => "changed",
            PaymentEvent::Reversed => "reversed",
        }
    }

    fn parse(name: &str) -> Option<PaymentEvent> {
        [
            PaymentEvent::Posted,
            PaymentEvent::Changed,
            PaymentEvent::Reversed,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }

    /// The event a version in state `posted` makes after the ref's latest
    /// stored state (`None`: never seen). A version that changes nothing a
    /// module was told (a draft never posted, a reversed payment deleted)
    /// makes none.
    pub fn of(previous: Option<bool>, posted: bool) -> Option<PaymentEvent> {
        match (previous, posted) {
            (None | Some(false), true) => Some(PaymentEvent::Posted),
            (Some(true), true) => Some(PaymentEvent::Changed),
            (Some(true), false) => Some(PaymentEvent::Reversed),
            (None | Some(false), false) => None,
        }
    }
}

/// One version of a payment document, as a source hands it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment {
    /// 1C's `Ref_Key` (a GUID), lowercase.
    pub ref_key: String,
    /// 1C's `DataVersion`, or the version a push gives.
    pub version: String,
    /// Posted, not marked for deletion, not gone.
    pub posted: bool,
    /// As the source wrote it (1C: its local time): the poll's window.
    pub date: String,
    /// The payment as JSON (ref, version, number, date, amount,
    /// counterparty, rows): the event's `payment`.
    pub body: String,
}

/// Where a poll stands: the last document handed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentCursor {
    pub date: String,
    pub ref_key: String,
    /// When it was last moved.
    pub updated_at: SystemTime,
}

/// A batch of versions to commit together ([`Store::payments_commit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentsBatch {
    /// `odata` or `push`: the rows' and the events' source.
    pub source: String,
    pub payments: Vec<NewPayment>,
    /// The systems that take payments: one outbox row each per event.
    pub subscribers: Vec<String>,
    /// The cursor moved to (date, ref_key) with the batch.
    pub cursor: Option<(String, String)>,
}

/// What [`Store::payments_commit`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentsCommitted {
    /// Versions new to the store (committed, with or without an event).
    pub accepted: usize,
    /// Versions it held already (or twice in the batch): nothing written.
    pub duplicates: usize,
    /// The events made, in the batch's order.
    pub events: Vec<PaymentEvent>,
}

/// A payment handed on by the poll whose latest version is posted: what a
/// poll that no longer sees it in its window must ask 1C about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedPayment {
    pub ref_key: String,
    pub version: String,
    pub date: String,
}

/// A payment's latest state, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPayment {
    pub ref_key: String,
    pub version: String,
    pub source: String,
    pub posted: bool,
    /// The event its latest version made, if any.
    pub event: Option<PaymentEvent>,
    pub body: String,
}

impl Store {
    /// Commits `batch` in one transaction: each version new to the store
    /// stored with its event, one outbox row per event and subscriber, and
    /// the cursor. All of it, or on `Err` none.
    pub async fn payments_commit(
        &self,
        batch: PaymentsBatch,
    ) -> Result<PaymentsCommitted, StoreError> {
        self.request(|reply| Command::Sync(PaymentsWrite::Commit { batch, reply }.into()))
            .await
    }

    /// The cursor of `source`, if a poll has moved it.
    pub async fn payments_cursor(&self, source: &str) -> Result<Option<PaymentCursor>, StoreError> {
        let source = source.to_owned();
        self.read(move |conn, path| cursor(conn, path, &source))
            .await
    }

    /// The payments of `source` whose latest version is posted, dated
    /// `from` or later (as the source writes dates).
    pub async fn payments_posted_since(
        &self,
        source: &str,
        from: &str,
    ) -> Result<Vec<PostedPayment>, StoreError> {
        let (source, from) = (source.to_owned(), from.to_owned());
        self.read(move |conn, path| posted_since(conn, path, &source, &from))
            .await
    }

    /// The latest stored version of payment `ref_key`.
    pub async fn payment_get(&self, ref_key: &str) -> Result<Option<StoredPayment>, StoreError> {
        let ref_key = ref_key.to_owned();
        self.read(move |conn, path| latest(conn, path, &ref_key))
            .await
    }
}

fn cursor(
    conn: &Connection,
    path: &Path,
    source: &str,
) -> Result<Option<PaymentCursor>, StoreError> {
    conn.prepare_cached("SELECT date, ref_key, updated_at FROM payments_cursor WHERE source = ?1")
        .and_then(|mut s| {
            s.query_row([source], |r| {
                Ok(PaymentCursor {
                    date: r.get(0)?,
                    ref_key: r.get(1)?,
                    updated_at: from_unix_ms(r.get(2)?),
                })
            })
            .optional()
        })
        .map_err(|e| StoreError::sqlite(path, "reading the payments cursor", e))
}

fn posted_since(
    conn: &Connection,
    path: &Path,
    source: &str,
    from: &str,
) -> Result<Vec<PostedPayment>, StoreError> {
    let query = || -> rusqlite::Result<Vec<PostedPayment>> {
        let mut s = conn.prepare_cached(
            "SELECT p.ref_key, p.version, p.date FROM payments p
             WHERE p.source = ?1 AND p.date >= ?2 AND p.posted = 1
               AND p.id = (SELECT MAX(q.id) FROM payments q WHERE q.ref_key = p.ref_key)
             ORDER BY p.date, p.ref_key",
        )?;
        let rows = s.query_map([source, from], |r| {
            Ok(PostedPayment {
                ref_key: r.get(0)?,
                version: r.get(1)?,
                date: r.get(2)?,
            })
        })?;
        rows.collect()
    };
    query().map_err(|e| StoreError::sqlite(path, "reading the posted payments", e))
}

fn latest(
    conn: &Connection,
    path: &Path,
    ref_key: &str,
) -> Result<Option<StoredPayment>, StoreError> {
    conn.prepare_cached(
        "SELECT ref_key, version, source, posted, event, body FROM payments
         WHERE ref_key = ?1 ORDER BY id DESC LIMIT 1",
    )
    .and_then(|mut s| {
        s.query_row([ref_key], |r| {
            let event: Option<String> = r.get(4)?;
            Ok(StoredPayment {
                ref_key: r.get(0)?,
                version: r.get(1)?,
                source: r.get(2)?,
                posted: r.get::<_, i64>(3)? != 0,
                event: event.as_deref().and_then(PaymentEvent::parse),
                body: r.get(5)?,
            })
        })
        .optional()
    })
    .map_err(|e| StoreError::sqlite(path, "reading a payment", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_follow_the_latest_state() {
        assert_eq!(PaymentEvent::of(None, true), Some(PaymentEvent::Posted));
        assert_eq!(
            PaymentEvent::of(Some(false), true),
            Some(PaymentEvent::Posted)
        );
        assert_eq!(
            PaymentEvent::of(Some(true), true),
            Some(PaymentEvent::Changed)
        );
        assert_eq!(
            PaymentEvent::of(Some(true), false),
            Some(PaymentEvent::Reversed)
        );
        assert_eq!(PaymentEvent::of(None, false), None);
        assert_eq!(PaymentEvent::of(Some(false), false), None);
        for e in [
            PaymentEvent::Posted,
            PaymentEvent::Changed,
            PaymentEvent::Reversed,
        ] {
            assert_eq!(PaymentEvent::parse(e.name()), Some(e));
        }
    }
}
