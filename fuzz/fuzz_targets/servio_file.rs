//! A SERVIO export file (`sources::servio::read_records`) on any bytes,
//! through the samples' mapping (tests/data/servio/mapping.toml), read as a
//! full and as a delta file, in both encodings the mapping can give.
//!
//! Beyond "no panic, no hang, bounded memory" (the reader streams and
//! bounds every run): every record accepted passes the model's checks and
//! carries the `servio:` prefix, and a refusal lists at most 20 problems.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use cti_gateway::sources::servio::{read_records, Mapping, Mode};
use cti_gateway::xml::{Encoding, EncodingChoice};
use libfuzzer_sys::fuzz_target;

const MAPPING: &str = include_str!("../../tests/data/servio/mapping.toml");

fn mapping() -> &'static Mapping {
    static MAPPING_READ: OnceLock<Mapping> = OnceLock::new();
    MAPPING_READ.get_or_init(|| {
        Mapping::parse(MAPPING, Path::new("mapping.toml")).expect("the samples' mapping reads")
    })
}

fuzz_target!(|data: &[u8]| {
    let mapping = mapping();
    for (mode, encoding) in [
        (Mode::Full, EncodingChoice::Auto),
        (Mode::Delta, EncodingChoice::Given(Encoding::Windows1251)),
    ] {
        let mut rule = mapping.files[0].clone();
        rule.mode = mode;
        rule.encoding = encoding;
        match read_records(data, &rule, mapping, 1_000) {
            Ok(parsed) => {
                for r in &parsed.upserts {
                    r.validate().expect("an accepted record validates");
                    assert!(r.id.starts_with("servio:"));
                }
                assert!(parsed.upserts.len() + parsed.removals.len() <= parsed.clients);
            }
            Err(problems) => {
                assert!(!problems.is_empty() && problems.len() <= 20);
                for p in &problems {
                    let _ = p.to_string();
                }
            }
        }
    }
});
