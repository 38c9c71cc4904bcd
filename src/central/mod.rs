//! The config thread for central configuration: follows this host's keys in etcd (its
//! own and its groups'), applies each change through the [`Followers`], keeps the last
//! good value of each key when a new one is bad or etcd is away, and writes a status
//! document back (see [`status`]).
//!
//! Watch first, polling as the safety net: after a full (linearizable) read of every
//! key, a watch from the next revision delivers each change as it is committed. Any end
//! of the watch (connection, cancel, compaction, its periodic renewal) leads to a fresh
//! full read and a new watch, with capped, jittered back-off. A cheap serializable
//! re-read every `poll_interval_ms` catches anything a watch missed; what it finds is
//! confirmed by a linearizable read before it applies (a lagging member must not roll a
//! host back). A store revision lower than one seen before means etcd was restored from
//! a snapshot: everything is read again and compared by value, not revision.

pub mod sources;
pub mod status;
mod watch;

use std::fs;
use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use serde::{Deserialize, Serialize};

use crate::collect::{screen, CollectEntry};
use crate::config::{Config, EtcdConfig};
use crate::etcd::{EtcdClient, EtcdError, EtcdSettings, KeyValue, WatchMsg};
use crate::metrics::Metrics;
use crate::stop::StopToken;

use sources::{CachedSource, Observed, Origin, Shadowed, Sources};
pub use status::{FileStatus, Refused, Registration, SourceStatus, StatusDoc};
use status::{StatusFailure, StatusWriter};
use watch::Watch;

/// A watch stream is renewed (a fresh read, a new watch) after about this long, so a
/// connection that died without a word is noticed and replaced.
const WATCH_RENEW: Duration = Duration::from_secs(600);
/// First retry after a failed read; doubles up to [`RETRY_MAX`]. Each wait is drawn
/// from [½, 1½) of it, never longer than [`RETRY_MAX`]: hosts that failed together drift
/// apart with every retry.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A request that timed out means etcd is overloaded (a fleet started or came back
/// together): the next try waits at least this long, not 200 ms, so the retries do not
/// add to the queue that made the timeouts.
const RETRY_AFTER_TIMEOUT: Duration = Duration::from_secs(2);
/// A watch that lived and ended (a member restarted, a connection cut) is replaced by a
/// read at a random point within this long: every host of a member ends its watch in
/// the same instant, and must not read again in the same instant.
const RECONNECT_SPREAD: Duration = Duration::from_secs(2);
/// A watch that lived this long resets the back-off.
const WATCH_HEALTHY: Duration = Duration::from_secs(10);
/// A change the re-read found is given this long to arrive by the watch too before the
/// watch is taken for broken: a re-read that lands between a put and its watch event
/// must not replace a healthy watch.
const WATCH_GRACE: Duration = Duration::from_secs(5);

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

/// The last applied central config (every source), kept in `data_dir` for starts
/// without etcd. Older agents wrote one source as `{key, mod_revision, value}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Cached {
    Sources { sources: Vec<CachedSource> },
    One(CachedSource),
}

fn cache_path(data_dir: &Path) -> PathBuf {
    data_dir.join("central-config.json")
}

fn save_cache(data_dir: &Path, sources: Vec<CachedSource>) -> std::io::Result<()> {
    let path = cache_path(data_dir);
    let tmp = crate::datadir::temp_for(&path);
    let bytes =
        serde_json::to_vec_pretty(&Cached::Sources { sources }).map_err(std::io::Error::other)?;
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)
}

fn load_cache(data_dir: &Path) -> Vec<CachedSource> {
    let Ok(text) = fs::read_to_string(cache_path(data_dir)) else {
        return Vec::new();
    };
    match serde_json::from_str(&text) {
        Ok(Cached::Sources { sources }) => sources,
        Ok(Cached::One(one)) => vec![one],
        Err(_) => Vec::new(),
    }
}

/// The collect paths of the cached central config in `data_dir` (what this host
/// followed when it last heard from etcd).
pub fn cached_paths(data_dir: &Path) -> Vec<String> {
    load_cache(data_dir)
        .iter()
        .filter(|c| c.mod_revision > 0)
        .filter_map(|c| crate::collect::parse_json(&c.value).ok())
        .flatten()
        .map(|e| e.path)
        .collect()
}

/// What the config thread drives: the tailers in the agent, a counting stub in the
/// fleet benchmark.
pub trait Followers {
    /// Follows exactly these entries from now on.
    fn apply(&mut self, entries: Vec<CollectEntry>);
    /// Looks again for files the globs match.
    fn rescan(&mut self);
    /// One line per file followed, for the status document.
    fn files(&self) -> Vec<FileStatus>;
    /// How many files are followed.
    fn count(&self) -> usize;
}

/// What the config thread needs besides etcd.
pub struct CentralContext<'a> {
    /// Agent config.
    pub cfg: &'a Config,
    /// What the collect list drives.
    pub followers: &'a mut dyn Followers,
    /// Counters for operators.
    pub metrics: Arc<Metrics>,
    /// Agent-wide stop.
    pub shutdown: StopToken,
}

/// The etcd client for the `etcd:` section; fails on what retrying cannot fix (bad TLS
/// files, an unreadable password file).
pub fn client(e: &EtcdConfig) -> Result<EtcdClient, String> {
    EtcdClient::new(etcd_settings(e)?).map_err(|e| e.to_string())
}

/// The sources of a host: its key and one per group, keys resolved.
pub fn host_sources(e: &EtcdConfig, ip: &str, hostname: &str) -> Sources {
    let groups: Vec<(String, String)> = e
        .groups
        .iter()
        .map(|g| {
            let key = resolve_key(&e.group_key.replace("{group}", g), ip, hostname);
            (g.clone(), key)
        })
        .collect();
    Sources::new(resolve_key(&e.key, ip, hostname), &groups)
}

/// A small deterministic jitter source (xorshift), seeded per host: 10,000 hosts that lost
/// etcd together must not come back in the same millisecond.
struct Jitter(u64);

impl Jitter {
    fn new(seed: &str) -> Jitter {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(std::process::id());
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        h ^= crate::metrics::unix_ms();
        Jitter(h | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `d` scaled by a factor in [0.8, 1.2).
    fn around(&mut self, d: Duration) -> Duration {
        d.mul_f64(0.8 + (self.next() % 400) as f64 / 1000.0)
    }

    /// `d` scaled by a factor in [0.5, 1.5): retries of hosts that failed together.
    fn wide(&mut self, d: Duration) -> Duration {
        d.mul_f64(0.5 + (self.next() % 1000) as f64 / 1000.0)
    }

    /// A point in [0, d).
    fn within(&mut self, d: Duration) -> Duration {
        let ms = d.as_millis().max(1) as u64;
        Duration::from_millis(self.next() % ms)
    }
}

/// A retry delay drawn from [½, 1½) of `retry`, never longer than [`RETRY_MAX`]; `retry`
/// doubles. The draw is of at most ⅔ of the cap: drawn from the cap itself, a host at
/// it would wait up to 45 s, and operators are told 30 s is the longest an agent waits
/// to read again after etcd is back.
fn next_backoff(jitter: &mut Jitter, retry: &mut Duration) -> Duration {
    let d = jitter.wide((*retry).min(RETRY_MAX * 2 / 3));
    *retry = (*retry * 2).min(RETRY_MAX);
    d
}

/// What one read returned: per source key its answer (or why it may not be read), and
/// this host's own keys (`None`: not readable).
struct Fetched {
    revision: i64,
    /// Per source key, the revision its answer is of (per-key reads differ; 0: denied).
    at: Vec<i64>,
    config: Vec<Result<Option<KeyValue>, String>>,
    own: Vec<Option<Option<KeyValue>>>,
    /// Source keys answered.
    readable: usize,
}

/// The error a source shows when this host may not read its key.
fn denied(key: &str, why: &str) -> String {
    format!("cannot read {key}: {why}")
}

fn is_denied(error: &str) -> bool {
    error.starts_with("cannot read ")
}

struct Central<'a> {
    ctx: CentralContext<'a>,
    ecfg: EtcdConfig,
    client: EtcdClient,
    sources: Sources,
    hostname: String,
    ip: String,
    /// The highest store revision etcd has shown (to tell a restore).
    store_rev: i64,
    reachable: Option<bool>,
    refused: Vec<Refused>,
    /// The conflicts last logged (logged again only when they change).
    shadowed: Vec<Shadowed>,
    applied: bool,
    status: Option<StatusWriter>,
    watch: Option<Watch>,
    watch_started: Instant,
    /// The last watch error logged (the same one again is logged at debug level).
    watch_error: Option<String>,
    /// A revision the re-read found that the watch has not reported yet, and since when.
    unreported: Option<(i64, Instant)>,
    /// Source keys this host may not read (left out of the watch).
    denied: Vec<String>,
    /// Whether the last full read changed a config key.
    last_changed: bool,
    /// Periodic re-reads done (every fourth is linearizable).
    rereads: u64,
    /// The next watch starts after this revision (the oldest answer of the last read).
    watch_from: i64,
    /// The cached config was looked at (once, on the first failure before any apply).
    cache_tried: bool,
    /// The last failure logged (the same one again is not).
    failure_logged: Option<String>,
    /// The next read is a full, linearizable one (start, a broken watch, an outage).
    full_read: bool,
    retry: Duration,
    next_read: Instant,
    jitter: Jitter,
    /// This thread's own token: the watcher's pokes wake only it.
    wake: StopToken,
}

/// Runs the config thread until shutdown.
pub fn run(ctx: CentralContext<'_>, client: EtcdClient) {
    let Some(ecfg) = ctx.cfg.etcd.clone() else {
        return;
    };
    let hostname = ctx.cfg.hostname();
    let ip = host_ip(ctx.cfg);
    let sources = host_sources(&ecfg, &ip, &hostname);
    let status = ecfg.status.then(|| {
        let reg = Registration {
            hostname: hostname.clone(),
            ip: ip.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            status_key: resolve_key(&ecfg.status_key, &ip, &hostname),
            groups: ecfg.groups.clone(),
        };
        StatusWriter::new(
            reg.status_key.clone(),
            Some((resolve_key(&ecfg.agent_key, &ip, &hostname), reg)),
            ecfg.lease_ttl_secs(),
            Duration::from_millis(ecfg.status_refresh_ms),
        )
    });
    info!(
        "central config: {} on {}; {}, re-read every {} ms",
        sources
            .iter()
            .map(|s| s.describe())
            .collect::<Vec<_>>()
            .join(", "),
        ecfg.endpoints.join(","),
        if ecfg.watch {
            "watched"
        } else {
            "not watched (etcd.watch: false)"
        },
        ecfg.poll_interval_ms
    );
    let mut jitter = Jitter::new(&format!("{ip}/{hostname}"));
    let first_read = Instant::now() + jitter.within(Duration::from_millis(ecfg.start_spread_ms));
    let spread = jitter.next();
    let mut client = client;
    client.spread(spread);
    let wake = ctx.shutdown.child();
    let mut c = Central {
        ctx,
        ecfg,
        client,
        sources,
        hostname,
        ip,
        store_rev: 0,
        reachable: None,
        refused: Vec::new(),
        shadowed: Vec::new(),
        applied: false,
        status,
        watch: None,
        watch_started: Instant::now(),
        watch_error: None,
        unreported: None,
        denied: Vec::new(),
        last_changed: false,
        rereads: 0,
        watch_from: 0,
        cache_tried: false,
        failure_logged: None,
        full_read: true,
        retry: RETRY_MIN,
        next_read: first_read,
        jitter,
        wake,
    };
    c.run_loop();
}

impl Central<'_> {
    fn run_loop(&mut self) {
        let check_every = Duration::from_millis(self.ecfg.poll_interval_ms);
        let status_every = Duration::from_millis(self.ecfg.status_interval_ms);
        let heartbeat = Duration::from_millis(self.ecfg.heartbeat_ms);
        let glob_every = Duration::from_millis(self.ctx.cfg.agent.glob_interval_ms);
        let start = Instant::now();
        // Each host at its own phase: a fleet's status writes and keep-alives spread out.
        let mut next_status = start + self.jitter.within(status_every);
        let mut next_keepalive = start + self.jitter.within(heartbeat);
        let mut next_glob = start + glob_every;
        loop {
            self.drain_watch();
            let now = Instant::now();
            if let Some((rev, since)) = self.unreported {
                if now >= since + WATCH_GRACE {
                    info!(
                        "the etcd watch did not report revision {rev} within {} s; reading again and watching anew",
                        WATCH_GRACE.as_secs()
                    );
                    self.unreported = None;
                    self.watch = None;
                    self.full_read = true;
                    self.next_read = now;
                }
            }
            if now >= self.next_read {
                // Every fourth re-read is linearizable: a member cut off from the others
                // still answers serializable reads from its frozen copy, and only a
                // linearizable read (which it cannot serve) moves this host to another.
                self.rereads += 1;
                let full = self.full_read
                    || self.reachable != Some(true)
                    || self.rereads.is_multiple_of(4);
                match self.read(!full) {
                    Ok(()) => {
                        self.next_read = Instant::now() + self.jitter.around(check_every);
                        if self.watch.is_none() && self.ecfg.watch {
                            self.start_watch();
                        }
                        if self.watch.is_none() {
                            // No watch (off, or no key readable): reads are all there is,
                            // and this one worked. With a watch, only a watch that lived
                            // resets the back-off (one that breaks at once must not loop
                            // every 200 ms).
                            self.retry = RETRY_MIN;
                        }
                    }
                    Err(e) => {
                        self.on_failure(&e);
                        if self.client.slow() {
                            self.retry = self.retry.max(RETRY_AFTER_TIMEOUT);
                        }
                        self.next_read = Instant::now() + self.backoff();
                    }
                }
            }
            if now >= next_glob {
                self.ctx.followers.rescan();
                next_glob = Instant::now() + glob_every;
            }
            if now >= next_status {
                self.write_status();
                next_status = Instant::now() + status_every;
            }
            if now >= next_keepalive {
                self.keepalive();
                next_keepalive = Instant::now() + heartbeat;
            }
            let mut wake = self
                .next_read
                .min(next_glob)
                .min(next_status)
                .min(next_keepalive);
            if let Some((_, since)) = self.unreported {
                wake = wake.min(since + WATCH_GRACE);
            }
            if self
                .wake
                .sleep(wake.saturating_duration_since(Instant::now()))
            {
                break;
            }
        }
    }

    /// The next retry delay (jittered), doubling the one after.
    fn backoff(&mut self) -> Duration {
        next_backoff(&mut self.jitter, &mut self.retry)
    }

    fn start_watch(&mut self) {
        // A key this host may not read would cancel the whole watch: it is left out
        // (the re-read tells when it becomes readable).
        let keys: Vec<String> = self
            .sources
            .keys()
            .into_iter()
            .filter(|k| !self.denied.contains(k))
            .collect();
        if keys.is_empty() {
            return; // nothing readable to watch: the re-reads say when that changes
        }
        let from = self.watch_from + 1;
        let renew = self.jitter.around(WATCH_RENEW);
        // The member that answered the read just made: after a failover, not the one
        // this host started with.
        match Watch::start(self.client.fork(), keys, from, renew, self.wake.waker()) {
            Ok(w) => {
                debug!("etcd watch from revision {from}");
                self.watch = Some(w);
                self.watch_started = Instant::now();
            }
            Err(e) => warn!("cannot start the etcd watcher thread: {e}; relying on re-reads"),
        }
    }

    /// Takes every report the watcher has; a watch that ended is replaced by a fresh full
    /// read (and a new watch after it) once the back-off allows.
    fn drain_watch(&mut self) {
        while let Some(report) = self.watch.as_ref().and_then(Watch::try_next) {
            match report {
                Ok(WatchMsg::Created) => {}
                Ok(WatchMsg::Progress { revision }) => {
                    self.store_rev = self.store_rev.max(revision)
                }
                Ok(WatchMsg::Events { revision, events }) => {
                    self.store_rev = self.store_rev.max(revision);
                    if self.unreported.is_some_and(|(r, _)| revision >= r) {
                        self.unreported = None; // late, but the watch works
                    }
                    let mut changed = false;
                    for ev in events {
                        // A read may have gone past this event already (the re-read
                        // found the change first): taking it now would roll back.
                        match self.sources.get_mut(&ev.kv.key) {
                            Some(src) if ev.kv.mod_revision <= src.seen_at => continue,
                            Some(src) => src.seen_at = ev.kv.mod_revision,
                            None => continue,
                        }
                        let kv = (!ev.deleted).then_some(&ev.kv);
                        changed |= self.observe(&ev.kv.key.clone(), kv);
                    }
                    if changed {
                        self.apply();
                    }
                }
                Ok(WatchMsg::Canceled {
                    compact_revision,
                    reason,
                }) => {
                    if compact_revision > 0 {
                        warn!("etcd canceled the watch: revisions before {compact_revision} are compacted; reading every key again");
                    } else {
                        warn!("etcd canceled the watch ({reason}); reading every key again");
                    }
                    self.watch_ended();
                }
                Err(e) => {
                    let lived = self.watch_started.elapsed();
                    let msg = e.to_string();
                    if lived >= WATCH_RENEW.mul_f64(0.75) {
                        debug!("etcd watch renewed after {} s", lived.as_secs());
                    } else if self.watch_error.as_deref() == Some(&msg) {
                        debug!("{msg} (again)");
                    } else {
                        warn!("{msg}; reading every key again, then watching anew");
                        self.watch_error = Some(msg);
                    }
                    self.watch_ended();
                }
            }
        }
    }

    fn watch_ended(&mut self) {
        self.unreported = None;
        self.watch = None;
        self.full_read = true;
        if self.watch_started.elapsed() >= WATCH_HEALTHY {
            self.retry = RETRY_MIN;
            self.watch_error = None; // that watch was fine: a new error is news
            self.next_read = Instant::now() + self.jitter.within(RECONNECT_SPREAD);
        } else {
            self.next_read = Instant::now() + self.backoff();
        }
    }

    /// Every source key and this host's own keys (status, registration) at one
    /// revision; a key this host may not read fails alone (per-key reads then).
    fn fetch(&mut self, serializable: bool) -> Result<Fetched, EtcdError> {
        let keys = self.sources.keys();
        let own = self
            .status
            .as_ref()
            .map(StatusWriter::own_keys)
            .unwrap_or_default();
        let all: Vec<String> = keys.iter().chain(own.iter()).cloned().collect();
        // Own keys by revision only: a status of 10,000 files is ~1.3 MB, not worth
        // fetching every re-read to learn it is still the one written.
        match self.client.get_all_with(&all, serializable, keys.len()) {
            Ok(snap) => {
                let mut kvs = snap.kvs.into_iter();
                let config = kvs.by_ref().take(keys.len()).map(Ok).collect();
                Ok(Fetched {
                    revision: snap.revision,
                    at: vec![snap.revision; keys.len()],
                    config,
                    own: kvs.map(Some).collect(),
                    readable: keys.len(),
                })
            }
            Err(EtcdError::Server { code: 7, .. }) => {
                // PermissionDenied for the whole transaction: one key at a time, so that
                // the keys this host may read still apply.
                let mut f = Fetched {
                    revision: 0,
                    at: Vec::new(),
                    config: Vec::new(),
                    own: Vec::new(),
                    readable: 0,
                };
                for (i, k) in all.iter().enumerate() {
                    let keys_only = if i >= keys.len() { 0 } else { 1 };
                    let mut at = 0;
                    let answer = match self.client.get_all_with(
                        std::slice::from_ref(k),
                        serializable,
                        keys_only,
                    ) {
                        Ok(snap) => {
                            f.revision = f.revision.max(snap.revision);
                            at = snap.revision;
                            Ok(snap.kvs.into_iter().next().flatten())
                        }
                        Err(EtcdError::Server { code: 7, message }) => Err(message),
                        Err(e) => return Err(e),
                    };
                    if i < keys.len() && answer.is_ok() {
                        f.readable += 1;
                    }
                    if i < keys.len() {
                        f.at.push(at);
                        f.config.push(answer);
                    } else {
                        f.own.push(answer.ok());
                    }
                }
                if f.readable == 0 {
                    // Not one source key readable: a failure (the cached config runs at
                    // start), not an answer that every key is gone.
                    return Err(EtcdError::Server {
                        code: 7,
                        message: format!(
                            "permission denied on every key of this host ({})",
                            keys.join(", ")
                        ),
                    });
                }
                Ok(f)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads every key once; applies what changed. A serializable read that finds a
    /// change (or a lower revision) is confirmed by a linearizable one first.
    fn read(&mut self, serializable: bool) -> Result<(), EtcdError> {
        let f = self.fetch(serializable)?;
        self.on_reachable();
        let (status_kv, agent_kv) = (
            f.own.first().cloned().flatten().flatten(),
            // None: not readable; Some(None): absent.
            f.own.get(1).cloned().flatten(),
        );
        let own_known = f.own.first().is_some_and(Option::is_some);
        if serializable {
            let newest = f
                .config
                .iter()
                .zip(self.sources.iter())
                .filter_map(|(kv, s)| match kv {
                    Ok(kv)
                        if s.differs(kv.as_ref()) || s.error.as_deref().is_some_and(is_denied) =>
                    {
                        Some(kv.as_ref().map_or(0, |kv| kv.mod_revision))
                    }
                    Err(why) if s.error.as_deref() != Some(&denied(&s.key, why)) => Some(0),
                    _ => None,
                })
                .max();
            let own_differs = own_known
                && match self.status.as_mut() {
                    Some(w) => w.check_own(
                        &mut self.client,
                        status_kv.as_ref(),
                        agent_kv.as_ref().map(Option::as_ref),
                        false,
                    ),
                    None => false,
                };
            if newest.is_some() || own_differs || f.revision < self.store_rev {
                let changed = self.read_confirmed()?;
                if let (Some(rev), true, Some(_), None) =
                    (newest, changed, &self.watch, self.unreported)
                {
                    debug!("the re-read found revision {rev} before the watch reported it");
                    self.unreported = Some((rev, Instant::now()));
                }
            }
            return Ok(());
        }
        let went_back = f.revision < self.store_rev;
        if went_back {
            warn!(
                "etcd's revision went back from {} to {} (restored from a snapshot?): comparing every key by value and watching anew",
                self.store_rev, f.revision
            );
            self.watch = None;
        }
        self.store_rev = f.revision;
        self.full_read = false;
        if let Some(w) = self.status.as_mut() {
            if went_back {
                w.forget();
            } else if own_known {
                w.check_own(
                    &mut self.client,
                    status_kv.as_ref(),
                    agent_kv.as_ref().map(Option::as_ref),
                    true,
                );
            }
        }
        let keys = self.sources.keys();
        // The watch starts after the oldest answer: with per-key reads, a put to a key
        // read early lands below the newest answer's revision.
        self.watch_from =
            f.at.iter()
                .copied()
                .filter(|&r| r > 0)
                .min()
                .unwrap_or(f.revision);
        for (key, &at) in keys.iter().zip(f.at.iter()) {
            if let Some(src) = self.sources.get_mut(key) {
                if at > 0 {
                    src.seen_at = at;
                }
            }
        }
        let mut changed = false;
        let was_denied = std::mem::take(&mut self.denied);
        for (key, kv) in keys.iter().zip(f.config.iter()) {
            match kv {
                Ok(kv) => {
                    if let Some(src) = self.sources.get_mut(key) {
                        if src.error.as_deref().is_some_and(is_denied) {
                            info!("central config: {key} is readable again");
                            src.error = None;
                            changed = true;
                        }
                    }
                    changed |= self.observe(key, kv.as_ref());
                }
                Err(why) => {
                    let msg = denied(key, why);
                    if !self.sources.has_value(key) {
                        // Denied since before this start: its cached value is its last
                        // good one (and stays in the cache).
                        let cached: Vec<CachedSource> = load_cache(&self.ctx.cfg.agent.data_dir)
                            .into_iter()
                            .filter(|c| c.key == *key)
                            .collect();
                        changed |= self.sources.load_cache(&cached);
                    }
                    if let Some(src) = self.sources.get_mut(key) {
                        if src.error.as_deref() != Some(&msg) {
                            error!("central config: {msg}; keeping its last good value (revision {}); the host's other keys apply", src.revision());
                            src.error = Some(msg);
                        }
                    }
                    self.denied.push(key.clone());
                }
            }
        }
        if self.denied != was_denied {
            self.watch = None; // watch the keys this host may read now
        }
        self.last_changed = changed;
        if changed || !self.applied {
            self.apply();
        }
        Ok(())
    }

    /// A linearizable read after a serializable one saw something; true if a config
    /// key changed.
    fn read_confirmed(&mut self) -> Result<bool, EtcdError> {
        self.read(false)?;
        Ok(self.last_changed)
    }

    /// Takes etcd's answer for `key`; true if the merged list may have changed.
    fn observe(&mut self, key: &str, kv: Option<&KeyValue>) -> bool {
        let Some(src) = self.sources.get_mut(key) else {
            return false;
        };
        match src.observe(kv) {
            Observed::Same => false,
            Observed::Changed => {
                if kv.is_none() {
                    match &src.origin {
                        Origin::Host if self.ecfg.groups.is_empty() => warn!(
                            "central config: key {key} does not exist (deleted?): collecting nothing; offsets are kept"
                        ),
                        Origin::Host => info!("central config: host key {key} does not exist: the groups' lists apply"),
                        Origin::Group(g) => warn!("central config: group {g}: key {key} does not exist: the group adds nothing"),
                    }
                }
                true
            }
            Observed::Rejected(msg) => {
                error!(
                    "central config {msg}; keeping its last good value (revision {})",
                    src.revision()
                );
                self.ctx
                    .metrics
                    .config_rejected
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Applies the merged list of every source's last good value.
    fn apply(&mut self) {
        let merged = self.sources.merged();
        if merged.shadowed != self.shadowed {
            for s in &merged.shadowed {
                warn!(
                    "central config: {} is named by {} and {}; using the entry from {}",
                    s.path, s.used, s.ignored, s.used
                );
            }
            self.shadowed = merged.shadowed.clone();
        }
        let entries: Vec<CollectEntry> = merged.entries.into_iter().map(|f| f.entry).collect();
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
        self.ctx.followers.apply(s.accepted);
        self.applied = true;
        let rev = self.sources.revision();
        self.ctx
            .metrics
            .config_revision
            .store(rev, Ordering::Relaxed);
        info!(
            "central config revision {rev} applied ({}): {} files followed, {} entries refused",
            self.sources
                .iter()
                .map(|s| format!("{} at {}", s.key, s.revision()))
                .collect::<Vec<_>>()
                .join(", "),
            self.ctx.followers.count(),
            self.refused.len()
        );
        if let Err(e) = save_cache(&self.ctx.cfg.agent.data_dir, self.sources.to_cache()) {
            warn!(
                "cannot cache the central config in {}: {e}",
                self.ctx.cfg.agent.data_dir.display()
            );
        }
    }

    fn on_reachable(&mut self) {
        self.failure_logged = None;
        if self.reachable != Some(true) {
            if self.reachable.is_some() {
                info!("etcd reachable again at {}", self.client.endpoint());
            }
            self.reachable = Some(true);
        }
    }

    fn on_failure(&mut self, e: &EtcdError) {
        self.ctx.metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
        self.full_read = true;
        // Nothing applied yet (etcd away, or refusing this host: bad credentials, no
        // permission): the cached config runs meanwhile, whatever the error.
        if !self.applied && !self.cache_tried {
            self.cache_tried = true;
            let data_dir = &self.ctx.cfg.agent.data_dir;
            let cached = load_cache(data_dir);
            if self.sources.load_cache(&cached) {
                warn!(
                    "{e}; running the cached config (revision {}) from {} and retrying",
                    self.sources.revision(),
                    cache_path(data_dir).display()
                );
                self.apply();
            } else {
                warn!("{e}; no cached config yet, collecting nothing until etcd answers");
            }
            self.failure_logged = Some(e.to_string());
            if matches!(e, EtcdError::Unreachable { .. }) {
                self.reachable = Some(false);
            }
            return;
        }
        if !matches!(e, EtcdError::Unreachable { .. }) {
            let msg = e.to_string();
            if self.failure_logged.as_deref() != Some(&msg) {
                warn!("{msg}; keeping the current config and retrying");
                self.failure_logged = Some(msg);
            }
            return;
        }
        if self.reachable == Some(false) {
            return;
        }
        self.reachable = Some(false);
        warn!("{e}; keeping the current config and retrying");
    }

    fn keepalive(&mut self) {
        if self.reachable != Some(true) {
            return;
        }
        if let Some(w) = self.status.as_mut() {
            if let Err(StatusFailure::Unreachable(e)) = w.keepalive(&mut self.client) {
                self.on_failure(&e);
            }
        }
    }

    fn status_doc(&self) -> StatusDoc {
        let m = &self.ctx.metrics;
        StatusDoc {
            version: env!("CARGO_PKG_VERSION").into(),
            hostname: self.hostname.clone(),
            ip: self.ip.clone(),
            config_revision: self.sources.revision(),
            config_error: self.sources.errors(),
            etcd_reachable: self.reachable == Some(true),
            refused: self.refused.clone(),
            files: self.ctx.followers.files(),
            missing_topics: m
                .missing_topics
                .lock()
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default(),
            files_waiting: m.files_waiting.load(Ordering::Relaxed),
            waiting_files: m
                .waiting_sample
                .lock()
                .map(|w| w.clone())
                .unwrap_or_default(),
            sources: self
                .sources
                .iter()
                .map(|s| SourceStatus {
                    key: s.key.clone(),
                    revision: s.revision(),
                    error: s.error.clone(),
                })
                .collect(),
            updated: crate::registry::unix_now(),
        }
    }

    fn write_status(&mut self) {
        if self.reachable != Some(true) || !self.applied || self.status.is_none() {
            return;
        }
        let doc = self.status_doc();
        if let Some(w) = self.status.as_mut() {
            if let Err(StatusFailure::Unreachable(e)) = w.step(&mut self.client, &doc) {
                self.on_failure(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_its_bounds() {
        let mut j = Jitter::new("10.0.0.1/web");
        for _ in 0..1000 {
            let d = j.around(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(8) && d < Duration::from_secs(12),
                "{d:?}"
            );
            assert!(j.within(Duration::from_millis(300)) < Duration::from_millis(300));
            let w = j.wide(Duration::from_secs(2));
            assert!(
                w >= Duration::from_secs(1) && w < Duration::from_secs(3),
                "{w:?}"
            );
        }
    }

    #[test]
    fn no_retry_waits_longer_than_the_cap() {
        // A host whose back-off reached its cap (etcd away for minutes) reads again
        // within RETRY_MAX of etcd's return, as docs/operating.md says; the draw from
        // [½, 1½) of the cap itself waited up to 45 s.
        let mut j = Jitter::new("10.0.0.1/web");
        let mut retry = RETRY_MIN;
        let mut longest = Duration::ZERO;
        for _ in 0..1000 {
            longest = longest.max(next_backoff(&mut j, &mut retry));
        }
        assert_eq!(retry, RETRY_MAX);
        assert!(longest <= RETRY_MAX, "{longest:?}");
        assert!(
            longest >= RETRY_MAX.mul_f64(0.9),
            "still spread: {longest:?}"
        );
    }

    #[test]
    fn hosts_that_fail_together_drift_apart() {
        // Two hosts whose retries start in the same instant: after a few doublings the
        // waits they draw differ (the spread is half the wait, not a fifth).
        let (mut a, mut b) = (Jitter::new("10.0.0.1/a"), Jitter::new("10.0.0.2/b"));
        let mut apart = Duration::ZERO;
        let mut retry = RETRY_AFTER_TIMEOUT;
        for _ in 0..4 {
            let (x, y) = (a.wide(retry), b.wide(retry));
            apart = apart.max(x.abs_diff(y));
            retry = (retry * 2).min(RETRY_MAX);
        }
        assert!(apart >= Duration::from_millis(100), "{apart:?}");
    }

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
