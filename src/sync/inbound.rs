//! What the core does with a record a system reports: created, changed or
//! deleted there (issue 17 item 10). The sync runtime (issue 18) decodes
//! each CRM's webhooks and polls into an [`Inbound`], system-neutral, and
//! hands it to [`Applier::apply`]; this module decides.
//!
//! - **Identity** first ([`identify`]): the id-map by the remote id, then
//!   the system's business key; a shared phone is logged, never merged. A
//!   record matching nothing becomes a CRM-only record
//!   ([`super::crm_source`], id `system:kind:remote_id`); one matching a
//!   record of another source (1C's) is linked to it, never copied; one
//!   matching several, or one the system already holds under another id,
//!   is refused, counted and recorded as a conflict.
//! - **1C owns a linked record's requisites** and its name: [`OWNED`]. The
//!   issue lists INN, KPP, OGRN, addresses, bank and director; the name is
//!   taken too, since it is the legal name 1C prints on documents, and a
//!   CRM rename could be applied nowhere (the entry's JSON stays the
//!   source's): as a conflict it is at least seen. A CRM edit of them is
//!   not applied: each differing field is a `conflicts` row (`1c_wins`) and
//!   1C's record is queued back to the system. Phones merge as a
//!   normalized union: numbers the CRM adds go to the overlay, after the
//!   record's own, never into 1C's JSON; the responsible user and the
//!   record's page (from `link_templates`) go to the overlay too.
//! - **A CRM-only record's edit** is applied (it is its own source), once
//!   its requisites pass [`requisites::check`]; a failing field is a
//!   `conflicts` row naming the problem, and nothing is applied.
//! - **A deletion** never deletes in 1C: a linked record is kept (a
//!   `conflicts` row `kept_in_1c`), its link closed, the system's part of
//!   its overlay dropped; a CRM-only record leaves its source.
//! - **Echo**: a record equal (after [`hash`] normalization) to what the
//!   id-map says was last sent or taken, with no overlay change, is our own
//!   change coming back: nothing is written.
//! - **Only what the payload carries counts**: a field a [`RemoteRecord`]
//!   leaves `None` was not told and keeps its value; `Some("")` (or an
//!   empty list) clears it.
//! - **Numbers and e-mails** a system tells of a linked record are its
//!   current set: the overlay keeps each system's part ([`Told`]), so a
//!   number the CRM removed leaves (unless another system tells it too);
//!   e-mails merge lowercased, shown on the card after the record's own.
//! - **One transaction**: what one inbound record writes to the sync store
//!   (conflicts, the row sent back, the id-map's link or close, the
//!   overlay) is one [`SyncBatch`]: a failure part-way leaves nothing, and
//!   the runtime's retry writes no conflict twice.
//! - **A CRM-only record linked to 1C** ([`Applier::link_crm_only`]): when
//!   another source (1C's read) brings a record with its business key,
//!   or the system's change of it now finds one, it leaves its source and
//!   the other record gets its numbers, e-mails, manager and page as an
//!   overlay, in one sync-store transaction and ONE directory swap
//!   ([`Directory::move_to_overlays`]); the id-map row moves to that
//!   record. Found by [`super::link`] (the directory's added ids) or here.

use std::collections::HashSet;
use std::sync::Arc;

use std::time::SystemTime;

use crate::directory::model::Link;
use crate::directory::overlay::Told;
use crate::directory::{
    requisites, Counterparty, Directory, Entry, Overlay, OverlayError, OverlayManager,
};
use crate::logging::Escaped;
use crate::phone;
use crate::sources::overlays::{self, OverlayWriteError};
use crate::store::{
    IdMapKey, IdMapLink, NewConflict, NewOutboxRow, OutboxOp, Store, StoreError, SyncBatch,
};

use super::crm_source::{CrmError, CrmRecords};
use super::feed::Feed;
use super::hash::{self, REMOVED};
use super::identity::{self, Identity};
use super::registry::{DedupeKey, Field, SystemSpec};

/// The fields 1C owns on a record linked to it: a system's differing value
/// is a conflict, never applied (only those the system keeps in step).
pub const OWNED: &[Field] = &[
    Field::Name,
    Field::Inn,
    Field::Kpp,
    Field::Ogrn,
    Field::Ogrnip,
    Field::Address,
];

/// The longest remote id taken (bytes).
pub const MAX_REMOTE_ID: usize = 256;

/// `conflicts.resolution` of a linked record's field a CRM changed: 1C's
/// value stays and is sent back.
pub const ONEC_WINS: &str = "1c_wins";
/// `conflicts.resolution` of a linked record a CRM deleted.
pub const KEPT_IN_1C: &str = "kept_in_1c";
/// `conflicts.resolution` of a record refused as a second copy of a client.
pub const REFUSED_DUPLICATE: &str = "refused_duplicate";
/// `conflicts.resolution` of a CRM-only record whose requisite fails its
/// check (followed by `: ` and the problem).
pub const NOT_APPLIED: &str = "not_applied";

/// A record as a system reports it, in the core's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The registered system it comes from (`bitrix24`).
    pub system: String,
    /// The system's kind of record (`company`): the id-map's kind.
    pub kind: String,
    /// The record's id in the system.
    pub remote_id: String,
    pub change: Change,
}

/// What happened to the record in the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created or changed there: its fields now. Boxed: large beside `Deleted`.
    Upsert(Box<RemoteRecord>),
    /// Deleted there (or moved to its recycle bin).
    Deleted,
}

/// A system's record, its fields as the counterparty model names them.
/// Values are as the system wrote them: they are normalized here.
///
/// Only what the payload carries counts: `None` is "not told" (a webhook
/// naming the changed fields only, a partial read) and keeps the value we
/// have; `Some` of an empty text or list is "cleared there".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteRecord {
    pub name: Option<String>,
    pub inn: Option<String>,
    pub kpp: Option<String>,
    /// The OGRN, or a sole proprietor's OGRNIP (15 digits): told apart by length.
    pub ogrn: Option<String>,
    pub phones: Option<Vec<String>>,
    pub emails: Option<Vec<String>>,
    pub address: Option<String>,
    /// The responsible user's id in the system: `[[manager]]` maps it;
    /// `Some("")`: nobody is responsible there now.
    pub manager_user_id: Option<String>,
    /// The record's page there; `None`: built from the system's
    /// `link_templates` for `kind`, if it has one.
    pub link: Option<String>,
}

/// What [`Applier::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Equal to what the id-map holds, overlay unchanged: our own change
    /// coming back (or a repeat). Nothing written.
    Echo,
    /// A new CRM-only record, answering from now on.
    Created { id: String },
    /// A CRM-only record changed.
    Updated { id: String },
    /// A record of another source (1C's) the system's record is linked to,
    /// `linked_now` if this call made the link: `conflicts` rows written
    /// (1C's values kept), whether 1C's record was queued back, whether the
    /// overlay (numbers, manager, link) changed.
    Merged {
        id: String,
        linked_now: bool,
        conflicts: usize,
        sent_back: bool,
        overlay_changed: bool,
    },
    /// Not taken: a second copy of a client, or a requisite failing its
    /// check; `conflicts` rows say why.
    Refused { conflicts: usize },
    /// A CRM-only record the system deleted: gone from its source.
    Removed { id: String },
    /// A linked record the system deleted: kept, the link closed.
    KeptIn1c { id: String },
    /// A deletion of a record never linked: nothing to do.
    NotLinked,
    /// The record the link names answers no more (its source removed it):
    /// nothing merged; 1C's removal reaches the system as a `remove`.
    Gone { id: String },
}

/// Why an inbound record was not handled; nothing after the failing step
/// was written (the runtime keeps its inbox row and tries again: every
/// step is idempotent).
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("inbound record of system {got:?} handed to system {expected:?}'s applier")]
    WrongSystem { expected: String, got: String },
    #[error("record {remote_id:?} of {system}: {problem}")]
    Invalid {
        system: String,
        remote_id: String,
        problem: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crm(#[from] CrmError),
    #[error(transparent)]
    Overlay(#[from] OverlayWriteError),
}

impl From<OverlayError> for InboundError {
    fn from(e: OverlayError) -> InboundError {
        InboundError::Overlay(OverlayWriteError::Invalid(e))
    }
}

/// Applies one system's inbound records. The runtime calls it one record
/// at a time per system, in the order received: an overlay is read,
/// changed and written back.
pub struct Applier {
    spec: SystemSpec,
    directory: Arc<Directory>,
    store: Store,
    feed: Feed,
    crm: Arc<CrmRecords>,
}

impl Applier {
    /// `store` is the sync store; `crm` the system's CRM-only records.
    pub fn new(
        spec: SystemSpec,
        directory: Arc<Directory>,
        store: Store,
        feed: Feed,
        crm: Arc<CrmRecords>,
    ) -> Applier {
        Applier {
            spec,
            directory,
            store,
            feed,
            crm,
        }
    }

    pub fn system(&self) -> &str {
        self.spec.name()
    }

    /// Handles `inbound` (see the module's rules), one at a time per
    /// system whoever calls.
    pub async fn apply(&self, inbound: Inbound) -> Result<Outcome, InboundError> {
        if inbound.system != self.spec.name() {
            return Err(InboundError::WrongSystem {
                expected: self.spec.name().to_owned(),
                got: inbound.system.chars().take(64).collect(),
            });
        }
        // The runtime decodes outside input: an id that cannot key a record is refused.
        let bad_kind = inbound.kind.is_empty()
            || inbound.kind.len() > 64
            || inbound.kind.contains(':')
            || inbound.kind.chars().any(char::is_control);
        let bad_id = inbound.remote_id.trim().is_empty()
            || inbound.remote_id.len() > MAX_REMOTE_ID
            || inbound.remote_id.chars().any(char::is_control);
        if bad_kind || bad_id {
            return Err(InboundError::Invalid {
                system: self.spec.name().to_owned(),
                remote_id: inbound.remote_id.chars().take(128).collect(),
                problem: if bad_kind {
                    "the kind must be 1-64 characters without a colon".to_owned()
                } else {
                    format!("the remote id must be 1-{MAX_REMOTE_ID} characters, not blank")
                },
            });
        }
        let _turn = self.crm.inbound_turn().await;
        let link = self
            .store
            .idmap_by_remote(self.spec.name(), &inbound.kind, &inbound.remote_id)
            .await?
            .filter(|row| row.closed_at.is_none());
        match inbound.change {
            Change::Deleted => match link {
                None => Ok(Outcome::NotLinked),
                Some(row) => {
                    self.deleted(&inbound.kind, &inbound.remote_id, &row.local_id)
                        .await
                }
            },
            Change::Upsert(remote) => {
                let known = link.map(|row| {
                    let hash = self.last_hash(&row.local_id, row.hash);
                    (row.local_id, hash)
                });
                self.upsert(&inbound.kind, &inbound.remote_id, &remote, known)
                    .await
            }
        }
    }

    /// The last hash queued or confirmed for `local_id` in this system: the
    /// feed's (a row still queued or in flight is newer than the id-map,
    /// which takes a hash only on confirmation), else the id-map's.
    fn last_hash(&self, local_id: &str, confirmed: Option<u64>) -> Option<u64> {
        self.feed
            .last_hash(self.spec.name(), local_id)
            .or(confirmed)
    }

    /// Links this system's CRM-only record with the same business key as
    /// `entry` (a record of another source that just came, or changed) to
    /// it (see [`Applier::link_crm_only`]), when exactly one such CRM-only
    /// record and no other record of another source has that key, and
    /// `entry` is not linked to another record of the system. Gives the
    /// CRM-only record's id when it was linked.
    pub async fn link_if_same_client(&self, entry: &Entry) -> Result<Option<String>, InboundError> {
        // Cheap checks first: a 1C read reports every id it rebuilt.
        let holds_any = self
            .directory
            .snapshot()
            .source(self.spec.name())
            .is_some_and(|s| s.records > 0);
        if !holds_any || is_crm_only(entry) {
            return Ok(None);
        }
        let Ok(record) = entry.counterparty() else {
            return Ok(None);
        };
        let _turn = self.crm.inbound_turn().await;
        let matches = identity::by_business_key(&self.directory, self.spec.dedupe_key(), &record);
        let (crm_only, others): (Vec<_>, Vec<_>) =
            matches.into_iter().partition(|e| self.is_crm_only(e));
        let [crm] = crm_only.as_slice() else {
            return Ok(None);
        };
        if !(others.len() == 1 && others[0].id() == entry.id()) {
            return Ok(None);
        }
        let Some((kind, _)) = self.split_crm_id(crm.id()) else {
            return Ok(None);
        };
        if self.linked_elsewhere(&kind, entry.id(), None).await? {
            return Ok(None);
        }
        let crm_id = crm.id().to_owned();
        // Read again under the turn: the directory's record as it is now.
        let Some(target) = self.directory.lookup_id(entry.id()) else {
            return Ok(None);
        };
        self.link_crm_only(&crm_id, &target).await?;
        Ok(Some(crm_id))
    }

    async fn upsert(
        &self,
        kind: &str,
        remote_id: &str,
        remote: &RemoteRecord,
        known: Option<(String, Option<u64>)>,
    ) -> Result<Outcome, InboundError> {
        let crm_id = format!("{}:{kind}:{remote_id}", self.spec.name());
        if let Some((local_id, hash)) = known {
            return match self.directory.lookup_id(&local_id) {
                Some(entry) if !self.is_crm_only(&entry) => {
                    self.merge(kind, remote_id, &entry, remote, hash, false)
                        .await
                }
                Some(_) => {
                    // The system's change may now find another source's
                    // record by its key (an INN added there): linked first.
                    let base = self.crm.record(&local_id);
                    let incoming = self.record(kind, remote_id, &local_id, remote, base.as_ref());
                    if let Some(target) = self.link_target(kind, &incoming, &local_id).await? {
                        self.link_crm_only(&local_id, &target).await?;
                        return self
                            .merge(kind, remote_id, &target, remote, None, true)
                            .await;
                    }
                    self.crm_only(kind, remote_id, &local_id, remote, hash)
                        .await
                }
                // A CRM-only record whose source lost it (never seen): taken again.
                None if local_id.starts_with(&format!("{}:", self.spec.name())) => {
                    self.crm_only(kind, remote_id, &local_id, remote, hash)
                        .await
                }
                None => Ok(Outcome::Gone { id: local_id }),
            };
        }
        let incoming = self.record(kind, remote_id, &crm_id, remote, None);
        // `identify` asks synchronously which candidates the system holds
        // under another id: read their links first.
        let mut elsewhere = HashSet::new();
        for candidate in
            identity::by_business_key(&self.directory, self.spec.dedupe_key(), &incoming)
        {
            if self
                .linked_elsewhere(kind, candidate.id(), Some(remote_id))
                .await?
            {
                elsewhere.insert(candidate.id().to_owned());
            }
        }
        let found = identity::identify(&self.directory, &self.spec, &incoming, None, |id| {
            elsewhere.contains(id)
        });
        match found {
            Identity::Duplicate(ids) => self.refuse_duplicate(&crm_id, &incoming, &ids).await,
            Identity::SameClient(entry) if !self.is_crm_only(&entry) => {
                tracing::info!(
                    system = self.spec.name(),
                    remote_id = %Escaped(remote_id),
                    id = %Escaped(entry.id()),
                    "sync: a system's record linked to the directory's record of the same business key"
                );
                let confirmed = self
                    .store
                    .idmap_get(self.spec.name(), kind, entry.id())
                    .await?
                    .and_then(|r| r.hash);
                let hash = self.last_hash(entry.id(), confirmed);
                self.merge(kind, remote_id, &entry, remote, hash, true)
                    .await
            }
            // The system's own record, its link lost: taken as that record.
            Identity::SameClient(entry) => {
                let id = entry.id().to_owned();
                self.crm_only(kind, remote_id, &id, remote, None).await
            }
            Identity::Linked(id) => {
                // `identify` was given no link: never happens.
                let id = id.to_string();
                self.crm_only(kind, remote_id, &id, remote, None).await
            }
            Identity::New { .. } => self.crm_only(kind, remote_id, &crm_id, remote, None).await,
        }
    }

    /// Whether the directory record `id` is linked (open) to a record of
    /// the system other than `remote_id` (any, when `None`).
    async fn linked_elsewhere(
        &self,
        kind: &str,
        id: &str,
        remote_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let row = self.store.idmap_get(self.spec.name(), kind, id).await?;
        Ok(row.is_some_and(|r| {
            r.closed_at.is_none()
                && r.remote_id
                    .as_deref()
                    .is_some_and(|linked| Some(linked) != remote_id)
        }))
    }

    /// The one record of another source (not a CRM's own) `record`'s
    /// business key finds, not linked to another record of the system:
    /// what the CRM-only record `crm_id` is to be linked to.
    async fn link_target(
        &self,
        kind: &str,
        record: &Counterparty,
        crm_id: &str,
    ) -> Result<Option<Arc<Entry>>, StoreError> {
        let matches: Vec<Arc<Entry>> =
            identity::by_business_key(&self.directory, self.spec.dedupe_key(), record)
                .into_iter()
                .filter(|e| e.id() != crm_id && !is_crm_only(e))
                .collect();
        let [target] = matches.as_slice() else {
            return Ok(None);
        };
        if self.linked_elsewhere(kind, target.id(), None).await? {
            return Ok(None);
        }
        Ok(Some(Arc::clone(target)))
    }

    /// (kind, remote id) of a CRM-only record's id `system:kind:remote id`.
    fn split_crm_id(&self, id: &str) -> Option<(String, String)> {
        let rest = id.strip_prefix(self.spec.name())?.strip_prefix(':')?;
        let (kind, remote_id) = rest.split_once(':')?;
        (!kind.is_empty() && !remote_id.is_empty()).then(|| (kind.to_owned(), remote_id.to_owned()))
    }

    /// Links the system's CRM-only record `crm_id` to `target`, a record
    /// of another source that is the same client: the CRM-only record
    /// leaves its source; its numbers and e-mails (those `target` lacks),
    /// its responsible user and its page become `target`'s overlay; the
    /// id-map row moves to `target`. One sync-store transaction, then ONE
    /// directory swap, so no reader sees its numbers unknown or twice.
    /// Called with the system's inbound turn held.
    pub async fn link_crm_only(&self, crm_id: &str, target: &Entry) -> Result<(), InboundError> {
        let system = self.spec.name();
        let Some(crm_record) = self.crm.record(crm_id) else {
            return Ok(());
        };
        let Some((kind, parsed_remote)) = self.split_crm_id(crm_id) else {
            return Ok(());
        };
        let remote_id = self
            .store
            .idmap_get(system, &kind, crm_id)
            .await?
            .and_then(|r| r.remote_id)
            .unwrap_or(parsed_remote);
        let own = target.counterparty().map_err(|e| InboundError::Invalid {
            system: system.to_owned(),
            remote_id: remote_id.chars().take(128).collect(),
            problem: format!("the directory's record does not read back: {e}"),
        })?;
        let crm_overlay = self.overlay_of(crm_id).await?;
        let current = self.overlay_of(target.id()).await?;
        let mut wanted = current
            .as_ref()
            .map_or_else(Overlay::default, |o| without_parts(o, system));
        if let Some(o) = &crm_overlay {
            wanted
                .managers
                .extend(o.managers.iter().filter(|m| &*m.system == system).cloned());
        }
        wanted.links.extend(
            crm_record
                .links
                .iter()
                .filter(|l| &*l.system == system)
                .cloned(),
        );
        let phones: Vec<String> = crm_record.phones.iter().map(|p| p.to_string()).collect();
        let emails: Vec<String> = crm_record.emails.iter().map(|e| e.to_string()).collect();
        set_told(&mut wanted, system, Some(&phones), Some(&emails), &own);
        let wanted = non_empty(wanted);
        let mut overlays = vec![(Box::<str>::from(target.id()), wanted)];
        if crm_overlay.is_some() {
            overlays.push((crm_id.into(), None));
        }
        let batch = SyncBatch {
            unlinks: vec![IdMapKey {
                system: system.to_owned(),
                kind: kind.clone(),
                local_id: crm_id.to_owned(),
            }],
            links: vec![IdMapLink {
                system: system.to_owned(),
                kind,
                local_id: target.id().to_owned(),
                remote_id: remote_id.clone(),
                hash: None,
            }],
            overlays: overlays::encode(&overlays)?,
            snapshot_removals: vec![(system.to_owned(), crm_id.to_owned())],
            ..SyncBatch::default()
        };
        // Between two applies of the CRM source, never inside one.
        let _applying = self.crm.applying_turn().await;
        self.store.sync_batch(batch).await?;
        // The record leaving is no removal to send the system: it is its own.
        self.feed
            .note_hashes(system, vec![(crm_id.into(), REMOVED)]);
        self.directory
            .move_to_overlays(system, &[crm_id.into()], overlays, SystemTime::now())?;
        tracing::info!(
            system,
            crm_id = %Escaped(crm_id),
            id = %Escaped(target.id()),
            remote_id = %Escaped(&remote_id),
            "sync: a CRM-only record linked to the same client's record of another source; its numbers, manager and page go to that record's overlay"
        );
        Ok(())
    }

    /// Whether `entry` is one of this system's CRM-only records.
    fn is_crm_only(&self, entry: &Entry) -> bool {
        *entry.source == *self.spec.name()
    }

    /// The system's page of its record `remote_id`: as told, else from
    /// the system's `link_templates` for `kind`.
    fn page(&self, kind: &str, remote_id: &str, remote: &RemoteRecord) -> Option<Link> {
        let url = remote.link.clone().or_else(|| {
            self.spec
                .link_templates()
                .get(kind)
                .map(|t| t.replace("{id}", remote_id))
        })?;
        Some(Link {
            system: self.spec.name().into(),
            kind: kind.into(),
            url: url.into(),
        })
    }

    /// The system's record as a counterparty of id `id`: the fields it
    /// told over `base` (what we hold of it; none: a new record), the OGRN
    /// told from the OGRNIP by its length, its page as its link.
    fn record(
        &self,
        kind: &str,
        remote_id: &str,
        id: &str,
        remote: &RemoteRecord,
        base: Option<&Counterparty>,
    ) -> Counterparty {
        let text = |v: &str| {
            let v = v.trim();
            (!v.is_empty()).then(|| v.into())
        };
        let mut record = base.cloned().unwrap_or_default();
        record.id = id.into();
        if let Some(name) = &remote.name {
            record.name = name.trim().into();
        }
        if let Some(inn) = &remote.inn {
            record.inn = text(inn);
        }
        if let Some(kpp) = &remote.kpp {
            record.kpp = text(kpp);
        }
        if let Some(ogrn) = &remote.ogrn {
            let value = text(ogrn);
            if hash::digits(ogrn).len() == 15 {
                (record.ogrn, record.ogrnip) = (None, value);
            } else {
                (record.ogrn, record.ogrnip) = (value, None);
            }
        }
        if let Some(phones) = &remote.phones {
            record.phones = phones.iter().map(|p| p.as_str().into()).collect();
        }
        if let Some(emails) = &remote.emails {
            record.emails = emails.iter().map(|e| e.as_str().into()).collect();
        }
        if let Some(address) = &remote.address {
            record.address = text(address);
        }
        record.links = self
            .page(kind, remote_id, remote)
            .into_iter()
            .collect::<Vec<_>>()
            .into();
        record
    }

    /// Commits `batch` (one transaction), then tells the feed of the
    /// id-map hashes it wrote (`noted`).
    async fn commit(
        &self,
        batch: SyncBatch,
        noted: Vec<(Box<str>, u64)>,
    ) -> Result<(), StoreError> {
        self.store.sync_batch(batch).await?;
        if !noted.is_empty() {
            self.feed.note_hashes(self.spec.name(), noted);
        }
        Ok(())
    }

    /// A CRM-only record of id `id` created or changed.
    async fn crm_only(
        &self,
        kind: &str,
        remote_id: &str,
        id: &str,
        remote: &RemoteRecord,
        known_hash: Option<u64>,
    ) -> Result<Outcome, InboundError> {
        let base = self.crm.record(id);
        let record = self.record(kind, remote_id, id, remote, base.as_ref());
        let problems = requisites::check(&record);
        if !problems.is_empty() {
            let mut batch = SyncBatch::default();
            for problem in &problems {
                tracing::warn!(
                    system = self.spec.name(),
                    id = %Escaped(id),
                    problem = %problem,
                    "sync: a CRM record's requisite fails its check; not applied"
                );
                batch.conflicts.push(NewConflict {
                    system: self.spec.name().to_owned(),
                    record_key: id.to_owned(),
                    field: problem.field.to_owned(),
                    ours: None,
                    theirs: Some(problem.value.clone()),
                    resolution: format!("{NOT_APPLIED}: {}", problem.problem),
                });
            }
            self.commit(batch, Vec::new()).await?;
            return Ok(Outcome::Refused {
                conflicts: problems.len(),
            });
        }
        record.validate().map_err(|e| InboundError::Invalid {
            system: self.spec.name().to_owned(),
            remote_id: remote_id.chars().take(128).collect(),
            problem: e.to_string(),
        })?;
        let hash = hash::hash(&record, self.spec.fields());
        // Its manager by the system's user id; its page, numbers and
        // e-mails are in its own JSON.
        let current = self.overlay_of(id).await?;
        let wanted = self.wanted_overlay(current.as_ref(), remote, None, &record, false);
        let answering = self.directory.lookup_id(id).is_some();
        if answering && known_hash == Some(hash) && wanted == current {
            return Ok(Outcome::Echo);
        }
        let overlays = if wanted != current {
            vec![(Box::<str>::from(id), wanted)]
        } else {
            Vec::new()
        };
        let batch = SyncBatch {
            links: vec![IdMapLink {
                system: self.spec.name().to_owned(),
                kind: kind.to_owned(),
                local_id: id.to_owned(),
                remote_id: remote_id.to_owned(),
                hash: Some(hash),
            }],
            overlays: overlays::encode(&overlays)?,
            ..SyncBatch::default()
        };
        // Before the change reaches the directory (the feed never sends a
        // system its own records; told all the same, so its hashes agree).
        self.commit(batch, vec![(id.into(), hash)]).await?;
        self.crm.upsert(vec![record]).await?;
        if !overlays.is_empty() {
            self.directory.set_overlays(overlays)?;
        }
        Ok(if answering {
            Outcome::Updated { id: id.to_owned() }
        } else {
            Outcome::Created { id: id.to_owned() }
        })
    }

    /// A system's edit of a record of another source (1C's), linked to it
    /// (`linked_now`: by this call; the link is written with the rest).
    async fn merge(
        &self,
        kind: &str,
        remote_id: &str,
        entry: &Entry,
        remote: &RemoteRecord,
        known_hash: Option<u64>,
        linked_now: bool,
    ) -> Result<Outcome, InboundError> {
        let id = entry.id();
        let ours = entry.counterparty().map_err(|e| InboundError::Invalid {
            system: self.spec.name().to_owned(),
            remote_id: id.chars().take(128).collect(),
            problem: format!("the directory's record does not read back: {e}"),
        })?;
        // What the system holds, in our record's shape: the fields it
        // told over ours, so the hash compares like the feed's and a field
        // it did not tell is no difference.
        let mut theirs = self.record(kind, remote_id, id, remote, Some(&ours));
        theirs.links = ours.links.clone();
        let theirs_hash = hash::hash(&theirs, self.spec.fields());
        let current = self.overlay_of(id).await?;
        // The page goes on the overlay: a linked record's JSON is 1C's.
        let page = self.page(kind, remote_id, remote);
        let wanted = self.wanted_overlay(current.as_ref(), remote, page, &ours, true);
        let overlay_changed = wanted != current;
        if known_hash == Some(theirs_hash) && !overlay_changed && !linked_now {
            return Ok(Outcome::Echo);
        }
        let differing: Vec<(Field, Option<String>, Option<String>)> = OWNED
            .iter()
            .copied()
            .filter(|f| self.spec.fields().contains(f))
            .filter_map(|f| {
                let (a, b) = (owned_value(&ours, f), owned_value(&theirs, f));
                (normalized(f, a.as_deref()) != normalized(f, b.as_deref())).then_some((f, a, b))
            })
            .collect();
        let mut batch = SyncBatch::default();
        let mut noted = Vec::new();
        if linked_now {
            batch.links.push(IdMapLink {
                system: self.spec.name().to_owned(),
                kind: kind.to_owned(),
                local_id: id.to_owned(),
                remote_id: remote_id.to_owned(),
                hash: None,
            });
        }
        for (field, ours_value, theirs_value) in &differing {
            tracing::warn!(
                system = self.spec.name(),
                id = %Escaped(id),
                field = field.name(),
                "sync: a CRM changed a field 1C owns on a linked record; 1C's value kept and sent back"
            );
            batch.conflicts.push(NewConflict {
                system: self.spec.name().to_owned(),
                record_key: id.to_owned(),
                field: field.name().to_owned(),
                ours: ours_value.clone(),
                theirs: theirs_value.clone(),
                resolution: ONEC_WINS.to_owned(),
            });
        }
        let mut sent_back = false;
        if !differing.is_empty() {
            // The feed's rule: what the feed would send, where the system
            // holds another hash (it does: a field differs). The id-map
            // takes 1C's hash with the row and the feed is told, so neither
            // queues it a second time.
            let ours_hash = hash::hash(&ours, self.spec.fields());
            let sendable =
                self.spec.exports().accepts(&ours) && requisites::check(&ours).is_empty();
            if sendable && ours_hash != theirs_hash {
                batch.outbox.push(NewOutboxRow {
                    system: self.spec.name().to_owned(),
                    kind: kind.to_owned(),
                    record_key: id.to_owned(),
                    op: OutboxOp::Upsert,
                    body: entry.json(),
                    hash: ours_hash,
                });
                noted.push((id.into(), ours_hash));
                sent_back = true;
            }
        }
        let overlays = if overlay_changed {
            vec![(Box::<str>::from(id), wanted)]
        } else {
            Vec::new()
        };
        batch.overlays = overlays::encode(&overlays)?;
        self.commit(batch, noted).await?;
        if !overlays.is_empty() {
            self.directory.set_overlays(overlays)?;
        }
        Ok(Outcome::Merged {
            id: id.to_owned(),
            linked_now,
            conflicts: differing.len(),
            sent_back,
            overlay_changed,
        })
    }

    /// The system deleted its record, linked to `local_id`.
    async fn deleted(
        &self,
        kind: &str,
        remote_id: &str,
        local_id: &str,
    ) -> Result<Outcome, InboundError> {
        let crm_only = match self.directory.lookup_id(local_id) {
            Some(entry) => self.is_crm_only(&entry),
            None => local_id.starts_with(&format!("{}:", self.spec.name())),
        };
        let key = IdMapKey {
            system: self.spec.name().to_owned(),
            kind: kind.to_owned(),
            local_id: local_id.to_owned(),
        };
        // Nor is the record sent to that system again (the feed's next
        // change or reconcile would otherwise create it there anew, or
        // send it a removal of what it deleted): told before the
        // directory's change, as the id-map's row is closed below.
        let closed = vec![(Box::<str>::from(local_id), hash::CLOSED)];
        if crm_only {
            self.feed.note_hashes(self.spec.name(), closed);
            self.crm.remove(vec![local_id.into()]).await?;
            let overlays = if self.overlay_of(local_id).await?.is_some() {
                vec![(Box::<str>::from(local_id), None)]
            } else {
                Vec::new()
            };
            let batch = SyncBatch {
                closes: vec![key],
                overlays: overlays::encode(&overlays)?,
                ..SyncBatch::default()
            };
            self.commit(batch, Vec::new()).await?;
            if !overlays.is_empty() {
                self.directory.set_overlays(overlays)?;
            }
            tracing::info!(
                system = self.spec.name(),
                id = %Escaped(local_id),
                "sync: a CRM-only record deleted in its system; removed"
            );
            return Ok(Outcome::Removed {
                id: local_id.to_owned(),
            });
        }
        tracing::warn!(
            system = self.spec.name(),
            id = %Escaped(local_id),
            remote_id = %Escaped(remote_id),
            "sync: a CRM deleted a record linked to 1C; kept in 1C, the link closed"
        );
        let current = self.overlay_of(local_id).await?;
        let overlays = match &current {
            Some(current) => {
                let wanted = without_system(current, self.spec.name());
                if wanted.as_ref() != Some(current) {
                    vec![(Box::<str>::from(local_id), wanted)]
                } else {
                    Vec::new()
                }
            }
            None => Vec::new(),
        };
        let batch = SyncBatch {
            conflicts: vec![NewConflict {
                system: self.spec.name().to_owned(),
                record_key: local_id.to_owned(),
                field: "deleted".to_owned(),
                ours: Some(local_id.to_owned()),
                theirs: Some(remote_id.to_owned()),
                resolution: KEPT_IN_1C.to_owned(),
            }],
            closes: vec![key],
            overlays: overlays::encode(&overlays)?,
            ..SyncBatch::default()
        };
        self.commit(batch, closed).await?;
        if !overlays.is_empty() {
            self.directory.set_overlays(overlays)?;
        }
        Ok(Outcome::KeptIn1c {
            id: local_id.to_owned(),
        })
    }

    async fn refuse_duplicate(
        &self,
        crm_id: &str,
        incoming: &Counterparty,
        ids: &[Box<str>],
    ) -> Result<Outcome, InboundError> {
        self.feed.metrics().duplicate_refused(self.spec.name());
        let (field, theirs) = match self.spec.dedupe_key() {
            DedupeKey::Inn => ("inn", incoming.inn.as_deref().unwrap_or("").to_owned()),
            DedupeKey::InnKpp => (
                "inn_kpp",
                format!(
                    "{}/{}",
                    incoming.inn.as_deref().unwrap_or(""),
                    incoming.kpp.as_deref().unwrap_or("")
                ),
            ),
        };
        let ours = ids.join(",");
        tracing::warn!(
            system = self.spec.name(),
            record = %Escaped(crm_id),
            matches = %Escaped(&ours),
            "sync: a CRM record would duplicate a known client; refused"
        );
        self.store
            .conflict_add(NewConflict {
                system: self.spec.name().to_owned(),
                record_key: crm_id.to_owned(),
                field: field.to_owned(),
                ours: Some(ours),
                theirs: Some(theirs),
                resolution: REFUSED_DUPLICATE.to_owned(),
            })
            .await?;
        Ok(Outcome::Refused { conflicts: 1 })
    }

    /// The overlay stored for `id`; one that no longer reads counts as none.
    async fn overlay_of(&self, id: &str) -> Result<Option<Overlay>, StoreError> {
        Ok(self
            .store
            .overlay_get(id)
            .await?
            .and_then(|body| serde_json::from_str(&body).ok()))
    }

    /// `current` with this system's manager as `remote` tells it (kept when
    /// not told), its `page`, and (`contacts`) its numbers and e-mails as
    /// `remote` tells them, less `own`'s ([`set_told`]). Other systems'
    /// parts are kept. `None` when nothing is left.
    fn wanted_overlay(
        &self,
        current: Option<&Overlay>,
        remote: &RemoteRecord,
        page: Option<Link>,
        own: &Counterparty,
        contacts: bool,
    ) -> Option<Overlay> {
        let system = self.spec.name();
        let mut wanted = current.map_or_else(Overlay::default, |o| without_parts(o, system));
        match remote.manager_user_id.as_deref().map(str::trim) {
            Some("") => {}
            Some(user) => wanted.managers.push(OverlayManager {
                system: system.into(),
                user_id: Some(user.into()),
                extension: None,
                name: None,
            }),
            // Not told: the manager it named before.
            None => wanted.managers.extend(
                current
                    .iter()
                    .flat_map(|o| o.managers.iter())
                    .filter(|m| &*m.system == system)
                    .cloned(),
            ),
        }
        if let Some(page) = page {
            wanted.links.push(page);
        }
        if contacts {
            set_told(
                &mut wanted,
                system,
                remote.phones.as_deref(),
                remote.emails.as_deref(),
                own,
            );
        }
        non_empty(wanted)
    }
}

/// Whether `entry` is a CRM-only record of any system: its id is its
/// source's name, a colon and the rest (`bitrix24:company:2919`).
fn is_crm_only(entry: &Entry) -> bool {
    entry
        .id()
        .strip_prefix(&*entry.source)
        .is_some_and(|rest| rest.starts_with(':'))
}

/// `overlay`, or `None` when nothing is in it.
fn non_empty(overlay: Overlay) -> Option<Overlay> {
    let empty = overlay.managers.is_empty()
        && overlay.links.is_empty()
        && overlay.phones.is_empty()
        && overlay.emails.is_empty()
        && overlay.told.is_empty();
    (!empty).then_some(overlay)
}

/// Sets `system`'s part of `overlay`'s numbers and e-mails to what it told
/// (`None`: not told, its part kept): its current set, less what `own`
/// lists, numbers unique by [`phone::PhoneKey`], e-mails lowercased; then
/// makes `overlay.phones` and `overlay.emails` the union again: numbers
/// no part tells (set by other means) first, then each system's in order.
fn set_told(
    overlay: &mut Overlay,
    system: &str,
    phones: Option<&[String]>,
    emails: Option<&[String]>,
    own: &Counterparty,
) {
    let told_phones: HashSet<phone::PhoneKey> = overlay
        .told
        .iter()
        .flat_map(|t| t.phones.iter())
        .filter_map(|p| phone::normalize(p))
        .collect();
    let told_emails: HashSet<String> = overlay
        .told
        .iter()
        .flat_map(|t| t.emails.iter())
        .map(|e| e.trim().to_lowercase())
        .collect();
    let untold_phones: Vec<Box<str>> = overlay
        .phones
        .iter()
        .filter(|p| phone::normalize(p).is_none_or(|k| !told_phones.contains(&k)))
        .cloned()
        .collect();
    let untold_emails: Vec<Box<str>> = overlay
        .emails
        .iter()
        .filter(|e| !told_emails.contains(&e.trim().to_lowercase()))
        .cloned()
        .collect();
    let own_phones: HashSet<phone::PhoneKey> = own
        .phones
        .iter()
        .filter_map(|p| phone::normalize(p))
        .collect();
    let own_emails: HashSet<String> = own.emails.iter().map(|e| e.trim().to_lowercase()).collect();
    let at = match overlay.told.iter().position(|t| &*t.system == system) {
        Some(at) => at,
        None => {
            overlay.told.push(Told {
                system: system.into(),
                ..Told::default()
            });
            overlay.told.len() - 1
        }
    };
    let part = &mut overlay.told[at];
    if let Some(phones) = phones {
        let mut seen = own_phones.clone();
        part.phones = phones
            .iter()
            .filter(|p| phone::normalize(p).is_some_and(|k| seen.insert(k)))
            .map(|p| p.trim().into())
            .collect();
    }
    if let Some(emails) = emails {
        let mut seen = own_emails.clone();
        part.emails = emails
            .iter()
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty() && seen.insert(e.clone()))
            .map(Into::into)
            .collect();
    }
    overlay
        .told
        .retain(|t| !t.phones.is_empty() || !t.emails.is_empty());
    // The union: what the record lacks, once each.
    let mut seen = own_phones;
    overlay.phones = untold_phones
        .into_iter()
        .chain(overlay.told.iter().flat_map(|t| t.phones.iter().cloned()))
        .filter(|p| phone::normalize(p).is_none_or(|k| seen.insert(k)))
        .collect();
    let mut seen = own_emails;
    overlay.emails = untold_emails
        .into_iter()
        .chain(overlay.told.iter().flat_map(|t| t.emails.iter().cloned()))
        .filter(|e| seen.insert(e.trim().to_lowercase()))
        .collect();
}

/// `overlay` without `system`'s manager and links (its numbers and e-mails
/// stay: [`set_told`] changes them).
fn without_parts(overlay: &Overlay, system: &str) -> Overlay {
    let mut kept = overlay.clone();
    kept.managers.retain(|m| &*m.system != system);
    kept.links.retain(|l| &*l.system != system);
    kept
}

/// What is left of `overlay` once `system` deleted its record: the other
/// systems' managers, links, numbers and e-mails. `None` when nothing.
fn without_system(overlay: &Overlay, system: &str) -> Option<Overlay> {
    let mut kept = without_parts(overlay, system);
    // Its numbers and e-mails leave: its part told as empty.
    let nothing: &[String] = &[];
    set_told(
        &mut kept,
        system,
        Some(nothing),
        Some(nothing),
        &Counterparty::default(),
    );
    if kept.managers.is_empty() && kept.links.is_empty() && kept.told.is_empty() {
        // Numbers no part tells were a CRM's too: with the last part, gone.
        return None;
    }
    non_empty(kept)
}

/// The value of an owned field, as written.
fn owned_value(record: &Counterparty, field: Field) -> Option<String> {
    let value = match field {
        Field::Name => Some(&record.name),
        Field::Inn => record.inn.as_ref(),
        Field::Kpp => record.kpp.as_ref(),
        Field::Ogrn => record.ogrn.as_ref(),
        Field::Ogrnip => record.ogrnip.as_ref(),
        Field::Address => record.address.as_ref(),
        _ => None,
    };
    value.map(|v| v.to_string())
}

/// An owned field's value as the hash normalizes it; empty is absent.
fn normalized(field: Field, value: Option<&str>) -> Option<String> {
    let value = value?;
    let normal = match field {
        Field::Inn | Field::Ogrn | Field::Ogrnip => hash::digits(value),
        Field::Kpp => hash::kpp(value),
        _ => hash::collapse(value),
    };
    (!normal.is_empty()).then_some(normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(system: &str, user: &str) -> OverlayManager {
        OverlayManager {
            system: system.into(),
            user_id: Some(user.into()),
            extension: None,
            name: None,
        }
    }

    #[test]
    fn owned_fields_compare_as_the_hash_normalizes_them() {
        assert_eq!(
            normalized(Field::Inn, Some("7707 083893")),
            normalized(Field::Inn, Some("7707083893"))
        );
        assert_eq!(
            normalized(Field::Kpp, Some("7736ab001")),
            Some("7736AB001".to_owned())
        );
        assert_eq!(
            normalized(Field::Name, Some("  Альфа   ООО ")),
            Some("Альфа ООО".to_owned())
        );
        // Empty is absent: a CRM dropping an empty field changed nothing.
        assert_eq!(normalized(Field::Address, Some("  ")), None);
        assert_ne!(
            normalized(Field::Inn, Some("7707083893")),
            normalized(Field::Inn, Some("7702070139"))
        );
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn each_systems_numbers_are_its_current_set_and_emails_a_lowercased_union() {
        let own = Counterparty {
            phones: vec!["84951110001".into()],
            emails: vec!["Info@Alpha.ru".into()],
            ..Counterparty::default()
        };
        let mut overlay = Overlay::default();
        set_told(
            &mut overlay,
            "bitrix24",
            Some(&strings(&[
                "+7 495 111-00-01",
                "89125550201",
                "89125550202",
            ])),
            Some(&strings(&["INFO@alpha.ru", "Sales@Alpha.ru"])),
            &own,
        );
        let boxed = |v: &[&str]| v.iter().map(|s| Box::<str>::from(*s)).collect::<Vec<_>>();
        assert_eq!(
            overlay.phones,
            boxed(&["89125550201", "89125550202"]),
            "own number left out"
        );
        assert_eq!(overlay.emails, boxed(&["sales@alpha.ru"]));
        set_told(
            &mut overlay,
            "amocrm",
            Some(&strings(&["89125550202", "89125550303"])),
            None,
            &own,
        );
        // bitrix24 removed 0202 there: amocrm still tells it; 0201 leaves.
        set_told(
            &mut overlay,
            "bitrix24",
            Some(&strings(&["89125550202"])),
            None,
            &own,
        );
        assert_eq!(overlay.phones, boxed(&["89125550202", "89125550303"]));
        assert_eq!(overlay.emails, boxed(&["sales@alpha.ru"]), "not told: kept");
        // Not told at all: the part as it was.
        let before = overlay.clone();
        set_told(&mut overlay, "bitrix24", None, None, &own);
        assert_eq!(overlay, before);
        set_told(
            &mut overlay,
            "bitrix24",
            Some(&strings(&[])),
            Some(&strings(&[])),
            &own,
        );
        assert_eq!(overlay.phones, boxed(&["89125550202", "89125550303"]));
        assert!(overlay.emails.is_empty());
    }

    #[test]
    fn a_deletion_takes_away_the_systems_part_and_numbers_only_with_the_last_part() {
        let both = Overlay {
            managers: vec![manager("bitrix24", "17"), manager("amocrm", "5")],
            links: Vec::new(),
            phones: vec!["89125550201".into()],
            ..Overlay::default()
        };
        let left = without_system(&both, "bitrix24").expect("amocrm's part stays");
        assert_eq!(left.managers, vec![manager("amocrm", "5")]);
        assert_eq!(
            left.phones, both.phones,
            "numbers kept while amocrm links it"
        );
        let alone = Overlay {
            managers: vec![manager("bitrix24", "17")],
            ..both
        };
        assert_eq!(without_system(&alone, "bitrix24"), None);
    }
}
