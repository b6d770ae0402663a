//! Screens that got a call's pop-up after its journal row was written: a
//! long-poll request that returned the message. Such a delivery adds one to
//! the row's `delivered`.
//!
//! The hub wakes long-poll requests as soon as the message is queued, which
//! is before the PBX's request has sent the journal append to this writer;
//! so a delivery may arrive first. It is then kept here, keyed by the call's
//! operator key and pop-up seq, and added to the row when its append comes.
//! Kept deliveries are bounded: a delivery whose append never comes (the
//! journal write failed) is forgotten once [`MAX_EARLY`] newer ones wait.

use std::collections::{HashMap, VecDeque};

/// Most deliveries kept for rows not written yet.
const MAX_EARLY: usize = 1024;

/// Deliveries that came before their journal row.
#[derive(Default)]
pub(super) struct EarlyDeliveries {
    count: HashMap<(String, u64), u32>,
    /// The keys of `count` in arrival order, to forget the oldest first.
    order: VecDeque<(String, u64)>,
}

impl EarlyDeliveries {
    /// Keeps one delivery of `key`'s pop-up `seq` until its row is written.
    pub(super) fn keep(&mut self, key: &str, seq: u64) {
        let id = (key.to_owned(), seq);
        match self.count.get_mut(&id) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                self.count.insert(id.clone(), 1);
                self.order.push_back(id);
            }
        }
        while self.order.len() > MAX_EARLY {
            if let Some(oldest) = self.order.pop_front() {
                self.count.remove(&oldest);
            }
        }
    }

    /// The deliveries kept for the row of `key`'s pop-up `seq`, forgotten
    /// here (0 when none).
    pub(super) fn take(&mut self, key: &str, seq: u64) -> u32 {
        if self.count.is_empty() {
            return 0;
        }
        let id = (key.to_owned(), seq);
        match self.count.remove(&id) {
            Some(n) => {
                self.order.retain(|o| o != &id);
                n
            }
            None => 0,
        }
    }

    /// Puts back what [`EarlyDeliveries::take`] took, when the row's write
    /// failed (the append may be retried).
    pub(super) fn put_back(&mut self, key: &str, seq: u64, n: u32) {
        if n == 0 {
            return;
        }
        self.keep(key, seq);
        if let Some(count) = self.count.get_mut(&(key.to_owned(), seq)) {
            *count = count.saturating_add(n - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_deliveries_are_taken_once_and_bounded() {
        let mut early = EarlyDeliveries::default();
        assert_eq!(early.take("k", 1), 0);
        early.keep("k", 1);
        early.keep("k", 1);
        early.keep("other", 1);
        assert_eq!(early.take("k", 1), 2);
        assert_eq!(early.take("k", 1), 0);
        early.put_back("k", 1, 3);
        assert_eq!(early.take("k", 1), 3);
        for seq in 0..(MAX_EARLY as u64 + 10) {
            early.keep("k", seq);
        }
        assert_eq!(early.order.len(), MAX_EARLY);
        assert_eq!(early.count.len(), MAX_EARLY);
        assert_eq!(early.take("other", 1), 0, "the oldest was forgotten");
        assert_eq!(early.take("k", MAX_EARLY as u64 + 9), 1);
    }
}
