//! What a path owes at its first open (files rotated, copied or compressed away since the
//! ledger last saw them, oldest first) and where its file starts (the ledger's offset, its
//! end for `from: end`, or 0). The decisions are in [`super::rotation`]; this is the I/O.

use super::*;

/// Whether the file now at the path (`size` bytes, modified at `modified`, ns since the
/// epoch) was written since the ledger recorded it empty in `cp`. An entry recorded
/// while its file was empty has an empty fingerprint, which matches any content: if the
/// file was written since (it holds bytes now, or its mtime changed), it may also have
/// been copied and truncated while not followed, and the copy is only found by looking:
/// at files rotated out after the moment it was recorded empty (its mtime then, to the
/// ns: a copy made before the agent first saw the file is older, and not ours to ship).
/// Without that mtime recorded, a modification in or after the second of its last
/// update counts. An entry with a head is never "empty": false.
fn written_since_empty(cp: &crate::registry::Checkpoint, size: u64, modified: Option<u64>) -> bool {
    cp.fingerprint.len == 0
        && (size > 0
            || match cp.empty_mtime_ns {
                Some(t) => modified != Some(t),
                None => modified.is_some_and(|m| m / 1_000_000_000 >= cp.updated),
            })
}

/// What the ledger's entries of a path say before any look at the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StartView {
    /// The ledger's last news of the path (s since the epoch; the truncation's, if
    /// earlier): files rotated out since may be unknown to it.
    last_known: Option<u64>,
    /// The file at the path was recorded empty at this mtime (ns) and written since.
    empty_since: Option<u64>,
    /// The ledger knows only the file still at the path, unchanged: nothing can have
    /// been rotated away unseen (the common start: no directory scan).
    undisturbed: bool,
}

impl StartView {
    fn of(entries: &[crate::registry::Checkpoint], current: Option<AtPath<'_>>) -> StartView {
        // Truncated, and its copy was being read when the agent stopped: a copy made
        // since may hold what the file had then (truncated again meanwhile).
        let truncated_at = entries.iter().filter_map(|c| c.truncated_at).min();
        let last_known = entries
            .iter()
            .map(|c| c.updated)
            .max()
            .map(|t| truncated_at.map_or(t, |u| t.min(u)));
        let empty_since = current.and_then(|c| {
            entries
                .iter()
                .filter(|cp| cp.id == c.id && written_since_empty(cp, c.size, c.modified))
                .find_map(|cp| cp.empty_mtime_ns)
        });
        // Nothing can have been rotated away unseen if the ledger knows only the file
        // that is still at the path, unchanged (the common start: no directory scan).
        let undisturbed = truncated_at.is_none()
            && entries.iter().all(|cp| {
                current.is_some_and(|c| {
                    c.id == cp.id
                        && cp.same_file(c.born, c.head)
                        && c.size >= cp.offset
                        && !written_since_empty(cp, c.size, c.modified)
                })
            });
        StartView {
            last_known,
            empty_since,
            undisturbed,
        }
    }
}

/// Oldest first: by modification time, as the files were written.
fn oldest_first(owed: &mut [Owed]) {
    owed.sort_by_key(|o| {
        let p = match o {
            Owed::Plain { path, .. } | Owed::Gzip { path, .. } => path,
        };
        fs::metadata(p).and_then(|m| m.modified()).ok()
    });
}

impl Tailer {
    /// At the first open of the path: queues every file of the ledger under this path
    /// that still owes bytes (rotated away while the agent was stopped or before its
    /// quiet wait ended, a copy being recovered, the old content of a file truncated
    /// while stopped), oldest first. `current` is the file now at the path (identity,
    /// head, size); its own checkpoint is resumed by [`Tailer::start_offset`]. Files
    /// owed that cannot be found are counted as lost.
    #[inline(never)]
    pub(super) fn queue_owed_at_start(&mut self, current: Option<AtPath<'_>>) {
        let path = self.spec.path.clone();
        let Some((dir, base)) = siblings::split(&path) else {
            return;
        };
        let entries = self.registry().entries_for_path(&path);
        let view = StartView::of(&entries, current);
        let mut owed = Vec::new();
        let mut seen: HashSet<FileId> = HashSet::new();
        if let Some(c) = current {
            seen.insert(c.id);
        }
        for cp in entries {
            self.owed_of_entry(cp, current, (dir, base), &mut seen, &mut owed);
        }
        if let Some(t) = view.last_known.filter(|_| !view.undisturbed) {
            self.owed_unknown_since(
                t,
                view.empty_since,
                current,
                (dir, base),
                &mut seen,
                &mut owed,
            );
        }
        oldest_first(&mut owed);
        if !owed.is_empty() {
            info!(
                "{path}: {} file(s) rotated away or copied still owe bytes; reading them first, oldest first",
                owed.len()
            );
        }
        self.backlog.extend(owed);
    }

    /// What one ledger entry of the path owes at the first open: nothing (the live file,
    /// resumed where it was), its rest where it is now (renamed, copied, compressed), or
    /// its unread bytes counted as lost (gone); an entry not at the path is then forgotten
    /// (what it owes is queued in `owed`).
    fn owed_of_entry(
        &mut self,
        cp: crate::registry::Checkpoint,
        current: Option<AtPath<'_>>,
        (dir, base): (&Path, &str),
        seen: &mut HashSet<FileId>,
        owed: &mut Vec<Owed>,
    ) {
        let path = self.spec.path.clone();
        let is_current = current.is_some_and(|c| c.id == cp.id);
        if let Some(c) = current.filter(|_| is_current) {
            if cp.same_file(c.born, c.head) && c.size >= cp.offset {
                return; // the live file: resumed where it was
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
            if Compression::of(&f.head) == Some(Compression::Gzip) && cp.state == FileState::Copy {
                // A compressed copy we were already recovering from.
                owed.push(Owed::Gzip {
                    path: f.path,
                    id: cp.id,
                    offset: cp.offset,
                    fingerprint: cp.fingerprint,
                });
                seen.insert(cp.id);
                return;
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
                return; // found; read to its end already, or queued now
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
            return;
        }
        if let Some((gz, gz_id)) =
            siblings::compressed_copy(dir, base, cp.fingerprint, scope(&self.spec, &self.shared))
        {
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
            return;
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
            self.registry().propose(Proposal::Forget { id: cp.id });
        }
    }

    /// Files rotated after the last checkpoint on disk (the agent was killed before it
    /// wrote down the files it had just started): rotation-named text files the ledger
    /// does not know, written since `t` (the ledger's last update, s since the epoch),
    /// or since the moment an entry was recorded empty (`empty_since`, ns), when the
    /// copy may also have been compressed already.
    fn owed_unknown_since(
        &mut self,
        t: u64,
        empty_since: Option<u64>,
        current: Option<AtPath<'_>>,
        (dir, base): (&Path, &str),
        seen: &mut HashSet<FileId>,
        owed: &mut Vec<Owed>,
    ) {
        let path = self.spec.path.clone();
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

    /// Where to start reading a freshly opened file at the path, recorded in the ledger.
    pub(super) fn start_offset(
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
                reg.propose(Proposal::Forget { id });
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
            reg.propose(Proposal::Start {
                id,
                generation,
                path,
                fingerprint: Fingerprint::of(head),
                offset,
                empty_mtime_ns: mtime_ns,
            });
        }
        reg.propose(Proposal::Born { id, born });
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::id_of;
    use super::*;
    use crate::registry::Checkpoint;

    /// What the ledger would hold of `id` under `path` after a commit at `offset`.
    fn commit(t: &Tailer, id: FileId, path: &Path, head: &[u8], offset: u64) {
        t.registry().propose(Proposal::Start {
            id,
            generation: 1,
            path: &t.spec.path,
            fingerprint: Fingerprint::of(head),
            offset,
            empty_mtime_ns: None,
        });
        let name = path.to_string_lossy();
        if path != Path::new(&t.spec.path) {
            t.registry().propose(Proposal::State {
                id,
                state: FileState::Rotated,
                name: Some(&name),
                size: 0,
            });
        }
    }

    fn setup(content: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("app.log");
        fs::write(&log, content).unwrap();
        (d, log)
    }

    #[test]
    fn the_start_view_scans_only_when_the_ledger_knows_more_than_the_file_at_the_path() {
        let head = b"first line\n";
        let entry = |ino: u64, offset: u64, updated: u64, truncated_at: Option<u64>| Checkpoint {
            path: "/l/app.log".into(),
            id: FileId { dev: 1, ino },
            fingerprint: Fingerprint::of(head),
            offset,
            updated,
            state: FileState::Live,
            name: None,
            size: offset,
            born: None,
            truncated_at,
            empty_mtime_ns: None,
        };
        let at = |ino: u64, size: u64| AtPath {
            id: FileId { dev: 1, ino },
            head,
            size,
            born: None,
            modified: Some(1),
        };
        // The file at the path, grown since: nothing to look for.
        let v = StartView::of(&[entry(1, 100, 50, None)], Some(at(1, 200)));
        assert_eq!(
            v,
            StartView {
                last_known: Some(50),
                empty_since: None,
                undisturbed: true
            }
        );
        // Another file at the path: what the ledger knew may have been rotated away.
        assert!(!StartView::of(&[entry(1, 100, 50, None)], Some(at(2, 10))).undisturbed);
        // Shorter than what was read: truncated (or replaced) while not followed.
        assert!(!StartView::of(&[entry(1, 100, 50, None)], Some(at(1, 10))).undisturbed);
        // A second entry (a rotated file): not undisturbed, and the last news is the
        // newest entry's, or the truncation's if that was earlier.
        let v = StartView::of(
            &[entry(1, 100, 50, None), entry(2, 10, 70, Some(60))],
            Some(at(1, 100)),
        );
        assert_eq!((v.undisturbed, v.last_known), (false, Some(60)));
        // No file at the path: nothing is undisturbed.
        assert!(!StartView::of(&[entry(1, 100, 50, None)], None).undisturbed);
    }

    #[test]
    fn written_since_empty_needs_an_empty_entry_and_new_bytes_or_a_new_mtime() {
        let cp = |len: u32, empty_mtime_ns: Option<u64>, updated: u64| Checkpoint {
            path: "/l/app.log".into(),
            id: FileId { dev: 1, ino: 1 },
            fingerprint: Fingerprint { len, hash: 0 },
            offset: 0,
            updated,
            state: FileState::Live,
            name: None,
            size: 0,
            born: None,
            truncated_at: None,
            empty_mtime_ns,
        };
        // An entry with a head is not "empty", whatever the file does.
        assert!(!written_since_empty(&cp(5, Some(1), 0), 100, Some(2)));
        // Empty then, bytes now.
        assert!(written_since_empty(&cp(0, Some(1), 0), 1, Some(1)));
        // Still empty: only another mtime tells a write (and a truncation) since.
        assert!(!written_since_empty(&cp(0, Some(7), 0), 0, Some(7)));
        assert!(written_since_empty(&cp(0, Some(7), 0), 0, Some(8)));
        assert!(written_since_empty(&cp(0, Some(7), 0), 0, None));
        // No mtime recorded: modified in or after the second of the last update.
        assert!(!written_since_empty(
            &cp(0, None, 10),
            0,
            Some(9_999_999_999)
        ));
        assert!(written_since_empty(
            &cp(0, None, 10),
            0,
            Some(10_000_000_000)
        ));
        assert!(!written_since_empty(&cp(0, None, 10), 0, None));
    }

    #[test]
    fn a_never_followed_path_from_end_starts_at_its_end_and_says_so_in_the_ledger() {
        let (d, log) = setup("old\nlines\n");
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        t.spec.entry.from = StartFrom::End;
        assert_eq!(t.open_path(), Ok(true));
        assert_eq!(t.open.as_ref().unwrap().lines.read_offset(), 10);
        let reg = t.registry();
        let c = reg.get(id_of(&log)).unwrap();
        assert_eq!(
            (c.offset, c.fingerprint),
            (10, Fingerprint::of(b"old\nlines\n"))
        );
        assert!(reg.path_known(&t.spec.path));
    }

    #[test]
    fn a_new_file_at_a_path_followed_before_starts_at_zero_even_from_end() {
        let (d, log) = setup("old\nlines\n");
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        t.spec.entry.from = StartFrom::End;
        let path = t.spec.path.clone();
        t.registry().propose(Proposal::Followed {
            paths: vec![&path],
            now: crate::registry::unix_now(),
        });
        assert_eq!(t.open_path(), Ok(true));
        assert_eq!(t.open.as_ref().unwrap().lines.read_offset(), 0);
        assert_eq!(t.registry().get(id_of(&log)).unwrap().offset, 0);
    }

    #[test]
    fn a_known_file_resumes_at_its_ledger_offset() {
        let (d, log) = setup("one\ntwo\n");
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        commit(&t, id_of(&log), &log, b"one\ntwo\n", 4);
        assert_eq!(t.open_path(), Ok(true));
        assert!(t.backlog.is_empty());
        assert_eq!(t.open.as_ref().unwrap().lines.read_offset(), 4);
        assert_eq!(t.registry().get(id_of(&log)).unwrap().offset, 4);
    }

    #[test]
    fn a_file_truncated_while_not_followed_starts_again_at_zero() {
        let (d, log) = setup("one\n");
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        // Committed at 100 with these first bytes; only 4 bytes now.
        commit(&t, id_of(&log), &log, b"one\n", 100);
        assert_eq!(t.open_path(), Ok(true));
        assert_eq!(t.open.as_ref().unwrap().lines.read_offset(), 0);
        assert_eq!(t.registry().get(id_of(&log)).unwrap().offset, 0);
    }

    #[test]
    fn a_copy_made_while_not_followed_owes_its_rest_from_the_ledger_offset() {
        // copytruncate while the agent was stopped: app.log.1 holds what app.log held
        // (read to 8 of 14), app.log was truncated and written again.
        let (d, log) = setup("one\ntwo\nthree\n");
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        let id = id_of(&log);
        commit(&t, id, &log, b"one\ntwo\nthree\n", 8);
        let copy = d.path().join("app.log.1");
        fs::copy(&log, &copy).unwrap();
        fs::write(&log, "new\n").unwrap();
        assert_eq!(t.open_path(), Ok(false), "the copy first");
        assert!(t.open.is_none());
        let want = Owed::Plain {
            path: copy.clone(),
            id: id_of(&copy),
            offset: 8,
            size: 14,
            state: FileState::Copy,
        };
        assert_eq!(t.backlog.iter().collect::<Vec<_>>(), vec![&want]);
    }

    #[test]
    fn a_rotated_file_found_again_by_inode_owes_its_rest() {
        let (d, log) = setup("old one\nold two\n");
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        let old = id_of(&log);
        commit(&t, old, &log, b"old one\nold two\n", 8);
        // Rotated twice while not followed: the ledger's name for it is stale.
        let rotated = d.path().join("app.log.2");
        fs::rename(&log, &rotated).unwrap();
        fs::write(&log, "new\n").unwrap();
        assert_eq!(t.open_path(), Ok(false));
        let want = Owed::Plain {
            path: rotated.clone(),
            id: old,
            offset: 8,
            size: 16,
            state: FileState::Rotated,
        };
        assert_eq!(t.backlog.front(), Some(&want));
        assert_eq!(t.backlog.len(), 1);
    }

    #[test]
    fn a_file_deleted_while_not_followed_counts_its_unread_bytes_as_lost() {
        let (d, log) = setup("new\n");
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        let gone = FileId {
            dev: u64::MAX,
            ino: 1,
        };
        commit(&t, gone, &d.path().join("app.log.1"), b"gone content\n", 3);
        t.registry().propose(Proposal::Size { id: gone, size: 10 });
        assert_eq!(t.open_path(), Ok(true), "nothing owed: the path");
        assert_eq!(t.metrics.bytes_lost(Loss::Deleted), 7);
        assert!(t.registry().get(gone).is_none(), "forgotten");
        assert_eq!(t.open.as_ref().unwrap().id, id_of(&log));
    }

    #[test]
    fn files_owed_are_read_oldest_first() {
        let (d, log) = setup("new\n");
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        let (p1, p2) = (d.path().join("app.log.1"), d.path().join("app.log.2"));
        fs::write(&p1, "first file\n").unwrap();
        fs::write(&p2, "second file\n").unwrap();
        let (mut a, mut b) = ((p1.clone(), id_of(&p1)), (p2.clone(), id_of(&p2)));
        if a.1 > b.1 {
            std::mem::swap(&mut a, &mut b);
        }
        // The ledger lists `a` (smaller inode, committed first) first; `b` was written
        // before it.
        commit(&t, a.1, &a.0, &fs::read(&a.0).unwrap(), 2);
        commit(&t, b.1, &b.0, &fs::read(&b.0).unwrap(), 2);
        let now = SystemTime::now();
        let set = |p: &Path, when: SystemTime| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(when)
                .unwrap()
        };
        set(&a.0, now - Duration::from_secs(10));
        set(&b.0, now - Duration::from_secs(20));
        assert_eq!(t.open_path(), Ok(false));
        let order: Vec<FileId> = t.backlog.iter().map(owed_id).collect();
        assert_eq!(order, vec![b.1, a.1], "by modification time, oldest first");
    }
}
