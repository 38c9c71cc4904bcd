//! Persistence of what Kafka acknowledged: moves each slot's watermark into the registry,
//! forgets files long gone, and writes the registry to disk.
//!
//! The producer thread is the only writer of acknowledged offsets; a failed write is an
//! ERROR (once a minute while it lasts), counted in `logagent_checkpoint_errors_total`,
//! and tried again at the next checkpoint: the offsets stay in memory meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{error, info};

use crate::metrics::{unix_ms, Metrics};
use crate::registry::{unix_now, FileId, Registry};

use super::kafka::lock;
use super::slots::Slots;

/// Checkpoint state kept between runs.
#[derive(Debug, Default)]
pub struct Checkpointer {
    last_save_error: Option<Instant>,
    last_prune: Option<Instant>,
}

impl Checkpointer {
    /// Commits every slot's watermark (and moves its ack counts to the metrics), prunes
    /// the registry at most once a minute, and saves it.
    pub fn run(
        &mut self,
        registry: &Mutex<Registry>,
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
            active.push(src.file);
        }
        let prune_due = self
            .last_prune
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if prune_due {
            self.last_prune = Some(Instant::now());
            let pruned = reg.prune(&active, retention_hours * 3600, unix_now());
            if pruned > 0 {
                info!("registry: forgot {pruned} files not seen for {retention_hours} hours");
            }
        }
        match reg.save() {
            Ok(_) => {
                if self.last_save_error.take().is_some() {
                    info!("checkpoint written again");
                }
            }
            Err(e) => {
                metrics.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                if self
                    .last_save_error
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                {
                    error!("cannot write checkpoint: {e}; offsets stay in memory, retrying every checkpoint");
                    self.last_save_error = Some(Instant::now());
                }
            }
        }
    }
}
