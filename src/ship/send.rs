//! Sending: a chunk from the channel becomes records handed to librdkafka, in file
//! order per source; a record librdkafka cannot take now waits (queue full).

use super::*;

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
        let mut seq = 0;
        for i in 0..chunk.lines.len() {
            let (at, commit) = (chunk.line_offset(i), chunk.commit_offset(i));
            let q = if chunk.is_filtered(i) {
                s.tracker.push_filtered(at, commit)
            } else {
                s.tracker.push(at, commit)
            };
            if i == 0 {
                seq = q;
            }
        }
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
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
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
