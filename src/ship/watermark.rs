//! The watermark of one file generation: which of its lines Kafka acknowledged, and
//! the offset up to which the file is shipped (the longest acknowledged prefix).
//!
//! Pure bookkeeping, no I/O: the producer pushes lines in file order and acks them in
//! whatever order delivery reports arrive.

use std::collections::VecDeque;

/// In-flight lines of one source and the watermark they allow.
///
/// Lines are pushed in file order and get consecutive sequence numbers; an ack may
/// arrive in any order (different partitions), but the watermark only moves over a
/// contiguous run of acknowledged lines from the front.
#[derive(Debug)]
pub struct Tracker {
    front_seq: u64,
    inflight: VecDeque<(u64, bool)>,
    /// Highest offset whose line and all earlier lines are acknowledged, not yet saved.
    pending_commit: Option<u64>,
    /// Offset the watermark last moved to (bytes acknowledged = moves of it).
    watermark: Option<u64>,
    /// Lines and bytes the watermark moved over since the last `take_acked`.
    acked: (u64, u64),
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Tracker {
        Tracker {
            front_seq: 0,
            inflight: VecDeque::new(),
            pending_commit: None,
            watermark: None,
            acked: (0, 0),
        }
    }

    /// Registers a line that commits `commit_offset` once acknowledged; returns its
    /// sequence number (its low 32 bits are enough to find it again, see [`Tracker::ack`]).
    /// `start` is where the line begins (the first push sets where counting starts).
    pub fn push(&mut self, start: u64, commit_offset: u64) -> u64 {
        self.watermark.get_or_insert(start);
        self.inflight.push_back((commit_offset, false));
        self.front_seq + self.inflight.len() as u64 - 1
    }

    /// Marks the line with sequence number `seq` (low 32 bits) acknowledged and moves the
    /// watermark. Returns false for an unknown sequence number.
    pub fn ack(&mut self, seq_low: u32) -> bool {
        let idx = seq_low.wrapping_sub(self.front_seq as u32) as usize;
        match self.inflight.get_mut(idx) {
            Some(e) if !e.1 => e.1 = true,
            _ => return false,
        }
        while let Some(&(off, true)) = self.inflight.front() {
            self.inflight.pop_front();
            self.front_seq += 1;
            self.pending_commit = Some(off);
            let from = self.watermark.replace(off).unwrap_or(off);
            self.acked.0 += 1;
            self.acked.1 += off.saturating_sub(from);
        }
        true
    }

    /// Lines sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Takes the (lines, bytes) acknowledged since the last call.
    pub fn take_acked(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.acked)
    }

    /// Takes the watermark reached since the last call.
    pub fn take_commit(&mut self) -> Option<u64> {
        self.pending_commit.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_waits_for_the_earliest_unacked_line() {
        let mut t = Tracker::new();
        let a = t.push(0, 10);
        let b = t.push(10, 20);
        let c = t.push(20, 30);
        assert!(t.ack(c as u32));
        assert_eq!(t.take_commit(), None, "a later ack alone must not commit");
        assert!(t.ack(a as u32));
        assert_eq!(t.take_commit(), Some(10));
        assert!(t.ack(b as u32));
        assert_eq!(t.take_commit(), Some(30), "b fills the gap up to c");
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.take_acked(), (3, 30), "three lines, bytes 0..30");
        assert!(!t.ack(b as u32), "double or unknown ack is refused");
    }

    #[test]
    fn sequence_numbers_survive_u32_wrap() {
        let mut t = Tracker::new();
        t.front_seq = u64::from(u32::MAX) - 1;
        let s: Vec<u64> = (0..4).map(|i| t.push(99 + i, 100 + i)).collect();
        for &q in s.iter().rev() {
            assert!(t.ack(q as u32));
        }
        assert_eq!(t.take_commit(), Some(103));
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Whatever order Kafka acknowledges lines in, the commit offset is always the
        /// end of the longest fully acknowledged prefix, never beyond.
        #[test]
        fn watermark_is_the_acknowledged_prefix_under_any_ack_order(
            lens in proptest::collection::vec(1u64..200, 1..60),
            order_seed in proptest::prelude::any::<u64>(),
            base in 0u64..(1 << 40),
            wrap in proptest::prelude::any::<bool>(),
        ) {
            let mut t = Tracker::new();
            if wrap {
                t.front_seq = u64::from(u32::MAX) - 5;
            }
            let mut ends = Vec::new();
            let mut seqs = Vec::new();
            let mut at = base;
            for l in &lens {
                seqs.push(t.push(at, at + l));
                at += l;
                ends.push(at);
            }
            // A permutation of the acks from the seed (Fisher-Yates on a small LCG).
            let mut order: Vec<usize> = (0..lens.len()).collect();
            let mut x = order_seed | 1;
            for i in (1..order.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (x >> 33) as usize % (i + 1));
            }
            let mut acked = vec![false; lens.len()];
            let mut committed = None;
            for &i in &order {
                proptest::prop_assert!(t.ack(seqs[i] as u32));
                acked[i] = true;
                if let Some(c) = t.take_commit() {
                    committed = Some(c);
                }
                let prefix = acked.iter().take_while(|&&a| a).count();
                let expect = (prefix > 0).then(|| ends[prefix - 1]);
                proptest::prop_assert_eq!(committed, expect);
                proptest::prop_assert_eq!(t.in_flight(), lens.len() - prefix);
            }
            proptest::prop_assert_eq!(committed, Some(at));
            proptest::prop_assert_eq!(t.take_acked(), (lens.len() as u64, at - base));
            proptest::prop_assert!(!t.ack(seqs[0] as u32), "a second ack is refused");
        }
    }
}
