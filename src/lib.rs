//! # cti-gateway
//!
//! Answers the Mobilon virtual PBX's SOAP questions (`SayName`: who is
//! calling and which manager gets the call; `IncomingCall`: show the caller's
//! card to an operator) from an in-memory directory of 1C counterparties,
//! and pushes caller cards to operator screens.
//!
//! # Layout
//!
//! - [`config`]: typed configuration from TOML and environment, validated once.
//! - [`phone`]: caller numbers normalized to one key (E.164 digits or an extension).
//! - [`metrics`]: the Prometheus registry.
//! - [`logging`]: outside text escaped in log lines, and warnings rate-limited per key.
//! - [`directory`]: the counterparty model and the index swapped whole on change.
//! - [`store`]: SQLite (snapshot of the directory, call journal); the only module that knows SQL.
//! - [`xml`]: safe XML reading (no DTD, bounded depth and sizes, encodings), shared by `soap`
//!   and `sources::servio`; only it and its users know XML.
//! - [`soap`]: envelope reading and answer writing.
//! - [`popup`]: the hub that routes caller cards to operators' screens, and its transports.
//! - [`sources`]: where counterparties come from: the JSON Lines file, 1C's OData, the push API.
//! - [`sync`]: keeping other systems (CRMs) in step: their registrations, the normalized
//!   hash of a record, the change feed to each system's outbox, "the same client?".
//! - [`vats`]: the PBX's two operations, from parsed request to answer bytes.
//! - [`http`]: the accept loop, the route table and one file per endpoint group; the only
//!   module that knows routes and credentials.
//! - [`gateway`]: wires it all together and runs it.
//! - [`systemd`]: the service manager's readiness protocol (`READY=1`, `STOPPING=1`).
//!
//! Dependencies point one way: `gateway` → `http` → `vats` → (`sources`,
//! `popup`, `soap`, `store`); `gateway` → `sync` → (`sources`, `store`);
//! `sources` → `store`; `soap`, `sources` and `sync` → `xml`; all of them → `directory`. `config`, `logging`, `metrics`, `phone`, `systemd` and the thread-priority helper
//! are leaves every module may use. The rules are checked by
//! `tests/architecture.rs` (see ARCHITECTURE.md's table).

pub mod config;
pub mod directory;
pub mod gateway;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod phone;
pub mod popup;
pub mod soap;
pub mod sources;
pub mod store;
pub mod sync;
pub mod systemd;
mod thread_priority;
pub mod vats;
pub mod xml;

/// Entry points for the fuzz targets in `fuzz/` (`cargo +nightly fuzz`, see
/// `fuzz/run.sh`) that reach parsers not otherwise public. Not an API: it
/// only calls the parsers, and has no logic of its own.
///
/// The other parsers of outside input are public and fuzzed directly:
/// [`soap::parse_request`], [`phone::normalize`],
/// [`sources::push::parse_batch`], [`sources::file::parse_jsonl`].
#[doc(hidden)]
pub mod fuzzing {
    use crate::sources::onec::rows;

    /// Reads `data` as a 1C OData list answer, both as a catalog page (with
    /// the example configuration's category, manager, OGRN, code and kind
    /// fields), as a contact information page and as a register page, then turns what was read into records, as
    /// a full read does. Outcomes are discarded: only panics, hangs and
    /// allocations matter.
    pub fn odata_page(data: &[u8]) {
        let fields = rows::FieldNames {
            category: Some("КатегорияКлиента".to_owned()),
            manager_phone: Some("ДобавочныйМенеджера".to_owned()),
            ogrn: Some("ОГРН".to_owned()),
            code: Some("Code".to_owned()),
            kind: Some("ЮрФизЛицо".to_owned()),
            ..rows::FieldNames::default()
        };
        let catalog = rows::parse_catalog_page(data, &fields).unwrap_or_default();
        let mut contacts = rows::parse_contacts_page(data).unwrap_or_default();
        let mut register = rows::parse_register_page(data).unwrap_or_default();
        rows::number_register_rows(&mut register);
        contacts.extend(register);
        let _ = rows::into_records(catalog, contacts);
    }
}

pub use gateway::Gateway;
