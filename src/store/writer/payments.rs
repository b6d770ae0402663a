//! Payments' writes, on the writer thread: a batch of payment versions,
//! their events, the events' outbox rows and the poll's cursor in one
//! transaction (see `store/sync/payments.rs`).

use std::collections::HashSet;
use std::time::SystemTime;

use rusqlite::{params, OptionalExtension, Transaction};

use super::{sync_batch, Reply, SyncWrite, Writer};
use crate::store::sync::payments::{PaymentEvent, PaymentsBatch, PaymentsCommitted, PAYMENT_KIND};
use crate::store::{unix_ms, NewOutboxRow, OutboxOp};

/// A write of payments.
pub(in crate::store) enum PaymentsWrite {
    Commit {
        batch: PaymentsBatch,
        reply: Reply<PaymentsCommitted>,
    },
}

impl From<PaymentsWrite> for SyncWrite {
    fn from(write: PaymentsWrite) -> SyncWrite {
        SyncWrite::Payments(write)
    }
}

impl Writer {
    pub(super) fn payments_write(&mut self, write: PaymentsWrite) {
        match write {
            PaymentsWrite::Commit { batch, reply } => {
                let now = unix_ms(SystemTime::now());
                let result = self.logged("sync payments", "committing payments", |tx| {
                    commit(tx, &batch, now)
                });
                let _ = reply.send(result);
            }
        }
    }
}

fn commit(
    tx: &Transaction<'_>,
    batch: &PaymentsBatch,
    now: i64,
) -> rusqlite::Result<PaymentsCommitted> {
    let mut done = PaymentsCommitted::default();
    let mut known =
        tx.prepare_cached("SELECT 1 FROM payments WHERE ref_key = ?1 AND version = ?2")?;
    let mut latest = tx.prepare_cached(
        "SELECT posted FROM payments WHERE ref_key = ?1 ORDER BY id DESC LIMIT 1",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO payments (ref_key, version, source, posted, event, date, body, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut outbox = Vec::new();
    // A batch naming one version twice stores it once.
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for p in &batch.payments {
        let key = (p.ref_key.as_str(), p.version.as_str());
        if !seen.insert(key)
            || known
                .query_row(params![p.ref_key, p.version], |_| Ok(()))
                .optional()?
                .is_some()
        {
            done.duplicates += 1;
            continue;
        }
        let previous: Option<bool> = latest
            .query_row([&p.ref_key], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|posted| posted != 0);
        let event = PaymentEvent::of(previous, p.posted);
        insert.execute(params![
            p.ref_key,
            p.version,
            batch.source,
            p.posted as i64,
            event.map(PaymentEvent::name),
            p.date,
            p.body,
            now
        ])?;
        done.accepted += 1;
        if let Some(event) = event {
            done.events.push(event);
            let body = format!(
                "{{\"event\":\"{}\",\"source\":{},\"payment\":{}}}",
                event.name(),
                serde_json::Value::from(batch.source.as_str()),
                p.body
            );
            let hash = event_hash(&p.ref_key, &p.version);
            for system in &batch.subscribers {
                outbox.push(NewOutboxRow {
                    system: system.clone(),
                    kind: PAYMENT_KIND.to_owned(),
                    record_key: format!("payment:{}", p.ref_key),
                    op: OutboxOp::Upsert,
                    body: body.clone(),
                    hash,
                });
            }
        }
    }
    sync_batch::enqueue(tx, &outbox, now)?;
    if let Some((date, ref_key)) = &batch.cursor {
        // Unchanged cursor, nothing written: a re-read that finds nothing
        // new commits an empty transaction.
        tx.prepare_cached(
            "INSERT INTO payments_cursor (source, date, ref_key, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (source) DO UPDATE SET date = excluded.date, ref_key = excluded.ref_key,
                 updated_at = excluded.updated_at
             WHERE date IS NOT excluded.date OR ref_key IS NOT excluded.ref_key",
        )?
        .execute(params![batch.source, date, ref_key, now])?;
    }
    Ok(done)
}

/// The outbox hash of an event (FNV-1a of ref and version), never 0 (the
/// id-map's "removed").
fn event_hash(ref_key: &str, version: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ref_key.bytes().chain([0]).chain(version.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}
