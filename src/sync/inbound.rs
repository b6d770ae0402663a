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

use std::collections::HashSet;
use std::sync::Arc;

use crate::directory::model::Link;
use crate::directory::{requisites, Counterparty, Directory, Entry, Overlay, OverlayManager};
use crate::logging::Escaped;
use crate::phone;
use crate::sources::overlays::{self, OverlayWriteError};
use crate::store::{IdMapLink, NewConflict, NewOutboxRow, OutboxOp, Store, StoreError};

use super::crm_source::{CrmError, CrmRecords};
use super::feed::Feed;
use super::hash;
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteRecord {
    pub name: String,
    pub inn: Option<String>,
    pub kpp: Option<String>,
    /// The OGRN, or a sole proprietor's OGRNIP (15 digits): told apart by length.
    pub ogrn: Option<String>,
    pub phones: Vec<String>,
    pub emails: Vec<String>,
    pub address: Option<String>,
    /// The responsible user's id in the system: `[[manager]]` maps it.
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

    /// Handles `inbound` (see the module's rules).
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
        let incoming = self.record(kind, remote_id, &crm_id, remote);
        // `identify` asks synchronously which candidates the system holds
        // under another id: read their links first.
        let mut elsewhere = HashSet::new();
        for candidate in
            identity::by_business_key(&self.directory, self.spec.dedupe_key(), &incoming)
        {
            let row = self
                .store
                .idmap_get(self.spec.name(), kind, candidate.id())
                .await?;
            if row.is_some_and(|r| {
                r.closed_at.is_none() && r.remote_id.as_deref().is_some_and(|id| id != remote_id)
            }) {
                elsewhere.insert(candidate.id().to_owned());
            }
        }
        let found = identity::identify(&self.directory, &self.spec, &incoming, None, |id| {
            elsewhere.contains(id)
        });
        match found {
            Identity::Duplicate(ids) => self.refuse_duplicate(&crm_id, &incoming, &ids).await,
            Identity::SameClient(entry) if !self.is_crm_only(&entry) => {
                self.store
                    .idmap_link(IdMapLink {
                        system: self.spec.name().to_owned(),
                        kind: kind.to_owned(),
                        local_id: entry.id().to_owned(),
                        remote_id: remote_id.to_owned(),
                        hash: None,
                    })
                    .await?;
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

    /// Whether `entry` is one of this system's CRM-only records.
    fn is_crm_only(&self, entry: &Entry) -> bool {
        *entry.source == *self.spec.name()
    }

    /// The system's record as a counterparty of id `id`: the OGRN told from
    /// the OGRNIP by its length, the page from the link templates.
    fn record(&self, kind: &str, remote_id: &str, id: &str, remote: &RemoteRecord) -> Counterparty {
        let text = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(Into::into)
        };
        let ogrn = text(&remote.ogrn);
        let is_ogrnip = remote
            .ogrn
            .as_deref()
            .is_some_and(|o| hash::digits(o).len() == 15);
        let (ogrn, ogrnip) = if is_ogrnip {
            (None, ogrn)
        } else {
            (ogrn, None)
        };
        let url = remote.link.clone().or_else(|| {
            self.spec
                .link_templates()
                .get(kind)
                .map(|t| t.replace("{id}", remote_id))
        });
        let links: Vec<Link> = url
            .map(|url| Link {
                system: self.spec.name().into(),
                kind: kind.into(),
                url: url.into(),
            })
            .into_iter()
            .collect();
        Counterparty {
            id: id.into(),
            name: remote.name.trim().into(),
            inn: text(&remote.inn),
            kpp: text(&remote.kpp),
            ogrn,
            ogrnip,
            phones: remote.phones.iter().map(|p| p.as_str().into()).collect(),
            emails: remote.emails.iter().map(|e| e.as_str().into()).collect(),
            address: text(&remote.address),
            links: links.into(),
            ..Default::default()
        }
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
        let record = self.record(kind, remote_id, id, remote);
        let problems = requisites::check(&record);
        if !problems.is_empty() {
            for problem in &problems {
                tracing::warn!(
                    system = self.spec.name(),
                    id = %Escaped(id),
                    problem = %problem,
                    "sync: a CRM record's requisite fails its check; not applied"
                );
                self.store
                    .conflict_add(NewConflict {
                        system: self.spec.name().to_owned(),
                        record_key: id.to_owned(),
                        field: problem.field.to_owned(),
                        ours: None,
                        theirs: Some(problem.value.clone()),
                        resolution: format!("{NOT_APPLIED}: {}", problem.problem),
                    })
                    .await?;
            }
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
        // Its manager by the system's user id; its page is in its own JSON.
        let current = self.overlay_of(id).await?;
        let wanted = self.wanted_overlay(current.as_ref(), remote, None, &[], false);
        let answering = self.directory.lookup_id(id).is_some();
        if answering && known_hash == Some(hash) && wanted == current {
            return Ok(Outcome::Echo);
        }
        self.store
            .idmap_link(IdMapLink {
                system: self.spec.name().to_owned(),
                kind: kind.to_owned(),
                local_id: id.to_owned(),
                remote_id: remote_id.to_owned(),
                hash: Some(hash),
            })
            .await?;
        // Before the change reaches the directory (the feed never sends a
        // system its own records; told all the same, so its hashes agree).
        self.feed
            .note_hashes(self.spec.name(), vec![(id.into(), hash)]);
        self.crm.upsert(vec![record]).await?;
        if wanted != current {
            overlays::set(&self.store, &self.directory, vec![(id.into(), wanted)]).await?;
        }
        Ok(if answering {
            Outcome::Updated { id: id.to_owned() }
        } else {
            Outcome::Created { id: id.to_owned() }
        })
    }

    /// A system's edit of a record of another source (1C's), linked to it.
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
        let incoming = self.record(kind, remote_id, id, remote);
        // What the system holds, in our record's shape: the fields it
        // reports over ours, so the hash compares like the feed's.
        let mut theirs = ours.clone();
        theirs.name = incoming.name.clone();
        theirs.inn = incoming.inn.clone();
        theirs.kpp = incoming.kpp.clone();
        theirs.ogrn = incoming.ogrn.clone();
        theirs.ogrnip = incoming.ogrnip.clone();
        theirs.phones = incoming.phones.clone();
        theirs.emails = incoming.emails.clone();
        theirs.address = incoming.address.clone();
        let theirs_hash = hash::hash(&theirs, self.spec.fields());
        let current = self.overlay_of(id).await?;
        // The page goes on the overlay: a linked record's JSON is 1C's.
        let page = incoming.links.first().cloned();
        let wanted = self.wanted_overlay(current.as_ref(), remote, page, &ours.phones, true);
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
        for (field, ours_value, theirs_value) in &differing {
            tracing::warn!(
                system = self.spec.name(),
                id = %Escaped(id),
                field = field.name(),
                "sync: a CRM changed a field 1C owns on a linked record; 1C's value kept and sent back"
            );
            self.store
                .conflict_add(NewConflict {
                    system: self.spec.name().to_owned(),
                    record_key: id.to_owned(),
                    field: field.name().to_owned(),
                    ours: ours_value.clone(),
                    theirs: theirs_value.clone(),
                    resolution: ONEC_WINS.to_owned(),
                })
                .await?;
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
                self.store
                    .enqueue(vec![NewOutboxRow {
                        system: self.spec.name().to_owned(),
                        kind: kind.to_owned(),
                        record_key: id.to_owned(),
                        op: OutboxOp::Upsert,
                        body: entry.json().to_owned(),
                        hash: ours_hash,
                    }])
                    .await?;
                self.feed
                    .note_hashes(self.spec.name(), vec![(id.into(), ours_hash)]);
                sent_back = true;
            }
        }
        if overlay_changed {
            overlays::set(&self.store, &self.directory, vec![(id.into(), wanted)]).await?;
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
        if crm_only {
            self.crm.remove(vec![local_id.into()]).await?;
            self.store
                .idmap_close(self.spec.name(), kind, local_id)
                .await?;
            if self.overlay_of(local_id).await?.is_some() {
                overlays::set(&self.store, &self.directory, vec![(local_id.into(), None)]).await?;
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
        self.store
            .conflict_add(NewConflict {
                system: self.spec.name().to_owned(),
                record_key: local_id.to_owned(),
                field: "deleted".to_owned(),
                ours: Some(local_id.to_owned()),
                theirs: Some(remote_id.to_owned()),
                resolution: KEPT_IN_1C.to_owned(),
            })
            .await?;
        self.store
            .idmap_close(self.spec.name(), kind, local_id)
            .await?;
        // Nor is the record sent to that system again (the feed's next
        // change or reconcile would otherwise create it there anew).
        self.feed
            .note_hashes(self.spec.name(), vec![(local_id.into(), hash::CLOSED)]);
        let current = self.overlay_of(local_id).await?;
        if let Some(current) = &current {
            let wanted = without_system(current, self.spec.name());
            if wanted.as_ref() != Some(current) {
                overlays::set(
                    &self.store,
                    &self.directory,
                    vec![(local_id.into(), wanted)],
                )
                .await?;
            }
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

    /// `current` with this system's manager as `remote` says and its `page`, and
    /// (`phones_too`) the numbers `remote` has that neither `own` phones nor
    /// the overlay have, after the overlay's. Other systems' parts are kept;
    /// numbers are never taken away (a union). `None` when nothing is left.
    fn wanted_overlay(
        &self,
        current: Option<&Overlay>,
        remote: &RemoteRecord,
        page: Option<Link>,
        own: &[Box<str>],
        phones_too: bool,
    ) -> Option<Overlay> {
        let system = self.spec.name();
        let mut wanted = current.map_or_else(Overlay::default, |o| without_parts(o, system));
        if let Some(user) = remote
            .manager_user_id
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            wanted.managers.push(OverlayManager {
                system: system.into(),
                user_id: Some(user.into()),
                extension: None,
                name: None,
            });
        }
        if let Some(page) = page {
            wanted.links.push(page);
        }
        if phones_too {
            let mut known: HashSet<phone::PhoneKey> = own
                .iter()
                .chain(wanted.phones.iter())
                .filter_map(|p| phone::normalize(p))
                .collect();
            for number in &remote.phones {
                if let Some(key) = phone::normalize(number) {
                    if known.insert(key) {
                        wanted.phones.push(number.trim().into());
                    }
                }
            }
        }
        let empty =
            wanted.managers.is_empty() && wanted.links.is_empty() && wanted.phones.is_empty();
        (!empty).then_some(wanted)
    }
}

/// `overlay` without `system`'s manager and links (its numbers stay: they
/// are not told apart by system).
fn without_parts(overlay: &Overlay, system: &str) -> Overlay {
    let mut kept = overlay.clone();
    kept.managers.retain(|m| &*m.system != system);
    kept.links.retain(|l| &*l.system != system);
    kept
}

/// What is left of `overlay` once `system` deleted its record: the other
/// systems' managers and links; its numbers only while another system's
/// part remains (numbers are not told apart by system). `None` when nothing.
fn without_system(overlay: &Overlay, system: &str) -> Option<Overlay> {
    let mut kept = without_parts(overlay, system);
    if kept.managers.is_empty() && kept.links.is_empty() {
        kept.phones.clear();
    }
    let empty = kept.managers.is_empty() && kept.links.is_empty() && kept.phones.is_empty();
    (!empty).then_some(kept)
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

    #[test]
    fn a_deletion_takes_away_the_systems_part_and_numbers_only_with_the_last_part() {
        let both = Overlay {
            managers: vec![manager("bitrix24", "17"), manager("amocrm", "5")],
            links: Vec::new(),
            phones: vec!["89125550201".into()],
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
