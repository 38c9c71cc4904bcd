//! One tailer thread per file: open, resume, read, split, hand on, and follow the path
//! through rotation, truncation and deletion.
//!
//! Every rotation rule lives in [`Tailer::check_path`] and [`Tailer::on_eof`]:
//! - rename rotation: the old handle is read to its end (and stays open one quiet poll
//!   interval for late writers), then the new file at the path is read from offset 0;
//! - truncation (copytruncate): size below our offset ⇒ warn, count, restart at 0 as a
//!   new generation;
//! - deletion: the handle is read to its end and closed, then the path is waited for;
//! - a missing file is waited for and read from its beginning when it appears.
//!
//! The tailer never commits offsets itself (the producer does, once Kafka acknowledged),
//! except when it first starts following a file: then it records where it starts, so
//! that lines appended while the agent is down are read after a restart.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender};
use log::{debug, error, info, warn};

use crate::chunk::{Chunk, Route, Source};
use crate::collect::{AllowList, CollectEntry, StartFrom};
use crate::lines::LineBuffer;
use crate::metrics::{FileMetrics, Loss, Metrics};
use crate::registry::{FileId, Fingerprint, Registry, FINGERPRINT_BYTES};
use crate::stop::{stop_pair, StopToken, Stopper};

/// What every tailer shares: the channel, the registry, the settings.
#[derive(Debug, Clone)]
pub struct TailShared {
    /// Into the producer.
    pub tx: Sender<Chunk>,
    /// Offsets on disk (read at open, written by the producer).
    pub registry: Arc<Mutex<Registry>>,
    /// Hostname for `{host}` keys.
    pub hostname: String,
    /// Longest record.
    pub max_line_bytes: usize,
    /// Longest idle wait.
    pub poll_interval: Duration,
    /// Source ids, unique in this process.
    pub next_source_id: Arc<AtomicU64>,
    /// The current problem of each tailer that has one (for the status document).
    pub problems: Arc<Mutex<HashMap<String, String>>>,
    /// Every file some tailer reads or the producer still has lines of in flight.
    pub live: Arc<Mutex<HashMap<FileId, Weak<Source>>>>,
    /// Counters for operators.
    pub metrics: Arc<Metrics>,
}

impl TailShared {
    /// Whether a tailer reads `id` now, or Kafka has not acknowledged all of its lines
    /// yet. A glob match in that state is not started: a second reader would send
    /// lines twice.
    pub fn is_live(&self, id: FileId) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, w| w.strong_count() > 0);
        live.contains_key(&id)
    }

    /// Registers `source` as the live reader of its file.
    pub fn register(&self, source: &Arc<Source>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(source.file, Arc::downgrade(source));
    }

    /// Registers `source` as the live reader of its file unless another reader is
    /// live; then returns that reader's path. Check and insert happen under one lock.
    pub fn claim(&self, source: &Arc<Source>) -> Result<(), String> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = live.get(&source.file).and_then(Weak::upgrade) {
            return Err(other.path.clone());
        }
        live.insert(source.file, Arc::downgrade(source));
        Ok(())
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
    /// For entries from the central config: where the file's real path (symlinks
    /// resolved) must lie.
    pub allowed: Option<AllowList>,
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
            let mut t = Tailer::new(spec, shared, token);
            t.run();
        })?;
    Ok(TailerHandle { stopper, thread })
}

/// The file currently read.
struct OpenFile {
    file: File,
    id: FileId,
    source: Arc<Source>,
    fingerprint: Fingerprint,
    lines: LineBuffer,
    /// When reading it began: files rotated out after this were written meanwhile.
    opened_at: std::time::SystemTime,
    /// Already rotated out when opened (backlog): no quiet wait for late writers.
    rotated: bool,
    /// The largest size seen by fstat: what a truncation can be known to have taken.
    seen_size: u64,
    /// When `seen_size` was last refreshed.
    sized_at: Instant,
}

impl OpenFile {
    /// Refreshes `seen_size` (one fstat) if the last look is older than `every`. The
    /// size counts only if the first bytes are still ours afterwards: a file truncated
    /// and grown again must not make old content look longer than it was.
    fn note_size(&mut self, every: Duration) {
        if self.sized_at.elapsed() >= every {
            self.sized_at = Instant::now();
            if let Ok(m) = self.file.metadata() {
                if self.same_head() {
                    self.seen_size = self.seen_size.max(m.len());
                }
            }
        }
    }

    /// Whether the file still starts with the bytes it started with when read (a read
    /// error cannot tell: then yes, and the next look decides).
    fn same_head(&self) -> bool {
        let k = self.fingerprint.len as usize;
        k == 0
            || read_head(&self.file).map_or(true, |h| {
                h.len() >= k && Fingerprint::of(&h[..k]) == self.fingerprint
            })
    }
}

/// A file rotated out before the tailer looked: where it was, what it is, how big.
#[derive(Debug, Clone, PartialEq)]
struct Missed {
    path: std::path::PathBuf,
    id: FileId,
    size: u64,
}

/// Why the read loop left a file.
enum Leave {
    Stopped,
    Gone,
}

struct Tailer {
    spec: TailSpec,
    shared: TailShared,
    stop: StopToken,
    open: Option<OpenFile>,
    /// Files rotated out between two looks (a rotation storm), to read before the path.
    backlog: std::collections::VecDeque<Missed>,
    /// Copies made by copytruncate: never "missed rotations", their bytes came through
    /// the original.
    copies: std::collections::HashSet<FileId>,
    /// Whether any file was opened, or found missing, before: then new files start at 0.
    seen_before: bool,
    /// The last open problem logged, so a waiting tailer logs once per change.
    last_problem: Option<String>,
    split_pieces: u64,
    last_split_warn: Option<Instant>,
    truncations: u64,
    metrics: Arc<FileMetrics>,
}

impl Tailer {
    fn new(spec: TailSpec, shared: TailShared, stop: StopToken) -> Tailer {
        let metrics = shared.metrics.file(&spec.path, &spec.entry.topic);
        Tailer {
            metrics,
            spec,
            shared,
            stop,
            open: None,
            backlog: Default::default(),
            copies: Default::default(),
            seen_before: false,
            last_problem: None,
            split_pieces: 0,
            last_split_warn: None,
            truncations: 0,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Sleeps `d` unless stopped first; true if stopped.
    fn sleep(&self, d: Duration) -> bool {
        self.stop.sleep(d)
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
                if let Some(m) = self.backlog.pop_front() {
                    self.open_rotated(&m);
                    continue;
                }
                match self.open_path() {
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
        if let Ok(mut p) = self.shared.problems.lock() {
            p.remove(&self.spec.path);
        }
        self.metrics.running.store(0, Ordering::Relaxed);
        debug!("{}: tailer stopped", self.spec.path);
    }

    /// Logs an open problem once per change of problem.
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

    /// Tries to open the path. Ok(true): open; Ok(false): not there yet; Err: refused.
    fn open_path(&mut self) -> Result<bool, ()> {
        let path = self.spec.path.clone();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.problem(format!("{path}: does not exist yet; waiting for it"), false);
                self.seen_before = true;
                return Ok(false);
            }
            Err(e) => {
                self.problem(format!("{path}: cannot stat: {e}; retrying"), true);
                return Err(());
            }
        };
        if !meta.is_file() {
            let what = kind_of(&meta);
            self.problem(
                format!(
                    "{path}: is a {what}, not a regular file; not reading it, checking again later"
                ),
                true,
            );
            return Err(());
        }
        if let Some(list) = &self.spec.allowed {
            // A symlink inside the allowed tree must not lead out of it.
            let real = fs::canonicalize(&path)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| path.clone());
            if let Err(why) = list.check(&real) {
                self.problem(
                    format!("{path}: resolves to {real}, {why}; not reading it"),
                    true,
                );
                return Err(());
            }
        }
        // O_NONBLOCK: if a FIFO replaced the file since the stat, open must not hang.
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                self.problem(format!("{path}: cannot open: {e}; retrying"), true);
                return Err(());
            }
        };
        let meta = match file.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(m) => {
                let what = kind_of(&m);
                self.problem(format!("{path}: is a {what}, not a regular file"), true);
                return Err(());
            }
            Err(e) => {
                self.problem(format!("{path}: cannot stat open file: {e}"), true);
                return Err(());
            }
        };
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        // The reading generation for this file, registered now: at the first open it
        // must be the only live reader of the file (checked and registered in one step,
        // so two tailers opening the same file at once cannot both win).
        let generation = self.next_generation();
        let source = self.make_source(id, generation);
        if self.seen_before {
            self.shared.register(&source);
        } else {
            match self.shared.claim(&source) {
                Ok(()) => {}
                // A tailer of this path was stopped a moment ago (config change) and Kafka
                // has not acknowledged all it read: its registry offset is behind what it
                // sent. Starting from there would send those lines twice; wait instead.
                Err(other) if other == path => {
                    self.problem(
                        format!("{path}: waiting for Kafka to acknowledge what the previous tailer read"),
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
        }
        self.clear_problem();
        if !self.seen_before {
            if let Some((old, old_id, offset, head)) = self.rotated_while_down(id) {
                // Read the rest of the old file first; the rotation check then moves on
                // to the file now at the path, from its beginning.
                let old_source = self.new_source(old_id, self.next_generation());
                return self.open_at(old, old_id, offset, &head, old_source);
            }
        }
        let size = meta.len();
        let head = match read_head(&file) {
            Ok(h) => h,
            Err(e) => {
                self.problem(format!("{path}: cannot read: {e}; retrying"), true);
                return Err(());
            }
        };
        let offset = self.start_offset(id, generation, &head, size);
        self.open_at(file, id, offset, &head, source)
    }

    /// Starts reading `file` (whose first bytes are `head`) at `offset` as `source`.
    fn open_at(
        &mut self,
        mut file: File,
        id: FileId,
        offset: u64,
        head: &[u8],
        source: Arc<Source>,
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
            lines: LineBuffer::new(offset, self.shared.max_line_bytes),
            opened_at: std::time::SystemTime::now(),
            rotated: false,
            seen_size,
            sized_at: Instant::now(),
        });
        self.seen_before = true;
        Ok(true)
    }

    /// At the first open: if the newest checkpoint for this path names another inode
    /// (the file was rotated while the agent was down, or while it was not collected),
    /// and that file is still in the same directory with the same head and unread bytes,
    /// returns it, opened, with the offset to resume at.
    fn rotated_while_down(&self, current: FileId) -> Option<(File, FileId, u64, Vec<u8>)> {
        let path = &self.spec.path;
        let cp = {
            let reg = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if reg.get(current).is_some() {
                return None;
            }
            reg.newest_for_path(path)?.clone()
        };
        let dir = Path::new(path).parent()?;
        for entry in fs::read_dir(dir).ok()?.take(10_000).flatten() {
            let Ok(m) = entry.metadata() else {
                continue;
            };
            if m.dev() != cp.id.dev || m.ino() != cp.id.ino {
                continue;
            }
            if !m.is_file() || m.len() <= cp.offset {
                return None;
            }
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(entry.path())
                .ok()?;
            let head = read_head(&f).ok()?;
            let n = cp.fingerprint.len as usize;
            if n > head.len() || Fingerprint::of(&head[..n]) != cp.fingerprint {
                return None;
            }
            info!(
                "{path}: was rotated while not followed; reading the rest of {} from offset {} first",
                entry.path().display(),
                cp.offset
            );
            return Some((f, cp.id, cp.offset, head));
        }
        None
    }

    /// Where to start reading a freshly opened file, and record it in the registry.
    fn start_offset(&self, id: FileId, generation: u64, head: &[u8], size: u64) -> u64 {
        let path = &self.spec.path;
        let mut reg = match self.shared.registry.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        if let Some(cp) = reg.get(id) {
            let fp_len = cp.fingerprint.len as usize;
            let same_head =
                fp_len <= head.len() && Fingerprint::of(&head[..fp_len]) == cp.fingerprint;
            if same_head && size >= cp.offset {
                info!("{path}: resuming at offset {} of {size}", cp.offset);
                return cp.offset;
            }
            warn!(
                "{path}: saved offset {} does not apply (file was {}); reading from the beginning",
                cp.offset,
                if same_head {
                    "truncated"
                } else {
                    "replaced (inode reused)"
                }
            );
            reg.forget(id);
        }
        let start_at_end =
            self.spec.entry.from == StartFrom::End && !self.spec.from_start && !self.seen_before;
        let offset = if start_at_end { size } else { 0 };
        info!(
            "{path}: following from {} (offset {offset} of {size}) into topic {}",
            if start_at_end {
                "its end"
            } else {
                "the beginning"
            },
            self.spec.entry.topic
        );
        // Remember the start now: if the agent dies before anything is acknowledged, a
        // restart must resume here, not jump to the (later) end again.
        let fp_len = head.len().min(offset as usize);
        reg.commit(
            id,
            generation,
            path,
            Fingerprint::of(&head[..fp_len]),
            offset,
        );
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
        })
    }

    /// Reads the open file until it is stopped, rotated away or deleted.
    fn follow(&mut self) -> Leave {
        let mut idle = Duration::from_millis(10);
        // An idle file costs one read(2) per poll; the checks for truncation, rotation and
        // deletion (three more syscalls) run about once a second.
        let check_every = (self.shared.poll_interval * 4).min(Duration::from_secs(1));
        let mut next_check = Instant::now();
        let mut last_data = Instant::now();
        loop {
            if self.stopped() {
                return Leave::Stopped;
            }
            if self.open.is_none() {
                // A truncation handed us over to files that were copied out meanwhile.
                return Leave::Gone;
            }
            match self.read_some() {
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
            // At EOF: truncated? rotated? deleted?
            if Instant::now() >= next_check {
                next_check = Instant::now() + check_every;
                if let Some(leave) = self.on_eof() {
                    return leave;
                }
            }
            if self.sleep(idle) {
                return Leave::Stopped;
            }
            // Back off from 10 ms to poll_interval; a file quiet for DEEP_IDLE is looked at
            // every 4 × poll_interval (1 s by default): hundreds of idle files cost
            // wake-ups, and a line after a long quiet spell may wait that long.
            let cap = if last_data.elapsed() >= DEEP_IDLE {
                self.shared.poll_interval * 4
            } else {
                self.shared.poll_interval
            };
            idle = (idle * 2).min(cap);
        }
    }

    /// Reads what is there: `Some(bytes read)`, or `None` when the file turned out to
    /// have been truncated and written again meanwhile (its first bytes changed): the
    /// bytes just read belong to the new content and were put back, not handed on.
    ///
    /// The periodic check in [`Tailer::on_eof`] alone is not enough: a file truncated
    /// and grown past our offset between two checks would be read on from the old
    /// offset, shipping the new content's middle and skipping the old content's tail.
    fn read_some(&mut self) -> io::Result<Option<usize>> {
        let Some(of) = self.open.as_mut() else {
            return Ok(Some(0));
        };
        let n = of.lines.fill(&mut of.file)?;
        if n == 0 {
            return Ok(Some(0));
        }
        // One pread of the head per read (≤ 64 KiB), not per line.
        if !of.same_head() {
            of.lines.unread(n);
            return Ok(None);
        }
        if (of.fingerprint.len as usize) < FINGERPRINT_BYTES {
            // The head is still growing: the fingerprint covers what exists now.
            if let Ok(head) = read_head(&of.file) {
                of.fingerprint = Fingerprint::of(&head);
            }
        }
        Ok(Some(n))
    }

    /// Hands complete lines (and, when `final_`, the partial last line) to the producer.
    /// False when stopped while waiting for room in the channel.
    fn ship_lines(&mut self, final_: bool) -> bool {
        let Some(of) = self.open.as_mut() else {
            return true;
        };
        let taken = if final_ {
            of.lines.take_partial()
        } else {
            of.lines.take_lines()
        };
        let Some(t) = taken else {
            return true;
        };
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
        let chunk = Chunk {
            source: of.source.clone(),
            fingerprint: of.fingerprint,
            base: t.base,
            data: t.data,
            lines: t.lines,
        };
        // Block while the channel is full (the file is the buffer), but notice a stop.
        let mut chunk = chunk;
        loop {
            match self
                .shared
                .tx
                .send_timeout(chunk, Duration::from_millis(100))
            {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(c)) => {
                    if self.stopped() {
                        return false;
                    }
                    // Behind (Kafka slow or down): keep knowing how much the file holds,
                    // so a truncation meanwhile can be counted.
                    if let Some(of) = self.open.as_mut() {
                        of.note_size(Duration::from_secs(1));
                    }
                    chunk = c;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    /// At EOF: detects truncation, rotation and deletion. `Some` when the file is left.
    fn on_eof(&mut self) -> Option<Leave> {
        let of = self.open.as_mut()?;
        let pos = of.lines.read_offset();
        let size = of.file.metadata().map(|m| m.len()).unwrap_or(pos);
        of.sized_at = Instant::now();
        if size < pos {
            let why = format!("truncated from {pos} to {size} bytes (copytruncate?)");
            self.restart_file(&why);
            return None;
        }
        // Same inode, same size or larger, but other first bytes: the file was truncated
        // and written again between two looks.
        if !of.same_head() {
            self.restart_file("truncated and rewritten (its first bytes changed)");
            return None;
        }
        of.seen_size = of.seen_size.max(size);
        self.check_path()
    }

    /// The open file was truncated: read it again from 0 as a new generation.
    fn restart_file(&mut self, why: &str) {
        self.truncations += 1;
        self.metrics.truncations.fetch_add(1, Ordering::Relaxed);
        let path = &self.spec.path.clone();
        warn!(
            "{path}: {why}; reading again from the beginning ({} truncations so far)",
            self.truncations
        );
        let Some(of) = self.open.as_ref() else {
            return;
        };
        let id = of.id;
        let src = self.new_source(id, self.next_generation());
        let mut reg = match self.shared.registry.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        reg.commit(id, src.id, path, Fingerprint::default(), 0);
        drop(reg);
        // copytruncate: lines written between our last read and the truncation exist only
        // in the copy. Read them from there first; the rotation check then brings us back
        // to the truncated file, from 0.
        let (from, fp, opened_at) = (of.lines.line_offset(), of.fingerprint, of.opened_at);
        // What the file is known to have held past the last line handed on.
        let known_end = of.seen_size.max(of.lines.read_offset());
        let copies = self.find_copies(id, fp);
        self.copies.extend(copies.iter().map(|c| c.1));
        // Several truncations between two looks: copies of content we never saw (other
        // first bytes) are read too, oldest first, before the file itself.
        let missed = self.missed_rotations(id, id, opened_at);
        self.queue_backlog(missed);
        let longer = copies
            .into_iter()
            .find(|c| c.0.metadata().is_ok_and(|m| m.len() > from));
        let recovered_to = longer
            .as_ref()
            .map_or(from, |c| c.0.metadata().map_or(from, |m| m.len()));
        if known_end > recovered_to {
            self.lose_bytes(
                Loss::Truncated,
                recovered_to,
                known_end,
                "were truncated away before they were read, and no copy holds them",
            );
        }
        if let Some((copy, copy_id, head, name)) = longer {
            let size = recovered_to;
            info!(
                "{path}: recovering bytes {from}..{size} written before the truncation from its copy {name}"
            );
            self.open = None;
            let copy_src = self.new_source(copy_id, self.next_generation());
            if self.open_at(copy, copy_id, from, &head, copy_src).is_ok() {
                return;
            }
            // Could not seek in the copy: fall through and read the truncated file.
            let _ = self.open_path();
            return;
        }
        if !self.backlog.is_empty() {
            // Read the missed copies first; the truncated file is reopened after them and
            // resumes at 0 (committed above).
            self.open = None;
            return;
        }
        if let Some(of) = self.open.as_mut() {
            if let Err(e) = of.file.seek(SeekFrom::Start(0)) {
                error!("{}: cannot seek after truncation: {e}", self.spec.path);
            }
            of.lines.reset(0);
            of.fingerprint = Fingerprint::default();
            of.source = src;
        }
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
    fn queue_backlog(&mut self, missed: Vec<Missed>) {
        let new: Vec<_> = missed
            .into_iter()
            .filter(|m| !self.backlog.iter().any(|b| b.id == m.id))
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

    /// Files rotated out of the path between two looks: siblings named like it, never
    /// seen (not in the registry, not read now), written after `since`. Oldest first.
    fn missed_rotations(
        &self,
        old: FileId,
        current: FileId,
        since: std::time::SystemTime,
    ) -> Vec<Missed> {
        let path = Path::new(&self.spec.path);
        let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|b| b.to_str()))
        else {
            return Vec::new();
        };
        let Ok(rd) = fs::read_dir(dir) else {
            return Vec::new();
        };
        // A glob that matches the rotated names picks them up itself.
        let own_glob = self
            .spec
            .entry
            .is_glob()
            .then(|| glob::Pattern::new(&self.spec.entry.path).ok())
            .flatten();
        let cutoff = since - Duration::from_secs(1);
        let reg = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<(std::time::SystemTime, Missed)> = rd
            .take(10_000)
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name == base || !name.starts_with(base) {
                    return None;
                }
                let m = e.metadata().ok()?;
                let id = FileId {
                    dev: m.dev(),
                    ino: m.ino(),
                };
                let p = e.path();
                let mtime = m.modified().ok()?;
                let fresh = m.is_file()
                    && id != old
                    && id != current
                    && mtime >= cutoff
                    && reg.get(id).is_none()
                    && !self.copies.contains(&id)
                    && own_glob.as_ref().is_none_or(|g| !g.matches_path(&p));
                fresh.then_some((
                    mtime,
                    Missed {
                        path: p,
                        id,
                        size: m.len(),
                    },
                ))
            })
            .collect();
        drop(reg);
        found.retain(|(_, m)| !self.shared.is_live(m.id));
        found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.path.cmp(&b.1.path)));
        found.into_iter().map(|(_, m)| m).collect()
    }

    /// Opens a file from the backlog (rotated out before we looked) from its beginning.
    /// Renamed again meanwhile (`app.log.1` → `app.log.2`): found by its inode. Deleted:
    /// its size is counted as lost.
    fn open_rotated(&mut self, missed: &Missed) {
        let open = |p: &Path| {
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p)
                .ok()
                .filter(|f| {
                    f.metadata()
                        .is_ok_and(|m| m.dev() == missed.id.dev && m.ino() == missed.id.ino)
                })
        };
        let found = open(&missed.path)
            .map(|f| (f, missed.path.clone()))
            .or_else(|| {
                let dir = missed.path.parent()?;
                fs::read_dir(dir)
                    .ok()?
                    .take(10_000)
                    .flatten()
                    .filter(|e| e.metadata().is_ok_and(|m| m.ino() == missed.id.ino))
                    .find_map(|e| open(&e.path()).map(|f| (f, e.path())))
            });
        let Some((file, p)) = found else {
            self.lose_bytes(
                Loss::Deleted,
                0,
                missed.size,
                &format!(
                    "of rotated file {} were deleted before they could be read",
                    missed.path.display()
                ),
            );
            return;
        };
        let p = p.as_path();
        let (Ok(m), Ok(head)) = (file.metadata(), read_head(&file)) else {
            return;
        };
        let id = FileId {
            dev: m.dev(),
            ino: m.ino(),
        };
        let generation = self.next_generation();
        {
            let mut reg = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            reg.commit(id, generation, &self.spec.path, Fingerprint::default(), 0);
        }
        info!(
            "{}: reading rotated file {} from the beginning",
            self.spec.path,
            p.display()
        );
        let src = self.new_source(id, generation);
        if self.open_at(file, id, 0, &head, src).is_ok() {
            if let Some(of) = self.open.as_mut() {
                of.rotated = true;
            }
        }
    }

    /// Copies of the file as it was before a copytruncate: siblings named like it
    /// (`app.log.1`, `app.log-20261122`), other inodes, the same first bytes. Each
    /// opened, with its id, head and name.
    fn find_copies(
        &self,
        current: FileId,
        fp: Fingerprint,
    ) -> Vec<(File, FileId, Vec<u8>, String)> {
        let mut out = Vec::new();
        if fp.len == 0 {
            return out;
        }
        let path = Path::new(&self.spec.path);
        let (Some(base), Some(dir)) = (path.file_name().and_then(|b| b.to_str()), path.parent())
        else {
            return out;
        };
        let Ok(rd) = fs::read_dir(dir) else {
            return out;
        };
        for entry in rd.take(10_000).flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name == base || !name.starts_with(base) {
                continue;
            }
            let Ok(m) = entry.metadata() else {
                continue;
            };
            if !m.is_file() || m.ino() == current.ino {
                continue;
            }
            let Ok(f) = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(entry.path())
            else {
                continue;
            };
            let Ok(head) = read_head(&f) else {
                continue;
            };
            let n = fp.len as usize;
            if head.len() >= n && Fingerprint::of(&head[..n]) == fp {
                let id = FileId {
                    dev: m.dev(),
                    ino: m.ino(),
                };
                out.push((f, id, head, entry.path().display().to_string()));
            }
        }
        out
    }

    /// Compares the path with the open handle: same file ⇒ None; renamed away or deleted
    /// ⇒ drain the old handle, close it, and leave.
    fn check_path(&mut self) -> Option<Leave> {
        let path = self.spec.path.clone();
        let of = self.open.as_ref()?;
        let now_at_path = match fs::metadata(&path) {
            Ok(m) => Some(FileId {
                dev: m.dev(),
                ino: m.ino(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(_) => return None, // cannot tell; keep reading what we have
        };
        if now_at_path == Some(of.id) {
            return None;
        }
        // Rotated or deleted. Writers that still hold the old file may add a few lines:
        // wait one quiet poll interval, then read the old handle to its very end.
        if !of.rotated && self.sleep(self.shared.poll_interval) {
            return Some(Leave::Stopped);
        }
        // (Rewritten after it was rotated away, `Ok(None)`: what was read is handed on.)
        while let Ok(Some(n)) = self.read_some() {
            if n == 0 {
                break;
            }
            if !self.ship_lines(false) {
                return Some(Leave::Stopped);
            }
        }
        if !self.ship_lines(true) {
            return Some(Leave::Stopped);
        }
        let of = self.open.take()?;
        if let Some(new) = now_at_path {
            self.metrics.rotations.fetch_add(1, Ordering::Relaxed);
            let missed = self.missed_rotations(of.id, new, of.opened_at);
            self.queue_backlog(missed);
        }
        info!(
            "{path}: {} after {} bytes; {}",
            if now_at_path.is_some() {
                "rotated"
            } else {
                "deleted"
            },
            of.lines.read_offset(),
            if now_at_path.is_some() {
                "following the new file from the beginning"
            } else {
                "closed it, waiting for the path to reappear"
            }
        );
        drop(of); // closes the handle: a deleted file's blocks are freed now
        Some(Leave::Gone)
    }
}

/// After this long without new data a file is polled at twice `poll_interval`.
const DEEP_IDLE: Duration = Duration::from_secs(10);

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

/// The first ≤ [`FINGERPRINT_BYTES`] of a file, without moving its read position.
fn read_head(file: &File) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; FINGERPRINT_BYTES];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    Ok(head)
}
