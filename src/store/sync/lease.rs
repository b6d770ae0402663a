//! Outbox rows a remote pulls (1C under `[sync.onec] transport = "pull"`)
//! rather than a worker sending them: a poll leases rows ([`Store::outbox_lease`]),
//! the poller acknowledges what became of each ([`Store::outbox_ack`]). SQL
//! in `writer/lease.rs`; each call is one writer transaction.
//!
//! The rules, the runtime's applied to a poller:
//! - a row handed out is the poller's until its lease ends: no other poll
//!   gets it, nor any other row of its record (one change per record out
//!   at a time, never a later one before an earlier one);
//! - per record the last upsert replaces the earlier ones (dropped unsent);
//!   a `remove` is never handed out (1C is told nothing of a removal; the
//!   counterparty stays in 1C): it and every row before it are dropped;
//! - a poll going on from `after` sees rows after it only; a row whose
//!   lease ended is pending again for the next poll started without
//!   `after`, and until then no newer row of its record is handed out;
//! - a lease is an attempt: a row whose lease ends after
//!   `max_attempts` leases, or older than `dead_after`, is dead; leases
//!   end at the next poll, or at a sweep ([`Store::outbox_lease_sweep`])
//!   when no poll comes;
//! - an ack counts whenever it comes (a late one too): a confirmation
//!   writes the id-map link and deletes the row like the runtime's
//!   `Settle::Confirmed`, and with it the rows of its record passed over
//!   before it; a failure makes the row dead with the poller's message.

use std::time::{Duration, SystemTime};

use super::super::writer::{Command, OutboxWrite};
use super::{Link, OutboxRow};
use crate::store::{unix_ms, Store, StoreError};

/// A poll: which rows, and for how long they are the poller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub system: String,
    /// Only rows with a larger id (the previous poll's `next_after`).
    pub after: Option<i64>,
    /// At most this many rows (one per record).
    pub limit: u32,
    /// The lease's id, given back with the rows.
    pub lease: String,
    pub now: SystemTime,
    /// How long the rows stay the poller's.
    pub lease_for: Duration,
    /// A row whose lease ends after this many leases is dead.
    pub max_attempts: u32,
    /// A row pending longer than this is dead when its lease ends.
    pub dead_after: Duration,
}

/// A sweep of ended leases, between polls: what a lease does first, alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSweep {
    pub system: String,
    pub now: SystemTime,
    /// As [`LeaseRequest::max_attempts`].
    pub max_attempts: u32,
    /// As [`LeaseRequest::dead_after`].
    pub dead_after: Duration,
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Leases found ended (without an ack).
    pub expired: u64,
    /// Of those, rows now dead (leased too often, or too old).
    pub dead: u64,
}

/// A row a poll handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedRow {
    /// As stored after the lease (its attempts counting this one).
    pub row: OutboxRow,
    /// Its record's id-map link (the remote id when the remote holds it).
    pub link: Link,
    /// The record's requisites in the sync store, if any (JSON).
    pub requisites: Option<String>,
}

/// What a poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leased {
    /// The rows handed out, the oldest change first.
    pub rows: Vec<LeasedRow>,
    /// The id the next poll goes on after: every row up to it was looked at.
    pub next_after: i64,
    /// Leases found ended (without an ack) by this poll.
    pub expired: u64,
    /// Of those, rows now dead (leased too often, or too old).
    pub dead: u64,
    /// Rows dropped unsent: replaced by a later row of their record, or removes.
    pub dropped: u64,
}

/// What the poller says became of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckResult {
    /// The remote holds the record as `remote_id` (created, found, updated).
    Confirmed { remote_id: String },
    /// The remote refused it: the row is dead with this message.
    Failed { error: String },
}

/// One row's ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub id: i64,
    pub result: AckResult,
}

/// What an ack did to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Confirmed: the id-map has the link, the row is gone.
    Done,
    /// Failed: the row is dead.
    Dead,
    /// No such row of the system, or finished already: nothing changed.
    Ignored,
}

impl AckOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AckOutcome::Done => "done",
            AckOutcome::Dead => "dead",
            AckOutcome::Ignored => "ignored",
        }
    }
}

impl Store {
    /// Leases `request.system`'s pending rows to a poller, in one
    /// transaction (see the module's rules). On `Err` nothing changed.
    pub async fn outbox_lease(&self, request: LeaseRequest) -> Result<Leased, StoreError> {
        self.request(|reply| Command::Outbox(OutboxWrite::Lease { request, reply }))
            .await
    }

    /// Writes what a poller says became of rows of `system`, all in one
    /// transaction: an outcome per ack, in order. On `Err` none of it is.
    pub async fn outbox_ack(
        &self,
        system: &str,
        acks: Vec<Ack>,
        now: SystemTime,
    ) -> Result<Vec<AckOutcome>, StoreError> {
        let system = system.to_owned();
        self.request(|reply| {
            Command::Outbox(OutboxWrite::Ack {
                system,
                acks,
                now,
                reply,
            })
        })
        .await
    }

    /// Ends the leases of `request.system` that ran out without an ack, in
    /// one transaction, as the next lease would: each row pending again, or
    /// dead when leased `max_attempts` times (or older than `dead_after`).
    /// A poller that stopped polling leaves no row leased forever.
    pub async fn outbox_lease_sweep(&self, request: LeaseSweep) -> Result<Swept, StoreError> {
        self.request(|reply| Command::Outbox(OutboxWrite::Sweep { request, reply }))
            .await
    }

    /// How many of `system`'s rows are leased out at `now`.
    pub async fn outbox_leased(&self, system: &str, now: SystemTime) -> Result<u64, StoreError> {
        let system = system.to_owned();
        let now_ms = unix_ms(now);
        self.read(move |conn, path| {
            conn.prepare_cached(
                // The partial index of marked rows, not `outbox_due`'s
                // walk of every pending row (see `writer/lease.rs`).
                "SELECT COUNT(*) FROM outbox INDEXED BY outbox_leased
                 WHERE system = ?1 AND leased_until IS NOT NULL AND leased_until > ?2
                   AND lease IS NOT NULL AND state = 'pending'",
            )
            .and_then(|mut stmt| stmt.query_row(rusqlite::params![system, now_ms], |r| r.get(0)))
            .map(|n: i64| u64::try_from(n).unwrap_or(0))
            .map_err(|e| StoreError::sqlite(path, "counting leased outbox rows", e))
        })
        .await
    }
}
