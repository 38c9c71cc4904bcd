//! The status document a host writes back to etcd, and when it writes it.
//!
//! Written when its content changes (not its timestamp), at most once per
//! `status_interval_ms`; fast-moving numbers (offsets, sizes, an order-of-magnitude change
//! of lag aside) are refreshed at most every `status_refresh_ms`. So an idle host creates
//! no revisions at all. The key is attached to a lease kept alive every `heartbeat_ms`
//! (keep-alives create no revisions): a host that dies loses its status when the lease
//! expires, and `logagent fleet` shows it stale from its registration key.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use serde::{Deserialize, Serialize};

use crate::etcd::{EtcdClient, EtcdError, KeyValue};

/// Per-file line of the status document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStatus {
    /// Path followed.
    pub path: String,
    /// Topic.
    pub topic: String,
    /// Acknowledged offset.
    pub committed: u64,
    /// Current size.
    pub size: u64,
    /// `size - committed`.
    pub lag_bytes: u64,
    /// The tailer's current problem, if any, or else why Kafka refuses its records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Records Kafka refused since the agent started (held and sent again, not lost).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub records_refused: u64,
    /// Bytes skipped instead of shipped since the agent started, by reason
    /// (`truncated`, `deleted`, `compressed`); absent when nothing was lost.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bytes_lost: BTreeMap<String, u64>,
    /// Lines not shipped because of `include_lines` / `exclude_lines` (not lost).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lines_filtered: u64,
    /// Byte sequences `encoding` could not decode (shipped as U+FFFD).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chars_replaced: u64,
    /// Unacknowledged lines and no acknowledgement for `stall_warn_ms`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stalled: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A refused entry in the status document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refused {
    /// Its path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// What the agent writes to `status_key`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusDoc {
    /// Agent version.
    pub version: String,
    /// Hostname.
    pub hostname: String,
    /// IP used in the key.
    pub ip: String,
    /// `mod_revision` of the config applied (0: none, or from the cache before etcd answered).
    pub config_revision: i64,
    /// The last rejected value, if the newest one was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    /// Whether etcd answered the last poll.
    pub etcd_reachable: bool,
    /// Entries refused by the allow-list.
    pub refused: Vec<Refused>,
    /// Files followed.
    pub files: Vec<FileStatus>,
    /// Topics the entries name that the brokers say do not exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_topics: Vec<String>,
    /// Files that match but wait: `agent.max_files` is reached.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_waiting: u64,
    /// The first few of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_files: Vec<String>,
    /// The keys the collect list comes from, with the revision of each that applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceStatus>,
    /// Unix seconds of this document.
    pub updated: u64,
}

/// One source of the collect list in the status document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceStatus {
    /// The key.
    pub key: String,
    /// `mod_revision` of the value that applies (0: the key does not exist).
    pub revision: i64,
    /// Why its newest value was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the agent writes once to `agent_key` (no lease): the host stays listed by
/// `logagent fleet` after its status expired, shown stale.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registration {
    /// Hostname.
    pub hostname: String,
    /// IP used in the keys.
    pub ip: String,
    /// Agent version.
    pub version: String,
    /// Its status key.
    pub status_key: String,
    /// Its groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// The order of magnitude of a lag (0, 1, 10, 100, …): the part of it that makes a
/// status change worth a write.
fn magnitude(lag: u64) -> u64 {
    match lag {
        0 => 0,
        n => 10u64.pow(n.ilog10()),
    }
}

/// The document without what changes on a busy healthy host all the time.
fn significant(doc: &StatusDoc) -> StatusDoc {
    let mut d = doc.clone();
    d.updated = 0;
    for f in &mut d.files {
        f.committed = 0;
        f.size = 0;
        f.lag_bytes = magnitude(f.lag_bytes);
    }
    d
}

/// What was last written: the significant part and the whole (both without the time).
#[derive(Debug, Clone, PartialEq)]
struct Written {
    significant: StatusDoc,
    whole: StatusDoc,
    at: Instant,
    /// The key's `mod_revision` from that put: etcd still holds what was written while
    /// the key's revision is this one.
    revision: i64,
}

/// Whether `doc` is worth a write now, given what was written last.
fn worth_writing(last: Option<&Written>, doc: &StatusDoc, now: Instant, refresh: Duration) -> bool {
    let Some(w) = last else {
        return true;
    };
    if significant(doc) != w.significant {
        return true;
    }
    let mut whole = doc.clone();
    whole.updated = 0;
    whole != w.whole && now.duration_since(w.at) >= refresh
}

/// Writes the status document (and the registration) under a lease.
pub struct StatusWriter {
    key: String,
    registration: Option<(String, Registration)>,
    /// The registration's `mod_revision` once it is in etcd as it should be.
    registered: Option<i64>,
    ttl_secs: i64,
    refresh: Duration,
    lease: Option<i64>,
    written: Option<Written>,
    /// The last write error logged (logged again only when it changes).
    error: Option<String>,

    /// The other host last found writing this host's keys (logged once).
    conflict: Option<String>,
    /// The last registration error logged.
    reg_error: Option<String>,
}

/// Why a status step did not happen.
pub enum StatusFailure {
    /// etcd is unreachable: the caller's outage handling takes over.
    Unreachable(EtcdError),
    /// Another failure, already logged.
    Other,
}

impl StatusWriter {
    /// A writer for `key`, its lease living `ttl_secs`; `registration` is written once
    /// (when etcd does not hold the same already) to its key.
    pub fn new(
        key: String,
        registration: Option<(String, Registration)>,
        ttl_secs: i64,
        refresh: Duration,
    ) -> StatusWriter {
        StatusWriter {
            key,
            registration,
            registered: None,
            ttl_secs,
            refresh,
            lease: None,
            written: None,
            error: None,

            conflict: None,
            reg_error: None,
        }
    }

    /// The keys this writer owns (status, then registration), read with the config so
    /// that a store that lost them (restored from a snapshot, `etcdctl del`) gets them
    /// back.
    pub fn own_keys(&self) -> Vec<String> {
        let mut v = vec![self.key.clone()];
        v.extend(self.registration.as_ref().map(|(k, _)| k.clone()));
        v
    }

    /// Whether etcd's answers for [`StatusWriter::own_keys`] (read keys-only: their
    /// revisions) differ from what this writer put; with `take`, the next step writes
    /// again what differs. What differs is read whole to tell a lost document from
    /// another host's (two hosts sharing one IP must not rewrite each other forever).
    pub fn check_own(
        &mut self,
        client: &mut EtcdClient,
        status: Option<&KeyValue>,
        registration: Option<Option<&KeyValue>>,
        take: bool,
    ) -> bool {
        let status_differs = self
            .written
            .as_ref()
            .is_some_and(|w| status.map(|kv| kv.mod_revision) != Some(w.revision));
        let reg_key = self.registration.as_ref().map(|(k, _)| k.clone());
        // `registration: None`: not readable by this host, so not known to be lost.
        let reg_differs = self.registration.is_some()
            && registration.is_some_and(|kv| {
                self.registered
                    .is_some_and(|rev| kv.map(|kv| kv.mod_revision) != Some(rev))
            });
        if !status_differs && !reg_differs {
            if take {
                self.conflict = None;
            }
            return false;
        }
        let ours = self
            .registration
            .as_ref()
            .map(|(_, r)| r.hostname.clone())
            .unwrap_or_default();
        let hostname_at = |client: &mut EtcdClient, key: &str, status: bool| {
            let kv = client.get(key).ok()?.kv?;
            if status {
                serde_json::from_slice::<StatusDoc>(&kv.value)
                    .ok()
                    .map(|d| d.hostname)
            } else {
                serde_json::from_slice::<Registration>(&kv.value)
                    .ok()
                    .map(|r| r.hostname)
            }
        };
        let key = self.key.clone();
        let foreign = (status_differs
            .then(|| hostname_at(client, &key, true))
            .flatten())
        .or_else(|| {
            reg_key
                .as_deref()
                .filter(|_| reg_differs)
                .and_then(|k| hostname_at(client, k, false))
        })
        .filter(|h| *h != ours);
        if let Some(other) = &foreign {
            if take && self.conflict.as_deref() != Some(other) {
                error!(
                    "{}: host {other} writes this host's status too: two hosts share one IP in their keys; set agent.ip (or use {{hostname}} in etcd.status_key and etcd.agent_key)",
                    self.key
                );
                self.conflict = Some(other.clone());
            }
            return false;
        }
        if take {
            self.conflict = None;
            if status_differs {
                info!("{}: etcd does not hold the status last written (restored from a snapshot, or deleted); writing it again", self.key);
                self.written = None;
            }
            if reg_differs {
                self.registered = None;
            }
        }
        true
    }

    /// Forgets what was written (etcd went back to an older revision: what it holds is
    /// not known any more); the next step writes both documents again.
    pub fn forget(&mut self) {
        self.written = None;
        self.registered = None;
    }

    /// Renews the lease; a lease that is gone (etcd was away longer than its TTL, or it
    /// was revoked) is replaced and the document written again at the next step.
    pub fn keepalive(&mut self, client: &mut EtcdClient) -> Result<(), StatusFailure> {
        let Some(id) = self.lease else {
            return Ok(());
        };
        match client.lease_keepalive(id) {
            Ok(true) => Ok(()),
            Ok(false) => {
                info!("status lease {id:x} expired (etcd was away longer than {} s?); writing the status under a new one", self.ttl_secs);
                self.lease = None;
                self.written = None;
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Writes `doc` if it is worth it (see [`worth_writing`]).
    pub fn step(&mut self, client: &mut EtcdClient, doc: &StatusDoc) -> Result<(), StatusFailure> {
        let now = Instant::now();
        // The registration first, and whether or not the status is worth a write: one
        // deleted alone is written again on an idle host too.
        if self.registered.is_none() {
            match self.registration.clone() {
                Some((key, reg)) => match register(client, &key, &reg) {
                    Ok(rev) => {
                        self.registered = Some(rev);
                        self.reg_error = None;
                    }
                    // Tried again next step; the status itself still goes out (a role
                    // without rights on the registration must not silence the host).
                    Err(e) => {
                        if let StatusFailure::Unreachable(e) = self.failed_at(&key, e) {
                            return Err(StatusFailure::Unreachable(e));
                        }
                    }
                },
                None => self.registered = Some(0),
            }
        }
        if !worth_writing(self.written.as_ref(), doc, now, self.refresh) {
            return Ok(());
        }
        let Ok(bytes) = serde_json::to_vec(doc) else {
            return Err(StatusFailure::Other);
        };
        // Twice at most: once more with a new lease when the old one is gone.
        for _ in 0..2 {
            let lease = match self.lease {
                Some(l) => l,
                None => match client.lease_grant(self.ttl_secs) {
                    Ok(l) => {
                        self.lease = Some(l);
                        l
                    }
                    Err(e) => return Err(self.failed(e)),
                },
            };
            match client.put_leased(&self.key, &bytes, lease) {
                Ok(revision) => {
                    let mut whole = doc.clone();
                    whole.updated = 0;
                    self.written = Some(Written {
                        significant: significant(doc),
                        whole,
                        at: now,
                        revision,
                    });
                    self.error = None;

                    return Ok(());
                }
                Err(EtcdError::Server { message, .. }) if message.contains("lease not found") => {
                    self.lease = None;
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
        Err(StatusFailure::Other)
    }

    fn failed(&mut self, e: EtcdError) -> StatusFailure {
        let key = self.key.clone();
        self.failed_at(&key, e)
    }

    fn failed_at(&mut self, key: &str, e: EtcdError) -> StatusFailure {
        if let EtcdError::Unreachable { .. } = e {
            return StatusFailure::Unreachable(e);
        }
        // One memory per key: the registration's and the status's errors alternate
        // every step when both fail, and each is to be logged once.
        let (what, slot) = if key == self.key {
            ("status", &mut self.error)
        } else {
            ("registration", &mut self.reg_error)
        };
        let msg = format!("cannot write the {what} to {key}: {e}");
        if slot.as_deref() != Some(&msg) {
            warn!("{msg}");
            *slot = Some(msg);
        }
        StatusFailure::Other
    }
}

/// Writes the registration unless etcd holds the same already (a restart of the same
/// version creates no revision); returns its `mod_revision`.
fn register(client: &mut EtcdClient, key: &str, reg: &Registration) -> Result<i64, EtcdError> {
    if let Some(kv) = client.get(key)?.kv {
        if serde_json::from_slice::<Registration>(&kv.value).is_ok_and(|r| r == *reg) {
            return Ok(kv.mod_revision);
        }
    }
    let bytes = serde_json::to_vec(reg).map_err(|e| EtcdError::BadResponse(e.to_string()))?;
    client.put(key, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(lag: u64, err: Option<&str>, updated: u64) -> StatusDoc {
        StatusDoc {
            version: "1".into(),
            hostname: "h".into(),
            ip: "10.0.0.1".into(),
            config_revision: 3,
            config_error: None,
            etcd_reachable: true,
            refused: Vec::new(),
            files: vec![FileStatus {
                path: "/l/a".into(),
                topic: "t".into(),
                committed: 1000,
                size: 1000 + lag,
                lag_bytes: lag,
                error: err.map(str::to_owned),
                records_refused: 0,
                bytes_lost: BTreeMap::new(),
                lines_filtered: 0,
                chars_replaced: 0,
                stalled: false,
            }],
            missing_topics: Vec::new(),
            files_waiting: 0,
            waiting_files: Vec::new(),
            sources: Vec::new(),
            updated,
        }
    }

    #[test]
    fn only_a_content_change_is_worth_a_write() {
        let t0 = Instant::now();
        let refresh = Duration::from_secs(300);
        assert!(
            worth_writing(None, &doc(0, None, 1), t0, refresh),
            "the first write"
        );
        let d = doc(0, None, 1);
        let mut whole = d.clone();
        whole.updated = 0;
        let w = Written {
            significant: significant(&d),
            whole,
            at: t0,
            revision: 0,
        };
        assert!(
            !worth_writing(Some(&w), &doc(0, None, 99), t0, refresh),
            "the time alone"
        );
        assert!(
            worth_writing(Some(&w), &doc(0, Some("gone"), 1), t0, refresh),
            "an error"
        );
        assert!(
            worth_writing(Some(&w), &doc(50_000, None, 1), t0, refresh),
            "lag: 0 → 10^4"
        );
        let mut w2 = w.clone();
        w2.significant = significant(&doc(12_000, None, 1));
        w2.whole = doc(12_000, None, 0);
        assert!(
            !worth_writing(Some(&w2), &doc(17_000, None, 1), t0, refresh),
            "lag within its magnitude"
        );
        assert!(
            worth_writing(Some(&w2), &doc(17_000, None, 1), t0 + refresh, refresh),
            "but refreshed after status_refresh_ms"
        );
        assert!(
            !worth_writing(Some(&w2), &doc(12_000, None, 1), t0 + refresh, refresh),
            "nothing changed"
        );
    }

    #[test]
    fn magnitudes() {
        assert_eq!(
            [0, 1, 9, 10, 999, 1000, u64::MAX].map(magnitude),
            [0, 1, 1, 10, 100, 1000, 10_000_000_000_000_000_000]
        );
    }
}
