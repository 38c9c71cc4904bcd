//! Everything that speaks librdkafka's language: the client settings derived from
//! `agent.yaml`, the context that copies delivery reports out of librdkafka's callback,
//! the headers every record carries, and what a produce error means for the agent
//! ([`classify`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{error, warn};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use thiserror::Error;

use crate::config::Config;

/// Why the producer could not start.
#[derive(Debug, Error)]
pub enum ProducerError {
    /// librdkafka refused the configuration (a bad `kafka.properties` entry, say); the
    /// text is [`config_refused`]'s, with no secret in it.
    #[error("cannot create Kafka producer: {0}")]
    Create(String),
    /// `kafka.security.password_file` could not be read.
    #[error("kafka.security.password_file {0}")]
    Secret(String),
    /// `kafka.security.oauth` cannot be used (its `ca_file`).
    #[error("{0}")]
    OAuth(#[from] super::oauth::OAuthError),
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
    match &sec.ca_file {
        Some(ca) => {
            c.set("ssl.ca.location", ca.to_string_lossy());
        }
        // The OpenSSL inside is built from source: its compiled-in CA directory is not
        // the system's. `probe` makes librdkafka look in the usual system places
        // (/etc/ssl/certs, /etc/pki/tls, ...), so public CAs (managed Kafka) work.
        None if sec.protocol.is_tls() => {
            c.set("ssl.ca.location", "probe");
        }
        None => {}
    }
    if let (Some(cert), Some(key)) = (&sec.cert_file, &sec.key_file) {
        c.set("ssl.certificate.location", cert.to_string_lossy());
        c.set("ssl.key.location", key.to_string_lossy());
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

/// librdkafka's refusal of `client`'s settings (at client creation), in words with no
/// secret in them: librdkafka echoes a refused value (`Invalid value "…" for
/// configuration property "…"`), and rdkafka adds the key and value to its message.
/// Hidden: the values of every secret key of the settings (the SASL password however it
/// came: `kafka.security`, its `password_file`, `kafka.properties`), and the value of a
/// property librdkafka does not know (it may be a misspelt secret key).
pub fn config_refused(e: &KafkaError, client: &ClientConfig) -> String {
    let mut secrets: Vec<&str> = client
        .config_map()
        .iter()
        .filter(|(k, _)| crate::secrets::is_secret_key(k))
        .map(|(_, v)| v.as_str())
        .collect();
    if let KafkaError::ClientConfig(
        rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
        _,
        _,
        value,
    ) = e
    {
        secrets.push(value);
    }
    crate::secrets::scrub(&e.to_string(), secrets)
}

/// What a produce error means for the records of one collect entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Kafka is slow, away or moving leaders: wait, send again, order kept. librdkafka
    /// retries these by itself (`message.timeout.ms` is 0), so one reaching the agent
    /// is rare (a purge, or a timeout set through `kafka.properties`).
    Transient,
    /// Kafka refuses this entry's records and will until someone changes something:
    /// the topic or partition does not exist, the agent may not write to the topic, the
    /// record is larger than the topic takes, or the entry's settings are invalid. The
    /// entry is held (its file is the buffer) and retried on an interval.
    Entry,
    /// The producer instance is unusable (a fatal idempotence error).
    Fatal,
}

/// Sorts a produce error (at `send` or in a delivery report) into its [`ErrorClass`].
pub fn classify(code: Option<RDKafkaErrorCode>) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        Some(
            C::UnknownPartition
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::InvalidRequiredAcks
            | C::InvalidArgument
            | C::InvalidConfig
            | C::PolicyViolation
            | C::UnsupportedForMessageFormat
            | C::UnsupportedCompressionType,
        ) => ErrorClass::Entry,
        Some(C::Fatal | C::ProducerFenced | C::InvalidProducerEpoch) => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    }
}

/// Whether Kafka refused a record as too large for the topic (`max.message.bytes`).
pub fn too_large(code: Option<RDKafkaErrorCode>) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge)
    )
}

/// A produce error in words an operator can act on: librdkafka's text, plus what to
/// change for the errors whose fix is not obvious from it.
pub fn explain(e: &KafkaError) -> String {
    use RDKafkaErrorCode as C;
    let hint = match e.rdkafka_error_code() {
        Some(C::UnknownPartition) => "; the topic has fewer partitions than the entry names",
        Some(C::UnknownTopic | C::UnknownTopicOrPartition) => {
            "; the topic does not exist (create it, or set kafka.create_topics)"
        }
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => {
            "; grant the agent's principal Write on the topic"
        }
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            "; raise the topic's max.message.bytes or lower agent.max_line_bytes (a line larger than the topic's limit by itself is dropped and counted as too_large)"
        }
        _ => "",
    };
    format!("{e}{hint}")
}

/// A record that Kafka did not take, owned, to be sent again. Its topic and partition
/// are not kept: both follow from its source (see `Partitioner::pick`).
#[derive(Debug)]
pub struct Record {
    /// Slot and sequence number (see `slots::pack`).
    pub opaque: usize,
    /// The key, if the entry is keyed.
    pub key: Option<Vec<u8>>,
    /// The line.
    pub payload: Vec<u8>,
    /// The `host`/`path`/`offset` headers.
    pub headers: Option<OwnedHeaders>,
}

/// One delivery report, copied out of librdkafka's callback.
pub enum Delivered {
    /// Kafka acknowledged the record.
    Ok(usize),
    /// Kafka did not take it; the record comes back to be held or sent again.
    Failed(KafkaError, Box<Record>),
}

/// The librdkafka context: collects delivery reports, and logs client errors once per
/// change instead of once per reconnect attempt.
pub struct Context {
    /// Reports since the producer last took them.
    pub delivered: Mutex<Vec<Delivered>>,
    last_error: Mutex<Option<(String, Instant)>>,
    /// The brokers refuse the agent itself (authentication or TLS): what to tell the
    /// operator, shared with the metrics (`/health`). Cleared by the producer on the next
    /// acknowledgement.
    pub refused: std::sync::Arc<Mutex<Option<String>>>,
    /// Where OAUTHBEARER tokens come from, when that is the mechanism.
    pub oauth: Option<super::oauth::TokenSource>,
}

impl Context {
    /// An empty context.
    pub fn new(refused: std::sync::Arc<Mutex<Option<String>>>) -> Context {
        Context {
            delivered: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
            refused,
            oauth: None,
        }
    }
}

impl Default for Context {
    fn default() -> Self {
        Context::new(Default::default())
    }
}

/// A client error that no retry fixes: the brokers refuse the agent's credentials or
/// the TLS handshake fails. The text says what to check; `None` for other errors
/// (brokers away, a leader moving), which librdkafka rides out by itself.
pub fn refusal(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<String> {
    use RDKafkaErrorCode as C;
    // A connection that broke (a broker restarting, a proxy without a backend) is an
    // outage, whatever phase it broke in: librdkafka then names a local error
    // ("Disconnected", "Local: Broker transport failure", "Local: Timed out").
    if reason.contains("Disconnected") || reason.contains("Local: ") {
        return None;
    }
    let tls = || {
        format!(
            "TLS with the brokers fails: {reason}; check kafka.security.ca_file (the CA that signed the brokers' certificates), cert_file/key_file and their validity dates, then send SIGHUP"
        )
    };
    match code? {
        C::Authentication if reason.contains("OAUTHBEARER token") => Some(format!(
            "the agent gets no OAUTHBEARER token: {reason}; check kafka.security.oauth (token_endpoint_url, client_id, client secret), then send SIGHUP"
        )),
        C::Authentication | C::SaslAuthenticationFailed => Some(format!(
            "the brokers refuse the agent's credentials: {reason}; check kafka.security (username, password or password_file, sasl_mechanism; for OAUTHBEARER the token's issuer and audience), then send SIGHUP"
        )),
        // The broker ended the handshake with an alert (an expired, unknown or missing
        // client certificate): librdkafka reports a transport failure with OpenSSL's
        // words ("ssl/tls alert certificate unknown", "tlsv13 alert certificate
        // required", "tlsv1 alert unknown ca").
        C::BrokerTransportFailure if reason.contains(" alert ") => Some(tls()),
        C::SSL => Some(tls()),
        _ => None,
    }
}

impl ClientContext for Context {
    /// librdkafka asks for a token only when the mechanism is OAUTHBEARER.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    /// A token from `kafka.security.oauth`'s endpoint (librdkafka calls this at start
    /// and before the token expires, on the producer thread's poll). A failure is a
    /// refusal: logged once, shown by `/health`; librdkafka asks again.
    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        let source = self
            .oauth
            .as_ref()
            .ok_or("sasl_mechanism OAUTHBEARER without kafka.security.oauth")?;
        match source.fetch() {
            Ok(t) => Ok(rdkafka::client::OAuthToken {
                token: t.value,
                principal_name: t.principal,
                lifetime_ms: t.expires_ms,
            }),
            // librdkafka reports the failure as an authentication error with this
            // text in it (see `refusal`): logged once there.
            Err(e) => Err(e.into()),
        }
    }

    /// librdkafka's own log, as rdkafka forwards it, except connection failures (`FAIL`):
    /// [`ClientContext::error`] gets the same events and says each once, not once per
    /// reconnect attempt.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            _ if fac == "FAIL" => log::debug!(target: "librdkafka", "librdkafka: {fac} {msg}"),
            L::Emerg | L::Alert | L::Critical | L::Error => {
                error!(target: "librdkafka", "librdkafka: {fac} {msg}")
            }
            L::Warning => warn!(target: "librdkafka", "librdkafka: {fac} {msg}"),
            L::Notice | L::Info => log::info!(target: "librdkafka", "librdkafka: {fac} {msg}"),
            L::Debug => log::debug!(target: "librdkafka", "librdkafka: {fac} {msg}"),
        }
    }

    fn error(&self, err: KafkaError, reason: &str) {
        if let Some(text) = refusal(err.rdkafka_error_code(), reason) {
            // Once per cause until it is fixed: librdkafka reports it on every
            // reconnect attempt, with timings in the text, so the cause is compared.
            let mut refused = lock(&self.refused);
            let cause = |t: &str| t.split_once(':').map(|(c, _)| c.to_owned());
            if refused.as_deref().and_then(cause) != cause(&text) {
                error!("kafka: {text}");
                *refused = Some(text);
            }
            return;
        }
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
                e.clone(),
                Box::new(Record {
                    opaque,
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers: m.headers().map(|h| h.detach()),
                }),
            ),
        };
        lock(&self.delivered).push(d);
    }
}

/// Locks a mutex whose holder may have panicked (the data stays usable: counters and
/// queues, no invariants across fields).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    fn refusals_of_the_agent_itself_are_told_apart_from_brokers_away() {
        use RDKafkaErrorCode as C;
        let says = |c, r| refusal(Some(c), r).map(|t| t.split_once(':').unwrap().0.to_owned());
        let creds = Some("the brokers refuse the agent's credentials".to_owned());
        let tls = Some("TLS with the brokers fails".to_owned());
        assert_eq!(says(C::Authentication, "SASL authentication error"), creds);
        assert_eq!(
            says(C::SaslAuthenticationFailed, "invalid credentials"),
            creds
        );
        assert_eq!(says(C::SSL, "certificate verify failed"), tls);
        assert_eq!(
            says(
                C::Authentication,
                "Failed to acquire SASL OAUTHBEARER token: HTTP 401"
            ),
            Some("the agent gets no OAUTHBEARER token".to_owned())
        );
        assert_eq!(
            says(
                C::BrokerTransportFailure,
                "Receive failed: ssl/tls alert certificate unknown"
            ),
            tls
        );
        assert_eq!(says(C::BrokerTransportFailure, "Connection refused"), None);
        assert_eq!(
            says(
                C::BrokerTransportFailure,
                "Receive failed: tlsv13 alert certificate required"
            ),
            tls
        );
        // Outages in the middle of a handshake are outages.
        assert_eq!(
            says(
                C::SSL,
                "SSL handshake failed: Disconnected: connection reset by peer: connecting to a PLAINTEXT broker listener?"
            ),
            None
        );
        assert_eq!(
            says(
                C::Authentication,
                "SASL SCRAM-SHA-512 mechanism handshake failed: Local: Broker transport failure"
            ),
            None
        );
        assert_eq!(says(C::AllBrokersDown, "1/1 brokers are down"), None);
        assert_eq!(refusal(None, "x"), None);
    }

    #[test]
    fn errors_sort_into_classes() {
        use RDKafkaErrorCode as C;
        for c in [
            C::UnknownPartition,
            C::UnknownTopic,
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
            C::MessageSizeTooLarge,
        ] {
            assert_eq!(classify(Some(c)), ErrorClass::Entry, "{c:?}");
        }
        for c in [
            C::QueueFull,
            C::MessageTimedOut,
            C::BrokerTransportFailure,
            C::NotLeaderForPartition,
            C::RequestTimedOut,
            C::NotEnoughReplicas,
            C::PurgeQueue,
            C::AllBrokersDown,
            C::ThrottlingQuotaExceeded,
        ] {
            assert_eq!(classify(Some(c)), ErrorClass::Transient, "{c:?}");
        }
        assert_eq!(classify(None), ErrorClass::Transient);
        assert_eq!(classify(Some(C::Fatal)), ErrorClass::Fatal);
    }

    #[test]
    fn explanations_say_what_to_change() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition);
        assert!(explain(&e).contains("fewer partitions"));
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(explain(&e).contains("max.message.bytes"));
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
    fn a_refused_setting_is_told_without_its_secret() {
        use rdkafka::producer::BaseProducer;
        let refused = |props: &str| {
            let yaml = format!(
                "kafka:\n  brokers: [b:1]\n  security:\n    protocol: sasl_plaintext\n    username: alice\n    password: pw-in-security\n  properties: {{{props}}}\n"
            );
            let cfg = Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
            let c = client_config(&cfg).unwrap();
            match c.create::<BaseProducer>() {
                Ok(_) => panic!("librdkafka took {props}"),
                Err(e) => (e.to_string(), config_refused(&e, &c)),
            }
        };
        // An unknown (misspelt) property: rdkafka's own text carries the value.
        let (raw, told) = refused("sasl.passwrd: typo-secret");
        assert!(raw.contains("typo-secret"), "{raw}");
        assert!(
            !told.contains("typo-secret") && told.contains("sasl.passwrd"),
            "{told}"
        );
        // An invalid value: librdkafka quotes it.
        let (raw, told) = refused("ssl.key.password: kp-secret, sasl.mechanism: kp-secret");
        assert!(raw.contains("kp-secret"), "{raw}");
        assert!(
            !told.contains("kp-secret") && told.contains("SASL mechanism"),
            "{told}"
        );
        // A secret of the config itself, wherever the error mentions it.
        let (_, told) = refused("linger.ms: pw-in-security");
        assert!(
            !told.contains("pw-in-security") && told.contains("linger.ms"),
            "{told}"
        );
        // Other values stay: they say what to fix.
        let (_, told) = refused("linger.ms: lots");
        assert!(told.contains("lots"), "{told}");
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
}
