//! The PBX's SOAP envelope reader (`soap::parse_request`), on any bytes.
//!
//! Beyond "no panic, no hang, bounded memory": an envelope that is accepted
//! holds fields within the documented bound (256 bytes) and trimmed of XML
//! whitespace, and every refusal can be written as a fault string.
#![no_main]

use cti_gateway::soap::{parse_request, Operation};
use libfuzzer_sys::fuzz_target;

const MAX_FIELD_LEN: usize = 256;

fn check_field(name: &str, value: &str) {
    assert!(
        value.len() <= MAX_FIELD_LEN,
        "{name} too long: {}",
        value.len()
    );
    let xml_ws = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    assert_eq!(value, value.trim_matches(xml_ws), "{name} not trimmed");
}

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(request) => {
            assert!(std::str::from_utf8(data).is_ok(), "accepted invalid UTF-8");
            match &request.operation {
                Operation::SayName { number } => check_field("Number", number),
                Operation::IncomingCall { num_from, key } => {
                    check_field("NumFrom", num_from);
                    check_field("Key", key);
                }
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
