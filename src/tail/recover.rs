//! Truncation and recovery: a truncated file's unread part read from its copy first,
//! rotations missed between two looks, files owed from before opened again (also through
//! gzip), and bytes that truly cannot be read counted as lost.

use super::*;

impl Tailer {
    /// The open file was truncated: read it again from 0 as a new generation, after the
    /// part the truncation took is recovered from its copy.
    #[inline(never)]
    pub(super) fn restart_file(&mut self, why: &str) {
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
            // What a later loss of it counts is of the new content: the size before the
            // truncation would count bytes already shipped (or recovered from the copy)
            // as lost if it is truncated again while the agent is stopped.
            reg.propose(Proposal::ReadAgain {
                id,
                generation: src.id,
                path: &path,
                head: head_now,
                size: size_now,
            });
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
                reg.propose(Proposal::Copy {
                    copy: c.id,
                    generation: copy_generation,
                    path: &path,
                    fingerprint: fp,
                    offset: acked,
                    name: &c.path.to_string_lossy(),
                    size: c.size,
                    born: c.born,
                    original: id,
                    original_generation: old_generation,
                });
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
    pub(super) fn defer(&mut self, id: FileId) {
        self.deferred = Some((id, SystemTime::now()));
        let size = fs::metadata(&self.spec.path)
            .ok()
            .filter(|m| FileId::of(m) == id)
            .map_or(0, |m| m.len());
        let mut reg = self.registry();
        reg.propose(Proposal::TruncationMarked {
            id,
            at: crate::registry::unix_now(),
            size,
        });
    }

    /// Counts bytes `from..to` of the file as lost for `why` and says so, once per event.
    pub(super) fn lose_bytes(&self, why: Loss, from: u64, to: u64, what: &str) {
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
    pub(super) fn queue_backlog(&mut self, missed: Vec<Owed>) {
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
    pub(super) fn missed_rotations(
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
    /// False if it waits for an earlier reading's acknowledgements (put back first in
    /// the backlog: look again after a pause).
    #[inline(never)]
    pub(super) fn open_owed(&mut self, owed: Owed) -> bool {
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
                return true;
            }
        };
        let Some((dir, base)) = siblings::split(&self.spec.path) else {
            return true;
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
            self.registry().propose(Proposal::Forget { id });
            return true;
        };
        let generation = self.next_generation();
        // The only reader of the file (checked and registered in one step). An earlier
        // reading under this path still has lines in flight (its tailer let go after
        // the quiet wait while Kafka was down, and the path came back): its
        // acknowledgements move the ledger past `offset`, so wait for them rather than
        // send those lines twice. Not when that reader was stopped (its entry changed):
        // what it holds for a destination that refuses it may never be acknowledged,
        // and the entry's new reader reads it again (at least once: a stall would be
        // worse than duplicates). With exactly_once only then (the stopped reader's
        // file is held): otherwise everything it sent is in the open transaction and
        // committed with it (a refused record aborts it and the agent starts again),
        // and its slot goes with the next commit; reading at once would commit those
        // lines twice. Read under another name (a glob that matches the rotation):
        // that reader reads it to its end.
        let src = self.make_source(id, generation);
        match self.shared.claim(&src) {
            Ok(()) => {}
            Err(other)
                if other.path == self.spec.path
                    && other.reader_stop.is_stopped()
                    && (!self.shared.exactly_once || other.is_paused()) =>
            {
                self.shared.register(&src);
            }
            Err(other) if other.path == self.spec.path => {
                self.problem(
                    format!(
                        "{}: waiting for Kafka to acknowledge what was read of {} before reading its rest",
                        self.spec.path,
                        path.display()
                    ),
                    false,
                );
                self.backlog.push_front(Owed::Plain {
                    path,
                    id,
                    offset,
                    size,
                    state,
                });
                return false;
            }
            Err(other) => {
                info!(
                    "{}: {} is read as {} right now; that reader reads it to its end",
                    self.spec.path,
                    path.display(),
                    other.path
                );
                return true;
            }
        }
        self.clear_problem();
        let offset = {
            let mut reg = self.registry();
            // Acknowledgements since it was queued (an earlier reading's, waited for
            // above) can only have moved the ledger on from `offset`.
            let offset = match reg.get(id) {
                Some(c) if c.same_file(found.born, &found.head) && c.offset <= found.size => {
                    offset.max(c.offset)
                }
                _ => offset,
            };
            // Offsets already in the ledger for this file stay (a resume); a file never
            // seen starts at `offset` (0).
            let fp = match reg.get(id) {
                Some(c) if offset > 0 => c.fingerprint,
                _ => Fingerprint::default(),
            };
            reg.propose(Proposal::Reopened {
                id,
                generation,
                path: &self.spec.path,
                fingerprint: fp,
                offset,
                state,
                name: &found.path.to_string_lossy(),
                size: found.size,
                born: found.born,
            });
            offset
        };
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
        if offset == 0 {
            self.copies.remove(&id);
        }
        let _ = self.open_at(found.file, id, offset, &found.head, src, state);
        true
    }

    /// Reads the rest of a rotation that was compressed before it was read to its end:
    /// decompresses, skips to `offset` of the decompressed bytes, and ships the rest as
    /// the ledger entry `id` (offsets in decompressed bytes). Stopped meanwhile: the
    /// acknowledged offset is resumed at the next start.
    pub(super) fn read_gzip(&mut self, path: &Path, id: FileId, offset: u64, fp: Fingerprint) {
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
            reg.propose(Proposal::GzipRead {
                id,
                generation,
                path: &self.spec.path,
                fingerprint: fp,
                offset,
                name: &name,
            });
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
    pub(super) fn read_gzip_from(
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
        self.registry().propose(Proposal::State {
            id,
            state: FileState::Copy,
            name: None,
            size: end,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use std::io::Write;

    #[test]
    fn a_truncation_reads_the_unread_part_from_the_copy_first_then_the_file_from_zero() {
        let (d, log, mut t, rx, _stop) = setup("l1\nl2\n");
        assert_eq!(t.open_path(), Ok(true));
        read(&mut t);
        let id = id_of(&log);
        let first = t.open.as_ref().unwrap().source.id;
        // copytruncate: a line written after our last read, the copy, the truncation.
        append(&log, "l3\n");
        let copy = d.path().join("app.log.1");
        fs::copy(&log, &copy).unwrap();
        File::options()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        let copy_id = id_of(&copy);
        assert!(t.on_eof().is_none());
        assert_eq!(t.truncations, 1);
        let of = t.open.as_ref().unwrap();
        assert_eq!((of.id, of.state), (copy_id, FileState::Copy));
        assert_eq!(of.lines.read_offset(), 6, "where the original was read to");
        assert!(t.copies.contains(&copy_id));
        assert_eq!(t.deferred.map(|(f, _)| f), Some(id));
        {
            let mut reg = t.registry();
            let c = reg.get(copy_id).unwrap();
            assert_eq!(c.state, FileState::Copy);
            assert_eq!(c.name.as_deref(), copy.to_str());
            assert_eq!((c.offset, c.size), (0, 9), "what Kafka had acknowledged");
            let o = reg.get(id).unwrap();
            assert!(
                o.truncated_at.is_some(),
                "a restart now looks for newer copies"
            );
            assert_eq!(o.offset, 0);
            // A late acknowledgement of the truncated generation credits the copy.
            let fp = o.fingerprint;
            reg.commit(id, first, log.to_str().unwrap(), fp, 6);
            assert_eq!(reg.get(copy_id).unwrap().offset, 6);
            assert_eq!(reg.get(id).unwrap().offset, 0);
        }
        read(&mut t);
        assert_eq!(lines(&rx), ["l1", "l2", "l3"]);
        assert_eq!(t.metrics.bytes_lost_total(), 0);
        // The copy is done at its end: back to the truncated file, from 0.
        assert!(matches!(t.on_eof(), Some(Leave::Gone)));
        assert!(t.open.is_none());
        append(&log, "l4\n");
        assert_eq!(t.open_path(), Ok(true));
        let of = t.open.as_ref().unwrap();
        assert_eq!(
            (of.id, of.state, of.lines.read_offset()),
            (id, FileState::Live, 0)
        );
        assert!(t.deferred.is_none());
        assert_eq!(t.registry().get(id).unwrap().truncated_at, None);
        read(&mut t);
        assert_eq!(lines(&rx), ["l4"]);
    }

    #[test]
    fn a_truncation_without_a_copy_counts_what_it_took_as_lost() {
        let (_d, log, mut t, _rx, _stop) = setup("one\n");
        assert_eq!(t.open_path(), Ok(true));
        read(&mut t);
        append(&log, "two\n");
        assert!(t.on_eof().is_none(), "seen with 8 bytes");
        File::options()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert!(t.on_eof().is_none());
        assert_eq!(t.truncations, 1);
        assert_eq!(t.metrics.bytes_lost(Loss::Truncated), 4, "bytes 4..8");
        assert_eq!(t.open.as_ref().unwrap().lines.read_offset(), 0);
    }

    #[test]
    fn a_rotation_missed_between_two_looks_is_read_before_the_new_file() {
        let (d, log, mut t, rx, _stop) = setup("a\n");
        assert_eq!(t.open_path(), Ok(true));
        read(&mut t);
        let a = id_of(&log);
        fs::rename(&log, d.path().join("app.log.2")).unwrap();
        fs::write(&log, "b\n").unwrap();
        assert!(matches!(t.on_eof(), Some(Leave::Gone)));
        // Before the path is opened again, B is rotated too and C created; a backup
        // is not a rotation.
        let b_path = d.path().join("app.log.1");
        fs::rename(&log, &b_path).unwrap();
        fs::write(&log, "c\n").unwrap();
        fs::write(d.path().join("app.log.bak"), "x\n").unwrap();
        let b = id_of(&b_path);
        assert_eq!(t.open_path(), Ok(false), "the missed rotation first");
        let want = Owed::Plain {
            path: b_path.clone(),
            id: b,
            offset: 0,
            size: 2,
            state: FileState::Rotated,
        };
        assert_eq!(t.backlog.iter().collect::<Vec<_>>(), vec![&want]);
        assert_eq!(t.metrics.rotations.load(Ordering::Relaxed), 1);
        assert!(t.rotated.iter().any(|r| r.id == a), "A drains meanwhile");
        let owed = t.backlog.pop_front().unwrap();
        assert!(t.open_owed(owed));
        let of = t.open.as_ref().unwrap();
        assert_eq!(
            (of.id, of.state, of.lines.read_offset()),
            (b, FileState::Rotated, 0)
        );
        assert_eq!(
            t.registry().get(b).unwrap().name.as_deref(),
            b_path.to_str()
        );
        read(&mut t);
        assert_eq!(lines(&rx), ["a", "b"]);
        assert!(
            matches!(t.on_eof(), Some(Leave::Gone)),
            "B is not at the path"
        );
        assert_eq!(t.open_path(), Ok(true));
        assert_eq!(t.open.as_ref().unwrap().id, id_of(&log));
    }

    #[test]
    fn a_missed_rotation_is_not_taken_from_a_second_link_or_a_matching_glob() {
        let (d, log, mut t, _rx, _stop) = setup("a\n");
        let secret = d.path().join("secret");
        fs::write(&secret, "s\n").unwrap();
        fs::hard_link(&secret, d.path().join("app.log.1")).unwrap();
        let cur = id_of(&log);
        let since = SystemTime::now() - Duration::from_secs(60);
        assert!(t
            .missed_rotations(cur, cur, since, Duration::ZERO)
            .is_empty());
        t.shared.allow_hardlinks = true;
        let found = t.missed_rotations(cur, cur, since, Duration::ZERO);
        assert_eq!(
            found.iter().map(owed_id).collect::<Vec<_>>(),
            [id_of(&secret)]
        );
        // A glob matching the rotated names reads them itself.
        t.spec.entry.path = format!("{}*", log.display());
        assert!(t
            .missed_rotations(cur, cur, since, Duration::ZERO)
            .is_empty());
    }

    #[test]
    fn an_owed_file_renamed_again_is_found_by_its_inode_and_resumed() {
        let (d, _log, mut t, rx, _stop) = setup("new\n");
        let now_at = d.path().join("app.log.2");
        fs::write(&now_at, "old one\nold two\n").unwrap();
        let a = id_of(&now_at);
        let path = t.spec.path.clone();
        t.registry().propose(Proposal::Start {
            id: a,
            generation: 1,
            path: &path,
            fingerprint: Fingerprint::of(b"old one\nold two\n"),
            offset: 8,
            empty_mtime_ns: None,
        });
        // Queued at 0 under its older name; acknowledged to 8 since.
        let owed = Owed::Plain {
            path: d.path().join("app.log.1"),
            id: a,
            offset: 0,
            size: 16,
            state: FileState::Rotated,
        };
        assert!(t.open_owed(owed));
        let of = t.open.as_ref().unwrap();
        assert_eq!(
            (of.id, of.state, of.lines.read_offset()),
            (a, FileState::Rotated, 8)
        );
        {
            let reg = t.registry();
            let c = reg.get(a).unwrap();
            assert_eq!(c.name.as_deref(), now_at.to_str());
            assert_eq!((c.state, c.offset, c.size), (FileState::Rotated, 8, 16));
        }
        read(&mut t);
        assert_eq!(lines(&rx), ["old two"]);
    }

    #[test]
    fn an_owed_file_deleted_meanwhile_counts_its_rest_as_lost() {
        let (d, _log, mut t, _rx, _stop) = setup("new\n");
        let gone = FileId {
            dev: u64::MAX,
            ino: 1,
        };
        let path = t.spec.path.clone();
        t.registry().propose(Proposal::Start {
            id: gone,
            generation: 1,
            path: &path,
            fingerprint: Fingerprint::of(b"x"),
            offset: 3,
            empty_mtime_ns: None,
        });
        let owed = Owed::Plain {
            path: d.path().join("app.log.1"),
            id: gone,
            offset: 3,
            size: 10,
            state: FileState::Rotated,
        };
        assert!(t.open_owed(owed));
        assert!(t.open.is_none());
        assert_eq!(t.metrics.bytes_lost(Loss::Deleted), 7);
        assert!(t.registry().get(gone).is_none());
    }

    #[test]
    fn an_owed_file_an_earlier_reading_still_holds_waits_unless_that_reader_was_stopped() {
        let (d, log, mut t, _rx, _stop) = setup("new\n");
        let rotated = d.path().join("app.log.1");
        fs::write(&rotated, "old\n").unwrap();
        let a = id_of(&rotated);
        // An earlier tailer of this path let go of it with lines in flight.
        let (earlier, _rx2, earlier_stop) = Tailer::for_test(&log, &d.path().join("d2"), 8);
        let held = earlier.make_source(a, 99);
        t.shared.register(&held);
        let owed = Owed::Plain {
            path: rotated.clone(),
            id: a,
            offset: 0,
            size: 4,
            state: FileState::Rotated,
        };
        assert!(!t.open_owed(owed.clone()));
        assert_eq!(t.backlog.front(), Some(&owed), "put back first");
        assert!(t.open.is_none());
        assert!(t
            .last_problem
            .as_deref()
            .unwrap()
            .contains("waiting for Kafka"));
        // Its entry changed (that reader was stopped): read at once, at least once.
        earlier_stop.stop();
        let owed = t.backlog.pop_front().unwrap();
        assert!(t.open_owed(owed));
        assert_eq!(t.open.as_ref().unwrap().id, a);
    }

    #[test]
    fn a_gzip_rotation_is_read_from_its_decompressed_offset() {
        let (d, _log, mut t, rx, _stop) = setup("new\n");
        let gz = d.path().join("app.log.1.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(b"one\ntwo\nthree\n").unwrap();
        enc.finish().unwrap();
        let id = id_of(&gz);
        t.read_gzip(&gz, id, 4, Fingerprint::of(b"one\n"));
        let chunks: Vec<Chunk> = rx.try_iter().collect();
        assert_eq!(chunks[0].base, 4);
        assert_eq!(chunks[0].source.left(), Left::Reachable);
        let got: Vec<&[u8]> = chunks
            .iter()
            .flat_map(|c| (0..c.lines.len()).map(move |i| c.payload(i)))
            .collect();
        assert_eq!(got, [&b"two"[..], &b"three"[..]]);
        let reg = t.registry();
        let c = reg.get(id).unwrap();
        assert_eq!(c.state, FileState::Copy);
        assert_eq!(c.name.as_deref(), gz.to_str());
        assert_eq!((c.offset, c.size), (4, 14), "offsets in decompressed bytes");
        drop(reg);
        // Fewer bytes than the offset: nothing is sent.
        t.read_gzip(&gz, id, 100, Fingerprint::of(b"one\n"));
        assert!(rx.try_recv().is_err());
    }
}
