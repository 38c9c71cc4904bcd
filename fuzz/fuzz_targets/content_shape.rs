//! A file through the tailer's whole content path: the line splitter (bytes or UTF-16),
//! then `content::Rules` (decoding, multiline joining, include/exclude, the JSON
//! envelope) with the file's joiner, flushed at the end as a file that is done with.
//! Properties:
//! - the records do not depend on where the reads ended (whole file vs. growing);
//! - the events tile the file: each starts where the one before committed, the first at
//!   0, the last commits the file's end (every byte is shipped or counted as filtered);
//!   a record sent in pieces commits only with its last piece;
//! - a decoded or JSON record is UTF-8, a JSON record parses and names its offset;
//!   without decoding, a kept raw event is exactly the file's bytes (joined lines keep
//!   their newlines);
//! - no record is larger than the limit a record is cut to.
//!
//! Input: bytes 0-5 choose the entry (encoding, multiline, filters, format, line limit)
//! and the growth steps; the rest is the file.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use logagent::collect::{CollectEntry, Format, Multiline};
use logagent::content::{self, Rules};
use logagent::lines::{LineBuffer, Taken};

const ENCODINGS: [Option<&str>; 12] = [
    None,
    Some("utf-8"),
    Some("gbk"),
    Some("shift_jis"),
    Some("utf-16le"),
    Some("utf-16be"),
    Some("windows-1252"),
    Some("big5"),
    Some("euc-kr"),
    Some("iso-2022-jp"),
    Some("gb18030"),
    Some("euc-jp"),
];
const STARTS: [&str; 3] = [r"^\S", r"^\d{4}-\d{2}-\d{2} ", r"^E"];
const INCLUDE: [&[&str]; 4] = [&[], &["ERROR", "WARN"], &["^a"], &["x$"]];
const EXCLUDE: [&[&str]; 4] = [&[], &["debug"], &["^$"], &[r"\d\d"]];

#[derive(Debug, Clone, PartialEq)]
struct Record {
    payload: Vec<u8>,
    line: u64,
    commit: u64,
    filtered: bool,
}

#[derive(Debug, Default, PartialEq)]
struct Out {
    records: Vec<Record>,
    filtered: u64,
    replaced: u64,
    cut: u64,
    split: u64,
}

fn entry(h: &[u8]) -> (CollectEntry, usize) {
    let e = CollectEntry {
        path: "/var/log/app.log".into(),
        topic: "app".into(),
        encoding: ENCODINGS[usize::from(h[0]) % ENCODINGS.len()].map(str::to_owned),
        multiline: match h[1] & 3 {
            0 => None,
            i => Some(Multiline {
                start: STARTS[usize::from(i) - 1].into(),
                max_lines: (h[2] > 0).then(|| 1 + usize::from(h[2] % 8)),
                max_bytes: (h[3] > 0).then(|| 4 * usize::from(h[3])),
                timeout_ms: None,
            }),
        },
        format: if h[1] & 4 != 0 {
            Format::Json
        } else {
            Format::Raw
        },
        fields: if h[1] & 12 == 12 {
            [("env".to_owned(), "prod \"1\"".to_owned())]
                .into_iter()
                .collect()
        } else {
            Default::default()
        },
        include_lines: INCLUDE[usize::from(h[1] >> 4) & 3]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        exclude_lines: EXCLUDE[usize::from(h[1] >> 6)]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..CollectEntry::default()
    };
    (e, 64 + 4 * usize::from(h[4]))
}

thread_local! {
    static RULES: RefCell<HashMap<[u8; 5], Option<Rc<Rules>>>> = RefCell::new(HashMap::new());
}

/// The entry's compiled rules, compiled once per choice (regexes are slow to build);
/// at most a few thousand kept (each holds compiled regexes).
fn rules(h: [u8; 5]) -> Option<Rc<Rules>> {
    RULES.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= 4096 {
            m.clear();
        }
        m.entry(h)
            .or_insert_with(|| {
                let (e, max_line) = entry(&h);
                e.validate().expect("the chosen entry is valid");
                Rules::for_entry(&e, "web-1", max_line)
                    .expect("a valid entry compiles")
                    .map(Rc::new)
            })
            .clone()
    })
}

/// The records of `data` growing by `steps`; `timeouts`: after each step with no
/// partial line held, the event being joined is due (its `timeout_ms` passed) and goes
/// out, as the tailer's `flush_joined` sends it.
fn shape(
    data: &[u8],
    e: &CollectEntry,
    max_line: usize,
    rules: &Rules,
    steps: &[usize],
    timeouts: bool,
) -> Out {
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_335_034_123);
    let mut b = LineBuffer::new(0, max_line);
    if let Some(be) = content::utf16_of(e) {
        b = b.utf16(be);
    }
    let mut joiner = rules.joiner();
    let mut out = Out::default();
    let ship = |t: Taken, joiner: Option<&mut content::Joiner>, flush: bool, out: &mut Out| {
        let s = rules.apply(&t, &e.path, now, joiner, flush);
        assert_eq!(s.lines.len(), s.events.len());
        for (l, ev) in s.lines.iter().zip(&s.events) {
            out.records.push(Record {
                payload: s.data[l.start as usize..l.end as usize].to_vec(),
                line: ev.line,
                commit: ev.commit,
                filtered: ev.filtered,
            });
        }
        out.filtered += s.filtered;
        out.replaced += s.replaced;
        out.cut += s.cut;
        out.split += s.split;
    };
    let mut grown = 0;
    let mut turn = 0;
    while grown < data.len() {
        let to = (grown + steps[turn % steps.len()].max(1)).min(data.len());
        turn += 1;
        b.push(&data[grown..to]);
        grown = to;
        if let Some(t) = b.take_lines() {
            ship(t, joiner.as_mut(), false, &mut out);
        }
        if timeouts && b.pending() == 0 && joiner.as_ref().is_some_and(|j| j.is_pending()) {
            let t = Taken::empty(b.read_offset());
            ship(t, joiner.as_mut(), true, &mut out);
        }
    }
    // The file is done with (what the tailer's `ship_from(final_ = true)` does: the
    // partial last line, and the event being joined flushed).
    let pending = joiner.as_ref().is_some_and(|j| j.is_pending());
    match b.take_partial() {
        Some(t) => ship(t, joiner.as_mut(), true, &mut out),
        None if pending => ship(
            Taken::empty(b.read_offset()),
            joiner.as_mut(),
            true,
            &mut out,
        ),
        None => {}
    }
    assert!(
        joiner.as_ref().is_none_or(|j| !j.is_pending()),
        "an event left behind"
    );
    out
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 6 {
        return;
    }
    let (h, data) = input.split_at(6);
    let mut choice: [u8; 5] = h[..5].try_into().unwrap();
    if choice[1] & 3 == 0 {
        // Without multiline, bytes 2 and 3 choose nothing.
        choice[2] = 0;
        choice[3] = 0;
    }
    let (e, max_line) = entry(&choice);
    let Some(rules) = rules(choice) else {
        // No content option: the raw path, which `lines_split` covers.
        return;
    };
    let mut x = u32::from(h[5]) | 0x100;
    let steps: Vec<usize> = (0..16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            1 + (x % 200) as usize
        })
        .collect();

    let whole = shape(data, &e, max_line, &rules, &[usize::MAX], false);
    let growing = shape(data, &e, max_line, &rules, &steps, false);
    assert_eq!(growing, whole, "growing in steps {steps:?} vs read whole");
    check(&whole, data, &e, max_line);
    // Timeouts between the steps join other events, but every other rule holds.
    if e.multiline.is_some() {
        check(
            &shape(data, &e, max_line, &rules, &steps, true),
            data,
            &e,
            max_line,
        );
    }
});

/// The rules every shaping of `data` keeps, whatever the reads and timeouts.
fn check(out: &Out, data: &[u8], e: &CollectEntry, max_line: usize) {
    let decoded = e.encoding.as_deref().is_some_and(|l| {
        logagent::collect::encoding_for(l).is_ok_and(|enc| enc != encoding_rs::UTF_8)
    });
    let json = e.format == Format::Json;
    let max_record = max_line.max(256);
    let mut at = 0u64;
    let mut event: Option<(u64, Vec<u8>, bool)> = None; // an event sent in pieces so far
    for r in &out.records {
        assert!(
            r.payload.len() <= max_record,
            "a record of {} bytes, limit {max_record}",
            r.payload.len()
        );
        if r.filtered {
            assert!(r.payload.is_empty());
        } else if json {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_else(|err| {
                panic!(
                    "not JSON ({err}): {:?}",
                    String::from_utf8_lossy(&r.payload)
                )
            });
            assert!(v["message"].is_string());
            assert_eq!(v["offset"].as_u64(), Some(r.line));
        } else if decoded {
            assert!(
                std::str::from_utf8(&r.payload).is_ok(),
                "decoded record not UTF-8"
            );
        }
        let (line, mut text, _) = event.take().unwrap_or((r.line, Vec::new(), r.filtered));
        assert_eq!(r.line, line, "a piece of another event");
        assert_eq!(
            line, at,
            "events do not tile the file: starts at {line}, expected {at}"
        );
        text.extend_from_slice(&r.payload);
        if r.commit == r.line {
            // Not the last piece: commits nothing yet.
            assert!(!r.filtered);
            event = Some((line, text, false));
            continue;
        }
        assert!(r.commit > r.line);
        if !r.filtered && !decoded && !json {
            let mut bytes = &data[r.line as usize..r.commit as usize];
            if let Some(b) = bytes.strip_suffix(b"\n") {
                bytes = b;
            }
            assert_eq!(text, bytes, "a raw event is not the file's bytes");
        }
        at = r.commit;
    }
    assert!(event.is_none(), "an event whose last piece never came");
    assert_eq!(at, data.len() as u64, "bytes in != bytes committed");
    assert_eq!(
        out.filtered,
        out.records.iter().filter(|r| r.filtered).count() as u64
    );
}
