//! Sending: a chunk from the channel becomes records handed to librdkafka, in file
//! order per source; a record librdkafka cannot take now waits (queue full).
//!
//! Its decisions as pure functions: [`register`] (a chunk's lines into the source's
//! watermark, filtered ones done at once), [`record`] (topic, key, partition, headers
//! and delivery id of a record) and [`waits_out`] (which refusal at `send` is waited
//! out rather than applied to the source).

use super::*;

use watermark::Tracker;

/// Registers every line of `chunk` with its source's `tracker` (a filtered line is done
/// as soon as the lines before it are); returns the sequence number of its first line.
pub(super) fn register(tracker: &mut Tracker, chunk: &Chunk) -> u64 {
    let mut seq = 0;
    for i in 0..chunk.lines.len() {
        let (at, commit) = (chunk.line_offset(i), chunk.commit_offset(i));
        let q = if chunk.is_filtered(i) {
            tracker.push_filtered(at, commit)
        } else {
            tracker.push(at, commit)
        };
        if i == 0 {
            seq = q;
        }
    }
    seq
}

/// The record for one line (or a held record) of `src`: to its topic, keyed if the
/// entry is, to `partition` if one was picked (else librdkafka picks).
pub(super) fn record<'a>(
    src: &'a crate::chunk::Source,
    opaque: usize,
    payload: &'a [u8],
    headers: Option<OwnedHeaders>,
    partition: Option<i32>,
) -> BaseRecord<'a, [u8], [u8], usize> {
    let mut rec = BaseRecord::with_opaque_to(&src.topic, opaque).payload(payload);
    if let Some(h) = headers {
        rec = rec.headers(h);
    }
    if let Some(k) = &src.key {
        rec = rec.key(&k[..]);
    }
    if let Some(p) = partition {
        rec = rec.partition(p);
    }
    rec
}

/// Whether a refusal at `send` is librdkafka's full queue: waited out (reports served
/// meanwhile), never a refusal of the source.
pub(super) fn waits_out(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}

impl ProducerLoop {
    /// Registers a chunk's lines with its slot's tracker and sends them (or holds them
    /// while the slot is held).
    pub(super) fn send_chunk(&mut self, chunk: Chunk) {
        let slot = self.slots.slot_for(&chunk);
        self.topics.first_look(&chunk.source.topic, &self.producer);
        let missing = self.topics.is_missing(&chunk.source.topic);
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let seq = register(&mut s.tracker, &chunk);
        if missing && s.flow.is_open() {
            let reason = format!(
                "topic {} does not exist (create it, or set kafka.create_topics)",
                chunk.source.topic
            );
            self.refused(slot, ErrorClass::Entry, &reason);
        }
        self.send_lines(
            slot,
            HeldLines {
                chunk,
                from: 0,
                seq,
            },
        );
    }

    /// Sends lines `h.from..` of a chunk while the slot's flow is open; holds the rest.
    pub(super) fn send_lines(&mut self, slot: u32, mut h: HeldLines) {
        let host = self.hostname.clone();
        while h.from < h.chunk.lines.len() {
            let open = self.slots.get(slot).is_some_and(|s| s.flow.is_open());
            if !open {
                if let Some(s) = self.slots.get_mut(slot) {
                    s.held.push_back(h);
                }
                return;
            }
            if h.chunk.is_filtered(h.from) {
                // Registered as done already (see `send_chunk`): nothing to send.
                h.from += 1;
                h.seq += 1;
                continue;
            }
            let opaque = pack(slot, h.seq);
            let headers = record_headers(&host, &h.chunk.source.path, h.chunk.line_offset(h.from));
            let payload = h.chunk.payload(h.from);
            match self.send_one(slot, opaque, payload, Some(headers)) {
                Sent::Queued | Sent::Abandoned => {
                    h.from += 1;
                    h.seq += 1;
                }
                // The flow is held now: the loop holds this line and the rest.
                Sent::Refused => {}
            }
        }
    }

    /// Hands one record to librdkafka, waiting out a full queue. A refusal is applied to
    /// the slot's flow.
    pub(super) fn send_one(
        &mut self,
        slot: u32,
        opaque: usize,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Sent {
        let Some(src) = self.slots.get(slot).map(|s| s.source.clone()) else {
            return Sent::Abandoned;
        };
        let partition = self.partitioner.pick(&src, &self.producer);
        let mut rec = record(&src, opaque, payload, headers, partition);
        loop {
            match self.producer.send(rec) {
                Ok(()) => {
                    self.stats.sent += 1;
                    if let Some(t) = self.txn.as_mut() {
                        t.records += 1;
                    }
                    if let Some(s) = self.slots.get_mut(slot) {
                        s.queued += 1;
                    }
                    return Sent::Queued;
                }
                Err((e, r)) if waits_out(&e) => {
                    if self.shutdown_due() {
                        return Sent::Abandoned;
                    }
                    rec = r;
                    // Not `poll(5 ms)`: rdkafka 0.38 spins through the last millisecond
                    // of a timed poll (14 % of the agent's CPU at full speed, profiled).
                    // Serve what is ready; if nothing was, sleep briefly.
                    let acked = self.stats.acked;
                    self.serve();
                    if self.stats.acked == acked {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    self.housekeeping();
                }
                Err((e, _)) => {
                    let class = self.classify(&e);
                    if class == ErrorClass::Fatal {
                        self.fatal(&e);
                    }
                    self.refused(slot, class, &explain(&e));
                    return Sent::Refused;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{chunk, shaped_chunk, source};
    use super::*;

    #[test]
    fn a_chunk_s_lines_get_consecutive_sequence_numbers_from_the_tracker_s_next() {
        let (src, _stop) = source(1, "/l/a.log", 7, "t");
        let mut t = Tracker::new();
        assert_eq!(register(&mut t, &chunk(&src, 0, 3)), 0);
        assert_eq!(register(&mut t, &chunk(&src, 6, 2)), 3);
        assert_eq!(t.in_flight(), 5);
        assert!(t.ack(4));
        assert_eq!(t.take_commit(), None, "lines 0..4 still out");
        for q in 0..4 {
            t.ack(q);
        }
        assert_eq!(t.take_commit(), Some(10), "the end of the second chunk");
    }

    #[test]
    fn filtered_lines_are_registered_done_and_move_the_watermark_over_them() {
        let (src, _stop) = source(1, "/l/a.log", 7, "t");
        let mut t = Tracker::new();
        // Lines at 100, 102, 104, 106: the first and last filtered out.
        let seq = register(
            &mut t,
            &shaped_chunk(&src, 100, &[true, false, false, true]),
        );
        assert_eq!(seq, 0, "the first line's number, filtered or not");
        assert_eq!(
            t.take_commit(),
            Some(102),
            "the filtered first line is done"
        );
        assert_eq!(
            t.in_flight(),
            3,
            "two lines out, the filtered last one behind them"
        );
        t.ack(2);
        assert_eq!(t.take_commit(), None);
        t.ack(1);
        assert_eq!(
            t.take_commit(),
            Some(108),
            "over the filtered last line too"
        );
        assert_eq!(
            t.take_acked().0,
            2,
            "filtered lines are not counted as lines"
        );
    }

    #[test]
    fn a_record_goes_to_the_source_s_topic_keyed_and_partitioned_as_its_entry_says() {
        let (src, _stop) = source(1, "/l/a.log", 7, "logs");
        {
            let r = record(&src, 42, b"line", None, None);
            assert_eq!(r.topic, "logs");
            assert_eq!(r.delivery_opaque, 42);
            assert_eq!(r.payload, Some(&b"line"[..]));
            assert_eq!((r.key, r.partition), (None, None));
            assert!(r.headers.is_none());
        }
        let mut keyed = Arc::into_inner(src).unwrap();
        keyed.key = Some(b"host-1".to_vec());
        let h = record_headers("h", "/l/a.log", 0);
        let r = record(&keyed, 43, b"line", Some(h), Some(2));
        assert_eq!(r.key, Some(&b"host-1"[..]));
        assert_eq!(r.partition, Some(2));
        assert!(r.headers.is_some());
    }

    #[test]
    fn only_a_full_queue_is_waited_out() {
        use RDKafkaErrorCode as C;
        assert!(waits_out(&KafkaError::MessageProduction(C::QueueFull)));
        for c in [C::UnknownPartition, C::MessageSizeTooLarge, C::Fatal] {
            assert!(!waits_out(&KafkaError::MessageProduction(c)), "{c:?}");
        }
        assert!(!waits_out(&KafkaError::Canceled));
    }
}
