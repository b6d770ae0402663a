//! Sync writes made together: what the inbound policy (`sync::inbound`)
//! decides for one record (its conflicts, a row queued back, the id-map's
//! link, close or move, the overlay, a CRM-only record leaving its source)
//! committed in ONE transaction, so a failure part-way leaves nothing of it
//! and a retry writes no conflict row twice; and the removal of requisites
//! of records 1C deleted. The SQL is in `writer/sync_batch.rs`.

use super::super::writer::{Command, SyncWrite};
use super::{IdMapLink, NewConflict, NewOutboxRow};
use crate::store::{Store, StoreError};

/// An id-map row by its local side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapKey {
    pub system: String,
    pub kind: String,
    pub local_id: String,
}

/// Writes to commit together ([`Store::sync_batch`]), made in this order:
/// id-map rows dropped, links closed, links made, outbox rows queued (with
/// their id-map hashes, as [`Store::enqueue`]), conflicts recorded, overlays
/// written, snapshot rows removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncBatch {
    /// Id-map rows deleted outright: a link moving to another local record
    /// (a CRM-only record linked to 1C's) leaves no row behind.
    pub unlinks: Vec<IdMapKey>,
    /// Links closed (the system deleted its copy); the rows stay.
    pub closes: Vec<IdMapKey>,
    /// Links made or opened again ([`Store::idmap_link`]'s rule).
    pub links: Vec<IdMapLink>,
    /// Rows queued for the systems, each with its hash (the id-map takes it
    /// when the system confirms the row).
    pub outbox: Vec<NewOutboxRow>,
    pub conflicts: Vec<NewConflict>,
    /// Overlay bodies (JSON) by record id; `None` deletes the id's.
    pub overlays: Vec<(String, Option<String>)>,
    /// (source, id): snapshot rows of a source kept in this store (a CRM's
    /// records) removed, as [`Store::apply_changes`] removes them.
    pub snapshot_removals: Vec<(String, String)>,
}

impl SyncBatch {
    pub fn is_empty(&self) -> bool {
        *self == SyncBatch::default()
    }
}

impl Store {
    /// Commits `batch` in one transaction: all of it, or on `Err` none.
    pub async fn sync_batch(&self, batch: SyncBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.request(|reply| Command::Sync(SyncWrite::Batch { batch, reply }))
            .await
    }

    /// Deletes the requisites bodies of these record ids (records 1C no
    /// longer holds); an id without one is no change. One transaction;
    /// resolves with the bodies deleted.
    pub async fn requisites_delete(&self, ids: Vec<String>) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.request(|reply| Command::Sync(SyncWrite::RequisitesDelete { ids, reply }))
            .await
    }
}
