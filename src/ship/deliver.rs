//! Delivery reports: librdkafka's acknowledgements and errors move each source's
//! watermark ([`super::watermark`]); the acknowledged prefixes go to the checkpoint.

use super::*;

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
                    s.queued = s.queued.saturating_sub(1);
                    s.tracker.ack(seq);
                    if let Some(Event::Recovered { refused, after }) = s.flow.delivered(op, now) {
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
                        if alone_probe && limit.is_some_and(|l| record_size(&record) > l) {
                            self.drop_too_large(slot, seq, &record, &e);
                            continue;
                        }
                        self.warn_batch_above(&topic, limit);
                        // A refused alone probe waits an interval: it may be refused for
                        // good (the limit unknown, or batched with other files' records).
                        probe_alone = !alone_probe;
                    }
                    let Some(s) = self.slots.get_mut(slot) else {
                        continue;
                    };
                    // A refused probe stays the oldest record: file order.
                    if was_probe {
                        s.failed.push_front(*record);
                    } else {
                        s.failed.push_back(*record);
                    }
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
        for slot in self.slots.indices() {
            if let Some(s) = self.slots.get_mut(slot) {
                if appeared.contains(&s.source.topic) {
                    s.flow.postpone(Instant::now(), Duration::ZERO);
                }
            }
        }
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
        // Slots per file (generations of one file share it).
        let mut per_file: std::collections::HashMap<FileId, usize> = Default::default();
        for s in self.slots.iter() {
            *per_file.entry(s.source.file).or_default() += 1;
        }
        let mut deleted_done: Vec<(FileId, u64)> = Vec::new();
        for slot in self.slots.indices() {
            let Some(s) = self.slots.get(slot) else {
                continue;
            };
            // Nothing of the source can come back once its reader let go and librdkafka
            // holds none of its records: free the slot.
            if !s.reader_gone() || s.queued > 0 {
                continue;
            }
            let (n, _) = s.held_counts();
            let keep = n > 0 && !s.flow.is_open() && !self.rereadable(slot);
            let Some(s) = self.slots.get_mut(slot) else {
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
            self.slots.free(slot);
        }
        // Deleted, every line acknowledged, no other generation of it left here:
        // nothing can ever be read or owed of it again (see `Registry::forget_deleted`).
        deleted_done.retain(|(file, _)| per_file.get(file).is_none_or(|&n| n == 0));
        if !deleted_done.is_empty() {
            let mut reg = lock(&self.registry);
            for (file, generation) in deleted_done {
                reg.forget_deleted(file, generation);
            }
        }
    }
}
