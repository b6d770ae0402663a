//! SERVIO PUMP's exchange files: the clients SERVIO exports toward 1C (XML
//! files in a folder, on SERVIO's schedule) feed the directory through a
//! site's mapping, each file applied once. See `docs/servio.md`.
//!
//! - `mapping.rs`: the mapping file (which files, where a client is, where
//!   each field is), checked at start-up.
//! - `read.rs`: one file streamed into counterparties through the mapping.

pub mod mapping;
pub mod read;

pub use mapping::{Mapping, MappingError, Mode};
pub use read::{read_records, Parsed, Problem};

/// The name SERVIO's records carry in the directory and the store.
pub const SOURCE: &str = "servio";
