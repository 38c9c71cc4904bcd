//! Delivery reports: librdkafka's acknowledgements and errors move each source's
//! watermark ([`super::watermark`]); the acknowledged prefixes go to the checkpoint.
//!
//! Its decisions as pure functions of a slot or the slot table: [`acked`] (a report of
//! success: watermark, queue count, end of a hold), [`too_large_verdict`] (a line
//! dropped as too large, or held), [`keep_refused`] (where a refused record waits),
//! [`probe_now`] (held sources of a topic that appeared) and [`free_let_go`] (which
//! slots the checkpoint frees, and which deleted files the ledger may forget).

use super::*;

use hold::rereadable;
use slots::Slot;

/// Applies Kafka's acknowledgement of record `op` (line `seq`) of slot `s`: one record
/// less in librdkafka, the line acknowledged in the watermark, and the end of the hold
/// if it was the probe (`Recovered`: release what is held).
pub(super) fn acked(s: &mut Slot, op: usize, seq: u32, now: Instant) -> Option<Event> {
    s.queued = s.queued.saturating_sub(1);
    s.tracker.ack(seq);
    s.flow.delivered(op, now)
}

/// What becomes of a record refused as too large for its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TooLargeVerdict {
    /// A probe sent alone, larger by itself than the topic's `max.message.bytes`: the
    /// line can never go; dropped and counted (see `drop_too_large`).
    Drop,
    /// Refused for its batch's size, perhaps: held, its oldest record tried alone at once.
    ProbeAloneNow,
    /// An alone probe refused while the limit is unknown (or the record fits it, so it
    /// was batched with other files' records): held, tried again after an interval.
    Hold,
}

/// [`TooLargeVerdict`] for a record of `size` bytes ([`record_size`]); `alone_probe`:
/// it was its source's probe, sent alone; `limit`: the topic's `max.message.bytes`, if
/// known.
pub(super) fn too_large_verdict(
    alone_probe: bool,
    limit: Option<u64>,
    size: u64,
) -> TooLargeVerdict {
    if alone_probe && limit.is_some_and(|l| size > l) {
        TooLargeVerdict::Drop
    } else if alone_probe {
        TooLargeVerdict::Hold
    } else {
        TooLargeVerdict::ProbeAloneNow
    }
}

/// Keeps a record Kafka refused, to be sent again: a refused probe stays the oldest
/// record (file order); others queue behind the records refused before them.
pub(super) fn keep_refused(s: &mut Slot, record: Record, was_probe: bool) {
    if was_probe {
        s.failed.push_front(record);
    } else {
        s.failed.push_back(record);
    }
}

/// Makes the held sources of the `appeared` topics probe at once.
pub(super) fn probe_now(slots: &mut Slots, appeared: &[String], now: Instant) {
    for slot in slots.indices() {
        if let Some(s) = slots.get_mut(slot) {
            if appeared.contains(&s.source.topic) {
                s.flow.postpone(now, Duration::ZERO);
            }
        }
    }
}

/// Frees the slots of sources their reader let go of and librdkafka holds nothing of,
/// except a held source's that nobody reads again (its held records are the last copy
/// of those lines: kept, marked orphaned once its reader was stopped). Returns the
/// files (and generations) deleted with every line done and no other generation left
/// here: the ledger may forget them (see `Registry::forget_deleted`).
pub(super) fn free_let_go(slots: &mut Slots) -> Vec<(FileId, u64)> {
    // Slots per file (generations of one file share it).
    let mut per_file: std::collections::HashMap<FileId, usize> = Default::default();
    for s in slots.iter() {
        *per_file.entry(s.source.file).or_default() += 1;
    }
    let mut deleted_done: Vec<(FileId, u64)> = Vec::new();
    for slot in slots.indices() {
        let Some(s) = slots.get(slot) else {
            continue;
        };
        // Nothing of the source can come back once its reader let go and librdkafka
        // holds none of its records: free the slot.
        if !s.reader_gone() || s.queued > 0 {
            continue;
        }
        let (n, _) = s.held_counts();
        let keep = n > 0 && !s.flow.is_open() && !rereadable(slots, slot);
        let Some(s) = slots.get_mut(slot) else {
            continue;
        };
        let why = s.flow.hold().map_or("released", |h| h.reason.as_str());
        if keep {
            // Nobody reads these lines again (the file was left by its reader, or
            // deleted): what is held is their last copy. Keep it; it goes out when
            // Kafka takes it (the probes go on), and is counted lost if the agent
            // stops first.
            if !s.orphaned && s.source.reader_stop.is_stopped() {
                s.orphaned = true;
                warn!(
                    "{}: deleted while Kafka refused it ({why}); the {n} records held here are the last copy of those lines: sent when Kafka takes them, counted as lost if the agent stops first",
                    s.source.path
                );
            }
            continue;
        }
        if n > 0 {
            // The entry was changed or removed while Kafka refused it: what is held
            // was never acknowledged, so the entry's next reader reads it again from
            // the ledger's offset (committed above).
            info!(
                "{}: its reader stopped while Kafka refused it ({why}); {n} held records dropped here, the entry's next reader reads them again from the acknowledged offset",
                s.source.path
            );
            s.source.metrics.set_refusal(None);
        }
        if s.deleted_and_done() {
            deleted_done.push((s.source.file, s.source.id));
        }
        if let Some(n) = per_file.get_mut(&s.source.file) {
            *n -= 1;
        }
        slots.free(slot);
    }
    // Deleted, every line acknowledged, no other generation of it left here: nothing
    // can ever be read or owed of it again (see `Registry::forget_deleted`).
    deleted_done.retain(|(file, _)| per_file.get(file).is_none_or(|&n| n == 0));
    deleted_done
}

impl ProducerLoop {
    /// Serves every delivery report librdkafka has ready.
    pub(super) fn serve(&mut self) {
        // poll(0) serves at most one event (rdkafka ≥ 0.38); loop while it yields reports.
        for _ in 0..10_000 {
            self.producer.poll(Duration::ZERO);
            if self.apply_deliveries() == 0 {
                break;
            }
        }
    }

    pub(super) fn apply_deliveries(&mut self) -> usize {
        // Swap with a spare vector kept between calls: a fresh one per poll grew by
        // doubling and its free made glibc consolidate the heap (4 % of CPU, profiled).
        let mut batch = std::mem::take(&mut self.spare);
        std::mem::swap(&mut batch, &mut *lock(&self.producer.context().delivered));
        let n = batch.len();
        let now = Instant::now();
        if n > 0 && batch.iter().any(|d| matches!(d, Delivered::Ok(_))) {
            let mut refused = lock(&self.producer.context().refused);
            if let Some(was) = refused.take() {
                info!("kafka: the brokers take records again (after: {was})");
            }
        }
        for d in batch.drain(..) {
            match d {
                // An offset record (exactly_once): no slot, not a line.
                Delivered::Ok(txn::OFFSETS_OPAQUE) => {}
                Delivered::Ok(op) => {
                    self.stats.acked += 1;
                    let (slot, seq) = unpack(op);
                    let Some(s) = self.slots.get_mut(slot) else {
                        continue;
                    };
                    if let Some(Event::Recovered { refused, after }) = acked(s, op, seq, now) {
                        // The newer generations of the same file go to the same place:
                        // they follow, oldest first, without probes of their own.
                        let siblings = self.held_siblings(slot);
                        self.release(slot, refused, after);
                        for i in siblings {
                            if let Some(s) = self.slots.get_mut(i) {
                                s.set_flow(Flow::Open);
                            }
                            self.release(i, 0, after);
                        }
                    }
                }
                Delivered::Failed(e, record) => {
                    self.metrics.delivery_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = self.txn.as_mut() {
                        // A record of a transaction failed: it can only be aborted
                        // (done at once by the loop, see `housekeeping`).
                        t.doomed.get_or_insert_with(|| {
                            format!("a record was refused: {}", explain(&e))
                        });
                        continue;
                    }
                    let (slot, seq) = unpack(record.opaque);
                    let class = self.classify(&e);
                    if class == ErrorClass::Fatal {
                        self.fatal(&e);
                    }
                    let Some(s) = self.slots.get_mut(slot) else {
                        continue;
                    };
                    s.queued = s.queued.saturating_sub(1);
                    let was_probe = s.flow.probe_is(record.opaque);
                    let mut probe_alone = false;
                    if too_large(e.rdkafka_error_code()) {
                        // A probe sent alone (nothing else of its file in librdkafka)
                        // that is larger by itself than the topic takes: the line can
                        // never go. Anything else was refused for its batch's size:
                        // held, and the oldest record is tried alone at once.
                        let alone_probe = was_probe && s.flow.hold().is_some_and(|h| h.alone);
                        let topic = s.source.topic.clone();
                        // Not while shutting down: the lookup may take the admin timeout.
                        let limit = if self.deadline.is_some() {
                            None
                        } else {
                            self.topics.max_message_bytes(&topic)
                        };
                        match too_large_verdict(alone_probe, limit, record_size(&record)) {
                            TooLargeVerdict::Drop => {
                                self.drop_too_large(slot, seq, &record, &e);
                                continue;
                            }
                            // A refused alone probe waits an interval: it may be refused
                            // for good (the limit unknown, or batched with other files'
                            // records).
                            TooLargeVerdict::Hold => {}
                            TooLargeVerdict::ProbeAloneNow => probe_alone = true,
                        }
                        self.warn_batch_above(&topic, limit);
                    }
                    let Some(s) = self.slots.get_mut(slot) else {
                        continue;
                    };
                    keep_refused(s, *record, was_probe);
                    self.refused(slot, class, &explain(&e));
                    if probe_alone {
                        if let Some(s) = self.slots.get_mut(slot) {
                            s.flow.probe_alone_now(now);
                            self.next_probe_scan = now;
                        }
                    }
                }
            }
        }
        self.spare = batch;
        n
    }

    /// A refusal (credentials, TLS) is cleared by the next acknowledgement; an agent
    /// with nothing to send asks the brokers for metadata instead, which they answer
    /// only once they take the agent again (fixed on their side: a user or ACL added).
    pub(super) fn recheck_refusal(&mut self) {
        let refused = lock(&self.producer.context().refused).is_some();
        if !refused || self.in_flight() > 0 {
            return;
        }
        if self
            .producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok()
        {
            if let Some(was) = lock(&self.producer.context().refused).take() {
                info!("kafka: the brokers answer the agent again (after: {was})");
            }
        }
    }

    /// Checks the wanted topics when they changed; held sources of a topic that now
    /// exists are probed at once.
    pub(super) fn check_topics(&mut self) {
        let appeared = self.topics.check_if_changed(&self.producer);
        if appeared.is_empty() {
            return;
        }
        probe_now(&mut self.slots, &appeared, Instant::now());
    }

    /// Moves acknowledged watermarks into the registry and writes it to disk; frees the
    /// slots of sources their tailer has let go of.
    pub(super) fn checkpoint(&mut self) {
        // Exactly once: the commit moves the acknowledged offsets in, and they reach
        // the disk only once their transaction is committed (see `txn`).
        let committed = if self.txn.is_some() {
            self.commit_transaction()
        } else {
            self.checkpointer.apply(&self.registry, &mut self.slots);
            true
        };
        if committed {
            self.checkpointer.persist(
                &self.registry,
                &mut self.slots,
                &self.metrics,
                self.cfg.agent.registry_retention_hours,
            );
        }
        let (held, held_bytes) = self.held_counts();
        self.metrics.held_records.store(held, Ordering::Relaxed);
        self.metrics.held_bytes.store(held_bytes, Ordering::Relaxed);
        if !committed {
            // Exactly once, and the commit could not complete (Kafka away): what the
            // slots' trackers acknowledged is moved into the ledger only by a commit's
            // flush. A slot freed now would take those offsets with it, though its
            // records are in the open transaction: the file's entry would stay behind,
            // and the next start would send its tail again (committed twice).
            return;
        }
        let deleted_done = free_let_go(&mut self.slots);
        if !deleted_done.is_empty() {
            let mut reg = lock(&self.registry);
            for (file, generation) in deleted_done {
                reg.forget_deleted(file, generation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{chunk, source};
    use super::*;
    use crate::chunk::{Left, Source};
    use crate::stop::Stopper;

    fn hold(next_try: Instant) -> flow::Hold {
        flow::Hold {
            class: ErrorClass::Entry,
            reason: "r".into(),
            since: next_try,
            refused: 2,
            next_try,
            alone: false,
        }
    }

    fn add(slots: &mut Slots, id: u64, ino: u64) -> (u32, (Arc<Source>, Stopper)) {
        let (src, stop) = source(id, "/l/a.log", ino, "t");
        let i = slots.slot_for(&chunk(&src, 0, 1));
        (i, (src, stop))
    }

    fn rec(opaque: usize) -> Record {
        Record {
            opaque,
            key: None,
            payload: b"x".to_vec(),
            headers: None,
        }
    }

    #[test]
    fn an_ack_moves_the_watermark_over_the_acknowledged_prefix_and_counts_down_the_queue() {
        let t = Instant::now();
        let mut slots = Slots::default();
        let (i, _r) = add(&mut slots, 1, 1);
        let s = slots.get_mut(i).unwrap();
        let (a, b) = (s.tracker.push(0, 2), s.tracker.push(2, 4));
        s.queued = 2;
        assert_eq!(acked(s, pack(i, b), b as u32, t), None);
        assert_eq!(
            (s.queued, s.tracker.take_commit()),
            (1, None),
            "line 0 still out"
        );
        assert_eq!(acked(s, pack(i, a), a as u32, t), None);
        assert_eq!((s.queued, s.tracker.take_commit()), (0, Some(4)));
        assert_eq!(s.tracker.take_acked(), (2, 4));
        acked(s, pack(i, 9), 9, t);
        assert_eq!(s.queued, 0, "a late report never underflows");
    }

    #[test]
    fn only_the_probe_s_ack_ends_a_hold() {
        let t = Instant::now();
        let mut slots = Slots::default();
        let (i, _r) = add(&mut slots, 1, 1);
        let s = slots.get_mut(i).unwrap();
        let (a, b) = (s.tracker.push(0, 2), s.tracker.push(2, 4));
        s.queued = 2;
        s.set_flow(Flow::Probing(hold(t), pack(i, b)));
        assert_eq!(
            acked(s, pack(i, a), a as u32, t),
            None,
            "sent before the hold"
        );
        assert!(!s.flow.is_open());
        let later = t + Duration::from_secs(3);
        assert_eq!(
            acked(s, pack(i, b), b as u32, later),
            Some(Event::Recovered {
                refused: 2,
                after: Duration::from_secs(3)
            })
        );
        assert!(s.flow.is_open());
        assert_eq!(s.tracker.take_commit(), Some(4));
    }

    #[test]
    fn a_line_is_dropped_as_too_large_only_when_sent_alone_and_larger_than_the_topic_takes() {
        use TooLargeVerdict::*;
        assert_eq!(too_large_verdict(true, Some(100), 101), Drop);
        assert_eq!(
            too_large_verdict(true, Some(100), 100),
            Hold,
            "it fits: batched"
        );
        assert_eq!(too_large_verdict(true, None, 10_000), Hold, "limit unknown");
        assert_eq!(too_large_verdict(false, Some(100), 101), ProbeAloneNow);
        assert_eq!(too_large_verdict(false, None, 1), ProbeAloneNow);
    }

    #[test]
    fn a_refused_probe_stays_first_and_other_refused_records_queue_in_order() {
        let mut slots = Slots::default();
        let (i, _r) = add(&mut slots, 1, 1);
        let s = slots.get_mut(i).unwrap();
        keep_refused(s, rec(2), false);
        keep_refused(s, rec(3), false);
        keep_refused(s, rec(1), true);
        let order: Vec<usize> = s.failed.iter().map(|r| r.opaque).collect();
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn held_sources_of_a_topic_that_appeared_probe_at_once() {
        let t = Instant::now();
        let later = t + Duration::from_secs(60);
        let mut slots = Slots::default();
        let (a, _ra) = add(&mut slots, 1, 1);
        let (src, _rb) = source(2, "/l/b.log", 2, "other");
        let b = slots.slot_for(&chunk(&src, 0, 1));
        let (c, _rc) = add(&mut slots, 3, 3);
        slots.get_mut(a).unwrap().set_flow(Flow::Held(hold(later)));
        slots.get_mut(b).unwrap().set_flow(Flow::Held(hold(later)));
        probe_now(&mut slots, &["t".to_owned()], t);
        assert!(slots.get(a).unwrap().flow.probe_due(t));
        assert!(!slots.get(b).unwrap().flow.probe_due(t), "another topic");
        assert!(
            slots.get(c).unwrap().flow.is_open(),
            "an open source stays open"
        );
    }

    #[test]
    fn a_slot_is_freed_once_its_reader_let_go_and_librdkafka_holds_none_of_it() {
        let mut slots = Slots::default();
        let (i, reader) = add(&mut slots, 1, 1);
        assert!(free_let_go(&mut slots).is_empty());
        assert!(slots.get(i).is_some(), "its reader still reads");
        drop(reader);
        slots.get_mut(i).unwrap().queued = 1;
        free_let_go(&mut slots);
        assert!(slots.get(i).is_some(), "a report to come");
        slots.get_mut(i).unwrap().queued = 0;
        assert!(
            free_let_go(&mut slots).is_empty(),
            "not deleted: nothing to forget"
        );
        assert!(slots.get(i).is_none());
    }

    #[test]
    fn held_records_nobody_reads_again_are_kept_and_the_rest_dropped_for_the_new_reader() {
        let t = Instant::now();
        let mut slots = Slots::default();
        // Deleted after its entry was changed: the held record is the last copy.
        let (kept, (src, stop)) = add(&mut slots, 1, 1);
        src.set_left(Left::Deleted);
        stop.stop();
        drop(src);
        let s = slots.get_mut(kept).unwrap();
        s.set_flow(Flow::Held(hold(t)));
        s.failed.push_back(rec(pack(kept, 0)));
        // Entry changed, file still there: read again by the new reader.
        let (dropped, (src, stop)) = add(&mut slots, 2, 2);
        src.set_left(Left::Reachable);
        src.metrics.set_refusal(Some("refused".into()));
        stop.stop();
        let metrics = src.metrics.clone();
        drop(src);
        let s = slots.get_mut(dropped).unwrap();
        s.set_flow(Flow::Held(hold(t)));
        s.failed.push_back(rec(pack(dropped, 0)));
        assert!(free_let_go(&mut slots).is_empty());
        let s = slots.get(kept).unwrap();
        assert!(s.orphaned, "said once, as the last copy");
        assert_eq!(s.failed.len(), 1);
        assert!(slots.get(dropped).is_none());
        assert_eq!(
            metrics.refusal(),
            None,
            "no longer refused: nothing held of it"
        );
    }

    #[test]
    fn a_left_file_held_without_a_stop_is_kept_but_not_called_orphaned() {
        let t = Instant::now();
        let mut slots = Slots::default();
        // A rotation read to its end: its reader let go without being stopped.
        let (i, (src, _stop)) = add(&mut slots, 1, 1);
        src.set_left(Left::Reachable);
        drop(src);
        let s = slots.get_mut(i).unwrap();
        s.set_flow(Flow::Held(hold(t)));
        s.failed.push_back(rec(pack(i, 0)));
        free_let_go(&mut slots);
        let s = slots.get(i).unwrap();
        assert!(!s.orphaned);
        assert_eq!(s.failed.len(), 1);
    }

    #[test]
    fn a_deleted_file_is_forgotten_once_no_generation_of_it_is_left() {
        let mut slots = Slots::default();
        // Two generations of one file (a truncation), both deleted and done.
        let (old, (src_old, _s1)) = add(&mut slots, 1, 7);
        let (new, (src_new, _s2)) = add(&mut slots, 2, 7);
        src_old.set_left(Left::Deleted);
        src_new.set_left(Left::Deleted);
        drop(src_old);
        assert!(
            free_let_go(&mut slots).is_empty(),
            "the newer generation is still read"
        );
        assert!(slots.get(old).is_none());
        drop(src_new);
        assert_eq!(free_let_go(&mut slots), [(FileId { dev: 1, ino: 7 }, 2)]);
        assert!(slots.get(new).is_none());
        // A line still out: freed (nothing queued) but not forgotten.
        let (i, (src, _s3)) = add(&mut slots, 3, 8);
        slots.get_mut(i).unwrap().tracker.push(0, 2);
        src.set_left(Left::Deleted);
        drop(src);
        assert!(free_let_go(&mut slots).is_empty());
        assert!(slots.get(i).is_none());
    }
}
