//! The ledger of every file the agent still owes bytes to, persisted in
//! `data_dir/registry.json`: per file identity (device, inode, fingerprint of the first
//! bytes) the collect path it belongs to, the offset up to which Kafka acknowledged every
//! line, its state (live, rotated away, copytruncate copy being recovered), where it was
//! last seen and the largest size seen; plus every collect path (plain or glob) followed.
//!
//! Tailers and the supervisor change it only through one typed path, [`Proposal`]
//! (where a file starts, that it was rotated, that a copy is being read, …), applied by
//! [`Registry::propose`]; acknowledgements (the producer's checkpoint) move offsets with
//! [`Registry::commit`]; the checkpoint writes it to disk (and the supervisor, once per
//! config change, the start positions it proposed). A rotated file or a copy stays here until
//! it is gone or pruned, so a restart resumes whatever is unread. Writes are atomic (temp
//! file, fsync, rename, directory fsync): after a crash the file holds either the previous
//! checkpoint or the new one, never a torn mix, and never an offset that Kafka had not
//! acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::identity::{FileId, Fingerprint, FINGERPRINT_BYTES};

/// Where a file the agent owes bytes to stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// At its path, followed.
    #[default]
    Live,
    /// Renamed away (rotated): read until quiet, resumed after a restart until all of
    /// it is acknowledged.
    Rotated,
    /// A copytruncate copy whose unread part is being recovered.
    Copy,
}

/// What a tailer or the supervisor tells the ledger: the one typed way in for everything
/// but acknowledgements (the checkpoint's [`Registry::commit`]), deletions acknowledged
/// (the producer's [`Registry::forget_deleted`]) and the retention prune. Each variant is
/// one thing that happened to a file; [`Registry::propose`] applies it.
// The variants' docs name their fields.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal<'a> {
    /// A file is read by `generation` from `offset` under the collect path `path`; its
    /// first bytes are `fingerprint` (while it is empty, `empty_mtime_ns` tells a later
    /// write). Offsets of an older generation no longer move it.
    Start {
        id: FileId,
        generation: u64,
        path: &'a str,
        fingerprint: Fingerprint,
        offset: u64,
        empty_mtime_ns: Option<u64>,
    },
    /// Its birth time (once; see [`Checkpoint::same_file`]).
    Born { id: FileId, born: Option<u64> },
    /// Truncated: read again from 0 by `generation`, holding `head` and `size` bytes now
    /// (what a later loss of it counts).
    ReadAgain {
        id: FileId,
        generation: u64,
        path: &'a str,
        head: Fingerprint,
        size: u64,
    },
    /// `copy` (found as `name`, `size` bytes) holds what `generation` of `original` had
    /// not read when it was truncated: read from `offset`, what Kafka had acknowledged of
    /// the original; late acknowledgements of that generation move the copy's offset.
    Copy {
        copy: FileId,
        generation: u64,
        path: &'a str,
        fingerprint: Fingerprint,
        offset: u64,
        name: &'a str,
        size: u64,
        born: Option<u64>,
        original: FileId,
        original_generation: u64,
    },
    /// A file owed from before, found again as `name` (`size` bytes, in `state`), read on
    /// from `offset` by `generation`.
    Reopened {
        id: FileId,
        generation: u64,
        path: &'a str,
        fingerprint: Fingerprint,
        offset: u64,
        state: FileState,
        name: &'a str,
        size: u64,
        born: Option<u64>,
    },
    /// A compressed copy (`name`) read through gzip from `offset` (decompressed bytes).
    GzipRead {
        id: FileId,
        generation: u64,
        path: &'a str,
        fingerprint: Fingerprint,
        offset: u64,
        name: &'a str,
    },
    /// Now in `state` (rotated away, a copy), last seen as `name` (if given), `size`
    /// bytes (the largest seen is kept).
    State {
        id: FileId,
        state: FileState,
        name: Option<&'a str>,
        size: u64,
    },
    /// Its first bytes grew (a short file): `fingerprint` now.
    Head {
        id: FileId,
        fingerprint: Fingerprint,
    },
    /// Seen with `size` bytes (the largest seen is kept, for loss accounting).
    Size { id: FileId, size: u64 },
    /// Truncated at `at` (Unix seconds) with its copy read first; `size` bytes then.
    TruncationMarked { id: FileId, at: u64, size: u64 },
    /// Back at the truncated file after its copy: the mark goes.
    TruncationDone { id: FileId },
    /// Its inode holds another file now: the entry goes.
    Forget { id: FileId },
    /// These collect paths (plain or glob) are followed at `now`.
    Followed { paths: Vec<&'a str>, now: u64 },
}

/// One file's acknowledged position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The path the file was last read under (for people; identity is `id`).
    pub path: String,
    /// Device and inode.
    pub id: FileId,
    /// Fingerprint of the head when the offset was committed.
    pub fingerprint: Fingerprint,
    /// Every line ending at or before this byte offset is acknowledged by Kafka.
    pub offset: u64,
    /// Unix seconds of the last commit or sighting (for pruning).
    pub updated: u64,
    /// Live, rotated away, or a copy being recovered.
    #[serde(default)]
    pub state: FileState,
    /// Where a rotated file or copy was last seen (its new name), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The largest size seen of a rotated file or copy: what is lost if it disappears
    /// before it was read to the end.
    #[serde(default)]
    pub size: u64,
    /// The file's birth time, where the file system has one ([`crate::identity::born`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born: Option<u64>,
    /// Unix seconds of a truncation whose copy is being read first: until the file is
    /// read again, a copy made after this may hold what it had (a restart looks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_at: Option<u64>,
    /// Recorded while the file was empty: its mtime then (ns since the epoch). An empty
    /// fingerprint matches any content; another mtime at the next start says the file
    /// was written (and maybe copied and truncated) meanwhile, and files rotated out of
    /// its path after this moment are looked for. Cleared by a commit with bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_mtime_ns: Option<u64>,
}

impl Checkpoint {
    /// Whether a file born at `born` whose first bytes are `head` is the file this
    /// checkpoint was taken of (an unknown birth time on either side does not decide).
    pub fn same_file(&self, born: Option<u64>, head: &[u8]) -> bool {
        let born_ok = match (self.born, born) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        born_ok && self.fingerprint.matches(head)
    }
}

/// Why the registry could not be loaded or saved.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// Creating `data_dir`, or reading/writing the registry file failed.
    #[error("registry {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// `data_dir` cannot be created, or a file in it cannot be written, synced, renamed
    /// or removed (found by [`probe_writable`] at start).
    #[error("data_dir {path} is not writable: {source}")]
    NotWritable {
        /// The data directory.
        path: PathBuf,
        /// The first OS error of the probe.
        source: std::io::Error,
    },
    /// Written by a newer agent, in a format this one does not know.
    #[error("registry {path} was written by a newer logagent (format {version}; this one reads up to {FORMAT}): run the newer version, or move the data_dir aside to start over (files are then read as their `from:` says)")]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its format.
        version: u32,
    },
    /// The registry file exists but is not valid JSON of the expected shape, and no
    /// good previous one is beside it.
    #[error("registry {path} is corrupt, and so is (or there is no) registry.json.prev beside it: {message}; move both aside to start over (files are then read as their `from:` says)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
}

/// The registry format this agent writes and reads; a newer one is refused (its
/// fields would be dropped silently at the next save).
pub const FORMAT: u32 = 2;

/// Where [`Registry::open`] found the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `registry.json`.
    File,
    /// Neither it nor the previous one: a first start (or a wiped data_dir).
    Missing,
    /// `registry.json.prev`, the one before the last save, because of `why`.
    Previous {
        /// What was wrong with `registry.json`.
        why: String,
    },
}

/// `registry.json.prev` beside `path`.
fn prev_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".prev");
    path.with_file_name(name)
}

/// Keeps `path` (the registry about to be replaced) as `registry.json.prev`: a second
/// name (a hard link, no copy), or a synced copy where the file system has no hard
/// links. If neither can be made, a `.prev` left from before is removed: falling back
/// to a registry many saves old would take paths followed since for new ones (`from:
/// end`, lines skipped), and resend everything read since.
fn keep_previous(path: &Path) {
    let prev = prev_path(path);
    let tmp = crate::datadir::temp_for(&prev);
    let made = fs::hard_link(path, &tmp)
        .or_else(|_| {
            let _ = fs::remove_file(&tmp);
            fs::copy(path, &tmp).and_then(|_| File::open(&tmp).and_then(|f| f.sync_all()))
        })
        .and_then(|()| fs::rename(&tmp, &prev));
    if made.is_err() {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&prev);
    }
}

#[derive(Deserialize)]
struct Version {
    version: u32,
}

/// `None`: no such file; `Some(Err)`: not a registry (the parser's message); a
/// registry of a newer format is an error of its own.
fn read_disk(path: &Path) -> Result<Option<Result<OnDisk, String>>, RegistryError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RegistryError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    parse_disk(path, &bytes).map(Some)
}

/// The bytes of a registry file at `path`: `Err` inside for one that does not parse
/// (the parser's message); a registry of a newer format is an error of its own.
fn parse_disk(path: &Path, bytes: &[u8]) -> Result<Result<OnDisk, String>, RegistryError> {
    if let Ok(Version { version }) = serde_json::from_slice::<Version>(bytes) {
        if version > FORMAT {
            return Err(RegistryError::Newer {
                path: path.to_owned(),
                version,
            });
        }
    }
    Ok(serde_json::from_slice::<OnDisk>(bytes).map_err(|e| e.to_string()))
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    files: Vec<Checkpoint>,
    /// Collect paths (plain or glob) followed before, with the Unix second last seen.
    #[serde(default)]
    patterns: BTreeMap<String, u64>,
    /// The transactional id whose offsets topic these entries mirror (written after an
    /// `exactly_once` commit); absent when `at_least_once` (or an older version) wrote
    /// them: then they are newer than what the offsets topic holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transactional_id: Option<String>,
}

/// In-memory registry plus its file.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    entries: HashMap<FileId, Checkpoint>,
    /// Newest reading generation (source id) that committed per file, in this process.
    /// A truncated file is read again as a new generation; late acknowledgements of the
    /// old one must not move the offset back up.
    generations: HashMap<FileId, u64>,
    /// Collect paths followed before: a new file under one of them is read from 0.
    patterns: BTreeMap<String, u64>,
    /// Late acknowledgements of a truncated generation credit its copy instead: (file,
    /// generation) → the copytruncate copy that holds those bytes now.
    redirects: HashMap<(FileId, u64), FileId>,
    /// The files of `entries` by path: a tailer's start and `path_known` look a path up
    /// without scanning every entry (10,000 files starting at once would be quadratic).
    by_path: HashMap<String, Vec<FileId>>,
    dirty: bool,
    /// Where [`Registry::open`] found the entries; `File` once a save wrote ours (only a
    /// file in that state is kept as `registry.json.prev` at the next save).
    origin: Origin,
    /// A file new to the ledger (or a truncation mark) is not on disk yet: the
    /// producer writes it at its next turn instead of the next checkpoint.
    urgent: bool,
    /// Saves skipped (`kafka.delivery: exactly_once`, while a transaction carrying the
    /// offsets in memory is being committed: the disk never holds an offset Kafka has
    /// not committed).
    saves_held: bool,
    /// See `OnDisk::transactional_id`.
    mirrors: Option<String>,
}

/// The order of the files in `registry.json`: by path, inode, then device (one path can
/// have the same inode on two devices, another file system mounted there since); never
/// the hash map's (the fuzz target `registry_json` found that).
fn sort_files(files: &mut [Checkpoint]) {
    files.sort_by(|a, b| (&a.path, a.id.ino, a.id.dev).cmp(&(&b.path, b.id.ino, b.id.dev)));
}

/// An entry not committed to for the retention: forgotten once its file is known gone
/// (see [`Registry::expired`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// Its identity.
    pub id: FileId,
    /// Its last commit or sighting when it was listed.
    pub updated: u64,
    /// Where it may still be: its path, and the name it was last seen by.
    pub names: Vec<String>,
}

impl Expired {
    /// Whether the file is still under one of its names (same device and inode). A
    /// file that still exists is kept however idle it is: forgetting it would make a
    /// restart read it again. Stats files: never under the registry lock.
    pub fn on_disk(&self) -> bool {
        self.names
            .iter()
            .any(|p| fs::metadata(p).is_ok_and(|m| FileId::of(&m) == self.id))
    }
}

/// Removes `id` from the index entry of `path` (and the entry once empty).
fn unindex(by_path: &mut HashMap<String, Vec<FileId>>, path: &str, id: FileId) {
    if let Some(ids) = by_path.get_mut(path) {
        ids.retain(|i| *i != id);
        if ids.is_empty() {
            by_path.remove(path);
        }
    }
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks that `data_dir` takes a checkpoint: creates it if missing, then does with a
/// probe file what [`Registry::save`] does with the registry (create, write, fsync,
/// rename, fsync the directory) and removes it.
///
/// Run at start, before any thread: an agent that cannot checkpoint would ship for
/// hours and then re-ship all of it after the next restart, and the first sign of it
/// would be one error line per checkpoint interval. A read-only mount, a wrong owner or
/// a full disk is found here instead, as one message and exit 1.
pub fn probe_writable(data_dir: &Path) -> Result<(), RegistryError> {
    let fail = |source| RegistryError::NotWritable {
        path: data_dir.to_owned(),
        source,
    };
    fs::create_dir_all(data_dir).map_err(fail)?;
    let tmp = crate::datadir::temp_for(&data_dir.join(".write-probe"));
    let probe = crate::datadir::temp_for(&data_dir.join(".write-probe"));
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(b"logagent checks that data_dir is writable\n")?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &probe));
    if let Err(source) = written {
        // Best effort: a half-made probe file must not stay behind (it may not exist).
        let _ = fs::remove_file(&tmp);
        return Err(fail(source));
    }
    let synced = File::open(data_dir).and_then(|d| d.sync_all());
    let removed = fs::remove_file(&probe);
    synced.and(removed).map_err(fail)
}

impl Registry {
    /// Opens (creating `data_dir` if needed) and loads `data_dir/registry.json`.
    ///
    /// A corrupt registry is an error rather than silently empty: starting over would
    /// re-ship or skip whole files, and the operator should decide.
    pub fn open(data_dir: &Path) -> Result<Registry, RegistryError> {
        fs::create_dir_all(data_dir).map_err(|source| RegistryError::Io {
            path: data_dir.to_owned(),
            source,
        })?;
        let mut reg = Registry::empty(data_dir.join("registry.json"));
        let prev = prev_path(&reg.path);
        let (disk, origin) = match read_disk(&reg.path)? {
            Some(Ok(disk)) => (Some(disk), Origin::File),
            // A file that cannot be read as a registry at all: the previous good one
            // (one save older: some lines may be shipped again, none skipped).
            Some(Err(message)) => match read_disk(&prev)? {
                Some(Ok(disk)) => (
                    Some(disk),
                    Origin::Previous {
                        why: format!("{} is corrupt: {message}", reg.path.display()),
                    },
                ),
                _ => {
                    return Err(RegistryError::Corrupt {
                        path: reg.path.clone(),
                        message,
                    })
                }
            },
            // Deleted (by hand, or a wiped directory) while the previous one is there.
            None => match read_disk(&prev)? {
                Some(Ok(disk)) => (
                    Some(disk),
                    Origin::Previous {
                        why: format!("{} is missing", reg.path.display()),
                    },
                ),
                _ => (None, Origin::Missing),
            },
        };
        if let Some(disk) = disk {
            reg.fill(disk);
        }
        if matches!(origin, Origin::Previous { .. }) {
            // On disk at once: the next start must not depend on the fallback again.
            reg.dirty = true;
        }
        reg.origin = origin;
        Ok(reg)
    }

    /// Where the entries came from at [`Registry::open`].
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// A registry of the bytes of a `registry.json` (`path` names it in errors and is
    /// where [`Registry::save`] would write): what [`Registry::open`] does with the file,
    /// without touching the disk.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Registry, RegistryError> {
        let mut reg = Registry::empty(path.to_owned());
        reg.load(bytes)?;
        Ok(reg)
    }

    fn empty(path: PathBuf) -> Registry {
        Registry {
            path,
            entries: HashMap::new(),
            generations: HashMap::new(),
            patterns: BTreeMap::new(),
            redirects: HashMap::new(),
            by_path: HashMap::new(),
            dirty: false,
            origin: Origin::Missing,
            urgent: false,
            saves_held: false,
            mirrors: None,
        }
    }

    /// Every checkpoint.
    pub fn entries(&self) -> impl Iterator<Item = &Checkpoint> {
        self.entries.values()
    }

    /// Holds or releases saves (see `saves_held`): the producer holds them from moving
    /// acknowledged offsets in until their transaction is committed.
    pub fn hold_saves(&mut self, held: bool) {
        self.saves_held = held;
    }

    /// The transactional id whose offsets topic the entries mirror: set by an
    /// `exactly_once` commit, `None` once `at_least_once` runs (its offsets move past
    /// what the offsets topic holds).
    pub fn mirrors(&self) -> Option<&str> {
        self.mirrors.as_deref()
    }

    /// See [`Registry::mirrors`].
    pub fn set_mirrors(&mut self, id: Option<&str>) {
        if self.mirrors.as_deref() != id {
            self.mirrors = id.map(str::to_owned);
            self.dirty = true;
        }
    }

    /// `kafka.delivery: exactly_once` at start: the entries committed in the offsets
    /// topic win over the local ones (a cache, possibly older, or from before a crash);
    /// local entries the topic does not have stay (files started and never committed).
    /// Called once, before any thread reads the registry. Returns how many differed.
    pub fn adopt(&mut self, committed: Vec<Checkpoint>) -> usize {
        let mut differed = 0;
        for cp in committed {
            let same = self.entries.get(&cp.id).is_some_and(|c| {
                (c.offset, c.fingerprint, &c.path, c.state)
                    == (cp.offset, cp.fingerprint, &cp.path, cp.state)
            });
            if !same {
                differed += 1;
                self.entries.insert(cp.id, cp);
            }
        }
        if differed > 0 {
            self.reindex();
            self.dirty = true;
        }
        differed
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), RegistryError> {
        let disk = parse_disk(&self.path, bytes)?.map_err(|message| RegistryError::Corrupt {
            path: self.path.clone(),
            message,
        })?;
        self.fill(disk);
        self.origin = Origin::File;
        Ok(())
    }

    fn fill(&mut self, disk: OnDisk) {
        self.entries = disk.files.into_iter().map(|c| (c.id, c)).collect();
        self.patterns = disk.patterns;
        self.mirrors = disk.transactional_id;
        self.reindex();
    }

    /// The checkpoint recorded for this device and inode, if any. The caller still has
    /// to check the fingerprint and size: the inode may have been reused.
    pub fn get(&self, id: FileId) -> Option<&Checkpoint> {
        self.entries.get(&id)
    }

    /// Every checkpoint recorded under `path` (any inode), oldest first.
    pub fn entries_for_path(&self, path: &str) -> Vec<Checkpoint> {
        let mut v: Vec<Checkpoint> = self
            .by_path
            .get(path)
            .into_iter()
            .flatten()
            .filter_map(|id| self.entries.get(id))
            .cloned()
            .collect();
        v.sort_by_key(|c| (c.updated, c.id));
        v
    }

    /// Whether the agent followed `path` before (a checkpoint names it, or a collect
    /// entry with exactly this path was followed): then a new file there starts at 0.
    pub fn path_known(&self, path: &str) -> bool {
        self.patterns.contains_key(path) || self.by_path.contains_key(path)
    }

    /// Whether the collect path (plain or glob) `pattern` was followed before.
    pub fn pattern_known(&self, pattern: &str) -> bool {
        self.patterns.contains_key(pattern)
    }

    /// Applies what a tailer or the supervisor says happened (see [`Proposal`]).
    pub fn propose(&mut self, p: Proposal<'_>) {
        match p {
            Proposal::Start {
                id,
                generation,
                path,
                fingerprint,
                offset,
                empty_mtime_ns,
            } => {
                self.commit(id, generation, path, fingerprint, offset);
                if fingerprint.len == 0 {
                    self.set_empty_mtime(id, empty_mtime_ns);
                }
            }
            Proposal::Born { id, born } => self.set_born(id, born),
            Proposal::ReadAgain {
                id,
                generation,
                path,
                head,
                size,
            } => {
                self.commit(id, generation, path, head, 0);
                self.reset_size(id, size);
            }
            Proposal::Copy {
                copy,
                generation,
                path,
                fingerprint,
                offset,
                name,
                size,
                born,
                original,
                original_generation,
            } => {
                self.commit(copy, generation, path, fingerprint, offset);
                self.set_state(copy, FileState::Copy, Some(name), size);
                self.set_born(copy, born);
                self.redirect(original, original_generation, copy);
            }
            Proposal::Reopened {
                id,
                generation,
                path,
                fingerprint,
                offset,
                state,
                name,
                size,
                born,
            } => {
                self.commit(id, generation, path, fingerprint, offset);
                self.set_state(id, state, Some(name), size);
                self.set_born(id, born);
            }
            Proposal::GzipRead {
                id,
                generation,
                path,
                fingerprint,
                offset,
                name,
            } => {
                self.commit(id, generation, path, fingerprint, offset);
                self.set_state(id, FileState::Copy, Some(name), offset);
            }
            Proposal::State {
                id,
                state,
                name,
                size,
            } => self.set_state(id, state, name, size),
            Proposal::Head { id, fingerprint } => self.set_fingerprint(id, fingerprint),
            Proposal::Size { id, size } => self.note_size(id, size),
            Proposal::TruncationMarked { id, at, size } => {
                self.set_truncated_at(id, Some(at));
                self.note_size(id, size);
            }
            Proposal::TruncationDone { id } => self.set_truncated_at(id, None),
            Proposal::Forget { id } => self.forget(id),
            Proposal::Followed { paths, now } => self.note_patterns(paths, now),
        }
    }

    /// Records that the collect paths `patterns` are followed now (refreshing their
    /// sighting at most hourly, so this does not make the registry dirty every rescan).
    fn note_patterns<'a>(&mut self, patterns: impl IntoIterator<Item = &'a str>, now: u64) {
        for p in patterns {
            match self.patterns.get_mut(p) {
                Some(t) if now.saturating_sub(*t) < 3600 => {}
                Some(t) => {
                    *t = now;
                    self.dirty = true;
                }
                None => {
                    self.patterns.insert(p.to_owned(), now);
                    self.dirty = true;
                }
            }
        }
    }

    /// Marks `id` as rotated away or as a copy, last seen as `name` with `size` bytes
    /// (the tailer proposes; acknowledgements keep moving the offset).
    fn set_state(&mut self, id: FileId, state: FileState, name: Option<&str>, size: u64) {
        if let Some(c) = self.entries.get_mut(&id) {
            let name = name.map(str::to_owned).or_else(|| c.name.clone());
            let size = size.max(c.size);
            if c.state != state || c.name != name || c.size != size {
                c.state = state;
                c.name = name;
                c.size = size;
                self.dirty = true;
            }
        }
    }

    /// Records the mtime of `id` while it is empty (see [`Checkpoint::empty_mtime_ns`]).
    fn set_empty_mtime(&mut self, id: FileId, mtime_ns: Option<u64>) {
        if let Some(c) = self.entries.get_mut(&id) {
            if c.fingerprint.len == 0 && c.empty_mtime_ns != mtime_ns {
                c.empty_mtime_ns = mtime_ns;
                self.dirty = true;
            }
        }
    }

    /// Records the birth time of `id` (once; see [`Checkpoint::same_file`]).
    fn set_born(&mut self, id: FileId, born: Option<u64>) {
        if let (Some(c), Some(_)) = (self.entries.get_mut(&id), born) {
            if c.born != born {
                c.born = born;
                self.dirty = true;
            }
        }
    }

    /// Records the first bytes `id` holds now, as its tailer read them (the head of a
    /// file grows while it is short): a copy of it made before the next checkpoint is
    /// then known as a copy, not read again from 0.
    fn set_fingerprint(&mut self, id: FileId, fp: Fingerprint) {
        if let Some(c) = self.entries.get_mut(&id) {
            if c.fingerprint != fp && c.fingerprint.len <= fp.len {
                c.fingerprint = fp;
                self.dirty = true;
            }
        }
    }

    /// Marks `id` as truncated at `at` with its copy read first (`None`: read again).
    fn set_truncated_at(&mut self, id: FileId, at: Option<u64>) {
        if let Some(c) = self.entries.get_mut(&id) {
            if c.truncated_at != at {
                c.truncated_at = at;
                self.dirty = true;
                self.urgent = true;
            }
        }
    }

    /// Records the largest size seen of `id` (for loss accounting if it disappears).
    fn note_size(&mut self, id: FileId, size: u64) {
        if let Some(c) = self.entries.get_mut(&id) {
            if size > c.size {
                c.size = size;
                self.dirty = true;
            }
        }
    }

    /// Sets the size known of `id` to `size`, smaller or not: after a truncation, the
    /// content it held before is no longer what the file can lose.
    fn reset_size(&mut self, id: FileId, size: u64) {
        if let Some(c) = self.entries.get_mut(&id) {
            if c.size != size {
                c.size = size;
                self.dirty = true;
            }
        }
    }

    /// Every checkpoint, in no particular order.
    pub fn files(&self) -> impl Iterator<Item = &Checkpoint> {
        self.entries.values()
    }

    /// Records that every line of `id` up to `offset` is acknowledged, as read by
    /// generation `generation`. Commits of a generation older than one already seen for
    /// this file are ignored (they describe bytes a truncation threw away).
    pub fn commit(
        &mut self,
        id: FileId,
        generation: u64,
        path: &str,
        fingerprint: Fingerprint,
        offset: u64,
    ) {
        if let Some(to) = self.redirects.get(&(id, generation)) {
            // Bytes of a generation a truncation cut off: the copy holds them now (up
            // to its size; logrotate may have truncated after copying).
            if let Some(c) = self.entries.get_mut(to) {
                let offset = offset.min(c.size.max(c.offset));
                if offset > c.offset {
                    c.offset = offset;
                    c.updated = unix_now();
                    self.dirty = true;
                }
            }
            return;
        }
        let newest = self.generations.entry(id).or_insert(generation);
        if generation < *newest {
            return;
        }
        *newest = generation;
        let now = unix_now();
        match self.entries.get_mut(&id) {
            Some(c) if c.offset == offset && c.fingerprint == fingerprint && c.path == path => {}
            Some(c) => {
                c.offset = offset;
                c.fingerprint = fingerprint;
                if fingerprint.len > 0 {
                    c.empty_mtime_ns = None;
                }
                if c.path != path {
                    let old = std::mem::replace(&mut c.path, path.to_owned());
                    unindex(&mut self.by_path, &old, id);
                    self.by_path.entry(path.to_owned()).or_default().push(id);
                }
                c.updated = now;
                self.dirty = true;
            }
            None => {
                self.by_path.entry(path.to_owned()).or_default().push(id);
                self.entries.insert(
                    id,
                    Checkpoint {
                        path: path.to_owned(),
                        id,
                        fingerprint,
                        offset,
                        updated: now,
                        state: FileState::Live,
                        name: None,
                        size: 0,
                        born: None,
                        truncated_at: None,
                        empty_mtime_ns: None,
                    },
                );
                self.dirty = true;
                self.urgent = true;
            }
        }
    }

    /// Whether something a restart cannot do without (a file new to the ledger, a
    /// truncation mark) is only in memory: until it is written, a SIGKILL makes the
    /// next start know nothing of that file (one rotated meanwhile is never read).
    pub fn save_soon(&self) -> bool {
        self.urgent
    }

    /// From now on, acknowledgements of `generation` of `from` (a file just truncated)
    /// move the offset of `to` (its copy) instead.
    fn redirect(&mut self, from: FileId, generation: u64, to: FileId) {
        self.redirects.insert((from, generation), to);
    }

    /// Drops the checkpoint of `id` (its inode now holds another file).
    fn forget(&mut self, id: FileId) {
        if let Some(c) = self.entries.remove(&id) {
            unindex(&mut self.by_path, &c.path, id);
            self.dirty = true;
        }
    }

    /// Forgets `id`, whose file was deleted (its reader saw no link left: it can never
    /// be opened again) after its reader, `generation`, let go of it with every line it
    /// read acknowledged (or given up and counted). Not when a newer generation
    /// committed since: the inode holds another file then. True if an entry went.
    ///
    /// Without this, a glob over files that come and go kept one entry per file for
    /// `registry_retention_hours` (a week: 600,000 entries at a file a second, the whole
    /// ledger serialized at every checkpoint).
    pub fn forget_deleted(&mut self, id: FileId, generation: u64) -> bool {
        if self.generations.get(&id).is_some_and(|&g| g > generation) {
            return false;
        }
        self.generations.remove(&id);
        self.redirects
            .retain(|(from, _), to| *from != id && *to != id);
        let had = self.entries.contains_key(&id);
        self.forget(id);
        had
    }

    /// The first half of the retention prune, under the registry lock and without
    /// looking at any file: refreshes the sighting of the files in `active` (the
    /// producer has records of them), forgets collect paths not followed for the
    /// retention (at least 3 hours), drops what `generations` and `redirects` hold of
    /// files the ledger forgot and nobody reads, and returns the entries not committed
    /// to for `retention_secs`. Whether their files are still there is looked at off the
    /// lock (and off the producer thread: a hung mount must not stop it) with
    /// [`Expired::on_disk`]; [`Registry::forget_expired`] then forgets those that are not.
    pub fn expired(&mut self, active: &[FileId], retention_secs: u64, now: u64) -> Vec<Expired> {
        for id in active {
            if let Some(c) = self.entries.get_mut(id) {
                c.updated = c.updated.max(now.saturating_sub(60));
            }
        }
        let live_paths: std::collections::HashSet<&str> =
            self.entries.values().map(|c| c.path.as_str()).collect();
        let pbefore = self.patterns.len();
        self.patterns.retain(|p, t| {
            now.saturating_sub(*t) <= retention_secs.max(3 * 3600)
                || live_paths.contains(p.as_str())
        });
        if self.patterns.len() != pbefore {
            self.dirty = true;
        }
        // A late acknowledgement can only come for a file some slot of the producer
        // holds (`active`); a new reading of a file gets a newer generation anyway.
        let entries = &self.entries;
        self.generations
            .retain(|id, _| entries.contains_key(id) || active.contains(id));
        // Redirects credit a copy: useless once the copy is forgotten.
        self.redirects.retain(|_, to| entries.contains_key(to));
        self.entries
            .values()
            .filter(|c| now.saturating_sub(c.updated) > retention_secs)
            .map(|c| Expired {
                id: c.id,
                updated: c.updated,
                names: std::iter::once(c.path.clone())
                    .chain(c.name.clone())
                    .collect(),
            })
            .collect()
    }

    /// The second half of the retention prune: forgets the entries of `gone` (files
    /// [`Expired::on_disk`] did not find) unless they were committed to since they were
    /// listed. Returns how many went.
    pub fn forget_expired(&mut self, gone: &[Expired]) -> usize {
        let mut n = 0;
        for e in gone {
            if self
                .entries
                .get(&e.id)
                .is_some_and(|c| c.updated == e.updated)
            {
                self.forget(e.id);
                self.generations.remove(&e.id);
                n += 1;
            }
        }
        n
    }

    /// How many file entries, reading generations and redirects the registry holds
    /// (what [`Registry::expired`] and [`Registry::forget_deleted`] keep bounded).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.entries.len(),
            self.generations.len(),
            self.redirects.len(),
        )
    }

    /// Rebuilds `by_path` from `entries`.
    fn reindex(&mut self) {
        self.by_path.clear();
        for c in self.entries.values() {
            self.by_path.entry(c.path.clone()).or_default().push(c.id);
        }
    }

    /// What [`Registry::save`] writes: the checkpoints (by path, then inode) and the
    /// collect paths, as pretty JSON.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let mut files: Vec<Checkpoint> = self.entries.values().cloned().collect();
        sort_files(&mut files);
        serde_json::to_vec_pretty(&OnDisk {
            version: FORMAT,
            files,
            patterns: self.patterns.clone(),
            transactional_id: self.mirrors.clone(),
        })
    }

    /// Writes the registry if it changed since the last save: temp, fsync, rename, fsync dir.
    pub fn save(&mut self) -> Result<bool, RegistryError> {
        if !self.dirty || self.saves_held {
            return Ok(false);
        }
        let bytes = self
            .to_json()
            .map_err(|e| self.io(std::io::Error::other(e)))?;
        self.write(&bytes)?;
        self.dirty = false;
        self.urgent = false;
        Ok(true)
    }

    fn io(&self, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// What the supervisor writes at a config change: the start positions it just
    /// proposed (`starts`: files of paths never followed) and the collect paths
    /// followed. Normally the whole registry ([`Registry::save`]). While saves are held
    /// (exactly_once: the entries in memory may hold offsets no commit has made yet),
    /// only these are added to what the file on disk holds: a restart after an aborted
    /// transaction must not take a `from: end` path's (later) end again.
    pub fn save_starts(&mut self, starts: &[FileId]) -> Result<bool, RegistryError> {
        if !self.saves_held {
            return self.save();
        }
        let mut disk = match read_disk(&self.path)? {
            Some(Ok(disk)) => disk,
            // Not ours to overwrite with a fragment: the next save writes it whole.
            Some(Err(_)) => return Ok(false),
            None => OnDisk {
                version: FORMAT,
                files: Vec::new(),
                patterns: BTreeMap::new(),
                transactional_id: self.mirrors.clone(),
            },
        };
        let mut added = false;
        for id in starts {
            if let Some(c) = self.entries.get(id) {
                if !disk.files.iter().any(|f| f.id == *id) {
                    disk.files.push(c.clone());
                    added = true;
                }
            }
        }
        for (p, t) in &self.patterns {
            if disk.patterns.get(p) != Some(t) {
                disk.patterns.insert(p.clone(), *t);
                added = true;
            }
        }
        if !added {
            return Ok(false);
        }
        sort_files(&mut disk.files);
        let bytes =
            serde_json::to_vec_pretty(&disk).map_err(|e| self.io(std::io::Error::other(e)))?;
        self.write(&bytes)?;
        Ok(true)
    }

    /// Writes `bytes` as the registry file: temp, fsync, rename, fsync dir.
    fn write(&mut self, bytes: &[u8]) -> Result<(), RegistryError> {
        let io = |source| self.io(source);
        let tmp = crate::datadir::temp_for(&self.path);
        {
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        // The registry being replaced is kept as the previous good one: if the new one
        // is ever found corrupt, the start falls back to it. (Not a file found corrupt
        // at the start: that one is no good.)
        if self.origin == Origin::File {
            keep_previous(&self.path);
        }
        fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            // The rename is only durable once the directory entry is.
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        // What is on disk now is ours, and good: the next save keeps it as the previous.
        self.origin = Origin::File;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_index_follows_commits_renames_forgets_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let (a, b) = (FileId { dev: 1, ino: 1 }, FileId { dev: 1, ino: 2 });
        let fp = Fingerprint::default();
        assert!(!r.save_soon());
        r.commit(a, 1, "/l/app.log", fp, 10);
        assert!(r.save_soon(), "a file new to the ledger is written soon");
        r.commit(b, 2, "/l/app.log", fp, 0);
        let ids = |r: &Registry, p: &str| -> Vec<u64> {
            r.entries_for_path(p).iter().map(|c| c.id.ino).collect()
        };
        assert_eq!(ids(&r, "/l/app.log").len(), 2);
        r.commit(a, 3, "/l/other.log", fp, 20);
        assert_eq!(ids(&r, "/l/app.log"), vec![2]);
        assert_eq!(ids(&r, "/l/other.log"), vec![1]);
        r.forget(b);
        assert!(!r.path_known("/l/app.log"), "no entry and no pattern left");
        assert!(r.save().unwrap());
        assert!(!r.save_soon());
        let r = Registry::open(dir.path()).unwrap();
        assert_eq!(ids(&r, "/l/other.log"), vec![1]);
        assert!(ids(&r, "/l/app.log").is_empty());
    }

    #[test]
    fn start_positions_reach_the_disk_while_saves_are_held_without_uncommitted_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let (a, b) = (FileId { dev: 1, ino: 1 }, FileId { dev: 1, ino: 2 });
        let fp = Fingerprint::default();
        r.commit(a, 1, "/l/a.log", fp, 10);
        r.set_mirrors(Some("t"));
        assert!(r.save().unwrap());
        // A commit is under way: A's acknowledged offset is in memory only.
        r.hold_saves(true);
        r.commit(a, 1, "/l/a.log", fp, 99);
        assert!(!r.save().unwrap(), "held");
        r.propose(Proposal::Start {
            id: b,
            generation: 2,
            path: "/l/b.log",
            fingerprint: fp,
            offset: 500,
            empty_mtime_ns: None,
        });
        r.propose(Proposal::Followed {
            paths: vec!["/l/b.log"],
            now: 7,
        });
        assert!(r.save_starts(&[b]).unwrap());
        let on_disk = Registry::open(dir.path()).unwrap();
        assert_eq!(
            on_disk.get(a).map(|c| c.offset),
            Some(10),
            "not the uncommitted 99"
        );
        assert_eq!(on_disk.get(b).map(|c| c.offset), Some(500));
        assert!(on_disk.pattern_known("/l/b.log"));
        assert_eq!(on_disk.mirrors(), Some("t"));
        // Once committed, the whole ledger is written.
        r.hold_saves(false);
        assert!(r.save().unwrap());
        let on_disk = Registry::open(dir.path()).unwrap();
        assert_eq!(on_disk.get(a).map(|c| c.offset), Some(99));
    }

    #[test]
    fn probe_creates_a_missing_data_dir_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b/data");
        probe_writable(&data).unwrap();
        assert!(data.is_dir());
        assert_eq!(
            fs::read_dir(&data).unwrap().count(),
            0,
            "probe file left behind"
        );
        // An existing, populated data_dir is fine too and keeps its files.
        fs::write(data.join("registry.json"), b"{}").unwrap();
        probe_writable(&data).unwrap();
        assert_eq!(fs::read(data.join("registry.json")).unwrap(), b"{}");
    }

    #[test]
    fn probe_names_the_path_and_the_os_error() {
        // A regular file as parent fails for root too (permission bits would not).
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("afile"), b"x").unwrap();
        let data = dir.path().join("afile/sub");
        let e = probe_writable(&data).unwrap_err();
        assert!(matches!(e, RegistryError::NotWritable { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("data_dir {} is not writable: ", data.display())),
            "{msg}"
        );
        assert!(msg.contains("os error"), "{msg}");
    }

    #[test]
    fn what_is_written_does_not_depend_on_the_hash_map_order() {
        // One path, one inode, four devices: each load of the same bytes (a new hash
        // map, a new order) writes the same file.
        let cp = |dev: u64| {
            format!(
                r#"{{"path":"/var/log/a.log","id":{{"dev":{dev},"ino":7}},"fingerprint":{{"len":0,"hash":0}},"offset":{dev},"updated":1}}"#
            )
        };
        let bytes = format!(
            r#"{{"version":2,"files":[{}]}}"#,
            [4, 3, 2, 1].map(cp).join(",")
        );
        let path = Path::new("/tmp/registry.json");
        let first = Registry::parse(path, bytes.as_bytes())
            .unwrap()
            .to_json()
            .unwrap();
        for _ in 0..20 {
            let again = Registry::parse(path, bytes.as_bytes()).unwrap();
            assert_eq!(again.to_json().unwrap(), first);
        }
    }

    #[test]
    fn round_trip_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let id = FileId { dev: 8, ino: 42 };
        let fp = Fingerprint::of(b"first line\n");
        {
            let mut r = Registry::open(dir.path()).unwrap();
            r.commit(id, 1, "/var/log/a.log", fp, 1234);
            assert!(r.save().unwrap());
            assert!(!r.save().unwrap(), "unchanged registry is not rewritten");
        }
        let r = Registry::open(dir.path()).unwrap();
        let c = r.get(id).unwrap();
        assert_eq!(
            (c.offset, c.fingerprint, c.path.as_str()),
            (1234, fp, "/var/log/a.log")
        );
        let left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with("tmp"))
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
        assert_eq!(r.origin(), &Origin::File);
    }

    fn fresh() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        (dir, r)
    }

    const A: FileId = FileId { dev: 1, ino: 10 };
    const B: FileId = FileId { dev: 1, ino: 11 };

    fn start(r: &mut Registry, id: FileId, generation: u64, offset: u64, head: &[u8]) {
        r.propose(Proposal::Start {
            id,
            generation,
            path: "/var/log/a.log",
            fingerprint: Fingerprint::of(head),
            offset,
            empty_mtime_ns: Some(77),
        });
    }

    #[test]
    fn proposal_start_records_the_file_and_an_empty_files_mtime() {
        let (_d, mut r) = fresh();
        start(&mut r, A, 1, 5, b"head");
        let c = r.get(A).unwrap();
        assert_eq!(
            (c.offset, c.path.as_str(), c.empty_mtime_ns),
            (5, "/var/log/a.log", None)
        );
        assert!(r.save_soon(), "a new file is written at the next turn");
        start(&mut r, B, 1, 0, b"");
        assert_eq!(r.get(B).unwrap().empty_mtime_ns, Some(77));
        // An older generation no longer moves it.
        start(&mut r, A, 0, 99, b"head");
        assert_eq!(r.get(A).unwrap().offset, 5);
    }

    #[test]
    fn proposal_born_head_and_size_only_add_what_is_new() {
        let (_d, mut r) = fresh();
        start(&mut r, A, 1, 0, b"he");
        r.propose(Proposal::Born {
            id: A,
            born: Some(9),
        });
        r.propose(Proposal::Born { id: A, born: None });
        assert_eq!(r.get(A).unwrap().born, Some(9));
        r.propose(Proposal::Head {
            id: A,
            fingerprint: Fingerprint::of(b"head"),
        });
        r.propose(Proposal::Head {
            id: A,
            fingerprint: Fingerprint::of(b"h"),
        });
        assert_eq!(r.get(A).unwrap().fingerprint, Fingerprint::of(b"head"));
        r.propose(Proposal::Size { id: A, size: 50 });
        r.propose(Proposal::Size { id: A, size: 20 });
        assert_eq!(r.get(A).unwrap().size, 50);
        // Nothing for a file the ledger does not know.
        r.propose(Proposal::Size { id: B, size: 1 });
        assert!(r.get(B).is_none());
    }

    #[test]
    fn proposal_read_again_starts_over_and_resets_the_size() {
        let (_d, mut r) = fresh();
        start(&mut r, A, 1, 40, b"old");
        r.propose(Proposal::Size { id: A, size: 100 });
        r.propose(Proposal::ReadAgain {
            id: A,
            generation: 2,
            path: "/var/log/a.log",
            head: Fingerprint::of(b"new"),
            size: 3,
        });
        let c = r.get(A).unwrap();
        assert_eq!(
            (c.offset, c.size, c.fingerprint),
            (0, 3, Fingerprint::of(b"new"))
        );
        // Late acknowledgements of the truncated generation are ignored.
        r.commit(A, 1, "/var/log/a.log", Fingerprint::of(b"old"), 90);
        assert_eq!(r.get(A).unwrap().offset, 0);
    }

    #[test]
    fn proposal_copy_records_the_copy_and_redirects_late_acks_to_it() {
        let (_d, mut r) = fresh();
        start(&mut r, A, 1, 10, b"head");
        r.propose(Proposal::Copy {
            copy: B,
            generation: 3,
            path: "/var/log/a.log",
            fingerprint: Fingerprint::of(b"head"),
            offset: 10,
            name: "/var/log/a.log.1",
            size: 60,
            born: Some(4),
            original: A,
            original_generation: 1,
        });
        let c = r.get(B).unwrap();
        assert_eq!(
            (c.state, c.name.as_deref(), c.size, c.born, c.offset),
            (FileState::Copy, Some("/var/log/a.log.1"), 60, Some(4), 10)
        );
        r.commit(A, 1, "/var/log/a.log", Fingerprint::of(b"head"), 30);
        assert_eq!(
            r.get(B).unwrap().offset,
            30,
            "the copy holds those bytes now"
        );
    }

    #[test]
    fn proposal_reopened_gzip_and_state_say_where_a_file_is() {
        let (_d, mut r) = fresh();
        r.propose(Proposal::Reopened {
            id: A,
            generation: 1,
            path: "/var/log/a.log",
            fingerprint: Fingerprint::of(b"x"),
            offset: 7,
            state: FileState::Rotated,
            name: "/var/log/a.log.2",
            size: 70,
            born: None,
        });
        let c = r.get(A).unwrap();
        assert_eq!(
            (c.state, c.name.as_deref(), c.offset),
            (FileState::Rotated, Some("/var/log/a.log.2"), 7)
        );
        r.propose(Proposal::GzipRead {
            id: B,
            generation: 1,
            path: "/var/log/a.log",
            fingerprint: Fingerprint::of(b"y"),
            offset: 12,
            name: "/var/log/a.log.2.gz",
        });
        assert_eq!(r.get(B).unwrap().state, FileState::Copy);
        r.propose(Proposal::State {
            id: A,
            state: FileState::Copy,
            name: None,
            size: 10,
        });
        let c = r.get(A).unwrap();
        assert_eq!(
            (c.state, c.name.as_deref(), c.size),
            (FileState::Copy, Some("/var/log/a.log.2"), 70)
        );
    }

    #[test]
    fn proposal_truncation_marks_forget_and_followed() {
        let (_d, mut r) = fresh();
        start(&mut r, A, 1, 0, b"x");
        r.save().unwrap();
        r.propose(Proposal::TruncationMarked {
            id: A,
            at: 123,
            size: 80,
        });
        assert_eq!(r.get(A).unwrap().truncated_at, Some(123));
        assert!(
            r.save_soon(),
            "a truncation mark is written at the next turn"
        );
        r.propose(Proposal::TruncationDone { id: A });
        assert_eq!(r.get(A).unwrap().truncated_at, None);
        r.propose(Proposal::Forget { id: A });
        assert!(r.get(A).is_none() && !r.path_known("/var/log/a.log"));
        r.propose(Proposal::Followed {
            paths: vec!["/var/log/*.log"],
            now: 1000,
        });
        assert!(r.pattern_known("/var/log/*.log"));
    }

    #[test]
    fn proposal_gzip_read_records_the_compressed_copy_and_where_its_read_starts() {
        let (_d, mut r) = fresh();
        r.propose(Proposal::GzipRead {
            id: B,
            generation: 2,
            path: "/var/log/a.log",
            fingerprint: Fingerprint::of(b"y"),
            offset: 12,
            name: "/var/log/a.log.2.gz",
        });
        let c = r.get(B).unwrap();
        assert_eq!(
            (c.path.as_str(), c.state, c.name.as_deref()),
            (
                "/var/log/a.log",
                FileState::Copy,
                Some("/var/log/a.log.2.gz")
            )
        );
        // Offsets (and the size owed) in decompressed bytes.
        assert_eq!(
            (c.offset, c.size, c.fingerprint),
            (12, 12, Fingerprint::of(b"y"))
        );
        assert_eq!(r.entries_for_path("/var/log/a.log").len(), 1);
    }

    #[test]
    fn proposals_of_an_older_generation_do_not_move_a_newer_reading() {
        let (_d, mut r) = fresh();
        let fp = Fingerprint::of(b"head");
        start(&mut r, A, 5, 40, b"head");
        r.propose(Proposal::ReadAgain {
            id: A,
            generation: 4,
            path: "/var/log/a.log",
            head: Fingerprint::of(b"other"),
            size: 3,
        });
        let c = r.get(A).unwrap();
        assert_eq!((c.offset, c.fingerprint), (40, fp), "ReadAgain");
        r.propose(Proposal::Reopened {
            id: A,
            generation: 4,
            path: "/var/log/a.log",
            fingerprint: fp,
            offset: 7,
            state: FileState::Rotated,
            name: "/var/log/a.log.1",
            size: 70,
            born: None,
        });
        assert_eq!(r.get(A).unwrap().offset, 40, "Reopened");
        r.propose(Proposal::GzipRead {
            id: A,
            generation: 4,
            path: "/var/log/a.log",
            fingerprint: fp,
            offset: 9,
            name: "/var/log/a.log.1.gz",
        });
        assert_eq!(r.get(A).unwrap().offset, 40, "GzipRead");
        r.propose(Proposal::Copy {
            copy: A,
            generation: 4,
            path: "/var/log/a.log",
            fingerprint: fp,
            offset: 2,
            name: "/var/log/a.log.1",
            size: 60,
            born: None,
            original: B,
            original_generation: 1,
        });
        assert_eq!(r.get(A).unwrap().offset, 40, "Copy");
        // A newer generation does.
        r.propose(Proposal::Reopened {
            id: A,
            generation: 6,
            path: "/var/log/a.log",
            fingerprint: fp,
            offset: 50,
            state: FileState::Rotated,
            name: "/var/log/a.log.1",
            size: 70,
            born: Some(3),
        });
        let c = r.get(A).unwrap();
        assert_eq!((c.offset, c.size, c.born), (50, 70, Some(3)));
    }

    #[test]
    fn proposal_truncation_marked_keeps_the_largest_size_and_followed_refreshes_hourly() {
        let (_d, mut r) = fresh();
        start(&mut r, A, 1, 0, b"x");
        r.propose(Proposal::Size { id: A, size: 90 });
        r.propose(Proposal::TruncationMarked {
            id: A,
            at: 5,
            size: 30,
        });
        let c = r.get(A).unwrap();
        assert_eq!((c.truncated_at, c.size), (Some(5), 90));
        r.propose(Proposal::TruncationMarked {
            id: A,
            at: 6,
            size: 120,
        });
        let c = r.get(A).unwrap();
        assert_eq!((c.truncated_at, c.size), (Some(6), 120));
        // Nothing for files the ledger does not know.
        r.propose(Proposal::TruncationMarked {
            id: B,
            at: 6,
            size: 1,
        });
        r.propose(Proposal::TruncationDone { id: B });
        r.propose(Proposal::Forget { id: B });
        assert!(r.get(B).is_none());
        assert!(r.get(A).is_some());
        let seen = |r: &Registry| {
            let v: serde_json::Value = serde_json::from_slice(&r.to_json().unwrap()).unwrap();
            v["patterns"]["/var/log/*.log"].as_u64()
        };
        r.propose(Proposal::Followed {
            paths: vec!["/var/log/*.log"],
            now: 10_000,
        });
        assert_eq!(seen(&r), Some(10_000));
        r.save().unwrap();
        r.propose(Proposal::Followed {
            paths: vec!["/var/log/*.log"],
            now: 10_000 + 3599,
        });
        assert_eq!(seen(&r), Some(10_000), "not refreshed within the hour");
        assert!(!r.save().unwrap(), "nothing to write");
        r.propose(Proposal::Followed {
            paths: vec!["/var/log/*.log"],
            now: 10_000 + 3600,
        });
        assert_eq!(seen(&r), Some(13_600));
        assert!(r.path_known("/var/log/*.log"));
    }

    #[test]
    fn corrupt_file_is_an_error_and_tmp_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("registry.json.tmp"), b"{half").unwrap();
        let r = Registry::open(dir.path()).unwrap();
        assert!(r.get(FileId { dev: 1, ino: 1 }).is_none());
        assert_eq!(r.origin(), &Origin::Missing);
        fs::write(dir.path().join("registry.json"), b"{half").unwrap();
        let e = Registry::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("registry.json"), "{e}");
    }

    /// Two saves: `registry.json` holds the second, `.prev` the first.
    fn two_saves(dir: &Path) -> FileId {
        let id = FileId { dev: 8, ino: 42 };
        let fp = Fingerprint::of(b"first line\n");
        let mut r = Registry::open(dir).unwrap();
        r.commit(id, 1, "/var/log/a.log", fp, 100);
        r.save().unwrap();
        r.commit(id, 1, "/var/log/a.log", fp, 200);
        r.save().unwrap();
        id
    }

    #[test]
    fn a_corrupt_or_deleted_registry_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let id = two_saves(dir.path());
        assert_eq!(
            Registry::open(dir.path()).unwrap().get(id).unwrap().offset,
            200
        );
        for damage in [&b"{\"version\": 2, \"files\": [{\"pa"[..], b"\0\0\0\0", b""] {
            fs::write(dir.path().join("registry.json"), damage).unwrap();
            let mut r = Registry::open(dir.path()).unwrap();
            let Origin::Previous { why } = r.origin().clone() else {
                panic!("{:?}", r.origin());
            };
            assert!(why.contains("corrupt"), "{why}");
            // One checkpoint older: lines may come again, none is skipped.
            assert_eq!(r.get(id).unwrap().offset, 100);
            // Written back at once, so the next start reads a good file.
            assert!(r.save().unwrap());
            assert_eq!(Registry::open(dir.path()).unwrap().origin(), &Origin::File);
        }
        fs::remove_file(dir.path().join("registry.json")).unwrap();
        let r = Registry::open(dir.path()).unwrap();
        assert!(matches!(r.origin(), Origin::Previous { why } if why.contains("missing")));
        assert!(r.get(id).is_some());
    }

    #[test]
    fn a_registry_of_a_newer_format_is_refused_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let newer = br#"{"version": 3, "files": [], "sharded": true}"#;
        fs::write(dir.path().join("registry.json"), newer).unwrap();
        let e = Registry::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("newer logagent (format 3"), "{e}");
        assert_eq!(fs::read(dir.path().join("registry.json")).unwrap(), newer);
    }

    #[test]
    fn prune_forgets_only_gone_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let gone = FileId { dev: 1, ino: 1 };
        let active = FileId { dev: 1, ino: 2 };
        let idle_path = dir.path().join("idle.log");
        fs::write(&idle_path, b"x\n").unwrap();
        let idle = FileId::of(&fs::metadata(&idle_path).unwrap());
        let renamed_path = dir.path().join("app.log.1");
        fs::write(&renamed_path, b"y\n").unwrap();
        let renamed = FileId::of(&fs::metadata(&renamed_path).unwrap());
        r.commit(gone, 1, "/nonexistent/a", Fingerprint::default(), 1);
        r.commit(active, 1, "/nonexistent/b", Fingerprint::default(), 1);
        r.commit(
            idle,
            1,
            idle_path.to_str().unwrap(),
            Fingerprint::default(),
            2,
        );
        r.commit(
            renamed,
            1,
            "/nonexistent/app.log",
            Fingerprint::default(),
            2,
        );
        r.set_state(
            renamed,
            FileState::Rotated,
            Some(renamed_path.to_str().unwrap()),
            2,
        );
        let later = unix_now() + 10 * 86400;
        let mut expired = r.expired(&[active], 86400, later);
        expired.sort_by_key(|e| e.id.ino);
        let ids: Vec<FileId> = expired.iter().map(|e| e.id).collect();
        let mut want = vec![gone, idle, renamed];
        want.sort_by_key(|i| i.ino);
        assert_eq!(ids, want, "the active file is not listed");
        // Looked at off the lock: the idle file and the renamed one are still there.
        let off_disk: Vec<Expired> = expired.into_iter().filter(|e| !e.on_disk()).collect();
        assert_eq!(
            off_disk.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![gone]
        );
        assert_eq!(r.forget_expired(&off_disk), 1);
        assert!(r.get(gone).is_none());
        assert!(!r.path_known("/nonexistent/a"), "its path index went too");
        assert!(r.get(active).is_some());
        assert!(
            r.get(idle).is_some(),
            "an idle file that still exists is kept"
        );
        assert!(
            r.get(renamed).is_some(),
            "found under the name it was last seen by"
        );
    }

    #[test]
    fn an_expired_entry_committed_to_while_its_file_was_looked_for_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let id = FileId { dev: 1, ino: 1 };
        r.commit(id, 1, "/nonexistent/a", Fingerprint::default(), 1);
        let expired = r.expired(&[], 0, unix_now() + 10);
        assert_eq!(expired.len(), 1);
        // Meanwhile (the look is off the lock) a commit moved it on.
        r.entries.get_mut(&id).unwrap().updated += 5;
        assert_eq!(r.forget_expired(&expired), 0);
        assert!(r.get(id).is_some());
    }

    #[test]
    fn a_deleted_file_is_forgotten_at_once_unless_a_newer_reading_owns_its_inode() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let fp = Fingerprint::of(b"head\n");
        let (a, b) = (FileId { dev: 1, ino: 7 }, FileId { dev: 1, ino: 8 });
        r.commit(a, 3, "/l/a.log", fp, 100);
        r.commit(b, 4, "/l/b.log", fp, 100);
        r.set_state(b, FileState::Copy, Some("/l/b.log.1"), 100);
        r.redirect(a, 2, b);
        assert!(r.forget_deleted(b, 4));
        assert_eq!(
            r.sizes(),
            (1, 1, 0),
            "its generation and the redirect to it went"
        );
        assert!(!r.path_known("/l/b.log"));
        assert!(!r.forget_deleted(b, 4), "nothing left to forget");
        // The inode was reused: a newer reading (generation 5) committed for it.
        r.commit(a, 5, "/l/new.log", Fingerprint::of(b"other\n"), 10);
        assert!(
            !r.forget_deleted(a, 3),
            "the deleted file's reading is older"
        );
        assert_eq!(r.get(a).unwrap().offset, 10);
        assert!(r.forget_deleted(a, 5));
        assert_eq!(r.sizes(), (0, 0, 0));
    }

    #[test]
    fn generations_and_redirects_of_forgotten_files_do_not_pile_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let now = unix_now();
        for i in 0..100 {
            let id = FileId { dev: 1, ino: i };
            r.commit(id, i + 1, &format!("/l/{i}.log"), Fingerprint::default(), 1);
            if i > 0 {
                r.redirect(FileId { dev: 1, ino: i - 1 }, i, id);
            }
            // Forgotten some other way (a file deleted while not followed).
            r.forget(id);
        }
        let kept = FileId { dev: 1, ino: 1000 };
        r.commit(kept, 1000, "/l/kept.log", Fingerprint::default(), 1);
        let busy = FileId { dev: 1, ino: 1001 };
        r.commit(busy, 1001, "/l/busy.log", Fingerprint::default(), 1);
        r.forget(busy);
        assert_eq!(r.sizes(), (1, 102, 99));
        assert!(r.expired(&[busy], 86400, now).is_empty());
        // The forgotten files' generations and redirects go; the producer's (still
        // acknowledging `busy`) stays.
        assert_eq!(r.sizes(), (1, 2, 0));
    }

    #[test]
    fn late_acks_of_a_truncated_generation_credit_its_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let (orig, copy) = (FileId { dev: 1, ino: 7 }, FileId { dev: 1, ino: 8 });
        let fp = Fingerprint::of(b"head\n");
        r.commit(orig, 1, "/a", fp, 100);
        // Truncated at 300 read, 100 acknowledged; the copy holds 250 bytes.
        r.commit(orig, 2, "/a", Fingerprint::default(), 0);
        r.commit(copy, 3, "/a", fp, 100);
        r.set_state(copy, FileState::Copy, Some("/a.1"), 250);
        r.redirect(orig, 1, copy);
        r.commit(orig, 1, "/a", fp, 200);
        assert_eq!(r.get(copy).unwrap().offset, 200);
        assert_eq!(
            r.get(orig).unwrap().offset,
            0,
            "the truncated file stays at 0"
        );
        r.commit(orig, 1, "/a", fp, 300);
        assert_eq!(
            r.get(copy).unwrap().offset,
            250,
            "never past what the copy holds"
        );
        let c = r.get(copy).unwrap();
        assert!(c.offset >= c.size, "nothing of the copy is owed any more");
    }

    #[test]
    fn older_generation_cannot_move_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        let id = FileId { dev: 1, ino: 7 };
        r.commit(id, 1, "/a", Fingerprint::default(), 5000);
        r.commit(id, 2, "/a", Fingerprint::default(), 0); // truncated, read again
        r.commit(id, 1, "/a", Fingerprint::default(), 6000); // late ack of old bytes
        assert_eq!(r.get(id).unwrap().offset, 0);
        r.commit(id, 2, "/a", Fingerprint::default(), 100);
        assert_eq!(r.get(id).unwrap().offset, 100);
    }
}
