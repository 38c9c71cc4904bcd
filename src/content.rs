//! What an entry does to its lines before they are shipped, in this order: decoding to
//! UTF-8 (`encoding`), joining lines into events (`multiline`), the filters
//! (`include_lines`, `exclude_lines`) and the JSON envelope (`format: json`, with
//! `fields`).
//!
//! Pure: lines in, records out, each with the file offsets it commits; no I/O, no
//! logging. An event still being assembled lives in the file's [`Joiner`] and is never
//! committed: a stop or a crash reads it again, whole, from its first line. An entry with none of these options never comes here (its lines go out as
//! the bytes they are, the hot path). A filtered line still becomes an event, marked
//! filtered and with an empty payload: the producer sends nothing for it, and its bytes
//! count as shipped once everything before them is acknowledged, so a restart neither
//! reads it again nor skips what came before it.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use encoding_rs::Encoding;
use regex::bytes::RegexSet;

use crate::chunk::{EventAt, Span};
use crate::collect::{encoding_for, CollectEntry, Format};
use crate::lines::Taken;

/// For an entry in UTF-16, whether it is big-endian (lines are split at the newline
/// code unit, see [`crate::lines::LineBuffer::utf16`]); `None` for any other encoding.
pub fn utf16_of(entry: &CollectEntry) -> Option<bool> {
    let enc = encoding_for(entry.encoding.as_deref()?).ok()?;
    (enc == encoding_rs::UTF_16LE || enc == encoding_rs::UTF_16BE)
        .then_some(enc == encoding_rs::UTF_16BE)
}

/// An entry's content options, compiled once per entry (shared by its tailers).
#[derive(Debug)]
pub struct Rules {
    /// None for UTF-8 (the bytes are kept; invalid sequences only replaced in JSON).
    encoding: Option<&'static Encoding>,
    include: Option<RegexSet>,
    exclude: Option<RegexSet>,
    /// `format: json`: the host, pre-rendered, and the `fields` object, pre-rendered.
    json: Option<(String, String)>,
    multiline: Option<Joining>,
    /// The largest record sent (`max_line_bytes`, what the producer and broker take).
    max_record: usize,
}

/// `multiline`, compiled.
#[derive(Debug)]
struct Joining {
    start: RegexSet,
    max_lines: usize,
    max_bytes: usize,
    timeout: Duration,
}

impl std::fmt::Debug for Joiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joiner")
            .field("pending", &self.pending)
            .field("decoding_a_piece", &self.decoder.is_some())
            .finish()
    }
}

/// The event a file's lines are being joined into (one per open file: a tailer reads
/// rotated files and the live one side by side).
#[derive(Default)]
pub struct Joiner {
    pending: Option<Pending>,
    /// Decoding a line cut into pieces (`encoding`): the state between two pieces.
    decoder: Option<encoding_rs::Decoder>,
    /// Whether the last event handed on was kept by the filters (a cut event's rest is
    /// filtered as the event it continues).
    last_kept: bool,
}

#[derive(Debug)]
struct Pending {
    text: Vec<u8>,
    at: EventAt,
    lines: usize,
    /// The last line ended without a newline (a piece of an over-long line): the next
    /// one continues it, no `\n` between.
    open_piece: bool,
    /// The rest of an event cut by `max_lines` / `max_bytes`.
    continues: bool,
    last: Instant,
}

impl Joiner {
    /// When the pending event is due (no line came for `timeout_ms`), if there is one.
    pub fn due(&self, rules: &Rules) -> Option<Instant> {
        let timeout = rules.multiline.as_ref()?.timeout;
        self.pending.as_ref().map(|p| p.last + timeout)
    }

    /// Whether an event is being assembled.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// File offset where the pending event begins: nothing from there on is handed on.
    pub fn pending_from(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.at.line)
    }

    /// Adds a line; returns the event it completes (the one before it) and whether
    /// that event was cut by `max_lines` / `max_bytes`.
    fn push(
        &mut self,
        j: &Joining,
        text: &[u8],
        at: EventAt,
        newline: bool,
        now: Instant,
    ) -> (Option<Pending>, bool) {
        let mut fresh = Pending {
            text: text.to_vec(),
            at,
            lines: 1,
            open_piece: !newline,
            continues: false,
            last: now,
        };
        match self.pending.as_mut() {
            Some(p) if p.open_piece || !j.start.is_match(text) => {
                let sep = usize::from(!p.open_piece);
                if p.lines < j.max_lines && p.text.len() + sep + text.len() <= j.max_bytes {
                    if sep == 1 {
                        p.text.push(b'\n');
                    }
                    p.text.extend_from_slice(text);
                    p.at.commit = at.commit;
                    p.lines += usize::from(!p.open_piece);
                    p.open_piece = !newline;
                    p.last = now;
                    return (None, false);
                }
                fresh.continues = true;
                (self.pending.replace(fresh), true)
            }
            _ => (self.pending.replace(fresh), false),
        }
    }
}

/// Records made from one [`Taken`]: payloads in `data`, one span and one event per line.
#[derive(Debug, Default)]
pub struct Shaped {
    /// The payloads.
    pub data: Vec<u8>,
    /// Each line's payload in `data` (empty for a filtered one).
    pub lines: Vec<Span>,
    /// Each line's offsets in the file, and whether it was filtered out.
    pub events: Vec<EventAt>,
    /// Lines filtered out.
    pub filtered: u64,
    /// Byte sequences that could not be decoded (each became U+FFFD).
    pub replaced: u64,
    /// Events cut by `multiline.max_lines` / `max_bytes` (the rest began the next).
    pub cut: u64,
    /// Records sent in pieces because they outgrew `max_line_bytes` (pieces made).
    pub split: u64,
}

impl Rules {
    /// The compiled options of `entry`; `None` when it has none (the raw path). A bad
    /// option (validation let it through: it cannot) is an error naming it.
    pub fn for_entry(
        entry: &CollectEntry,
        host: &str,
        max_line_bytes: usize,
    ) -> Result<Option<Rules>, String> {
        let utf8 = entry
            .encoding
            .as_deref()
            .map(encoding_for)
            .transpose()
            .map_err(|why| format!("encoding {why}"))?
            .filter(|e| *e != encoding_rs::UTF_8);
        if utf8.is_none()
            && entry.include_lines.is_empty()
            && entry.exclude_lines.is_empty()
            && entry.format == Format::Raw
            && entry.multiline.is_none()
        {
            return Ok(None);
        }
        let multiline = match &entry.multiline {
            None => None,
            Some(m) => Some(Joining {
                start: RegexSet::new([&m.start]).map_err(|e| e.to_string())?,
                max_lines: m.max_lines.unwrap_or(500).max(1),
                // Never above the local cap, whatever the (central) entry asks for.
                max_bytes: m
                    .max_bytes
                    .unwrap_or(max_line_bytes)
                    .min(max_line_bytes)
                    .max(1),
                timeout: Duration::from_millis(m.timeout_ms.unwrap_or(1000).max(1)),
            }),
        };
        let set = |list: &[String]| {
            (!list.is_empty())
                .then(|| RegexSet::new(list).map_err(|e| e.to_string()))
                .transpose()
        };
        let json =
            (entry.format == Format::Json).then(|| (json_str(host), fields_json(&entry.fields)));
        Ok(Some(Rules {
            encoding: utf8,
            include: set(&entry.include_lines)?,
            exclude: set(&entry.exclude_lines)?,
            json,
            multiline,
            max_record: max_line_bytes.max(256),
        }))
    }

    /// A joiner for a newly opened file, if lines are joined.
    pub fn joiner(&self) -> Option<Joiner> {
        (self.multiline.is_some() || self.encoding.is_some()).then(Joiner::default)
    }

    /// Shapes the lines of `t` (read from `path` at `now`) into records. With
    /// `multiline`, lines go through `joiner` (the file's); `flush` also hands on the
    /// event it holds (the file is done with, or its timeout passed).
    pub fn apply(
        &self,
        t: &Taken,
        path: &str,
        now: SystemTime,
        mut joiner: Option<&mut Joiner>,
        flush: bool,
    ) -> Shaped {
        let mut out = Shaped {
            data: Vec::with_capacity(t.data.len() + t.lines.len() * self.overhead(path)),
            lines: Vec::with_capacity(t.lines.len()),
            events: Vec::with_capacity(t.lines.len()),
            ..Shaped::default()
        };
        let envelope = self.json.as_ref().map(|(host, fields)| Envelope {
            host,
            fields,
            path: json_str(path),
            stamp: rfc3339(now),
        });
        let clock = Instant::now();
        let mut decoded = String::new();
        for span in &t.lines {
            let raw = &t.data[span.start as usize..span.end as usize];
            let at = EventAt {
                line: t.base + u64::from(span.start),
                commit: t.base + u64::from(span.next),
                filtered: false,
            };
            // Decoded text (or the bytes as they are, for UTF-8).
            let text: &[u8] = match self.encoding {
                Some(enc) => {
                    decoded.clear();
                    let newline = span.next > span.end;
                    let carry = joiner.as_deref_mut().map(|j| &mut j.decoder);
                    match carry {
                        // A piece of an over-long line, or the rest of one: decoded
                        // with the state the piece before left (a character cut in two
                        // by the piece boundary is completed, not garbled).
                        Some(slot) if !newline || slot.is_some() => {
                            let d =
                                slot.get_or_insert_with(|| enc.new_decoder_without_bom_handling());
                            decoded.reserve(
                                d.max_utf8_buffer_length(raw.len())
                                    .unwrap_or(raw.len() * 3 + 16),
                            );
                            let (_, _, errors) = d.decode_to_string(raw, &mut decoded, newline);
                            if errors {
                                out.replaced += decoded.matches('\u{FFFD}').count() as u64;
                            }
                            if newline {
                                *slot = None;
                            }
                        }
                        _ => {
                            let (cow, errors) = enc.decode_without_bom_handling(raw);
                            if errors {
                                out.replaced += cow.matches('\u{FFFD}').count() as u64;
                            }
                            decoded.push_str(&cow);
                        }
                    }
                    // A byte order mark opens the file, not its first line.
                    if at.line == 0 && decoded.starts_with('\u{FEFF}') {
                        decoded.drain(..'\u{FEFF}'.len_utf8());
                    }
                    decoded.as_bytes()
                }
                None => raw,
            };
            match (&self.multiline, joiner.as_deref_mut()) {
                (Some(j), Some(joiner)) => {
                    let newline = span.next > span.end;
                    let (done, cut) = joiner.push(j, text, at, newline, clock);
                    out.cut += u64::from(cut);
                    if let Some(p) = done {
                        let keep = p.continues.then_some(joiner.last_kept);
                        joiner.last_kept =
                            self.emit(&mut out, &p.text, p.at, envelope.as_ref(), keep);
                    }
                }
                _ => {
                    self.emit(&mut out, text, at, envelope.as_ref(), None);
                }
            }
        }
        if flush {
            if let Some(joiner) = joiner {
                if let Some(p) = joiner.pending.take() {
                    let keep = p.continues.then_some(joiner.last_kept);
                    joiner.last_kept = self.emit(&mut out, &p.text, p.at, envelope.as_ref(), keep);
                }
            }
        }
        out
    }

    /// One event through the filters and the envelope into `out`; returns whether it
    /// was kept. `keep`: the decision already made for the event this one continues
    /// (a cut event is filtered as one). A record larger than `max_record` (decoding
    /// and JSON escaping make records larger than the bytes read) is sent in pieces
    /// that fit: all but the last commit nothing, so a crash sends the event again.
    fn emit(
        &self,
        out: &mut Shaped,
        text: &[u8],
        at: EventAt,
        envelope: Option<&Envelope>,
        keep: Option<bool>,
    ) -> bool {
        let keep = keep.unwrap_or_else(|| {
            self.include.as_ref().is_none_or(|s| s.is_match(text))
                && self.exclude.as_ref().is_none_or(|s| !s.is_match(text))
        });
        let start = out.data.len() as u32;
        if !keep {
            out.filtered += 1;
            out.lines.push(Span {
                start,
                end: start,
                next: start,
            });
            out.events.push(EventAt {
                filtered: true,
                ..at
            });
            return false;
        }
        let message = match envelope {
            Some(_) => {
                let m = String::from_utf8_lossy(text);
                if self.encoding.is_none() && matches!(m, std::borrow::Cow::Owned(_)) {
                    out.replaced += m.matches('\u{FFFD}').count() as u64;
                }
                m
            }
            None => std::borrow::Cow::Borrowed(""),
        };
        // Pieces of at most `budget` bytes of text, cut at character boundaries (a
        // decoded or JSON text is UTF-8; raw bytes are cut anywhere, as the line buffer
        // cuts them); halved until each record fits, down to one character (a record
        // larger than `max_record` then is the envelope and one character).
        let mut budget = self.max_record;
        let mut from = 0usize;
        let total = if envelope.is_some() {
            message.len()
        } else {
            text.len()
        };
        let mut pieces = 0u64;
        loop {
            let mut to = (from + budget).min(total);
            if envelope.is_some() || self.encoding.is_some() {
                let t: &[u8] = if envelope.is_some() {
                    message.as_bytes()
                } else {
                    text
                };
                while to < total && (t[to] & 0xC0) == 0x80 {
                    to -= 1;
                }
                if to == from && from < total {
                    // The budget is less than the next character: that character.
                    to = from + 1;
                    while to < total && (t[to] & 0xC0) == 0x80 {
                        to += 1;
                    }
                }
            }
            let piece_start = out.data.len();
            match envelope {
                Some(e) => {
                    out.data.extend_from_slice(b"{\"message\":");
                    out.data
                        .extend_from_slice(json_str(&message[from..to]).as_bytes());
                    // Writing into a Vec cannot fail.
                    let _ = write!(
                        out.data,
                        ",\"host\":{},\"path\":{},\"offset\":{},\"@timestamp\":\"{}\",\"fields\":{}}}",
                        e.host, e.path, at.line, e.stamp, e.fields
                    );
                }
                None => out.data.extend_from_slice(&text[from..to]),
            }
            if out.data.len() - piece_start > self.max_record && budget > 1 {
                // Too big once escaped: again, with half the text.
                out.data.truncate(piece_start);
                budget /= 2;
                continue;
            }
            let end = out.data.len() as u32;
            out.lines.push(Span {
                start: piece_start as u32,
                end,
                next: end,
            });
            let last = to >= total;
            out.events.push(EventAt {
                commit: if last { at.commit } else { at.line },
                ..at
            });
            pieces += 1;
            if last {
                break;
            }
            from = to;
        }
        if pieces > 1 {
            out.split += pieces;
        }
        true
    }

    /// Bytes a record adds around its line (a guess for the buffer's capacity).
    fn overhead(&self, path: &str) -> usize {
        self.json
            .as_ref()
            .map_or(0, |(h, f)| 96 + h.len() + f.len() + path.len())
    }
}

/// The parts of a JSON record that are the same for every line of one read.
struct Envelope<'a> {
    host: &'a str,
    fields: &'a str,
    path: String,
    stamp: String,
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// The `fields` object, keys in order.
fn fields_json(fields: &BTreeMap<String, String>) -> String {
    serde_json::to_string(fields).unwrap_or_else(|_| "{}".to_owned())
}

/// `now` as RFC 3339 in UTC with milliseconds: `2026-12-02T02:30:00.123Z`.
pub fn rfc3339(now: SystemTime) -> String {
    let d = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let t = d.as_secs();
    let (y, m, day) = crate::time::civil_from_days((t / 86_400) as i64);
    let rem = t % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry() -> CollectEntry {
        CollectEntry {
            path: "/var/log/app.log".into(),
            topic: "t".into(),
            ..CollectEntry::default()
        }
    }

    /// Lines as the line buffer hands them on: each followed by a newline.
    fn taken(base: u64, lines: &[&[u8]]) -> Taken {
        let mut data = Vec::new();
        let mut spans = Vec::new();
        for l in lines {
            let start = data.len() as u32;
            data.extend_from_slice(l);
            let end = data.len() as u32;
            data.push(b'\n');
            spans.push(Span {
                start,
                end,
                next: end + 1,
            });
        }
        Taken {
            base,
            data,
            lines: spans,
            split_pieces: 0,
        }
    }

    fn payloads(s: &Shaped) -> Vec<&[u8]> {
        s.lines
            .iter()
            .zip(&s.events)
            .filter(|(_, e)| !e.filtered)
            .map(|(l, _)| &s.data[l.start as usize..l.end as usize])
            .collect()
    }

    #[test]
    fn an_entry_without_options_takes_the_raw_path() {
        assert!(Rules::for_entry(&entry(), "h", 1 << 20).unwrap().is_none());
        let utf8 = CollectEntry {
            encoding: Some("utf-8".into()),
            ..entry()
        };
        assert!(Rules::for_entry(&utf8, "h", 1 << 20).unwrap().is_none());
    }

    #[test]
    fn filters_keep_offsets_of_every_line_and_mark_the_filtered() {
        let e = CollectEntry {
            include_lines: vec!["^ERROR".into(), "^WARN".into()],
            exclude_lines: vec!["healthcheck".into()],
            ..entry()
        };
        let r = Rules::for_entry(&e, "h", 1 << 20).unwrap().unwrap();
        let t = taken(
            100,
            &[b"INFO a", b"ERROR b", b"WARN healthcheck", b"WARN c"],
        );
        let s = r.apply(&t, "/var/log/app.log", SystemTime::now(), None, false);
        assert_eq!(payloads(&s), vec![&b"ERROR b"[..], b"WARN c"]);
        assert_eq!(s.filtered, 2);
        let offs: Vec<(u64, u64, bool)> = s
            .events
            .iter()
            .map(|e| (e.line, e.commit, e.filtered))
            .collect();
        assert_eq!(
            offs,
            vec![
                (100, 107, true),
                (107, 115, false),
                (115, 132, true),
                (132, 139, false)
            ]
        );
    }

    #[test]
    fn gbk_is_decoded_to_utf8_and_bad_bytes_are_counted() {
        let e = CollectEntry {
            encoding: Some("GBK".into()),
            ..entry()
        };
        let r = Rules::for_entry(&e, "h", 1 << 20).unwrap().unwrap();
        let (gbk, _, _) = encoding_rs::GBK.encode("错误: 数据库连接失败");
        let t = taken(0, &[&gbk, b"ok \xff end"]);
        let s = r.apply(&t, "/p", SystemTime::now(), None, false);
        let p = payloads(&s);
        assert_eq!(std::str::from_utf8(p[0]).unwrap(), "错误: 数据库连接失败");
        assert_eq!(std::str::from_utf8(p[1]).unwrap(), "ok \u{FFFD} end");
        assert_eq!(s.replaced, 1);
        assert_eq!(s.events[1].commit, gbk.len() as u64 + 1 + 9);
    }

    #[test]
    fn the_json_envelope_parses_and_carries_fields() {
        let e = CollectEntry {
            format: Format::Json,
            fields: [
                ("env".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "pay".to_owned()),
            ]
            .into_iter()
            .collect(),
            ..entry()
        };
        let r = Rules::for_entry(&e, "web-1", 1 << 20).unwrap().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_335_034_123);
        let t = taken(10, &[b"say \"hi\"\t\\ \xff"]);
        let s = r.apply(&t, "/var/log/a \"b\".log", now, None, false);
        let v: serde_json::Value = serde_json::from_slice(payloads(&s)[0]).unwrap();
        assert_eq!(v["message"], "say \"hi\"\t\\ \u{FFFD}");
        assert_eq!(v["host"], "web-1");
        assert_eq!(v["path"], "/var/log/a \"b\".log");
        assert_eq!(v["offset"], 10);
        assert_eq!(v["@timestamp"], "2026-11-22T08:10:34.123Z");
        assert_eq!(v["fields"]["env"], "prod");
        assert_eq!(v["fields"]["team"], "pay");
        assert_eq!(s.replaced, 1);
    }

    fn java() -> Rules {
        let e = CollectEntry {
            multiline: Some(crate::collect::Multiline {
                start: r"^\d{4}-\d{2}-\d{2} ".into(),
                max_lines: Some(4),
                ..Default::default()
            }),
            ..entry()
        };
        Rules::for_entry(&e, "h", 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn a_stack_trace_written_in_two_halves_is_one_event_committed_at_its_last_line() {
        let r = java();
        let mut j = r.joiner().unwrap();
        let first: [&[u8]; 3] = [
            b"2026-12-01 10:00:00 ERROR boom",
            b"java.lang.IllegalStateException: x",
            b"\tat a.B.c(B.java:1)",
        ];
        let t1 = taken(0, &first);
        let s1 = r.apply(&t1, "/p", SystemTime::now(), Some(&mut j), false);
        assert!(s1.lines.is_empty(), "the event is still open");
        assert_eq!(j.pending_from(), Some(0));
        let end1 = t1.data.len() as u64;
        let t2 = taken(
            end1,
            &[
                b"Caused by: java.io.IOException: y",
                b"2026-12-01 10:00:01 INFO next",
            ],
        );
        let s2 = r.apply(&t2, "/p", SystemTime::now(), Some(&mut j), false);
        assert_eq!(
            payloads(&s2),
            vec![&b"2026-12-01 10:00:00 ERROR boom\njava.lang.IllegalStateException: x\n\tat a.B.c(B.java:1)\nCaused by: java.io.IOException: y"[..]]
        );
        let caused_end = end1 + 34;
        assert_eq!((s2.events[0].line, s2.events[0].commit), (0, caused_end));
        assert_eq!(j.pending_from(), Some(caused_end), "the next event waits");
        assert!(j.due(&r).is_some());
        let s3 = r.apply(&taken(0, &[]), "/p", SystemTime::now(), Some(&mut j), true);
        assert_eq!(payloads(&s3), vec![&b"2026-12-01 10:00:01 INFO next"[..]]);
        assert!(!j.is_pending());
    }

    #[test]
    fn an_event_past_max_lines_is_cut_and_counted_and_nothing_is_dropped() {
        let r = java();
        let mut j = r.joiner().unwrap();
        let lines: Vec<Vec<u8>> = std::iter::once(b"2026-12-01 10:00:00 E".to_vec())
            .chain((0..5).map(|i| format!("\tat f{i}").into_bytes()))
            .collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let s = r.apply(
            &taken(0, &refs),
            "/p",
            SystemTime::now(),
            Some(&mut j),
            true,
        );
        assert_eq!(s.cut, 1);
        assert_eq!(
            payloads(&s),
            vec![
                &b"2026-12-01 10:00:00 E\n\tat f0\n\tat f1\n\tat f2"[..],
                b"\tat f3\n\tat f4"
            ]
        );
        assert_eq!(s.events[1].commit, s.events.last().unwrap().commit);
        assert_eq!(
            s.events[0].commit, s.events[1].line,
            "the pieces tile the file"
        );
    }

    #[test]
    fn filters_apply_to_whole_events() {
        let e = CollectEntry {
            multiline: Some(crate::collect::Multiline {
                start: "^[^ \t]".into(),
                ..Default::default()
            }),
            include_lines: vec!["Exception".into()],
            ..entry()
        };
        let r = Rules::for_entry(&e, "h", 1 << 20).unwrap().unwrap();
        let mut j = r.joiner().unwrap();
        let t = taken(0, &[b"ok", b"fail", b"  java.lang.Exception", b"ok again"]);
        let s = r.apply(&t, "/p", SystemTime::now(), Some(&mut j), true);
        assert_eq!(payloads(&s), vec![&b"fail\n  java.lang.Exception"[..]]);
        assert_eq!(s.filtered, 2);
        assert_eq!(s.events.len(), 3);
    }

    #[test]
    fn a_record_larger_than_max_line_bytes_goes_in_pieces_that_fit() {
        let e = CollectEntry {
            format: Format::Json,
            ..entry()
        };
        let r = Rules::for_entry(&e, "h", 1024).unwrap().unwrap();
        // 1,000 quotes: 2,000 bytes once escaped.
        let line = vec![b'"'; 1000];
        let t = taken(0, &[&line]);
        let s = r.apply(&t, "/p", SystemTime::now(), None, false);
        assert!(s.lines.len() > 1 && s.split == s.lines.len() as u64);
        let mut message = String::new();
        for (i, p) in payloads(&s).iter().enumerate() {
            assert!(p.len() <= 1024, "piece {i} is {} bytes", p.len());
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            message.push_str(v["message"].as_str().unwrap());
        }
        assert_eq!(message.as_bytes(), &line[..]);
        let last = s.events.len() - 1;
        assert!(
            s.events[..last].iter().all(|e| e.commit == 0),
            "only the last piece commits"
        );
        assert_eq!(s.events[last].commit, 1001);
    }

    #[test]
    fn json_pieces_fit_a_small_limit_too() {
        // Found by the fuzz target `content_shape`: halving stopped at 64 characters,
        // and 64 control characters escape to 384 bytes, so with max_line_bytes 64 (a
        // record limit of 256) a piece came out larger than the limit.
        let e = CollectEntry {
            format: Format::Json,
            ..entry()
        };
        let r = Rules::for_entry(&e, "h", 64).unwrap().unwrap();
        for line in [vec![1u8; 100], "é\u{1}".repeat(60).into_bytes(), Vec::new()] {
            let t = taken(0, &[&line]);
            let s = r.apply(&t, "/var/log/app.log", SystemTime::now(), None, false);
            let mut message = String::new();
            for p in payloads(&s) {
                assert!(p.len() <= 256, "a piece of {} bytes", p.len());
                let v: serde_json::Value = serde_json::from_slice(p).unwrap();
                message.push_str(v["message"].as_str().unwrap());
            }
            assert_eq!(message.as_bytes(), &line[..]);
        }
    }

    #[test]
    fn the_rest_of_a_cut_event_is_filtered_as_the_event() {
        let e = CollectEntry {
            multiline: Some(crate::collect::Multiline {
                start: "^E".into(),
                max_lines: Some(2),
                ..Default::default()
            }),
            include_lines: vec!["Exception".into()],
            ..entry()
        };
        let r = Rules::for_entry(&e, "h", 1 << 20).unwrap().unwrap();
        let mut j = r.joiner().unwrap();
        let t = taken(
            0,
            &[b"E Exception", b" a", b" b", b" c", b"E fine", b" d", b" e"],
        );
        let s = r.apply(&t, "/p", SystemTime::now(), Some(&mut j), true);
        assert_eq!(payloads(&s), vec![&b"E Exception\n a"[..], b" b\n c"]);
        assert_eq!(s.filtered, 2, "the fine event and its rest");
    }

    #[test]
    fn pieces_of_an_over_long_gbk_line_decode_whole_characters() {
        let e = CollectEntry {
            encoding: Some("gbk".into()),
            ..entry()
        };
        let r = Rules::for_entry(&e, "h", 1 << 20).unwrap().unwrap();
        let mut j = r.joiner().unwrap();
        let text = format!("x{}", "错".repeat(40));
        let (gbk, _, _) = encoding_rs::GBK.encode(&text);
        // Pieces of 7 bytes, as the line buffer cuts a line longer than the limit:
        // most boundaries fall inside a two-byte character.
        let mut data = gbk.to_vec();
        data.push(b'\n');
        let mut lines = Vec::new();
        let mut at = 0u32;
        while (at as usize) < gbk.len() {
            let end = (at + 7).min(gbk.len() as u32);
            let next = if end as usize == gbk.len() {
                end + 1
            } else {
                end
            };
            lines.push(Span {
                start: at,
                end,
                next,
            });
            at = end;
        }
        let t = Taken {
            base: 0,
            data,
            lines,
            split_pieces: 0,
        };
        let s = r.apply(&t, "/p", SystemTime::now(), Some(&mut j), false);
        let joined: Vec<u8> = payloads(&s).concat();
        assert_eq!(String::from_utf8(joined).unwrap(), text);
        assert_eq!(s.replaced, 0);
    }

    #[test]
    fn labels_are_checked() {
        assert!(crate::collect::encoding_for("gb18030").is_ok());
        assert!(crate::collect::encoding_for(" Shift_JIS ").is_ok());
        assert!(crate::collect::encoding_for("klingon").is_err());
        assert!(crate::collect::encoding_for("utf-16le").is_ok());
        assert!(crate::collect::compile("(unclosed").is_err());
    }
}
