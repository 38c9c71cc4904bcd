//! What operators see without reading code: counters and gauges shared by the threads,
//! served as Prometheus text on `agent.metrics_addr` (our own small synchronous HTTP
//! server, [`crate::http`]), plus `GET /health`.
//!
//! Hot paths only touch atomics: tailers count per chunk, the producer moves its
//! acknowledgement counts here once per checkpoint.
//!
//! Nothing here looks at a file: a tailer publishes the size of the file it follows
//! ([`FileMetrics::publish_followed`]), and lag is that size minus the acknowledged offset.
//! The counters of a path nobody counts into any more (no tailer follows it, the
//! producer has nothing of it) are removed after `agent.file_metrics_retention_ms`
//! ([`Metrics::retire_unused`]), their values kept in agent-wide sums: a glob over files
//! that come and go does not grow the table, nor `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use thiserror::Error;

use crate::http::{self, Handler, HttpError, Limits, Response};
use crate::registry::{FileId, Registry};

/// Counters of one followed path.
#[derive(Debug, Default)]
pub struct FileMetrics {
    /// The path.
    pub path: String,
    /// Its topic.
    pub topic: String,
    /// Lines handed to the producer.
    pub lines_read: AtomicU64,
    /// Bytes of those lines (newlines included).
    pub bytes_read: AtomicU64,
    /// Lines Kafka acknowledged (in file order, as committed).
    pub lines_acked: AtomicU64,
    /// Bytes Kafka acknowledged.
    pub bytes_acked: AtomicU64,
    /// Rename rotations followed.
    pub rotations: AtomicU64,
    /// Truncations noticed (copytruncate).
    pub truncations: AtomicU64,
    /// Pieces of lines longer than `max_line_bytes`.
    pub split_pieces: AtomicU64,
    /// Records given up (larger than the broker accepts).
    pub lines_lost: AtomicU64,
    /// Lines not shipped because of `include_lines` / `exclude_lines` (not lost: their
    /// bytes are committed in file order).
    pub lines_filtered: AtomicU64,
    /// Byte sequences `encoding` could not decode (each shipped as U+FFFD).
    pub chars_replaced: AtomicU64,
    /// Events cut by `multiline.max_lines` / `max_bytes` (the rest began the next one).
    pub events_cut: AtomicU64,
    /// Records Kafka refused (entry errors and transient refusals; held, not lost).
    pub records_refused: AtomicU64,
    /// While Kafka refuses this path's records: why (written by the producer only).
    refusal: Mutex<Option<String>>,
    /// Bytes skipped, indexed by [`Loss`].
    bytes_lost: [AtomicU64; Loss::ALL.len()],
    /// Unix millis of the last acknowledgement.
    pub last_ack_ms: AtomicU64,
    /// 1 while a tailer follows the path.
    pub running: AtomicU64,
    /// Unix millis since when the file has had unacknowledged bytes (0: none).
    pending_since_ms: AtomicU64,
    /// Unix millis since when the file counts as stalled (0: it does not).
    stalled_since_ms: AtomicU64,
    /// The file the tailer follows at the path now and its size, as the tailer last saw
    /// them (`None`: no file open at the path). Lag is computed from this, never by a
    /// stat of another thread.
    followed: Mutex<Option<(FileId, u64)>>,
    /// Unix millis since when nobody but the metrics table holds these counters (0: in
    /// use, or not looked at yet). See [`Metrics::retire_unused`].
    unused_since_ms: AtomicU64,
}

/// Why bytes were skipped instead of shipped. Every skipped byte is counted under one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The file was truncated before these bytes were read, and no copy held them.
    Truncated,
    /// A rotated file was deleted before it was read.
    Deleted,
    /// A rotation was compressed with a format the agent does not decode (xz, zstd,
    /// bzip2) before it was read; counted as the compressed file's size (what it holds
    /// past the saved offset is unknown).
    Compressed,
    /// The topic refused the record as larger than its `max.message.bytes`, also when
    /// sent alone: dropped so that the file goes on.
    TooLarge,
}

impl Loss {
    /// Every reason, in the order of the counters.
    pub const ALL: [Loss; 4] = [
        Loss::Truncated,
        Loss::Deleted,
        Loss::Compressed,
        Loss::TooLarge,
    ];

    /// The label used in logs, metrics and the status document.
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Truncated => "truncated",
            Loss::Deleted => "deleted",
            Loss::Compressed => "compressed",
            Loss::TooLarge => "too_large",
        }
    }
}

impl FileMetrics {
    /// Counts `bytes` skipped for `why`.
    pub fn lose(&self, why: Loss, bytes: u64) {
        self.bytes_lost[why as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes skipped for `why`.
    pub fn bytes_lost(&self, why: Loss) -> u64 {
        self.bytes_lost[why as usize].load(Ordering::Relaxed)
    }

    /// Bytes skipped for any reason.
    pub fn bytes_lost_total(&self) -> u64 {
        Loss::ALL.iter().map(|&w| self.bytes_lost(w)).sum()
    }

    /// Sets (or clears) why Kafka refuses this path's records now.
    pub fn set_refusal(&self, why: Option<String>) {
        *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Why Kafka refuses this path's records, while it does.
    pub fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the file counts as stalled now (see [`Metrics::watch_stalls`]).
    pub fn stalled(&self) -> bool {
        self.stalled_since_ms.load(Ordering::Relaxed) > 0
    }

    /// The tailer follows `id` at the path, `size` bytes long as it last saw it.
    pub fn publish_followed(&self, id: FileId, size: u64) {
        *self.followed.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, size));
    }

    /// The tailer has no file open at the path now (renamed away, deleted, stopped).
    pub fn clear_followed(&self) {
        *self.followed.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The file followed at the path and its size, as its tailer last published them.
    pub fn followed(&self) -> Option<(FileId, u64)> {
        *self.followed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters summed over files, those whose per-file counters were removed included: they
/// never go backwards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sums {
    /// Lines read.
    pub lines_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Lines acknowledged.
    pub lines_acked: u64,
    /// Bytes acknowledged.
    pub bytes_acked: u64,
    /// Bytes lost, indexed by [`Loss`].
    pub bytes_lost: [u64; Loss::ALL.len()],
}

impl Sums {
    fn add(&mut self, f: &FileMetrics) {
        let r = Ordering::Relaxed;
        self.lines_read += f.lines_read.load(r);
        self.bytes_read += f.bytes_read.load(r);
        self.lines_acked += f.lines_acked.load(r);
        self.bytes_acked += f.bytes_acked.load(r);
        for w in Loss::ALL {
            self.bytes_lost[w as usize] += f.bytes_lost(w);
        }
    }
}

/// The per-file counters, and what the removed ones had counted.
#[derive(Debug, Default)]
struct Files {
    map: BTreeMap<(String, String), Arc<FileMetrics>>,
    /// Sums of the counters removed from `map`.
    retired: Sums,
    /// How many were removed.
    retired_files: u64,
}

/// One file's row of `/metrics`, read under the table's lock (no counter `Arc` is held
/// past it: a clone would look like a user to [`Metrics::retire_unused`]).
struct Row {
    labels: String,
    path: String,
    topic: String,
    values: [u64; PER_FILE.len()],
    lost: [u64; Loss::ALL.len()],
}

/// A per-file series: name, type, help, value.
type PerFile = (
    &'static str,
    &'static str,
    &'static str,
    fn(&FileMetrics) -> u64,
);

/// The per-file series of `/metrics` besides `bytes_lost_total` (which has a reason).
const PER_FILE: [PerFile; 12] = [
    (
        "lines_read_total",
        "counter",
        "Lines read from the file and handed to the producer.",
        |f| f.lines_read.load(Ordering::Relaxed),
    ),
    (
        "bytes_read_total",
        "counter",
        "Bytes of those lines, newlines included.",
        |f| f.bytes_read.load(Ordering::Relaxed),
    ),
    (
        "lines_acked_total",
        "counter",
        "Lines Kafka acknowledged (committed in file order).",
        |f| f.lines_acked.load(Ordering::Relaxed),
    ),
    (
        "bytes_acked_total",
        "counter",
        "Bytes Kafka acknowledged.",
        |f| f.bytes_acked.load(Ordering::Relaxed),
    ),
    (
        "rotations_total",
        "counter",
        "Rename rotations followed.",
        |f| f.rotations.load(Ordering::Relaxed),
    ),
    (
        "truncations_total",
        "counter",
        "Truncations (copytruncate) noticed.",
        |f| f.truncations.load(Ordering::Relaxed),
    ),
    (
        "split_pieces_total",
        "counter",
        "Pieces of lines longer than max_line_bytes.",
        |f| f.split_pieces.load(Ordering::Relaxed),
    ),
    (
        "lines_filtered_total",
        "counter",
        "Lines (events, with multiline) not shipped because of include_lines / exclude_lines (not lost: their bytes are committed in file order).",
        |f| f.lines_filtered.load(Ordering::Relaxed),
    ),
    (
        "chars_replaced_total",
        "counter",
        "Byte sequences the entry's encoding could not decode, shipped as U+FFFD.",
        |f| f.chars_replaced.load(Ordering::Relaxed),
    ),
    (
        "events_cut_total",
        "counter",
        "Multiline events cut by max_lines / max_bytes (nothing dropped: the rest began the next event).",
        |f| f.events_cut.load(Ordering::Relaxed),
    ),
    (
        "records_refused_total",
        "counter",
        "Records Kafka refused (held and sent again, not lost).",
        |f| f.records_refused.load(Ordering::Relaxed),
    ),
    (
        "refused",
        "gauge",
        "1 while Kafka refuses the path's records (the file is held; see the status document or the log for why).",
        |f| u64::from(f.refusal().is_some()),
    ),
];

/// Agent-wide metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    files: Mutex<Files>,
    /// Records librdkafka holds (queued or in flight).
    pub kafka_queue: AtomicU64,
    /// Chunks waiting in the tailers → producer channel.
    pub channel_depth: AtomicU64,
    /// Capacity of that channel.
    pub channel_capacity: AtomicU64,
    /// Delivery reports with an error.
    pub delivery_errors: AtomicU64,
    /// Records the producer holds back while Kafka refuses their source.
    pub held_records: AtomicU64,
    /// Buffer bytes of those records.
    pub held_bytes: AtomicU64,
    /// Registry writes that failed.
    pub checkpoint_errors: AtomicU64,
    /// `kafka.delivery: exactly_once`: transactions committed.
    pub transactions_committed: AtomicU64,
    /// Wanted topics the brokers say do not exist.
    pub missing_topics: Arc<Mutex<BTreeSet<String>>>,
    /// Why the brokers refuse the agent itself (credentials, TLS), while they do.
    pub kafka_refused: Arc<Mutex<Option<String>>>,
    /// `mod_revision` of the central config applied.
    pub config_revision: AtomicI64,
    /// Central config values rejected.
    pub config_rejected: AtomicU64,
    /// Failed etcd requests.
    pub etcd_errors: AtomicU64,
    /// Unix millis of the producer's last progress (acks, or nothing left to send).
    pub last_progress_ms: AtomicU64,
    /// Followed files that are polled, not watched with inotify.
    pub files_polled: AtomicU64,
    /// inotify watches held (files and directories).
    pub inotify_watches: Arc<AtomicU64>,
    /// Files found beyond `agent.max_files`, not followed yet.
    pub files_waiting: AtomicU64,
    /// The first few of them.
    pub waiting_sample: Mutex<Vec<String>>,
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// The counters of `path` sent to `topic`: created on first use, kept while anyone
    /// holds them and for a while after (see [`Metrics::retire_unused`]; a path followed
    /// again after that starts from 0, a counter reset).
    pub fn file(&self, path: &str, topic: &str) -> Arc<FileMetrics> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .map
            .entry((path.to_owned(), topic.to_owned()))
            .or_insert_with(|| {
                Arc::new(FileMetrics {
                    path: path.to_owned(),
                    topic: topic.to_owned(),
                    ..Default::default()
                })
            })
            .clone()
    }

    /// Records that the producer made progress now.
    pub fn progress(&self) {
        self.last_progress_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// Whether the producer made progress within `stall`.
    pub fn healthy(&self, stall: Duration) -> bool {
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        unix_ms().saturating_sub(last) <= stall.as_millis() as u64
    }

    /// The stall detector, run about once a second: a followed file with unacknowledged
    /// bytes and no acknowledgement for `warn_after` is reported once (log line,
    /// status document, `files_stalled`), and again once it recovers.
    pub fn watch_stalls(&self, registry: &Mutex<Registry>, warn_after: Duration) {
        let now = unix_ms();
        let limit = warn_after.as_millis() as u64;
        for (f, lag) in self.lags(registry) {
            let stalled_since = f.stalled_since_ms.load(Ordering::Relaxed);
            if lag == 0 {
                f.pending_since_ms.store(0, Ordering::Relaxed);
                if stalled_since > 0 {
                    f.stalled_since_ms.store(0, Ordering::Relaxed);
                    info!(
                        "{}: recovered from a stall of {} s, everything is acknowledged",
                        f.path,
                        now.saturating_sub(stalled_since) / 1000
                    );
                }
                continue;
            }
            let pending = match f.pending_since_ms.load(Ordering::Relaxed) {
                0 => {
                    f.pending_since_ms.store(now, Ordering::Relaxed);
                    now
                }
                p => p,
            };
            // Progress is the later of "data became pending" and "last acknowledgement".
            let last_ack_ms = f.last_ack_ms.load(Ordering::Relaxed);
            let quiet = now.saturating_sub(pending.max(last_ack_ms));
            if stalled_since == 0 && quiet > limit {
                f.stalled_since_ms.store(now, Ordering::Relaxed);
                warn!(
                    "{}: stalled: {lag} bytes wait and Kafka acknowledged nothing of this file for {} s",
                    f.path,
                    quiet / 1000
                );
            } else if stalled_since > 0 && last_ack_ms > stalled_since {
                f.stalled_since_ms.store(0, Ordering::Relaxed);
                f.pending_since_ms.store(now, Ordering::Relaxed);
                info!(
                    "{}: recovered from a stall of {} s, acknowledgements flow again ({lag} bytes still to ship)",
                    f.path,
                    now.saturating_sub(stalled_since) / 1000
                );
            }
        }
    }

    /// Sums over all files: (lines read, lines acknowledged).
    pub fn totals(&self) -> (u64, u64) {
        let s = self.sums();
        (s.lines_read, s.lines_acked)
    }

    /// Sums over all files, including those whose counters were removed.
    pub fn sums(&self) -> Sums {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = files.retired;
        for f in files.map.values() {
            s.add(f);
        }
        s
    }

    /// How many paths have counters now, and how many were removed so far.
    pub fn file_counts(&self) -> (usize, u64) {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        (files.map.len(), files.retired_files)
    }

    /// Removes the counters of paths nobody counts into any more once that has been so
    /// for `keep` (run about once a second): no tailer follows the path, and the
    /// producer holds nothing of its files (every line read is acknowledged, or was
    /// given up and counted). Their values go into [`Metrics::sums`]. Returns how many
    /// were removed.
    ///
    /// Whoever counts holds the counters' `Arc` (the tailer, each reading generation of
    /// the producer): the table's own is the only one left exactly when nobody does, and
    /// a new user can only get one through the table's lock, held here.
    pub fn retire_unused(&self, keep: Duration, now_ms: u64) -> usize {
        let keep = keep.as_millis() as u64;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut unused = Vec::new();
        for (k, f) in &files.map {
            if Arc::strong_count(f) > 1 {
                f.unused_since_ms.store(0, Ordering::Relaxed);
                continue;
            }
            match f.unused_since_ms.load(Ordering::Relaxed) {
                0 => f.unused_since_ms.store(now_ms.max(1), Ordering::Relaxed),
                since if now_ms.saturating_sub(since) >= keep => unused.push(k.clone()),
                _ => {}
            }
        }
        for k in &unused {
            if let Some(f) = files.map.remove(k) {
                files.retired.add(&f);
                files.retired_files += 1;
            }
        }
        unused.len()
    }

    /// (counters, lag bytes) of every file followed now: the size its tailer last saw
    /// minus the acknowledged offset. No file is looked at here (a hung NFS mount holds
    /// up only its own tailer); the registry lock is held only for the lookups.
    pub fn lags(&self, registry: &Mutex<Registry>) -> Vec<(Arc<FileMetrics>, u64)> {
        let followed: Vec<(Arc<FileMetrics>, FileId, u64)> = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .values()
            .filter(|f| f.running.load(Ordering::Relaxed) == 1)
            .filter_map(|f| f.followed().map(|(id, size)| (f.clone(), id, size)))
            .collect();
        let reg = registry.lock().unwrap_or_else(|p| p.into_inner());
        followed
            .into_iter()
            .map(|(f, id, size)| {
                let committed = reg.get(id).map_or(0, |c| c.offset);
                (f, size.saturating_sub(committed))
            })
            .collect()
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, registry: &Mutex<Registry>, stall: Duration) -> String {
        let r = Ordering::Relaxed;
        let (rows, running, stalled, sums, retired_files) = {
            let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            let rows: Vec<Row> = files
                .map
                .values()
                .map(|f| Row {
                    labels: format!("{{path=\"{}\",topic=\"{}\"}}", esc(&f.path), esc(&f.topic)),
                    path: esc(&f.path),
                    topic: esc(&f.topic),
                    values: PER_FILE.map(|(.., get)| get(f)),
                    lost: Loss::ALL.map(|w| f.bytes_lost(w)),
                })
                .collect();
            let running = files
                .map
                .values()
                .filter(|f| f.running.load(r) == 1)
                .count();
            let stalled = files.map.values().filter(|f| f.stalled()).count();
            let mut sums = files.retired;
            for f in files.map.values() {
                sums.add(f);
            }
            (rows, running, stalled, sums, files.retired_files)
        };
        let mut out = String::with_capacity(4096);
        let mut series = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(
                out,
                "# HELP logagent_{name} {help}\n# TYPE logagent_{name} {kind}"
            );
            for (labels, value) in rows {
                let _ = writeln!(out, "logagent_{name}{labels} {value}");
            }
        };
        for (i, (name, kind, help, _)) in PER_FILE.iter().enumerate() {
            let values = rows
                .iter()
                .map(|row| (row.labels.clone(), row.values[i].to_string()))
                .collect();
            series(name, kind, help, values);
            if *name == "events_cut_total" {
                // The one per-file series with a reason label, in its usual place.
                series(
                    "bytes_lost_total",
                    "counter",
                    "Bytes skipped instead of shipped, by reason (truncated: truncated before read and in no copy; deleted: a rotated file deleted before read; compressed: a rotation compressed with a format the agent does not read).",
                    rows.iter()
                        .flat_map(|row| {
                            Loss::ALL.iter().map(move |&w| {
                                (
                                    format!(
                                        "{{path=\"{}\",topic=\"{}\",reason=\"{}\"}}",
                                        row.path,
                                        row.topic,
                                        w.as_str()
                                    ),
                                    row.lost[w as usize].to_string(),
                                )
                            })
                        })
                        .collect(),
                );
            }
        }
        let lags = self
            .lags(registry)
            .into_iter()
            .map(|(f, lag)| {
                (
                    format!("{{path=\"{}\",topic=\"{}\"}}", esc(&f.path), esc(&f.topic)),
                    lag.to_string(),
                )
            })
            .collect();
        series(
            "lag_bytes",
            "gauge",
            "File size (as its tailer last saw it) minus the acknowledged offset.",
            lags,
        );
        let one = |v: String| vec![(String::new(), v)];
        series(
            "tailers_running",
            "gauge",
            "Files followed now.",
            one(running.to_string()),
        );
        series(
            "files_stalled",
            "gauge",
            "Followed files with lag and no acknowledgement for longer than the stall threshold.",
            one(stalled.to_string()),
        );
        series(
            "agent_lines_read_total",
            "counter",
            "Lines read from all files, those whose per-file series were removed included.",
            one(sums.lines_read.to_string()),
        );
        series(
            "agent_bytes_read_total",
            "counter",
            "Bytes of those lines.",
            one(sums.bytes_read.to_string()),
        );
        series(
            "agent_lines_acked_total",
            "counter",
            "Lines Kafka acknowledged, of all files.",
            one(sums.lines_acked.to_string()),
        );
        series(
            "agent_bytes_acked_total",
            "counter",
            "Bytes Kafka acknowledged, of all files.",
            one(sums.bytes_acked.to_string()),
        );
        series(
            "agent_bytes_lost_total",
            "counter",
            "Bytes skipped instead of shipped, of all files, by reason.",
            Loss::ALL
                .iter()
                .map(|&w| {
                    (
                        format!("{{reason=\"{}\"}}", w.as_str()),
                        sums.bytes_lost[w as usize].to_string(),
                    )
                })
                .collect(),
        );
        series(
            "file_series_removed_total",
            "counter",
            "Paths whose per-file series were removed: not followed, nothing left to acknowledge, for agent.file_metrics_retention_ms.",
            one(retired_files.to_string()),
        );
        series(
            "channel_depth",
            "gauge",
            "Chunks waiting between tailers and producer.",
            one(self.channel_depth.load(r).to_string()),
        );
        series(
            "channel_capacity",
            "gauge",
            "Capacity of that channel.",
            one(self.channel_capacity.load(r).to_string()),
        );
        series(
            "kafka_queue_depth",
            "gauge",
            "Records librdkafka holds, queued or in flight.",
            one(self.kafka_queue.load(r).to_string()),
        );
        series(
            "delivery_errors_total",
            "counter",
            "Delivery reports with an error.",
            one(self.delivery_errors.load(r).to_string()),
        );
        series(
            "held_records",
            "gauge",
            "Records held back in the agent while Kafka refuses their file.",
            one(self.held_records.load(r).to_string()),
        );
        series(
            "held_bytes",
            "gauge",
            "Buffer bytes of those records.",
            one(self.held_bytes.load(r).to_string()),
        );
        series(
            "transactions_committed_total",
            "counter",
            "kafka.delivery exactly_once: transactions committed (lines and offsets together).",
            one(self.transactions_committed.load(r).to_string()),
        );
        series(
            "transaction_restarts_total",
            "counter",
            "kafka.delivery exactly_once: transactions aborted, each followed by a start in place from the committed offsets (since the process began).",
            one(crate::restart::restarts().to_string()),
        );
        series(
            "checkpoint_errors_total",
            "counter",
            "Registry writes that failed (retried at the next checkpoint).",
            one(self.checkpoint_errors.load(r).to_string()),
        );
        series(
            "files_polled",
            "gauge",
            "Followed files polled every poll_interval_ms because inotify cannot watch them.",
            one(self.files_polled.load(r).to_string()),
        );
        series(
            "files_waiting",
            "gauge",
            "Files that match but are not followed: agent.max_files is reached.",
            one(self.files_waiting.load(r).to_string()),
        );
        series(
            "inotify_watches",
            "gauge",
            "inotify watches held (followed files and their directories).",
            one(self.inotify_watches.load(r).to_string()),
        );
        let missing: Vec<(String, String)> = self
            .missing_topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|t| (format!("{{topic=\"{}\"}}", esc(t)), "1".to_owned()))
            .collect();
        series(
            "topic_missing",
            "gauge",
            "1 for each wanted topic the brokers say does not exist.",
            missing,
        );
        series(
            "config_revision",
            "gauge",
            "mod_revision of the central config applied.",
            one(self.config_revision.load(r).to_string()),
        );
        series(
            "config_rejected_total",
            "counter",
            "Central config values rejected.",
            one(self.config_rejected.load(r).to_string()),
        );
        series(
            "etcd_errors_total",
            "counter",
            "Failed etcd requests.",
            one(self.etcd_errors.load(r).to_string()),
        );
        series(
            "kafka_refused",
            "gauge",
            "1 while the brokers refuse the agent's credentials or TLS handshake.",
            one(u64::from(
                self.kafka_refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some(),
            )
            .to_string()),
        );
        let healthy = u64::from(self.healthy(stall));
        series(
            "healthy",
            "gauge",
            "1 when the producer made progress within the stall threshold.",
            one(healthy.to_string()),
        );
        out
    }
}

/// Why the metrics server could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("metrics on {addr}: {source}")]
    Bind {
        /// `agent.metrics_addr`.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The address bound is not loopback and `agent.metrics_allow_remote` is off (the
    /// name resolved elsewhere than when the config was checked).
    #[error("agent.metrics_addr {addr:?} bound {local}, which is not a loopback address; set agent.metrics_allow_remote: true to serve other hosts")]
    Remote {
        /// `agent.metrics_addr`.
        addr: String,
        /// The address bound.
        local: SocketAddr,
    },
    /// A server thread could not be started.
    #[error("metrics: {0}")]
    Http(#[from] HttpError),
}

/// Which answer a path gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/metrics`: the Prometheus text (takes the registry lock for the offsets of the
    /// followed files, looks at no file; a limited number at once).
    Metrics,
    /// `/health`: atomics and one small mutex of the metrics, nothing else.
    Health,
    /// Anything else: 404.
    NotFound,
}

/// The route of `path` (query already cut off).
pub fn route(path: &str) -> Route {
    match path {
        "/metrics" => Route::Metrics,
        "/health" => Route::Health,
        _ => Route::NotFound,
    }
}

/// The answers of the metrics server.
struct Endpoint {
    metrics: Arc<Metrics>,
    registry: Arc<Mutex<Registry>>,
    stall: Duration,
}

impl Handler for Endpoint {
    fn heavy(&self, path: &str) -> bool {
        route(path) == Route::Metrics
    }

    fn handle(&self, path: &str) -> Response {
        match route(path) {
            Route::Metrics => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                extra: "",
                body: self.metrics.render(&self.registry, self.stall),
            },
            Route::Health => health(&self.metrics, self.stall),
            Route::NotFound => Response::text(404, "not found\n"),
        }
    }
}

/// The `/health` answer: 503 while the brokers refuse the agent or the producer made no
/// progress within `stall`, else 200.
fn health(metrics: &Metrics, stall: Duration) -> Response {
    let refused = metrics
        .kafka_refused
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match refused {
        Some(why) => Response::text(503, format!("kafka: {why}\n")),
        None if metrics.healthy(stall) => Response::text(200, "ok\n"),
        None => Response::text(503, "stalled: no delivery progress\n"),
    }
}

/// Serves `/metrics` and `/health` on `addr` (see [`crate::http`] for the limits) in
/// threads of their own. A non-loopback address is refused unless `allow_remote`.
pub fn serve(
    addr: &str,
    allow_remote: bool,
    metrics: Arc<Metrics>,
    registry: Arc<Mutex<Registry>>,
    stall: Duration,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    if !allow_remote && !http::is_loopback(local.ip()) {
        return Err(ServeError::Remote {
            addr: addr.to_owned(),
            local,
        });
    }
    let endpoint = Endpoint {
        metrics,
        registry,
        stall,
    };
    http::serve("metrics", listener, Limits::default(), Arc::new(endpoint))?;
    info!("metrics on http://{local}/metrics, health on http://{local}/health");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/metrics"), Route::Metrics);
        assert_eq!(route("/health"), Route::Health);
        for p in ["/", "/metrics/", "/healthz", "/Health", "//metrics", ""] {
            assert_eq!(route(p), Route::NotFound, "{p}");
        }
    }

    #[test]
    fn only_metrics_is_heavy_and_health_follows_progress_and_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let e = Endpoint {
            metrics: Arc::new(Metrics::default()),
            registry: Arc::new(Mutex::new(Registry::open(dir.path()).unwrap())),
            stall: Duration::from_secs(60),
        };
        assert!(e.heavy("/metrics"));
        assert!(!e.heavy("/health"));
        assert!(!e.heavy("/nope"));
        assert_eq!(e.handle("/nope").status, 404);
        assert_eq!(e.handle("/health").status, 503, "no progress yet");
        e.metrics.progress();
        assert_eq!(e.handle("/health").status, 200);
        *e.metrics.kafka_refused.lock().unwrap() = Some("bad password".into());
        let r = e.handle("/health");
        assert_eq!((r.status, r.body.as_str()), (503, "kafka: bad password\n"));
        let m = e.handle("/metrics");
        assert_eq!(m.status, 200);
        assert!(m.body.contains("logagent_healthy 1"), "{}", m.body);
    }

    #[test]
    fn lags_are_the_published_size_minus_the_committed_offset_of_running_files() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Mutex::new(Registry::open(dir.path()).unwrap());
        let m = Metrics::default();
        let (a, b, c) = (
            FileId { dev: 1, ino: 1 },
            FileId { dev: 1, ino: 2 },
            FileId { dev: 1, ino: 3 },
        );
        reg.lock().unwrap().commit(
            a,
            1,
            "/l/a.log",
            crate::registry::Fingerprint::default(),
            30,
        );
        let fa = m.file("/l/a.log", "t");
        fa.running.store(1, Ordering::Relaxed);
        fa.publish_followed(a, 100);
        let fb = m.file("/l/b.log", "t");
        fb.running.store(1, Ordering::Relaxed);
        fb.publish_followed(b, 40);
        // Running, but no file open at its path (renamed away, deleted): no lag row.
        let gone = m.file("/l/gone.log", "t");
        gone.running.store(1, Ordering::Relaxed);
        gone.publish_followed(c, 10);
        gone.clear_followed();
        // Published once, not followed any more.
        m.file("/l/old.log", "t").publish_followed(c, 10);
        let mut lags: Vec<(String, u64)> = m
            .lags(&reg)
            .into_iter()
            .map(|(f, l)| (f.path.clone(), l))
            .collect();
        lags.sort();
        assert_eq!(
            lags,
            vec![("/l/a.log".to_owned(), 70), ("/l/b.log".to_owned(), 40)]
        );
        // Offsets past the published size (it is a moment old) are no negative lag.
        fb.publish_followed(a, 10);
        assert!(m
            .lags(&reg)
            .iter()
            .all(|(f, l)| f.path != "/l/b.log" || *l == 0));
    }

    #[test]
    fn counters_nobody_holds_are_removed_after_the_retention_and_their_sums_stay() {
        let m = Metrics::default();
        let keep = Duration::from_millis(1000);
        let held = m.file("/l/held.log", "t");
        held.lines_read.store(5, Ordering::Relaxed);
        {
            let gone = m.file("/l/gone.log", "t");
            gone.lines_read.store(7, Ordering::Relaxed);
            gone.lines_acked.store(7, Ordering::Relaxed);
            gone.bytes_read.store(70, Ordering::Relaxed);
            gone.bytes_acked.store(70, Ordering::Relaxed);
            gone.lose(Loss::Deleted, 3);
        }
        let before = m.sums();
        // First look: unused from now on; nothing removed before `keep` passed.
        assert_eq!(m.retire_unused(keep, 10_000), 0);
        assert_eq!(m.retire_unused(keep, 10_999), 0);
        assert_eq!(m.file_counts(), (2, 0));
        assert_eq!(m.retire_unused(keep, 11_000), 1);
        assert_eq!(m.file_counts(), (1, 1));
        assert_eq!(m.sums(), before, "sums never go backwards");
        assert_eq!(m.totals(), (12, 7));
        let dir = tempfile::tempdir().unwrap();
        let reg = Mutex::new(Registry::open(dir.path()).unwrap());
        let text = m.render(&reg, Duration::from_secs(60));
        assert!(!text.contains("/l/gone.log"), "{text}");
        assert!(text.contains("logagent_lines_read_total{path=\"/l/held.log\",topic=\"t\"} 5"));
        assert!(
            text.contains("logagent_agent_lines_read_total 12"),
            "{text}"
        );
        assert!(
            text.contains("logagent_agent_lines_acked_total 7"),
            "{text}"
        );
        assert!(
            text.contains("logagent_agent_bytes_lost_total{reason=\"deleted\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("logagent_file_series_removed_total 1"),
            "{text}"
        );
        // Held all along (a tailer): never removed, however long.
        assert_eq!(m.retire_unused(keep, 99_000), 0);
        // A user in between starts the wait again.
        drop(held);
        assert_eq!(m.retire_unused(keep, 100_000), 0);
        let again = m.file("/l/held.log", "t");
        assert_eq!(m.retire_unused(keep, 101_500), 0);
        drop(again);
        assert_eq!(m.retire_unused(keep, 102_000), 0);
        assert_eq!(m.retire_unused(keep, 102_999), 0);
        assert_eq!(m.retire_unused(keep, 103_000), 1);
        assert_eq!(m.file_counts(), (0, 2));
        assert_eq!(m.totals(), (12, 7));
        // Followed again later: a fresh series (a counter reset), the sums go on.
        m.file("/l/held.log", "t")
            .lines_read
            .store(1, Ordering::Relaxed);
        assert_eq!(m.totals(), (13, 7));
    }
}
