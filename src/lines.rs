//! Splitting file bytes into lines: newline-terminated, over-long lines cut into pieces,
//! a trailing partial line held back until its newline arrives.
//!
//! Pure logic on a byte buffer (no I/O), so the rules are unit-tested here and the
//! tailer only decides *when* to read and flush.

use std::io::{self, Read};

use crate::chunk::Span;

/// Bytes asked of the file per read.
pub const READ_BYTES: usize = 64 * 1024;
/// The first read into an empty buffer, on the stack (see [`LineBuffer::fill`]).
pub const SMALL_READ: usize = 4096;

/// Complete lines taken out of a [`LineBuffer`].
#[derive(Debug)]
pub struct Taken {
    /// File offset of `data[0]`.
    pub base: u64,
    /// The bytes the spans point into.
    pub data: Vec<u8>,
    /// The lines.
    pub lines: Vec<Span>,
    /// How many of them are pieces of a line longer than the limit.
    pub split_pieces: u64,
}

impl Taken {
    /// No lines, at file offset `base` (to hand on what a joiner holds).
    pub fn empty(base: u64) -> Taken {
        Taken {
            base,
            data: Vec::new(),
            lines: Vec::new(),
            split_pieces: 0,
        }
    }
}

/// The bytes read from one file and not yet handed on as lines.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    base: u64,
    max_line: usize,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
    /// UTF-16 (`Some(big_endian)`): a newline is the code unit U+000A at an even file
    /// offset, not any byte 0x0A (which is half of many characters).
    utf16: Option<bool>,
    /// The held partial line is the rest of an over-long line whose first pieces were
    /// already handed on: its last piece counts as a piece too, wherever the reads ended.
    continued: bool,
}

impl LineBuffer {
    /// An empty buffer positioned at file offset `offset`.
    pub fn new(offset: u64, max_line: usize) -> LineBuffer {
        LineBuffer {
            buf: Vec::new(),
            base: offset,
            max_line: max_line.max(1),
            scanned: 0,
            utf16: None,
            continued: false,
        }
    }

    /// The same buffer, splitting UTF-16 text (`big_endian` or little-endian) into lines.
    pub fn utf16(mut self, big_endian: bool) -> LineBuffer {
        self.utf16 = Some(big_endian);
        // Pieces of an over-long line never cut a code unit in two.
        self.max_line = (self.max_line & !1).max(2);
        self
    }

    /// File offset of the next byte to read.
    pub fn read_offset(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// File offset of the first byte not yet handed on (start of the held partial line).
    pub fn line_offset(&self) -> u64 {
        self.base
    }

    /// Bytes held back (a partial line).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Drops everything held and restarts at `offset` (truncation, new file).
    pub fn reset(&mut self, offset: u64) {
        self.buf.clear();
        self.base = offset;
        self.scanned = 0;
        self.continued = false;
    }

    /// Appends up to [`READ_BYTES`] from `r`; returns how many bytes were read (0 at EOF).
    ///
    /// Reads into spare capacity without zeroing it first: an idle tailer must not touch
    /// (and so keep resident) a 64 KiB buffer it does not fill. With nothing held, a
    /// first [`SMALL_READ`] is read on the stack: a quiet file's new line then costs an
    /// allocation of its own size, not a 64 KiB buffer whose touched pages stay with
    /// the allocator after Kafka acknowledged the line (10,000 files at a line a second
    /// each).
    pub fn fill(&mut self, r: &mut impl Read) -> io::Result<usize> {
        let mut first = 0;
        if self.buf.capacity() == 0 {
            let mut small = [0u8; SMALL_READ];
            let n = loop {
                match r.read(&mut small) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            if n < SMALL_READ {
                self.buf.extend_from_slice(&small[..n]);
                return Ok(n);
            }
            self.buf.reserve(READ_BYTES);
            self.buf.extend_from_slice(&small);
            first = n;
        }
        let before = self.buf.len();
        self.buf.reserve(READ_BYTES - first);
        match r
            .take((READ_BYTES - first) as u64)
            .read_to_end(&mut self.buf)
        {
            Ok(n) => Ok(first + n),
            // Bytes read before the error are in the buffer; report them, the error recurs.
            Err(_) if self.buf.len() > before || first > 0 => Ok(self.buf.len() - before + first),
            Err(e) => Err(e),
        }
    }

    /// Puts back the last `n` bytes read (they turned out to belong to other content):
    /// the next read starts where they started.
    pub fn unread(&mut self, n: usize) {
        let keep = self.buf.len().saturating_sub(n);
        self.buf.truncate(keep);
        self.scanned = self.scanned.min(keep);
    }

    /// Appends bytes (tests, and callers that read by other means).
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes every complete line, and pieces of `max_line` bytes of a partial line that
    /// is already that long. `None` when there is nothing to hand on.
    pub fn take_lines(&mut self) -> Option<Taken> {
        let mut lines = Vec::new();
        let mut split_pieces = 0;
        let mut start = 0usize;
        // Whether the line being looked at continues pieces handed on before (only the
        // first one can).
        let mut continued = self.continued;
        if let Some(big_endian) = self.utf16 {
            // The newline code unit: 0A 00 (LE) or 00 0A (BE), at an even file offset.
            // Rescanned from the line's start each time (`scanned` stays 0): the odd
            // byte left over decides where the next unit starts.
            let mut i = 0;
            while i + 1 < self.buf.len() {
                if (self.base + i as u64) % 2 == 1 {
                    i += 1;
                    continue;
                }
                let unit = [self.buf[i], self.buf[i + 1]];
                if unit == if big_endian { [0, b'\n'] } else { [b'\n', 0] } {
                    split_pieces += self.push_line(&mut lines, start, i, i + 2, continued);
                    continued = false;
                    start = i + 2;
                }
                i += 2;
            }
        } else {
            for nl in memchr::memchr_iter(b'\n', &self.buf[self.scanned..]) {
                let end = self.scanned + nl;
                split_pieces += self.push_line(&mut lines, start, end, end + 1, continued);
                continued = false;
                start = end + 1;
            }
        }
        // A partial line already longer than the limit is shipped in pieces now, so one
        // endless line cannot hold the buffer (and the file) forever. Strictly longer: a
        // line of exactly `max_line` bytes whose newline is not read yet must stay one
        // record, not a piece plus an empty line (the property test below found that).
        // In UTF-16 a last byte that is half a code unit does not count: it may be half
        // of the newline (the fuzz target `lines_split` found that).
        let whole_units = match self.utf16 {
            Some(_) => self
                .buf
                .len()
                .saturating_sub(((self.base + self.buf.len() as u64) % 2) as usize),
            None => self.buf.len(),
        };
        while whole_units.saturating_sub(start) > self.max_line {
            let end = start + self.max_line;
            lines.push(span(start, end, end));
            split_pieces += 1;
            start = end;
            continued = true;
        }
        self.continued = continued;
        self.scanned = if self.utf16.is_some() {
            0
        } else {
            self.buf.len() - start
        };
        if lines.is_empty() {
            return None;
        }
        Some(self.split_off(start, lines, split_pieces))
    }

    /// Takes the held partial line as a final line (the file will not grow any more).
    pub fn take_partial(&mut self) -> Option<Taken> {
        let mut t = self.take_lines();
        if self.buf.is_empty() {
            return t;
        }
        let mut lines = Vec::new();
        let len = self.buf.len();
        let split = self.push_line(&mut lines, 0, len, len, self.continued);
        self.continued = false;
        let rest = self.split_off(len, lines, split);
        match &mut t {
            // Two takes in a row: merge the partial into the first (its base follows).
            Some(first) => {
                let shift = first.data.len() as u32;
                first.data.extend_from_slice(&rest.data);
                first.lines.extend(rest.lines.iter().map(|s| Span {
                    start: s.start + shift,
                    end: s.end + shift,
                    next: s.next + shift,
                }));
                first.split_pieces += rest.split_pieces;
            }
            None => t = Some(rest),
        }
        t
    }

    /// Pushes line `[start, end)` (next line at `next`), cut into `max_line` pieces;
    /// returns how many pieces the cut made (0 for a line within the limit that does not
    /// end a line `continued` from pieces handed on before).
    fn push_line(
        &self,
        lines: &mut Vec<Span>,
        mut start: usize,
        end: usize,
        next: usize,
        continued: bool,
    ) -> u64 {
        let mut pieces = 0;
        while end - start > self.max_line {
            lines.push(span(start, start + self.max_line, start + self.max_line));
            start += self.max_line;
            pieces += 1;
        }
        lines.push(span(start, end, next));
        if pieces > 0 || continued {
            pieces + 1
        } else {
            0
        }
    }

    /// Hands the bytes before `keep_from` on with `lines`; keeps the rest.
    ///
    /// Memory: with nothing left over, the buffer is given away whole and none is kept
    /// (`fill` allocates the next one): an idle tailer holds no read buffer, which is
    /// most of what 10,000 quiet files cost. What is handed on is shrunk to its length
    /// when it fills less than half its capacity (a few lines in a 64 KiB buffer would
    /// otherwise stay allocated until Kafka acknowledges them).
    fn split_off(&mut self, keep_from: usize, lines: Vec<Span>, split_pieces: u64) -> Taken {
        let left = self.buf.len() - keep_from;
        let rest = if left == 0 {
            Vec::new()
        } else {
            let mut rest = Vec::with_capacity(READ_BYTES.max(left));
            rest.extend_from_slice(&self.buf[keep_from..]);
            rest
        };
        let mut data = std::mem::replace(&mut self.buf, rest);
        data.truncate(keep_from);
        if data.len() < data.capacity() / 2 {
            data.shrink_to_fit();
        }
        let base = self.base;
        self.base += keep_from as u64;
        self.scanned = self.scanned.min(self.buf.len());
        Taken {
            base,
            data,
            lines,
            split_pieces,
        }
    }
}

fn span(start: usize, end: usize, next: usize) -> Span {
    Span {
        start: start as u32,
        end: end as u32,
        next: next as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16_lines(big_endian: bool, text: &str, cut: usize) -> Vec<String> {
        let units: Vec<u16> = text.encode_utf16().collect();
        let bytes: Vec<u8> = units
            .iter()
            .flat_map(|u| {
                if big_endian {
                    u.to_be_bytes()
                } else {
                    u.to_le_bytes()
                }
            })
            .collect();
        let mut b = LineBuffer::new(0, 1 << 20).utf16(big_endian);
        let mut out = Vec::new();
        for part in [&bytes[..cut], &bytes[cut..]] {
            b.push(part);
            if let Some(t) = b.take_lines() {
                for s in &t.lines {
                    let d = &t.data[s.start as usize..s.end as usize];
                    let (enc, _) = if big_endian {
                        (encoding_rs::UTF_16BE, 0)
                    } else {
                        (encoding_rs::UTF_16LE, 0)
                    };
                    out.push(enc.decode_without_bom_handling(d).0.into_owned());
                }
            }
        }
        out
    }

    #[test]
    fn utf16_splits_at_the_newline_code_unit_only() {
        // U+0A0D (Gurmukhi) is 0D 0A in LE and U+010A is 0A 01: bytes 0x0A that are no
        // newline. Cut at every byte boundary, in both byte orders.
        let text = "a\u{0A0D}b\u{010A}\n\u{0A00}z\nend";
        for be in [false, true] {
            for cut in 0..text.encode_utf16().count() * 2 {
                assert_eq!(
                    utf16_lines(be, text, cut),
                    vec!["a\u{0A0D}b\u{010A}".to_owned(), "\u{0A00}z".to_owned()],
                    "big endian {be}, cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn fill_reads_small_and_large_files_whole_and_in_order() {
        for size in [
            0usize,
            1,
            15,
            SMALL_READ - 1,
            SMALL_READ,
            SMALL_READ + 1,
            200_000,
        ] {
            let text: Vec<u8> = (0..size)
                .map(|i| {
                    if i % 37 == 36 {
                        b'\n'
                    } else {
                        b'a' + (i % 26) as u8
                    }
                })
                .collect();
            let mut r = std::io::Cursor::new(text.clone());
            let mut b = LineBuffer::new(0, 1 << 20);
            let mut out = Vec::new();
            loop {
                let n = b.fill(&mut r).unwrap();
                if let Some(t) = b.take_lines() {
                    for l in &t.lines {
                        out.extend_from_slice(&t.data[l.start as usize..l.next as usize]);
                    }
                }
                if n == 0 {
                    break;
                }
            }
            if let Some(t) = b.take_partial() {
                for l in &t.lines {
                    out.extend_from_slice(&t.data[l.start as usize..l.next as usize]);
                }
            }
            assert_eq!(out, text, "size {size}");
            assert_eq!(
                b.buf.capacity(),
                0,
                "size {size}: a buffer kept after the end"
            );
        }
    }

    fn texts(t: &Taken) -> Vec<(String, u64, u64)> {
        t.lines
            .iter()
            .map(|s| {
                (
                    String::from_utf8_lossy(&t.data[s.start as usize..s.end as usize]).into(),
                    t.base + u64::from(s.start),
                    t.base + u64::from(s.next),
                )
            })
            .collect()
    }

    #[test]
    fn complete_lines_with_offsets_and_partial_held() {
        let mut b = LineBuffer::new(100, 1024);
        b.push(b"ab\ncde\nfg");
        let t = b.take_lines().unwrap();
        assert_eq!(
            texts(&t),
            vec![("ab".into(), 100, 103), ("cde".into(), 103, 107)]
        );
        assert_eq!(b.pending(), 2);
        assert_eq!(b.line_offset(), 107);
        assert!(b.take_lines().is_none(), "a partial line is held");
        b.push(b"h\n");
        let t = b.take_lines().unwrap();
        assert_eq!(texts(&t), vec![("fgh".into(), 107, 111)]);
        assert_eq!(b.read_offset(), 111);
    }

    #[test]
    fn empty_lines_crlf_and_binary_are_kept_as_bytes() {
        let mut b = LineBuffer::new(0, 1024);
        b.push(b"\n\xff\x00x\r\n");
        let t = b.take_lines().unwrap();
        let payloads: Vec<&[u8]> = t
            .lines
            .iter()
            .map(|s| &t.data[s.start as usize..s.end as usize])
            .collect();
        assert_eq!(payloads, vec![&b""[..], &b"\xff\x00x\r"[..]]);
    }

    #[test]
    fn long_lines_are_split_and_counted() {
        let mut b = LineBuffer::new(0, 4);
        b.push(b"0123456789\nab\n");
        let t = b.take_lines().unwrap();
        assert_eq!(
            texts(&t),
            vec![
                ("0123".into(), 0, 4),
                ("4567".into(), 4, 8),
                ("89".into(), 8, 11),
                ("ab".into(), 11, 14)
            ]
        );
        assert_eq!(t.split_pieces, 3);
    }

    #[test]
    fn endless_partial_line_is_shipped_in_pieces() {
        let mut b = LineBuffer::new(0, 4);
        b.push(b"abcdefghij");
        let t = b.take_lines().unwrap();
        assert_eq!(
            texts(&t),
            vec![("abcd".into(), 0, 4), ("efgh".into(), 4, 8)]
        );
        assert_eq!(b.pending(), 2);
        b.push(b"\n");
        assert_eq!(texts(&b.take_lines().unwrap()), vec![("ij".into(), 8, 11)]);
    }

    #[test]
    fn line_of_exactly_the_limit_split_across_reads_stays_one_record() {
        // Found by the property test below: the first read ends right before the
        // newline of a line of exactly `max_line` bytes.
        let mut b = LineBuffer::new(0, 4);
        b.push(b"abcd");
        assert!(b.take_lines().is_none(), "exactly the limit: wait for more");
        b.push(b"\nef\n");
        let t = b.take_lines().unwrap();
        assert_eq!(texts(&t), vec![("abcd".into(), 0, 5), ("ef".into(), 5, 8)]);
        assert_eq!(t.split_pieces, 0);
    }

    #[test]
    fn utf16_line_of_exactly_the_limit_with_its_newline_split_stays_one_record() {
        // Found by the fuzz target `lines_split`: the first byte of the newline code
        // unit made the held line one byte longer than the limit, so it went out as a
        // piece and the newline as an empty line.
        for (be, nl) in [(false, [b'\n', 0]), (true, [0, b'\n'])] {
            let mut b = LineBuffer::new(1000, 4).utf16(be);
            b.push(b"abcd");
            b.push(&nl[..1]);
            assert!(b.take_lines().is_none(), "exactly the limit: wait for more");
            b.push(&nl[1..]);
            b.push(b"ef");
            let t = b.take_lines().unwrap();
            assert_eq!(texts(&t), vec![("abcd".into(), 1000, 1006)], "{be}");
            assert_eq!(b.pending(), 2);
        }
        // Nothing held, at an odd offset (a file read from an odd offset).
        let mut b = LineBuffer::new(1001, 4).utf16(false);
        assert!(b.take_lines().is_none());
        assert!(b.take_partial().is_none());
    }

    #[test]
    fn pieces_are_counted_the_same_wherever_the_reads_end() {
        // Found by the fuzz target `lines_split`: the last piece of a line whose first
        // pieces went out before its newline was read was not counted.
        for utf16 in [None, Some(false), Some(true)] {
            let count = |reads: &[&[u8]]| {
                let mut b = LineBuffer::new(0, 4);
                if let Some(be) = utf16 {
                    b = b.utf16(be);
                }
                let mut n = 0;
                for r in reads {
                    b.push(r);
                    n += b.take_lines().map_or(0, |t| t.split_pieces);
                }
                n + b.take_partial().map_or(0, |t| t.split_pieces)
            };
            let nl: &[u8] = match utf16 {
                None => b"\n",
                Some(false) => b"\n\0",
                Some(true) => b"\0\n",
            };
            let line = [&b"abcdefgh"[..], b"ij", nl, b"k", nl].concat();
            let whole = count(&[&line]);
            assert_eq!(whole, 3, "{utf16:?}: abcd efgh ij");
            assert_eq!(count(&[&line[..9], &line[9..]]), whole, "{utf16:?}");
            assert_eq!(count(&[&line[..5], &line[5..]]), whole, "{utf16:?}");
            // The file ends in the middle of it (flushed as a final line).
            assert_eq!(count(&[&line[..9]]), 3, "{utf16:?}: abcd efgh i");
            assert_eq!(count(&[&line[..5], &line[5..9]]), 3, "{utf16:?}");
        }
    }

    #[test]
    fn unread_puts_the_last_bytes_back() {
        let mut b = LineBuffer::new(10, 1024);
        b.push(b"ab\ncd");
        b.push(b"ef\ngh\n");
        b.unread(6);
        assert_eq!(b.read_offset(), 15);
        let t = b.take_lines().unwrap();
        assert_eq!(texts(&t), vec![("ab".into(), 10, 13)]);
        assert_eq!(b.pending(), 2, "cd stays held as a partial line");
    }

    #[test]
    fn partial_is_flushed_on_request_and_reset_restarts() {
        let mut b = LineBuffer::new(0, 1024);
        b.push(b"a\nb");
        let t = b.take_partial().unwrap();
        assert_eq!(texts(&t), vec![("a".into(), 0, 2), ("b".into(), 2, 3)]);
        assert_eq!(b.pending(), 0);
        assert!(b.take_partial().is_none());
        b.push(b"zz");
        b.reset(0);
        assert_eq!(b.pending(), 0);
        assert_eq!(b.read_offset(), 0);
    }

    #[test]
    fn fill_reads_from_a_reader() {
        let mut b = LineBuffer::new(0, 1024);
        let mut r: &[u8] = b"x\ny\n";
        assert_eq!(b.fill(&mut r).unwrap(), 4);
        assert_eq!(b.fill(&mut r).unwrap(), 0);
        assert_eq!(b.take_lines().unwrap().lines.len(), 2);
    }

    /// Every line and offset the splitter produces from `data` read in pieces cut at
    /// `cuts`, then flushed at the end.
    fn split_all(data: &[u8], cuts: &[usize], max_line: usize) -> Vec<(Vec<u8>, u64, u64)> {
        let mut b = LineBuffer::new(7, max_line);
        let mut out = Vec::new();
        let mut take = |t: Option<Taken>| {
            if let Some(t) = t {
                for s in &t.lines {
                    out.push((
                        t.data[s.start as usize..s.end as usize].to_vec(),
                        t.base + u64::from(s.start),
                        t.base + u64::from(s.next),
                    ));
                }
            }
        };
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            let c = c.clamp(at, data.len());
            b.push(&data[at..c]);
            at = c;
            take(b.take_lines());
        }
        take(b.take_partial());
        out
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Where the reads happen to end never changes the records: same bytes, same
        /// offsets, nothing lost, nothing extra, for any bytes and any line limit.
        #[test]
        fn read_boundaries_never_change_the_lines(
            data in proptest::collection::vec(
                proptest::prop_oneof![3 => proptest::prelude::any::<u8>(), 1 => proptest::strategy::Just(b'\n')],
                0..600,
            ),
            mut cuts in proptest::collection::vec(0usize..600, 0..12),
            max_line in 1usize..40,
        ) {
            cuts.sort_unstable();
            let whole = split_all(&data, &[], max_line);
            let pieces = split_all(&data, &cuts, max_line);
            proptest::prop_assert_eq!(&whole, &pieces);
            // The records tile the input: each starts where the previous one's next
            // starts, and their bytes plus the stripped newlines rebuild the data.
            let mut rebuilt = Vec::new();
            let mut at = 7;
            for (bytes, start, next) in &whole {
                proptest::prop_assert_eq!(*start, at);
                proptest::prop_assert!(bytes.len() <= max_line);
                rebuilt.extend_from_slice(bytes);
                if next - start > bytes.len() as u64 {
                    rebuilt.push(b'\n');
                }
                at = *next;
            }
            proptest::prop_assert_eq!(rebuilt, data);
        }
    }
}
