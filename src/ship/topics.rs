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
        if let Some(v) = fresh_limit(before, Instant::now()) {
            return v;
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
        if limit_unreadable_news(value, before) {
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
        self.check_wanted(Instant::now(), |t, topic| t.ensure(topic, producer))
    }

    /// [`Topics::check_if_changed`]'s decisions, given how to ask the brokers about one
    /// topic (`ensure`: [`Topics::ensure`] there, plain answers in the unit tests).
    fn check_wanted(
        &mut self,
        now: Instant,
        mut ensure: impl FnMut(&mut Self, &str) -> TopicState,
    ) -> Vec<String> {
        if self.not_before.is_some_and(|t| now < t) {
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
            match ensure(self, topic) {
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
        self.note(topic, state);
        state
    }

    /// Takes in the brokers' answer about `topic`: an answer (exists or missing) marks it
    /// checked and updates the missing set; `Unknown` concludes nothing.
    fn note(&mut self, topic: &str, state: TopicState) {
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
            Ok(results) => created(topic, c, results.into_iter().next()),
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
        Ok(m) => metadata_state(
            m.topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| (t.partitions().len(), t.error().map(RDKafkaErrorCode::from))),
        ),
        Err(_) => TopicState::Unknown,
    }
}

/// What a metadata answer says of a topic: `found` is the topic's entry in it (its
/// partition count and error), if the answer has one. No entry, or no partitions and
/// no error, or "unknown topic": missing. Any other error concludes nothing.
fn metadata_state(found: Option<(usize, Option<RDKafkaErrorCode>)>) -> TopicState {
    match found {
        Some((partitions, None)) if partitions > 0 => TopicState::Exists(partitions),
        Some((_, Some(RDKafkaErrorCode::UnknownTopicOrPartition))) => TopicState::Missing,
        Some((_, None)) => TopicState::Missing,
        Some((_, Some(_))) => TopicState::Unknown,
        None => TopicState::Missing,
    }
}

/// The `max.message.bytes` last read for a topic (`before`: the value and when), if it is
/// less than a minute old at `now`.
fn fresh_limit(before: Option<(Option<u64>, Instant)>, now: Instant) -> Option<Option<u64>> {
    before
        .filter(|&(_, at)| now.saturating_duration_since(at) < Duration::from_secs(60))
        .map(|(v, _)| v)
}

/// Whether a limit that could not be read (`value` is `None`) is news: said once, not
/// again while the reads keep failing.
fn limit_unreadable_news(value: Option<u64>, before: Option<(Option<u64>, Instant)>) -> bool {
    value.is_none() && !matches!(before, Some((None, _)))
}

/// Whether `kafka.create_topics` made `topic`, from the admin API's result for it (`None`:
/// the answer had none): made now, or made already by someone else.
fn created(
    topic: &str,
    c: CreateTopics,
    result: Option<Result<String, (String, RDKafkaErrorCode)>>,
) -> bool {
    match result {
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
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn topics(create: Option<CreateTopics>) -> (Topics, Arc<WantedTopics>) {
        let wanted = Arc::new(WantedTopics::default());
        let t = Topics::new(
            wanted.clone(),
            create,
            ClientConfig::new(),
            Default::default(),
        );
        (t, wanted)
    }

    fn want(w: &WantedTopics, topics: &[&str]) {
        w.set(
            topics
                .iter()
                .map(|t| (t.to_string(), vec![format!("/l/{t}.log")]))
                .collect(),
        );
    }

    /// Answers as the brokers would, counting the questions.
    fn brokers<'a>(
        says: &'a HashMap<&str, TopicState>,
        asked: &'a mut Vec<String>,
    ) -> impl FnMut(&mut Topics, &str) -> TopicState + 'a {
        move |t, topic| {
            asked.push(topic.to_owned());
            let state = says[topic];
            t.note(topic, state);
            state
        }
    }

    #[test]
    fn the_wanted_set_gets_a_new_version_only_when_it_changes() {
        let w = WantedTopics::default();
        assert_eq!(w.changed_since(0), None, "nothing set yet");
        want(&w, &["a"]);
        let (v1, set) = w.changed_since(0).unwrap();
        assert_eq!(
            (v1, set.keys().map(String::as_str).collect::<Vec<_>>()),
            (1, vec!["a"])
        );
        want(&w, &["a"]);
        assert_eq!(w.changed_since(v1), None, "the same set again");
        want(&w, &["a", "b"]);
        assert_eq!(w.changed_since(v1).map(|(v, _)| v), Some(2));
    }

    #[test]
    fn wanted_topics_are_checked_once_per_change_and_appearances_are_reported() {
        let (mut t, w) = topics(None);
        let now = Instant::now();
        want(&w, &["a", "b"]);
        let mut says = HashMap::from([("a", TopicState::Exists(3)), ("b", TopicState::Missing)]);
        let mut asked = Vec::new();
        assert!(t.check_wanted(now, brokers(&says, &mut asked)).is_empty());
        assert_eq!(asked, ["a", "b"]);
        assert!(!t.is_missing("a") && t.is_missing("b"));
        assert_eq!(
            *lock(&t.report),
            BTreeSet::from(["b".to_owned()]),
            "published for /metrics"
        );
        // Same wanted set: not asked again.
        assert!(t.check_wanted(now, brokers(&says, &mut asked)).is_empty());
        assert_eq!(asked.len(), 2);
        // b created meanwhile; the set changes (c added): b appeared.
        says.insert("b", TopicState::Exists(1));
        says.insert("c", TopicState::Exists(1));
        want(&w, &["a", "b", "c"]);
        assert_eq!(t.check_wanted(now, brokers(&says, &mut asked)), ["b"]);
        assert!(!t.is_missing("b"));
        assert!(lock(&t.report).is_empty());
    }

    #[test]
    fn a_topic_no_entry_names_any_more_is_no_longer_missing() {
        let (mut t, w) = topics(None);
        let now = Instant::now();
        want(&w, &["a", "gone"]);
        let says = HashMap::from([("a", TopicState::Exists(1)), ("gone", TopicState::Missing)]);
        let mut asked = Vec::new();
        t.check_wanted(now, brokers(&says, &mut asked));
        assert!(t.is_missing("gone"));
        want(&w, &["a"]);
        t.check_wanted(now, brokers(&says, &mut asked));
        assert!(!t.is_missing("gone"));
        assert!(lock(&t.report).is_empty());
    }

    #[test]
    fn brokers_away_stop_the_round_and_it_is_tried_again_after_a_pause() {
        let (mut t, w) = topics(None);
        want(&w, &["a", "b"]);
        let mut says = HashMap::from([("a", TopicState::Unknown), ("b", TopicState::Missing)]);
        let mut asked = Vec::new();
        let now = Instant::now();
        assert!(t.check_wanted(now, brokers(&says, &mut asked)).is_empty());
        assert_eq!(asked, ["a"], "the rest would time out too");
        assert!(
            !t.is_missing("a") && !t.is_missing("b"),
            "nothing concluded"
        );
        assert!(t.check_wanted(now, brokers(&says, &mut asked)).is_empty());
        assert_eq!(asked.len(), 1, "not before RECHECK_AFTER");
        says.insert("a", TopicState::Exists(1));
        let later = Instant::now() + RECHECK_AFTER + Duration::from_secs(1);
        t.check_wanted(later, brokers(&says, &mut asked));
        assert_eq!(asked, ["a", "a", "b"], "the same set is checked again");
        assert!(t.is_missing("b"));
    }

    #[test]
    fn only_an_answer_marks_a_topic_checked() {
        let (mut t, _) = topics(None);
        t.note("a", TopicState::Unknown);
        assert!(!t.checked.contains("a") && !t.is_missing("a"));
        t.note("a", TopicState::Missing);
        assert!(t.checked.contains("a") && t.is_missing("a"));
        t.note("a", TopicState::Unknown);
        assert!(t.is_missing("a"), "an unanswered look changes nothing");
        t.note("a", TopicState::Exists(2));
        assert!(!t.is_missing("a"));
    }

    #[test]
    fn metadata_answers_read_as_topic_states() {
        use RDKafkaErrorCode as C;
        assert_eq!(metadata_state(Some((3, None))), TopicState::Exists(3));
        assert_eq!(metadata_state(None), TopicState::Missing);
        assert_eq!(metadata_state(Some((0, None))), TopicState::Missing);
        assert_eq!(
            metadata_state(Some((0, Some(C::UnknownTopicOrPartition)))),
            TopicState::Missing
        );
        assert_eq!(
            metadata_state(Some((0, Some(C::LeaderNotAvailable)))),
            TopicState::Unknown
        );
        assert_eq!(
            metadata_state(Some((2, Some(C::TopicAuthorizationFailed)))),
            TopicState::Unknown,
            "an error with partitions listed concludes nothing"
        );
    }

    #[test]
    fn a_topic_limit_is_read_again_after_a_minute_and_a_failed_read_is_said_once() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        assert_eq!(fresh_limit(None, t0), None);
        assert_eq!(fresh_limit(Some((Some(100), t0)), t0), Some(Some(100)));
        assert_eq!(
            fresh_limit(Some((None, t0)), t0 + minute / 2),
            Some(None),
            "an unknown limit is not asked again within the minute either"
        );
        assert_eq!(fresh_limit(Some((Some(100), t0)), t0 + minute), None);
        assert!(limit_unreadable_news(None, None));
        assert!(limit_unreadable_news(None, Some((Some(100), t0))));
        assert!(!limit_unreadable_news(None, Some((None, t0))));
        assert!(!limit_unreadable_news(Some(100), None));
    }

    #[test]
    fn a_topic_made_by_someone_else_counts_as_created() {
        use RDKafkaErrorCode as C;
        let c = CreateTopics {
            partitions: 3,
            replication_factor: 1,
        };
        assert!(created("t", c, Some(Ok("t".into()))));
        assert!(created(
            "t",
            c,
            Some(Err(("t".into(), C::TopicAlreadyExists)))
        ));
        assert!(!created(
            "t",
            c,
            Some(Err(("t".into(), C::TopicAuthorizationFailed)))
        ));
        assert!(!created("t", c, None));
    }
}
