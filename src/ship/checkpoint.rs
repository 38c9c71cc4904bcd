//! Persistence of what Kafka acknowledged: moves each slot's watermark into the registry,
//! forgets files long gone, and writes the registry to disk.
//!
//! Whether a file long not seen is gone is looked at on a thread of its own
//! ([`Pruner`]), never on the producer thread nor under the registry lock: a stat of a
//! hung NFS mount blocks that thread (and further prunes), nothing else.
//!
//! The producer thread is the only writer of acknowledged offsets; a failed write is an
//! ERROR (once a minute while it lasts), counted in `logagent_checkpoint_errors_total`,
//! and tried again at the next checkpoint: the offsets stay in memory meanwhile.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use log::{error, info, warn};

use crate::metrics::{unix_ms, Metrics};
use crate::registry::{unix_now, Expired, FileId, Registry};

use super::kafka::lock;
use super::slots::Slots;

/// Whether the registry is pruned at this checkpoint: at the first, then at most once a
/// minute after the `last` prune.
fn prune_due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60))
}

/// Whether a failed registry write is logged: the first of a spell, then at most once a
/// minute after the `last` one logged.
fn save_error_news(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) > Duration::from_secs(60))
}

/// Checkpoint state kept between runs.
#[derive(Debug, Default)]
pub struct Checkpointer {
    last_save_error: Option<Instant>,
    last_prune: Option<Instant>,
    /// Started at the first prune with something to look for.
    pruner: Option<Pruner>,
    /// The pruner was still looking at the last prune (said once until it is not).
    prune_busy: bool,
}

/// The thread that looks on disk for the files of expired registry entries
/// ([`Registry::expired`]) and forgets those that are gone.
#[derive(Debug)]
struct Pruner {
    /// One batch waits at most; its thread ends when this is dropped (with the
    /// producer), or stays blocked in a stat of a hung mount until the process ends.
    tx: Sender<Vec<Expired>>,
}

impl Pruner {
    fn start(registry: Arc<Mutex<Registry>>, retention_hours: u64) -> std::io::Result<Pruner> {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<Expired>>(1);
        std::thread::Builder::new()
            .name("registry-prune".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for batch in rx {
                    let gone: Vec<Expired> = batch.into_iter().filter(|e| !e.on_disk()).collect();
                    if gone.is_empty() {
                        continue;
                    }
                    let n = lock(&registry).forget_expired(&gone);
                    if n > 0 {
                        info!("registry: forgot {n} files not seen for {retention_hours} hours");
                    }
                }
            })?;
        Ok(Pruner { tx })
    }
}

impl Checkpointer {
    /// Commits every slot's watermark into the registry (in memory) and moves its ack
    /// counts to the metrics.
    pub fn apply(&mut self, registry: &Arc<Mutex<Registry>>, slots: &mut Slots) {
        let mut reg = lock(registry);
        for i in slots.indices() {
            let Some(s) = slots.get_mut(i) else {
                continue;
            };
            let src = &s.source;
            if let Some(off) = s.tracker.take_commit() {
                reg.commit(src.file, src.id, &src.path, s.fingerprint, off);
            }
            let (lines, bytes) = s.tracker.take_acked();
            if lines > 0 {
                let m = &src.metrics;
                m.lines_acked.fetch_add(lines, Ordering::Relaxed);
                m.bytes_acked.fetch_add(bytes, Ordering::Relaxed);
                m.last_ack_ms.store(unix_ms(), Ordering::Relaxed);
            }
        }
    }

    /// Prunes the registry at most once a minute (see [`Pruner`]) and saves it.
    pub fn persist(
        &mut self,
        registry: &Arc<Mutex<Registry>>,
        slots: &mut Slots,
        metrics: &Metrics,
        retention_hours: u64,
    ) {
        let mut reg = lock(registry);
        let mut active: Vec<FileId> = Vec::new();
        for i in slots.indices() {
            let Some(s) = slots.get_mut(i) else {
                continue;
            };
            active.push(s.source.file);
        }
        let mut expired = Vec::new();
        if prune_due(self.last_prune, Instant::now()) {
            self.last_prune = Some(Instant::now());
            expired = reg.expired(&active, retention_hours * 3600, unix_now());
        }
        match reg.save() {
            Ok(_) => {
                if self.last_save_error.take().is_some() {
                    info!("checkpoint written again");
                }
            }
            Err(e) => {
                metrics.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                if save_error_news(self.last_save_error, Instant::now()) {
                    error!("cannot write checkpoint: {e}; offsets stay in memory, retrying every checkpoint");
                    self.last_save_error = Some(Instant::now());
                }
            }
        }
        drop(reg);
        if !expired.is_empty() {
            self.look_for(registry, expired, retention_hours);
        }
    }

    /// Hands expired entries to the pruner thread (started on first use); skipped while
    /// it still looks at the previous ones.
    fn look_for(
        &mut self,
        registry: &Arc<Mutex<Registry>>,
        expired: Vec<Expired>,
        retention_hours: u64,
    ) {
        if self.pruner.is_none() {
            match Pruner::start(registry.clone(), retention_hours) {
                Ok(p) => self.pruner = Some(p),
                Err(e) => {
                    error!("cannot start the registry prune thread: {e}; files long gone stay in the registry");
                    return;
                }
            }
        }
        let Some(p) = &self.pruner else {
            return;
        };
        let n = expired.len();
        match p.tx.try_send(expired) {
            Ok(()) => self.prune_busy = false,
            Err(TrySendError::Full(_)) => {
                if !self.prune_busy {
                    self.prune_busy = true;
                    warn!("registry: still looking for the files of earlier expired entries (a hung file system?); {n} entries wait for the next prune");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                error!("the registry prune thread is gone; files long gone stay in the registry");
                self.pruner = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ship::testkit::{chunk, source};

    fn registry(dir: &std::path::Path) -> Arc<Mutex<Registry>> {
        Arc::new(Mutex::new(Registry::open(dir).unwrap()))
    }

    #[test]
    fn only_the_acknowledged_prefix_is_committed_and_its_counts_move_to_the_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path());
        let (src, _stop) = source(1, "/l/a.log", 7, "t");
        let mut slots = Slots::default();
        let i = slots.slot_for(&chunk(&src, 0, 3));
        let s = slots.get_mut(i).unwrap();
        let seqs: Vec<u64> = (0..3).map(|k| s.tracker.push(2 * k, 2 * k + 2)).collect();
        let mut c = Checkpointer::default();
        c.apply(&reg, &mut slots);
        let file = FileId { dev: 1, ino: 7 };
        assert!(lock(&reg).get(file).is_none(), "nothing acknowledged yet");
        let s = slots.get_mut(i).unwrap();
        s.tracker.ack(seqs[1] as u32);
        c.apply(&reg, &mut slots);
        assert!(lock(&reg).get(file).is_none(), "line 0 still out");
        let s = slots.get_mut(i).unwrap();
        s.tracker.ack(seqs[0] as u32);
        c.apply(&reg, &mut slots);
        assert_eq!(lock(&reg).get(file).map(|e| e.offset), Some(4));
        assert_eq!(src.metrics.lines_acked.load(Ordering::Relaxed), 2);
        assert_eq!(src.metrics.bytes_acked.load(Ordering::Relaxed), 4);
        // Taken once: a second apply adds nothing.
        c.apply(&reg, &mut slots);
        assert_eq!(src.metrics.lines_acked.load(Ordering::Relaxed), 2);
    }

    /// The slots of `src` with one line (offsets 0..2) sent and acknowledged.
    fn one_line_acked(src: &Arc<crate::chunk::Source>) -> Slots {
        let mut slots = Slots::default();
        let i = slots.slot_for(&chunk(src, 0, 1));
        let s = slots.get_mut(i).unwrap();
        let seq = s.tracker.push(0, 2);
        s.tracker.ack(seq as u32);
        slots
    }

    #[test]
    fn persist_writes_what_apply_committed() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path());
        let (src, _stop) = source(1, "/l/a.log", 7, "t");
        let mut slots = one_line_acked(&src);
        let metrics = Metrics::default();
        let mut c = Checkpointer::default();
        c.apply(&reg, &mut slots);
        assert!(lock(&reg).save_soon(), "a file new to the ledger");
        c.persist(&reg, &mut slots, &metrics, 168);
        assert!(!lock(&reg).save_soon());
        let on_disk = Registry::open(dir.path()).unwrap();
        let e = on_disk.get(FileId { dev: 1, ino: 7 }).unwrap();
        assert_eq!((e.path.as_str(), e.offset), ("/l/a.log", 2));
        assert_eq!(metrics.checkpoint_errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_failed_write_is_counted_each_time_and_the_offsets_stay_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let reg = registry(&data);
        let (src, _stop) = source(1, "/l/a.log", 7, "t");
        let mut slots = one_line_acked(&src);
        let metrics = Metrics::default();
        let mut c = Checkpointer::default();
        c.apply(&reg, &mut slots);
        std::fs::remove_dir_all(&data).unwrap();
        c.persist(&reg, &mut slots, &metrics, 168);
        c.persist(&reg, &mut slots, &metrics, 168);
        assert_eq!(metrics.checkpoint_errors.load(Ordering::Relaxed), 2);
        assert!(c.last_save_error.is_some());
        std::fs::create_dir_all(&data).unwrap();
        c.persist(&reg, &mut slots, &metrics, 168);
        assert_eq!(metrics.checkpoint_errors.load(Ordering::Relaxed), 2);
        assert!(c.last_save_error.is_none(), "written again");
        let on_disk = Registry::open(&data).unwrap();
        assert_eq!(
            on_disk.get(FileId { dev: 1, ino: 7 }).map(|e| e.offset),
            Some(2)
        );
    }

    #[test]
    fn the_prune_runs_at_the_first_checkpoint_then_once_a_minute() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        assert!(prune_due(None, t0));
        assert!(!prune_due(Some(t0), t0 + minute - Duration::from_millis(1)));
        assert!(prune_due(Some(t0), t0 + minute));
    }

    #[test]
    fn a_failed_write_is_logged_at_first_then_at_most_once_a_minute() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        assert!(save_error_news(None, t0));
        assert!(!save_error_news(Some(t0), t0 + minute));
        assert!(save_error_news(
            Some(t0),
            t0 + minute + Duration::from_millis(1)
        ));
    }

    #[test]
    fn the_first_prune_with_expired_entries_marks_the_pruner_started() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path());
        let mut c = Checkpointer::default();
        let gone = Expired {
            id: FileId { dev: 1, ino: 7 },
            updated: 0,
            names: vec![dir
                .path()
                .join("never-there")
                .to_string_lossy()
                .into_owned()],
        };
        c.look_for(&reg, vec![gone], 1);
        assert!(c.pruner.is_some() && !c.prune_busy);
    }
}
