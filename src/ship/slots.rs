//! The producer's table of sources it has records of: one slot per file generation, with
//! its watermark, its flow state and whatever it holds back while Kafka refuses it.
//!
//! A record's delivery id (librdkafka's opaque) is `slot << 32 | seq`: the slot index
//! and the low 32 bits of the line's sequence number in that slot's tracker. [`pack`]
//! and [`unpack`] are the only places that know it. A slot index is reused only once no
//! record of its previous source is left in librdkafka (`queued == 0`), so a late report
//! can never reach another source's tracker.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::chunk::{Chunk, Left, Source};
use crate::registry::Fingerprint;

use super::flow::Flow;
use super::kafka::Record;
use super::watermark::Tracker;

/// The delivery id of line `seq` of slot `slot`.
pub fn pack(slot: u32, seq: u64) -> usize {
    ((slot as usize) << 32) | (seq as u32 as usize)
}

/// The slot index and low 32 bits of the sequence number of a delivery id.
pub fn unpack(opaque: usize) -> (u32, u32) {
    ((opaque >> 32) as u32, opaque as u32)
}

/// Lines of a chunk not handed to librdkafka yet: from line `from` on, whose sequence
/// number is `seq` (the chunk's lines were registered with the tracker in one go).
#[derive(Debug)]
pub struct HeldLines {
    /// The chunk (its buffer is what the hold costs).
    pub chunk: Chunk,
    /// First line still to send.
    pub from: usize,
    /// Sequence number of line `from`.
    pub seq: u64,
}

/// One source's records in the producer.
#[derive(Debug)]
pub struct Slot {
    /// The file generation.
    pub source: Arc<Source>,
    /// Its fingerprint as of the latest chunk.
    pub fingerprint: Fingerprint,
    /// Which lines are acknowledged.
    pub tracker: Tracker,
    /// Records handed to librdkafka whose report has not come yet.
    pub queued: u64,
    /// Whether records may go out now.
    pub flow: Flow,
    /// Records Kafka did not take (delivery reports), oldest first; sent before `held`.
    pub failed: VecDeque<Record>,
    /// Lines not sent yet because the flow is not open, in file order.
    pub held: VecDeque<HeldLines>,
    /// Its reader was stopped and the file deleted (logged once): what is held is the
    /// last copy of those lines.
    pub orphaned: bool,
}

impl Slot {
    /// Records held back (failed plus not yet sent) and their payload bytes.
    pub fn held_counts(&self) -> (u64, u64) {
        let mut n = self.failed.len() as u64;
        let mut bytes: u64 = self.failed.iter().map(|r| r.payload.len() as u64).sum();
        for h in &self.held {
            n += (h.chunk.lines.len() - h.from) as u64;
            bytes += h.chunk.data.len() as u64;
        }
        (n, bytes)
    }

    /// File bytes of the held lines (from the first held line to the end of the last,
    /// newlines included): what is lost if they can never be sent or read again.
    pub fn held_line_bytes(&self) -> u64 {
        let failed: u64 = self.failed.iter().map(|r| r.payload.len() as u64 + 1).sum();
        let held: u64 = self
            .held
            .iter()
            .filter_map(|h| {
                let last = h.chunk.lines.len().checked_sub(1)?;
                (h.from <= last).then(|| h.chunk.commit_offset(last) - h.chunk.line_offset(h.from))
            })
            .sum();
        failed + held
    }

    /// Whether the tailer has let go of the source: only this slot and its held chunks
    /// still point to it.
    pub fn reader_gone(&self) -> bool {
        Arc::strong_count(&self.source) == 1 + self.held.len()
    }

    /// Whether its reader let go of a deleted file and nothing of it is left here: every
    /// line it registered is acknowledged (or given up and counted), nothing is held.
    /// Then the ledger may forget the file at once (see
    /// [`crate::registry::Registry::forget_deleted`]).
    pub fn deleted_and_done(&self) -> bool {
        self.source.left() == Left::Deleted
            && self.reader_gone()
            && self.queued == 0
            && self.tracker.in_flight() == 0
            && self.failed.is_empty()
            && self.held.is_empty()
    }

    /// Sets the flow, and tells the tailer whether to read on.
    pub fn set_flow(&mut self, flow: Flow) {
        self.source.paused.store(!flow.is_open(), Ordering::Relaxed);
        self.flow = flow;
    }

    /// Tells the tailer whether to read on, after the flow changed in place.
    pub fn sync_pause(&self) {
        self.source
            .paused
            .store(!self.flow.is_open(), Ordering::Relaxed);
    }
}

/// The slot table.
#[derive(Debug, Default)]
pub struct Slots {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_source: HashMap<u64, u32>,
}

impl Slots {
    /// The slot of `chunk`'s source, made on its first chunk; the fingerprint is updated.
    pub fn slot_for(&mut self, chunk: &Chunk) -> u32 {
        let src = &chunk.source;
        let i = match self.by_source.get(&src.id) {
            Some(&i) => i,
            None => {
                let i = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    (self.slots.len() - 1) as u32
                });
                self.slots[i as usize] = Some(Slot {
                    source: src.clone(),
                    fingerprint: chunk.fingerprint,
                    tracker: Tracker::new(),
                    queued: 0,
                    flow: Flow::Open,
                    failed: VecDeque::new(),
                    held: VecDeque::new(),
                    orphaned: false,
                });
                self.by_source.insert(src.id, i);
                i
            }
        };
        if let Some(s) = self.get_mut(i) {
            s.fingerprint = chunk.fingerprint;
        }
        i
    }

    /// Slot `i`, if in use.
    pub fn get(&self, i: u32) -> Option<&Slot> {
        self.slots.get(i as usize).and_then(Option::as_ref)
    }

    /// Slot `i`, if in use.
    pub fn get_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.slots.get_mut(i as usize).and_then(Option::as_mut)
    }

    /// Indices of the slots in use.
    pub fn indices(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&i| self.slots[i as usize].is_some())
            .collect()
    }

    /// Every slot in use.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten()
    }

    /// Frees slot `i`. Only call it once `queued` is 0 (see the module doc).
    pub fn free(&mut self, i: u32) -> Option<Slot> {
        let s = self.slots.get_mut(i as usize)?.take()?;
        self.by_source.remove(&s.source.id);
        self.free.push(i);
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{chunk, source};
    use super::*;

    #[test]
    fn a_deleted_file_is_done_once_its_reader_let_go_and_every_line_is_acknowledged() {
        let mut slots = Slots::default();
        let (src, _stop) = source(1, "/l/a.log", 9, "t");
        let i = slots.slot_for(&chunk(&src, 0, 2));
        let s = slots.get_mut(i).unwrap();
        let (a, b) = (s.tracker.push(0, 2), s.tracker.push(2, 4));
        assert!(!s.deleted_and_done(), "its reader still holds it");
        src.set_left(Left::Deleted);
        drop(src);
        assert!(!s.deleted_and_done(), "two lines in flight");
        s.tracker.ack(a as u32);
        assert!(!s.deleted_and_done(), "one line in flight");
        s.tracker.ack(b as u32);
        assert!(s.deleted_and_done());
        s.held.push_back(HeldLines {
            chunk: chunk(&s.source.clone(), 0, 1),
            from: 0,
            seq: 2,
        });
        assert!(!s.deleted_and_done(), "a line held back");
        s.held.clear();
        s.source.set_left(Left::Reachable);
        assert!(
            !s.deleted_and_done(),
            "not deleted: a new reader may need the ledger"
        );
    }

    #[test]
    fn delivery_ids_round_trip() {
        assert_eq!(unpack(pack(0, 0)), (0, 0));
        assert_eq!(unpack(pack(7, 42)), (7, 42));
        let big = u64::from(u32::MAX) + 5;
        assert_eq!(
            unpack(pack(u32::MAX, big)),
            (u32::MAX, 4),
            "seq keeps its low 32 bits"
        );
    }
}
