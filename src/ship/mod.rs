//! The producer thread: drains the channel, hands records to librdkafka (`BaseProducer`,
//! polled on this thread), tracks which lines Kafka acknowledged, holds back the records
//! of sources Kafka refuses, and commits per-file watermarks to the registry.
//!
//! Its parts: [`kafka`] (client settings, delivery reports, headers, what an error
//! means), [`watermark`] (the acknowledged prefix of one file generation), [`slots`]
//! (the table of sources and their delivery ids), [`flow`] (hold and probe while Kafka
//! refuses a source), [`partition`], [`topics`] (missing topics, `create_topics`) and
//! [`checkpoint`] (the registry writes). This file is the loop that ties them together.
//!
//! Nothing is dropped on the way. A full librdkafka queue is waited out (the channel
//! then fills and the tailers block). `message.timeout.ms` is 0, so librdkafka retries
//! for as long as Kafka is away. A record Kafka refuses holds its source: the tailer
//! stops reading, the records already read wait here (bounded: what the channel and
//! librdkafka's queue held), and one record is sent as a probe every
//! `kafka.entry_retry_ms` until Kafka takes it. A config change for a held entry
//! restarts its tailer; the held records are then dropped unacknowledged and the new
//! reader reads them again from the last acknowledged offset. Records held for a file
//! its reader left without being stopped (a rotation read to its end, a copy, a
//! truncated or deleted file) are kept: nobody would read them again.

pub mod checkpoint;
pub mod flow;
pub mod kafka;
pub mod oauth;
pub mod partition;
pub mod slots;
pub mod topics;
pub mod watermark;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{error, info, warn};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::chunk::{Chunk, Left, Room};
use crate::config::Config;
use crate::metrics::{Loss, Metrics};
use crate::registry::{FileId, Registry};
use crate::stop::StopToken;

pub use kafka::{client_config, record_headers, ProducerError};
pub use topics::WantedTopics;
pub use watermark::Tracker;

use checkpoint::Checkpointer;
use flow::{Event, Flow};
use kafka::{classify, explain, lock, too_large, Context, Delivered, ErrorClass, Record};
use partition::Partitioner;
use slots::{pack, unpack, HeldLines, Slots};
use topics::{TopicState, Topics};

/// Counters of one producer run, logged at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProducerStats {
    /// Records handed to librdkafka (probes and releases included).
    pub sent: u64,
    /// Records acknowledged.
    pub acked: u64,
    /// Records Kafka refused (at `send` or in a delivery report).
    pub refused: u64,
}

/// What became of one record handed to [`ProducerLoop::send_one`].
enum Sent {
    /// librdkafka has it.
    Queued,
    /// Refused at `send` (already applied to the slot's flow).
    Refused,
    /// Not sent: the shutdown deadline passed while librdkafka's queue was full. It is
    /// never acknowledged, so it is read again after restart.
    Abandoned,
}

/// The producer thread's state.
pub struct ProducerLoop {
    cfg: Arc<Config>,
    hostname: String,
    producer: BaseProducer<Context>,
    registry: Arc<Mutex<Registry>>,
    slots: Slots,
    partitioner: Partitioner,
    topics: Topics,
    checkpointer: Checkpointer,
    stats: ProducerStats,
    metrics: Arc<Metrics>,
    entry_retry: Duration,
    /// Agent-wide stop; noticed in the main loop and while waiting out a full queue.
    shutdown: Option<StopToken>,
    /// Set once the shutdown is noticed: when to give up on unacknowledged records.
    deadline: Option<Instant>,
    timers: Timers,
    /// Whether some slot may be held (probes are looked for only then).
    held_any: bool,
    /// When the held slots are looked at next for due probes.
    next_probe_scan: Instant,
    /// Topics named in the "batches larger than the topic takes" warning.
    batch_warned: std::collections::HashSet<String>,
    /// The delivery-report vector swapped with the context's (see `apply_deliveries`).
    spare: Vec<Delivered>,
}

/// Shortest time between two registry writes made early for a new file (bounds the
/// cost when files appear all the time: a write serializes the whole registry).
const SAVE_SOON: Duration = Duration::from_millis(200);

/// When the periodic work (checkpoint, stats line, stall watch) is due next.
struct Timers {
    checkpoint: Instant,
    stats: Instant,
    stall_watch: Instant,
    /// When per-file counters nobody holds are looked for next.
    retire: Instant,
    /// While the brokers refuse the agent: when to ask them again with nothing to send.
    refusal_check: Instant,
    /// The last checkpoint (periodic or early).
    last_checkpoint: Instant,
    /// (when, lines read, lines acked) at the last stats line.
    last_stats: (Instant, u64, u64),
}

/// How often an idle agent that the brokers refused asks them again.
const REFUSAL_CHECK: Duration = Duration::from_secs(10);

impl ProducerLoop {
    /// Creates the librdkafka producer (no network traffic yet). `wanted` is where the
    /// supervisor publishes the topics its entries name.
    pub fn new(
        cfg: Arc<Config>,
        hostname: String,
        registry: Arc<Mutex<Registry>>,
        metrics: Arc<Metrics>,
        wanted: Arc<WantedTopics>,
    ) -> Result<ProducerLoop, ProducerError> {
        let client = client_config(&cfg)?;
        let mut context = Context::new(metrics.kafka_refused.clone());
        if cfg.kafka.security.sasl_mechanism == crate::config::SaslMechanism::OAuthBearer {
            if let Some(o) = cfg.kafka.security.oauth.clone() {
                context.oauth = Some(oauth::TokenSource::new(o)?);
            }
        }
        let producer: BaseProducer<Context> = client
            .create_with_context(context)
            .map_err(|e| ProducerError::Create(kafka::config_refused(&e, &client)))?;
        let topics = Topics::new(
            wanted,
            cfg.kafka.create_topics,
            client,
            metrics.missing_topics.clone(),
        );
        let now = Instant::now();
        let timers = Timers {
            checkpoint: now + Duration::from_millis(cfg.agent.checkpoint_interval_ms),
            stats: now + Duration::from_millis(cfg.agent.stats_interval_ms),
            stall_watch: now + Duration::from_secs(1),
            retire: now + Duration::from_secs(1),
            refusal_check: now + REFUSAL_CHECK,
            last_checkpoint: now.checked_sub(SAVE_SOON).unwrap_or(now),
            last_stats: (now, 0, 0),
        };
        Ok(ProducerLoop {
            entry_retry: Duration::from_millis(cfg.kafka.entry_retry_ms),
            cfg,
            hostname,
            producer,
            registry,
            slots: Slots::default(),
            partitioner: Partitioner::default(),
            topics,
            checkpointer: Checkpointer::default(),
            stats: ProducerStats::default(),
            metrics,
            shutdown: None,
            deadline: None,
            timers,
            spare: Vec::new(),
            held_any: false,
            next_probe_scan: now,
            batch_warned: Default::default(),
        })
    }

    /// Runs until the channel is closed (all tailers gone) and drained, or until
    /// `shutdown` fired `shutdown_timeout_ms` ago; then flushes and checkpoints.
    pub fn run(
        mut self,
        rx: Receiver<Chunk>,
        room: Arc<Room>,
        shutdown: StopToken,
    ) -> ProducerStats {
        self.shutdown = Some(shutdown);
        self.metrics
            .channel_capacity
            .store(self.cfg.agent.channel_capacity as u64, Ordering::Relaxed);
        self.metrics.progress();
        self.check_topics();
        loop {
            if self.shutdown_due() {
                warn!("shutdown timeout reached while lines were still queued; they are read again after restart");
                break;
            }
            let wait = if self.in_flight() > 0 {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(100)
            };
            match rx.recv_timeout(wait) {
                Ok(chunk) => {
                    room.taken();
                    self.send_chunk(chunk);
                    // Take whatever else is ready before serving reports.
                    for chunk in rx.try_iter().take(16) {
                        room.taken();
                        self.send_chunk(chunk);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let acked_before = self.stats.acked;
            self.serve();
            self.probe_due();
            self.metrics
                .channel_depth
                .store(rx.len() as u64, Ordering::Relaxed);
            if self.stats.acked > acked_before || (self.in_flight() == 0 && rx.is_empty()) {
                self.metrics.progress();
            }
            self.housekeeping();
        }
        let grace = Duration::from_millis(self.cfg.agent.shutdown_timeout_ms);
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + grace);
        self.finish(deadline);
        self.stats
    }

    /// Notices a shutdown (starting the grace period); true once the grace period is over.
    fn shutdown_due(&mut self) -> bool {
        if self.deadline.is_none() && self.shutdown.as_ref().is_some_and(|s| s.is_stopped()) {
            let grace = Duration::from_millis(self.cfg.agent.shutdown_timeout_ms);
            self.deadline = Some(Instant::now() + grace);
        }
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The periodic work: checkpoint, stats line, stall watch, topic checks. Runs from
    /// the main loop and while a full librdkafka queue is waited out (Kafka down for an
    /// hour must not silence the stall detector).
    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.metrics
            .kafka_queue
            .store(self.in_flight() as u64, Ordering::Relaxed);
        let stats_every = Duration::from_millis(self.cfg.agent.stats_interval_ms);
        if !stats_every.is_zero() && now >= self.timers.stats {
            let (read, acked) = self.metrics.totals();
            let lag: u64 = self
                .metrics
                .lags(&self.registry)
                .iter()
                .map(|(_, l)| l)
                .sum();
            let last = self.timers.last_stats;
            let secs = last.0.elapsed().as_secs_f64().max(0.001);
            let (held, _) = self.held_counts();
            info!(
                "stats: {:.0} lines/s read, {:.0} lines/s acknowledged, lag {lag} bytes, {} records in librdkafka, {} chunks queued, {held} records held, {} refused",
                (read - last.1.min(read)) as f64 / secs,
                (acked - last.2.min(acked)) as f64 / secs,
                self.in_flight(),
                self.metrics.channel_depth.load(Ordering::Relaxed),
                self.stats.refused
            );
            self.timers.last_stats = (now, read, acked);
            self.timers.stats = now + stats_every;
        }
        if self.deadline.is_none() {
            self.check_topics();
        }
        // A file new to the ledger is written at once (at most every SAVE_SOON), not
        // up to a checkpoint interval later: see `Registry::save_soon`.
        let soon =
            now >= self.timers.last_checkpoint + SAVE_SOON && lock(&self.registry).save_soon();
        if now >= self.timers.checkpoint || soon {
            self.timers.last_checkpoint = now;
            self.checkpoint();
            self.timers.checkpoint =
                now + Duration::from_millis(self.cfg.agent.checkpoint_interval_ms);
        }
        if now >= self.timers.refusal_check && self.deadline.is_none() {
            self.timers.refusal_check = now + REFUSAL_CHECK;
            self.recheck_refusal();
        }
        if now >= self.timers.stall_watch {
            let warn_after = Duration::from_millis(self.cfg.agent.stall_warn_ms);
            self.metrics.watch_stalls(&self.registry, warn_after);
            // A twelfth of the warning time, 1 to 5 s: the watch looks up every followed
            // file's offset under the registry lock (the sizes come from the tailers; no
            // file is looked at on this thread).
            let every = (warn_after / 12).clamp(Duration::from_secs(1), Duration::from_secs(5));
            self.timers.stall_watch = now + every;
        }
        if now >= self.timers.retire {
            // Atomics and a pass over the table: no file, no registry.
            let keep = Duration::from_millis(self.cfg.agent.file_metrics_retention_ms);
            self.metrics.retire_unused(keep, crate::metrics::unix_ms());
            self.timers.retire = now + Duration::from_secs(1);
        }
    }

    fn in_flight(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }

    fn held_counts(&self) -> (u64, u64) {
        self.slots
            .iter()
            .map(|s| s.held_counts())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Shutdown: held sources stay held (their records are read again after restart);
    /// everything in librdkafka gets until `deadline` to be acknowledged.
    fn finish(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = self.producer.flush(left) {
            warn!(
                "flush did not complete in time ({e}); {} records unacknowledged will be sent again after restart",
                self.in_flight()
            );
        }
        self.serve();
        for slot in self.slots.indices() {
            let Some(s) = self.slots.get(slot) else {
                continue;
            };
            let bytes = s.held_line_bytes();
            // Held for a file no reader has open any more and that was gone from disk
            // when its reader let go: after the restart nobody can read those lines again.
            let gone = s.reader_gone() && s.source.gone();
            if gone && bytes > 0 {
                s.source.metrics.lose(Loss::Deleted, bytes);
                error!(
                    "{}: {bytes} bytes held for it were the last copy of those lines (the file was deleted) and Kafka never took them; counted as lost (deleted)",
                    s.source.path
                );
            }
        }
        let (held, _) = self.held_counts();
        if held > 0 {
            warn!("{held} records held for files Kafka refuses are not sent; they are read again after restart");
        }
        self.checkpoint();
        info!(
            "producer stopped: {} records sent, {} acknowledged, {} refused",
            self.stats.sent, self.stats.acked, self.stats.refused
        );
    }

    /// Registers a chunk's lines with its slot's tracker and sends them (or holds them
    /// while the slot is held).
    fn send_chunk(&mut self, chunk: Chunk) {
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
    fn send_lines(&mut self, slot: u32, mut h: HeldLines) {
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
    fn send_one(
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

    /// Applies a refusal to a slot's flow and says so once per change of state.
    fn refused(&mut self, slot: u32, class: ErrorClass, reason: &str) {
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
    fn classify(&self, e: &KafkaError) -> ErrorClass {
        match classify(e.rdkafka_error_code()) {
            ErrorClass::Fatal if self.producer.client().fatal_error().is_none() => {
                ErrorClass::Transient
            }
            c => c,
        }
    }

    /// librdkafka's producer is unusable: write what was acknowledged and exit 1, so the
    /// service manager restarts the agent (it reads on from the acknowledged offsets).
    fn fatal(&mut self, e: &KafkaError) -> ! {
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
    fn held_siblings(&self, slot: u32) -> Vec<u32> {
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
    fn rereadable(&self, slot: u32) -> bool {
        let Some(s) = self.slots.get(slot) else {
            return true;
        };
        // Left without a stop (rotation done, copy recovered, truncation): no reader
        // comes back to it, whatever is on disk.
        s.source.reader_stop.is_stopped() && s.source.left() == Left::Reachable
    }

    /// Sends a probe for every held slot whose retry is due.
    fn probe_due(&mut self) {
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
    fn probe(&mut self, slot: u32) {
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

    fn probing(&mut self, slot: u32, opaque: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.flow.probing(opaque);
        }
    }

    /// Opens a slot's flow without a probe (nothing was left to probe with).
    fn open(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.set_flow(Flow::Open);
            s.source.metrics.set_refusal(None);
        }
    }

    /// The probe went through: send everything held, oldest first, and let the tailer
    /// read on.
    fn release(&mut self, slot: u32, refused: u64, after: Duration) {
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

    /// Serves every delivery report librdkafka has ready.
    fn serve(&mut self) {
        // poll(0) serves at most one event (rdkafka ≥ 0.38); loop while it yields reports.
        for _ in 0..10_000 {
            self.producer.poll(Duration::ZERO);
            if self.apply_deliveries() == 0 {
                break;
            }
        }
    }

    fn apply_deliveries(&mut self) -> usize {
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
    fn recheck_refusal(&mut self) {
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

    /// Says once per topic that batches may be larger than the topic takes: then
    /// records that fit go one probe at a time, slowly.
    fn warn_batch_above(&mut self, topic: &str, limit: Option<u64>) {
        let batch = self.cfg.kafka.batch_max_bytes as u64;
        if let Some(l) = limit.filter(|&l| l < batch) {
            if self.batch_warned.insert(topic.to_owned()) {
                warn!(
                    "topic {topic} takes record batches of at most {l} bytes (max.message.bytes), and kafka.batch_max_bytes is {batch}: its records go one at a time after each refusal; set kafka.batch_max_bytes below {l}"
                );
            }
        }
    }

    /// A probe sent alone was refused as too large and is larger than the topic's
    /// `max.message.bytes`: the line cannot go to this topic at all. It is
    /// counted lost (`too_large`) and marked done, so that the file goes on; the next
    /// held record is probed at once.
    fn drop_too_large(&mut self, slot: u32, seq: u32, record: &Record, e: &KafkaError) {
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

    /// Checks the wanted topics when they changed; held sources of a topic that now
    /// exists are probed at once.
    fn check_topics(&mut self) {
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
    fn checkpoint(&mut self) {
        self.checkpointer.run(
            &self.registry,
            &mut self.slots,
            &self.metrics,
            self.cfg.agent.registry_retention_hours,
        );
        let (held, held_bytes) = self.held_counts();
        self.metrics.held_records.store(held, Ordering::Relaxed);
        self.metrics.held_bytes.store(held_bytes, Ordering::Relaxed);
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

/// What a record takes in a batch of its own: payload, key, headers, and the batch and
/// record framing (61 + about 20 bytes), before compression. Compared with the topic's
/// `max.message.bytes`, it tells a line too large by itself from a batch too large.
fn record_size(r: &Record) -> u64 {
    use rdkafka::message::Headers;
    let headers: usize = r.headers.as_ref().map_or(0, |h| {
        (0..h.count())
            .map(|i| {
                let hd = h.get(i);
                hd.key.len() + hd.value.map_or(0, <[u8]>::len) + 2
            })
            .sum()
    });
    (r.payload.len() + r.key.as_ref().map_or(0, Vec::len) + headers + 81) as u64
}
