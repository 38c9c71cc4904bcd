//! `agent.yaml`: the schema, its defaults, and loading with errors that name the key and line.
//!
//! The struct is built once at start-up and then shared read-only (`Arc<Config>`), like
//! fd's `Config`. Every key is optional except `kafka.brokers`; the defaults below are the
//! ones docs/configuration.md documents.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::collect::{self, CollectEntry};

/// Why `agent.yaml` could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// Config path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// YAML syntax, unknown key or wrong type (the message carries line and column).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// Config path.
        path: PathBuf,
        /// Parser message with location.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// Config path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What the packaged `agent.yaml` (`packaging/agent.yaml`) holds where an operator must
/// put a value of their own (`kafka.brokers`, `etcd.endpoints`): a config still holding
/// it anywhere is refused, naming the keys, so the agent cannot start with it by mistake.
pub const PLACEHOLDER: &str = "CHANGE_ME";

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where records go.
    pub kafka: KafkaConfig,
    /// The agent itself: state, buffers, timings.
    #[serde(default)]
    pub agent: AgentConfig,
    /// Central config: where this host's collect list lives in etcd. Without it, the
    /// static `collect:` list is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdConfig>,
    /// The static list of files to collect (used when no `etcd:` section is set).
    #[serde(default)]
    pub collect: Vec<CollectEntry>,
}

/// The `etcd:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// `http://host:2379` or `https://…` endpoints; tried in turn.
    pub endpoints: Vec<String>,
    /// Key holding this host's collect list; `{ip}` and `{hostname}` are substituted.
    #[serde(default = "default_etcd_key")]
    pub key: String,
    /// Groups this host belongs to: each adds the list at `group_key` (the host key wins
    /// for a path both name; then the groups in this order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Key of a group's collect list; `{group}`, `{ip}` and `{hostname}` are substituted.
    #[serde(default = "default_group_key")]
    pub group_key: String,
    /// Follow the keys with an etcd watch (changes apply as they are committed). Off:
    /// only the periodic re-read (for a proxy that cannot stream).
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How often every key is re-read anyway (serializable: any member answers): the
    /// safety net that catches what a watch missed; without a watch, the delay of a change.
    #[serde(default = "default_etcd_poll_ms")]
    pub poll_interval_ms: u64,
    /// Timeout of one request.
    #[serde(default = "default_etcd_timeout_ms")]
    pub timeout_ms: u64,
    /// The first read after start waits a random point within this long (0: at once), so
    /// that a fleet restarted together does not send etcd every first read in one second.
    #[serde(default = "default_start_spread_ms")]
    pub start_spread_ms: u64,
    /// etcd user (auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// etcd password (never printed).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted"
    )]
    pub password: Option<String>,
    /// File holding the etcd password (first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// CA bundle for `https://` endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Write a status document back to etcd.
    #[serde(default = "default_true")]
    pub status: bool,
    /// Key of the status document; `{ip}` and `{hostname}` are substituted.
    #[serde(default = "default_status_key")]
    pub status_key: String,
    /// How often the status document is looked at; it is written only when its content
    /// changed.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// Offsets and sizes alone (no error, no lag of another order of magnitude) rewrite
    /// the status at most this often.
    #[serde(default = "default_status_refresh_ms")]
    pub status_refresh_ms: u64,
    /// Keep-alive interval of the status document's lease; the lease lives 3 × this, so
    /// a host that dies is shown stale that long after its last keep-alive.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Key of the host's registration (no lease, written when it changes), which keeps a
    /// dead host listed as stale in `logagent fleet`; `{ip}` and `{hostname}` substituted.
    #[serde(default = "default_agent_key")]
    pub agent_key: String,
}

impl EtcdConfig {
    /// TTL of the status lease: three heartbeats, in whole seconds (at least 2: etcd's
    /// minimum).
    pub fn lease_ttl_secs(&self) -> i64 {
        ((self.heartbeat_ms * 3).div_ceil(1000) as i64).max(2)
    }
}

fn redacted<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}
fn redacted_properties<S: Serializer>(
    props: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(props.iter().map(|(k, v)| (k, crate::secrets::redact(k, v))))
}
fn default_etcd_key() -> String {
    "/logagent/{ip}/collect_config".into()
}
fn default_status_key() -> String {
    "/logagent/{ip}/status".into()
}
fn default_start_spread_ms() -> u64 {
    1000
}

fn default_etcd_poll_ms() -> u64 {
    30_000
}
fn default_group_key() -> String {
    "/logagent/groups/{group}/collect_config".into()
}
fn default_agent_key() -> String {
    "/logagent/{ip}/agent".into()
}
fn default_status_refresh_ms() -> u64 {
    300_000
}
fn default_heartbeat_ms() -> u64 {
    20_000
}
fn default_etcd_timeout_ms() -> u64 {
    3000
}
fn default_status_interval_ms() -> u64 {
    5000
}
fn default_stall_warn_ms() -> u64 {
    60_000
}
fn default_stats_interval_ms() -> u64 {
    60_000
}
fn default_allowed_paths() -> Vec<String> {
    vec!["/var/log/**".into()]
}

/// The `kafka:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// How many replicas must acknowledge a record: `0`, `1` or `all`.
    #[serde(default)]
    pub acks: Acks,
    /// Batch compression codec.
    #[serde(default)]
    pub compression: Compression,
    /// How long librdkafka waits to fill a batch.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u32,
    /// Most records in one batch (librdkafka `batch.num.messages`).
    #[serde(default = "default_batch_max_messages")]
    pub batch_max_messages: u32,
    /// Most bytes in one batch (librdkafka `batch.size`).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: u32,
    /// Most records librdkafka holds in memory before the agent stops reading files.
    #[serde(default = "default_queue_max_messages")]
    pub queue_max_messages: u32,
    /// Most KiB librdkafka holds in memory before the agent stops reading files.
    #[serde(default = "default_queue_max_kbytes")]
    pub queue_max_kbytes: u32,
    /// Idempotent producer: no duplicates or reordering from librdkafka's own retries.
    #[serde(default = "default_true")]
    pub idempotence: bool,
    /// TLS and SASL towards the brokers.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// Raw librdkafka properties, applied last (they win over everything above). Printed
    /// with the values of secret-looking keys hidden ([`crate::secrets::redact`]).
    #[serde(default, serialize_with = "redacted_properties")]
    pub properties: BTreeMap<String, String>,
    /// How often a file whose records Kafka refuses (missing topic or partition, no
    /// authorization, record too large) is tried again, in milliseconds.
    #[serde(default = "default_entry_retry_ms")]
    pub entry_retry_ms: u64,
    /// Create missing topics with these settings (off when absent).
    #[serde(default)]
    pub create_topics: Option<CreateTopics>,
    /// `at_least_once` (every line arrives; a crash re-sends what was not checkpointed)
    /// or `exactly_once` (lines and their files' offsets committed in one Kafka
    /// transaction: read_committed consumers see each line once, across crashes).
    #[serde(default)]
    pub delivery: Delivery,
    /// The transactions of `delivery: exactly_once`.
    #[serde(default)]
    pub transactions: Transactions,
}

/// `kafka.delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Every line arrives at least once; after a crash, the lines sent since the last
    /// checkpoint are sent again.
    #[default]
    AtLeastOnce,
    /// Lines and file offsets in one transaction (see [`Transactions`]).
    ExactlyOnce,
}

/// `kafka.transactions`: how `delivery: exactly_once` commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transactions {
    /// The producer's `transactional.id`; by default `logagent-<host>-<hash of the
    /// data_dir>`, stable across restarts and upgrades. Two agents with one id fence
    /// each other: the older one exits 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The compacted topic holding each file's committed offset (one key per agent and
    /// file).
    #[serde(default = "default_offsets_topic")]
    pub offsets_topic: String,
    /// A transaction is committed this often (and at shutdown): what read_committed
    /// consumers wait for a line at most, beyond Kafka itself.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// ...or once this many records were sent in it, whichever comes first.
    #[serde(default = "default_commit_max_records")]
    pub commit_max_records: u64,
    /// librdkafka's `transaction.timeout.ms`: the broker aborts a transaction open
    /// longer (Kafka away that long: the agent starts again from the committed offsets).
    /// At most the brokers' `transaction.max.timeout.ms` (15 min by default).
    #[serde(default = "default_transaction_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for Transactions {
    fn default() -> Self {
        Transactions {
            id: None,
            offsets_topic: default_offsets_topic(),
            commit_interval_ms: default_commit_interval_ms(),
            commit_max_records: default_commit_max_records(),
            timeout_ms: default_transaction_timeout_ms(),
        }
    }
}

fn default_offsets_topic() -> String {
    "logagent-offsets".into()
}

/// 1 s: what at_least_once's checkpoint interval costs in duplicates, exactly_once
/// costs in latency for read_committed consumers (measured in docs/benchmarks.md).
fn default_commit_interval_ms() -> u64 {
    1_000
}

fn default_commit_max_records() -> u64 {
    100_000
}

/// librdkafka's default.
fn default_transaction_timeout_ms() -> u64 {
    60_000
}

/// `kafka.create_topics`: how the agent creates a topic the brokers do not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTopics {
    /// Partitions of a created topic.
    #[serde(default = "default_one")]
    pub partitions: i32,
    /// Replication factor of a created topic.
    #[serde(default = "default_one")]
    pub replication_factor: i32,
}

fn default_one() -> i32 {
    1
}

/// 10 s: a fixed topic or grant is noticed soon, and a held file costs one probe record
/// (or one metadata request) per interval.
fn default_entry_retry_ms() -> u64 {
    10_000
}

/// `kafka.security`: how the agent authenticates to the brokers and encrypts traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (for the `sasl_*` protocols).
    #[serde(default)]
    pub sasl_mechanism: SaslMechanism,
    /// SASL user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// SASL password (never printed).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted"
    )]
    pub password: Option<String>,
    /// File whose first line is the SASL password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// CA bundle (PEM) to verify the brokers (`ssl`, `sasl_ssl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; goes with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Where OAUTHBEARER tokens come from (`sasl_mechanism: OAUTHBEARER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuth>,
}

/// `kafka.security.oauth`: an OIDC token endpoint and the agent's client credentials.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth {
    /// The token endpoint (`https://idp.example.com/oauth2/token`).
    pub token_endpoint_url: String,
    /// The agent's client id.
    pub client_id: String,
    /// Its secret (never printed).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted"
    )]
    pub client_secret: Option<String>,
    /// File whose first line is the secret (read at every token refresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// The `scope` to ask for, if the identity provider needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// CA bundle (PEM) for the token endpoint's certificate (default: the Mozilla
    /// roots built in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// `kafka.security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

/// `kafka.security.sasl_mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// User and password in the clear (use with `sasl_ssl`).
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 bearer tokens from `kafka.security.oauth`.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl SecurityProtocol {
    /// The librdkafka `security.protocol` value.
    pub fn as_rdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the protocol uses SASL.
    pub fn is_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    /// Whether the protocol uses TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl SaslMechanism {
    /// The librdkafka `sasl.mechanism` value.
    pub fn as_rdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// Whether this binary was built with OpenSSL inside librdkafka (cargo feature `tls`).
pub const KAFKA_TLS_BUILT_IN: bool = cfg!(feature = "tls");

/// The `agent:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Directory for the offset registry and other state.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Capacity of the tailers → producer channel, in chunks (each ≤ 64 KiB of lines).
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
    /// Most files followed at once (one thread, one or two descriptors, one or two
    /// inotify watches each); further matches wait and start as followed files end.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    /// Wake tailers with inotify instead of polling (on by default; files it cannot
    /// watch are polled, see docs/operating.md, "Many files").
    #[serde(default = "default_true")]
    pub inotify: bool,
    /// Longest record; longer lines are split into pieces of this size.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Longest wait between two looks at an idle file.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How long a renamed (rotated) file is still read after its last new byte: writers
    /// that keep their descriptor across a rotation (a graceful restart, a late
    /// `postrotate`, lazily reopening apps) still add lines to it.
    #[serde(default = "default_rotate_wait_ms")]
    pub rotate_wait_ms: u64,
    /// How often acknowledged offsets are written to disk.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// How long shutdown waits for Kafka to acknowledge what is in flight.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// How often glob paths are expanded again to find new files.
    #[serde(default = "default_glob_interval_ms")]
    pub glob_interval_ms: u64,
    /// Registry entries of files not followed for this long are forgotten (once their
    /// file is gone; a file deleted while followed is forgotten as soon as all of it is
    /// acknowledged).
    #[serde(default = "default_registry_retention_hours")]
    pub registry_retention_hours: u64,
    /// How long the per-file metrics of a path stay once nobody counts into them (no
    /// tailer follows it, nothing of it waits for Kafka); then its series go from
    /// `/metrics`, their values kept in the `logagent_agent_*` sums.
    #[serde(default = "default_file_metrics_retention_ms")]
    pub file_metrics_retention_ms: u64,
    /// Hostname used in headers and keys (default: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// This host's IP, used to build the etcd key (default: detected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Globs that entries from the central config must match to be followed.
    #[serde(default = "default_allowed_paths")]
    pub allowed_paths: Vec<String>,
    /// Read regular files that have more than one hard link (off by default). A hard
    /// link made in a log directory to a file elsewhere (`ln /etc/shadow
    /// /var/log/app/x.log`, possible for anyone who can write there unless
    /// `fs.protected_hardlinks` is on) looks like a log file from every side: the
    /// allow-list's symlink check cannot see it. Log files rarely have a second link;
    /// logrotate never makes one.
    #[serde(default)]
    pub allow_hardlinks: bool,
    /// `host:port` for `/metrics` and `/health` (off when unset; use a loopback address
    /// unless the port is firewalled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// Serve `/metrics` and `/health` on a `metrics_addr` that is not loopback (off: such
    /// an address is a config error). The paths of every followed file are in the
    /// metrics, and the server has no authentication.
    #[serde(default)]
    pub metrics_allow_remote: bool,
    /// The stall detector: a file whose unacknowledged lines saw no acknowledgement for
    /// this long is reported (log line, status document, metrics), and `/health` answers
    /// 503 when the producer made no progress for this long while lines wait.
    #[serde(default = "default_stall_warn_ms", alias = "stall_threshold_ms")]
    pub stall_warn_ms: u64,
    /// How often a summary line is logged (0: never).
    #[serde(default = "default_stats_interval_ms")]
    pub stats_interval_ms: u64,
    /// `text` or `json` log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Level for every module, overriding `RUST_LOG`; the one setting besides `collect:`
    /// that a SIGHUP applies live (unset: `RUST_LOG`, default `info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
}

/// `agent.log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Lifecycle events (the default).
    Info,
    /// Per-decision detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `log` crate's filter for this level.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Off => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `agent.log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `[time LEVEL target] message`.
    #[default]
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `msg`.
    Json,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            data_dir: default_data_dir(),
            channel_capacity: default_channel_capacity(),
            max_files: default_max_files(),
            inotify: true,
            max_line_bytes: default_max_line_bytes(),
            poll_interval_ms: default_poll_interval_ms(),
            rotate_wait_ms: default_rotate_wait_ms(),
            checkpoint_interval_ms: default_checkpoint_interval_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            glob_interval_ms: default_glob_interval_ms(),
            registry_retention_hours: default_registry_retention_hours(),
            file_metrics_retention_ms: default_file_metrics_retention_ms(),
            hostname: None,
            ip: None,
            allowed_paths: default_allowed_paths(),
            allow_hardlinks: false,
            metrics_addr: None,
            metrics_allow_remote: false,
            stall_warn_ms: default_stall_warn_ms(),
            stats_interval_ms: default_stats_interval_ms(),
            log_format: LogFormat::Text,
            log_level: None,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_linger_ms() -> u32 {
    5
}
fn default_batch_max_messages() -> u32 {
    10_000
}
fn default_batch_max_bytes() -> u32 {
    1_000_000
}
fn default_queue_max_messages() -> u32 {
    10_000
}
fn default_queue_max_kbytes() -> u32 {
    8 * 1024
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/logagent")
}
fn default_channel_capacity() -> usize {
    16
}
/// 10,000: measured cheap (see docs/operating.md, "Many files"), a third of CentOS 7's default
/// `kernel.pid_max` (32,768: every thread takes a pid), within the unit's
/// `LimitNOFILE=65536` with room for rotated files; a runaway glob beyond it is a
/// clear error, not a host out of pids.
fn default_max_files() -> usize {
    10_000
}
/// 1,000,000: a piece this long, with its headers (a path up to 4 KiB) and the record
/// batch overhead, still fits Kafka's default `max.message.bytes` (1,048,588). At 1 MiB a
/// split piece was larger than a default topic takes, and the file would be held.
fn default_max_line_bytes() -> usize {
    1_000_000
}
fn default_poll_interval_ms() -> u64 {
    250
}
/// 30 s: longer than Fluent Bit's 5 s (a graceful Apache restart or a slow `postrotate`
/// takes longer than that), far shorter than Filebeat's 5 min close_inactive (a renamed
/// file costs one descriptor and one read per poll meanwhile; a rotation storm is capped
/// at a few rotated files per path).
fn default_rotate_wait_ms() -> u64 {
    30_000
}

fn default_checkpoint_interval_ms() -> u64 {
    1000
}
fn default_shutdown_timeout_ms() -> u64 {
    10_000
}
fn default_glob_interval_ms() -> u64 {
    2000
}
fn default_registry_retention_hours() -> u64 {
    7 * 24
}
/// 5 min: several scrapes at the usual 15 s to 1 min intervals see a finished file's
/// final values before its series go.
fn default_file_metrics_retention_ms() -> u64 {
    300_000
}

/// `kafka.acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Fire and forget.
    None,
    /// The leader only.
    Leader,
    /// All in-sync replicas.
    #[default]
    All,
}

impl Acks {
    /// The librdkafka `acks` value.
    pub fn as_rdkafka(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

impl Serialize for Acks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_rdkafka())
    }
}

impl<'de> Deserialize<'de> for Acks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Acks;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("0, 1 or all")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Acks, E> {
                match v {
                    0 => Ok(Acks::None),
                    1 => Ok(Acks::Leader),
                    -1 => Ok(Acks::All),
                    _ => Err(E::custom(format!("acks must be 0, 1 or all, not {v}"))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Acks, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Acks, E> {
                match v {
                    "0" => Ok(Acks::None),
                    "1" => Ok(Acks::Leader),
                    "all" | "-1" => Ok(Acks::All),
                    _ => Err(E::custom(format!("acks must be 0, 1 or all, not {v:?}"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `kafka.compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4: cheap and effective on logs.
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_rdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // The lines around an error are quoted by `yaml_error`, not by the parser: its
        // snippet crops long lines, which could leave a piece of a secret that no longer
        // matches the value to hide.
        let cfg: Config = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: crate::secrets::yaml_error(
                &e.without_snippet().to_string(),
                text,
                e.location()
                    .map(|l| (l.line() as usize, l.column() as usize)),
            ),
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message: crate::secrets::scrub(&message, cfg.secret_values()),
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let unfilled = self.placeholders();
        if !unfilled.is_empty() {
            let etcd = if unfilled.iter().any(|k| k.starts_with("etcd.")) {
                " (or delete the etcd: section to follow a static collect: list instead)"
            } else {
                ""
            };
            return Err(format!(
                "{} still hold{} the placeholder {PLACEHOLDER}: replace it with your own value{}{etcd}; the agent does not start while a placeholder is left",
                unfilled.join(", "),
                if unfilled.len() == 1 { "s" } else { "" },
                if unfilled.len() == 1 { "" } else { "s" },
            ));
        }
        if self.kafka.brokers.is_empty() {
            return Err("kafka.brokers: at least one broker is needed".into());
        }
        let a = &self.agent;
        if a.max_files == 0 {
            return Err("agent.max_files must be at least 1".into());
        }
        if a.channel_capacity == 0 {
            return Err("agent.channel_capacity must be at least 1".into());
        }
        if a.max_line_bytes < 64 {
            return Err("agent.max_line_bytes must be at least 64".into());
        }
        if a.poll_interval_ms == 0 || a.checkpoint_interval_ms == 0 || a.glob_interval_ms == 0 {
            return Err("agent.*_interval_ms values must be at least 1".into());
        }
        if self.kafka.entry_retry_ms == 0 {
            return Err("kafka.entry_retry_ms must be at least 1".into());
        }
        if self.kafka.delivery == Delivery::ExactlyOnce {
            let t = &self.kafka.transactions;
            if self.kafka.acks != Acks::All || !self.kafka.idempotence {
                return Err("kafka.delivery: exactly_once needs kafka.acks: all and kafka.idempotence: true (a transactional producer is idempotent)".into());
            }
            if self.kafka.security.sasl_mechanism == SaslMechanism::OAuthBearer
                && self.kafka.security.protocol.is_sasl()
            {
                return Err("kafka.delivery: exactly_once does not work with sasl_mechanism OAUTHBEARER yet (the reader of the offsets topic has no token source); use SCRAM, PLAIN or mutual TLS, or at_least_once".into());
            }
            if t.offsets_topic.is_empty() || t.id.as_deref().is_some_and(str::is_empty) {
                return Err("kafka.transactions: offsets_topic and id must not be empty".into());
            }
            if !(1_000..=900_000).contains(&t.timeout_ms) {
                return Err("kafka.transactions.timeout_ms must be between 1000 and 900000 (the brokers' transaction.max.timeout.ms is 900000 by default)".into());
            }
            if t.commit_interval_ms == 0
                || t.commit_interval_ms * 2 > t.timeout_ms
                || t.commit_max_records == 0
            {
                return Err("kafka.transactions: commit_interval_ms and commit_max_records must be at least 1, and commit_interval_ms at most half of timeout_ms".into());
            }
        }
        if let Some(c) = self.kafka.create_topics {
            if c.partitions < 1 || c.replication_factor < 1 {
                return Err(
                    "kafka.create_topics: partitions and replication_factor must be at least 1"
                        .into(),
                );
            }
        }
        let sec = &self.kafka.security;
        let needs_openssl = sec.protocol.is_tls()
            || (sec.protocol.is_sasl()
                && matches!(
                    sec.sasl_mechanism,
                    SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512
                ));
        if needs_openssl && !KAFKA_TLS_BUILT_IN {
            return Err(format!(
                "kafka.security: {} with {} needs TLS support, and this logagent was built without it; rebuild with `cargo build --release --features tls`",
                sec.protocol.as_rdkafka(),
                sec.sasl_mechanism.as_rdkafka()
            ));
        }
        let oauth = sec.sasl_mechanism == SaslMechanism::OAuthBearer;
        if sec.protocol.is_sasl() && !oauth && sec.username.is_none() {
            return Err("kafka.security: a sasl_* protocol needs a username".into());
        }
        match (&sec.oauth, oauth && sec.protocol.is_sasl()) {
            (None, true) => {
                return Err("kafka.security: sasl_mechanism OAUTHBEARER needs an oauth section (token_endpoint_url, client_id, client_secret or client_secret_file)".into())
            }
            (Some(_), false) => {
                return Err("kafka.security.oauth is only used with a sasl_* protocol and sasl_mechanism OAUTHBEARER".into())
            }
            (Some(o), true) => {
                let u = o.token_endpoint_url.as_str();
                // The client secret travels in the request: in the clear only on this
                // host.
                let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                    .iter()
                    .any(|p| u.strip_prefix(p).is_some_and(|r| r.is_empty() || r.starts_with([':', '/'])));
                if !(u.starts_with("https://") || loopback) {
                    return Err(format!(
                        "kafka.security.oauth.token_endpoint_url {u:?} must start with https:// (http:// only on loopback: the client secret is sent)"
                    ));
                }
                if o.client_secret.is_some() == o.client_secret_file.is_some() {
                    return Err(
                        "kafka.security.oauth: set client_secret or client_secret_file (one of them)"
                            .into(),
                    );
                }
            }
            (None, false) => {}
        }
        if sec.password.is_some() && sec.password_file.is_some() {
            return Err("kafka.security: set password or password_file, not both".into());
        }
        if sec.cert_file.is_some() != sec.key_file.is_some() {
            return Err("kafka.security: cert_file and key_file go together".into());
        }
        if let (Some(addr), false) = (&a.metrics_addr, a.metrics_allow_remote) {
            check_metrics_addr(addr)?;
        }
        for p in &a.allowed_paths {
            glob::Pattern::new(p).map_err(|e| format!("agent.allowed_paths: {p:?}: {e}"))?;
        }
        if let Some(e) = &self.etcd {
            if e.endpoints.is_empty() {
                return Err("etcd.endpoints: at least one endpoint is needed".into());
            }
            if let Some(bad) = e
                .endpoints
                .iter()
                .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
            {
                return Err(format!(
                    "etcd.endpoints: {bad:?} must start with http:// or https://"
                ));
            }
            if e.password.is_some() && e.password_file.is_some() {
                return Err("etcd: set password or password_file, not both".into());
            }
            if e.cert_file.is_some() != e.key_file.is_some() {
                return Err("etcd: cert_file and key_file go together".into());
            }
            if [
                e.poll_interval_ms,
                e.timeout_ms,
                e.status_interval_ms,
                e.status_refresh_ms,
                e.heartbeat_ms,
            ]
            .contains(&0)
            {
                return Err("etcd.*_ms values must be at least 1".into());
            }
            if let Some(g) = e.groups.iter().find(|g| {
                g.is_empty()
                    || !g
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            }) {
                return Err(format!(
                    "etcd.groups: {g:?}: a group name is letters, digits, '.', '_' and '-'"
                ));
            }
            if !e.groups.is_empty() && !e.group_key.contains("{group}") {
                return Err(format!(
                    "etcd.group_key {:?} has no {{group}}: every group would read the same key",
                    e.group_key
                ));
            }
            if e.agent_key == e.status_key || e.agent_key == e.key || e.status_key == e.key {
                return Err("etcd: key, status_key and agent_key must differ".into());
            }
        }
        collect::validate_all(&self.collect).map_err(|e| format!("collect: {e}"))
    }

    /// The keys whose value (or one of whose list items) still holds [`PLACEHOLDER`],
    /// as `section.key`, section by section.
    fn placeholders(&self) -> Vec<String> {
        fn walk(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s)
                    if s.contains(PLACEHOLDER) && !out.iter().any(|p| p == path) =>
                {
                    out.push(path.to_owned());
                }
                serde_json::Value::Array(items) => {
                    for item in items {
                        walk(item, path, out);
                    }
                }
                serde_json::Value::Object(m) => {
                    for (k, item) in m {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(item, &p, out);
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        // Serialized as check-config prints it: secret values are hidden there, and are
        // not looked at here either.
        if let Ok(v) = serde_json::to_value(self) {
            for section in ["kafka", "agent", "etcd", "collect"] {
                if let Some(item) = v.get(section) {
                    walk(item, section, &mut out);
                }
            }
        }
        out
    }

    /// The resolved config as YAML, for `check-config`.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The hostname used in headers and `{host}` keys.
    pub fn hostname(&self) -> String {
        self.agent.hostname.clone().unwrap_or_else(system_hostname)
    }
}

/// `agent.metrics_addr` without `metrics_allow_remote`: every address it resolves to
/// must be loopback.
fn check_metrics_addr(addr: &str) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let all: Vec<std::net::SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("agent.metrics_addr {addr:?}: {e} (expected host:port)"))?
        .collect();
    match all.iter().find(|a| !crate::http::is_loopback(a.ip())) {
        _ if all.is_empty() => Err(format!(
            "agent.metrics_addr {addr:?} resolves to no address"
        )),
        Some(remote) => Err(format!(
            "agent.metrics_addr {addr:?} is not a loopback address ({} can be reached from other hosts, and the metrics name every followed file); use 127.0.0.1:PORT, or set agent.metrics_allow_remote: true to serve other hosts (firewall the port)",
            remote.ip()
        )),
        None => Ok(()),
    }
}

/// The kernel's hostname, or `localhost` when it cannot be read.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// What a loaded config exposes (see [`crate::secrets`] for the rule).
impl Config {
    /// The secret values of a parsed config: the dedicated fields (`kafka.security.password`,
    /// `kafka.security.oauth.client_secret`, `etcd.password`) and the values of secret keys
    /// of `kafka.properties`. The contents of `*_file` secrets are not read here.
    pub fn secret_values(&self) -> Vec<&str> {
        let cfg = self;
        let sec = &cfg.kafka.security;
        let mut out: Vec<&str> = [
            sec.password.as_deref(),
            sec.oauth.as_ref().and_then(|o| o.client_secret.as_deref()),
            cfg.etcd.as_ref().and_then(|e| e.password.as_deref()),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.extend(
            cfg.kafka
                .properties
                .iter()
                .filter(|(k, _)| crate::secrets::is_secret_key(k))
                .map(|(_, v)| v.as_str()),
        );
        out
    }

    /// The one warning to log at start when credentials would travel unencrypted, naming
    /// what to change; `None` when none do.
    ///
    /// Kafka (the effective settings: `kafka.properties` overrides `kafka.security`): over
    /// `sasl_plaintext`, PLAIN sends the password itself, OAUTHBEARER the bearer token (as
    /// good as the secret until it expires); SCRAM sends neither, but the exchange can be
    /// attacked offline (guessing the password against it) and every line travels in the
    /// clear, so it is warned about too. GSSAPI (Kerberos) is not: it was built for
    /// untrusted networks. etcd: an `http://` endpoint with `etcd.username`: the password
    /// goes in the clear to `/v3/auth/authenticate`, and the token with every request.
    /// Loopback is exempt (as for `oauth.token_endpoint_url`): nothing leaves the host, and
    /// a local proxy or tunnel end (an etcd grpc-proxy, stunnel) is a usual way to encrypt
    /// the rest. Only bootstrap brokers (`bootstrap.servers` in `kafka.properties` wins)
    /// and endpoints that are not loopback count, and are named.
    pub fn plaintext_credentials(&self) -> Option<String> {
        let cfg = self;
        let mut parts = Vec::new();
        let sec = &cfg.kafka.security;
        let props = &cfg.kafka.properties;
        let (protocol, protocol_key) = match props.get("security.protocol") {
            Some(p) => (p.to_ascii_lowercase(), "kafka.properties security.protocol"),
            None => (
                sec.protocol.as_rdkafka().to_owned(),
                "kafka.security.protocol",
            ),
        };
        let mechanism = match props
            .get("sasl.mechanism")
            .or_else(|| props.get("sasl.mechanisms"))
        {
            Some(m) => m.trim().to_ascii_uppercase(),
            None => sec.sasl_mechanism.as_rdkafka().to_owned(),
        };
        let brokers: Vec<&str> = match props.get("bootstrap.servers") {
            Some(b) => b.split(',').map(str::trim).collect(),
            None => cfg.kafka.brokers.iter().map(String::as_str).collect(),
        };
        let remote: Vec<&str> = brokers
            .into_iter()
            .filter(|b| !crate::secrets::is_loopback(b))
            .collect();
        if protocol == "sasl_plaintext" && !remote.is_empty() {
            let what = match mechanism.as_str() {
                m if m == SaslMechanism::Plain.as_rdkafka() => {
                    Some("sends the password in the clear".to_owned())
                }
                m if m == SaslMechanism::OAuthBearer.as_rdkafka() => {
                    Some("sends the bearer token in the clear".to_owned())
                }
                m if m.starts_with("SCRAM-") => Some(
                    "does not send the password, but the exchange can be attacked offline and every line travels in the clear".to_owned(),
                ),
                _ => None,
            };
            if let Some(what) = what {
                parts.push(format!(
                    "{protocol_key} sasl_plaintext with {mechanism} {what} (to {}): set protocol sasl_ssl (and ca_file unless a public CA signed the brokers)",
                    remote.join(", ")
                ));
            }
        }
        if let Some(e) = &cfg.etcd {
            let credentials =
                e.username.is_some() && (e.password.is_some() || e.password_file.is_some());
            let plain: Vec<&str> = e
                .endpoints
                .iter()
                .filter(|u| u.starts_with("http://") && !crate::secrets::is_loopback(u))
                .map(String::as_str)
                .collect();
            if credentials && !plain.is_empty() {
                parts.push(format!(
                    "etcd.endpoints {} with etcd.username send the password and the auth token in the clear: use https:// endpoints (and etcd.ca_file)",
                    plain.join(", ")
                ));
            }
        }
        if parts.is_empty() {
            None
        } else {
            Some(format!(
                "credentials travel unencrypted: {}",
                parts.join("; ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("agent.yaml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("kafka:\n  brokers: [\"127.0.0.1:9092\"]\n").unwrap();
        assert_eq!(c.kafka.acks, Acks::All);
        assert_eq!(c.kafka.compression, Compression::Lz4);
        assert_eq!(c.agent.max_line_bytes, 1_000_000);
        assert!(
            !c.agent.allow_hardlinks,
            "hard-linked files are refused by default"
        );
        assert_eq!(c.agent, AgentConfig::default());
        assert!(c.collect.is_empty());
        let c = parse("kafka:\n  brokers: [b:1]\nagent:\n  allow_hardlinks: true\n").unwrap();
        assert!(c.agent.allow_hardlinks);
    }

    #[test]
    fn acks_accept_numbers_and_all() {
        for (v, want) in [("0", Acks::None), ("1", Acks::Leader), ("all", Acks::All)] {
            let c = parse(&format!("kafka:\n  brokers: [b:1]\n  acks: {v}\n")).unwrap();
            assert_eq!(c.kafka.acks, want);
        }
        assert!(parse("kafka:\n  brokers: [b:1]\n  acks: 2\n").is_err());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse("kafka:\n  brokers: [b:1]\nagent:\n  data_dri: /tmp\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_dri"), "{e}");
        assert!(e.contains('4'), "line number missing: {e}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let e = parse("kafka:\n  brokers: [b:1]\nagent:\n  channel_capacity: lots\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("channel_capacity") || e.contains("lots"), "{e}");
    }

    #[test]
    fn bad_collect_entry_is_an_error() {
        let e = parse("kafka:\n  brokers: [b:1]\ncollect:\n  - path: rel.log\n    topic: t\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not absolute"), "{e}");
    }

    #[test]
    fn the_packaged_config_names_its_placeholders_until_they_are_filled_in() {
        let packaged = include_str!("../packaging/agent.yaml");
        assert!(!packaged.contains("127.0.0.1"), "a demo address");
        let e = parse(packaged).unwrap_err().to_string();
        assert!(
            e.contains("kafka.brokers, etcd.endpoints still hold the placeholder CHANGE_ME"),
            "{e}"
        );
        assert!(e.contains("delete the etcd: section"), "{e}");
        let filled = packaged.replace(PLACEHOLDER, "kafka1.example.com");
        let c = parse(&filled).unwrap();
        assert_eq!(c.agent.data_dir, Path::new("/var/lib/logagent"));
        assert_eq!(c.agent.allowed_paths, default_allowed_paths());
        assert_eq!(c.agent.ip, None, "detected, not a demo address");
        assert!(c.etcd.is_some());
        // In a static list too, wherever it is left.
        let e = parse(
            "kafka:\n  brokers: [b:1]\ncollect:\n  - {path: /var/log/a.log, topic: CHANGE_ME}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("collect.topic still holds the placeholder"),
            "{e}"
        );
    }

    #[test]
    fn exactly_once_settings_are_checked() {
        let with = |k: &str| {
            parse(&format!(
                "kafka:\n  brokers: [b:1]\n  delivery: exactly_once\n{k}"
            ))
        };
        let c = with("").unwrap();
        assert_eq!(c.kafka.delivery, Delivery::ExactlyOnce);
        assert_eq!(c.kafka.transactions.offsets_topic, "logagent-offsets");
        assert_eq!(c.kafka.transactions.commit_interval_ms, 1000);
        for (bad, says) in [
            ("  acks: 1\n", "acks: all"),
            ("  idempotence: false\n", "idempotence: true"),
            ("  transactions:\n    timeout_ms: 500\n", "timeout_ms"),
            ("  transactions:\n    timeout_ms: 2000\n    commit_interval_ms: 1500\n", "half of timeout_ms"),
            ("  transactions:\n    offsets_topic: \"\"\n", "offsets_topic"),
            ("  transactions:\n    id: \"\"\n", "id must not be empty"),
            ("  security:\n    protocol: sasl_plaintext\n    sasl_mechanism: OAUTHBEARER\n    oauth:\n      token_endpoint_url: http://127.0.0.1:1/t\n      client_id: c\n      client_secret: s\n", "OAUTHBEARER"),
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // at_least_once ignores the section's values.
        parse("kafka:\n  brokers: [b:1]\n  acks: 1\n  transactions:\n    timeout_ms: 500\n")
            .unwrap();
        assert!(parse("kafka:\n  brokers: [b:1]\n  delivery: twice\n").is_err());
    }

    #[test]
    fn resolved_config_round_trips() {
        let c =
            parse("kafka:\n  brokers: [b:1]\ncollect:\n  - path: /a.log\n    topic: t\n").unwrap();
        let again = parse(&c.to_yaml()).unwrap();
        assert_eq!(again.collect, c.collect);
    }

    #[test]
    fn a_remote_metrics_addr_needs_the_opt_in() {
        let with = |agent: &str| parse(&format!("kafka:\n  brokers: [b:1]\nagent:\n{agent}"));
        for ok in [
            "127.0.0.1:9108",
            "127.0.0.2:0",
            "\"[::1]:9108\"",
            "localhost:9108",
        ] {
            with(&format!("  metrics_addr: {ok}\n")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for remote in ["0.0.0.0:9108", "\"[::]:9108\"", "10.1.2.3:9108"] {
            let e = with(&format!("  metrics_addr: {remote}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("agent.metrics_addr"), "{e}");
            assert!(e.contains("metrics_allow_remote"), "{e}");
            with(&format!(
                "  metrics_addr: {remote}\n  metrics_allow_remote: true\n"
            ))
            .unwrap();
        }
        let e = with("  metrics_addr: \"9108\"\n").unwrap_err().to_string();
        assert!(e.contains("agent.metrics_addr"), "{e}");
    }
}
