//! 1C as a sync partner (issue 19): payments read from 1C or pushed
//! ([`payments`]).

pub mod payments;
