//! Opening the followed path: what is at it (a regular file, inside the allow-list, one link,
//! not compressed), claiming it as its only reader, resuming it at its ledger offset, and
//! watching it (inotify or polling).

use super::*;

/// The file at the path, checked and open for reading.
struct AtHand {
    file: File,
    meta: fs::Metadata,
    id: FileId,
    head: Vec<u8>,
}

impl Tailer {
    /// Tries to open the path. Ok(true): open; Ok(false): not there yet (or the ledger
    /// owes files to read first: then the backlog is filled); Err: refused.
    #[inline(never)]
    pub(super) fn open_path(&mut self) -> Result<bool, ()> {
        let path = self.spec.path.clone();
        let Some(AtHand {
            file,
            meta,
            id,
            head,
        }) = self.checked_open(&path)?
        else {
            return Ok(false);
        };
        if self.spec.entry.is_glob() && self.copy_being_taken_over(&path, id, &head) {
            return Ok(false);
        }
        self.copy_wait = None;
        // The reading generation for this file, registered now: at the first open it
        // must be the only live reader of the file (checked and registered in one step,
        // so two tailers opening the same file at once cannot both win).
        let generation = self.next_generation();
        let source = self.make_source(id, generation);
        if !self.claim_or_wait(&source, &path)? {
            return Ok(false);
        }
        self.clear_problem();
        if self.owed_first(&path, &meta, id, &head, generation) {
            return Ok(false);
        }
        let offset = self.start_offset(
            id,
            generation,
            &head,
            meta.len(),
            born(&meta),
            crate::identity::mtime_ns(&meta),
        );
        self.registry().propose(Proposal::TruncationDone { id });
        self.open_at(file, id, offset, &head, source, FileState::Live)
    }

    /// What is at the path, checked and opened: `None` if nothing is there yet (files
    /// rotated away from it may still owe bytes: queued at the first look); Err (said
    /// once) if it may not be read: not a regular file, outside the allow-list, a second
    /// hard link, compressed, or unreadable.
    fn checked_open(&mut self, path: &str) -> Result<Option<AtHand>, ()> {
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
                return Ok(None);
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
        Ok(Some(AtHand {
            file,
            meta,
            id,
            head,
        }))
    }

    /// A glob match that is a copytruncate copy of a file another tailer reads now:
    /// that tailer takes the copy over when it sees the truncation (a moment later,
    /// woken by the same change), recording in the ledger where the copy starts. True
    /// while this one waits for that (unclaimed, so it can) instead of guessing from what
    /// Kafka had acknowledged of the original, which lags what its reader already sent.
    fn copy_being_taken_over(&mut self, path: &str, id: FileId, head: &[u8]) -> bool {
        let original = {
            let reg = self.registry();
            reg.get(id)
                .is_none()
                .then(|| copy_of(&reg, path, id, head))
                .flatten()
        };
        if let Some((other, _, other_id)) = original {
            let since = *self.copy_wait.get_or_insert_with(Instant::now);
            if self.shared.is_live(other_id) && since.elapsed() < COPY_WAIT {
                self.problem(
                    format!("{path}: is a copy of {other}, which is being read; waiting for its reader to take it over"),
                    false,
                );
                return true;
            }
        }
        false
    }

    /// Claims the file as its only reader. Ok(false): another reader holds it and this
    /// one waits (said once); Err: the file is another entry's already.
    fn claim_or_wait(&mut self, source: &Arc<Source>, path: &str) -> Result<bool, ()> {
        // Checked and registered in one step, so two tailers opening the same file at
        // once cannot both win.
        match self.shared.claim(source).map_err(|o| o.path.clone()) {
            Ok(()) => Ok(true),
            // A tailer of this path was stopped a moment ago (config change), or this
            // tailer's own earlier reading still has lines in flight: the ledger offset
            // is behind what was sent. Starting from there would send those lines
            // twice; wait for the acknowledgements instead.
            Err(other) if other == path => {
                self.problem(
                    format!("{path}: waiting for Kafka to acknowledge what was read of it before"),
                    false,
                );
                Ok(false)
            }
            // The file at this path is read under another name right now: a rotation
            // still in its quiet wait (a glob that matches rotated names). Look again
            // later; it resumes where that reader's lines were acknowledged.
            Err(other) if self.seen_before || self.spec.exit_when_gone => {
                self.problem(
                    format!("{path}: is read as {other} right now (rotated there); waiting"),
                    false,
                );
                Ok(false)
            }
            // Two entries name one file (a symlink, a second path): read it once.
            Err(other) => {
                self.problem(
                    format!("{path}: is the same file as {other}, which is already followed; not reading it twice"),
                    true,
                );
                Err(())
            }
        }
    }

    /// Files to read before the one at the path: what the ledger owes at the first open,
    /// what changed while a truncated file was deferred, rotations made while the path
    /// was away. True if the backlog was filled (the path is opened again after it).
    fn owed_first(
        &mut self,
        path: &str,
        meta: &fs::Metadata,
        id: FileId,
        head: &[u8],
        generation: u64,
    ) -> bool {
        if !self.seen_before {
            self.seen_before = true;
            let modified = crate::identity::mtime_ns(meta);
            self.queue_owed_at_start(Some(AtPath {
                id,
                head,
                size: meta.len(),
                born: born(meta),
                modified,
            }));
            if !self.backlog.is_empty() {
                // Read what the ledger still owes first; the path is opened again after.
                return true;
            }
        }
        if let Some(left) = self.deferred.take() {
            if self.queue_changed_while_deferred(left, id, head, meta.len(), born(meta)) {
                // Opened again once those are read. Still the file we left: what it
                // holds now is all new (committed at 0 with its head).
                if id == left.0 {
                    self.registry()
                        .commit(id, generation, path, Fingerprint::of(head), 0);
                }
                self.deferred = Some((id, SystemTime::now()));
                return true;
            }
        }
        if let Some((old, opened_at, counted, deleted)) = self.renamed_away.take() {
            if rotation::completes_rotation(old, deleted, id) {
                if !counted {
                    self.metrics.rotations.fetch_add(1, Ordering::Relaxed);
                }
                let missed = self.missed_rotations(old, id, opened_at, Duration::from_secs(1));
                self.queue_backlog(missed);
                if !self.backlog.is_empty() {
                    // Rotations made meanwhile are read first; the path after them.
                    return true;
                }
            }
        }
        false
    }

    /// Back at the path after the truncated file `left` was closed at `since` to read
    /// its copy first (`id`, `head`, `size`, `born`: the file at the path now). Queues,
    /// oldest first, what changed meanwhile: `left` renamed away (read on from its
    /// committed offset), truncated again (the copy holding what it had, from that
    /// offset), and copies or rotations made since. True if any was queued.
    pub(super) fn queue_changed_while_deferred(
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
    pub(super) fn open_at(
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
    pub(super) fn watch_open_file(&mut self) {
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
    pub(super) fn watched(&self) -> bool {
        self.dir_watch.as_ref().is_some_and(Watch::alive)
            && self
                .open
                .as_ref()
                .and_then(|o| o.watch.as_ref())
                .is_some_and(Watch::alive)
    }

    #[inline(never)]
    pub(super) fn set_polled(&mut self, polled: bool) {
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
}

#[cfg(test)]
mod tests {
    use super::super::testkit::id_of;
    use super::*;

    fn problem(t: &Tailer) -> String {
        t.last_problem.clone().unwrap_or_default()
    }

    #[test]
    fn a_regular_file_is_opened_claimed_and_recorded_at_its_start() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("app.log");
        fs::write(&log, "one\ntwo\n").unwrap();
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        assert_eq!(t.open_path(), Ok(true));
        let id = id_of(&log);
        let of = t.open.as_ref().unwrap();
        assert_eq!(of.id, id);
        assert_eq!(of.state, FileState::Live);
        assert_eq!(of.lines.read_offset(), 0);
        assert_eq!(of.fingerprint, Fingerprint::of(b"one\ntwo\n"));
        assert_eq!(of.source.file, id);
        assert!(t.shared.is_live(id), "claimed as its only reader");
        assert!(t.seen_before && t.last_problem.is_none());
        assert!(t.polled, "no inotify: polled");
        let reg = t.registry();
        let c = reg.get(id).unwrap();
        assert_eq!(c.offset, 0);
        assert_eq!(c.path, log.to_str().unwrap());
        assert_eq!(c.fingerprint, Fingerprint::of(b"one\ntwo\n"));
        assert_eq!(c.state, FileState::Live);
    }

    #[test]
    fn a_missing_path_is_waited_for_and_a_file_there_later_is_new() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("app.log");
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        t.spec.entry.from = StartFrom::End;
        // As the supervisor does before it starts a tailer: the path is followed now.
        let path = t.spec.path.clone();
        t.registry().propose(Proposal::Followed {
            paths: vec![&path],
            now: crate::registry::unix_now(),
        });
        assert_eq!(t.open_path(), Ok(false));
        assert!(
            problem(&t).contains("does not exist yet"),
            "{}",
            problem(&t)
        );
        assert!(t.shared.problems.lock().unwrap().contains_key(&t.spec.path));
        assert!(t.seen_before);
        assert!(t.open.is_none() && t.backlog.is_empty());
        // Created after the path was followed: all of it is new, `from: end` or not.
        fs::write(&log, "first\n").unwrap();
        assert_eq!(t.open_path(), Ok(true));
        assert_eq!(t.open.as_ref().unwrap().lines.read_offset(), 0);
        assert!(t.last_problem.is_none());
        assert!(!t.shared.problems.lock().unwrap().contains_key(&t.spec.path));
    }

    /// A FIFO (or a directory) at the path is refused from its `O_PATH` descriptor: never
    /// opened for reading. With no writer, a blocking open for reading would hang here.
    #[test]
    fn a_fifo_or_a_directory_at_the_path_is_refused_without_being_opened() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("app.log");
        let c = std::ffi::CString::new(log.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path in our own temp dir.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        assert_eq!(t.open_path(), Err(()));
        assert!(
            problem(&t).contains("is a FIFO, not a regular file"),
            "{}",
            problem(&t)
        );
        assert!(t.open.is_none());
        assert!(t.registry().entries_for_path(&t.spec.path).is_empty());
        fs::remove_file(&log).unwrap();
        fs::create_dir(&log).unwrap();
        assert_eq!(t.open_path(), Err(()));
        assert!(problem(&t).contains("is a directory"), "{}", problem(&t));
    }

    #[test]
    fn a_symlink_is_followed_only_into_the_allow_list() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let real_dir = fs::canonicalize(d.path()).unwrap();
        let allowed = Arc::new(AllowList::new(&[format!("{}/*.log", real_dir.display())]));
        fs::write(d.path().join("real.log"), "inside\n").unwrap();
        let log = d.path().join("app.log");
        std::os::unix::fs::symlink(d.path().join("real.log"), &log).unwrap();
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        t.spec.allowed = Some(allowed.clone());
        assert_eq!(t.open_path(), Ok(true));
        let of = t.open.as_ref().unwrap();
        assert_eq!(
            of.id,
            id_of(&d.path().join("real.log")),
            "the target's inode"
        );

        let secret = outside.path().join("secret.log");
        fs::write(&secret, "secret\n").unwrap();
        let other = d.path().join("other.log");
        std::os::unix::fs::symlink(&secret, &other).unwrap();
        let (mut t, _rx, _stop) = Tailer::for_test(&other, &d.path().join("data2"), 8);
        t.spec.allowed = Some(allowed);
        assert_eq!(t.open_path(), Err(()));
        let why = problem(&t);
        assert!(
            why.contains("resolves to") && why.contains("secret.log"),
            "{why}"
        );
        assert!(t.open.is_none() && !t.shared.is_live(id_of(&secret)));
    }

    #[test]
    fn a_file_with_a_second_link_is_refused_unless_links_are_allowed() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = d.path().join("elsewhere");
        fs::write(&elsewhere, "x\n").unwrap();
        let log = d.path().join("app.log");
        fs::hard_link(&elsewhere, &log).unwrap();
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        assert_eq!(t.open_path(), Err(()));
        assert!(problem(&t).contains("has 2 hard links"), "{}", problem(&t));
        assert!(t.open.is_none());
        t.shared.allow_hardlinks = true;
        assert_eq!(t.open_path(), Ok(true));
        assert_eq!(t.open.as_ref().unwrap().id, id_of(&elsewhere));
    }

    #[test]
    fn a_compressed_file_is_never_read_as_text() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("app.log");
        fs::write(&log, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).unwrap();
        let (mut t, _rx, _stop) = Tailer::for_test(&log, &d.path().join("data"), 8);
        assert_eq!(t.open_path(), Err(()));
        assert!(
            problem(&t).contains("is gzip-compressed"),
            "{}",
            problem(&t)
        );
        assert!(t.open.is_none());
        assert!(t.registry().get(id_of(&log)).is_none());
    }

    #[test]
    fn a_file_another_reader_holds_is_waited_for_or_refused() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("app.log");
        fs::write(&log, "x\n").unwrap();
        let (mut first, _rx, _stop) = Tailer::for_test(&log, &d.path().join("d1"), 8);
        assert_eq!(first.open_path(), Ok(true));
        // The same path again (a tailer restarted while the first one's lines are in
        // flight): it waits for the acknowledgements.
        let (mut again, _rx2, _stop2) = Tailer::for_test(&log, &d.path().join("d2"), 8);
        again.shared.live = first.shared.live.clone();
        assert_eq!(again.open_path(), Ok(false));
        assert!(problem(&again).contains("waiting for Kafka to acknowledge"));
        assert!(again.open.is_none());
        // A second name for the same file, at its first open: read once, refused here.
        let alias = d.path().join("alias.log");
        std::os::unix::fs::symlink(&log, &alias).unwrap();
        let (mut other, _rx3, _stop3) = Tailer::for_test(&alias, &d.path().join("d3"), 8);
        other.shared.live = first.shared.live.clone();
        assert_eq!(other.open_path(), Err(()));
        let why = problem(&other);
        assert!(
            why.contains("is the same file as") && why.contains("app.log"),
            "{why}"
        );
        // Opened before (a rotation read under the other name now): it waits.
        other.seen_before = true;
        assert_eq!(other.open_path(), Ok(false));
        assert!(
            problem(&other).contains("is read as"),
            "{}",
            problem(&other)
        );
        // Once the first reader lets go, the file is free.
        first.open = None;
        assert_eq!(again.open_path(), Ok(true));
    }
}
