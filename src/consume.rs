//! `logagent consume`: a console consumer for checking what arrived, like the classic
//! `kafka-console-consumer`, but by partition assignment (no consumer group, no commits).

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use thiserror::Error;

/// What to read.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Bootstrap brokers, comma separated.
    pub brokers: String,
    /// Topic to read.
    pub topic: String,
    /// Start at the oldest record instead of the newest.
    pub from_beginning: bool,
    /// Only this partition.
    pub partition: Option<i32>,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Stop when nothing arrived for this long.
    pub idle_timeout: Option<Duration>,
    /// Only records of committed transactions (`isolation.level=read_committed`);
    /// otherwise aborted ones too (`read_uncommitted`, the Java consumer's default).
    pub read_committed: bool,
}

/// Why consuming failed.
#[derive(Debug, Error)]
pub enum ConsumeError {
    /// Client creation, metadata or fetch error.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The topic is not known to the broker.
    #[error("topic {0:?} does not exist (or has no partitions)")]
    NoTopic(String),
    /// Writing to stdout failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

/// Assigns every partition of `topic` (or only `only`) to `consumer`, starting at
/// `start`: reading by assignment, with no consumer group and nothing committed.
/// Returns how many partitions were assigned.
pub fn assign_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    only: Option<i32>,
    start: Offset,
) -> Result<usize, ConsumeError> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .filter(|p| only.is_none_or(|want| want == *p))
        .collect();
    if parts.is_empty() {
        return Err(ConsumeError::NoTopic(topic.to_owned()));
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &parts {
        tpl.add_partition_offset(topic, p, start)?;
    }
    consumer.assign(&tpl)?;
    Ok(parts.len())
}

/// Prints `partition offset key value` per record to `out`; returns how many were printed.
pub fn consume(opts: &ConsumeOptions, out: &mut impl Write) -> Result<u64, ConsumeError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set("group.id", "logagent-consume")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set(
            "isolation.level",
            if opts.read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()?;
    let start = if opts.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    assign_partitions(&consumer, &opts.topic, opts.partition, start)?;
    let mut n = 0u64;
    let mut last = Instant::now();
    loop {
        if opts.count.is_some_and(|c| n >= c) {
            break;
        }
        if opts.idle_timeout.is_some_and(|t| last.elapsed() >= t) {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                write!(out, "{} {} ", m.partition(), m.offset())?;
                out.write_all(m.key().unwrap_or(b"null"))?;
                out.write_all(b" ")?;
                out.write_all(m.payload().unwrap_or_default())?;
                out.write_all(b"\n")?;
                n += 1;
                last = Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            None => out.flush()?,
        }
    }
    out.flush()?;
    Ok(n)
}
