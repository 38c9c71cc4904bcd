//! The config thread for central configuration: reads this host's key in etcd, applies
//! each new revision through the [`Supervisor`], keeps the last good config when a new
//! one is bad or etcd is away, and writes a status document back.
//!
//! Polling, not watching: one range request per interval returns the value and its
//! `mod_revision` together, so there is no gap between "read" and "watch" in which a
//! change could be missed (the classic Go agent's Get-then-Watch race).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use serde::{Deserialize, Serialize};

use crate::collect::{self, screen, AllowList, CollectEntry};
use crate::config::{Config, EtcdConfig};
use crate::etcd::{EtcdClient, EtcdError, EtcdSettings};
use crate::metrics::Loss;
use crate::registry::{FileId, Registry};
use crate::stop::StopToken;
use crate::supervisor::Supervisor;

/// The address of the interface that routes to `endpoint` (a UDP "connect" sends no
/// packet; it only asks the kernel for a route).
pub fn local_ip(endpoint: &str) -> Option<String> {
    let hostport = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect(hostport).ok()?;
    sock.local_addr().ok().map(|a| a.ip().to_string())
}

/// This host's IP: `agent.ip`, or the one that routes to the first etcd endpoint.
pub fn host_ip(cfg: &Config) -> String {
    cfg.agent
        .ip
        .clone()
        .or_else(|| {
            cfg.etcd
                .as_ref()
                .and_then(|e| e.endpoints.first())
                .and_then(|e| local_ip(e))
        })
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// Substitutes `{ip}` and `{hostname}` in a key template.
pub fn resolve_key(template: &str, ip: &str, hostname: &str) -> String {
    template.replace("{ip}", ip).replace("{hostname}", hostname)
}

/// Client settings from the `etcd:` section (reads `password_file`).
pub fn etcd_settings(e: &EtcdConfig) -> Result<EtcdSettings, String> {
    let password = match (&e.password, &e.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(
            fs::read_to_string(f)
                .map_err(|err| format!("etcd.password_file {}: {err}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        (None, None) => None,
    };
    Ok(EtcdSettings {
        endpoints: e.endpoints.clone(),
        username: e.username.clone(),
        password,
        ca_file: e.ca_file.clone(),
        cert_file: e.cert_file.clone(),
        key_file: e.key_file.clone(),
        timeout: Duration::from_millis(e.timeout_ms),
    })
}

/// The last applied central config, kept in `data_dir` for starts without etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    key: String,
    mod_revision: i64,
    value: String,
}

fn cache_path(data_dir: &Path) -> PathBuf {
    data_dir.join("central-config.json")
}

fn save_cache(data_dir: &Path, c: &Cached) -> std::io::Result<()> {
    let path = cache_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?;
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)
}

fn load_cache(data_dir: &Path, key: &str) -> Option<Cached> {
    let text = fs::read_to_string(cache_path(data_dir)).ok()?;
    let c: Cached = serde_json::from_str(&text).ok()?;
    (c.key == key).then_some(c)
}

/// Per-file line of the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refused {
    /// Its path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// What the agent writes to `status_key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Unix seconds of this document.
    pub updated: u64,
}

/// What the config thread needs besides etcd.
pub struct CentralContext<'a> {
    /// Agent config.
    pub cfg: &'a Config,
    /// Tailers.
    pub supervisor: &'a mut Supervisor,
    /// Offsets (for status).
    pub registry: Arc<Mutex<Registry>>,
    /// Per-path tailer problems (for status).
    pub problems: Arc<Mutex<HashMap<String, String>>>,
    /// Counters for operators.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Agent-wide stop.
    pub shutdown: StopToken,
}

struct Central<'a> {
    ctx: CentralContext<'a>,
    client: EtcdClient,
    key: String,
    status_key: Option<String>,
    hostname: String,
    ip: String,
    /// mod_revision of the last value seen (applied or rejected); None: key absent.
    seen: Option<Option<i64>>,
    applied_revision: i64,
    config_error: Option<String>,
    refused: Vec<Refused>,
    reachable: Option<bool>,
    /// The last status-write error logged (logged again only when it changes).
    status_error: Option<String>,
}

/// The etcd client for the `etcd:` section; fails on what retrying cannot fix (bad TLS
/// files, an unreadable password file).
pub fn client(e: &EtcdConfig) -> Result<EtcdClient, String> {
    EtcdClient::new(etcd_settings(e)?).map_err(|e| e.to_string())
}

/// Runs the config thread until shutdown.
pub fn run(ctx: CentralContext<'_>, client: EtcdClient) {
    let Some(ecfg) = ctx.cfg.etcd.clone() else {
        return;
    };
    let hostname = ctx.cfg.hostname();
    let ip = host_ip(ctx.cfg);
    let key = resolve_key(&ecfg.key, &ip, &hostname);
    let status_key = ecfg
        .status
        .then(|| resolve_key(&ecfg.status_key, &ip, &hostname));
    info!(
        "central config: key {key} on {}, polled every {} ms",
        ecfg.endpoints.join(","),
        ecfg.poll_interval_ms
    );
    let mut c = Central {
        ctx,
        client,
        key,
        status_key,
        hostname,
        ip,
        seen: None,
        applied_revision: 0,
        config_error: None,
        refused: Vec::new(),
        reachable: None,
        status_error: None,
    };
    let allowed = AllowList::new(&c.ctx.cfg.agent.allowed_paths);
    c.ctx.supervisor.set_allowed(allowed);
    c.run_loop(&ecfg);
}

impl Central<'_> {
    fn run_loop(&mut self, ecfg: &EtcdConfig) {
        let poll = Duration::from_millis(ecfg.poll_interval_ms);
        let status_every = Duration::from_millis(ecfg.status_interval_ms);
        let glob_every = Duration::from_millis(self.ctx.cfg.agent.glob_interval_ms);
        let mut backoff = poll;
        let mut next_poll = Instant::now();
        let mut next_status = Instant::now() + status_every;
        let mut next_glob = Instant::now() + glob_every;
        loop {
            let now = Instant::now();
            if now >= next_poll {
                let ok = self.poll_once();
                // Capped back-off while etcd is away; the normal interval once it answers.
                backoff = if ok {
                    poll
                } else {
                    (backoff * 2).min(Duration::from_secs(30)).max(poll)
                };
                next_poll = Instant::now() + backoff;
            }
            if now >= next_glob {
                self.ctx.supervisor.rescan();
                next_glob = Instant::now() + glob_every;
            }
            if now >= next_status {
                self.write_status();
                next_status = Instant::now() + status_every;
            }
            let wake = next_poll.min(next_glob).min(next_status);
            if self
                .ctx
                .shutdown
                .sleep(wake.saturating_duration_since(Instant::now()))
            {
                break;
            }
        }
    }

    /// One poll; false when etcd could not be read.
    fn poll_once(&mut self) -> bool {
        match self.client.get(&self.key) {
            Ok(res) => {
                if self.reachable != Some(true) {
                    if self.reachable.is_some() {
                        info!("etcd reachable again at {}", self.client.endpoint());
                    }
                    self.reachable = Some(true);
                }
                let rev = res.kv.as_ref().map(|kv| kv.mod_revision);
                if self.seen != Some(rev) {
                    self.seen = Some(rev);
                    match res.kv {
                        Some(kv) => self.on_value(kv.mod_revision, &kv.value),
                        None => {
                            warn!(
                                "central config: key {} does not exist (deleted?): collecting nothing; offsets are kept",
                                self.key
                            );
                            self.apply_entries(Vec::new(), 0, "[]");
                        }
                    }
                }
                true
            }
            Err(e) => {
                self.on_unreachable(&e);
                false
            }
        }
    }

    fn on_unreachable(&mut self, e: &EtcdError) {
        self.ctx
            .metrics
            .etcd_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let first = self.reachable.is_none();
        if self.reachable != Some(false) {
            self.reachable = Some(false);
            if first {
                let data_dir = &self.ctx.cfg.agent.data_dir;
                match load_cache(data_dir, &self.key) {
                    Some(c) => {
                        warn!(
                            "{e}; running the cached config (revision {}) from {} and retrying",
                            c.mod_revision,
                            cache_path(data_dir).display()
                        );
                        if let Ok(entries) = collect::parse_json(&c.value) {
                            self.apply_screened(entries);
                            self.applied_revision = c.mod_revision;
                            self.seen = Some(Some(c.mod_revision));
                        }
                    }
                    None => {
                        warn!("{e}; no cached config yet, collecting nothing until etcd answers")
                    }
                }
            } else {
                warn!("{e}; keeping the current config and retrying");
            }
        }
    }

    fn on_value(&mut self, rev: i64, value: &[u8]) {
        let text = String::from_utf8_lossy(value);
        match collect::parse_json(&text) {
            Ok(entries) => {
                self.config_error = None;
                self.apply_entries(entries, rev, &text);
            }
            Err(why) => {
                let msg = format!("revision {rev} of {} rejected: {why}", self.key);
                error!(
                    "central config {msg}; keeping the last good config (revision {})",
                    self.applied_revision
                );
                self.config_error = Some(msg);
                self.ctx
                    .metrics
                    .config_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.write_status();
            }
        }
    }

    fn apply_entries(&mut self, entries: Vec<CollectEntry>, rev: i64, raw: &str) {
        self.apply_screened(entries);
        self.applied_revision = rev;
        self.ctx
            .metrics
            .config_revision
            .store(rev, std::sync::atomic::Ordering::Relaxed);
        info!(
            "central config revision {rev} applied: {} files followed, {} entries refused",
            self.ctx.supervisor.running_paths().len(),
            self.refused.len()
        );
        let cached = Cached {
            key: self.key.clone(),
            mod_revision: rev,
            value: raw.to_owned(),
        };
        if let Err(e) = save_cache(&self.ctx.cfg.agent.data_dir, &cached) {
            warn!(
                "cannot cache the central config in {}: {e}",
                self.ctx.cfg.agent.data_dir.display()
            );
        }
        self.write_status();
    }

    fn apply_screened(&mut self, entries: Vec<CollectEntry>) {
        let s = screen(entries, &self.ctx.cfg.agent.allowed_paths);
        for (e, why) in &s.refused {
            error!("central config entry {} refused: {why}", e.path);
        }
        self.refused = s
            .refused
            .into_iter()
            .map(|(e, reason)| Refused {
                path: e.path,
                reason,
            })
            .collect();
        self.ctx.supervisor.apply(s.accepted);
    }

    fn status(&self) -> StatusDoc {
        let problems = self
            .ctx
            .problems
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let reg = self.ctx.registry.lock().unwrap_or_else(|p| p.into_inner());
        let files = self
            .ctx
            .supervisor
            .running()
            .into_iter()
            .map(|(path, topic)| {
                use std::os::unix::fs::MetadataExt;
                let meta = fs::metadata(&path).ok();
                let size = meta.as_ref().map_or(0, |m| m.len());
                let committed = meta
                    .and_then(|m| {
                        reg.get(FileId {
                            dev: m.dev(),
                            ino: m.ino(),
                        })
                    })
                    .map_or(0, |c| c.offset);
                let m = self.ctx.metrics.file(&path, &topic);
                let bytes_lost = Loss::ALL
                    .iter()
                    .map(|&w| (w.as_str().to_owned(), m.bytes_lost(w)))
                    .filter(|(_, b)| *b > 0)
                    .collect();
                FileStatus {
                    bytes_lost,
                    stalled: m.stalled(),
                    error: problems.get(&path).cloned().or_else(|| m.refusal()),
                    records_refused: m.records_refused.load(std::sync::atomic::Ordering::Relaxed),
                    lines_filtered: m.lines_filtered.load(std::sync::atomic::Ordering::Relaxed),
                    chars_replaced: m.chars_replaced.load(std::sync::atomic::Ordering::Relaxed),
                    lag_bytes: size.saturating_sub(committed),
                    path,
                    topic,
                    committed,
                    size,
                }
            })
            .collect();
        StatusDoc {
            version: env!("CARGO_PKG_VERSION").into(),
            hostname: self.hostname.clone(),
            ip: self.ip.clone(),
            config_revision: self.applied_revision,
            config_error: self.config_error.clone(),
            etcd_reachable: self.reachable == Some(true),
            refused: self.refused.clone(),
            files,
            missing_topics: self
                .ctx
                .metrics
                .missing_topics
                .lock()
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default(),
            files_waiting: self
                .ctx
                .metrics
                .files_waiting
                .load(std::sync::atomic::Ordering::Relaxed),
            waiting_files: self
                .ctx
                .metrics
                .waiting_sample
                .lock()
                .map(|w| w.clone())
                .unwrap_or_default(),
            updated: crate::registry::unix_now(),
        }
    }

    fn write_status(&mut self) {
        let Some(key) = self.status_key.clone() else {
            return;
        };
        if self.reachable == Some(false) {
            return;
        }
        let doc = self.status();
        let Ok(bytes) = serde_json::to_vec(&doc) else {
            return;
        };
        match self.client.put(&key, &bytes) {
            Ok(_) => self.status_error = None,
            Err(e @ EtcdError::Unreachable { .. }) => self.on_unreachable(&e),
            Err(e) => {
                let msg = format!("cannot write status to {key}: {e}");
                if self.status_error.as_deref() != Some(&msg) {
                    warn!("{msg}");
                    self.status_error = Some(msg);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_template_and_local_ip() {
        assert_eq!(
            resolve_key("/logagent/{ip}/{hostname}", "10.0.0.1", "web"),
            "/logagent/10.0.0.1/web"
        );
        assert_eq!(
            local_ip("http://127.0.0.1:2379").as_deref(),
            Some("127.0.0.1")
        );
    }
}
