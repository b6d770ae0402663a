//! The JSON Lines file reader (`sources::file::parse_jsonl`), on any bytes.
//!
//! Beyond "no panic, no hang, bounded memory": every record accepted passes
//! the model's checks, and the records written back one per line read back
//! the same.
#![no_main]

use cti_gateway::sources::file::parse_jsonl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_jsonl(data) {
        Ok(records) => {
            let mut again = Vec::new();
            for r in &records {
                r.validate().expect("an accepted record validates");
                serde_json::to_writer(&mut again, r).expect("a record serializes");
                again.push(b'\n');
            }
            let back = parse_jsonl(&again).expect("written records read back");
            assert_eq!(back, records);
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
