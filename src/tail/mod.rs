//! The tail: one thread per followed path, which opens the file, resumes it from the
//! ledger, reads, splits and hands lines on, and follows the path through rotation,
//! truncation and deletion.
//!
//! The parts, each with one job:
//! - [`rotation`]: pure decisions (where to start, what a look at the open file means,
//!   which sibling names are rotations, when a rotated file is finished);
//! - [`access`]: how a file is opened and what may be opened (checks on the opened
//!   descriptor: the allow-list for the followed path, no symlink for a rotation);
//! - [`siblings`]: read-only directory scans (a file found again by inode, copies and
//!   rotations found by their first bytes);
//! - the thread ([`Tailer`]), whose methods live by job in one file each: `open`
//!   (the path: checks, claim, resume, watch), `owed` (what a path owes at its first
//!   open, where its file starts), `follow` (the read loop, rotated files draining,
//!   leaving a file), `send` (lines → content rules → chunks on the channel),
//!   `recover` (truncation, copies, missed rotations, owed files, gzip, losses);
//! - this module: the shared state and the spec, the thread's state and its top loop
//!   (`run`), and one open file ([`OpenFile`]: read, same-head check).
//!
//! The rules:
//! - start: the ledger's offset when the file (inode + first bytes) is known; `from:
//!   end` only for a path never followed; any other new file from 0;
//! - at the first open of a path, every file of the ledger that still owes bytes under
//!   it (rotated, a copytruncate copy, a rotation compressed meanwhile) is read first,
//!   oldest first, found again by inode (also after further renames) or by its head;
//! - rename rotation: the old file keeps being read through its descriptor until it had
//!   no new bytes for `rotate_wait` (late writers), while the new file at the path is
//!   read from 0; a deleted file is read to its end and closed;
//! - truncation (copytruncate): the unread part is recovered from the copy (recorded
//!   in the ledger first, so a crash resumes it), then the file is read from 0; the
//!   first bytes it holds at the truncation are committed with offset 0, so a second
//!   truncation (or rotation) before we are back from the copy is seen, and what the
//!   file held then is read from its newer copy (or new name) first;
//! - compressed files are never shipped as text; a rotation compressed before it was
//!   read is read through a gzip decoder when its decompressed head matches.
//!
//! Tailers never write acknowledged offsets (the producer does): they propose where a
//! file starts and what state it is in; the ledger keeps both.

pub mod access;
mod follow;
mod open;
mod owed;
mod recover;
pub mod rotation;
mod send;
pub mod siblings;
pub mod stack;
#[cfg(test)]
mod testkit;
pub mod watch;

use watch::{NotWatched, Watch, Watcher};

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Sender, TrySendError};
use log::{debug, error, info, warn};

use crate::chunk::{Chunk, Left, Route, Source};
use crate::collect::{AllowList, CollectEntry, StartFrom};
use crate::identity::{born, read_head, Compression, FileId, Fingerprint, FINGERPRINT_BYTES};
use crate::lines::{LineBuffer, Taken};
use crate::metrics::{FileMetrics, Loss, Metrics};
use crate::registry::{FileState, Proposal, Registry};
use crate::stop::{stop_pair, StopToken, Stopper, Woke};
use rotation::{Look, Saved, Start};
use siblings::Found;

/// What every tailer shares: the channel, the registry, the settings.
#[derive(Debug, Clone)]
pub struct TailShared {
    /// Into the producer.
    pub tx: Sender<Chunk>,
    /// Where a tailer waits while `tx` is full (see [`crate::chunk::Room`]).
    pub room: Arc<crate::chunk::Room>,
    /// Offsets on disk (read at open, written by the producer).
    pub registry: Arc<Mutex<Registry>>,
    /// Hostname for `{host}` keys.
    pub hostname: String,
    /// Longest record.
    pub max_line_bytes: usize,
    /// Longest idle wait.
    pub poll_interval: Duration,
    /// How long a renamed file is still read after its last new byte.
    pub rotate_wait: Duration,
    /// Read files with more than one hard link (`agent.allow_hardlinks`).
    pub allow_hardlinks: bool,
    /// Source ids, unique in this process.
    pub next_source_id: Arc<AtomicU64>,
    /// The current problem of each tailer that has one (for the status document).
    pub problems: Arc<Mutex<HashMap<String, String>>>,
    /// Every file some tailer reads or the producer still has lines of in flight.
    pub live: Arc<Mutex<HashMap<FileId, Weak<Source>>>>,
    /// `kafka.delivery: exactly_once`: what an earlier reader sent is committed with the
    /// open transaction, acknowledged or not; a file is never read again behind it.
    pub exactly_once: bool,
    /// Counters for operators.
    pub metrics: Arc<Metrics>,
    /// Change notification (inotify); tailers it cannot watch poll.
    pub watcher: Watcher,
    /// Each reason for polling instead of watching, logged once per agent.
    pub not_watched_logged: Arc<Mutex<HashSet<&'static str>>>,
}

impl TailShared {
    /// Whether a tailer reads `id` now, or Kafka has not acknowledged all of its lines
    /// yet. A glob match in that state is not started: a second reader would send
    /// lines twice.
    pub fn is_live(&self, id: FileId) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        // One lookup, not a sweep of the table: 10,000 tailers starting at once ask
        // this for each file.
        match live.get(&id) {
            Some(w) if w.strong_count() > 0 => true,
            Some(_) => {
                live.remove(&id);
                false
            }
            None => false,
        }
    }

    /// Registers `source` as the live reader of its file.
    pub fn register(&self, source: &Arc<Source>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(source.file, Arc::downgrade(source));
        sweep(&mut live);
    }

    /// Registers `source` as the live reader of its file unless another reader is
    /// live; then returns that reader. Check and insert happen under one lock.
    pub fn claim(&self, source: &Arc<Source>) -> Result<(), Arc<Source>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = live.get(&source.file).and_then(Weak::upgrade) {
            return Err(other);
        }
        live.insert(source.file, Arc::downgrade(source));
        sweep(&mut live);
        Ok(())
    }
}

/// Readers of files long gone leave dead entries in the live table; they are swept now
/// and then (amortized: not on every call, which made starting n files O(n²)), so the
/// table stays within about twice the files read plus 1,024.
fn sweep(live: &mut HashMap<FileId, Weak<Source>>) {
    if live.len().is_multiple_of(1024) {
        live.retain(|_, w| w.strong_count() > 0);
    }
}

/// One file to follow.
#[derive(Debug, Clone)]
pub struct TailSpec {
    /// The concrete path (a glob is expanded by the supervisor).
    pub path: String,
    /// The entry it comes from (topic, partitioning, start position).
    pub entry: CollectEntry,
    /// Read from offset 0 even for `from: end` (a file that appeared after start-up).
    pub from_start: bool,
    /// End the thread when the path disappears (glob matches), instead of waiting.
    pub exit_when_gone: bool,
    /// Where the real path of the opened file (symlinks resolved) must lie: see
    /// [`access`] (always set by the supervisor; `None` only in unit tests).
    pub allowed: Option<Arc<AllowList>>,
    /// The entry's content options, compiled once per entry and shared by all its
    /// tailers (a glob over 10,000 files must not compile its regexes 10,000 times).
    pub rules: Option<Arc<crate::content::Rules>>,
}

/// A running tailer: stop it, join it.
#[derive(Debug)]
pub struct TailerHandle {
    stopper: Stopper,
    thread: JoinHandle<()>,
}

impl TailerHandle {
    /// Asks the tailer to stop (it does not wait).
    pub fn stop(&self) {
        self.stopper.stop();
    }

    /// Whether the thread has ended by itself (a glob match that disappeared).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops and waits for the thread.
    pub fn join(self) {
        self.stopper.stop();
        if self.thread.join().is_err() {
            error!("a tailer thread panicked");
        }
    }
}

/// Starts a tailer thread for `spec`.
pub fn spawn(spec: TailSpec, shared: TailShared) -> io::Result<TailerHandle> {
    let (stopper, token) = stop_pair();
    let name = format!("tail:{}", spec.path);
    let thread = std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .stack_size(256 * 1024)
        .spawn(move || {
            // On the heap: the thread's stack keeps only the frames (see `stack`).
            let mut t = Box::new(Tailer::new(spec, shared, token));
            t.run();
        })?;
    Ok(TailerHandle { stopper, thread })
}

/// The file found at the path when a tailer first opens it.
#[derive(Debug, Clone, Copy)]
struct AtPath<'a> {
    id: FileId,
    /// Its first bytes (up to the fingerprint's length).
    head: &'a [u8],
    size: u64,
    /// Birth time, where the file system keeps one.
    born: Option<u64>,
    /// Modification time, ns since the epoch.
    modified: Option<u64>,
}

/// One open file.
struct OpenFile {
    /// The event its lines are being joined into (`multiline`).
    joiner: Option<Box<crate::content::Joiner>>,
    file: File,
    id: FileId,
    source: Arc<Source>,
    fingerprint: Fingerprint,
    lines: LineBuffer,
    /// When reading it began: files rotated out after this were written meanwhile.
    opened_at: SystemTime,
    /// Live at the path, renamed away (read until quiet), or a copy (read to its end).
    state: FileState,
    /// The largest size seen by fstat: what a truncation can be known to have taken.
    seen_size: u64,
    /// When `seen_size` was last refreshed.
    sized_at: Instant,
    /// The modification time at the last look.
    mtime: Option<SystemTime>,
    /// When new bytes last came.
    last_data: Instant,
    /// Wakes the tailer when this file (its inode) changes; `None`: polled.
    watch: Option<Watch>,
}

impl OpenFile {
    /// Refreshes `seen_size` (one fstat) if the last look is older than `every`. The
    /// size counts only if the first bytes are still ours afterwards: a file truncated
    /// and grown again must not make old content look longer than it was.
    #[inline(never)]
    fn note_size(&mut self, every: Duration) {
        if self.sized_at.elapsed() >= every {
            self.sized_at = Instant::now();
            if let Ok(m) = self.file.metadata() {
                if self.same_head() {
                    self.seen_size = self.seen_size.max(m.len());
                    self.publish(m.len());
                }
            }
        }
    }

    /// Publishes the size of the file followed at the path (for lag: nobody else
    /// stats it). Only the live file: a rotated one or a copy is not at the path.
    fn publish(&self, size: u64) {
        if self.state == FileState::Live {
            self.source.metrics.publish_followed(self.id, size);
        }
    }

    /// Whether the file still starts with the bytes it started with when read (a read
    /// error cannot tell: then yes, and the next look decides).
    fn same_head(&self) -> bool {
        self.fingerprint.len == 0
            || read_head(&self.file).map_or(true, |h| self.fingerprint.matches(&h))
    }

    /// Reads what is there: `Some(bytes read)`, or `None` when the file turned out to
    /// have been truncated and written again meanwhile (its first bytes changed): the
    /// bytes just read belong to the new content and were put back, not handed on.
    ///
    /// The periodic look alone is not enough: a file truncated and grown past our
    /// offset between two looks would be read on from the old offset, shipping the new
    /// content's middle and skipping the old content's tail.
    #[inline(never)]
    fn read_some(&mut self) -> io::Result<Option<usize>> {
        let n = self.lines.fill(&mut self.file)?;
        if n == 0 {
            return Ok(Some(0));
        }
        // One pread of the head per read (≤ 64 KiB), not per line.
        if !self.same_head() {
            self.lines.unread(n);
            return Ok(None);
        }
        if (self.fingerprint.len as usize) < FINGERPRINT_BYTES {
            // The head is still growing: the fingerprint covers what exists now.
            if let Ok(head) = read_head(&self.file) {
                self.fingerprint = Fingerprint::of(&head);
            }
        }
        self.last_data = Instant::now();
        // The file holds at least what was read: lag (and the stall watch) must count
        // bytes read and not yet acknowledged even before the next look at its size.
        self.publish(self.seen_size.max(self.lines.read_offset()));
        Ok(Some(n))
    }
}

/// A file of the ledger that still owes bytes, to read before the path.
#[derive(Debug, Clone, PartialEq)]
enum Owed {
    /// A plain file (rotated away, or a copy), read from `offset`.
    Plain {
        path: PathBuf,
        id: FileId,
        offset: u64,
        size: u64,
        state: FileState,
    },
    /// A gzip-compressed rotation: the ledger identity `id` of the compressed file,
    /// resumed at `offset` of its decompressed bytes.
    Gzip {
        path: PathBuf,
        id: FileId,
        offset: u64,
        fingerprint: Fingerprint,
    },
}

impl Owed {
    /// A rotated file found by a scan, read from its beginning.
    fn from_start(f: Found) -> Owed {
        Owed::rest(f, 0, FileState::Rotated)
    }

    /// A file found by a scan, owed from `offset` on.
    fn rest(f: Found, offset: u64, state: FileState) -> Owed {
        Owed::Plain {
            path: f.path,
            id: f.id,
            offset,
            size: f.size,
            state,
        }
    }
}

/// Why the read loop left a file.
enum Leave {
    Stopped,
    Gone,
}

/// At most this many renamed files per path are still read while quiet-waiting; the
/// oldest is finished (read to its end, closed) when a rotation storm makes more.
const MAX_ROTATED_OPEN: usize = 8;

struct Tailer {
    spec: TailSpec,
    shared: TailShared,
    stop: StopToken,
    open: Option<OpenFile>,
    /// Renamed files still read until they are quiet for `rotate_wait`.
    rotated: Vec<OpenFile>,
    /// Files owed bytes (rotated out between two looks, resumed from the ledger), to
    /// read before the path.
    backlog: VecDeque<Owed>,
    /// Copies made by copytruncate: never "missed rotations", their bytes came through
    /// the original.
    copies: HashSet<FileId>,
    /// Set when a truncated file was closed to read its copy (or missed copies) first:
    /// which file, and when. It may be truncated again (or rotated) before it is
    /// reopened, its unread content then only in a newer copy (or under another name).
    deferred: Option<(FileId, SystemTime)>,
    /// Whether any file was opened, or found missing, before: then new files start at 0.
    seen_before: bool,
    /// Wakes this tailer when a name like the path's appears in or leaves its directory.
    dir_watch: Option<Watch>,
    /// Whether this tailer counts in `files_polled` now.
    polled: bool,
    /// Since when this (glob) tailer waits for another tailer to take its file over as
    /// a copy.
    copy_wait: Option<Instant>,
    /// The live file was left (renamed away or deleted): (its id, when it was opened,
    /// whether the rotation was counted already: a new file was at the path then,
    /// whether it was deleted: see [`rotation::completes_rotation`]). The
    /// file the path holds when it is opened next completes that rotation: files
    /// rotated out of the path since are read first, including one seen at the path
    /// but rotated away before we opened it (deleted, re-created and rotated within a
    /// few milliseconds).
    renamed_away: Option<(FileId, SystemTime, bool, bool)>,
    /// The last open problem logged, so a waiting tailer logs once per change.
    last_problem: Option<String>,
    split_pieces: u64,
    last_split_warn: Option<Instant>,
    truncations: u64,
    metrics: Arc<FileMetrics>,
    /// This thread's stack, trimmed when the file goes quiet (see [`stack`]).
    stack: Option<stack::StackTrim>,
    /// The entry's content options (decoding, filters, JSON); `None`: lines as read.
    rules: Option<Arc<crate::content::Rules>>,
}

impl Tailer {
    fn new(spec: TailSpec, shared: TailShared, stop: StopToken) -> Tailer {
        let metrics = shared.metrics.file(&spec.path, &spec.entry.topic);
        let rules = spec.rules.clone();
        Tailer {
            rules,
            metrics,
            spec,
            shared,
            stop,
            open: None,
            rotated: Vec::new(),
            backlog: VecDeque::new(),
            copies: HashSet::new(),
            deferred: None,
            seen_before: false,
            dir_watch: None,
            polled: false,
            copy_wait: None,
            renamed_away: None,
            last_problem: None,
            split_pieces: 0,
            last_split_warn: None,
            truncations: 0,
            stack: stack::StackTrim::for_this_thread(),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Sleeps `d` unless stopped first; true if stopped.
    fn sleep(&self, d: Duration) -> bool {
        self.stop.sleep(d)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.shared
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn run(&mut self) {
        debug!("{}: tailer started", self.spec.path);
        self.metrics.running.store(1, Ordering::Relaxed);
        let mut backoff = Duration::from_millis(10);
        loop {
            if self.stopped() {
                break;
            }
            if self.open.is_none() {
                if let Some(owed) = self.backlog.pop_front() {
                    if !self.open_owed(owed)
                        && (!self.service_rotated() || self.sleep(self.shared.poll_interval))
                    {
                        break;
                    }
                    continue;
                }
                let opened = self.open_path();
                if self.open.is_none() && !self.backlog.is_empty() {
                    continue;
                }
                match opened {
                    Ok(true) => backoff = Duration::from_millis(10),
                    Ok(false) => {
                        if self.spec.exit_when_gone && self.seen_before {
                            break;
                        }
                        backoff = self.shared.poll_interval;
                    }
                    Err(()) => backoff = (backoff * 2).clamp(self.shared.poll_interval, MAX_RETRY),
                }
                if self.open.is_none() {
                    if !self.service_rotated() {
                        break;
                    }
                    if self.sleep(backoff) {
                        break;
                    }
                    continue;
                }
            }
            match self.follow() {
                Leave::Stopped => break,
                Leave::Gone => {
                    if self.spec.exit_when_gone && fs::symlink_metadata(&self.spec.path).is_err() {
                        break;
                    }
                }
            }
        }
        // A glob match that went away: its renamed files still get their quiet wait.
        while !self.rotated.is_empty() && !self.stopped() {
            if !self.service_rotated() || self.sleep(self.shared.poll_interval) {
                break;
            }
        }
        if let Ok(mut p) = self.shared.problems.lock() {
            p.remove(&self.spec.path);
        }
        // Let go of every file still open, saying where each stands: the producer
        // decides with that what becomes of what it still holds of them.
        for of in self
            .open
            .take()
            .into_iter()
            .chain(std::mem::take(&mut self.rotated))
        {
            self.let_go(&of);
        }
        self.set_polled(false);
        self.metrics.clear_followed();
        self.metrics.running.store(0, Ordering::Relaxed);
        debug!("{}: tailer stopped", self.spec.path);
    }

    /// Says where the file of `of` stands as this reader lets go of it (see [`Left`]):
    /// deleted (no link left), still under its path or the name the ledger last saw it
    /// by, or neither. The stats run here, on the thread of the file's own path. A
    /// deleted file none of whose lines are with the producer is forgotten by the
    /// ledger at once (the producer forgets the others once all is acknowledged).
    #[inline(never)]
    fn let_go(&self, of: &OpenFile) {
        let left = match of.file.metadata() {
            Ok(m) if m.nlink() == 0 => Left::Deleted,
            _ => {
                let name = self.registry().get(of.id).and_then(|c| c.name.clone());
                let here = |p: &str| fs::metadata(p).is_ok_and(|m| FileId::of(&m) == of.id);
                // A file renamed away (app.log → app.log.1) has no name in the ledger and
                // stays Unreachable on purpose: what the producer holds of it is then kept
                // as the last copy (sent when Kafka takes it, counted lost if the agent
                // stops first). Marked Reachable, it would be dropped for a next reader
                // that a removed entry never has.
                if here(&self.spec.path) || name.as_deref().is_some_and(here) {
                    Left::Reachable
                } else {
                    Left::Unreachable
                }
            }
        };
        of.source.set_left(left);
        // Only this reader holds the source: no chunk of it was ever handed on.
        if left == Left::Deleted && Arc::strong_count(&of.source) == 1 {
            self.registry().forget_deleted(of.id, of.source.id);
        }
    }

    /// Logs an open problem once per change of problem.
    #[inline(never)]
    fn problem(&mut self, msg: String, serious: bool) {
        if self.last_problem.as_deref() != Some(&msg) {
            if serious {
                error!("{msg}");
            } else {
                debug!("{msg}");
            }
            if let Ok(mut p) = self.shared.problems.lock() {
                p.insert(self.spec.path.clone(), msg.clone());
            }
            self.last_problem = Some(msg);
        }
    }

    fn clear_problem(&mut self) {
        if self.last_problem.take().is_some() {
            info!("{}: file is readable now", self.spec.path);
            if let Ok(mut p) = self.shared.problems.lock() {
                p.remove(&self.spec.path);
            }
        }
    }

    /// A new reading generation (source id), unique in this process.
    fn next_generation(&self) -> u64 {
        self.shared.next_source_id.fetch_add(1, Ordering::Relaxed)
    }

    fn new_source(&self, file: FileId, generation: u64) -> Arc<Source> {
        let source = self.make_source(file, generation);
        self.shared.register(&source);
        source
    }

    /// A reading generation of `file`, not registered as live yet.
    fn make_source(&self, file: FileId, generation: u64) -> Arc<Source> {
        let e = &self.spec.entry;
        let route = match (e.partition, e.partitioner) {
            (Some(p), _) => Route::Partition(p),
            (None, crate::collect::Partitioner::RoundRobin) => Route::RoundRobin,
            _ => Route::Default,
        };
        Arc::new(Source {
            id: generation,
            path: self.spec.path.clone(),
            file,
            topic: e.topic.clone(),
            key: e.record_key(&self.shared.hostname, &self.spec.path),
            route,
            metrics: self.metrics.clone(),
            paused: Default::default(),
            reader_stop: self.stop.clone(),
            left: Default::default(),
        })
    }
}

/// What a tailer's directory scans may read (see [`siblings::Scope`]).
fn scope<'a>(spec: &'a TailSpec, shared: &TailShared) -> siblings::Scope<'a> {
    siblings::Scope {
        allowed: spec.allowed.as_deref(),
        allow_hardlinks: shared.allow_hardlinks,
    }
}

/// Whether the ledger holds `f` itself: its inode *and* its first bytes. ext4 hands a
/// freed inode to the next file created, so an inode alone may name a deleted file's
/// stale entry; an entry with no head yet (offset 0) cannot tell and does not count.
fn knows(reg: &Registry, f: &Found) -> bool {
    reg.get(f.id).is_some_and(|c| {
        let born_known = c.born.is_some() && c.born == f.born;
        c.same_file(f.born, &f.head) && (c.fingerprint.len > 0 || born_known)
    })
}

fn owed_id(o: &Owed) -> FileId {
    match o {
        Owed::Plain { id, .. } | Owed::Gzip { id, .. } => *id,
    }
}

/// A ledger file under another path whose name `path` is a rotation of and whose first
/// bytes match `head` (not `id` itself): its path and committed offset.
fn copy_of(reg: &Registry, path: &str, id: FileId, head: &[u8]) -> Option<(String, u64, FileId)> {
    let (dir, name) = siblings::split(path)?;
    reg.files()
        .filter(|c| c.id != id && c.path != path && c.fingerprint.len > 0)
        .filter(|c| {
            siblings::split(&c.path).is_some_and(|(d, base)| {
                d == dir && rotation::sibling(base, name) != rotation::Sibling::Unrelated
            })
        })
        .find(|c| c.fingerprint.matches(head))
        .map(|c| (c.path.clone(), c.offset, c.id))
}

/// How long a glob match that is a copy of a file being read waits for that file's
/// tailer to take it over (it sees the truncation within a poll, or at once when
/// watched).
const COPY_WAIT: Duration = Duration::from_secs(3);
/// After this long without new data a file is polled at twice `poll_interval`.
const DEEP_IDLE: Duration = Duration::from_secs(10);
/// How often a watched file is looked at anyway, in case inotify missed a change (an
/// overflowed queue wakes every tailer at once; a watch the kernel drops turns the file
/// to polling). 60 s: 10,000 idle files cost 170 looks a second.
const SAFETY_POLL: Duration = Duration::from_secs(60);

/// Shortest time between two stack trims of one tailer (see [`stack`]).
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Longest back-off between attempts to open a file that cannot be read.
const MAX_RETRY: Duration = Duration::from_secs(5);

fn kind_of(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Why a regular file with `nlink` hard links is not read, or `None` when it is. A hard
/// link is a second name for a file anywhere on the same file system (`ln /etc/shadow
/// /var/log/app/x.log`): no path check can see where else the file is named, so with
/// `agent.allow_hardlinks` off every file with more than one link is refused.
fn hardlink_refusal(nlink: u64, allowed: bool) -> Option<String> {
    (nlink > 1 && !allowed).then(|| {
        format!(
            "has {nlink} hard links; it may be a file from outside the log directory, not reading it (set agent.allow_hardlinks: true to read such files)"
        )
    })
}

/// The parts' unit tests (`open`, `owed`, `follow`, `send`, `recover`) drive one real
/// tailer on real files: this builds it.
#[cfg(test)]
impl Tailer {
    /// A tailer of `path` (`from: beginning`, no allow-list, not watched: polled), its
    /// ledger in `data_dir`, chunks on the returned receiver (room for `room` chunks),
    /// stopped by the returned stopper. Tests change `spec` and `shared` as they need.
    fn for_test(
        path: &Path,
        data_dir: &Path,
        room: usize,
    ) -> (Tailer, crossbeam_channel::Receiver<Chunk>, Stopper) {
        let (tx, rx) = crossbeam_channel::bounded(room);
        let registry = Registry::open(data_dir).expect("a ledger in a temporary directory");
        let shared = TailShared {
            tx,
            room: Arc::default(),
            registry: Arc::new(Mutex::new(registry)),
            hostname: "test-host".into(),
            max_line_bytes: 1024,
            poll_interval: Duration::from_millis(10),
            rotate_wait: Duration::from_secs(60),
            allow_hardlinks: false,
            next_source_id: Arc::new(AtomicU64::new(1)),
            problems: Arc::default(),
            live: Arc::default(),
            exactly_once: false,
            metrics: Arc::default(),
            watcher: Watcher::off(),
            not_watched_logged: Arc::default(),
        };
        let path = path.to_string_lossy().into_owned();
        let spec = TailSpec {
            entry: CollectEntry {
                path: path.clone(),
                topic: "logs".into(),
                from: StartFrom::Beginning,
                ..CollectEntry::default()
            },
            path,
            from_start: false,
            exit_when_gone: false,
            allowed: None,
            rules: None,
        };
        let (stopper, token) = stop_pair();
        (Tailer::new(spec, shared, token), rx, stopper)
    }
}

#[cfg(test)]
mod tests {
    use super::hardlink_refusal;

    #[test]
    fn a_file_with_a_second_link_is_refused_unless_allowed() {
        assert_eq!(hardlink_refusal(1, false), None);
        // A deleted file still open (0 links) is never opened by path; not a refusal.
        assert_eq!(hardlink_refusal(0, false), None);
        let why = hardlink_refusal(2, false).expect("refused");
        assert!(why.contains("has 2 hard links"), "{why}");
        assert!(why.contains("agent.allow_hardlinks: true"), "{why}");
        assert_eq!(hardlink_refusal(3, true), None);
    }
}
