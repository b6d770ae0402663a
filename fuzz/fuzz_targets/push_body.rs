//! The push API's body reader (`sources::push::parse_batch`), on any bytes.
//!
//! Beyond "no panic, no hang, bounded memory": every record accepted passes
//! the model's checks, and the records written back as a JSON array read
//! back the same.
#![no_main]

use cti_gateway::sources::push::parse_batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_batch(data) {
        Ok(records) => {
            for r in &records {
                r.validate().expect("an accepted record validates");
            }
            let again = serde_json::to_vec(&records).expect("records serialize");
            let back = parse_batch(&again).expect("written records read back");
            assert_eq!(back, records);
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
