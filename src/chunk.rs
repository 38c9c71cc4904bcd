//! What travels on the channel from tailers to the producer: chunks of complete lines
//! from one source, with the byte offsets the producer needs to commit them.
//!
//! A chunk owns one buffer of file bytes and the spans of the lines in it, so a tailer
//! allocates once per read, not once per line.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use crate::registry::{FileId, Fingerprint};

/// How the producer picks a partition for a source's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// librdkafka's choice (sticky for unkeyed records, murmur2 for keyed ones).
    Default,
    /// Always this partition.
    Partition(i32),
    /// The next partition of the topic in turn.
    RoundRobin,
}

/// One file, read in one generation (a truncation starts a new generation with a new
/// `id`, so acknowledgements of the old bytes never move the new watermark).
#[derive(Debug)]
pub struct Source {
    /// Unique within this process; never reused.
    pub id: u64,
    /// The path the file is read under.
    pub path: String,
    /// Device and inode of the open file.
    pub file: FileId,
    /// Destination topic.
    pub topic: String,
    /// Record key, if the entry is keyed.
    pub key: Option<Vec<u8>>,
    /// Partition choice.
    pub route: Route,
    /// The path's counters.
    pub metrics: Arc<crate::metrics::FileMetrics>,
    /// Set by the producer while Kafka refuses this source's records: the tailer stops
    /// handing on lines (the file is the buffer) until it is cleared.
    pub paused: AtomicBool,
    /// The stop of the tailer that reads it: fired when the entry is changed or removed
    /// (or the agent stops). A source its tailer let go of *without* being stopped (a
    /// rotation read to its end, a copy recovered, a truncation) is never read again.
    pub reader_stop: crate::stop::StopToken,
    /// Where the file stood when its reader let go of it ([`Left`] as a byte; set by
    /// the tailer, which looks at its own file, before it drops the source).
    pub left: AtomicU8,
}

/// Where a source's file stood when its reader let go of it: what the producer decides
/// with about what it still holds of the source, without looking at the file itself (a
/// stat on the producer thread would stop every file on a hung NFS mount).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Not said (the reader still reads it, or dropped this generation without a look:
    /// a truncation read on as a new generation).
    Unknown = 0,
    /// Still under its path, or under the name the ledger last saw it by (same device
    /// and inode): a new reader of the entry finds it again.
    Reachable = 1,
    /// Neither (renamed where a reader does not look, or its directory is gone).
    Unreachable = 2,
    /// Deleted: no link left, it can never be opened again.
    Deleted = 3,
}

impl Source {
    /// Whether the producer asks the tailer to hold on.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Where the file stood when its reader let go of it.
    pub fn left(&self) -> Left {
        match self.left.load(Ordering::Acquire) {
            1 => Left::Reachable,
            2 => Left::Unreachable,
            3 => Left::Deleted,
            _ => Left::Unknown,
        }
    }

    /// Records where the file stands as its reader lets go of it (before the reader
    /// drops the source: the producer reads it once the reader is gone).
    pub fn set_left(&self, left: Left) {
        self.left.store(left as u8, Ordering::Release);
    }

    /// Whether nobody can read the file again (deleted, or nowhere a reader looks):
    /// what the producer holds of it is the last copy of those lines.
    pub fn gone(&self) -> bool {
        matches!(self.left(), Left::Unreachable | Left::Deleted)
    }
}

/// A line inside a chunk's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte of the line in `Chunk::data`.
    pub start: u32,
    /// One past the last byte of the line, without its newline.
    pub end: u32,
    /// Where the next line starts: `end + 1` after a newline, `end` for a piece of an
    /// over-long line or a final line without newline.
    pub next: u32,
}

/// Complete lines read from one source in one go.
#[derive(Debug)]
pub struct Chunk {
    /// The file they come from.
    pub source: Arc<Source>,
    /// The file's fingerprint as of this read (it grows until it covers 1 KiB).
    pub fingerprint: Fingerprint,
    /// File offset of `data[0]`.
    pub base: u64,
    /// Raw bytes (lines shipped as they are, invalid UTF-8 included).
    pub data: Vec<u8>,
    /// The lines, in file order.
    pub lines: Vec<Span>,
    /// Empty for lines shipped as read (their offsets follow from `base` and the
    /// spans). Lines shaped by [`crate::content`] (decoded, wrapped in JSON, filtered)
    /// are payloads in `data` that no longer sit at their file offsets: one entry per
    /// line says where it was.
    pub events: Vec<EventAt>,
}

/// Where a shaped line was in its file, and whether it was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventAt {
    /// File offset of its first byte.
    pub line: u64,
    /// File offset up to which the file is shipped once it is acknowledged.
    pub commit: u64,
    /// Filtered out: nothing is sent, its bytes count as shipped in file order.
    pub filtered: bool,
}

impl Chunk {
    /// Payload of line `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        let s = &self.lines[i];
        &self.data[s.start as usize..s.end as usize]
    }

    /// File offset of the first byte of line `i` (the `offset` header).
    pub fn line_offset(&self, i: usize) -> u64 {
        match self.events.get(i) {
            Some(e) => e.line,
            None => self.base + u64::from(self.lines[i].start),
        }
    }

    /// File offset up to which the file is shipped once line `i` is acknowledged.
    pub fn commit_offset(&self, i: usize) -> u64 {
        match self.events.get(i) {
            Some(e) => e.commit,
            None => self.base + u64::from(self.lines[i].next),
        }
    }

    /// Whether line `i` was filtered out (never sent).
    pub fn is_filtered(&self, i: usize) -> bool {
        self.events.get(i).is_some_and(|e| e.filtered)
    }
}

/// Where tailers wait while the channel is full, without spinning.
///
/// crossbeam's blocking send spins and yields (`sched_yield`) before it parks, and
/// unregisters a timed-out waiter from a list of all of them: with 10,000 tailers
/// writing a line a second each, the yielding senders took both cores and starved the
/// producer (2,500 lines/s, p99 75 s). A tailer that finds the channel full waits here
/// instead; the producer wakes one waiter per chunk it takes (a futex wake only while
/// someone waits). A wake-up that slips between the check and the wait costs one
/// timeout (the caller's), never a chunk.
#[derive(Debug, Default)]
pub struct Room {
    waiters: std::sync::atomic::AtomicUsize,
    lock: std::sync::Mutex<()>,
    freed: std::sync::Condvar,
}

impl Room {
    /// Waits until a chunk was taken or `timeout` passed, unless `still_full` says
    /// the channel has room already (checked under the lock the producer wakes with).
    pub fn wait(&self, timeout: std::time::Duration, still_full: impl Fn() -> bool) {
        let Ok(g) = self.lock.lock() else {
            return;
        };
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if still_full() {
            let _ = self.freed.wait_timeout(g, timeout);
        } else {
            drop(g);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// A chunk was taken: wakes one waiting tailer, if any.
    pub fn taken(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock();
            self.freed.notify_one();
        }
    }
}
