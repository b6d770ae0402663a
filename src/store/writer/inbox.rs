//! The inbox's own writes, on the writer thread: a row deleted once
//! applied, or set aside as `failed`. A transaction each; the apply task
//! deletes the rows of a read batch together, after all their effects.

use rusqlite::params;

use super::{Reply, SyncWrite, Writer};

/// A write of the inbox task.
pub(in crate::store) enum InboxWrite {
    Delete {
        id: i64,
        reply: Reply<bool>,
    },
    /// Several applied rows in one transaction; replies with how many were there.
    DeleteMany {
        ids: Vec<i64>,
        reply: Reply<usize>,
    },
    Fail {
        id: i64,
        reply: Reply<bool>,
    },
}

impl From<InboxWrite> for SyncWrite {
    fn from(write: InboxWrite) -> SyncWrite {
        SyncWrite::Inbox(write)
    }
}

impl Writer {
    pub(super) fn inbox_write(&mut self, write: InboxWrite) {
        match write {
            InboxWrite::Delete { id, reply } => {
                let result = self.logged("sync inbox", "deleting an applied inbox row", |tx| {
                    let n = tx
                        .prepare_cached("DELETE FROM inbox WHERE id = ?1")?
                        .execute([id])?;
                    Ok(n > 0)
                });
                let _ = reply.send(result);
            }
            InboxWrite::DeleteMany { ids, reply } => {
                let result = self.logged("sync inbox", "deleting applied inbox rows", |tx| {
                    let mut stmt = tx.prepare_cached("DELETE FROM inbox WHERE id = ?1")?;
                    let mut n = 0;
                    for id in &ids {
                        n += stmt.execute([id])?;
                    }
                    Ok(n)
                });
                let _ = reply.send(result);
            }
            InboxWrite::Fail { id, reply } => {
                let result = self.logged("sync inbox", "setting an inbox row aside", |tx| {
                    let n = tx
                        .prepare_cached("UPDATE inbox SET state = 'failed' WHERE id = ?1")?
                        .execute(params![id])?;
                    Ok(n > 0)
                });
                let _ = reply.send(result);
            }
        }
    }
}
