//! Whether the topics the collect entries name exist: checked on the brokers at start and
//! whenever the wanted set changes, and (with `kafka.create_topics`) created.
//!
//! The config side ([`WantedTopics::set`], called by the supervisor) and the producer
//! side ([`Topics`], on the producer thread, which owns the Kafka client) meet in
//! [`WantedTopics`]: a versioned set, so the producer checks once per change.
//!
//! Creation uses librdkafka's admin API. Its calls return futures; they are waited for
//! with `futures_executor::block_on` (a small single-threaded executor), so there is
//! still no async runtime in the agent.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, Producer};

use crate::config::CreateTopics;

use super::kafka::{lock, Context};

/// How long one metadata request or topic creation may block the producer thread.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A held file's probe for its missing topic: short, it runs on the producer thread
/// while other files flow.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// After the brokers could not be asked, the next check waits this long (a config
/// change while Kafka is away must not stall the producer once per loop).
const RECHECK_AFTER: Duration = Duration::from_secs(10);

/// The topics the running entries send to, each with the paths that name it.
#[derive(Debug, Default)]
pub struct WantedTopics {
    inner: Mutex<(u64, BTreeMap<String, Vec<String>>)>,
}

impl WantedTopics {
    /// Replaces the wanted set; a different set gets a new version.
    pub fn set(&self, topics: BTreeMap<String, Vec<String>>) {
        let mut g = lock(&self.inner);
        if g.1 != topics {
            g.0 += 1;
            g.1 = topics;
        }
    }

    /// The set, if its version is not `seen`.
    fn changed_since(&self, seen: u64) -> Option<(u64, BTreeMap<String, Vec<String>>)> {
        let g = lock(&self.inner);
        (g.0 != seen).then(|| g.clone())
    }
}

/// What the brokers said about one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicState {
    /// It exists, with this many partitions.
    Exists(usize),
    /// The brokers say it does not exist (and did not create it on first use).
    Missing,
    /// The brokers could not be asked (away, timed out): nothing is concluded.
    Unknown,
}

/// The producer thread's view of which wanted topics are missing.
pub struct Topics {
    wanted: Arc<WantedTopics>,
    seen: u64,
    /// No check before this (the brokers did not answer the last one).
    not_before: Option<Instant>,
    /// Topics the brokers answered about at least once.
    checked: HashSet<String>,
    missing: HashSet<String>,
    create: Option<CreateTopics>,
    client_config: ClientConfig,
    admin: Option<AdminClient<DefaultClientContext>>,
    /// Shared with `/metrics` and the status document.
    report: Arc<Mutex<BTreeSet<String>>>,
    /// Each topic's `max.message.bytes`, as the brokers said it, and when.
    limits: std::collections::HashMap<String, (Option<u64>, Instant)>,
}

impl Topics {
    /// A checker for `wanted`; `create` is `kafka.create_topics`.
    pub fn new(
        wanted: Arc<WantedTopics>,
        create: Option<CreateTopics>,
        client_config: ClientConfig,
        report: Arc<Mutex<BTreeSet<String>>>,
    ) -> Topics {
        Topics {
            wanted,
            seen: 0,
            not_before: None,
            checked: HashSet::new(),
            missing: HashSet::new(),
            create,
            client_config,
            admin: None,
            report,
            limits: std::collections::HashMap::new(),
        }
    }

    /// The topic's `max.message.bytes` (the largest record batch it takes, after
    /// compression), asked once a minute at most; `None` when the brokers do not say
    /// (away, or no DescribeConfigs right).
    pub fn max_message_bytes(&mut self, topic: &str) -> Option<u64> {
        let before = self.limits.get(topic).copied();
        if let Some((v, at)) = before {
            if at.elapsed() < Duration::from_secs(60) {
                return v;
            }
        }
        let admin = self.admin()?;
        let opts = AdminOptions::new()
            .operation_timeout(Some(ADMIN_TIMEOUT))
            .request_timeout(Some(ADMIN_TIMEOUT));
        let res = futures_executor::block_on(
            admin.describe_configs([&rdkafka::admin::ResourceSpecifier::Topic(topic)], &opts),
        );
        let value = match res {
            Ok(rs) => rs.into_iter().next().and_then(|r| r.ok()).and_then(|r| {
                r.get("max.message.bytes")
                    .and_then(|e| e.value.as_deref())
                    .and_then(|v| v.parse::<u64>().ok())
            }),
            Err(_) => None,
        };
        if value.is_none() && !matches!(before, Some((None, _))) {
            warn!(
                "cannot read topic {topic}'s max.message.bytes (DescribeConfigs refused, or the brokers away): a line refused as too large is held, not dropped, until it can be read"
            );
        }
        self.limits
            .insert(topic.to_owned(), (value, Instant::now()));
        value
    }

    /// The admin client, made on first use.
    fn admin(&mut self) -> Option<&AdminClient<DefaultClientContext>> {
        if self.admin.is_none() {
            match self
                .client_config
                .create::<AdminClient<DefaultClientContext>>()
            {
                Ok(a) => self.admin = Some(a),
                Err(e) => {
                    error!(
                        "cannot create the Kafka admin client: {}",
                        super::kafka::config_refused(&e, &self.client_config)
                    );
                    return None;
                }
            }
        }
        self.admin.as_ref()
    }

    /// Asks the brokers about `topic` unless they answered about it before: called before
    /// a topic's first record, so that records for a missing topic never fill
    /// librdkafka's queue (it keeps them for `topic.metadata.propagation.max.ms`, 30 s,
    /// and every other file would wait behind them).
    pub fn first_look(&mut self, topic: &str, producer: &BaseProducer<Context>) {
        if self.checked.contains(topic) {
            return;
        }
        let state = self.ensure(topic, producer);
        // Asked once, answered or not: with the brokers away, every chunk would wait
        // for the timeout again (the wanted-set check and probes look again later).
        self.checked.insert(topic.to_owned());
        if state == TopicState::Missing {
            error!(
                "topic {topic} does not exist and the brokers do not create topics on first use (auto.create.topics.enable is off); create it, or set kafka.create_topics"
            );
        }
        self.publish();
    }

    /// Whether `topic` is known to be missing.
    pub fn is_missing(&self, topic: &str) -> bool {
        self.missing.contains(topic)
    }

    /// Checks every wanted topic if the wanted set changed since the last check. Returns
    /// the topics that were found to exist (or were created) and were missing before.
    /// A check the brokers do not answer is tried again after [`RECHECK_AFTER`].
    pub fn check_if_changed(&mut self, producer: &BaseProducer<Context>) -> Vec<String> {
        if self.not_before.is_some_and(|t| Instant::now() < t) {
            return Vec::new();
        }
        let Some((version, wanted)) = self.wanted.changed_since(self.seen) else {
            return Vec::new();
        };
        self.seen = version;
        self.not_before = None;
        self.missing.retain(|t| wanted.contains_key(t));
        let mut appeared = Vec::new();
        for (topic, paths) in &wanted {
            let was_missing = self.missing.contains(topic);
            match self.ensure(topic, producer) {
                TopicState::Unknown => {
                    // Kafka is away: the rest would time out too. Check all again later.
                    self.seen = version.wrapping_sub(1);
                    self.not_before = Some(Instant::now() + RECHECK_AFTER);
                    break;
                }
                TopicState::Missing if !was_missing => {
                    let more = if self.create.is_some() {
                        "and could not be created (see the error above)"
                    } else {
                        "and the brokers do not create topics on first use (auto.create.topics.enable is off); create it, or set kafka.create_topics"
                    };
                    error!(
                        "topic {topic} does not exist {more}. Lines of {} are held until it does",
                        paths.join(", ")
                    );
                    self.missing.insert(topic.clone());
                }
                TopicState::Exists(_) if was_missing => appeared.push(topic.clone()),
                _ => {}
            }
        }
        self.publish();
        appeared
    }

    /// Looks at `topic` again (for a held entry's probe); creates it if configured.
    pub fn recheck(&mut self, topic: &str, producer: &BaseProducer<Context>) -> TopicState {
        let state = self.ensure_within(topic, producer, PROBE_TIMEOUT);
        self.publish();
        state
    }

    /// Asks the brokers about `topic`, creating it when it is missing and creation is
    /// configured; updates the missing set.
    fn ensure(&mut self, topic: &str, producer: &BaseProducer<Context>) -> TopicState {
        self.ensure_within(topic, producer, ADMIN_TIMEOUT)
    }

    fn ensure_within(
        &mut self,
        topic: &str,
        producer: &BaseProducer<Context>,
        timeout: Duration,
    ) -> TopicState {
        let mut state = topic_state(producer, topic, timeout);
        if state == TopicState::Missing && self.create.is_some() && self.create_topic(topic) {
            state = topic_state(producer, topic, ADMIN_TIMEOUT);
        }
        if state != TopicState::Unknown {
            self.checked.insert(topic.to_owned());
        }
        match state {
            TopicState::Missing => {
                self.missing.insert(topic.to_owned());
            }
            TopicState::Exists(_) => {
                if self.missing.remove(topic) {
                    info!("topic {topic} exists now");
                }
            }
            TopicState::Unknown => {}
        }
        state
    }

    /// Creates `topic` as `kafka.create_topics` says; true if it exists afterwards.
    fn create_topic(&mut self, topic: &str) -> bool {
        let Some(c) = self.create else {
            return false;
        };
        let Some(admin) = self.admin() else {
            return false;
        };
        let new = NewTopic::new(
            topic,
            c.partitions,
            TopicReplication::Fixed(c.replication_factor),
        );
        let opts = AdminOptions::new()
            .operation_timeout(Some(ADMIN_TIMEOUT))
            .request_timeout(Some(ADMIN_TIMEOUT));
        match futures_executor::block_on(admin.create_topics([&new], &opts)) {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => {
                    info!(
                        "created topic {topic} ({} partitions, replication factor {}) as kafka.create_topics says",
                        c.partitions, c.replication_factor
                    );
                    true
                }
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => true,
                Some(Err((_, code))) => {
                    error!("cannot create topic {topic}: {code}");
                    false
                }
                None => false,
            },
            Err(e) => {
                warn!("cannot create topic {topic} now: {e}; trying again later");
                false
            }
        }
    }

    fn publish(&self) {
        let mut r = lock(&self.report);
        r.clear();
        r.extend(self.missing.iter().cloned());
    }
}

/// One metadata request for `topic`, waiting at most `timeout`.
pub fn topic_state(producer: &BaseProducer<Context>, topic: &str, timeout: Duration) -> TopicState {
    match producer.client().fetch_metadata(Some(topic), timeout) {
        Ok(m) => match m.topics().iter().find(|t| t.name() == topic) {
            Some(t) => match t.error() {
                None if !t.partitions().is_empty() => TopicState::Exists(t.partitions().len()),
                Some(e)
                    if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition =>
                {
                    TopicState::Missing
                }
                None => TopicState::Missing,
                Some(_) => TopicState::Unknown,
            },
            None => TopicState::Missing,
        },
        Err(_) => TopicState::Unknown,
    }
}
