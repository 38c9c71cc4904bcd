//! The follow loop of one open file: read what is new, drain rotated files until they are
//! quiet, and at the end of the data decide (from a look at the path) whether to stay,
//! reopen the path, or leave the file.

use super::*;

impl Tailer {
    /// Reads the open file until it is stopped, rotated away or deleted.
    /// The functions it calls on a change are `#[inline(never)]`: inlined, their locals
    /// made this frame 9 KiB, kept resident on the stack of every idle tailer.
    pub(super) fn follow(&mut self) -> Leave {
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
                    reg.propose(Proposal::Head {
                        id: of.id,
                        fingerprint: of.fingerprint,
                    });
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
    pub(super) fn service_rotated(&mut self) -> bool {
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
    pub(super) fn finish_file(&mut self, mut of: OpenFile) -> bool {
        if !self.ship_from(&mut of, true) {
            return false;
        }
        let end = of.lines.read_offset();
        if of.state != FileState::Live {
            self.registry().propose(Proposal::State {
                id: of.id,
                state: of.state,
                name: None,
                size: end,
            });
        }
        self.let_go(&of);
        debug!(
            "{}: done with rotated file inode {} after {end} bytes",
            self.spec.path, of.id.ino
        );
        true
    }

    /// At EOF: detects truncation, rotation and deletion. `Some` when the file is left.
    #[inline(never)]
    pub(super) fn on_eof(&mut self) -> Option<Leave> {
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
                        reg.propose(Proposal::Size {
                            id: of.id,
                            size: of.seen_size,
                        });
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
    pub(super) fn leave_file(
        &mut self,
        now_at_path: Option<FileId>,
        deleted: bool,
    ) -> Option<Leave> {
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
                self.renamed_away = Some((of.id, of.opened_at, now_at_path.is_some(), deleted));
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
        self.registry().propose(Proposal::State {
            id: of.id,
            state: FileState::Rotated,
            name: None,
            size: end.max(of.seen_size),
        });
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
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crossbeam_channel::Receiver;

    /// A tailer with `content` at its path, opened (from the beginning).
    fn opened(content: &str) -> (tempfile::TempDir, PathBuf, Tailer, Receiver<Chunk>, Stopper) {
        let (d, log, mut t, rx, stop) = setup(content);
        assert_eq!(t.open_path(), Ok(true));
        (d, log, t, rx, stop)
    }

    #[test]
    fn at_eof_an_unchanged_file_stays_and_its_growth_is_noted() {
        let (_d, log, mut t, rx, _stop) = opened("a\n");
        read(&mut t);
        assert!(t.on_eof().is_none());
        assert!(t.open.is_some() && t.rotated.is_empty());
        assert_eq!(t.truncations, 0);
        append(&log, "b\n");
        assert!(t.on_eof().is_none());
        assert_eq!(t.open.as_ref().unwrap().seen_size, 4);
        assert_eq!(t.registry().get(id_of(&log)).unwrap().size, 4);
        assert_eq!(lines(&rx), ["a"]);
    }

    #[test]
    fn a_truncated_file_is_read_again_from_zero_as_a_new_generation() {
        let (_d, log, mut t, rx, _stop) = opened("one\ntwo\n");
        read(&mut t);
        let (id, first) = {
            let of = t.open.as_ref().unwrap();
            (of.id, of.source.id)
        };
        fs::write(&log, "x\n").unwrap();
        assert!(t.on_eof().is_none(), "still the file at the path");
        assert_eq!(t.truncations, 1);
        let of = t.open.as_ref().unwrap();
        assert_eq!((of.id, of.state), (id, FileState::Live));
        assert_eq!(of.lines.read_offset(), 0);
        let second = of.source.id;
        assert_ne!(second, first, "a new generation");
        {
            let reg = t.registry();
            let c = reg.get(id).unwrap();
            assert_eq!((c.offset, c.size), (0, 2));
            assert_eq!(c.fingerprint, Fingerprint::of(b"x\n"));
        }
        read(&mut t);
        let chunks: Vec<Chunk> = rx.try_iter().collect();
        let last = chunks.last().unwrap();
        assert_eq!((last.base, last.source.id), (0, second));
        assert_eq!(last.payload(0), b"x");
        assert_eq!(
            t.metrics.bytes_lost_total(),
            0,
            "nothing was past what was read"
        );
    }

    #[test]
    fn a_file_rewritten_past_its_offset_is_read_again_from_zero() {
        let (_d, log, mut t, rx, _stop) = opened("aaaa\n");
        read(&mut t);
        // Same inode, larger than what was read, other first bytes.
        fs::write(&log, "bbbbbbbb\n").unwrap();
        assert!(t.on_eof().is_none());
        assert_eq!(t.truncations, 1);
        assert_eq!(t.open.as_ref().unwrap().lines.read_offset(), 0);
        read(&mut t);
        assert_eq!(lines(&rx), ["aaaa", "bbbbbbbb"]);
    }

    #[test]
    fn a_renamed_file_is_read_until_quiet_and_the_new_file_is_next() {
        let (d, log, mut t, rx, _stop) = opened("old\n");
        read(&mut t);
        let old = id_of(&log);
        let rotated = d.path().join("app.log.1");
        fs::rename(&log, &rotated).unwrap();
        append(&rotated, "late\n");
        fs::write(&log, "new\n").unwrap();
        assert!(matches!(t.on_eof(), Some(Leave::Gone)));
        assert!(t.open.is_none());
        assert_eq!(t.rotated.len(), 1);
        assert_eq!(
            (t.rotated[0].id, t.rotated[0].state),
            (old, FileState::Rotated)
        );
        assert_eq!(lines(&rx), ["old", "late"], "read to its end on leaving");
        {
            let reg = t.registry();
            let c = reg.get(old).unwrap();
            assert_eq!((c.state, c.size), (FileState::Rotated, 9));
        }
        let (id, _, counted, deleted) = t.renamed_away.unwrap();
        assert_eq!((id, counted, deleted), (old, true, false));
        assert_eq!(t.metrics.rotations.load(Ordering::Relaxed), 1);
        // Written once more, then quiet for rotate_wait: its last (partial) line is
        // handed on and it is closed.
        append(&rotated, "end");
        t.shared.rotate_wait = Duration::ZERO;
        assert!(t.service_rotated());
        assert!(t.rotated.is_empty());
        let last: Vec<Chunk> = rx.try_iter().collect();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].payload(0), b"end");
        assert_eq!(t.registry().get(old).unwrap().size, 12);
        // Let go under its rotation name, unknown to the ledger: the producer keeps what
        // it holds of it as the last copy (an entry removed meanwhile has no next reader).
        assert_eq!(last[0].source.left(), Left::Unreachable);
    }

    #[test]
    fn a_renamed_file_moved_out_of_the_directory_is_let_go_unreachable() {
        let (d, log, mut t, rx, _stop) = opened("old\n");
        read(&mut t);
        let elsewhere = tempfile::tempdir().unwrap();
        let moved = elsewhere.path().join("app.log.1");
        // Not a rename across file systems: a link in the other directory, then the
        // original name removed (same inode, no name under the followed directory).
        fs::hard_link(&log, &moved).unwrap();
        fs::remove_file(&log).unwrap();
        fs::write(&log, "new\n").unwrap();
        assert!(matches!(t.on_eof(), Some(Leave::Gone)));
        t.shared.rotate_wait = Duration::ZERO;
        append(&moved, "end");
        assert!(t.service_rotated());
        let last: Vec<Chunk> = rx.try_iter().collect();
        let end = last.last().unwrap();
        assert_eq!(end.source.left(), Left::Unreachable);
        drop(d);
    }

    #[test]
    fn a_rename_with_no_new_file_yet_waits_and_a_held_rotation_stays_open() {
        let (d, log, mut t, _rx, _stop) = opened("old\n");
        read(&mut t);
        let old = id_of(&log);
        fs::rename(&log, d.path().join("app.log.1")).unwrap();
        assert!(matches!(t.on_eof(), Some(Leave::Gone)));
        let (id, _, counted, _) = t.renamed_away.unwrap();
        assert_eq!(
            (id, counted),
            (old, false),
            "the rotation completes at the next open"
        );
        assert_eq!(t.metrics.rotations.load(Ordering::Relaxed), 0);
        assert_eq!(t.rotated.len(), 1);
        // Kafka refuses its records: it stays open however long it is quiet.
        t.rotated[0].source.paused.store(true, Ordering::Relaxed);
        t.shared.rotate_wait = Duration::ZERO;
        assert!(t.service_rotated());
        assert_eq!(t.rotated.len(), 1);
        t.rotated[0].source.paused.store(false, Ordering::Relaxed);
        assert!(t.service_rotated());
        assert!(t.rotated.is_empty());
    }

    #[test]
    fn a_deleted_file_is_read_to_its_end_and_closed() {
        let (_d, log, mut t, rx, _stop) = opened("a\nb");
        read(&mut t);
        fs::remove_file(&log).unwrap();
        assert!(matches!(t.on_eof(), Some(Leave::Gone)));
        assert!(t.open.is_none() && t.rotated.is_empty());
        assert!(t.renamed_away.is_none(), "nothing to complete");
        let chunks: Vec<Chunk> = rx.try_iter().collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].payload(0), b"b", "its last partial line too");
        assert_eq!(chunks[1].base, 2);
        assert_eq!(chunks[1].source.left(), Left::Deleted);
    }

    #[test]
    fn a_file_written_and_emptied_between_two_looks_is_read_again() {
        let (_d, log, mut t, _rx, _stop) = opened("");
        let first = t.open.as_ref().unwrap().source.id;
        assert!(t.on_eof().is_none(), "the first look notes its mtime");
        assert_eq!(t.truncations, 0);
        // copytruncate of a file about to be read from its start: no size ever shows it.
        fs::write(&log, "x\n").unwrap();
        let f = File::options().write(true).open(&log).unwrap();
        f.set_len(0).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000))
            .unwrap();
        assert!(t.on_eof().is_none());
        assert_eq!(t.truncations, 1);
        assert_ne!(t.open.as_ref().unwrap().source.id, first);
    }
}
