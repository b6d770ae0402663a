//! A poller's lease and acks, on the writer thread (the rules are in
//! `store::sync::lease`). Each is one transaction.
//!
//! What a lease must know beyond the window of rows it reads in id order
//! comes from the rows marked with a `leased_until` (the `outbox_leased`
//! partial index, a few hundred rows at most): the records out now (a
//! lease running), and the rows left pending below a poller's `after` (a
//! lease ended, or a row passed over while its record was out). The window
//! itself walks the table by id (`+system`, `+state`, as the runtime's
//! `outbox_pending`): no index on the random record keys. The marked rows
//! are read `INDEXED BY outbox_leased`: by its terms on `system` and
//! `state` SQLite would otherwise pick `outbox_due` and walk every pending
//! row (100,000 behind a 1C that has not polled for a while).

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use rusqlite::{params, OptionalExtension, Transaction};

use super::outbox::settle_one;
use crate::store::sync::{
    outbox_row, Ack, AckOutcome, AckResult, LeaseRequest, LeaseSweep, Leased, LeasedRow, Link,
    Settle, Swept,
};
use crate::store::{unix_ms, OutboxOp, OutboxRow};

/// Rows read per step of a lease's walk.
const WINDOW: u32 = 1_000;

/// Rows a lease looks at, at most: a poll past many records that are out
/// ends early (its `next_after` says where) rather than holding the
/// writer.
const MAX_LOOKED_AT: usize = 50_000;

/// `leased_until` of a row passed over while an earlier row of its record
/// was out: marked (found by the index), never a running lease.
const PASSED_OVER: i64 = 0;

pub(super) fn lease(tx: &Transaction<'_>, request: &LeaseRequest) -> rusqlite::Result<Leased> {
    let now = unix_ms(request.now);
    let mut leased = Leased {
        next_after: request.after.unwrap_or(0),
        ..Leased::default()
    };
    expire(
        tx,
        &request.system,
        request.max_attempts,
        request.dead_after,
        now,
        &mut leased,
    )?;
    // Records out now, and per record its oldest row left pending.
    let mut out: HashSet<String> = HashSet::new();
    let mut oldest_marked: HashMap<String, i64> = HashMap::new();
    {
        let mut marked = tx.prepare_cached(
            "SELECT record_key, id, leased_until, lease FROM outbox INDEXED BY outbox_leased
             WHERE system = ?1 AND leased_until IS NOT NULL AND state = 'pending'",
        )?;
        let mut rows = marked.query(params![request.system])?;
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            let id: i64 = row.get(1)?;
            let until: i64 = row.get(2)?;
            let lease: Option<String> = row.get(3)?;
            if lease.is_some() && until > now {
                out.insert(key);
            } else {
                let oldest = oldest_marked.entry(key).or_insert(id);
                *oldest = (*oldest).min(id);
            }
        }
    }
    let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
    let until = unix_ms(
        request
            .now
            .checked_add(request.lease_for)
            .unwrap_or(request.now),
    );
    let mut cursor = leased.next_after;
    let mut looked_at = 0usize;
    // Records decided by this lease: a later row of one (in a later
    // window) is passed over.
    let mut decided: HashSet<String> = HashSet::new();
    'walk: loop {
        let window = pending_after(tx, &request.system, cursor)?;
        let full = window.len() == WINDOW as usize;
        // Each record's rows in the window, in id order.
        let mut by_key: HashMap<&str, Vec<&OutboxRow>> = HashMap::new();
        for row in &window {
            by_key.entry(row.record_key.as_str()).or_default().push(row);
        }
        for row in &window {
            if leased.rows.len() >= limit || looked_at >= MAX_LOOKED_AT {
                break 'walk;
            }
            looked_at += 1;
            leased.next_after = row.id;
            cursor = row.id;
            let key = row.record_key.as_str();
            if !decided.insert(key.to_owned()) {
                // Decided with its record's first row in this window, or
                // out since an earlier window of this lease.
                if out.contains(key) {
                    pass_over(tx, row.id)?;
                }
                continue;
            }
            let rows = &by_key[key];
            let older_unseen = oldest_marked.get(key).is_some_and(|&id| id < rows[0].id);
            if out.contains(key) || older_unseen {
                // Out, or an older change of it waits below `after`: none
                // of these rows goes before it.
                for r in rows {
                    if !is_running(tx, r.id, now)? {
                        pass_over(tx, r.id)?;
                    }
                }
                continue;
            }
            // Coalescing: the last remove replaces every row before it and
            // is itself dropped (never handed out); of the rows after it,
            // the last upsert replaces the earlier ones.
            let after_remove = rows
                .iter()
                .rposition(|r| r.op == OutboxOp::Remove)
                .map_or(0, |i| i + 1);
            let chosen = (after_remove < rows.len()).then(|| rows.len() - 1);
            let drop_to = chosen.unwrap_or(rows.len());
            for r in &rows[..drop_to] {
                tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                    .execute([r.id])?;
                leased.dropped += 1;
            }
            if let Some(chosen) = chosen {
                let row = rows[chosen];
                leased.rows.push(hand_out(tx, request, row, until)?);
                out.insert(key.to_owned());
            }
        }
        if !full {
            break;
        }
    }
    Ok(leased)
}

/// Ends `request.system`'s leases that ran out, as the next lease would
/// (`expire`): without a poll, a row leased too often (or too old) is dead
/// all the same, and shows so.
pub(super) fn sweep(tx: &Transaction<'_>, request: &LeaseSweep) -> rusqlite::Result<Swept> {
    let mut leased = Leased::default();
    expire(
        tx,
        &request.system,
        request.max_attempts,
        request.dead_after,
        unix_ms(request.now),
        &mut leased,
    )?;
    Ok(Swept {
        expired: leased.expired,
        dead: leased.dead,
    })
}

/// Leases that ended: counted, the row pending again (marked) or dead.
fn expire(
    tx: &Transaction<'_>,
    system: &str,
    max_attempts: u32,
    dead_after: std::time::Duration,
    now: i64,
    leased: &mut Leased,
) -> rusqlite::Result<()> {
    let ended: Vec<(i64, u32, i64)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id, attempts, created_at FROM outbox INDEXED BY outbox_leased
             WHERE system = ?1 AND leased_until IS NOT NULL AND leased_until <= ?2
               AND lease IS NOT NULL AND state = 'pending'",
        )?;
        let rows = stmt.query_map(params![system, now], |r| {
            let attempts: i64 = r.get(1)?;
            Ok((
                r.get(0)?,
                u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
                r.get(2)?,
            ))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let dead_after_ms = i64::try_from(dead_after.as_millis()).unwrap_or(i64::MAX);
    for (id, attempts, created_at) in ended {
        leased.expired += 1;
        let too_old = created_at.saturating_add(dead_after_ms) <= now;
        if attempts >= max_attempts || too_old {
            let error = if too_old {
                format!(
                    "pending for more than {} (dead_after); leased {attempts} times, never acknowledged",
                    humantime::format_duration(dead_after)
                )
            } else {
                format!("leased {attempts} times, never acknowledged")
            };
            tx.prepare_cached(
                "UPDATE outbox SET state = 'dead', last_error = ?2, lease = NULL, leased_until = NULL
                 WHERE id = ?1",
            )?
            .execute(params![id, error])?;
            leased.dead += 1;
        } else {
            tx.prepare_cached(
                "UPDATE outbox SET lease = NULL, last_error = 'the lease ended without an ack'
                 WHERE id = ?1",
            )?
            .execute([id])?;
        }
    }
    Ok(())
}

/// The next pending rows of `system` after `cursor`, in id order.
fn pending_after(
    tx: &Transaction<'_>,
    system: &str,
    cursor: i64,
) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, system, kind, record_key, op, body, attempts, next_at, state, last_error, created_at
         FROM outbox WHERE +system = ?1 AND +state = 'pending' AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![system, cursor, WINDOW], outbox_row)?;
    rows.collect()
}

/// Whether row `id` is out now (a running lease).
fn is_running(tx: &Transaction<'_>, id: i64, now: i64) -> rusqlite::Result<bool> {
    let running: Option<i64> = tx
        .prepare_cached(
            "SELECT 1 FROM outbox WHERE id = ?1 AND lease IS NOT NULL AND leased_until > ?2",
        )?
        .query_row(params![id, now], |r| r.get(0))
        .optional()?;
    Ok(running.is_some())
}

/// Marks row `id` passed over (unless it is marked already).
fn pass_over(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE outbox SET leased_until = ?2 WHERE id = ?1 AND leased_until IS NULL",
    )?
    .execute(params![id, PASSED_OVER])?;
    Ok(())
}

/// Leases `row` until `until`: an attempt more; with its link and requisites.
fn hand_out(
    tx: &Transaction<'_>,
    request: &LeaseRequest,
    row: &OutboxRow,
    until: i64,
) -> rusqlite::Result<LeasedRow> {
    tx.prepare_cached(
        "UPDATE outbox SET leased_until = ?2, lease = ?3, attempts = attempts + 1 WHERE id = ?1",
    )?
    .execute(params![row.id, until, request.lease])?;
    let link = tx
        .prepare_cached(
            "SELECT remote_id, remote_version FROM idmap
             WHERE system = ?1 AND kind = ?2 AND local_id = ?3 AND closed_at IS NULL",
        )?
        .query_row(params![row.system, row.kind, row.record_key], |r| {
            Ok(Link {
                remote_id: r.get(0)?,
                remote_version: r.get(1)?,
            })
        })
        .optional()?
        .unwrap_or_default();
    let requisites: Option<String> = tx
        .prepare_cached("SELECT body FROM requisites WHERE id = ?1")?
        .query_row([&row.record_key], |r| r.get(0))
        .optional()?;
    let mut row = row.clone();
    row.attempts = row.attempts.saturating_add(1);
    Ok(LeasedRow {
        row,
        link,
        requisites,
    })
}

pub(super) fn ack(
    tx: &Transaction<'_>,
    system: &str,
    acks: &[Ack],
    now: SystemTime,
) -> rusqlite::Result<Vec<AckOutcome>> {
    let now = unix_ms(now);
    let mut outcomes = Vec::with_capacity(acks.len());
    for ack in acks {
        let row: Option<(String, String, String)> = tx
            .prepare_cached(
                "SELECT kind, record_key, state FROM outbox WHERE id = ?1 AND system = ?2",
            )?
            .query_row(params![ack.id, system], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((kind, record_key, state)) = row else {
            outcomes.push(AckOutcome::Ignored);
            continue;
        };
        let outcome = match (&ack.result, state.as_str()) {
            // A late ack of a row that died for want of one still tells
            // where the record is.
            (AckResult::Confirmed { remote_id }, "pending" | "dead") => {
                // The rows of the record passed over before this one are
                // older states: replaced by what the remote now holds.
                tx.prepare_cached(
                    "DELETE FROM outbox
                     WHERE system = ?1 AND record_key = ?2 AND id < ?3 AND leased_until IS NOT NULL
                       AND state = 'pending' AND NOT (lease IS NOT NULL AND leased_until > ?4)",
                )?
                .execute(params![system, record_key, ack.id, now])?;
                settle_one(
                    tx,
                    &Settle::Confirmed {
                        id: ack.id,
                        system: system.to_owned(),
                        kind,
                        record_key,
                        remote_id: remote_id.clone(),
                        remote_version: None,
                    },
                )?;
                AckOutcome::Done
            }
            (AckResult::Failed { error }, "pending") => {
                tx.prepare_cached(
                    "UPDATE outbox SET state = 'dead', last_error = ?2, lease = NULL, leased_until = NULL
                     WHERE id = ?1",
                )?
                .execute(params![ack.id, error])?;
                AckOutcome::Dead
            }
            _ => AckOutcome::Ignored,
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}
