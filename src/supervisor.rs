//! The supervisor: turns a wanted set of collect entries into running tailers.
//!
//! It does not care where the wanted set comes from (the static `collect:` list today,
//! etcd through the config thread tomorrow): [`Supervisor::apply`] diffs a new set against
//! what runs, stops what was removed, restarts what changed, starts what is new, and
//! [`Supervisor::rescan`] expands glob entries again to pick up files that appeared.
//! A stopped tailer's acknowledged offsets stay in the registry, so restarting one loses
//! nothing and sends nothing twice.
//!
//! At most `agent.max_files` tailers run: further files wait, in the order they were
//! found, and start as followed files end (deleted glob matches, removed entries). The
//! waiting set is published to the metrics (count and the first few paths) and said
//! once per change between "none waiting" and "some waiting".

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, error, info, warn};

use crate::collect::{AllowList, CollectEntry, StartFrom};
use crate::content::Rules;
use crate::registry::{FileId, Fingerprint, Proposal};
use crate::ship::WantedTopics;
use crate::tail::{self as tailer, TailShared, TailSpec, TailerHandle};

struct Running {
    entry: CollectEntry,
    handle: TailerHandle,
}

/// Owns the tailer threads.
pub struct Supervisor {
    shared: TailShared,
    topics: Arc<WantedTopics>,
    allowed: Option<Arc<AllowList>>,
    /// Each wanted entry's compiled content options, shared by its tailers.
    rules: HashMap<CollectEntry, Option<Arc<Rules>>>,
    /// A tailer thread could not be started (EAGAIN: out of threads or memory): the
    /// file waits and is tried again at the next rescan; said once per episode.
    spawn_failing: bool,
    /// `agent.allowed_paths` when the list is static (see [`Supervisor::set_static_allowed`]).
    static_allowed: Option<Vec<String>>,
    wanted: Vec<CollectEntry>,
    running: HashMap<String, Running>,
    /// Files found beyond `max_files` (or whose thread could not start), oldest
    /// first: (path, entry, appeared); `waiting_paths` indexes it (10,000 waiting
    /// files must not cost a scan each).
    waiting: VecDeque<(String, CollectEntry, bool)>,
    waiting_paths: HashSet<String>,
    max_files: usize,
    /// When the globs were last expanded in full (wall clock, to compare with
    /// directory mtimes, and monotonic): a rescan skips the expansion while no glob's
    /// directory changed since (see [`Supervisor::globs_quiet`]).
    expanded: Option<(SystemTime, Instant)>,
    /// Paths named by two entries, warned about since the last [`Supervisor::apply`]:
    /// a rescan every `glob_interval_ms` finds them again, the config did not change.
    warned_twice_named: HashSet<String>,
    /// Globs whose expansion hit [`crate::expand::MAX_VISITS`] (warned once each).
    warned_truncated: HashSet<String>,
}

/// Longest a glob goes without a full expansion (see `Supervisor::globs_quiet`).
const FULL_RESCAN: Duration = Duration::from_secs(60);
/// How much older than the last expansion a glob directory's mtime must be to skip.
const MTIME_MARGIN: Duration = Duration::from_secs(2);

/// How many waiting paths the metrics and the status document name.
const WAITING_SHOWN: usize = 5;

impl Supervisor {
    /// A supervisor with nothing running yet; it publishes the topics its entries name
    /// to `topics` (the producer checks that they exist).
    pub fn new(shared: TailShared, topics: Arc<WantedTopics>) -> Supervisor {
        Supervisor {
            shared,
            topics,
            allowed: None,
            static_allowed: None,
            wanted: Vec::new(),
            running: HashMap::new(),
            waiting: VecDeque::new(),
            waiting_paths: HashSet::new(),
            rules: HashMap::new(),
            spawn_failing: false,
            max_files: usize::MAX,
            expanded: None,
            warned_twice_named: HashSet::new(),
            warned_truncated: HashSet::new(),
        }
    }

    /// Follows at most `n` files at once (`agent.max_files`).
    pub fn set_max_files(&mut self, n: usize) {
        self.max_files = n.max(1);
    }

    /// Starts waiting files while there is room, drops those no longer wanted, and
    /// publishes the waiting set.
    fn start_waiting(&mut self, desired: &BTreeMap<String, CollectEntry>) {
        let before = self.waiting.len();
        self.retain_waiting(|p, e| desired.get(p) == Some(e));
        // Each waiting file is tried once per call: one whose thread cannot start goes
        // back to the end of the queue, and the rest wait for the next rescan.
        let mut tries = self.waiting.len();
        let failing = self.spawn_failing;
        while tries > 0 && self.running.len() < self.max_files {
            let Some((path, entry, appeared)) = self.waiting.pop_front() else {
                break;
            };
            tries -= 1;
            self.waiting_paths.remove(&path);
            if !failing {
                info!("{path}: a followed file ended; following this waiting file now");
            }
            self.start(path, entry, appeared);
            if self.spawn_failing {
                break;
            }
        }
        self.publish_waiting(before);
    }

    /// Keeps the waiting files that `keep` (path, entry) and that are not running.
    fn retain_waiting(&mut self, keep: impl Fn(&String, &CollectEntry) -> bool) {
        let running = &self.running;
        let paths = &mut self.waiting_paths;
        self.waiting.retain(|(p, e, _)| {
            let k = keep(p, e) && !running.contains_key(p);
            if !k {
                paths.remove(p);
            }
            k
        });
    }

    /// Queues `path` to start later (once).
    fn wait(&mut self, path: String, entry: CollectEntry, appeared: bool) {
        if self.waiting_paths.insert(path.clone()) {
            self.waiting.push_back((path, entry, appeared));
        }
    }

    fn publish_waiting(&self, before: usize) {
        let n = self.waiting.len();
        let shown: Vec<String> = self
            .waiting
            .iter()
            .take(WAITING_SHOWN)
            .map(|(p, ..)| p.clone())
            .collect();
        self.shared
            .metrics
            .files_waiting
            .store(n as u64, Ordering::Relaxed);
        if let Ok(mut w) = self.shared.metrics.waiting_sample.lock() {
            *w = shown.clone();
        }
        if before == 0 && n > 0 {
            error!(
                "agent.max_files ({}) reached: {n} more files are not followed (first: {}); they start as followed files end. Raise agent.max_files (each file is one thread and one or two descriptors)",
                self.max_files,
                shown.join(", ")
            );
        } else if before > 0 && n == 0 {
            info!(
                "every matching file is followed again (below agent.max_files {})",
                self.max_files
            );
        } else if n != before {
            debug!("{n} files wait for room under agent.max_files");
        }
    }

    /// Makes every tailer check the real path (symlinks resolved) of its file against
    /// `allowed` (for entries that come from the central config).
    pub fn set_allowed(&mut self, allowed: AllowList) {
        self.allowed = Some(Arc::new(allowed));
    }

    /// For a static `collect:` list: every tailer checks the real path of its file
    /// against `base` (`agent.allowed_paths`) and the list's own paths, so a symlink
    /// planted at a listed path cannot lead anywhere else.
    pub fn set_static_allowed(&mut self, base: Vec<String>) {
        self.static_allowed = Some(base);
    }

    /// Paths followed right now.
    pub fn running_paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self.running.keys().cloned().collect();
        v.sort();
        v
    }

    /// (path, topic) of every file followed right now.
    pub fn running(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .running
            .iter()
            .map(|(p, r)| (p.clone(), r.entry.topic.clone()))
            .collect();
        v.sort();
        v
    }

    /// Makes the running tailers match `wanted`.
    pub fn apply(&mut self, wanted: Vec<CollectEntry>) {
        self.wanted = wanted;
        if let Some(base) = &self.static_allowed {
            self.allowed = Some(Arc::new(AllowList::for_static(base, &self.wanted)));
        }
        let wanted: HashSet<&CollectEntry> = self.wanted.iter().collect();
        self.rules.retain(|e, _| wanted.contains(e));
        // A new entry list: say again which of its paths two entries name.
        self.warned_twice_named.clear();
        let mut topics: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in &self.wanted {
            topics
                .entry(e.topic.clone())
                .or_default()
                .push(e.path.clone());
        }
        self.topics.set(topics);
        self.expanded = Some((SystemTime::now(), Instant::now()));
        let desired = self.expand();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(path, r)| desired.get(*path).is_none_or(|e| *e != r.entry))
            .map(|(path, _)| path.clone())
            .collect();
        // Stop all first, then join: tailers wind down in parallel.
        let stopping: Vec<(String, Running)> = stale
            .into_iter()
            .filter_map(|p| self.running.remove(&p).map(|r| (p, r)))
            .collect();
        for (_, r) in &stopping {
            r.handle.stop();
        }
        for (path, r) in stopping {
            r.handle.join();
            if desired.contains_key(&path) {
                info!("{path}: settings changed, restarting its tailer at its last offset");
            } else {
                info!("{path}: no longer collected");
            }
        }
        // A collect path followed before (by an earlier run, or before its etcd key
        // was deleted and re-created): files new under it appeared while it was not
        // followed and are read from 0; `from: end` is only for paths never followed.
        let known: HashSet<String> = {
            let reg = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.wanted
                .iter()
                .filter(|e| reg.pattern_known(&e.path))
                .map(|e| e.path.clone())
                .collect()
        };
        self.fix_start_positions(&desired, &known);
        let before = self.waiting.len();
        self.retain_waiting(|p, e| desired.get(p) == Some(e));
        for (path, entry) in &desired {
            if !self.running.contains_key(path) {
                let appeared = known.contains(&entry.path);
                self.start(path.clone(), entry.clone(), appeared);
            }
        }
        self.publish_waiting(before);
    }

    /// Paths never followed: records where each file starts (its end for `from: end`,
    /// 0 for `from: beginning`) in the ledger and writes the ledger to disk before any
    /// tailer starts, with the collect paths marked as followed. A SIGKILL a moment
    /// later must not make the next start take the (later) end again and skip what was
    /// written in between, nor forget a file rotated away meanwhile. One write per
    /// config change, however many files.
    fn fix_start_positions(
        &self,
        desired: &BTreeMap<String, CollectEntry>,
        known: &HashSet<String>,
    ) {
        // Which paths need a start position: decided under the registry lock, but the
        // files are looked at (stat, open, read) with the lock released: a hung mount
        // must hold up only this config change, never every tailer and the producer.
        let candidates: Vec<(&String, &CollectEntry)> = {
            let reg = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            desired
                .iter()
                .filter(|(path, entry)| {
                    !(self.running.contains_key(*path)
                        || known.contains(&entry.path)
                        || reg.path_known(path))
                })
                .collect()
        };
        let mut probed = Vec::with_capacity(candidates.len());
        for (path, entry) in candidates {
            // Only regular files the tailer may read, checked before they are opened: a
            // FIFO or device named by an entry (or swapped in) must not be opened, nor
            // a file outside the allow-list read (its tailer says what is wrong).
            let Some(f) = open_allowed(path, self.allowed.as_deref()) else {
                continue; // not there yet: read from its beginning when it appears
            };
            let (Ok(m), Ok(head)) = (f.metadata(), crate::identity::read_head(&f)) else {
                continue;
            };
            // The end of the last complete line: a line half written at this moment is
            // shipped whole once its newline comes, never as a fragment. `from:
            // beginning`: offset 0, on disk before the tailer reads a byte (killed before
            // the first checkpoint, with the file rotated meanwhile, the restart would
            // otherwise know nothing of it and never read the renamed file).
            let from_end = entry.from == StartFrom::End;
            let size = if from_end {
                end_of_last_line(&f, m.len())
            } else {
                0
            };
            probed.push((path, entry, m, head, from_end, size));
        }
        let mut reg = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut starts = Vec::new();
        for (path, entry, m, head, from_end, size) in probed {
            let id = FileId::of(&m);
            if reg.get(id).is_some() {
                continue;
            }
            starts.push(id);
            // The whole head, also past the start: a restart after a truncation (or
            // copytruncate) while the agent was down must see other first bytes and
            // look for the copy, not resume at the offset in the new content.
            let fp = Fingerprint::of(&head);
            let generation = self.shared.next_source_id.fetch_add(1, Ordering::Relaxed);
            reg.propose(Proposal::Start {
                id,
                generation,
                path,
                fingerprint: fp,
                offset: size,
                empty_mtime_ns: crate::identity::mtime_ns(&m),
            });
            reg.propose(Proposal::Born {
                id,
                born: crate::identity::born(&m),
            });
            info!(
                "{path}: following from {} (offset {size} of {}) into topic {}",
                if from_end { "its end" } else { "the beginning" },
                m.len(),
                entry.topic
            );
        }
        reg.propose(Proposal::Followed {
            paths: self.wanted.iter().map(|e| e.path.as_str()).collect(),
            now: crate::registry::unix_now(),
        });
        if let Err(e) = reg.save_starts(&starts) {
            error!("{e}; start positions are not on disk yet");
        }
    }

    /// Records the wanted collect paths in the ledger as followed.
    fn note_patterns(&self) {
        let mut reg = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        reg.propose(Proposal::Followed {
            paths: self.wanted.iter().map(|e| e.path.as_str()).collect(),
            now: crate::registry::unix_now(),
        });
    }

    /// Expands globs again: starts tailers for new matches (read from their beginning),
    /// forgets tailers that ended because their file disappeared.
    pub fn rescan(&mut self) {
        let ended = self.running.len();
        self.running.retain(|_, r| !r.handle.is_finished());
        let ended = ended - self.running.len();
        if !self.wanted.iter().any(CollectEntry::is_glob) {
            if ended > 0 || !self.waiting.is_empty() {
                let desired = self.expand();
                self.start_waiting(&desired);
            }
            return;
        }
        if ended == 0 && self.waiting.is_empty() && self.globs_quiet() {
            return;
        }
        self.expanded = Some((SystemTime::now(), Instant::now()));
        let desired = self.expand();
        self.start_waiting(&desired);
        let before = self.waiting.len();
        for (path, entry) in desired {
            if !self.running.contains_key(&path) {
                self.start(path, entry, true);
            }
        }
        self.publish_waiting(before);
        self.note_patterns();
    }

    /// Whether no glob can have a new match since the last full expansion: each glob's
    /// wildcards are in its last component only, and its directory was last modified
    /// (a name created, renamed in or removed) well before that expansion began. Every
    /// `FULL_RESCAN` the globs are expanded anyway. Expanding a glob over 10,000 files
    /// every `glob_interval_ms` (a directory read and a stat per match) was most of an
    /// idle agent's CPU.
    fn globs_quiet(&self) -> bool {
        let Some((wall, at)) = self.expanded else {
            return false;
        };
        if at.elapsed() >= FULL_RESCAN {
            return false;
        }
        self.wanted.iter().filter(|e| e.is_glob()).all(|e| {
            let Some(dir) = Path::new(&e.path).parent() else {
                return false;
            };
            let literal = !dir.to_string_lossy().contains(['*', '?', '[', ']', '{']);
            // The directory's mtime has the file system's (coarse) clock: only one
            // older than the expansion by a margin proves the expansion saw the change.
            literal
                && std::fs::metadata(dir)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t + MTIME_MARGIN < wall)
        })
    }

    /// Stops every tailer and waits for them.
    pub fn shutdown(&mut self) {
        self.shutdown_within(Duration::MAX);
    }

    /// [`Supervisor::shutdown`], waiting at most `within` for the tailers: one stuck in
    /// the kernel (a stat or read of a hung NFS mount) is named and left behind; the
    /// process ends without it (what it read is not acknowledged: read again after the
    /// restart).
    pub fn shutdown_within(&mut self, within: Duration) {
        for r in self.running.values() {
            r.handle.stop();
        }
        let deadline = Instant::now().checked_add(within);
        let all_done =
            |running: &HashMap<String, Running>| running.values().all(|r| r.handle.is_finished());
        while !all_done(&self.running) && deadline.is_none_or(|d| Instant::now() < d) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (path, r) in self.running.drain() {
            if r.handle.is_finished() {
                r.handle.join();
            } else {
                warn!("{path}: its tailer did not stop within {} ms (stuck in a stat or read of a hung file system?); not waited for", within.as_millis());
            }
        }
    }

    /// Concrete path → the entry it belongs to. The first entry naming a path wins.
    fn expand(&mut self) -> BTreeMap<String, CollectEntry> {
        let mut out = BTreeMap::new();
        for e in &self.wanted {
            let paths: Vec<String> = if e.is_glob() {
                match crate::expand::expand(&e.path, crate::expand::MAX_VISITS) {
                    Ok(found) => {
                        if found.truncated && self.warned_truncated.insert(e.path.clone()) {
                            warn!(
                                "{}: stopped expanding after looking at {} directory entries (a huge tree, or symlinks to directories above it?); files beyond are not followed; narrow the glob",
                                e.path,
                                crate::expand::MAX_VISITS
                            );
                        }
                        found
                            .files
                            .into_iter()
                            .filter_map(|p| p.to_str().map(str::to_owned))
                            .collect()
                    }
                    Err(err) => {
                        error!("{}: bad glob: {err}", e.path);
                        continue;
                    }
                }
            } else {
                vec![e.path.clone()]
            };
            for p in paths {
                if let Some(prev) = out.get(&p) {
                    if prev != e && self.warned_twice_named.insert(p.clone()) {
                        warn!(
                            "{p}: named by two collect entries; using the first (topic {})",
                            e.topic
                        );
                    }
                    continue;
                }
                out.insert(p, e.clone());
            }
        }
        // Said again if such a path comes back; not kept for paths long gone (a glob
        // over files that come and go would grow this without bound).
        self.warned_twice_named.retain(|p| out.contains_key(p));
        out
    }

    fn start(&mut self, path: String, entry: CollectEntry, appeared: bool) {
        if self.running.len() >= self.max_files {
            self.wait(path, entry, appeared);
            return;
        }
        if entry.is_glob() {
            use std::os::unix::fs::MetadataExt;
            if let Ok(m) = std::fs::metadata(&path) {
                let id = FileId {
                    dev: m.dev(),
                    ino: m.ino(),
                };
                let compressed = open_allowed(&path, self.allowed.as_deref())
                    .and_then(|f| crate::identity::read_head(&f).ok())
                    .is_some_and(|h| crate::identity::Compression::of(&h).is_some());
                if compressed {
                    // `app.log*` matches `app.log.2.gz`: never shipped as text (a rotation
                    // compressed before it was read is recovered by its own path's tailer).
                    debug!("{path}: compressed; not following it");
                    return;
                }
                if self.shared.is_live(id) {
                    // Read under another name right now (a rotated file that still
                    // drains, say): look again at the next rescan.
                    debug!("{path}: already being read under another name; not starting a second reader yet");
                    return;
                }
            }
        }
        if appeared && entry.is_glob() {
            info!("{path}: new file matches {}", entry.path);
        }
        let spec = TailSpec {
            path: path.clone(),
            exit_when_gone: entry.is_glob(),
            from_start: appeared,
            rules: self.rules_for(&entry),
            entry: entry.clone(),
            allowed: self.allowed.clone(),
        };
        match tailer::spawn(spec, self.shared.clone()) {
            Ok(handle) => {
                if self.spawn_failing {
                    self.spawn_failing = false;
                    info!("{path}: tailer threads start again");
                }
                self.running.insert(path, Running { entry, handle });
            }
            Err(e) => {
                if !self.spawn_failing {
                    error!(
                        "{path}: cannot start a tailer thread: {e}; it waits and is tried again at each rescan, with every file that cannot start meanwhile (check the unit's TasksMax and the memory limit against agent.max_files)"
                    );
                }
                self.spawn_failing = true;
                self.wait(path, entry, appeared);
            }
        }
    }

    /// `entry`'s compiled content options (compiled at its first tailer, shared by the
    /// others). Validation compiled them already: an error here cannot happen, and
    /// would only mean lines go out as read.
    fn rules_for(&mut self, entry: &CollectEntry) -> Option<Arc<Rules>> {
        if let Some(r) = self.rules.get(entry) {
            return r.clone();
        }
        let r = Rules::for_entry(entry, &self.shared.hostname, self.shared.max_line_bytes)
            .unwrap_or_else(|e| {
                error!("{}: {e}; shipping its lines as read", entry.path);
                None
            })
            .map(Arc::new);
        self.rules.insert(entry.clone(), r.clone());
        r
    }
}

/// `path` opened for reading if it is a regular file whose real path `allowed` allows
/// (checked before the open, see [`crate::tail::access::Resolved`]); `None` otherwise.
fn open_allowed(path: &str, allowed: Option<&AllowList>) -> Option<std::fs::File> {
    let found = crate::tail::access::resolve(Path::new(path), true).ok()?;
    if !found.meta.is_file() {
        return None;
    }
    if let Some(list) = allowed {
        let real = found.real_path().ok()?;
        list.check(real.to_str()?).ok()?;
    }
    found.open().ok()
}

/// Offset just past the last newline in the final 64 KiB of a `len`-byte file; `len`
/// when there is none there (one line longer than that is cut where it is).
fn end_of_last_line(f: &std::fs::File, len: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let window = len.min(64 * 1024);
    let mut buf = vec![0u8; window as usize];
    let start = len - window;
    match f.read_exact_at(&mut buf, start) {
        Ok(()) => memchr::memrchr(b'\n', &buf).map_or(len, |i| start + i as u64 + 1),
        Err(_) => len,
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::end_of_last_line;

    #[test]
    fn from_end_starts_after_the_last_complete_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        for (content, want) in [
            (&b""[..], 0),
            (b"one\ntwo\n", 8),
            (b"one\ntw", 4),
            (b"no newline at all", 17),
        ] {
            std::fs::write(&p, content).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            assert_eq!(
                end_of_last_line(&f, content.len() as u64),
                want,
                "{content:?}"
            );
        }
    }
}
