//! The producer thread: drains the channel, hands records to librdkafka
//! (`BaseProducer`, polled on this thread), tracks which lines Kafka acknowledged, and
//! commits per-file watermarks to the registry.
//!
//! Nothing is dropped on the way: a full librdkafka queue is waited out by polling
//! (the channel then fills and the tailers block), `message.timeout.ms` is 0 so
//! librdkafka retries for as long as Kafka is away, and a delivery that still fails is
//! sent again. Only a record that Kafka can never take (larger than the broker allows)
//! is given up, and then it is logged and counted.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, error, info, warn};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use thiserror::Error;

use crate::chunk::{Chunk, Route, Source};
use crate::config::Config;
use crate::metrics::{unix_ms, Loss, Metrics};
use crate::registry::{unix_now, Fingerprint, Registry};
use crate::stop::StopToken;

/// Why the producer could not start.
#[derive(Debug, Error)]
pub enum ProducerError {
    /// librdkafka refused the configuration (a bad `kafka.properties` entry, say).
    #[error("cannot create Kafka producer: {0}")]
    Create(#[from] KafkaError),
    /// `kafka.security.password_file` could not be read.
    #[error("kafka.security.password_file {0}")]
    Secret(String),
}

/// librdkafka settings derived from `agent.yaml`; `kafka.properties` is applied last.
/// Fails only when `kafka.security.password_file` cannot be read.
pub fn client_config(cfg: &Config) -> Result<ClientConfig, ProducerError> {
    let k = &cfg.kafka;
    let mut c = ClientConfig::new();
    let sec = &k.security;
    c.set("security.protocol", sec.protocol.as_rdkafka());
    if sec.protocol.is_sasl() {
        c.set("sasl.mechanism", sec.sasl_mechanism.as_rdkafka());
        if let Some(u) = &sec.username {
            c.set("sasl.username", u);
        }
        let password = match (&sec.password, &sec.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| ProducerError::Secret(format!("{}: {e}", f.display())))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if let Some(p) = password {
            c.set("sasl.password", p);
        }
    }
    if let Some(ca) = &sec.ca_file {
        c.set("ssl.ca.location", ca.to_string_lossy());
    }
    c.set("bootstrap.servers", k.brokers.join(","))
        .set("client.id", "logagent")
        .set("acks", k.acks.as_rdkafka())
        .set("compression.type", k.compression.as_rdkafka())
        .set("linger.ms", k.linger_ms.to_string())
        .set("batch.num.messages", k.batch_max_messages.to_string())
        .set("batch.size", k.batch_max_bytes.to_string())
        .set(
            "queue.buffering.max.messages",
            k.queue_max_messages.to_string(),
        )
        .set("queue.buffering.max.kbytes", k.queue_max_kbytes.to_string())
        // Never expire a record locally: Kafka away for an hour means waiting an hour.
        .set("message.timeout.ms", "0")
        // Java-client compatible hashing of keys, so other producers agree on partitions.
        .set("partitioner", "murmur2_random")
        .set("socket.keepalive.enable", "true")
        .set(
            "message.max.bytes",
            (cfg.agent.max_line_bytes + 64 * 1024)
                .max(1_000_000)
                .to_string(),
        );
    if k.idempotence && k.acks == crate::config::Acks::All {
        c.set("enable.idempotence", "true");
    }
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    Ok(c)
}

/// One delivery report, copied out of librdkafka's callback.
enum Delivered {
    Ok(usize),
    Failed(usize, KafkaError, Box<Retry>),
}

/// A record to send again.
struct Retry {
    due: Instant,
    opaque: usize,
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

/// The librdkafka context: collects delivery reports, and logs client errors once per
/// change instead of once per reconnect attempt.
struct Context {
    delivered: Mutex<Vec<Delivered>>,
    last_error: Mutex<Option<(String, Instant)>>,
}

impl ClientContext for Context {
    fn error(&self, err: KafkaError, reason: &str) {
        let msg = format!("{err}: {reason}");
        let mut last = lock(&self.last_error);
        let repeat =
            matches!(&*last, Some((m, at)) if *m == msg && at.elapsed() < Duration::from_secs(60));
        if !repeat {
            warn!("kafka: {msg} (librdkafka keeps retrying)");
            *last = Some((msg, Instant::now()));
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let d = match result {
            Ok(_) => Delivered::Ok(opaque),
            Err((e, m)) => Delivered::Failed(
                opaque,
                e.clone(),
                Box::new(Retry {
                    due: Instant::now() + RETRY_AFTER,
                    opaque,
                    topic: m.topic().to_owned(),
                    partition: None,
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers: m.headers().map(|h| h.detach()),
                }),
            ),
        };
        lock(&self.delivered).push(d);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const RETRY_AFTER: Duration = Duration::from_secs(1);

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

struct Slot {
    source: Arc<Source>,
    fingerprint: Fingerprint,
    tracker: Tracker,
}

struct RoundRobin {
    partitions: i32,
    next: i32,
    checked: Instant,
}

/// Counters of one producer run, logged at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProducerStats {
    /// Records handed to librdkafka (resends included).
    pub sent: u64,
    /// Records acknowledged.
    pub acked: u64,
    /// Delivery failures that were sent again.
    pub retried: u64,
    /// Records given up (too large for the broker).
    pub lost: u64,
}

/// The producer thread's state.
pub struct ProducerLoop {
    cfg: Arc<Config>,
    hostname: String,
    producer: BaseProducer<Context>,
    registry: Arc<Mutex<Registry>>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u32>,
    slot_of: HashMap<u64, u32>,
    retries: VecDeque<Box<Retry>>,
    round_robin: HashMap<String, RoundRobin>,
    stats: ProducerStats,
    last_save_error: Option<Instant>,
    last_prune: Option<Instant>,
    metrics: Arc<Metrics>,
    /// Agent-wide stop; noticed in the main loop and while waiting out a full queue.
    shutdown: Option<StopToken>,
    /// Set once the shutdown is noticed: when to give up on unacknowledged records.
    deadline: Option<Instant>,
    timers: Timers,
}

/// When the periodic work (checkpoint, stats line, stall watch) is due next.
struct Timers {
    checkpoint: Instant,
    stats: Instant,
    stall_watch: Instant,
    /// (when, lines read, lines acked) at the last stats line.
    last_stats: (Instant, u64, u64),
}

impl ProducerLoop {
    /// Creates the librdkafka producer (no network traffic yet).
    pub fn new(
        cfg: Arc<Config>,
        hostname: String,
        registry: Arc<Mutex<Registry>>,
        metrics: Arc<Metrics>,
    ) -> Result<ProducerLoop, ProducerError> {
        let ctx = Context {
            delivered: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
        };
        let producer: BaseProducer<Context> = client_config(&cfg)?.create_with_context(ctx)?;
        let now = Instant::now();
        let timers = Timers {
            checkpoint: now + Duration::from_millis(cfg.agent.checkpoint_interval_ms),
            stats: now + Duration::from_millis(cfg.agent.stats_interval_ms),
            stall_watch: now + Duration::from_secs(1),
            last_stats: (now, 0, 0),
        };
        Ok(ProducerLoop {
            cfg,
            hostname,
            producer,
            registry,
            slots: Vec::new(),
            free_slots: Vec::new(),
            slot_of: HashMap::new(),
            retries: VecDeque::new(),
            round_robin: HashMap::new(),
            stats: ProducerStats::default(),
            last_save_error: None,
            last_prune: None,
            metrics,
            shutdown: None,
            deadline: None,
            timers,
        })
    }

    /// Runs until the channel is closed (all tailers gone) and drained, or until
    /// `shutdown` fired `shutdown_timeout_ms` ago; then flushes and checkpoints.
    pub fn run(mut self, rx: Receiver<Chunk>, shutdown: StopToken) -> ProducerStats {
        self.shutdown = Some(shutdown);
        self.metrics
            .channel_capacity
            .store(self.cfg.agent.channel_capacity as u64, Ordering::Relaxed);
        self.metrics.progress();
        loop {
            if self.shutdown_due() {
                warn!("shutdown timeout reached while lines were still queued; they are read again after restart");
                break;
            }
            let wait = if self.in_flight() > 0 || !self.retries.is_empty() {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(100)
            };
            match rx.recv_timeout(wait) {
                Ok(chunk) => {
                    self.send_chunk(chunk);
                    // Take whatever else is ready before serving reports.
                    for chunk in rx.try_iter().take(16) {
                        self.send_chunk(chunk);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let acked_before = self.stats.acked;
            self.serve();
            self.resend_due();
            let queued = self.in_flight();
            self.metrics
                .channel_depth
                .store(rx.len() as u64, Ordering::Relaxed);
            if self.stats.acked > acked_before
                || (queued == 0 && rx.is_empty() && self.retries.is_empty())
            {
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

    /// The periodic work: checkpoint, stats line, stall watch. Runs from the main loop
    /// and while a full librdkafka queue is waited out (Kafka down for an hour must not
    /// silence the stall detector).
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
            info!(
                "stats: {:.0} lines/s read, {:.0} lines/s acknowledged, lag {lag} bytes, {} records in librdkafka, {} chunks queued, {} retried, {} given up",
                (read - last.1.min(read)) as f64 / secs,
                (acked - last.2.min(acked)) as f64 / secs,
                self.in_flight(),
                self.metrics.channel_depth.load(Ordering::Relaxed),
                self.stats.retried,
                self.stats.lost
            );
            self.timers.last_stats = (now, read, acked);
            self.timers.stats = now + stats_every;
        }
        if now >= self.timers.checkpoint {
            self.checkpoint();
            self.timers.checkpoint =
                now + Duration::from_millis(self.cfg.agent.checkpoint_interval_ms);
        }
        if now >= self.timers.stall_watch {
            let warn_after = Duration::from_millis(self.cfg.agent.stall_warn_ms);
            self.metrics.watch_stalls(&self.registry, warn_after);
            self.timers.stall_watch = now + Duration::from_secs(1);
        }
    }

    fn in_flight(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }

    fn finish(&mut self, deadline: Instant) {
        // Failed records waiting for their retry go out now, once.
        while let Some(r) = self.retries.pop_front() {
            self.resend(*r);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = self.producer.flush(left) {
            warn!(
                "flush did not complete in time ({e}); {} records unacknowledged will be sent again after restart",
                self.in_flight()
            );
        }
        self.serve();
        self.checkpoint();
        info!(
            "producer stopped: {} records sent, {} acknowledged, {} retried, {} given up",
            self.stats.sent, self.stats.acked, self.stats.retried, self.stats.lost
        );
    }

    fn slot_for(&mut self, chunk: &Chunk) -> u32 {
        let src = &chunk.source;
        let slot = if let Some(&s) = self.slot_of.get(&src.id) {
            s
        } else {
            let s = self.free_slots.pop().unwrap_or_else(|| {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            });
            self.slots[s as usize] = Some(Slot {
                source: src.clone(),
                fingerprint: chunk.fingerprint,
                tracker: Tracker::new(),
            });
            self.slot_of.insert(src.id, s);
            s
        };
        if let Some(sl) = self.slots[slot as usize].as_mut() {
            sl.fingerprint = chunk.fingerprint;
        }
        slot
    }

    fn partition_for(&mut self, src: &Source) -> Option<i32> {
        match src.route {
            Route::Default => None,
            Route::Partition(p) => Some(p),
            Route::RoundRobin => {
                let stale = self.round_robin.get(&src.topic).is_none_or(|r| {
                    r.partitions == 0 && r.checked.elapsed() > Duration::from_secs(10)
                });
                if stale {
                    let n = self
                        .producer
                        .client()
                        .fetch_metadata(Some(&src.topic), Duration::from_secs(2))
                        .ok()
                        .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                        .unwrap_or(0);
                    if n == 0 {
                        warn!("topic {}: partition count unknown yet; round robin falls back to librdkafka's choice", src.topic);
                    }
                    self.round_robin.insert(
                        src.topic.clone(),
                        RoundRobin {
                            partitions: n,
                            next: 0,
                            checked: Instant::now(),
                        },
                    );
                }
                let rr = self.round_robin.get_mut(&src.topic)?;
                if rr.partitions == 0 {
                    return None;
                }
                let p = rr.next;
                rr.next = (rr.next + 1) % rr.partitions;
                Some(p)
            }
        }
    }

    fn send_chunk(&mut self, chunk: Chunk) {
        let slot = self.slot_for(&chunk);
        let src = chunk.source.clone();
        let host = self.hostname.clone();
        for span in &chunk.lines {
            let seq = match self.slots[slot as usize].as_mut() {
                Some(s) => s
                    .tracker
                    .push(chunk.line_offset(span), chunk.commit_offset(span)),
                None => continue,
            };
            let opaque = ((slot as usize) << 32) | (seq as u32 as usize);
            let partition = self.partition_for(&src);
            let headers = record_headers(&host, &src.path, chunk.line_offset(span));
            let mut rec = BaseRecord::with_opaque_to(&src.topic, opaque)
                .payload(chunk.payload(span))
                .headers(headers);
            if let Some(k) = &src.key {
                rec = rec.key(&k[..]);
            }
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            self.send_record(rec);
        }
    }

    /// Sends one record, waiting out a full queue. Gives the record up only when the
    /// error is permanent or the shutdown deadline passed.
    fn send_record(&mut self, mut rec: BaseRecord<'_, [u8], [u8], usize>) {
        loop {
            match self.producer.send(rec) {
                Ok(()) => {
                    self.stats.sent += 1;
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if self.shutdown_due() {
                        return; // never acked: read again after restart
                    }
                    rec = r;
                    self.producer.poll(Duration::from_millis(5));
                    self.apply_deliveries();
                    self.housekeeping();
                }
                Err((e, r)) => {
                    let opaque = r.delivery_opaque;
                    if is_permanent(&e) {
                        self.give_up(opaque, &e, r.payload.map_or(0, <[u8]>::len));
                    } else {
                        debug!(
                            "send to {} failed ({e}); retrying in {RETRY_AFTER:?}",
                            r.topic
                        );
                        self.retries.push_back(Box::new(Retry {
                            due: Instant::now() + RETRY_AFTER,
                            opaque,
                            topic: r.topic.to_owned(),
                            partition: r.partition,
                            key: r.key.map(<[u8]>::to_vec),
                            payload: r.payload.map(<[u8]>::to_vec).unwrap_or_default(),
                            headers: r.headers,
                        }));
                    }
                    return;
                }
            }
        }
    }

    fn resend(&mut self, r: Retry) {
        self.stats.retried += 1;
        self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        let mut rec = BaseRecord::with_opaque_to(&r.topic, r.opaque).payload(&r.payload[..]);
        if let Some(k) = &r.key {
            rec = rec.key(&k[..]);
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        if let Some(h) = r.headers.clone() {
            rec = rec.headers(h);
        }
        self.send_record(rec);
    }

    fn resend_due(&mut self) {
        let now = Instant::now();
        while self.retries.front().is_some_and(|r| r.due <= now) {
            if let Some(r) = self.retries.pop_front() {
                self.resend(*r);
            }
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
        let batch = std::mem::take(&mut *lock(&self.producer.context().delivered));
        let n = batch.len();
        for d in batch {
            match d {
                Delivered::Ok(op) => {
                    self.stats.acked += 1;
                    self.ack(op);
                }
                Delivered::Failed(op, e, retry) => {
                    self.metrics.delivery_errors.fetch_add(1, Ordering::Relaxed);
                    if is_permanent(&e) {
                        self.give_up(op, &e, retry.payload.len());
                    } else {
                        let path = self.slot_path(op);
                        warn!("delivery of a line of {path} failed ({e}); sending it again");
                        let mut r = retry;
                        r.partition = self.slot_source(op).and_then(|s| match s.route {
                            Route::Partition(p) => Some(p),
                            _ => None,
                        });
                        self.retries.push_back(r);
                    }
                }
            }
        }
        n
    }

    fn slot_source(&self, opaque: usize) -> Option<Arc<Source>> {
        self.slots
            .get(opaque >> 32)
            .and_then(|s| s.as_ref())
            .map(|s| s.source.clone())
    }

    fn slot_path(&self, opaque: usize) -> String {
        self.slot_source(opaque)
            .map(|s| s.path.clone())
            .unwrap_or_else(|| "?".into())
    }

    fn ack(&mut self, opaque: usize) {
        if let Some(Some(s)) = self.slots.get_mut(opaque >> 32) {
            s.tracker.ack(opaque as u32);
        }
    }

    fn give_up(&mut self, opaque: usize, e: &KafkaError, bytes: usize) {
        self.stats.lost += 1;
        if let Some(src) = self.slot_source(opaque) {
            src.metrics.lines_lost.fetch_add(1, Ordering::Relaxed);
            src.metrics.lose(Loss::TooLarge, bytes as u64);
        }
        error!(
            "a {bytes}-byte line of {} can never be delivered ({e}); skipped and counted as lost. \
             Raise the topic's max.message.bytes or lower agent.max_line_bytes",
            self.slot_path(opaque)
        );
        self.ack(opaque);
    }

    /// Moves acknowledged watermarks into the registry and writes it to disk.
    fn checkpoint(&mut self) {
        let mut reg = lock(&self.registry);
        let mut active = Vec::new();
        for i in 0..self.slots.len() {
            let Some(s) = self.slots[i].as_mut() else {
                continue;
            };
            let src = &s.source;
            if let Some(off) = s.tracker.take_commit() {
                reg.commit(src.file, src.id, &src.path, s.fingerprint, off);
            }
            let (lines, bytes) = s.tracker.take_acked();
            if lines > 0 {
                let m = &src.metrics;
                m.lines_acked.fetch_add(lines, Ordering::Relaxed);
                m.bytes_acked.fetch_add(bytes, Ordering::Relaxed);
                m.last_ack_ms.store(unix_ms(), Ordering::Relaxed);
            }
            active.push(src.file);
            // The tailer has moved on (strong count 1: only we hold it) and all is acked.
            if s.tracker.in_flight() == 0 && Arc::strong_count(&s.source) == 1 {
                let id = s.source.id;
                self.slots[i] = None;
                self.free_slots.push(i as u32);
                self.slot_of.remove(&id);
            }
        }
        let retention = self.cfg.agent.registry_retention_hours * 3600;
        let prune_due = self
            .last_prune
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        let pruned = if prune_due {
            self.last_prune = Some(Instant::now());
            reg.prune(&active, retention, unix_now())
        } else {
            0
        };
        if pruned > 0 {
            info!(
                "registry: forgot {pruned} files not seen for {} hours",
                self.cfg.agent.registry_retention_hours
            );
        }
        match reg.save() {
            Ok(_) => self.last_save_error = None,
            Err(e) => {
                if self
                    .last_save_error
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                {
                    error!("cannot write checkpoint: {e}; will retry");
                    self.last_save_error = Some(Instant::now());
                }
            }
        }
    }
}

/// Whether Kafka will never take this record, however often it is sent.
fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}

/// The headers every record carries, for consumers that de-duplicate: `host`, `path`,
/// and `offset` (where the line starts in its file, in decimal).
pub fn record_headers(host: &str, path: &str, offset: u64) -> OwnedHeaders {
    let mut buf = [0u8; 20];
    let off = fmt_u64(offset, &mut buf);
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: "host",
            value: Some(host),
        })
        .insert(Header {
            key: "path",
            value: Some(path),
        })
        .insert(Header {
            key: "offset",
            value: Some(off),
        })
}

/// Decimal digits of `v` without allocating.
fn fmt_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
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

    #[test]
    fn security_maps_to_librdkafka_settings() {
        let yaml = "kafka:\n  brokers: [b:1]\n  security:\n    protocol: sasl_plaintext\n    sasl_mechanism: PLAIN\n    username: u\n    password: p\n";
        let cfg = Config::parse(yaml, std::path::Path::new("t.yaml")).unwrap();
        let c = client_config(&cfg).unwrap();
        assert_eq!(c.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(c.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(c.get("sasl.username"), Some("u"));
        assert_eq!(c.get("sasl.password"), Some("p"));
        assert_eq!(c.get("message.timeout.ms"), Some("0"));
        let plain =
            Config::parse("kafka:\n  brokers: [b:1]\n", std::path::Path::new("t.yaml")).unwrap();
        let c = client_config(&plain).unwrap();
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("sasl.password"), None);
    }

    #[test]
    fn tls_without_openssl_is_a_clear_config_error() {
        let yaml = "kafka:\n  brokers: [b:1]\n  security:\n    protocol: sasl_ssl\n    sasl_mechanism: SCRAM-SHA-512\n    username: u\n";
        let r = Config::parse(yaml, std::path::Path::new("t.yaml"));
        if crate::config::KAFKA_TLS_BUILT_IN {
            assert!(r.is_ok());
        } else {
            assert!(r.unwrap_err().to_string().contains("--features tls"));
        }
    }

    #[test]
    fn offsets_format_in_decimal() {
        let mut b = [0u8; 20];
        assert_eq!(fmt_u64(0, &mut b), b"0");
        assert_eq!(fmt_u64(1234567, &mut b), b"1234567");
        assert_eq!(fmt_u64(u64::MAX, &mut b), b"18446744073709551615");
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
