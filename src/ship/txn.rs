//! Exactly-once delivery (`kafka.delivery: exactly_once`): what the producer sends goes
//! out in Kafka transactions, and each transaction also carries, for every file whose
//! acknowledged offset moved, one record in a compacted offsets topic saying where the
//! file stands. Lines and offsets become visible to read_committed consumers together or
//! not at all; a crash aborts the open transaction and the restarted agent resumes each
//! file at its committed offset. This is how Kafka Connect makes source connectors
//! exactly-once (KIP-618); a file tailer is a source connector.
//!
//! This module owns the transactional id, the offset records (key, partition, value),
//! the start (offsets topic checked, `init_transactions`, committed offsets read with
//! `isolation.level=read_committed`) and the commit cycle. Its pure parts (the id, the
//! key and partition, the value, what changed since the last commit) have unit tests.
//!
//! Failure paths: a record of the open transaction that Kafka refuses, or a commit
//! that needs an abort (the brokers aborted it after `transaction.timeout.ms`, during a
//! long outage), aborts the transaction and starts the agent again in place (same pid;
//! what was sent in it is read again from the committed offsets). Another agent with
//! the same transactional id fences this one: it exits 4, and the unit does not restart
//! it (`RestartPreventExitStatus`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Config;
use crate::registry::{Checkpoint, FileId};
use crate::stop::StopToken;

use super::kafka::lock;
use super::*;

/// The exit code of an agent fenced by another with its transactional id.
pub const EXIT_FENCED: i32 = 4;

/// The delivery id of offset records (no slot has this index).
pub const OFFSETS_OPAQUE: usize = usize::MAX;

/// Why exactly-once delivery cannot start.
#[derive(Debug, Error)]
pub enum TxnError {
    /// Another agent took the transactional id.
    #[error("another agent uses transactional.id {0:?} (this one is fenced); two agents must not share kafka.transactions.id")]
    Fenced(String),
    /// Stopped while waiting for Kafka.
    #[error("stopped while waiting for Kafka")]
    Stopped,
    /// Anything else the brokers or librdkafka said, in words.
    #[error("{0}")]
    Kafka(String),
}

/// FNV-1a (64 bit): stable across Rust versions and platforms, unlike `DefaultHasher`;
/// what the transactional id and the offsets partition are derived with.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The transactional id: `kafka.transactions.id`, else `logagent-<host>-<8 hex digits of
/// the data_dir's path>`: stable across restarts and upgrades, distinct for two agents
/// on one host (each has its own data_dir, which the lock in it enforces).
pub fn transactional_id(configured: Option<&str>, host: &str, data_dir: &str) -> String {
    match configured {
        Some(id) => id.to_owned(),
        None => format!(
            "logagent-{host}-{:08x}",
            fnv1a(data_dir.as_bytes()) & 0xffff_ffff
        ),
    }
}

/// The partition of the offsets topic holding one agent's offsets: all of them in one
/// partition, so a start reads only that one.
pub fn partition_for(id: &str, partitions: usize) -> i32 {
    (fnv1a(id.as_bytes()) % partitions.max(1) as u64) as i32
}

/// The key of a file's offset record: `<transactional id>/<device>/<inode>`.
pub fn offset_key(id: &str, file: FileId) -> String {
    format!("{id}/{}/{}", file.dev, file.ino)
}

/// The file of an offset record of agent `id` (`None`: another agent's, or not ours).
pub fn parse_key(id: &str, key: &[u8]) -> Option<FileId> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(id)?.strip_prefix('/')?;
    let (dev, ino) = rest.split_once('/')?;
    Some(FileId {
        dev: dev.parse().ok()?,
        ino: ino.parse().ok()?,
    })
}

/// The value of an offset record: the file's ledger entry as committed.
#[derive(Debug, Serialize, Deserialize)]
struct OffsetValue {
    /// Format version (1).
    v: u32,
    entry: Checkpoint,
}

/// An offset record's value for `entry`.
pub fn offset_value(entry: &Checkpoint) -> Vec<u8> {
    // Serializing a plain struct of strings and numbers cannot fail.
    serde_json::to_vec(&OffsetValue {
        v: 1,
        entry: entry.clone(),
    })
    .unwrap_or_default()
}

/// The ledger entry of an offset record's value (`None`: another format).
pub fn parse_value(value: &[u8]) -> Option<Checkpoint> {
    let v: OffsetValue = serde_json::from_slice(value).ok()?;
    (v.v == 1).then_some(v.entry)
}

/// What to write in the next transaction: files whose entry differs from what was
/// committed last (`Some(value)`), and files committed before that the ledger no longer
/// has (`None`: a tombstone, so compaction drops them).
pub fn changes(
    committed: &HashMap<FileId, Vec<u8>>,
    now: &HashMap<FileId, Vec<u8>>,
) -> Vec<(FileId, Option<Vec<u8>>)> {
    let mut out: Vec<(FileId, Option<Vec<u8>>)> = now
        .iter()
        .filter(|(id, v)| committed.get(id) != Some(v))
        .map(|(id, v)| (*id, Some(v.clone())))
        .collect();
    out.extend(
        committed
            .keys()
            .filter(|id| !now.contains_key(id))
            .map(|id| (*id, None)),
    );
    out.sort_by_key(|(id, _)| (id.dev, id.ino));
    out
}

/// The open transaction and what the offsets topic holds.
pub struct Txn {
    /// The transactional id.
    pub id: String,
    topic: String,
    partition: i32,
    commit_every: Duration,
    max_records: u64,
    timeout: Duration,
    /// Data records sent in the open transaction.
    pub records: u64,
    /// When the open transaction began.
    began: Instant,
    /// Why the open transaction can only be aborted (a record of it was refused).
    pub doomed: Option<String>,
    /// Each file's offset record value as last committed (what the topic holds).
    committed: HashMap<FileId, Vec<u8>>,
    /// The last commit that could not complete (said once until one does).
    failing: bool,
}

impl Txn {
    /// Whether the open transaction is due for a commit (time or size).
    pub fn due(&self) -> bool {
        self.records >= self.max_records
            || (self.records > 0 && self.began.elapsed() >= self.commit_every)
    }

    /// The commit interval.
    pub fn commit_every(&self) -> Duration {
        self.commit_every
    }
}

/// The client settings without the producer's own (for the admin client and the
/// offsets reader): bootstrap, security and `kafka.properties` of those kinds.
fn connection_config(client: &ClientConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in client.config_map() {
        let connection = k == "bootstrap.servers"
            || k == "client.id"
            || k.starts_with("security.")
            || k.starts_with("ssl.")
            || k.starts_with("sasl.")
            || k.starts_with("socket.")
            || k.starts_with("broker.")
            || k.starts_with("reconnect.");
        if connection {
            c.set(k, v);
        }
    }
    c
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks that the offsets topic exists and is compacted; creates it (compacted) when
/// missing and the brokers let the agent. `Err`: what the operator must do.
fn ensure_offsets_topic(cfg: &Config, client: &ClientConfig) -> Result<usize, String> {
    let topic = &cfg.kafka.transactions.offsets_topic;
    let admin: AdminClient<DefaultClientContext> = connection_config(client)
        .create()
        .map_err(|e| format!("cannot create the Kafka admin client: {e}"))?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let partitions = |admin: &AdminClient<DefaultClientContext>| -> Result<usize, String> {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .map_err(|e| format!("cannot read the brokers' metadata: {e}"))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len())
            .sum())
    };
    let mut n = partitions(&admin)?;
    if n == 0 {
        let (p, r) = cfg
            .kafka
            .create_topics
            .map_or((1, -1), |c| (c.partitions, c.replication_factor));
        let new =
            NewTopic::new(topic, p, TopicReplication::Fixed(r)).set("cleanup.policy", "compact");
        let res = futures_executor::block_on(admin.create_topics([&new], &opts))
            .map_err(|e| format!("cannot create it: {e}"))?;
        match res.into_iter().next() {
            Some(Ok(_)) => info!("created the offsets topic {topic} ({p} partitions, cleanup.policy=compact)"),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {}
            Some(Err((_, code))) => {
                return Err(format!(
                    "it does not exist and the agent may not create it ({code}): create it with `kafka-topics.sh --create --topic {topic} --config cleanup.policy=compact` (replication as your other topics), or grant the agent Create on it"
                ))
            }
            None => return Err("it does not exist and creating it said nothing".into()),
        }
        n = partitions(&admin)?.max(p as usize);
    }
    let res = futures_executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts),
    )
    .map_err(|e| format!("cannot read its cleanup.policy: {e}"))?;
    let policy = res
        .into_iter()
        .next()
        .and_then(|r| r.ok())
        .and_then(|r| r.get("cleanup.policy").and_then(|e| e.value.clone()));
    match policy {
        Some(p) if p.split(',').any(|x| x.trim() == "compact") => Ok(n),
        Some(p) => Err(format!(
            "its cleanup.policy is {p}, not compact: offsets older than its retention would be deleted and files read again; set it with `kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact`"
        )),
        None => Err("cannot read its cleanup.policy (DescribeConfigs refused?): grant the agent DescribeConfigs on it".into()),
    }
}

/// Whether a transactional error means another producer took the id.
pub(super) fn fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
    )
}

/// Reads every committed offset record of agent `id` from its partition of the offsets
/// topic (read_committed, up to the partition's end as it was when called).
fn read_committed_offsets(
    client: &ClientConfig,
    topic: &str,
    partition: i32,
    id: &str,
    timeout: Duration,
) -> Result<HashMap<FileId, (Checkpoint, Vec<u8>)>, String> {
    let consumer: BaseConsumer = connection_config(client)
        .set("group.id", "logagent-offsets-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("fetch.message.max.bytes", "8000000")
        .create()
        .map_err(|e| format!("cannot create the offsets reader: {e}"))?;
    let (_, high) = consumer
        .fetch_watermarks(topic, partition, ADMIN_TIMEOUT)
        .map_err(|e| format!("cannot read the end of {topic}[{partition}]: {e}"))?;
    let mut out = HashMap::new();
    if high <= 0 {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "{topic}[{partition}] was not read to its end ({high}) within {} s (a transaction of another agent open that long?)",
                timeout.as_secs()
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let Some(file) = m.key().and_then(|k| parse_key(id, k)) else {
                    continue;
                };
                match m.payload() {
                    None => {
                        out.remove(&file);
                    }
                    Some(v) => match parse_value(v) {
                        Some(cp) => {
                            out.insert(file, (cp, v.to_vec()));
                        }
                        None => warn!(
                            "offsets topic {topic}: the record at offset {} is not an offset record this version reads; ignored",
                            m.offset()
                        ),
                    },
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {
                // Past the last stable offset: every committed record is read (the
                // position is beyond aborted records and commit markers too).
                let pos = consumer.position().ok().and_then(|p| {
                    p.find_partition(topic, partition)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                });
                if pos.is_some_and(|p| p >= high) {
                    return Ok(out);
                }
            }
            Some(Err(e)) => return Err(format!("reading {topic}[{partition}]: {e}")),
        }
    }
}

/// Retries `f` every `every` until it succeeds or `stop` fires; the error is said once,
/// then once a minute while it lasts.
fn until_ok<T>(
    what: &str,
    stop: &StopToken,
    every: Duration,
    mut f: impl FnMut() -> Result<T, TxnError>,
) -> Result<T, TxnError> {
    let mut said: Option<Instant> = None;
    loop {
        match f() {
            Ok(v) => {
                if said.is_some() {
                    info!("{what}: done");
                }
                return Ok(v);
            }
            Err(e @ TxnError::Fenced(_)) => return Err(e),
            Err(e) => {
                if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    error!(
                        "{what}: {e}; nothing is shipped until this works, trying again every {} s",
                        every.as_secs().max(1)
                    );
                    said = Some(Instant::now());
                }
            }
        }
        if stop.sleep(every) {
            return Err(TxnError::Stopped);
        }
    }
}

impl ProducerLoop {
    /// Starts exactly-once delivery: the offsets topic checked (created if missing),
    /// the transactional producer registered with the brokers (which aborts what an
    /// earlier run left open, and fences an older agent with the id), the committed
    /// offsets read, and the first transaction begun. Returns the committed ledger
    /// entries (the caller lets them win over the local registry). Waits for Kafka
    /// until `stop` fires.
    pub fn start_transactions(&mut self, stop: &StopToken) -> Result<Vec<Checkpoint>, TxnError> {
        let cfg = self.cfg.clone();
        let t = &cfg.kafka.transactions;
        let id = transactional_id(
            t.id.as_deref(),
            &self.hostname,
            &cfg.agent.data_dir.to_string_lossy(),
        );
        let client = self.base_client.clone();
        let every = Duration::from_millis(cfg.kafka.entry_retry_ms).min(Duration::from_secs(5));
        let topic = t.offsets_topic.clone();
        let partitions = until_ok(&format!("offsets topic {topic}"), stop, every, || {
            ensure_offsets_topic(&cfg, &client).map_err(TxnError::Kafka)
        })?;
        let partition = partition_for(&id, partitions);
        let timeout = Duration::from_millis(t.timeout_ms);
        until_ok(
            "registering the transactional producer",
            stop,
            every,
            || match self.producer.init_transactions(timeout) {
                Ok(()) => Ok(()),
                Err(e) if fenced(&e) => Err(TxnError::Fenced(id.clone())),
                Err(e) => Err(TxnError::Kafka(format!("init_transactions: {e}"))),
            },
        )?;
        let committed = until_ok(
            &format!("reading the committed offsets from {topic}"),
            stop,
            every,
            || {
                read_committed_offsets(&client, &topic, partition, &id, timeout)
                    .map_err(TxnError::Kafka)
            },
        )?;
        self.producer
            .begin_transaction()
            .map_err(|e| TxnError::Kafka(format!("begin_transaction: {e}")))?;
        info!(
            "exactly-once delivery: transactional.id {id}, offsets in {topic}[{partition}] ({} files committed), a transaction committed every {} ms or {} records",
            committed.len(),
            t.commit_interval_ms,
            t.commit_max_records
        );
        let entries = committed.values().map(|(cp, _)| cp.clone()).collect();
        self.txn = Some(Txn {
            id,
            topic,
            partition,
            commit_every: Duration::from_millis(t.commit_interval_ms),
            max_records: t.commit_max_records,
            timeout,
            records: 0,
            began: Instant::now(),
            doomed: None,
            committed: committed.into_iter().map(|(k, (_, v))| (k, v)).collect(),
            failing: false,
        });
        Ok(entries)
    }

    /// Commits the open transaction: every record of it acknowledged (flushed), the
    /// acknowledged offsets moved into the registry, one offset record per file whose
    /// entry changed written in it, then the commit; only then is the registry written
    /// to disk, and the next transaction begins. False if it could not commit now (Kafka
    /// away: the transaction stays open and is tried again at the next interval). An
    /// abort starts the agent again; fencing ends it.
    pub(super) fn commit_transaction(&mut self) -> bool {
        let Some(txn) = self.txn.as_ref() else {
            return true;
        };
        let timeout = txn.timeout;
        if let Some(why) = txn.doomed.clone() {
            self.abort_and_restart(&why);
        }
        // Every record of the transaction acknowledged: the watermarks are final. Serving
        // the reports can send more (a probe acknowledged releases what its file held):
        // those would be committed with this transaction while their offsets are not,
        // so flush again until nothing is in flight.
        let deadline = Instant::now() + timeout.min(Duration::from_secs(10));
        if !self.drain_until(deadline) {
            self.commit_failed(&format!(
                "not every record of it was acknowledged within {} ms",
                timeout.min(Duration::from_secs(10)).as_millis()
            ));
            return false;
        }
        if let Some(why) = self.txn.as_ref().and_then(|t| t.doomed.clone()) {
            self.abort_and_restart(&why);
        }
        // Acknowledged offsets into the registry (in memory; not written to disk until
        // the transaction is committed).
        lock(&self.registry).hold_saves(true);
        self.checkpointer.apply(&self.registry, &mut self.slots);
        let now: HashMap<FileId, Vec<u8>> = lock(&self.registry)
            .entries()
            .map(|cp| (cp.id, offset_value(cp)))
            .collect();
        let Some(txn) = self.txn.as_mut() else {
            return true;
        };
        let changes = changes(&txn.committed, &now);
        if txn.records == 0 && changes.is_empty() {
            txn.began = Instant::now();
            let mut reg = lock(&self.registry);
            reg.set_mirrors(Some(&txn.id));
            reg.hold_saves(false);
            return true;
        }
        for (file, value) in &changes {
            let key = offset_key(&txn.id, *file);
            let mut rec =
                BaseRecord::<str, [u8], usize>::with_opaque_to(&txn.topic, OFFSETS_OPAQUE)
                    .key(key.as_str())
                    .partition(txn.partition);
            if let Some(v) = value {
                rec = rec.payload(&v[..]);
            }
            if let Err((e, _)) = self.producer.send(rec) {
                let why = format!("an offset record was refused: {e}");
                self.abort_and_restart(&why);
            }
        }
        // The offset records acknowledged first: commit_transaction's own flush would
        // then find nothing to wait for (see `drain_until`).
        self.drain_until(Instant::now() + timeout.min(Duration::from_secs(10)));
        match self.producer.commit_transaction(timeout) {
            Ok(()) => {}
            Err(e) if fenced(&e) => self.exit_fenced(&e),
            Err(KafkaError::Transaction(t)) if t.txn_requires_abort() => {
                self.abort_and_restart(&format!("the commit failed: {t}"));
            }
            Err(KafkaError::Transaction(t)) if t.is_fatal() => {
                self.abort_and_restart(&format!("the commit failed fatally: {t}"));
            }
            Err(e) => {
                // Retriable (a timeout): the transaction stays open; offsets stay in
                // memory, not on disk; tried again next interval.
                self.commit_failed(&format!("the commit did not complete ({e})"));
                return false;
            }
        }
        self.serve();
        let Some(txn) = self.txn.as_mut() else {
            return true;
        };
        for (file, value) in changes {
            match value {
                Some(v) => txn.committed.insert(file, v),
                None => txn.committed.remove(&file),
            };
        }
        txn.records = 0;
        txn.began = Instant::now();
        if std::mem::take(&mut txn.failing) {
            info!("transactions commit again");
        }
        self.metrics
            .transactions_committed
            .fetch_add(1, Ordering::Relaxed);
        crate::restart::committed();
        let mut reg = lock(&self.registry);
        reg.set_mirrors(Some(&txn.id));
        reg.hold_saves(false);
        drop(reg);
        if let Err(e) = self.producer.begin_transaction() {
            self.abort_and_restart(&format!("cannot begin the next transaction: {e}"));
        }
        true
    }

    /// The transactional id (`None` before [`ProducerLoop::start_transactions`]).
    pub fn transactional_id(&self) -> Option<&str> {
        self.txn.as_ref().map(|t| t.id.as_str())
    }

    /// At start, before any tailer: commits the registry's entries where they differ
    /// from the offsets topic (after a spell of `at_least_once`, the local ones are
    /// newer) and writes the registry, marked as mirroring the topic. Until then a
    /// restart still finds it unmarked and lets it win again.
    pub fn commit_at_start(&mut self) {
        self.checkpoint();
    }

    /// Serves delivery reports until librdkafka holds nothing (true) or `deadline`
    /// passes. Serving can send more (a probe acknowledged releases what its file held),
    /// so it waits for those too. Not `BaseProducer::flush`: rdkafka 0.38's timed
    /// `poll` inside it always waits its whole 100 ms, which made each commit cost
    /// 200–300 ms (measured: at a 100 ms commit interval 40,000 lines/s and a p50
    /// latency of 507 ms).
    fn drain_until(&mut self, deadline: Instant) -> bool {
        loop {
            self.serve();
            if self.in_flight() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn commit_failed(&mut self, why: &str) {
        if let Some(t) = self.txn.as_mut() {
            if !t.failing {
                t.failing = true;
                warn!("cannot commit the transaction now: {why}; it stays open and is tried again (the brokers abort it after kafka.transactions.timeout_ms, {} ms: then the agent starts again from the committed offsets)", t.timeout.as_millis());
            }
        }
    }

    /// Aborts the open transaction (nothing of it becomes visible to read_committed
    /// consumers) and starts the agent again in place: the files are read again from
    /// their committed offsets. Never returns.
    pub(super) fn abort_and_restart(&mut self, why: &str) -> ! {
        warn!("aborting the open transaction: {why}; nothing of it is visible to read_committed consumers; starting again from the committed offsets");
        if let Err(e) = self.producer.abort_transaction(Duration::from_secs(10)) {
            if fenced(&e) {
                self.exit_fenced(&e);
            }
            warn!("abort_transaction: {e} (the brokers abort it themselves after kafka.transactions.timeout_ms)");
        }
        // Aborts in a row (a record Kafka refuses for good aborts every transaction
        // that carries it): wait a little longer each time, up to 30 s; a commit in
        // between starts the count again.
        let wait = Duration::from_secs(crate::restart::restarts_in_a_row().min(30));
        if self
            .shutdown
            .as_ref()
            .is_some_and(|s| s.sleep(wait) || s.is_stopped())
        {
            info!("stopping (asked while restarting): the committed offsets are on disk");
            std::process::exit(0);
        }
        let err = crate::restart::exec_self(true);
        error!("cannot start again in place: {err}; exiting 1 (the service manager restarts the agent)");
        std::process::exit(1);
    }

    /// Another agent took the transactional id: its transactions win; this one stops
    /// for good (exit 4, not restarted by the unit: two agents would fence each other
    /// in turn).
    pub(super) fn exit_fenced(&mut self, e: &KafkaError) -> ! {
        let id = self.txn.as_ref().map_or("?", |t| t.id.as_str());
        error!("{}; ({e}); exiting {EXIT_FENCED}: nothing of this agent's open transaction is visible, the other agent ships from the committed offsets", TxnError::Fenced(id.to_owned()));
        std::process::exit(EXIT_FENCED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{FileState, Fingerprint};

    fn entry(ino: u64, offset: u64) -> Checkpoint {
        Checkpoint {
            path: "/var/log/a.log".into(),
            id: FileId { dev: 8, ino },
            fingerprint: Fingerprint::of(b"abc"),
            offset,
            updated: 1,
            state: FileState::Live,
            name: None,
            size: 0,
            born: None,
            truncated_at: None,
            empty_mtime_ns: None,
        }
    }

    #[test]
    fn the_default_id_is_stable_and_differs_by_data_dir() {
        let a = transactional_id(None, "web1", "/var/lib/logagent");
        assert_eq!(a, transactional_id(None, "web1", "/var/lib/logagent"));
        assert_eq!(a, "logagent-web1-".to_owned() + &a[14..]);
        assert_eq!(a.len(), "logagent-web1-".len() + 8);
        assert_ne!(a, transactional_id(None, "web1", "/var/lib/logagent2"));
        assert_eq!(transactional_id(Some("x"), "web1", "/d"), "x");
        // FNV-1a test vector: the id must not change with the compiler.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn keys_round_trip_and_other_agents_keys_are_not_ours() {
        let f = FileId { dev: 2049, ino: 77 };
        let k = offset_key("logagent-web1-0a0b0c0d", f);
        assert_eq!(parse_key("logagent-web1-0a0b0c0d", k.as_bytes()), Some(f));
        assert_eq!(parse_key("logagent-web1", k.as_bytes()), None);
        assert_eq!(parse_key("logagent-web1-0a0b0c0d", b"garbage"), None);
        assert_eq!(parse_key("a", b"a/1/x"), None);
    }

    #[test]
    fn partitions_spread_and_stay_put() {
        assert_eq!(partition_for("x", 1), 0);
        let p = partition_for("logagent-web1-0a0b0c0d", 12);
        assert!((0..12).contains(&p));
        assert_eq!(p, partition_for("logagent-web1-0a0b0c0d", 12));
        assert_eq!(partition_for("x", 0), 0);
    }

    #[test]
    fn values_round_trip_and_unknown_versions_are_refused() {
        let e = entry(1, 42);
        assert_eq!(parse_value(&offset_value(&e)), Some(e));
        assert_eq!(parse_value(br#"{"v":2,"entry":{}}"#), None);
        assert_eq!(parse_value(b"not json"), None);
    }

    #[test]
    fn changes_are_the_moved_entries_and_tombstones_for_the_forgotten() {
        let v = |o| offset_value(&entry(1, o));
        let w = |o| offset_value(&entry(2, o));
        let committed: HashMap<_, _> = [(entry(1, 0).id, v(10)), (entry(2, 0).id, w(5))].into();
        let same = committed.clone();
        assert!(changes(&committed, &same).is_empty());
        let now: HashMap<_, _> = [(entry(1, 0).id, v(20))].into();
        assert_eq!(
            changes(&committed, &now),
            vec![(entry(1, 0).id, Some(v(20))), (entry(2, 0).id, None)]
        );
        let new: HashMap<_, _> = [(entry(3, 0).id, v(1))].into();
        assert_eq!(changes(&HashMap::new(), &new).len(), 1);
    }
}
