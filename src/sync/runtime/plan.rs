//! Which pending rows a worker sends next, and which it drops unsent: the
//! order and coalescing rules, as a pure function of the outbox's window.
//!
//! Per record (`record_key`): at most one row in flight, never a later row
//! before an earlier one (a record whose first pending row waits for its
//! retry holds its later rows back). Coalescing happens here, when a record
//! is taken, not when the feed enqueues: the writer never needs to know
//! what is in flight (a worker's memory), its group commit stays a plain
//! insert, and what is queued stays visible in the outbox until a worker
//! looks at it. At take time:
//! - the last `remove` of the record's pending rows replaces every row
//!   before it (sent first; later upserts follow once it is confirmed);
//! - otherwise the last upsert replaces the earlier ones;
//! - but events (`kind` [`PAYMENT_KIND`]) are never replaced: each is sent,
//!   the oldest first. Their record keys (`payment:<ref>`) are no
//!   counterparty's, so they never share a record with the feed's rows.
//!
//! Whether a `remove` goes to a record the system never held is decided
//! when it is sent, by the id-map and `find_existing` (a create may have
//! been accepted just before a crash): see the worker.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use crate::store::{OutboxOp, OutboxRow, PAYMENT_KIND};

/// What to do with the window's rows now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// One row per record, in the order of each record's first pending row
    /// (the oldest change first).
    pub send: Vec<OutboxRow>,
    /// Rows a later row of their record replaced: deleted unsent.
    pub drop: Vec<i64>,
}

/// Picks at most `max` rows to send from `window` (pending rows in id
/// order, due or not), skipping records in `in_flight` and records whose
/// first row is not due at `now`.
pub fn plan(
    window: &[OutboxRow],
    in_flight: &HashSet<String>,
    now: SystemTime,
    max: usize,
) -> Plan {
    // Each record's rows, in id order; records in the order of their first.
    let mut order: Vec<&str> = Vec::new();
    let mut by_key: HashMap<&str, Vec<&OutboxRow>> = HashMap::new();
    for row in window {
        by_key
            .entry(row.record_key.as_str())
            .or_insert_with(|| {
                order.push(row.record_key.as_str());
                Vec::new()
            })
            .push(row);
    }
    let mut plan = Plan::default();
    for key in order {
        if plan.send.len() >= max {
            break;
        }
        if in_flight.contains(key) {
            continue;
        }
        let rows = &by_key[key];
        if rows[0].next_at > now {
            continue;
        }
        // Events (a payment's `payment.posted`, then `payment.reversed`)
        // are each news to the system: sent one by one, in order, never
        // replaced by a later one.
        let chosen = if rows[0].kind == PAYMENT_KIND {
            0
        } else {
            rows.iter()
                .rposition(|r| r.op == OutboxOp::Remove)
                .unwrap_or(rows.len() - 1)
        };
        plan.drop.extend(rows[..chosen].iter().map(|r| r.id));
        plan.send.push(rows[chosen].clone());
    }
    plan.send.sort_by_key(|r| r.id);
    plan
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::OutboxState;

    fn row(id: i64, key: &str, op: OutboxOp, due_in: i64) -> OutboxRow {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let next_at = if due_in >= 0 {
            now + Duration::from_secs(due_in as u64)
        } else {
            now - Duration::from_secs((-due_in) as u64)
        };
        OutboxRow {
            id,
            system: "crm".into(),
            kind: "company".into(),
            record_key: key.into(),
            op,
            body: format!("{{\"v\":{id}}}"),
            attempts: 0,
            next_at,
            state: OutboxState::Pending,
            last_error: None,
            created_at: now,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000)
    }

    use OutboxOp::{Remove, Upsert};

    #[test]
    fn the_last_upsert_replaces_the_earlier_ones_of_its_record() {
        let window = [
            row(1, "a", Upsert, 0),
            row(2, "b", Upsert, 0),
            row(3, "a", Upsert, 0),
            row(4, "a", Upsert, 0),
        ];
        let plan = plan(&window, &HashSet::new(), now(), 10);
        let sent: Vec<i64> = plan.send.iter().map(|r| r.id).collect();
        assert_eq!(sent, [2, 4]);
        assert_eq!(plan.drop, [1, 3]);
    }

    #[test]
    fn a_remove_replaces_everything_before_it_and_later_upserts_wait() {
        let window = [
            row(1, "a", Upsert, 0),
            row(2, "a", Remove, 0),
            row(3, "a", Upsert, 0),
            row(4, "a", Upsert, 0),
        ];
        let plan = plan(&window, &HashSet::new(), now(), 10);
        assert_eq!(plan.send.iter().map(|r| r.id).collect::<Vec<_>>(), [2]);
        assert_eq!(plan.drop, [1], "the upserts after the remove wait for it");
        // Once the remove is confirmed, the last upsert replaces the other.
        let window = [row(3, "a", Upsert, 0), row(4, "a", Upsert, 0)];
        let plan = super::plan(&window, &HashSet::new(), now(), 10);
        assert_eq!(plan.send.iter().map(|r| r.id).collect::<Vec<_>>(), [4]);
        assert_eq!(plan.drop, [3]);
    }

    #[test]
    fn a_record_in_flight_or_waiting_for_its_retry_holds_its_later_rows() {
        let window = [
            row(1, "a", Upsert, 5),
            row(2, "b", Upsert, 0),
            row(3, "a", Upsert, 0),
            row(4, "b", Upsert, 0),
            row(5, "c", Upsert, -5),
        ];
        let in_flight = HashSet::from(["b".to_owned()]);
        let plan = plan(&window, &in_flight, now(), 10);
        assert_eq!(plan.send.iter().map(|r| r.id).collect::<Vec<_>>(), [5]);
        assert!(
            plan.drop.is_empty(),
            "nothing of a waiting record is dropped"
        );
    }

    #[test]
    fn at_most_max_records_oldest_first() {
        let window = [
            row(1, "a", Upsert, 0),
            row(2, "b", Upsert, 0),
            row(3, "c", Upsert, 0),
            row(4, "a", Upsert, 0),
        ];
        let plan = plan(&window, &HashSet::new(), now(), 2);
        assert_eq!(plan.send.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(plan.drop, [1]);
    }

    #[test]
    fn events_are_sent_one_by_one_never_coalesced() {
        let event = |id, key: &str| OutboxRow {
            kind: PAYMENT_KIND.into(),
            ..row(id, key, Upsert, 0)
        };
        let window = [
            event(1, "payment:a"),
            row(2, "b", Upsert, 0),
            event(3, "payment:a"),
            row(4, "b", Upsert, 0),
        ];
        let p = plan(&window, &HashSet::new(), now(), 10);
        assert_eq!(p.send.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(p.drop, [2]);
    }
}
