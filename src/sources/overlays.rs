//! CRM overlays made durable: an overlay is written to the sync store
//! (`<name>.sync.sqlite`, table `overlay`) before the directory applies it,
//! as a push is committed before it answers, and every stored overlay is
//! set again at start, after the snapshot, so a restart routes calls as
//! before it. What is stored is the overlay as it was set (CRM user ids, not
//! the extensions they map to): each start maps them with its own
//! `[[manager]]`.

use crate::directory::{Directory, Overlay, OverlayError};
use crate::logging::Escaped;
use crate::store::{Store, StoreError};

/// Why overlays were not set.
#[derive(Debug, thiserror::Error)]
pub enum OverlayWriteError {
    /// An overlay breaks the model's bounds: nothing was stored or set.
    #[error(transparent)]
    Invalid(#[from] OverlayError),
    /// The sync store did not commit: nothing was set.
    #[error("overlays not stored: {0}")]
    Store(#[from] StoreError),
}

/// Stores `changes` (`None` deletes an id's overlay) in one transaction of
/// `sync_store`, then sets them in `directory`. Refuses the whole change,
/// storing nothing, if an overlay breaks the model's bounds. Gives the
/// number of ids changed.
pub async fn set(
    sync_store: &Store,
    directory: &Directory,
    changes: Vec<(Box<str>, Option<Overlay>)>,
) -> Result<usize, OverlayWriteError> {
    let rows = encode(&changes)?;
    sync_store.overlay_put(rows).await?;
    Ok(directory.set_overlays(changes)?)
}

/// The bodies `changes` are stored as (`None` deletes an id's), for
/// [`Store::overlay_put`] or a `SyncBatch`: refused whole if an overlay
/// breaks the model's bounds.
pub fn encode(
    changes: &[(Box<str>, Option<Overlay>)],
) -> Result<Vec<(String, Option<String>)>, OverlayError> {
    let mut rows = Vec::with_capacity(changes.len());
    for (id, overlay) in changes {
        let body = match overlay {
            Some(overlay) => {
                overlay.validate().map_err(|problem| OverlayError {
                    id: id.clone(),
                    problem,
                })?;
                // A struct of strings always serializes.
                Some(serde_json::to_string(overlay).unwrap_or_default())
            }
            None => None,
        };
        rows.push((id.to_string(), body));
    }
    Ok(rows)
}

/// Sets every overlay `sync_store` holds in `directory` (at start, after
/// the snapshot: an overlay waits for its record anyway). A body that no
/// longer reads, or breaks the model's bounds, is logged and skipped: it
/// never stops a start. Gives the number of overlays set.
pub async fn load(sync_store: &Store, directory: &Directory) -> Result<usize, StoreError> {
    let rows = sync_store.overlay_all().await?;
    let mut changes = Vec::with_capacity(rows.len());
    for (id, body) in rows {
        match serde_json::from_str::<Overlay>(&body) {
            Ok(overlay) if overlay.validate().is_ok() => {
                changes.push((id.into_boxed_str(), Some(overlay)));
            }
            Ok(_) | Err(_) => tracing::warn!(
                id = %Escaped(&id),
                "a stored CRM overlay does not read as one; skipped (the CRM sets it again when the record next changes there)"
            ),
        }
    }
    // Each overlay was checked above: the directory refuses none of them.
    let set = directory.set_overlays(changes).unwrap_or(0);
    tracing::info!(overlays = set, "CRM overlays loaded from the sync store");
    Ok(set)
}
