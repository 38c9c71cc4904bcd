//! The producer thread: drains the channel, hands records to librdkafka (`BaseProducer`,
//! polled on this thread), tracks which lines Kafka acknowledged, holds back the records
//! of sources Kafka refuses, and commits per-file watermarks to the registry.
//!
//! Its parts: [`kafka`] (client settings, delivery reports, headers, what an error
//! means), [`watermark`] (the acknowledged prefix of one file generation), [`slots`]
//! (the table of sources and their delivery ids), [`flow`] (hold and probe while Kafka
//! refuses a source), [`partition`], [`topics`] (missing topics, `create_topics`) and
//! [`checkpoint`] (the registry writes). The loop's own methods live by job: `send`
//! (chunks to records to librdkafka), `hold` (refused sources: hold, probe, release,
//! error classes, too-large drops), `deliver` (delivery reports to watermarks, the
//! checkpoint, topic and refusal rechecks). This file is the loop that ties them
//! together: its state, `run`, housekeeping and the shutdown; the housekeeping's
//! decisions (when a checkpoint is due, the shutdown deadline, what is lost at exit) are
//! small pure functions at its end.
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
mod deliver;
pub mod flow;
mod hold;
pub mod kafka;
pub mod oauth;
pub mod partition;
mod send;
pub mod slots;
pub mod topics;
pub mod txn;
pub mod watermark;

#[cfg(test)]
mod testkit;

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
    /// `kafka.delivery: exactly_once`: the open transaction (see [`txn`]); set by
    /// [`ProducerLoop::start_transactions`].
    txn: Option<txn::Txn>,
    /// The client settings without the transactional ones (admin client, offsets
    /// reader).
    base_client: rdkafka::config::ClientConfig,
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
        let mut producer_client = client.clone();
        if cfg.kafka.delivery == crate::config::Delivery::ExactlyOnce {
            let t = &cfg.kafka.transactions;
            let id = txn::transactional_id(
                t.id.as_deref(),
                &hostname,
                &cfg.agent.data_dir.to_string_lossy(),
            );
            // A record may wait for Kafka as long as its transaction may stay open (not
            // for ever, as at_least_once's 0 says: the brokers abort it by then).
            producer_client
                .set("transactional.id", id)
                .set("transaction.timeout.ms", t.timeout_ms.to_string())
                .set("message.timeout.ms", t.timeout_ms.to_string());
        }
        let producer: BaseProducer<Context> = producer_client
            .create_with_context(context)
            .map_err(|e| ProducerError::Create(kafka::config_refused(&e, &producer_client)))?;
        let base_client = client.clone();
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
            txn: None,
            base_client,
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
            match rx.recv_timeout(recv_wait(self.in_flight())) {
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
        let stopped = self.shutdown.as_ref().is_some_and(|s| s.is_stopped());
        let grace = Duration::from_millis(self.cfg.agent.shutdown_timeout_ms);
        let (deadline, due) = shutdown_deadline(self.deadline, stopped, Instant::now(), grace);
        self.deadline = deadline;
        due
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
                per_sec(read, last.1, secs),
                per_sec(acked, last.2, secs),
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
        if let Some(why) = self.txn.as_ref().and_then(|t| t.doomed.clone()) {
            self.abort_and_restart(&why);
        }
        let due = checkpoint_due(
            now,
            self.timers.checkpoint,
            self.timers.last_checkpoint,
            || lock(&self.registry).save_soon() || self.txn.as_ref().is_some_and(txn::Txn::due),
        );
        if due {
            self.timers.last_checkpoint = now;
            self.checkpoint();
            self.timers.checkpoint = now
                + self.txn.as_ref().map_or(
                    Duration::from_millis(self.cfg.agent.checkpoint_interval_ms),
                    txn::Txn::commit_every,
                );
        }
        if now >= self.timers.refusal_check && self.deadline.is_none() {
            self.timers.refusal_check = now + REFUSAL_CHECK;
            self.recheck_refusal();
        }
        if now >= self.timers.stall_watch {
            let warn_after = Duration::from_millis(self.cfg.agent.stall_warn_ms);
            self.metrics.watch_stalls(&self.registry, warn_after);
            self.timers.stall_watch = now + stall_watch_every(warn_after);
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
            let bytes = lost_at_exit(s);
            if bytes > 0 {
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
}

/// How long the loop waits for a chunk: briefly while librdkafka holds records (their
/// reports are served between waits), longer when idle.
fn recv_wait(in_flight: usize) -> Duration {
    if in_flight > 0 {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(100)
    }
}

/// The shutdown's deadline after a look at `now` (the first look that finds the agent
/// `stopped` sets it `grace` later), and whether it has passed.
fn shutdown_deadline(
    deadline: Option<Instant>,
    stopped: bool,
    now: Instant,
    grace: Duration,
) -> (Option<Instant>, bool) {
    let deadline = match deadline {
        None if stopped => Some(now + grace),
        d => d,
    };
    (deadline, deadline.is_some_and(|d| now >= d))
}

/// Whether the checkpoint is due at `now`: its interval is over (`next`), or the
/// registry (or the open transaction) wants an early one (`urgent`, asked only once
/// [`SAVE_SOON`] passed since the `last` one: it takes the registry lock).
fn checkpoint_due(
    now: Instant,
    next: Instant,
    last: Instant,
    urgent: impl FnOnce() -> bool,
) -> bool {
    let soon = now >= last + SAVE_SOON && urgent();
    now >= next || soon
}

/// How often the stall watch looks: a twelfth of the warning time, 1 to 5 s (it looks up
/// every followed file's offset under the registry lock; the sizes come from the
/// tailers, no file is looked at on this thread).
fn stall_watch_every(warn_after: Duration) -> Duration {
    (warn_after / 12).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// A rate for the stats line: the counter's growth since `before` over `secs` (a counter
/// that went down, files retired meanwhile, counts as no growth).
fn per_sec(now: u64, before: u64, secs: f64) -> f64 {
    (now - before.min(now)) as f64 / secs
}

/// File bytes held for a slot that are lost when the agent stops now: held for a file no
/// reader has open any more and that was gone from disk when its reader let go (after
/// the restart nobody can read those lines again); 0 otherwise.
fn lost_at_exit(s: &slots::Slot) -> u64 {
    if s.reader_gone() && s.source.gone() {
        s.held_line_bytes()
    } else {
        0
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

#[cfg(test)]
mod tests {
    use super::testkit::{chunk, source};
    use super::*;
    use crate::chunk::Left;

    #[test]
    fn the_loop_waits_briefly_while_librdkafka_holds_records() {
        assert_eq!(recv_wait(0), Duration::from_millis(100));
        assert_eq!(recv_wait(1), Duration::from_millis(5));
    }

    #[test]
    fn the_shutdown_deadline_is_set_once_at_the_first_stop_seen() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        assert_eq!(shutdown_deadline(None, false, t0, grace), (None, false));
        let (d, due) = shutdown_deadline(None, true, t0, grace);
        assert_eq!((d, due), (Some(t0 + grace), false));
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            shutdown_deadline(d, true, later, grace),
            (Some(t0 + grace), false),
            "not pushed back by later looks"
        );
        assert_eq!(shutdown_deadline(d, true, t0 + grace, grace), (d, true));
        assert_eq!(
            shutdown_deadline(None, true, t0, Duration::ZERO),
            (Some(t0), true),
            "no grace: due at once"
        );
    }

    #[test]
    fn a_checkpoint_is_due_at_its_interval_or_early_when_urgent_but_not_twice_within_save_soon() {
        let t0 = Instant::now();
        let next = t0 + Duration::from_secs(5);
        let never = || -> bool { panic!("the registry is asked only after SAVE_SOON") };
        assert!(!checkpoint_due(t0, next, t0, || false));
        assert!(!checkpoint_due(t0 + SAVE_SOON / 2, next, t0, never));
        assert!(checkpoint_due(t0 + SAVE_SOON, next, t0, || true));
        assert!(!checkpoint_due(t0 + SAVE_SOON, next, t0, || false));
        assert!(
            checkpoint_due(next, next, next, || false),
            "the interval is over"
        );
    }

    #[test]
    fn the_stall_watch_looks_every_twelfth_of_the_warning_time_within_1_to_5_s() {
        let s = Duration::from_secs;
        assert_eq!(stall_watch_every(s(36)), s(3));
        assert_eq!(stall_watch_every(s(6)), s(1));
        assert_eq!(stall_watch_every(s(600)), s(5));
        assert_eq!(stall_watch_every(Duration::ZERO), s(1));
    }

    #[test]
    fn stats_rates_never_go_negative() {
        assert_eq!(per_sec(150, 50, 2.0), 50.0);
        assert_eq!(per_sec(10, 50, 2.0), 0.0, "counters retired meanwhile");
    }

    #[test]
    fn held_lines_are_lost_at_exit_only_when_their_file_is_gone_and_its_reader_let_go() {
        let (src, _stop) = source(1, "/l/a.log", 7, "t");
        let mut slots = Slots::default();
        let i = slots.slot_for(&chunk(&src, 0, 1));
        let held = chunk(&src, 100, 3);
        let s = slots.get_mut(i).unwrap();
        s.held.push_back(HeldLines {
            chunk: held,
            from: 1,
            seq: 1,
        });
        src.set_left(Left::Deleted);
        assert_eq!(lost_at_exit(s), 0, "its reader still has it");
        drop(src);
        assert_eq!(lost_at_exit(s), 4, "lines 1 and 2: 2 bytes each");
        s.source.set_left(Left::Reachable);
        assert_eq!(lost_at_exit(s), 0, "a new reader reads them again");
        s.source.set_left(Left::Unreachable);
        assert_eq!(lost_at_exit(s), 4);
    }

    #[test]
    fn a_record_s_size_counts_payload_key_headers_and_framing() {
        let r = Record {
            opaque: 0,
            key: Some(b"k".to_vec()),
            payload: b"hello".to_vec(),
            headers: Some(record_headers("h", "/p", 12)),
        };
        // 5 + 1 + host(4 + 1 + 2) + path(4 + 2 + 2) + offset(6 + 2 + 2) + 81
        assert_eq!(record_size(&r), 112);
        let bare = Record {
            opaque: 0,
            key: None,
            payload: Vec::new(),
            headers: None,
        };
        assert_eq!(record_size(&bare), 81);
    }
}
