//! Sending what was read: lines taken from the buffer, shaped by the entry's content rules
//! (decoding, filters, JSON, multiline), into chunks on the channel, waiting for room.

use super::*;

impl Tailer {
    /// Hands complete lines of the open file (and, when `final_`, its partial last
    /// line) to the producer. False when stopped while waiting for room in the channel.
    #[inline(never)]
    pub(super) fn ship_lines(&mut self, final_: bool) -> bool {
        let Some(mut of) = self.open.take() else {
            return true;
        };
        let ok = self.ship_from(&mut of, final_);
        self.open = Some(of);
        ok
    }

    /// Hands complete lines of `of` (and, when `final_`, its partial last line) on.
    #[inline(never)]
    pub(super) fn ship_from(&mut self, of: &mut OpenFile, final_: bool) -> bool {
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
    pub(super) fn line_buffer(&self, offset: u64) -> LineBuffer {
        let b = LineBuffer::new(offset, self.shared.max_line_bytes);
        match crate::content::utf16_of(&self.spec.entry) {
            Some(big_endian) => b.utf16(big_endian),
            None => b,
        }
    }

    /// When the event the live file's joiner holds is due, if there is one.
    pub(super) fn joined_due(&self) -> Option<Instant> {
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
    pub(super) fn flush_joined(&mut self) -> bool {
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
    pub(super) fn ship_taken(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::Receiver;
    use std::io::Write;

    /// A tailer with `content` at its path, opened and read (nothing handed on yet).
    fn read(
        content: &str,
        room: usize,
    ) -> (tempfile::TempDir, PathBuf, Tailer, Receiver<Chunk>, Stopper) {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("app.log");
        fs::write(&log, content).unwrap();
        let (mut t, rx, stop) = Tailer::for_test(&log, &d.path().join("data"), room);
        assert_eq!(t.open_path(), Ok(true));
        t.open.as_mut().unwrap().read_some().unwrap().unwrap();
        (d, log, t, rx, stop)
    }

    #[test]
    fn complete_lines_go_in_one_chunk_and_the_partial_line_only_at_the_end() {
        let (_d, log, mut t, rx, _stop) = read("one\ntwo\npar", 8);
        let source = t.open.as_ref().unwrap().source.clone();
        assert!(t.ship_lines(false));
        let c = rx.try_recv().unwrap();
        assert!(Arc::ptr_eq(&c.source, &source));
        assert_eq!(c.source.file, FileId::of(&fs::metadata(&log).unwrap()));
        assert_eq!(
            (c.source.topic.as_str(), c.source.path.as_str()),
            ("logs", log.to_str().unwrap())
        );
        assert_eq!(c.fingerprint, Fingerprint::of(b"one\ntwo\npar"));
        assert_eq!((c.base, c.lines.len()), (0, 2));
        assert_eq!((c.payload(0), c.payload(1)), (&b"one"[..], &b"two"[..]));
        assert_eq!((c.commit_offset(0), c.commit_offset(1)), (4, 8));
        assert!(c.events.is_empty(), "raw lines: no content rules");
        assert!(rx.try_recv().is_err(), "one chunk");
        assert_eq!(t.metrics.lines_read.load(Ordering::Relaxed), 2);
        assert_eq!(t.metrics.bytes_read.load(Ordering::Relaxed), 8);
        // The partial line waits for its newline...
        assert!(t.ship_lines(false));
        assert!(rx.try_recv().is_err());
        // ...or for the file to be done with.
        assert!(t.ship_lines(true));
        let c = rx.try_recv().unwrap();
        assert_eq!(
            (c.base, c.payload(0), c.commit_offset(0)),
            (8, &b"par"[..], 11)
        );
    }

    #[test]
    fn content_rules_shape_what_is_sent() {
        let (_d, _log, mut t, rx, _stop) = read("info a\ndebug b\ninfo c\n", 8);
        let entry = CollectEntry {
            exclude_lines: vec!["^debug".into()],
            ..t.spec.entry.clone()
        };
        t.rules = crate::content::Rules::for_entry(&entry, "test-host", 1024)
            .unwrap()
            .map(Arc::new);
        assert!(t.ship_lines(false));
        let c = rx.try_recv().unwrap();
        let sent: Vec<(u64, bool)> = (0..c.lines.len())
            .map(|i| (c.line_offset(i), c.is_filtered(i)))
            .collect();
        assert_eq!(sent, [(0, false), (7, true), (15, false)]);
        assert_eq!(c.payload(0), b"info a");
        assert_eq!(c.payload(2), b"info c");
        assert_eq!(c.commit_offset(2), 22);
    }

    #[test]
    fn a_full_channel_holds_the_chunk_until_stopped() {
        let (_d, log, mut t, rx, stop) = read("a\n", 1);
        assert!(t.ship_lines(false));
        File::options()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"b\n")
            .unwrap();
        t.open.as_mut().unwrap().read_some().unwrap().unwrap();
        stop.stop();
        // Waits for room (the room's 1 s timeout), then notices the stop.
        assert!(!t.ship_lines(false));
        let got: Vec<Chunk> = rx.try_iter().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload(0), b"a");
    }

    #[test]
    fn a_paused_source_sends_nothing_until_stopped() {
        let (_d, _log, mut t, rx, stop) = read("a\n", 8);
        t.open
            .as_ref()
            .unwrap()
            .source
            .paused
            .store(true, Ordering::Relaxed);
        stop.stop();
        assert!(!t.ship_lines(false));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_closed_channel_ends_the_sending() {
        let (_d, _log, mut t, rx, _stop) = read("a\n", 8);
        drop(rx);
        assert!(!t.ship_lines(false));
    }
}
