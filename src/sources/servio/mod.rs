//! SERVIO PUMP's exchange files: the clients SERVIO exports toward 1C (XML
//! files in a folder, on SERVIO's schedule) feed the directory through a
//! site's mapping, each file applied once. See `docs/servio.md`.
//!
//! - `mapping.rs`: the mapping file (which files, where a client is, where
//!   each field is), checked at start-up.
//! - `read.rs`: one file streamed into counterparties through the mapping.
//! - `folder.rs`: which files are candidates, when one has settled, moving
//!   and copying them out.
//! - `source.rs`: the scans: hash, ledger, parse, directory, snapshot,
//!   ledger, archive; on the `cti-servio` lowest-priority worker.
//! - `metrics.rs`: `cti_servio_*`.

mod folder;
pub mod mapping;
mod metrics;
pub mod read;
mod source;

pub use mapping::{Mapping, MappingError, Mode};
pub use read::{read_records, Parsed, Problem};
pub use source::{ServioSettings, ServioSource};

/// The name SERVIO's records carry in the directory and the store.
pub const SOURCE: &str = "servio";
