//! The line splitter (`lines::LineBuffer`), bytes or UTF-16 code units: a file that
//! grows in arbitrary steps gives the same lines, at the same offsets, as the whole
//! file read at once; the lines tile the file (each starts where the one before ended,
//! the first at the start offset, the last at the end: bytes out plus newlines equal
//! bytes in); none is longer than the limit; in UTF-16 a line ends only at a newline
//! code unit at an even offset; and the count of pieces of over-long lines does not
//! depend on where the reads ended.
//!
//! Input: byte 0 picks the mode (bits 0-1: bytes, UTF-16LE, UTF-16BE) and an odd start
//! offset (bit 2); byte 1 the line limit; byte 2 seeds the growth steps; the rest is the
//! file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logagent::lines::{LineBuffer, Taken};

#[derive(Debug, PartialEq)]
struct Line {
    bytes: Vec<u8>,
    start: u64,
    end: u64,
    next: u64,
}

/// What the tailer does: read what is there until EOF, hand on complete lines; at the
/// end, the partial last line too. `steps`: how many bytes the file grows by each time.
fn split(
    data: &[u8],
    base: u64,
    max_line: usize,
    utf16: Option<bool>,
    steps: &[usize],
    fill: bool,
) -> (Vec<Line>, u64) {
    let mut b = LineBuffer::new(base, max_line);
    if let Some(be) = utf16 {
        b = b.utf16(be);
    }
    let mut out = Vec::new();
    let mut pieces = 0;
    let mut take = |t: Option<Taken>| {
        if let Some(t) = t {
            pieces += t.split_pieces;
            for s in &t.lines {
                assert!(s.start <= s.end && s.end <= s.next && s.next as usize <= t.data.len());
                out.push(Line {
                    bytes: t.data[s.start as usize..s.end as usize].to_vec(),
                    start: t.base + u64::from(s.start),
                    end: t.base + u64::from(s.end),
                    next: t.base + u64::from(s.next),
                });
            }
        }
    };
    let mut grown = 0;
    let mut turn = 0;
    while grown < data.len() {
        let step = steps[turn % steps.len()].max(1);
        turn += 1;
        let to = (grown + step).min(data.len());
        if fill {
            // The file so far, read from where the buffer stands until EOF.
            let mut r = &data[(b.read_offset() - base) as usize..to];
            while b.fill(&mut r).unwrap() > 0 {}
            assert_eq!(r.len(), 0);
        } else {
            b.push(&data[grown..to]);
        }
        grown = to;
        assert_eq!(b.read_offset(), base + grown as u64);
        take(b.take_lines());
        assert_eq!(b.line_offset() + b.pending() as u64, b.read_offset());
    }
    take(b.take_partial());
    assert_eq!(b.pending(), 0);
    // Nothing more to read: EOF stays EOF.
    let mut empty: &[u8] = &[];
    assert_eq!(b.fill(&mut empty).unwrap(), 0);
    (out, pieces)
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 3 {
        return;
    }
    let (head, data) = input.split_at(3);
    let utf16 = match head[0] & 3 {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    };
    let base = if head[0] & 4 != 0 { 1001 } else { 1000 };
    let max_line = 1 + usize::from(head[1]);
    let limit = if utf16.is_some() {
        (max_line & !1).max(2)
    } else {
        max_line
    };
    let mut x = u32::from(head[2]) | 0x100;
    let steps: Vec<usize> = (0..16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            1 + (x % 300) as usize
        })
        .collect();

    let (whole, whole_pieces) = split(data, base, max_line, utf16, &[usize::MAX], false);
    for (how, steps, fill) in [
        ("byte by byte", &[1][..], false),
        ("growing", &steps[..], false),
        ("growing, read with fill", &steps[..], true),
    ] {
        let (lines, pieces) = split(data, base, max_line, utf16, steps, fill);
        assert_eq!(lines, whole, "{how}: other lines than read whole");
        assert_eq!(pieces, whole_pieces, "{how}: another count of pieces");
    }

    let nl: &[u8] = match utf16 {
        None => b"\n",
        Some(false) => b"\n\0",
        Some(true) => b"\0\n",
    };
    let mut at = base;
    let mut rebuilt = Vec::new();
    for l in &whole {
        assert_eq!(l.start, at, "the lines do not tile the file");
        assert!(
            l.bytes.len() <= limit,
            "a line of {} bytes, limit {limit}",
            l.bytes.len()
        );
        assert_eq!(l.end - l.start, l.bytes.len() as u64);
        rebuilt.extend_from_slice(&l.bytes);
        if l.next > l.end {
            assert_eq!(l.next - l.end, nl.len() as u64);
            if utf16.is_some() {
                assert_eq!(l.end % 2, 0, "a UTF-16 newline at an odd offset");
            }
            rebuilt.extend_from_slice(nl);
        }
        at = l.next;
    }
    assert_eq!(at, base + data.len() as u64, "bytes in != bytes out");
    assert_eq!(rebuilt, data);
});
