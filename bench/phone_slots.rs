//! Phone numbers of the benchmark data, by slot: shared by
//! `bench/gen_counterparties.rs` (the records' phones and the callers asked
//! for) and `bench/push_load.rs` (phones no generated record has), each
//! including this file with `#[path = "phone_slots.rs"] mod phone_slots;`.
//!
//! Phone slot `k` maps to a ten-digit national number through a bijection of
//! `0..10^9` on its last nine digits, so distinct slots give distinct numbers.
//! The generator gives its records slots `0..used` (at most [`MAX_USED`]) and
//! its unknown callers random slots in `used..FRESH_BASE`; slots from
//! [`FRESH_BASE`] on are left to the push benchmark, whose numbers therefore
//! are neither a record's phone nor a caller the numbers file lists as
//! unknown.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Size of the space a national number's last nine digits come from.
pub const SPACE: u64 = 1_000_000_000;
/// Multiplier of the slot bijection: coprime to 10, so `k -> A*k + B mod 10^9`
/// is a permutation and distinct slots give distinct numbers.
const A: u64 = 387_420_489; // 3^18
/// Most slots the generated records may use (up to 3 phones per record).
pub const MAX_USED: u64 = 900_000_000;
/// First slot no generated number uses.
pub const FRESH_BASE: u64 = 950_000_000;
/// How many fresh slots there are.
pub const FRESH: u64 = SPACE - FRESH_BASE;

/// The bijection's offset for a `--seed`: the first draw of the generator's
/// random stream (the generator draws it first, before any record).
pub fn draw_offset(rng: &mut StdRng) -> u64 {
    rng.random_range(0..SPACE)
}

/// [`draw_offset`] of a fresh stream seeded with `seed`: the offset the
/// generator used for that `--seed`.
pub fn offset_of_seed(seed: u64) -> u64 {
    draw_offset(&mut StdRng::seed_from_u64(seed))
}

/// The last nine digits of slot `k`'s number.
fn nine(k: u64, b: u64) -> u64 {
    (A % SPACE * (k % SPACE) + b) % SPACE
}

/// The ten-digit national number of phone slot `k`: the first digit picks a
/// kind (mostly mobile 9xx, some city numbers 3xx/4xx/8xx), the other nine
/// come from the bijection. Distinct `k` differ in the last nine digits.
pub fn national(k: u64, b: u64) -> u64 {
    let v = nine(k, b);
    const FIRST: [u64; 8] = [9, 9, 9, 9, 9, 4, 3, 8];
    // Mix k so the kind does not follow the slot order.
    let h = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61;
    let mut first = FIRST[h as usize];
    // Only the first digit may change here (v alone keeps numbers distinct):
    // 40x is unused and 80x is toll-free or unused, so those become mobiles.
    let second = v / 100_000_000;
    if (first == 4 && second == 0) || (first == 8 && !(1..=6).contains(&second)) {
        first = 9;
    }
    first * SPACE + v
}

/// The ten-digit national number (a mobile, 9xx) of fresh slot `n`
/// (`0..FRESH`): no generated record has it and the numbers file does not
/// ask for it.
pub fn fresh_mobile(n: u64, b: u64) -> u64 {
    assert!(
        n < FRESH,
        "fresh phone slot {n} is past the {FRESH} there are"
    );
    9 * SPACE + nine(FRESH_BASE + n, b)
}
