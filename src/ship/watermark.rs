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
    inflight: VecDeque<(u64, Mark)>,
    /// Highest offset whose line and all earlier lines are acknowledged, not yet saved.
    pending_commit: Option<u64>,
    /// Offset the watermark last moved to (bytes acknowledged = moves of it).
    watermark: Option<u64>,
    /// Lines and bytes the watermark moved over since the last `take_acked`.
    acked: (u64, u64),
}

/// Where a line of the tracker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Sent, not acknowledged yet.
    InFlight,
    /// Acknowledged by Kafka.
    Acked,
    /// Filtered out: never sent, done as soon as everything before it is.
    Filtered,
    /// Given up for good (counted lost with its reason): the watermark moves over it,
    /// but it is neither a line nor bytes Kafka acknowledged.
    Lost,
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
        self.inflight.push_back((commit_offset, Mark::InFlight));
        self.front_seq + self.inflight.len() as u64 - 1
    }

    /// Registers a line that was filtered out: it is never sent, and the watermark
    /// moves over it as soon as every line before it is acknowledged (at once if none
    /// is in flight). Its bytes count as acknowledged, the line does not.
    pub fn push_filtered(&mut self, start: u64, commit_offset: u64) -> u64 {
        self.watermark.get_or_insert(start);
        self.inflight.push_back((commit_offset, Mark::Filtered));
        let seq = self.front_seq + self.inflight.len() as u64 - 1;
        self.advance();
        seq
    }

    /// Marks the line with sequence number `seq` (low 32 bits) acknowledged and moves the
    /// watermark. Returns false for an unknown sequence number.
    pub fn ack(&mut self, seq_low: u32) -> bool {
        self.settle(seq_low, Mark::Acked)
    }

    /// Marks the line `seq` (low 32 bits) given up for good (a line too large for the
    /// topic, counted lost by the caller) and moves the watermark over it. Returns false
    /// for an unknown sequence number.
    pub fn give_up(&mut self, seq_low: u32) -> bool {
        self.settle(seq_low, Mark::Lost)
    }

    /// Marks the in-flight line `seq_low` done as `mark` and moves the watermark; false
    /// for an unknown sequence number or a line already done. (Once per line: inlined.)
    #[inline]
    fn settle(&mut self, seq_low: u32, mark: Mark) -> bool {
        let idx = seq_low.wrapping_sub(self.front_seq as u32) as usize;
        match self.inflight.get_mut(idx) {
            Some(e) if e.1 == Mark::InFlight => e.1 = mark,
            _ => return false,
        }
        self.advance();
        true
    }

    /// Moves the watermark over the done lines at the front.
    fn advance(&mut self) {
        while let Some(&(off, mark)) = self.inflight.front() {
            if mark == Mark::InFlight {
                break;
            }
            self.inflight.pop_front();
            self.front_seq += 1;
            self.pending_commit = Some(off);
            let from = self.watermark.replace(off).unwrap_or(off);
            self.acked.0 += u64::from(mark == Mark::Acked);
            if mark != Mark::Lost {
                self.acked.1 += off.saturating_sub(from);
            }
        }
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
    fn a_line_given_up_moves_the_watermark_but_is_not_counted_acknowledged() {
        let mut t = Tracker::new();
        let a = t.push(0, 10);
        let b = t.push(10, 1010); // too large for the topic
        let c = t.push(1010, 1020);
        assert!(t.give_up(b as u32));
        assert!(!t.give_up(b as u32), "once");
        assert!(t.ack(c as u32));
        assert_eq!(t.take_commit(), None, "line a is still out");
        assert!(t.ack(a as u32));
        assert_eq!(t.take_commit(), Some(1020), "past the lost line");
        assert_eq!(
            t.take_acked(),
            (2, 20),
            "two lines and their 20 bytes acknowledged; the 1,000 lost bytes are not"
        );
    }

    #[test]
    fn filtered_lines_commit_once_everything_before_them_is_acknowledged() {
        let mut t = Tracker::new();
        let a = t.push(0, 10);
        t.push_filtered(10, 20);
        let c = t.push(20, 30);
        t.push_filtered(30, 40);
        assert_eq!(
            t.take_commit(),
            None,
            "a filtered line waits for the line before"
        );
        assert!(t.ack(a as u32));
        assert_eq!(t.take_commit(), Some(20));
        assert!(t.ack(c as u32));
        assert_eq!(t.take_commit(), Some(40));
        assert_eq!(
            t.take_acked(),
            (2, 40),
            "filtered lines are bytes, not lines"
        );
        t.push_filtered(40, 50);
        assert_eq!(t.take_commit(), Some(50), "nothing in flight: at once");
        assert_eq!(t.in_flight(), 0);
    }

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
