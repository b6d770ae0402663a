//! 1C's OData page readers (`parse_catalog_page`, `parse_contacts_page`, then
//! `into_records`, private to `sources::onec`, reached through
//! `cti_gateway::fuzzing`), on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cti_gateway::fuzzing::odata_page(data);
});
