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
//! - this module: the thread ([`Tailer`]) that does the I/O and the logging, and one
//!   open file ([`OpenFile`]: read, same-head check).
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
pub mod rotation;
pub mod siblings;
pub mod stack;
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
use crate::registry::{FileState, Registry};
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
    /// live; then returns that reader's path. Check and insert happen under one lock.
    pub fn claim(&self, source: &Arc<Source>) -> Result<(), String> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = live.get(&source.file).and_then(Weak::upgrade) {
            return Err(other.path.clone());
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
    /// whether the rotation was counted already: a new file was at the path then). The
    /// file the path holds when it is opened next completes that rotation: files
    /// rotated out of the path since are read first, including one seen at the path
    /// but rotated away before we opened it (deleted, re-created and rotated within a
    /// few milliseconds).
    renamed_away: Option<(FileId, SystemTime, bool)>,
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
                    self.open_owed(owed);
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

    /// Tries to open the path. Ok(true): open; Ok(false): not there yet (or the ledger
    /// owes files to read first: then the backlog is filled); Err: refused.
    #[inline(never)]
    fn open_path(&mut self) -> Result<bool, ()> {
        let path = self.spec.path.clone();
        // Found (O_PATH), checked, and only then opened for reading, through that
        // descriptor: a device, FIFO or file outside the allow-list swapped in at the
        // path is never opened, and what is read is the inode that was checked.
        let found = match access::resolve(Path::new(&path), true) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !self.seen_before {
                    // The path is gone; files rotated away from it may still owe bytes.
                    self.seen_before = true;
                    self.queue_owed_at_start(None);
                }
                self.problem(format!("{path}: does not exist yet; waiting for it"), false);
                return Ok(false);
            }
            Err(e) => {
                self.problem(format!("{path}: cannot stat: {e}; retrying"), true);
                return Err(());
            }
        };
        if !found.meta.is_file() {
            let what = kind_of(&found.meta);
            self.problem(
                format!(
                    "{path}: is a {what}, not a regular file; not reading it, checking again later"
                ),
                true,
            );
            return Err(());
        }
        // A symlink inside the allowed tree must not lead out of it.
        if let Some(list) = &self.spec.allowed {
            let real = match found.real_path() {
                Ok(r) => r.to_string_lossy().into_owned(),
                Err(e) => {
                    self.problem(
                        format!("{path}: cannot tell which file it is (/proc/self/fd: {e}); not reading it"),
                        true,
                    );
                    return Err(());
                }
            };
            if let Err(why) = list.check(&real) {
                self.problem(
                    format!("{path}: resolves to {real}, {why}; not reading it"),
                    true,
                );
                return Err(());
            }
        }
        if let Some(why) = hardlink_refusal(found.meta.nlink(), self.shared.allow_hardlinks) {
            self.problem(format!("{path}: {why}; checking again later"), true);
            return Err(());
        }
        let file = match found.open() {
            Ok(f) => f,
            Err(e) => {
                self.problem(format!("{path}: cannot open: {e}; retrying"), true);
                return Err(());
            }
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                self.problem(format!("{path}: cannot stat open file: {e}"), true);
                return Err(());
            }
        };
        let id = FileId::of(&meta);
        let head = match read_head(&file) {
            Ok(h) => h,
            Err(e) => {
                self.problem(format!("{path}: cannot read: {e}; retrying"), true);
                return Err(());
            }
        };
        if let Some(c) = Compression::of(&head) {
            self.problem(
                format!(
                    "{path}: is {}-compressed; compressed files are never shipped as text, not reading it",
                    c.name()
                ),
                false,
            );
            return Err(());
        }
        // A glob match that is a copytruncate copy of a file another tailer reads now:
        // that tailer takes the copy over when it sees the truncation (a moment later,
        // woken by the same change), recording in the ledger where the copy starts.
        // Wait for that (unclaimed, so it can) instead of guessing from what Kafka had
        // acknowledged of the original, which lags what its reader already sent.
        if self.spec.entry.is_glob() {
            let original = {
                let reg = self.registry();
                reg.get(id)
                    .is_none()
                    .then(|| copy_of(&reg, &path, id, &head))
                    .flatten()
            };
            if let Some((other, _, other_id)) = original {
                let since = *self.copy_wait.get_or_insert_with(Instant::now);
                if self.shared.is_live(other_id) && since.elapsed() < COPY_WAIT {
                    self.problem(
                        format!("{path}: is a copy of {other}, which is being read; waiting for its reader to take it over"),
                        false,
                    );
                    return Ok(false);
                }
            }
        }
        self.copy_wait = None;
        // The reading generation for this file, registered now: at the first open it
        // must be the only live reader of the file (checked and registered in one step,
        // so two tailers opening the same file at once cannot both win).
        let generation = self.next_generation();
        let source = self.make_source(id, generation);
        // Claim the file as its only reader (checked and registered in one step, so two
        // tailers opening the same file at once cannot both win).
        match self.shared.claim(&source) {
            Ok(()) => {}
            // A tailer of this path was stopped a moment ago (config change), or this
            // tailer's own earlier reading still has lines in flight: the ledger offset
            // is behind what was sent. Starting from there would send those lines
            // twice; wait for the acknowledgements instead.
            Err(other) if other == path => {
                self.problem(
                    format!("{path}: waiting for Kafka to acknowledge what was read of it before"),
                    false,
                );
                return Ok(false);
            }
            // The file at this path is read under another name right now: a rotation
            // still in its quiet wait (a glob that matches rotated names). Look again
            // later; it resumes where that reader's lines were acknowledged.
            Err(other) if self.seen_before || self.spec.exit_when_gone => {
                self.problem(
                    format!("{path}: is read as {other} right now (rotated there); waiting"),
                    false,
                );
                return Ok(false);
            }
            // Two entries name one file (a symlink, a second path): read it once.
            Err(other) => {
                self.problem(
                    format!("{path}: is the same file as {other}, which is already followed; not reading it twice"),
                    true,
                );
                return Err(());
            }
        }
        self.clear_problem();
        if !self.seen_before {
            self.seen_before = true;
            let modified = crate::identity::mtime_ns(&meta);
            self.queue_owed_at_start(Some(AtPath {
                id,
                head: &head,
                size: meta.len(),
                born: born(&meta),
                modified,
            }));
            if !self.backlog.is_empty() {
                // Read what the ledger still owes first; the path is opened again after.
                return Ok(false);
            }
        }
        if let Some(left) = self.deferred.take() {
            if self.queue_changed_while_deferred(left, id, &head, meta.len(), born(&meta)) {
                // Opened again once those are read. Still the file we left: what it
                // holds now is all new (committed at 0 with its head).
                if id == left.0 {
                    self.registry()
                        .commit(id, generation, &path, Fingerprint::of(&head), 0);
                }
                self.deferred = Some((id, SystemTime::now()));
                return Ok(false);
            }
        }
        if let Some((old, opened_at, counted)) = self.renamed_away.take() {
            if old != id {
                if !counted {
                    self.metrics.rotations.fetch_add(1, Ordering::Relaxed);
                }
                let missed = self.missed_rotations(old, id, opened_at, Duration::from_secs(1));
                self.queue_backlog(missed);
                if !self.backlog.is_empty() {
                    // Rotations made meanwhile are read first; the path after them.
                    return Ok(false);
                }
            }
        }
        let offset = self.start_offset(
            id,
            generation,
            &head,
            meta.len(),
            born(&meta),
            crate::identity::mtime_ns(&meta),
        );
        self.registry().set_truncated_at(id, None);
        self.open_at(file, id, offset, &head, source, FileState::Live)
    }

    /// Back at the path after the truncated file `left` was closed at `since` to read
    /// its copy first (`id`, `head`, `size`, `born`: the file at the path now). Queues,
    /// oldest first, what changed meanwhile: `left` renamed away (read on from its
    /// committed offset), truncated again (the copy holding what it had, from that
    /// offset), and copies or rotations made since. True if any was queued.
    fn queue_changed_while_deferred(
        &mut self,
        (left, since): (FileId, SystemTime),
        id: FileId,
        head: &[u8],
        size: u64,
        born: Option<u64>,
    ) -> bool {
        let Some((dir, base)) = siblings::split(&self.spec.path) else {
            return false;
        };
        let Some(cp) = self.registry().get(left).cloned() else {
            return false;
        };
        let mut owed = Vec::new();
        // Copies and rotations made since we left (one scan, used twice below).
        let missed = self.missed_rotations(left, id, since, Duration::from_secs(1));
        // Where `left` is now, and whether it still holds what it held.
        let unchanged = if id == left {
            cp.same_file(born, head) && size >= cp.offset
        } else {
            match siblings::find_by_inode(dir, base, left, None, scope(&self.spec, &self.shared)) {
                Some(f) if cp.same_file(f.born, &f.head) && f.size >= cp.offset => {
                    if !self.shared.is_live(f.id) {
                        info!(
                            "{}: rotated to {} while its copy was read; reading it from offset {} first",
                            self.spec.path,
                            f.path.display(),
                            cp.offset
                        );
                        owed.push(Owed::rest(f, cp.offset, FileState::Rotated));
                    }
                    true
                }
                Some(_) => false,
                // Renamed and compressed at once, or deleted: its content is looked for
                // in a compressed rotation below, else counted as lost.
                None => false,
            }
        };
        if !unchanged {
            let starts_as_it_did = siblings::copies(
                dir,
                base,
                cp.fingerprint,
                left,
                scope(&self.spec, &self.shared),
            );
            let any_copy = !starts_as_it_did.is_empty();
            let reg = self.registry();
            let copy = starts_as_it_did
                .into_iter()
                .find(|c| !knows(&reg, c) && !self.copies.contains(&c.id));
            drop(reg);
            if let Some(c) = copy {
                if !self.shared.is_live(c.id) {
                    info!(
                        "{}: truncated or rotated again while its copy was read; reading what it held from offset {} in {} first",
                        self.spec.path,
                        cp.offset,
                        c.path.display()
                    );
                    self.copies.insert(c.id);
                    owed.push(Owed::rest(c, cp.offset, FileState::Copy));
                }
            } else if let Some((gz, gz_id)) = siblings::compressed_copy(
                dir,
                base,
                cp.fingerprint,
                scope(&self.spec, &self.shared),
            ) {
                info!(
                    "{}: truncated or rotated again while its copy was read, and compressed; reading what it held from offset {} through gzip in {} first",
                    self.spec.path,
                    cp.offset,
                    gz.display()
                );
                self.copies.insert(gz_id);
                owed.push(Owed::Gzip {
                    path: gz,
                    id: gz_id,
                    offset: cp.offset,
                    fingerprint: cp.fingerprint,
                });
            } else if cp.size > cp.offset
                && cp.fingerprint.len > 0
                && !any_copy
                && missed.is_empty()
            {
                // Nothing under a rotation name starts as it did, known or not (a copy
                // already read, or queued, covers it): its bytes are gone.
                self.lose_bytes(
                    Loss::Truncated,
                    cp.offset,
                    cp.size,
                    "were truncated or rotated away again while its copy was read, and no copy or compressed rotation holds them",
                );
            }
        }
        let missed: Vec<Owed> = missed
            .into_iter()
            .filter(|m| !owed.iter().any(|o| owed_id(o) == owed_id(m)))
            .collect();
        if owed.is_empty() && missed.is_empty() {
            return false;
        }
        self.backlog.extend(owed);
        self.queue_backlog(missed);
        true
    }

    /// Starts reading `file` (whose first bytes are `head`) at `offset` as `source`.
    fn open_at(
        &mut self,
        mut file: File,
        id: FileId,
        offset: u64,
        head: &[u8],
        source: Arc<Source>,
        state: FileState,
    ) -> Result<bool, ()> {
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            let path = &self.spec.path;
            self.problem(format!("{path}: cannot seek to {offset}: {e}"), true);
            return Err(());
        }
        let seen_size = file.metadata().map_or(offset, |m| m.len());
        self.open = Some(OpenFile {
            file,
            id,
            source,
            fingerprint: Fingerprint::of(head),
            lines: self.line_buffer(offset),
            opened_at: SystemTime::now(),
            state,
            seen_size,
            sized_at: Instant::now(),
            last_data: Instant::now(),
            mtime: None,
            watch: None,
            joiner: self.rules.as_ref().and_then(|r| r.joiner()).map(Box::new),
        });
        if let Some(of) = &self.open {
            of.publish(seen_size);
        }
        if state == FileState::Live {
            self.watch_open_file();
        }
        self.seen_before = true;
        Ok(true)
    }

    /// Subscribes the open file and the path's directory to change notification; what
    /// cannot be watched is polled, said once per reason per agent and counted.
    #[inline(never)]
    fn watch_open_file(&mut self) {
        let path = PathBuf::from(&self.spec.path);
        let waker = self.stop.waker();
        let mut why_not = None;
        if !self.dir_watch.as_ref().is_some_and(Watch::alive) {
            self.dir_watch = None;
            if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                match self.shared.watcher.watch_dir(dir, name, &waker) {
                    Ok(w) => self.dir_watch = Some(w),
                    Err(e) => why_not = Some(e),
                }
            }
        }
        if let Some(of) = self.open.as_mut() {
            match self.shared.watcher.watch_file(&path, &waker) {
                Ok(w) => of.watch = Some(w),
                Err(e) => why_not = why_not.or(Some(e)),
            }
        }
        if let Some(why) = why_not {
            let first = self
                .shared
                .not_watched_logged
                .lock()
                .map(|mut l| l.insert(why.as_str()))
                .unwrap_or(false);
            let msg = format!(
                "{}: not watched ({}); polling it every {} ms",
                self.spec.path,
                why.as_str(),
                self.shared.poll_interval.as_millis()
            );
            if first && why != NotWatched::Failed && why != NotWatched::Off {
                warn!("{msg}; further files polled for this reason are counted in logagent_files_polled, not logged");
            } else {
                debug!("{msg}");
            }
        }
        self.set_polled(!self.watched());
    }

    /// Whether a change of the open file or its path wakes this tailer.
    fn watched(&self) -> bool {
        self.dir_watch.as_ref().is_some_and(Watch::alive)
            && self
                .open
                .as_ref()
                .and_then(|o| o.watch.as_ref())
                .is_some_and(Watch::alive)
    }

    #[inline(never)]
    fn set_polled(&mut self, polled: bool) {
        if polled != self.polled {
            self.polled = polled;
            let m = &self.shared.metrics.files_polled;
            if polled {
                m.fetch_add(1, Ordering::Relaxed);
            } else {
                m.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// At the first open of the path: queues every file of the ledger under this path
    /// that still owes bytes (rotated away while the agent was stopped or before its
    /// quiet wait ended, a copy being recovered, the old content of a file truncated
    /// while stopped), oldest first. `current` is the file now at the path (identity,
    /// head, size); its own checkpoint is resumed by [`Tailer::start_offset`]. Files
    /// owed that cannot be found are counted as lost.
    #[inline(never)]
    fn queue_owed_at_start(&mut self, current: Option<AtPath<'_>>) {
        let path = self.spec.path.clone();
        let Some((dir, base)) = siblings::split(&path) else {
            return;
        };
        let entries = self.registry().entries_for_path(&path);
        // Truncated, and its copy was being read when the agent stopped: a copy made
        // since may hold what the file had then (truncated again meanwhile).
        let truncated_at = entries.iter().filter_map(|c| c.truncated_at).min();
        let last_known = entries
            .iter()
            .map(|c| c.updated)
            .max()
            .map(|t| truncated_at.map_or(t, |u| t.min(u)));
        // Nothing can have been rotated away unseen if the ledger knows only the file
        // that is still at the path, unchanged (the common start: no directory scan).
        // An entry recorded while its file was empty has an empty fingerprint, which
        // matches any content: if the file was written since (it holds bytes now, or
        // its mtime changed), it may also have been copied and truncated while not
        // followed, and the copy is only found by looking: at files rotated out after
        // the moment it was recorded empty (its mtime then, to the ns: a copy made
        // before the agent first saw the file is older, and not ours to ship).
        let written_since_empty = |cp: &crate::registry::Checkpoint, c: &AtPath<'_>| {
            cp.fingerprint.len == 0
                && (c.size > 0
                    || match cp.empty_mtime_ns {
                        Some(t) => c.modified != Some(t),
                        None => c.modified.is_some_and(|m| m / 1_000_000_000 >= cp.updated),
                    })
        };
        let empty_since = current.and_then(|c| {
            entries
                .iter()
                .filter(|cp| cp.id == c.id && written_since_empty(cp, &c))
                .find_map(|cp| cp.empty_mtime_ns)
        });
        let undisturbed = truncated_at.is_none()
            && entries.iter().all(|cp| {
                current.is_some_and(|c| {
                    c.id == cp.id
                        && cp.same_file(c.born, c.head)
                        && c.size >= cp.offset
                        && !written_since_empty(cp, &c)
                })
            });
        let mut owed = Vec::new();
        let mut seen: HashSet<FileId> = HashSet::new();
        if let Some(c) = current {
            seen.insert(c.id);
        }
        for cp in entries {
            let is_current = current.is_some_and(|c| c.id == cp.id);
            if let Some(c) = current.filter(|_| is_current) {
                if cp.same_file(c.born, c.head) && c.size >= cp.offset {
                    continue; // the live file: resumed where it was
                }
            } else if let Some(f) = siblings::find_by_inode(
                dir,
                base,
                cp.id,
                cp.name.as_deref().map(Path::new),
                scope(&self.spec, &self.shared),
            )
            .filter(|f| {
                // A compressed file under this inode is a new file (ext4 reuses
                // inodes) unless we were reading it through gzip already.
                Compression::of(&f.head).is_none() || cp.state == FileState::Copy
            }) {
                if Compression::of(&f.head) == Some(Compression::Gzip)
                    && cp.state == FileState::Copy
                {
                    // A compressed copy we were already recovering from.
                    owed.push(Owed::Gzip {
                        path: f.path,
                        id: cp.id,
                        offset: cp.offset,
                        fingerprint: cp.fingerprint,
                    });
                    seen.insert(cp.id);
                    continue;
                }
                // Written a moment ago: a writer may still hold it (a restart during
                // the quiet wait); it gets its quiet wait again.
                let recent = f
                    .file
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() < self.shared.rotate_wait);
                let state = if cp.state == FileState::Copy {
                    FileState::Copy
                } else {
                    FileState::Rotated
                };
                if cp.same_file(f.born, &f.head) {
                    if (f.size > cp.offset || recent) && seen.insert(f.id) {
                        info!(
                            "{path}: {} while not followed; reading the rest of {} from offset {} first",
                            if cp.state == FileState::Copy { "a copy was being recovered" } else { "was rotated" },
                            f.path.display(),
                            cp.offset
                        );
                        owed.push(Owed::rest(f, cp.offset, state));
                    }
                    continue; // found; read to its end already, or queued now
                }
                // The same file under a rotation name, with other content: truncated
                // (and written again) while not followed, then rotated. What it holds
                // now is new; the old content is looked for in a copy below.
                if (f.size > 0 || recent) && seen.insert(f.id) {
                    info!(
                        "{path}: {} was truncated while not followed; reading what it holds now from the beginning",
                        f.path.display()
                    );
                    owed.push(Owed::from_start(f));
                }
            }
            // Not found as it was: its content may live on in a copy (copytruncate) or
            // a compressed rotation.
            let not = current.map_or(cp.id, |c| c.id);
            if let Some(c) = siblings::copies(
                dir,
                base,
                cp.fingerprint,
                not,
                scope(&self.spec, &self.shared),
            )
            .into_iter()
            .find(|c| !seen.contains(&c.id) && !knows(&self.registry(), c))
            {
                seen.insert(c.id);
                if c.size > cp.offset {
                    info!(
                        "{path}: the file read up to offset {} is now {}; reading its rest from there first",
                        cp.offset,
                        c.path.display()
                    );
                    owed.push(Owed::rest(c, cp.offset, FileState::Copy));
                }
                continue;
            }
            if let Some((gz, gz_id)) = siblings::compressed_copy(
                dir,
                base,
                cp.fingerprint,
                scope(&self.spec, &self.shared),
            ) {
                if seen.insert(gz_id) {
                    info!(
                        "{path}: the file read up to offset {} was compressed into {}; reading its rest through gzip",
                        cp.offset,
                        gz.display()
                    );
                    owed.push(Owed::Gzip {
                        path: gz,
                        id: gz_id,
                        offset: cp.offset,
                        fingerprint: cp.fingerprint,
                    });
                }
                continue;
            }
            let undecoded = (cp.state != FileState::Copy)
                .then(|| {
                    siblings::undecodable_since(
                        dir,
                        base,
                        cp.updated.saturating_sub(2),
                        scope(&self.spec, &self.shared),
                    )
                })
                .flatten()
                .filter(|(_, id, _, _)| seen.insert(*id));
            if let Some((file, _, kind, csize)) = undecoded {
                self.metrics.lose(Loss::Compressed, csize);
                error!(
                    "{path}: the file read up to offset {} was compressed with {} into {} before the rest was read; {} is not decoded, what it holds past that offset is counted as lost (reason compressed, {csize} compressed bytes, {} bytes lost so far)",
                    cp.offset,
                    kind.name(),
                    file.display(),
                    kind.name(),
                    self.metrics.bytes_lost_total()
                );
            } else if cp.size > cp.offset {
                self.lose_bytes(
                    Loss::Deleted,
                    cp.offset,
                    cp.size,
                    &format!(
                        "of {} (inode {}) were deleted while not followed, before they were read",
                        cp.name.as_deref().unwrap_or(&cp.path),
                        cp.id.ino
                    ),
                );
            } else if !is_current && cp.state != FileState::Live {
                debug!(
                    "{path}: rotated file inode {} is gone (read to its end)",
                    cp.id.ino
                );
            }
            if !is_current {
                self.registry().forget(cp.id);
            }
        }
        if let Some(t) = last_known.filter(|_| !undisturbed) {
            // Rotated after the last checkpoint on disk (the agent was killed before it
            // wrote down the files it had just started): rotation-named text files the
            // ledger does not know, written since then.
            let (since, slack) = match empty_since {
                Some(ns) => (
                    SystemTime::UNIX_EPOCH + Duration::from_nanos(ns),
                    Duration::ZERO,
                ),
                None => (
                    SystemTime::UNIX_EPOCH + Duration::from_secs(t.saturating_sub(1)),
                    Duration::from_secs(1),
                ),
            };
            let cur = current.map_or(FileId { dev: 0, ino: 0 }, |c| c.id);
            if empty_since.is_some() {
                // The copy may be compressed already (`compress`, or an older copy
                // shifted to .2.gz by a second rotation): gzip files rotated out since,
                // whose content the ledger does not know, are read from their start.
                let fingerprints: Vec<Fingerprint> = self
                    .registry()
                    .entries_for_path(&path)
                    .iter()
                    .map(|e| e.fingerprint)
                    .filter(|f| f.len > 0)
                    .collect();
                let scope = scope(&self.spec, &self.shared);
                for (gz, gz_id, head) in siblings::gzip_since(dir, base, since, scope) {
                    let known = fingerprints.iter().any(|f| f.matches(&head));
                    if !known && seen.insert(gz_id) {
                        info!(
                            "{path}: {} was compressed from a copy made while not followed; reading it through gzip from the beginning",
                            gz.display()
                        );
                        owed.push(Owed::Gzip {
                            path: gz,
                            id: gz_id,
                            offset: 0,
                            fingerprint: Fingerprint::default(),
                        });
                    }
                }
            }
            for o in self.missed_rotations(cur, cur, since, slack) {
                if seen.insert(owed_id(&o)) {
                    if let Owed::Plain { path: p, .. } = &o {
                        info!(
                            "{path}: {} was rotated after the last checkpoint and is not in the ledger; reading it from the beginning",
                            p.display()
                        );
                    }
                    owed.push(o);
                }
            }
        }
        // Oldest first: by modification time, as the files were written.
        owed.sort_by_key(|o| {
            let p = match o {
                Owed::Plain { path, .. } | Owed::Gzip { path, .. } => path,
            };
            fs::metadata(p).and_then(|m| m.modified()).ok()
        });
        if !owed.is_empty() {
            info!(
                "{path}: {} file(s) rotated away or copied still owe bytes; reading them first, oldest first",
                owed.len()
            );
        }
        self.backlog.extend(owed);
    }

    /// Where to start reading a freshly opened file at the path, recorded in the ledger.
    fn start_offset(
        &self,
        id: FileId,
        generation: u64,
        head: &[u8],
        size: u64,
        born: Option<u64>,
        mtime_ns: Option<u64>,
    ) -> u64 {
        let path = &self.spec.path;
        let mut reg = self.registry();
        let saved = reg.get(id).map(|cp| Saved {
            offset: cp.offset,
            head_matches: cp.same_file(born, head),
        });
        let known = self.spec.from_start || reg.path_known(path);
        let from_end = self.spec.entry.from == StartFrom::End;
        let mut start = rotation::start_position(saved, size, known, from_end);
        if saved.is_none() && self.spec.entry.is_glob() {
            // A glob match that is a copy or rotation of a file read under another
            // name (copytruncate's `app.log.1` under `app.log*`): its first bytes were
            // shipped from the original already.
            if let Some((other, offset, _)) = copy_of(&reg, path, id, head) {
                info!(
                    "{path}: is a copy of {other} (same first bytes); its first {} bytes were shipped from there",
                    offset.min(size)
                );
                start = Start::Resume(offset.min(size));
            }
        }
        match start {
            Start::Resume(o) => info!("{path}: resuming at offset {o} of {size}"),
            Start::TruncatedWhileDown | Start::ReplacedWhileDown => {
                let cp = saved.map_or(0, |s| s.offset);
                warn!(
                    "{path}: saved offset {cp} does not apply (file was {}); reading from the beginning",
                    if start == Start::TruncatedWhileDown {
                        "truncated while not followed"
                    } else {
                        "replaced (inode reused), or truncated and rewritten, while not followed"
                    }
                );
                reg.forget(id);
            }
            Start::End(_) | Start::Beginning => info!(
                "{path}: following from {} (offset {} of {size}) into topic {}",
                if matches!(start, Start::End(_)) {
                    "its end"
                } else {
                    "the beginning"
                },
                start.offset(),
                self.spec.entry.topic
            ),
        }
        let offset = start.offset();
        // Remember the start now: if the agent dies before anything is acknowledged, a
        // restart must resume here, not jump to the (later) end again.
        // With the whole head (also past the offset): new first bytes after a restart
        // mean truncated while down (the copy is looked for), not "resume here".
        if !matches!(start, Start::Resume(_)) || saved.is_none() {
            reg.commit(id, generation, path, Fingerprint::of(head), offset);
            if head.is_empty() {
                reg.set_empty_mtime(id, mtime_ns);
            }
        }
        reg.set_born(id, born);
        offset
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

    /// Reads the open file until it is stopped, rotated away or deleted.
    /// The functions it calls on a change are `#[inline(never)]`: inlined, their locals
    /// made this frame 9 KiB, kept resident on the stack of every idle tailer.
    fn follow(&mut self) -> Leave {
        let mut idle = Duration::from_millis(10);
        // An idle file costs one read(2) per poll; the checks for truncation, rotation and
        // deletion (three more syscalls) run about once a second.
        let check_every = (self.shared.poll_interval * 4).min(Duration::from_secs(1));
        let mut next_check = Instant::now();
        let mut last_data = Instant::now();
        let mut trimmed = Instant::now()
            .checked_sub(TRIM_EVERY)
            .unwrap_or_else(Instant::now);
        loop {
            if self.stopped() {
                return Leave::Stopped;
            }
            let Some(mut of) = self.open.take() else {
                // A truncation handed us over to files that were copied out meanwhile.
                return Leave::Gone;
            };
            let fp_before = of.fingerprint;
            let read = of.read_some();
            if of.fingerprint != fp_before && of.state == FileState::Live {
                // Best effort: never wait for the registry while the producer writes it.
                if let Ok(mut reg) = self.shared.registry.try_lock() {
                    reg.set_fingerprint(of.id, of.fingerprint);
                }
            }
            self.open = Some(of);
            match read {
                Ok(None) => {
                    self.restart_file("truncated and rewritten while being read");
                    continue;
                }
                Ok(Some(n)) if n > 0 => {
                    idle = Duration::from_millis(10);
                    last_data = Instant::now();
                    if let Some(of) = self.open.as_mut() {
                        of.note_size(check_every);
                    }
                    if !self.ship_lines(false) {
                        return Leave::Stopped;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    self.problem(
                        format!("{}: read error: {e}; retrying", self.spec.path),
                        true,
                    );
                }
            }
            if !self.rotated.is_empty() {
                if !self.service_rotated() {
                    return Leave::Stopped;
                }
                if self.rotated.iter().any(|r| r.last_data.elapsed() < idle) {
                    idle = Duration::from_millis(10);
                }
            }
            // At EOF: truncated? rotated? deleted? A copy is complete (made before the
            // truncation that sent us to it): done at its end, back to the file at once.
            let copy = self
                .open
                .as_ref()
                .is_some_and(|o| o.state == FileState::Copy);
            if copy || Instant::now() >= next_check {
                next_check = Instant::now() + check_every;
                let truncations = self.truncations;
                if let Some(leave) = self.on_eof() {
                    return leave;
                }
                if self.truncations != truncations {
                    // Read again from 0 now: what was written since the truncation is
                    // there already, and the change that woke us was used up by this
                    // look (watched, the next wait would be the 60 s safety poll).
                    idle = Duration::from_millis(10);
                    continue;
                }
            }
            let watched = self.watched();
            if !watched && !self.polled {
                // A watch was lost (the kernel dropped it): poll until the next open.
                self.set_polled(true);
            }
            if watched && self.rotated.is_empty() {
                // inotify pokes us on every change, and a poke while we read is kept
                // (the next wait returns at once): no short waits to back off from. A
                // file written a line a second would otherwise wake 8 times per line.
                idle = SAFETY_POLL;
            }
            // An event being joined (`multiline`) goes out once no line came for its
            // timeout.
            let mut wait = idle;
            if let Some(due) = self.joined_due() {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    if !self.flush_joined() {
                        return Leave::Stopped;
                    }
                    continue;
                }
                wait = wait.min(left);
            }
            if wait >= Duration::from_secs(1) && trimmed.elapsed() >= TRIM_EVERY {
                // A long wait next: the stack pages below this frame (open, log, the
                // read just made) are not needed until the file changes. At most every
                // TRIM_EVERY: a file written every second would fault them back in
                // after each line.
                trimmed = Instant::now();
                if let Some(t) = &self.stack {
                    t.trim();
                }
            }
            match self.stop.wait(wait) {
                Woke::Stopped => return Leave::Stopped,
                Woke::Poked => {
                    // Written, renamed, truncated or a sibling appeared: look now.
                    idle = Duration::from_millis(10);
                    next_check = Instant::now();
                    continue;
                }
                Woke::Timeout => {}
            }
            // Back off from 10 ms. Watched: to the safety poll (inotify wakes us).
            // Polled: to poll_interval, and for a file quiet for DEEP_IDLE to 4 ×
            // poll_interval (1 s by default): thousands of idle files cost wake-ups, and
            // a line after a long quiet spell may wait that long.
            let cap = if watched && self.rotated.is_empty() {
                SAFETY_POLL
            } else if last_data.elapsed() >= DEEP_IDLE && self.rotated.is_empty() {
                self.shared.poll_interval * 4
            } else {
                self.shared.poll_interval
            };
            idle = (idle * 2).min(cap);
        }
    }

    /// Reads every renamed file still open; closes those quiet for `rotate_wait` (or
    /// deleted) after handing on their last partial line. False when stopped.
    #[inline(never)]
    fn service_rotated(&mut self) -> bool {
        let mut files = std::mem::take(&mut self.rotated).into_iter();
        while let Some(mut of) = files.next() {
            let mut done = false;
            loop {
                match of.read_some() {
                    Ok(Some(0)) => break,
                    Ok(Some(_)) => {
                        if !self.ship_from(&mut of, false) {
                            self.rotated.push(of);
                            self.rotated.extend(files);
                            return false;
                        }
                    }
                    // Rewritten after it was rotated away, or unreadable: what was read
                    // is handed on and the file is left.
                    Ok(None) | Err(_) => {
                        done = true;
                        break;
                    }
                }
            }
            let deleted = of.file.metadata().is_ok_and(|m| m.nlink() == 0);
            // While Kafka refuses the file's records (the producer holds them), the
            // file stays open however long it is quiet: closing it would drop the only
            // reader of what is held, and a deleted rotation could never be read again.
            done = done
                || (!of.source.is_paused()
                    && rotation::rotated_done(
                        of.last_data.elapsed(),
                        self.shared.rotate_wait,
                        deleted,
                    ));
            if done {
                if !self.finish_file(of) {
                    self.rotated.extend(files);
                    return false;
                }
            } else {
                self.rotated.push(of);
            }
        }
        true
    }

    /// Hands on a file's last partial line, records its final size, closes it.
    #[inline(never)]
    fn finish_file(&mut self, mut of: OpenFile) -> bool {
        if !self.ship_from(&mut of, true) {
            return false;
        }
        let end = of.lines.read_offset();
        if of.state != FileState::Live {
            self.registry().set_state(of.id, of.state, None, end);
        }
        self.let_go(&of);
        debug!(
            "{}: done with rotated file inode {} after {end} bytes",
            self.spec.path, of.id.ino
        );
        true
    }

    /// Hands complete lines of the open file (and, when `final_`, its partial last
    /// line) to the producer. False when stopped while waiting for room in the channel.
    #[inline(never)]
    fn ship_lines(&mut self, final_: bool) -> bool {
        let Some(mut of) = self.open.take() else {
            return true;
        };
        let ok = self.ship_from(&mut of, final_);
        self.open = Some(of);
        ok
    }

    /// Hands complete lines of `of` (and, when `final_`, its partial last line) on.
    #[inline(never)]
    fn ship_from(&mut self, of: &mut OpenFile, final_: bool) -> bool {
        let taken = if final_ {
            of.lines.take_partial()
        } else {
            of.lines.take_lines()
        };
        // The file is done with: the event being joined is complete too.
        let flush = final_ && of.joiner.as_ref().is_some_and(|j| j.is_pending());
        let t = match taken {
            Some(t) => t,
            None if flush => Taken::empty(of.lines.read_offset()),
            None => return true,
        };
        let (source, fingerprint) = (of.source.clone(), of.fingerprint);
        self.ship_taken(t, source, fingerprint, Some(of), final_)
    }

    /// A line buffer at `offset` for this entry's files (UTF-16 splits differently).
    fn line_buffer(&self, offset: u64) -> LineBuffer {
        let b = LineBuffer::new(offset, self.shared.max_line_bytes);
        match crate::content::utf16_of(&self.spec.entry) {
            Some(big_endian) => b.utf16(big_endian),
            None => b,
        }
    }

    /// When the event the live file's joiner holds is due, if there is one.
    fn joined_due(&self) -> Option<Instant> {
        let rules = self.rules.as_deref()?;
        let of = self.open.as_ref()?;
        // A line still without its newline belongs to the event: it waits for the
        // newline (or for the file to be done with), as a partial line always does.
        if of.lines.pending() > 0 {
            return None;
        }
        of.joiner.as_ref()?.due(rules)
    }

    /// Hands on the event the live file's joiner holds (its timeout passed, or the file
    /// is about to be read again from the beginning).
    fn flush_joined(&mut self) -> bool {
        let Some(mut of) = self.open.take() else {
            return true;
        };
        let mut ok = true;
        if of.joiner.as_ref().is_some_and(|j| j.is_pending()) {
            let t = Taken::empty(of.lines.read_offset());
            let (source, fingerprint) = (of.source.clone(), of.fingerprint);
            ok = self.ship_taken(t, source, fingerprint, Some(&mut of), true);
        }
        self.open = Some(of);
        ok
    }

    /// Sends lines taken from a file of `source` into the channel, blocking while it is
    /// full (the file is the buffer) but noticing a stop.
    fn ship_taken(
        &mut self,
        t: Taken,
        source: Arc<Source>,
        fingerprint: Fingerprint,
        mut of: Option<&mut OpenFile>,
        flush: bool,
    ) -> bool {
        self.metrics
            .lines_read
            .fetch_add(t.lines.len() as u64, Ordering::Relaxed);
        let read_bytes = t.lines.last().map_or(0, |s| u64::from(s.next));
        self.metrics
            .bytes_read
            .fetch_add(read_bytes, Ordering::Relaxed);
        if t.split_pieces > 0 {
            self.metrics
                .split_pieces
                .fetch_add(t.split_pieces, Ordering::Relaxed);
            self.split_pieces += t.split_pieces;
            let due = self
                .last_split_warn
                .is_none_or(|w| w.elapsed() >= Duration::from_secs(60));
            if due {
                warn!(
                    "{}: line longer than max_line_bytes ({}) split into pieces ({} pieces so far)",
                    self.spec.path, self.shared.max_line_bytes, self.split_pieces
                );
                self.last_split_warn = Some(Instant::now());
            }
        }
        let mut chunk = match self.rules.as_deref() {
            None => Chunk {
                source,
                fingerprint,
                base: t.base,
                data: t.data,
                lines: t.lines,
                events: Vec::new(),
            },
            Some(rules) => {
                // Without a file (read through gzip), lines are not joined.
                let joiner = of.as_deref_mut().and_then(|o| o.joiner.as_deref_mut());
                let shaped = rules.apply(&t, &source.path, SystemTime::now(), joiner, flush);
                let m = &self.metrics;
                for (counter, n) in [
                    (&m.events_cut, shaped.cut),
                    (&m.split_pieces, shaped.split),
                    (&m.lines_filtered, shaped.filtered),
                    (&m.chars_replaced, shaped.replaced),
                ] {
                    if n > 0 {
                        counter.fetch_add(n, Ordering::Relaxed);
                    }
                }
                if shaped.lines.is_empty() {
                    // Every line went into the event being joined: nothing to send yet.
                    return true;
                }
                Chunk {
                    source,
                    fingerprint,
                    base: t.base,
                    data: shaped.data,
                    lines: shaped.lines,
                    events: shaped.events,
                }
            }
        };
        // Kafka refuses this source's records (see `ship::flow`): hold the chunk and
        // read no further until the producer lets it go again, or the tailer is stopped
        // (a config change for the entry, or shutdown).
        while chunk.source.is_paused() {
            if self.sleep(Duration::from_millis(100)) {
                return false;
            }
            if let Some(of) = of.as_deref_mut() {
                of.note_size(Duration::from_secs(1));
            }
        }
        loop {
            match self.shared.tx.try_send(chunk) {
                Ok(()) => return true,
                Err(TrySendError::Full(c)) => {
                    let tx = &self.shared.tx;
                    // Woken by the producer as it takes chunks; the timeout only bounds
                    // how late a stop is noticed (thousands of tailers timing out every
                    // 100 ms were themselves most of the load).
                    self.shared
                        .room
                        .wait(Duration::from_secs(1), || tx.is_full());
                    if self.stopped() {
                        return false;
                    }
                    // Behind (Kafka slow or down): keep knowing how much the file holds,
                    // so a truncation meanwhile can be counted.
                    if let Some(of) = of.as_deref_mut() {
                        of.note_size(Duration::from_secs(1));
                    }
                    chunk = c;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
    }

    /// At EOF: detects truncation, rotation and deletion. `Some` when the file is left.
    #[inline(never)]
    fn on_eof(&mut self) -> Option<Leave> {
        let of = self.open.as_mut()?;
        let pos = of.lines.read_offset();
        let m = of.file.metadata().ok();
        let size = m.as_ref().map_or(pos, |m| m.len());
        let links = m.as_ref().map_or(1, |m| m.nlink());
        let mtime = m.as_ref().and_then(|m| m.modified().ok());
        // Empty, nothing read, but modified since the last look: written and truncated
        // in between (copytruncate of a file we were about to read from its start). No
        // size ever showed it; the copy holds those lines.
        let emptied = pos == 0 && size == 0 && of.mtime.is_some() && mtime != of.mtime;
        of.mtime = mtime;
        of.sized_at = Instant::now();
        if emptied {
            self.restart_file("written and truncated between two looks");
            return None;
        }
        let same_head = of.same_head();
        let at_path = match fs::metadata(&self.spec.path) {
            Ok(m) => Ok(Some(FileId::of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(_) => Err(()),
        };
        match rotation::look(of.id, pos, size, same_head, at_path, links) {
            Look::Truncated => {
                let why = format!("truncated from {pos} to {size} bytes (copytruncate?)");
                self.restart_file(&why);
                None
            }
            // Same inode, same size or larger, but other first bytes: the file was
            // truncated and written again between two looks.
            Look::Rewritten => {
                self.restart_file("truncated and rewritten (its first bytes changed)");
                None
            }
            Look::Same => {
                of.publish(size);
                if size > of.seen_size {
                    of.seen_size = size;
                    // Best effort (loss accounting only): never wait for the
                    // registry while the producer writes it to disk.
                    if let Ok(mut reg) = self.shared.registry.try_lock() {
                        reg.note_size(of.id, of.seen_size);
                    }
                }
                None
            }
            Look::Unknown => None,
            Look::Renamed => self.leave_file(at_path.ok().flatten(), false),
            Look::Deleted => self.leave_file(at_path.ok().flatten(), true),
        }
    }

    /// The open file was renamed away or deleted: read it to its end; a renamed one
    /// keeps being read until quiet (late writers), a deleted one or a copy is closed.
    /// `now_at_path`: the file at the path now, if any.
    #[inline(never)]
    fn leave_file(&mut self, now_at_path: Option<FileId>, deleted: bool) -> Option<Leave> {
        let path = self.spec.path.clone();
        let mut of = self.open.take()?;
        loop {
            match of.read_some() {
                Ok(Some(n)) if n > 0 => {
                    if !self.ship_from(&mut of, false) {
                        return Some(Leave::Stopped);
                    }
                }
                _ => break,
            }
        }
        let end = of.lines.read_offset();
        let was_live = of.state == FileState::Live;
        if was_live {
            // Not at the path any more: no lag for it until the next file is opened.
            self.metrics.clear_followed();
            if now_at_path.is_some() {
                self.metrics.rotations.fetch_add(1, Ordering::Relaxed);
            }
            if now_at_path.is_some() || !deleted {
                // The rotation completes when the path is opened next (files rotated
                // out meanwhile are looked for then, against the file opened). Renamed
                // with no new file yet: inotify woke us between logrotate's rename and
                // its create.
                self.renamed_away = Some((of.id, of.opened_at, now_at_path.is_some()));
            }
        }
        if !was_live {
            debug!("{path}: done reading {} up to {end}", of.id.ino);
        } else {
            info!(
            "{path}: {} after {end} bytes; {}",
            match (deleted, now_at_path.is_some()) {
                (true, _) => "deleted",
                (false, true) => "rotated",
                (false, false) => "renamed away",
            },
            match (
                deleted || of.state == FileState::Copy,
                now_at_path.is_some()
            ) {
                (true, true) => "closed it, following the new file from the beginning",
                (true, false) => "closed it, waiting for the path to reappear",
                (false, true) =>
                    "following the new file from the beginning, and the old one until it is quiet",
                (false, false) => "reading it until it is quiet, waiting for the path to reappear",
            }
        );
        }
        if deleted || of.state == FileState::Copy {
            // A deleted file's blocks are freed once the handle closes.
            if !self.finish_file(of) {
                return Some(Leave::Stopped);
            }
            return Some(Leave::Gone);
        }
        of.state = FileState::Rotated;
        of.last_data = of.last_data.max(Instant::now() - Duration::from_millis(1));
        self.registry()
            .set_state(of.id, FileState::Rotated, None, end.max(of.seen_size));
        self.rotated.push(of);
        while self.rotated.len() > MAX_ROTATED_OPEN {
            // A rotation storm: finish the oldest (read to its end already).
            let oldest = self.rotated.remove(0);
            if !self.finish_file(oldest) {
                return Some(Leave::Stopped);
            }
        }
        Some(Leave::Gone)
    }

    /// The open file was truncated: read it again from 0 as a new generation, after the
    /// part the truncation took is recovered from its copy.
    #[inline(never)]
    fn restart_file(&mut self, why: &str) {
        // The event being joined ends where the old content ends. (A stop noticed while
        // it waits for room is noticed again by the caller's loop.)
        let _ = self.flush_joined();
        self.truncations += 1;
        self.metrics.truncations.fetch_add(1, Ordering::Relaxed);
        let path = self.spec.path.clone();
        warn!(
            "{path}: {why}; reading again from the beginning ({} truncations so far)",
            self.truncations
        );
        let Some(of) = self.open.as_ref() else {
            return;
        };
        let (id, old_generation) = (of.id, of.source.id);
        let (from, fp, opened_at) = (of.lines.line_offset(), of.fingerprint, of.opened_at);
        // What the path holds now is what lag is measured against from here on.
        of.publish(of.file.metadata().map_or(0, |m| m.len()));
        // What the file is known to have held past the last line handed on.
        let known_end = of.seen_size.max(of.lines.read_offset());
        // What the file holds now, as offset 0 of the new generation: if it is truncated
        // again before we read it (we read a copy first, or the agent dies), these first
        // bytes tell that, and find its copy.
        let head_now =
            read_head(&of.file).map_or_else(|_| Fingerprint::default(), |h| Fingerprint::of(&h));
        let src = self.new_source(id, self.next_generation());
        let size_now = of.file.metadata().map_or(0, |m| m.len());
        let acked = {
            let mut reg = self.registry();
            let acked = reg.get(id).map_or(0, |c| c.offset).min(from);
            reg.commit(id, src.id, &path, head_now, 0);
            // What a later loss of it counts is of the new content: the size before the
            // truncation would count bytes already shipped (or recovered from the copy)
            // as lost if it is truncated again while the agent is stopped.
            reg.reset_size(id, size_now);
            acked
        };
        // copytruncate: lines written between our last read and the truncation exist only
        // in the copy. Read them from there first; the look at the path then brings us
        // back to the truncated file, from 0.
        let Some((dir, base)) = siblings::split(&path) else {
            return;
        };
        // A sibling the ledger knows as itself (inode and head) is an earlier rotation
        // that merely starts like this file (a banner every file begins with), not a
        // copy of it.
        // (The directory is read and the candidates opened before the registry lock is
        // taken: a hung mount must hold up this tailer only, not the producer.)
        let copies = siblings::copies(dir, base, fp, id, scope(&self.spec, &self.shared));
        let copies: Vec<Found> = {
            let reg = self.registry();
            copies.into_iter().filter(|c| !knows(&reg, c)).collect()
        };
        self.copies.extend(copies.iter().map(|c| c.id));
        // Several truncations between two looks: copies of content we never saw (other
        // first bytes) are read too, oldest first, before the file itself.
        let missed = self.missed_rotations(id, id, opened_at, Duration::from_secs(1));
        self.queue_backlog(missed);
        // A copy some other tailer reads (a glob that matches it) covers the rest.
        let elsewhere = copies
            .iter()
            .any(|c| self.shared.is_live(c.id) && self.registry().get(c.id).is_some());
        let mut copies: Vec<Found> = copies
            .into_iter()
            .filter(|c| !self.shared.is_live(c.id))
            .collect();
        let copy_generation = self.next_generation();
        if let Some(c) = copies.first() {
            // In the ledger before a byte of it is read: a crash now resumes the copy at
            // what Kafka had acknowledged of the original, and late acknowledgements of
            // the original's lines move the copy's offset (a glob matching the copy, or
            // a restart, then does not send them again).
            let mut reg = self.registry();
            if reg.get(c.id).is_none() {
                reg.commit(c.id, copy_generation, &path, fp, acked);
                let name = c.path.to_string_lossy();
                reg.set_state(c.id, FileState::Copy, Some(&name), c.size);
                reg.set_born(c.id, c.born);
                reg.redirect(id, old_generation, c.id);
            }
        }
        let longer = (!copies.is_empty() && copies[0].size > from).then(|| copies.remove(0));
        let recovered_to = longer.as_ref().map_or(from, |c| c.size);
        if known_end > recovered_to && !elsewhere {
            self.lose_bytes(
                Loss::Truncated,
                recovered_to,
                known_end,
                "were truncated away before they were read, and no copy holds them",
            );
        }
        if let Some(copy) = longer {
            info!(
                "{path}: recovering bytes {from}..{} written before the truncation from its copy {}",
                copy.size,
                copy.path.display()
            );
            self.open = None;
            self.defer(id);
            let copy_src = self.new_source(copy.id, copy_generation);
            let Found { file, id, head, .. } = copy;
            if self
                .open_at(file, id, from, &head, copy_src, FileState::Copy)
                .is_ok()
            {
                return;
            }
            // Could not seek in the copy: read the truncated file.
            let _ = self.open_path();
            return;
        }
        if !self.backlog.is_empty() {
            // Read the missed copies first; the truncated file is reopened after them and
            // resumes at 0 (committed above).
            self.open = None;
            self.defer(id);
            return;
        }
        if let Some(of) = self.open.as_mut() {
            if let Err(e) = of.file.seek(SeekFrom::Start(0)) {
                error!("{path}: cannot seek after truncation: {e}");
            }
            of.lines.reset(0);
            of.fingerprint = Fingerprint::default();
            of.source = src;
            of.seen_size = 0;
        }
    }

    /// The truncated file `id` is closed while its copy (or missed copies) are read:
    /// remembered here and in the ledger (a restart meanwhile looks for copies made
    /// since). Its size now is what a further loss of it would count.
    fn defer(&mut self, id: FileId) {
        self.deferred = Some((id, SystemTime::now()));
        let size = fs::metadata(&self.spec.path)
            .ok()
            .filter(|m| FileId::of(m) == id)
            .map_or(0, |m| m.len());
        let mut reg = self.registry();
        reg.set_truncated_at(id, Some(crate::registry::unix_now()));
        reg.note_size(id, size);
    }

    /// Counts bytes `from..to` of the file as lost for `why` and says so, once per event.
    fn lose_bytes(&self, why: Loss, from: u64, to: u64, what: &str) {
        self.metrics.lose(why, to - from);
        error!(
            "{}: bytes {from}..{to} ({} bytes) {what}; counted as lost (reason {}, {} bytes lost so far)",
            self.spec.path,
            to - from,
            why.as_str(),
            self.metrics.bytes_lost_total()
        );
    }

    /// Adds files rotated (or copied) out between two looks to the backlog, once each.
    fn queue_backlog(&mut self, missed: Vec<Owed>) {
        let new: Vec<Owed> = missed
            .into_iter()
            .filter(|m| !self.backlog.iter().any(|b| owed_id(b) == owed_id(m)))
            .collect();
        if !new.is_empty() {
            warn!(
                "{}: {} files were rotated or copied out between two looks; reading them first",
                self.spec.path,
                new.len()
            );
            self.backlog.extend(new);
        }
    }

    /// Files rotated out of the path between two looks: siblings with a rotation name,
    /// text, never seen (not in the ledger, not read now), written after `since`.
    /// Oldest first.
    fn missed_rotations(
        &self,
        old: FileId,
        current: FileId,
        since: SystemTime,
        slack: Duration,
    ) -> Vec<Owed> {
        let Some((dir, base)) = siblings::split(&self.spec.path) else {
            return Vec::new();
        };
        // A glob that matches the rotated names picks them up itself.
        let own_glob = self
            .spec
            .entry
            .is_glob()
            .then(|| glob::Pattern::new(&self.spec.entry.path).ok())
            .flatten();
        let found =
            siblings::rotated_since(dir, base, since - slack, scope(&self.spec, &self.shared));
        let reg = self.registry();
        let fresh: Vec<Found> = found
            .into_iter()
            .filter(|f| {
                f.id != old
                    && f.id != current
                    && !knows(&reg, f)
                    && !self.copies.contains(&f.id)
                    && !self.rotated.iter().any(|r| r.id == f.id)
                    && own_glob.as_ref().is_none_or(|g| !g.matches_path(&f.path))
            })
            .collect();
        drop(reg);
        fresh
            .into_iter()
            .filter(|f| !self.shared.is_live(f.id))
            .filter(|f| {
                // A rename rotation leaves one link; a second one can be a file from
                // anywhere, linked in under a rotation name (see `hardlink_refusal`).
                let why = hardlink_refusal(f.nlink, self.shared.allow_hardlinks);
                if let Some(why) = &why {
                    warn!(
                        "{}: {} looks like a rotation of it but {why}",
                        self.spec.path,
                        f.path.display()
                    );
                }
                why.is_none()
            })
            .map(Owed::from_start)
            .collect()
    }

    /// Opens a file of the backlog at its offset. Renamed again meanwhile (`app.log.1` →
    /// `app.log.2`): found by its inode. Deleted: what it still owed is counted as lost.
    #[inline(never)]
    fn open_owed(&mut self, owed: Owed) {
        let (path, id, offset, size, state) = match owed {
            Owed::Plain {
                path,
                id,
                offset,
                size,
                state,
            } => (path, id, offset, size, state),
            Owed::Gzip {
                path,
                id,
                offset,
                fingerprint,
            } => {
                self.read_gzip(&path, id, offset, fingerprint);
                return;
            }
        };
        let Some((dir, base)) = siblings::split(&self.spec.path) else {
            return;
        };
        // An inode that now holds a compressed file is a new file (logrotate compressed
        // ours, ext4 gave the freed inode to the archive): never shipped as text.
        let found = siblings::find_by_inode(
            dir,
            base,
            id,
            Some(path.as_path()),
            scope(&self.spec, &self.shared),
        )
        .filter(|f| Compression::of(&f.head).is_none());
        let Some(found) = found else {
            if size > offset {
                self.lose_bytes(
                    Loss::Deleted,
                    offset,
                    size,
                    &format!(
                        "of rotated file {} were deleted before they could be read",
                        path.display()
                    ),
                );
            }
            self.registry().forget(id);
            return;
        };
        let generation = self.next_generation();
        {
            let mut reg = self.registry();
            // Offsets already in the ledger for this file stay (a resume); a file never
            // seen starts at `offset` (0).
            let fp = match reg.get(id) {
                Some(c) if offset > 0 => c.fingerprint,
                _ => Fingerprint::default(),
            };
            reg.commit(id, generation, &self.spec.path, fp, offset);
            let name = found.path.to_string_lossy();
            reg.set_state(id, state, Some(&name), found.size);
            reg.set_born(id, found.born);
        }
        info!(
            "{}: reading {} {} from offset {offset}",
            self.spec.path,
            if state == FileState::Copy {
                "copy"
            } else {
                "rotated file"
            },
            found.path.display()
        );
        let src = self.new_source(id, generation);
        if offset == 0 {
            self.copies.remove(&id);
        }
        let _ = self.open_at(found.file, id, offset, &found.head, src, state);
    }

    /// Reads the rest of a rotation that was compressed before it was read to its end:
    /// decompresses, skips to `offset` of the decompressed bytes, and ships the rest as
    /// the ledger entry `id` (offsets in decompressed bytes). Stopped meanwhile: the
    /// acknowledged offset is resumed at the next start.
    fn read_gzip(&mut self, path: &Path, id: FileId, offset: u64, fp: Fingerprint) {
        let name = path.display().to_string();
        // A rotation: never through a symlink, only in the followed file's directory
        // (one where the followed file may be read), the file found before.
        let opened = siblings::split(&self.spec.path)
            .ok_or_else(|| io::Error::other("no file name"))
            .and_then(|(_, base)| {
                siblings::open_gzip(path, base, id, scope(&self.spec, &self.shared))
            });
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                warn!(
                    "{}: cannot open {name}: {e}; its rest is not read",
                    self.spec.path
                );
                return;
            }
        };
        let generation = self.next_generation();
        {
            let mut reg = self.registry();
            reg.commit(id, generation, &self.spec.path, fp, offset);
            reg.set_state(id, FileState::Copy, Some(&name), offset);
        }
        let src = self.new_source(id, generation);
        self.read_gzip_from(file, &name, id, offset, fp, &src);
        // Where the compressed file stands as this reader lets go of it (see `let_go`).
        let here = fs::metadata(path).is_ok_and(|m| FileId::of(&m) == id);
        src.set_left(if here {
            Left::Reachable
        } else {
            Left::Unreachable
        });
    }

    /// The reading part of [`Tailer::read_gzip`], as `src`.
    fn read_gzip_from(
        &mut self,
        file: File,
        name: &str,
        id: FileId,
        offset: u64,
        fp: Fingerprint,
        src: &Arc<Source>,
    ) {
        let mut dec = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
        let skipped = io::copy(&mut (&mut dec).take(offset), &mut io::sink());
        if !matches!(skipped, Ok(n) if n == offset) {
            error!(
                "{}: {name} holds fewer than {offset} bytes once decompressed, or is corrupt; its rest cannot be read",
                self.spec.path
            );
            return;
        }
        info!(
            "{}: reading {name} through gzip from decompressed offset {offset}",
            self.spec.path
        );
        let mut lines = self.line_buffer(offset);
        loop {
            if self.stopped() {
                return;
            }
            match lines.fill(&mut dec) {
                Ok(0) => break,
                Ok(_) => {
                    if let Some(t) = lines.take_lines() {
                        if !self.ship_taken(t, src.clone(), fp, None, false) {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let at = lines.read_offset();
                    error!(
                        "{}: {name} is corrupt at decompressed offset {at}: {e}; the rest cannot be read",
                        self.spec.path
                    );
                    break;
                }
            }
        }
        if let Some(t) = lines.take_partial() {
            let _ = self.ship_taken(t, src.clone(), fp, None, true);
        }
        let end = lines.read_offset();
        self.registry().set_state(id, FileState::Copy, None, end);
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
