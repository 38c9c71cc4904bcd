//! Held records and probes: a source whose records a destination refused is held (in
//! memory while bounded, else re-read from its file), probed at intervals with its
//! oldest record, and released when a probe is acknowledged; error classes decide
//! between retry, hold, drop-and-count (too large) and exit. Decisions in [`super::flow`].

use super::*;

impl ProducerLoop {
    /// Applies a refusal to a slot's flow and says so once per change of state.
    pub(super) fn refused(&mut self, slot: u32, class: ErrorClass, reason: &str) {
        self.stats.refused += 1;
        self.held_any = true;
        let sibling_held = !self.held_siblings(slot).is_empty();
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.source
            .metrics
            .records_refused
            .fetch_add(1, Ordering::Relaxed);
        let was_open = s.flow.is_open();
        let ev = s
            .flow
            .refuse(class, reason, Instant::now(), self.entry_retry);
        s.sync_pause();
        let src = &s.source;
        let partition = match src.route {
            crate::chunk::Route::Partition(p) => format!(" partition {p}"),
            _ => String::new(),
        };
        let what = format!(
            "{}: Kafka refuses records for topic {}{partition}: {reason}",
            src.path, src.topic
        );
        match (&ev, class) {
            // Another generation of the file (before a rotation) is held and was logged.
            (Some(Event::Held), _) if sibling_held => {}
            (Some(Event::Held | Event::ReasonChanged), ErrorClass::Transient) => warn!(
                "{what}; holding the file and sending again in {:?}",
                flow::TRANSIENT_RETRY
            ),
            (Some(Event::Held | Event::ReasonChanged), _) => error!(
                "{what}. The file is held (nothing is lost) and retried every {:?}; fix the topic or the entry (a config change applies at once)",
                self.entry_retry
            ),
            _ => {}
        }
        if was_open || ev.is_some() {
            src.metrics.set_refusal(Some(what));
        }
    }

    /// The class of a produce error; `Fatal` only when librdkafka says the producer
    /// instance is unusable (a broker answering `ProducerFenced` for a re-created topic
    /// is not that).
    pub(super) fn classify(&self, e: &KafkaError) -> ErrorClass {
        match classify(e.rdkafka_error_code()) {
            ErrorClass::Fatal if self.producer.client().fatal_error().is_none() => {
                ErrorClass::Transient
            }
            c => c,
        }
    }

    /// librdkafka's producer is unusable: write what was acknowledged and exit 1, so the
    /// service manager restarts the agent (it reads on from the acknowledged offsets).
    pub(super) fn fatal(&mut self, e: &KafkaError) -> ! {
        if self.txn.is_some() {
            if txn::fenced(e) {
                self.exit_fenced(e);
            }
            self.abort_and_restart(&format!("the producer failed fatally: {e}"));
        }
        let why = self
            .producer
            .client()
            .fatal_error()
            .map(|(_, s)| s)
            .unwrap_or_else(|| e.to_string());
        error!("Kafka producer failed fatally ({why}); writing the checkpoint and exiting so the service manager restarts the agent");
        self.serve();
        self.checkpoint();
        std::process::exit(1);
    }

    /// Held slots of the same path and topic as `slot` (other generations of its file:
    /// rotated, truncated), oldest first; `slot` itself excluded.
    pub(super) fn held_siblings(&self, slot: u32) -> Vec<u32> {
        let Some(me) = self.slots.get(slot) else {
            return Vec::new();
        };
        let mut v: Vec<(u64, u32)> = self
            .slots
            .indices()
            .into_iter()
            .filter(|&i| i != slot)
            .filter_map(|i| self.slots.get(i).map(|s| (i, s)))
            .filter(|(_, s)| {
                !s.flow.is_open()
                    && s.source.path == me.source.path
                    && s.source.topic == me.source.topic
            })
            .map(|(i, s)| (s.source.id, i))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, i)| i).collect()
    }

    /// Whether a slot's records will be read again by a new reader: its tailer was
    /// stopped (the entry changed) and the file was still there when it let go (under
    /// its path, or the name the ledger last saw it by: the tailer looked, see
    /// [`crate::chunk::Left`]; this thread never stats a file).
    pub(super) fn rereadable(&self, slot: u32) -> bool {
        let Some(s) = self.slots.get(slot) else {
            return true;
        };
        // Left without a stop (rotation done, copy recovered, truncation): no reader
        // comes back to it, whatever is on disk.
        s.source.reader_stop.is_stopped() && s.source.left() == Left::Reachable
    }

    /// Sends a probe for every held slot whose retry is due.
    pub(super) fn probe_due(&mut self) {
        let now = Instant::now();
        // The scan costs a pass over every slot: only while something is held, and at
        // most every 50 ms (this runs once per loop, up to hundreds of times a second).
        // Not after a shutdown began: a probe or a metadata request to a hung broker
        // would eat into the flush's time.
        if !self.held_any || now < self.next_probe_scan || self.deadline.is_some() {
            return;
        }
        self.next_probe_scan = now + Duration::from_millis(50);
        // One metadata request per missing topic per round, however many files name it.
        let mut looked: std::collections::HashMap<String, TopicState> = Default::default();
        for slot in self.slots.indices() {
            let Some(s) = self.slots.get(slot) else {
                continue;
            };
            if !s.flow.probe_due(now) {
                continue;
            }
            // A probe that must go alone waits until nothing else of its file is in
            // librdkafka (those reports come first), and until no other file's alone
            // probe for the same topic is out (librdkafka would batch them together).
            if s.flow.hold().is_some_and(|h| h.alone) {
                let topic = &s.source.topic;
                let other_out = self.slots.iter().any(|o| {
                    o.source.topic == *topic && matches!(&o.flow, Flow::Probing(h, _) if h.alone)
                });
                if s.queued > 0 || other_out {
                    continue;
                }
            }
            // Its reader let go and a new one reads the file again: no probe, the slot
            // is dropped at the next checkpoint (a probe would only send a line twice).
            if s.reader_gone() && self.rereadable(slot) {
                continue;
            }
            // One probe per file: its oldest held generation's, so that on release the
            // older lines go first (file order across a rotation).
            let id = s.source.id;
            let older = self
                .held_siblings(slot)
                .iter()
                .any(|&i| self.slots.get(i).is_some_and(|o| o.source.id < id));
            if older {
                if let Some(s) = self.slots.get_mut(slot) {
                    s.flow.postpone(now, self.entry_retry);
                }
                continue;
            }
            let topic = s.source.topic.clone();
            if self.topics.is_missing(&topic) {
                let state = match looked.get(&topic) {
                    Some(&st) => st,
                    // One request per scan: a hung broker blocks each for its timeout,
                    // and a shutdown is noticed between scans.
                    None if !looked.is_empty() => TopicState::Unknown,
                    None => {
                        let st = self.topics.recheck(&topic, &self.producer);
                        looked.insert(topic.clone(), st);
                        st
                    }
                };
                match state {
                    TopicState::Exists(_) => {}
                    _ => {
                        if let Some(s) = self.slots.get_mut(slot) {
                            s.flow.postpone(now, self.entry_retry);
                        }
                        continue;
                    }
                }
            }
            self.probe(slot);
        }
        self.held_any = self.slots.iter().any(|s| !s.flow.is_open());
    }

    /// Sends the oldest held record of a slot as its probe.
    pub(super) fn probe(&mut self, slot: u32) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if let Some(r) = s.failed.pop_front() {
            let headers = r.headers.clone();
            match self.send_one(slot, r.opaque, &r.payload, headers) {
                Sent::Queued => self.probing(slot, r.opaque),
                Sent::Refused => {
                    if let Some(s) = self.slots.get_mut(slot) {
                        s.failed.push_front(r);
                    }
                }
                Sent::Abandoned => {}
            }
            return;
        }
        let Some(mut h) = s.held.pop_front() else {
            // Nothing held (the refused records were all in librdkafka): open up.
            self.open(slot);
            return;
        };
        // Filtered lines are never sent (and are done already): the probe is the first
        // line to send. A chunk with none left is finished; probe with the next one.
        while h.from < h.chunk.lines.len() && h.chunk.is_filtered(h.from) {
            h.from += 1;
            h.seq += 1;
        }
        if h.from >= h.chunk.lines.len() {
            self.probe(slot);
            return;
        }
        let opaque = pack(slot, h.seq);
        let headers = record_headers(
            &self.hostname.clone(),
            &h.chunk.source.path,
            h.chunk.line_offset(h.from),
        );
        let sent = self.send_one(slot, opaque, h.chunk.payload(h.from), Some(headers));
        if matches!(sent, Sent::Queued | Sent::Abandoned) {
            h.from += 1;
            h.seq += 1;
        }
        if matches!(sent, Sent::Queued) {
            self.probing(slot, opaque);
        }
        if h.from < h.chunk.lines.len() {
            if let Some(s) = self.slots.get_mut(slot) {
                s.held.push_front(h);
            }
        }
    }

    pub(super) fn probing(&mut self, slot: u32, opaque: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.flow.probing(opaque);
        }
    }

    /// Opens a slot's flow without a probe (nothing was left to probe with).
    pub(super) fn open(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.set_flow(Flow::Open);
            s.source.metrics.set_refusal(None);
        }
    }

    /// The probe went through: send everything held, oldest first, and let the tailer
    /// read on.
    pub(super) fn release(&mut self, slot: u32, refused: u64, after: Duration) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.sync_pause();
        s.source.metrics.set_refusal(None);
        if s.reader_gone() && self.rereadable(slot) {
            // The entry was changed while the probe was out: what is held goes where the
            // new entry says, read again by its reader (see `checkpoint`).
            return;
        }
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if refused > 0 {
            info!(
            "{}: Kafka takes records for topic {} again, after {refused} refusals in {} s; sending what was held",
            s.source.path,
            s.source.topic,
            after.as_secs()
        );
        }
        let failed = std::mem::take(&mut s.failed);
        let held = std::mem::take(&mut s.held);
        let mut failed = failed.into_iter();
        while let Some(r) = failed.next() {
            let headers = r.headers.clone();
            if let Sent::Refused = self.send_one(slot, r.opaque, &r.payload, headers) {
                // Held again: keep this record and the rest, in order.
                if let Some(s) = self.slots.get_mut(slot) {
                    s.failed.push_back(r);
                    s.failed.extend(failed);
                    s.held.extend(held);
                }
                return;
            }
        }
        for h in held {
            self.send_lines(slot, h);
        }
    }

    /// A probe sent alone was refused as too large and is larger than the topic's
    /// `max.message.bytes`: the line cannot go to this topic at all. It is
    /// counted lost (`too_large`) and marked done, so that the file goes on; the next
    /// held record is probed at once.
    pub(super) fn drop_too_large(&mut self, slot: u32, seq: u32, record: &Record, e: &KafkaError) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let bytes = record.payload.len() as u64;
        // Logged for the file's first such line; the counter says the rest.
        let first = s.source.metrics.bytes_lost(Loss::TooLarge) == 0;
        s.source.metrics.lose(Loss::TooLarge, bytes);
        s.tracker.ack(seq);
        if first {
            error!(
                "{}: a line of {bytes} bytes is larger than topic {} takes ({e}); dropped and counted as lost (reason too_large), the file goes on; raise the topic's max.message.bytes or lower agent.max_line_bytes (further such lines of this file are counted, not logged)",
                s.source.path, s.source.topic
            );
        }
        let now = Instant::now();
        // Back to held, with the next probe (alone) due now: the rest may fit.
        s.set_flow(Flow::Held(flow::Hold {
            class: ErrorClass::Entry,
            reason: "a line too large for the topic".into(),
            since: now,
            refused: 0,
            next_try: now,
            alone: true,
        }));
        self.held_any = true;
        self.next_probe_scan = now;
    }

    /// Says once per topic that batches may be larger than the topic takes: then
    /// records that fit go one probe at a time, slowly.
    pub(super) fn warn_batch_above(&mut self, topic: &str, limit: Option<u64>) {
        let batch = self.cfg.kafka.batch_max_bytes as u64;
        if let Some(l) = limit.filter(|&l| l < batch) {
            if self.batch_warned.insert(topic.to_owned()) {
                warn!(
                    "topic {topic} takes record batches of at most {l} bytes (max.message.bytes), and kafka.batch_max_bytes is {batch}: its records go one at a time after each refusal; set kafka.batch_max_bytes below {l}"
                );
            }
        }
    }
}
