//! Held records and probes: a source whose records a destination refused is held (in
//! memory while bounded, else re-read from its file), probed at intervals with its
//! oldest record, and released when a probe is acknowledged; error classes decide
//! between retry, hold, drop-and-count (too large) and exit. Decisions in [`super::flow`],
//! and here as pure functions of plain values and the slot table: [`effective_class`]
//! (fatal only when librdkafka says so), [`notice`] (what a refusal is logged as),
//! [`held_siblings`] and [`rereadable`], [`probe_verdict`] (whether a held source's probe
//! goes now), [`skip_filtered`] (the probe's line), [`give_up_too_large`] and
//! [`batch_above`].

use super::*;

use slots::Slot;

/// The class a produce error is acted on as: `class` as [`classify`] sorts its code,
/// except that `Fatal` stays fatal only when librdkafka says the producer instance is
/// unusable (`producer_fatal`): a broker answering `ProducerFenced` for a re-created
/// topic is not that, and is retried as transient.
pub(super) fn effective_class(class: ErrorClass, producer_fatal: bool) -> ErrorClass {
    match class {
        ErrorClass::Fatal if !producer_fatal => ErrorClass::Transient,
        c => c,
    }
}

/// How a refusal that moved a source's flow (`ev`) is logged: not at all when another
/// generation of the file is held already (it was logged), a warning for a transient
/// one, an error otherwise; `None` also when nothing changed (one more refusal).
pub(super) fn notice(
    ev: Option<&Event>,
    class: ErrorClass,
    sibling_held: bool,
) -> Option<log::Level> {
    use log::Level;
    match (ev?, class) {
        (Event::Held, _) if sibling_held => None,
        (Event::Held | Event::ReasonChanged, ErrorClass::Transient) => Some(Level::Warn),
        (Event::Held | Event::ReasonChanged, _) => Some(Level::Error),
        (Event::Recovered { .. }, _) => None,
    }
}

/// Held slots of the same path and topic as `slot` (other generations of its file:
/// rotated, truncated), oldest first; `slot` itself excluded.
pub(super) fn held_siblings(slots: &Slots, slot: u32) -> Vec<u32> {
    let Some(me) = slots.get(slot) else {
        return Vec::new();
    };
    let mut v: Vec<(u64, u32)> = slots
        .indices()
        .into_iter()
        .filter(|&i| i != slot)
        .filter_map(|i| slots.get(i).map(|s| (i, s)))
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

/// Whether a slot's records will be read again by a new reader: its tailer was stopped
/// (the entry changed) and the file was still there when it let go (under its path, or
/// the name the ledger last saw it by: the tailer looked, see [`crate::chunk::Left`];
/// this thread never stats a file). A free slot: true (nothing of it is here).
pub(super) fn rereadable(slots: &Slots, slot: u32) -> bool {
    let Some(s) = slots.get(slot) else {
        return true;
    };
    // Left without a stop (rotation done, copy recovered, truncation): no reader comes
    // back to it, whatever is on disk.
    s.source.reader_stop.is_stopped() && s.source.left() == Left::Reachable
}

/// Whether a held slot's probe goes now (before the look at a missing topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProbeVerdict {
    /// Not now: not due, or waiting for reports (an alone probe), or never (a new
    /// reader reads its records again; the slot goes at the next checkpoint).
    Wait,
    /// An older generation of the file is held: it probes for both; this one waits
    /// another interval.
    Postpone,
    /// Send the probe (once its topic is known to exist).
    Go,
}

/// [`ProbeVerdict`] for `slot` at `now`.
pub(super) fn probe_verdict(slots: &Slots, slot: u32, now: Instant) -> ProbeVerdict {
    let Some(s) = slots.get(slot) else {
        return ProbeVerdict::Wait;
    };
    if !s.flow.probe_due(now) {
        return ProbeVerdict::Wait;
    }
    // A probe that must go alone waits until nothing else of its file is in librdkafka
    // (those reports come first), and until no other file's alone probe for the same
    // topic is out (librdkafka would batch them together).
    if s.flow.hold().is_some_and(|h| h.alone) {
        let topic = &s.source.topic;
        let alone_out = |o: &Slot| matches!(&o.flow, Flow::Probing(h, _) if h.alone);
        let other_out = slots
            .iter()
            .any(|o| o.source.topic == *topic && alone_out(o));
        if s.queued > 0 || other_out {
            return ProbeVerdict::Wait;
        }
    }
    // Its reader let go and a new one reads the file again: no probe, the slot is
    // dropped at the next checkpoint (a probe would only send a line twice).
    if s.reader_gone() && rereadable(slots, slot) {
        return ProbeVerdict::Wait;
    }
    // One probe per file: its oldest held generation's, so that on release the older
    // lines go first (file order across a rotation).
    let id = s.source.id;
    let older = held_siblings(slots, slot)
        .iter()
        .any(|&i| slots.get(i).is_some_and(|o| o.source.id < id));
    if older {
        ProbeVerdict::Postpone
    } else {
        ProbeVerdict::Go
    }
}

/// Moves `h` past its filtered lines (never sent, done already): true if a line to send
/// is left, which is then line `h.from`.
pub(super) fn skip_filtered(h: &mut HeldLines) -> bool {
    while h.from < h.chunk.lines.len() && h.chunk.is_filtered(h.from) {
        h.from += 1;
        h.seq += 1;
    }
    h.from < h.chunk.lines.len()
}

/// Gives up line `seq` of a slot (`bytes` long) as too large for its topic: counted
/// lost (`too_large`), marked done in the watermark, and the slot held again with its
/// next probe going alone at `now` (the rest may fit). True if it is the file's first
/// such line (logged; the rest are counted only).
pub(super) fn give_up_too_large(s: &mut Slot, seq: u32, bytes: u64, now: Instant) -> bool {
    let first = s.source.metrics.bytes_lost(Loss::TooLarge) == 0;
    s.source.metrics.lose(Loss::TooLarge, bytes);
    // Past it in the file, but not acknowledged: its bytes are counted lost, not shipped.
    s.tracker.give_up(seq);
    s.set_flow(Flow::Held(flow::Hold {
        class: ErrorClass::Entry,
        reason: "a line too large for the topic".into(),
        since: now,
        refused: 0,
        next_try: now,
        alone: true,
    }));
    first
}

/// The topic's `max.message.bytes` when it is below `kafka.batch_max_bytes` (`batch`):
/// batches may then be larger than the topic takes.
pub(super) fn batch_above(limit: Option<u64>, batch: u64) -> Option<u64> {
    limit.filter(|&l| l < batch)
}

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
        // Another generation of the file (before a rotation) held is logged already.
        match notice(ev.as_ref(), class, sibling_held) {
            Some(log::Level::Warn) => warn!(
                "{what}; holding the file and sending again in {:?}",
                flow::TRANSIENT_RETRY
            ),
            Some(_) => error!(
                "{what}. The file is held (nothing is lost) and retried every {:?}; fix the topic or the entry (a config change applies at once)",
                self.entry_retry
            ),
            None => {}
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
            ErrorClass::Fatal => effective_class(
                ErrorClass::Fatal,
                self.producer.client().fatal_error().is_some(),
            ),
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
        held_siblings(&self.slots, slot)
    }

    /// Whether a slot's records will be read again by a new reader: its tailer was
    /// stopped (the entry changed) and the file was still there when it let go (under
    /// its path, or the name the ledger last saw it by: the tailer looked, see
    /// [`crate::chunk::Left`]; this thread never stats a file).
    pub(super) fn rereadable(&self, slot: u32) -> bool {
        rereadable(&self.slots, slot)
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
            match probe_verdict(&self.slots, slot, now) {
                ProbeVerdict::Wait => continue,
                ProbeVerdict::Postpone => {
                    if let Some(s) = self.slots.get_mut(slot) {
                        s.flow.postpone(now, self.entry_retry);
                    }
                    continue;
                }
                ProbeVerdict::Go => {}
            }
            let Some(topic) = self.slots.get(slot).map(|s| s.source.topic.clone()) else {
                continue;
            };
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
        if !skip_filtered(&mut h) {
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
        let now = Instant::now();
        // Back to held, with the next probe (alone) due now: the rest may fit. Logged
        // for the file's first such line; the counter says the rest.
        if give_up_too_large(s, seq, bytes, now) {
            error!(
                "{}: a line of {bytes} bytes is larger than topic {} takes ({e}); dropped and counted as lost (reason too_large), the file goes on; raise the topic's max.message.bytes or lower agent.max_line_bytes (further such lines of this file are counted, not logged)",
                s.source.path, s.source.topic
            );
        }
        self.held_any = true;
        self.next_probe_scan = now;
    }

    /// Says once per topic that batches may be larger than the topic takes: then
    /// records that fit go one probe at a time, slowly.
    pub(super) fn warn_batch_above(&mut self, topic: &str, limit: Option<u64>) {
        let batch = self.cfg.kafka.batch_max_bytes as u64;
        if let Some(l) = batch_above(limit, batch) {
            if self.batch_warned.insert(topic.to_owned()) {
                warn!(
                    "topic {topic} takes record batches of at most {l} bytes (max.message.bytes), and kafka.batch_max_bytes is {batch}: its records go one at a time after each refusal; set kafka.batch_max_bytes below {l}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{chunk, shaped_chunk, source};
    use super::*;
    use crate::chunk::Source;
    use crate::stop::Stopper;

    fn hold(next_try: Instant, alone: bool) -> flow::Hold {
        flow::Hold {
            class: ErrorClass::Entry,
            reason: "r".into(),
            since: next_try,
            refused: 1,
            next_try,
            alone,
        }
    }

    /// A slot for source `id` of `path` and `topic`; its reader keeps the source (and
    /// its stop) until the returned pair is dropped.
    fn add(slots: &mut Slots, id: u64, path: &str, topic: &str) -> (u32, (Arc<Source>, Stopper)) {
        let (src, stop) = source(id, path, id, topic);
        let i = slots.slot_for(&chunk(&src, 0, 1));
        (i, (src, stop))
    }

    fn set(slots: &mut Slots, i: u32, flow: Flow) {
        slots.get_mut(i).unwrap().set_flow(flow);
    }

    #[test]
    fn fatal_is_fatal_only_when_librdkafka_says_the_producer_is_unusable() {
        use ErrorClass::*;
        assert_eq!(effective_class(Fatal, true), Fatal);
        assert_eq!(effective_class(Fatal, false), Transient);
        assert_eq!(effective_class(Entry, false), Entry);
        assert_eq!(effective_class(Entry, true), Entry);
        assert_eq!(effective_class(Transient, true), Transient);
        // A broker's ProducerFenced for a re-created topic, with the producer fine.
        let fenced = classify(Some(RDKafkaErrorCode::ProducerFenced));
        assert_eq!(effective_class(fenced, false), Transient);
    }

    #[test]
    fn a_refusal_is_logged_once_per_change_and_once_per_file() {
        use log::Level;
        use ErrorClass::*;
        let held = Some(&Event::Held);
        let changed = Some(&Event::ReasonChanged);
        assert_eq!(notice(held, Transient, false), Some(Level::Warn));
        assert_eq!(notice(held, Entry, false), Some(Level::Error));
        assert_eq!(notice(changed, Entry, false), Some(Level::Error));
        assert_eq!(
            notice(held, Entry, true),
            None,
            "its older generation said it"
        );
        assert_eq!(
            notice(changed, Transient, true),
            Some(Level::Warn),
            "a new reason is news even with a sibling held"
        );
        assert_eq!(notice(None, Entry, false), None, "one more refusal");
    }

    #[test]
    fn held_siblings_are_the_other_held_generations_of_the_same_file_and_topic_oldest_first() {
        let mut slots = Slots::default();
        let t = Instant::now();
        let (a, _ra) = add(&mut slots, 5, "/l/a.log", "t");
        let (b, _rb) = add(&mut slots, 3, "/l/a.log", "t");
        let (c, _rc) = add(&mut slots, 4, "/l/a.log", "t");
        let (d, _rd) = add(&mut slots, 1, "/l/a.log", "other");
        let (e, _re) = add(&mut slots, 2, "/l/b.log", "t");
        for i in [a, b, d, e] {
            set(&mut slots, i, Flow::Held(hold(t, false)));
        }
        assert_eq!(held_siblings(&slots, a), [b]);
        assert_eq!(held_siblings(&slots, c), [b, a], "by source id, not slot");
        assert_eq!(held_siblings(&slots, d), Vec::<u32>::new());
        assert_eq!(held_siblings(&slots, 99), Vec::<u32>::new());
    }

    #[test]
    fn only_a_stopped_reader_s_reachable_file_is_read_again() {
        let mut slots = Slots::default();
        let (i, (src, stop)) = add(&mut slots, 1, "/l/a.log", "t");
        src.set_left(Left::Reachable);
        assert!(
            !rereadable(&slots, i),
            "left without a stop: a rotation read to its end"
        );
        stop.stop();
        assert!(rereadable(&slots, i));
        for gone in [Left::Deleted, Left::Unreachable, Left::Unknown] {
            src.set_left(gone);
            assert!(!rereadable(&slots, i), "{gone:?}");
        }
        assert!(rereadable(&slots, 99), "a free slot holds nothing");
    }

    #[test]
    fn a_due_probe_goes_unless_it_must_wait_or_an_older_generation_probes() {
        let t = Instant::now();
        let mut slots = Slots::default();
        let (a, _ra) = add(&mut slots, 1, "/l/a.log", "t");
        assert_eq!(probe_verdict(&slots, a, t), ProbeVerdict::Wait, "open");
        set(
            &mut slots,
            a,
            Flow::Held(hold(t + Duration::from_secs(1), false)),
        );
        assert_eq!(probe_verdict(&slots, a, t), ProbeVerdict::Wait, "not due");
        set(&mut slots, a, Flow::Held(hold(t, false)));
        assert_eq!(probe_verdict(&slots, a, t), ProbeVerdict::Go);
        // A newer generation of the same file waits for the older one's probe.
        let (b, _rb) = add(&mut slots, 2, "/l/a.log", "t");
        set(&mut slots, b, Flow::Held(hold(t, false)));
        assert_eq!(probe_verdict(&slots, b, t), ProbeVerdict::Postpone);
        assert_eq!(probe_verdict(&slots, a, t), ProbeVerdict::Go);
        assert_eq!(probe_verdict(&slots, 99, t), ProbeVerdict::Wait);
    }

    #[test]
    fn an_alone_probe_waits_for_its_file_s_reports_and_other_alone_probes_of_its_topic() {
        let t = Instant::now();
        let mut slots = Slots::default();
        let (a, _ra) = add(&mut slots, 1, "/l/a.log", "t");
        let (b, _rb) = add(&mut slots, 2, "/l/b.log", "t");
        let (c, _rc) = add(&mut slots, 3, "/l/c.log", "u");
        set(&mut slots, a, Flow::Held(hold(t, true)));
        slots.get_mut(a).unwrap().queued = 1;
        assert_eq!(
            probe_verdict(&slots, a, t),
            ProbeVerdict::Wait,
            "a report to come"
        );
        slots.get_mut(a).unwrap().queued = 0;
        assert_eq!(probe_verdict(&slots, a, t), ProbeVerdict::Go);
        set(&mut slots, b, Flow::Probing(hold(t, true), 77));
        assert_eq!(
            probe_verdict(&slots, a, t),
            ProbeVerdict::Wait,
            "b's alone probe is out"
        );
        set(&mut slots, b, Flow::Probing(hold(t, false), 77));
        assert_eq!(
            probe_verdict(&slots, a, t),
            ProbeVerdict::Go,
            "b's is not alone"
        );
        set(&mut slots, c, Flow::Probing(hold(t, true), 78));
        assert_eq!(
            probe_verdict(&slots, a, t),
            ProbeVerdict::Go,
            "c's is for another topic"
        );
        // A probe that need not go alone does not wait for reports.
        set(&mut slots, a, Flow::Held(hold(t, false)));
        slots.get_mut(a).unwrap().queued = 3;
        assert_eq!(probe_verdict(&slots, a, t), ProbeVerdict::Go);
    }

    #[test]
    fn no_probe_for_a_source_a_new_reader_reads_again() {
        let t = Instant::now();
        let mut slots = Slots::default();
        let (a, (src, stop)) = add(&mut slots, 1, "/l/a.log", "t");
        set(&mut slots, a, Flow::Held(hold(t, false)));
        stop.stop();
        src.set_left(Left::Reachable);
        assert_eq!(
            probe_verdict(&slots, a, t),
            ProbeVerdict::Go,
            "its reader still has it"
        );
        drop(src);
        assert_eq!(probe_verdict(&slots, a, t), ProbeVerdict::Wait);
        slots.get(a).unwrap().source.set_left(Left::Deleted);
        assert_eq!(
            probe_verdict(&slots, a, t),
            ProbeVerdict::Go,
            "the last copy of its lines is here"
        );
    }

    #[test]
    fn the_probe_is_the_first_line_not_filtered_out() {
        let (src, _stop) = source(1, "/l/a.log", 1, "t");
        let mut h = HeldLines {
            chunk: shaped_chunk(&src, 0, &[true, true, false, true]),
            from: 0,
            seq: 10,
        };
        assert!(skip_filtered(&mut h));
        assert_eq!((h.from, h.seq), (2, 12));
        assert!(skip_filtered(&mut h), "line 2 is not filtered: stays");
        assert_eq!((h.from, h.seq), (2, 12));
        h.from = 3;
        h.seq = 13;
        assert!(!skip_filtered(&mut h), "only filtered lines left");
        assert_eq!((h.from, h.seq), (4, 14));
    }

    #[test]
    fn a_line_too_large_is_counted_lost_marked_done_and_the_next_probe_goes_alone_at_once() {
        let t = Instant::now();
        let mut slots = Slots::default();
        let (i, (src, _stop)) = add(&mut slots, 1, "/l/a.log", "t");
        let s = slots.get_mut(i).unwrap();
        let first = s.tracker.push(0, 10);
        let second = s.tracker.push(10, 20);
        assert!(give_up_too_large(s, first as u32, 9, t));
        assert_eq!(src.metrics.bytes_lost(Loss::TooLarge), 9);
        assert_eq!(
            s.tracker.take_commit(),
            Some(10),
            "the file goes on past it"
        );
        assert_eq!(
            s.tracker.take_acked(),
            (0, 0),
            "lost, not acknowledged by Kafka"
        );
        let h = s.flow.hold().unwrap();
        assert_eq!(
            (h.class, h.refused, h.alone, h.next_try),
            (ErrorClass::Entry, 0, true, t)
        );
        assert!(s.flow.probe_due(t));
        assert!(src.is_paused(), "the tailer holds on");
        assert!(
            !give_up_too_large(s, second as u32, 9, t),
            "logged once per file"
        );
        assert_eq!(src.metrics.bytes_lost(Loss::TooLarge), 18);
    }

    #[test]
    fn batches_are_said_too_large_only_for_a_topic_limit_below_the_batch_size() {
        assert_eq!(batch_above(Some(500), 1000), Some(500));
        assert_eq!(batch_above(Some(1000), 1000), None);
        assert_eq!(batch_above(Some(2000), 1000), None);
        assert_eq!(batch_above(None, 1000), None);
    }
}
