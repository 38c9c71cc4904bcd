//! Wiring: registry, channel, producer thread, supervisor, and the orderly shutdown.
//!
//! Shutdown order matters for the delivery guarantee: tailers stop first (their senders
//! close), the producer drains the channel, flushes librdkafka for at most
//! `shutdown_timeout_ms`, and writes the final checkpoint of what Kafka acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::HashMap;

use log::{info, warn};
use thiserror::Error;

use crate::central::{self, CentralContext, FileStatus, Followers};
use crate::collect::CollectEntry;
use crate::config::Config;
use crate::metrics::{self, Loss, Metrics};
use crate::registry::{Origin, Registry, RegistryError};
use crate::ship::{ProducerError, ProducerLoop, ProducerStats, WantedTopics};
use crate::stop::StopToken;
use crate::supervisor::Supervisor;
use crate::tail::TailShared;

/// Why the agent could not run.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Another agent uses the data_dir, or it cannot be locked.
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    /// The Kafka producer could not be created.
    #[error(transparent)]
    Producer(#[from] ProducerError),
    /// A thread could not be started.
    #[error("cannot start the producer thread: {0}")]
    Thread(std::io::Error),
    /// The producer thread panicked.
    #[error("the producer thread panicked")]
    ProducerPanicked,
    /// The central config cannot be set up.
    #[error("{0}")]
    Central(String),
    /// The metrics server cannot be set up.
    #[error(transparent)]
    Metrics(#[from] metrics::ServeError),
    /// Exactly-once delivery cannot start (fenced: exit 4).
    #[error("exactly-once delivery: {0}")]
    Transactions(#[from] crate::ship::txn::TxnError),
}

/// Runs the agent on the static `collect:` list (or the central config) until
/// `shutdown` fires.
pub fn run(cfg: Config, shutdown: StopToken) -> Result<ProducerStats, AgentError> {
    run_reloadable(cfg, shutdown, crossbeam_channel::never())
}

/// [`run`], and each collect list received on `reloads` (a SIGHUP's, see
/// [`crate::reload`]) replaces the static one at the next rescan tick
/// (`glob_interval_ms`). Under a central config they are not read: etcd owns the list.
pub fn run_reloadable(
    cfg: Config,
    shutdown: StopToken,
    reloads: crossbeam_channel::Receiver<Vec<CollectEntry>>,
) -> Result<ProducerStats, AgentError> {
    let cfg = Arc::new(cfg);
    let hostname = cfg.hostname();
    // One agent per data_dir, held until this function returns (the process ends).
    let _data_dir = crate::datadir::lock(&cfg.agent.data_dir)?;
    let mut reg = Registry::open(&cfg.agent.data_dir)?;
    match reg.origin().clone() {
        Origin::File => {}
        Origin::Previous { why } => warn!(
            "{why}; using the previous registry (registry.json.prev, one checkpoint older): lines acknowledged since may be shipped again"
        ),
        Origin::Missing => {
            // A deleted registry must not turn every path this host followed into a
            // new one, started at its end (`from: end`): what was written while the
            // agent was down would be skipped. The cached central config names them.
            let followed = if cfg.etcd.is_some() {
                central::cached_paths(&cfg.agent.data_dir)
            } else {
                Vec::new()
            };
            if !followed.is_empty() {
                warn!(
                    "{} is missing, but the cached central config shows {} paths were followed here; reading their files from the beginning (lines may be shipped again) rather than from their end",
                    cfg.agent.data_dir.join("registry.json").display(),
                    followed.len()
                );
                reg.propose(crate::registry::Proposal::Followed {
                    paths: followed.iter().map(String::as_str).collect(),
                    now: crate::registry::unix_now(),
                });
            }
        }
    }
    let registry = Arc::new(Mutex::new(reg));
    // Problems that retrying cannot fix (bad TLS files) fail the start, before any thread.
    let etcd = match &cfg.etcd {
        Some(e) => Some(
            central::client(e).map_err(|e| AgentError::Central(format!("central config: {e}")))?,
        ),
        None => None,
    };
    info!(
        "logagent {} starting: host {hostname}, brokers {}, registry {}",
        env!("CARGO_PKG_VERSION"),
        cfg.kafka.brokers.join(","),
        cfg.agent.data_dir.join("registry.json").display()
    );
    raise_nofile(cfg.agent.max_files);
    check_tasks_max(cfg.agent.max_files);
    let (tx, rx) = crossbeam_channel::bounded(cfg.agent.channel_capacity);
    let room = Arc::new(crate::chunk::Room::default());
    let producer_room = room.clone();
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = &cfg.agent.metrics_addr {
        let stall = Duration::from_millis(cfg.agent.stall_warn_ms);
        metrics::serve(
            addr,
            cfg.agent.metrics_allow_remote,
            metrics.clone(),
            registry.clone(),
            stall,
        )?;
    }
    let wanted_topics = Arc::new(WantedTopics::default());
    let mut producer = ProducerLoop::new(
        cfg.clone(),
        hostname.clone(),
        registry.clone(),
        metrics.clone(),
        wanted_topics.clone(),
    )?;
    if cfg.kafka.delivery == crate::config::Delivery::ExactlyOnce {
        // Before any tailer: where each file stands is what the offsets topic says.
        let committed = match producer.start_transactions(&shutdown) {
            Ok(c) => c,
            Err(crate::ship::txn::TxnError::Stopped) => return Ok(ProducerStats::default()),
            Err(e) => return Err(e.into()),
        };
        let n = committed.len();
        let id = producer.transactional_id().unwrap_or_default().to_owned();
        let mut reg = registry.lock().unwrap_or_else(|p| p.into_inner());
        let newer = !matches!(reg.origin(), Origin::Missing)
            && reg.files().next().is_some()
            && reg.mirrors() != Some(id.as_str());
        if newer && n == 0 {
            info!("exactly-once delivery starts from the local registry (the offsets topic has no file of this transactional id yet)");
        } else if newer {
            // Written by at_least_once (or an agent before exactly_once, or under
            // another transactional id): its offsets are past what the topic holds,
            // whose lines since then were shipped already.
            warn!(
                "the local registry was written by kafka.delivery: at_least_once (or under another transactional id): its offsets win over the {n} files in the offsets topic, which are written there now"
            );
        } else {
            let differed = reg.adopt(committed);
            if differed > 0 {
                warn!(
                    "{differed} of the {n} files in the offsets topic stood elsewhere in the local registry (a crash before it was written, or a copy from another machine): the offsets topic wins"
                );
            }
        }
        drop(reg);
        producer.commit_at_start();
    } else {
        // at_least_once moves offsets past what an offsets topic of an earlier
        // exactly_once run holds: the registry says so when it is written.
        registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_mirrors(None);
    }
    let producer_stop = shutdown.clone();
    let registry_for_status = registry.clone();
    let problems = Arc::new(Mutex::new(HashMap::new()));
    let producer = std::thread::Builder::new()
        .name("producer".into())
        .spawn(move || producer.run(rx, producer_room, producer_stop))
        .map_err(AgentError::Thread)?;

    let (watcher, _watch_thread, watch_err) = if cfg.agent.inotify {
        crate::tail::watch::Watcher::start(shutdown.clone(), metrics.inotify_watches.clone())
    } else {
        (crate::tail::watch::Watcher::off(), None, None)
    };
    if let Some(e) = watch_err {
        warn!(
            "inotify unavailable ({e}); every file is polled every {} ms",
            cfg.agent.poll_interval_ms
        );
    }
    let shared = TailShared {
        watcher,
        not_watched_logged: Arc::default(),
        tx,
        room,
        registry,
        hostname,
        max_line_bytes: cfg.agent.max_line_bytes,
        poll_interval: Duration::from_millis(cfg.agent.poll_interval_ms),
        rotate_wait: Duration::from_millis(cfg.agent.rotate_wait_ms),
        allow_hardlinks: cfg.agent.allow_hardlinks,
        next_source_id: Arc::new(AtomicU64::new(1)),
        problems: problems.clone(),
        live: Arc::default(),
        metrics: metrics.clone(),
        exactly_once: cfg.kafka.delivery == crate::config::Delivery::ExactlyOnce,
    };
    let mut supervisor = Supervisor::new(shared, wanted_topics);
    supervisor.set_max_files(cfg.agent.max_files);
    if let Some(etcd) = etcd {
        if !cfg.collect.is_empty() {
            warn!("agent.yaml has both etcd: and collect:; the static collect: list is ignored");
        }
        supervisor.set_allowed(crate::collect::AllowList::new(&cfg.agent.allowed_paths));
        let mut tailers = Tailers {
            supervisor: &mut supervisor,
            registry: registry_for_status,
            problems,
            metrics: metrics.clone(),
        };
        let ctx = CentralContext {
            cfg: &cfg,
            followers: &mut tailers,
            metrics,
            shutdown: shutdown.clone(),
        };
        central::run(ctx, etcd);
    } else {
        supervisor.set_static_allowed(cfg.agent.allowed_paths.clone());
        supervisor.apply(cfg.collect.clone());
        info!("following {} files", supervisor.running_paths().len());
        let rescan = Duration::from_millis(cfg.agent.glob_interval_ms);
        while !shutdown.sleep(rescan) {
            // Only the newest list matters when several reloads queued up.
            if let Some(collect) = reloads.try_iter().last() {
                supervisor.apply(collect);
                info!("following {} files", supervisor.running_paths().len());
            }
            supervisor.rescan();
        }
    }
    info!(
        "stopping: tailers first, then draining and flushing (at most {} ms)",
        cfg.agent.shutdown_timeout_ms
    );
    supervisor.shutdown_within(Duration::from_millis(cfg.agent.shutdown_timeout_ms));
    drop(supervisor); // drops the last sender: the producer sees the channel close
    producer.join().map_err(|_| AgentError::ProducerPanicked)
}

/// The agent's tailers as the config thread's [`Followers`] (the adapter lives here, so
/// `central` knows only the trait, not the supervisor).
pub struct Tailers<'a> {
    /// Tailers.
    pub supervisor: &'a mut Supervisor,
    /// Offsets (for status).
    pub registry: Arc<Mutex<Registry>>,
    /// Per-path tailer problems (for status).
    pub problems: Arc<Mutex<HashMap<String, String>>>,
    /// Per-file counters (for status).
    pub metrics: Arc<Metrics>,
}

impl Followers for Tailers<'_> {
    fn apply(&mut self, entries: Vec<CollectEntry>) {
        self.supervisor.apply(entries);
    }

    fn rescan(&mut self) {
        self.supervisor.rescan();
    }

    fn count(&self) -> usize {
        self.supervisor.running_paths().len()
    }

    fn files(&self) -> Vec<FileStatus> {
        let problems = self.problems.lock().map(|p| p.clone()).unwrap_or_default();
        // The size of each file is the one its tailer last saw: no file is looked at
        // here (under the registry lock, a hung mount would stop every thread).
        let followed: Vec<(String, String, Arc<crate::metrics::FileMetrics>)> = self
            .supervisor
            .running()
            .into_iter()
            .map(|(path, topic)| {
                let m = self.metrics.file(&path, &topic);
                (path, topic, m)
            })
            .collect();
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        followed
            .into_iter()
            .map(|(path, topic, m)| {
                let (size, committed) = match m.followed() {
                    Some((id, size)) => (size, reg.get(id).map_or(0, |c| c.offset)),
                    None => (0, 0),
                };
                let bytes_lost = Loss::ALL
                    .iter()
                    .map(|&w| (w.as_str().to_owned(), m.bytes_lost(w)))
                    .filter(|(_, b)| *b > 0)
                    .collect();
                FileStatus {
                    bytes_lost,
                    stalled: m.stalled(),
                    error: problems.get(&path).cloned().or_else(|| m.refusal()),
                    records_refused: m.records_refused.load(Ordering::Relaxed),
                    lines_filtered: m.lines_filtered.load(Ordering::Relaxed),
                    chars_replaced: m.chars_replaced.load(Ordering::Relaxed),
                    lag_bytes: size.saturating_sub(committed),
                    path,
                    topic,
                    committed,
                    size,
                }
            })
            .collect()
    }
}

/// Threads the agent needs beside one per followed file: producer, config, signals,
/// metrics workers, librdkafka's (a few per broker), rotated files draining.
const OWN_THREADS: u64 = 128;

/// Says so when the cgroup's task limit (systemd's `TasksMax`) is below what
/// `max_files` tailer threads need: beyond it a tailer thread cannot start (its file
/// waits and is retried, see the supervisor), which looks like files silently missing.
fn check_tasks_max(max_files: usize) {
    let Ok(cgroups) = std::fs::read_to_string("/proc/self/cgroup") else {
        return;
    };
    let Some(file) = pids_max_file(&cgroups) else {
        return;
    };
    let Ok(text) = std::fs::read_to_string(&file) else {
        return;
    };
    if let Some(why) = tasks_short(text.trim(), max_files) {
        warn!("{why} ({})", file.display());
    }
}

/// The `pids.max` file of this process's cgroup (v2 unified, or v1's pids controller).
fn pids_max_file(proc_self_cgroup: &str) -> Option<std::path::PathBuf> {
    proc_self_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            Some(
                std::path::Path::new("/sys/fs/cgroup")
                    .join(path)
                    .join("pids.max"),
            )
        } else if controllers.split(',').any(|c| c == "pids") {
            Some(
                std::path::Path::new("/sys/fs/cgroup/pids")
                    .join(path)
                    .join("pids.max"),
            )
        } else {
            None
        }
    })
}

/// Why a task limit of `limit` (`pids.max`'s text) is short for `max_files`, if it is.
fn tasks_short(limit: &str, max_files: usize) -> Option<String> {
    let limit: u64 = limit.parse().ok()?; // "max": no limit
    let need = (max_files as u64).saturating_add(OWN_THREADS);
    (limit < need).then(|| {
        format!(
            "the task limit is {limit}, below the {need} threads agent.max_files {max_files} may need (one per file): files beyond it wait until a thread can start; raise TasksMax in the unit, or lower agent.max_files"
        )
    })
}

/// Raises the open-files soft limit to the hard one (a followed file is one descriptor,
/// plus its rotated files while they drain) and says so if even that is short of what
/// `max_files` needs.
fn raise_nofile(max_files: usize) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own; results checked.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return;
    }
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            r = raised;
        }
    }
    // One descriptor per followed file, a few rotated ones kept open, the agent's own.
    let need = max_files.saturating_add(256);
    if (r.rlim_cur as u128) < need as u128 {
        warn!(
            "open files limit is {}, below the {need} that agent.max_files {max_files} may need; files beyond it get 'Too many open files' (raise LimitNOFILE or ulimit -n, or lower agent.max_files)",
            r.rlim_cur
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_task_limit_is_found_and_compared_with_max_files() {
        let v2 = "0::/system.slice/logagent.service\n";
        assert_eq!(
            pids_max_file(v2).unwrap(),
            std::path::Path::new("/sys/fs/cgroup/system.slice/logagent.service/pids.max")
        );
        let v1 = "12:cpu,cpuacct:/x\n5:pids:/system.slice/logagent.service\n";
        assert_eq!(
            pids_max_file(v1).unwrap(),
            std::path::Path::new("/sys/fs/cgroup/pids/system.slice/logagent.service/pids.max")
        );
        assert_eq!(pids_max_file("3:cpu:/x\n"), None);
        assert_eq!(tasks_short("max", 10_000), None);
        assert_eq!(tasks_short("12288", 10_000), None);
        let why = tasks_short("4915", 10_000).unwrap();
        assert!(why.contains("4915") && why.contains("TasksMax"), "{why}");
    }
}
