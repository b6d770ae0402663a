//! The phone normalizer (`phone::normalize`), on any text.
//!
//! Beyond "no panic": a key shows as a number that normalizes to the same
//! key again (what the pop-up shows is what a lookup would find).
#![no_main]

use cti_gateway::phone::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(key) = normalize(raw) {
        let shown = key.display_e164();
        assert_eq!(normalize(&shown), Some(key), "{raw:?} shows as {shown:?}");
        let digits = key.to_string();
        assert!(
            (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
            "{raw:?} gives the key {digits:?}"
        );
    }
});
