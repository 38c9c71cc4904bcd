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
