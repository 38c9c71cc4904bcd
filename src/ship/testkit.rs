//! Test helpers of the producer's parts: sources and chunks as a tailer would hand them
//! on, with no file, tailer or Kafka behind them.

use std::sync::Arc;

use crate::chunk::{Chunk, EventAt, Route, Source, Span};
use crate::registry::{FileId, Fingerprint};
use crate::stop::{stop_pair, Stopper};

/// A source `id` of `path` (inode `ino`) sending to `topic`, and the stop of its reader.
pub fn source(id: u64, path: &str, ino: u64, topic: &str) -> (Arc<Source>, Stopper) {
    let (stopper, token) = stop_pair();
    let src = Arc::new(Source {
        id,
        path: path.into(),
        file: FileId { dev: 1, ino },
        topic: topic.into(),
        key: None,
        route: Route::Default,
        metrics: Default::default(),
        paused: Default::default(),
        reader_stop: token,
        left: Default::default(),
    });
    (src, stopper)
}

/// A chunk of `lines` lines `x\n` of `source`, starting at file offset `base`.
pub fn chunk(source: &Arc<Source>, base: u64, lines: usize) -> Chunk {
    let data = b"x\n".repeat(lines);
    Chunk {
        source: source.clone(),
        fingerprint: Fingerprint::default(),
        base,
        lines: (0..lines as u32)
            .map(|i| Span {
                start: 2 * i,
                end: 2 * i + 1,
                next: 2 * i + 2,
            })
            .collect(),
        data,
        events: Vec::new(),
    }
}

/// A chunk of shaped lines `x\n` at `base`, `base + 2`, ...; line `i` is filtered out
/// when `filtered[i]`.
pub fn shaped_chunk(source: &Arc<Source>, base: u64, filtered: &[bool]) -> Chunk {
    let mut c = chunk(source, base, filtered.len());
    c.events = filtered
        .iter()
        .enumerate()
        .map(|(i, &f)| EventAt {
            line: base + 2 * i as u64,
            commit: base + 2 * i as u64 + 2,
            filtered: f,
        })
        .collect();
    c
}
