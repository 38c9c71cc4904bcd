//! What an entry does to its lines before they are shipped: decoding to UTF-8
//! (`encoding`), the filters (`include_lines`, `exclude_lines`) and the JSON envelope
//! (`format: json`, with `fields`).
//!
//! Pure: lines in, records out, each with the file offsets it commits; no I/O, no
//! logging. An entry with none of these options never comes here (its lines go out as
//! the bytes they are, the hot path). A filtered line still becomes an event, marked
//! filtered and with an empty payload: the producer sends nothing for it, and its bytes
//! count as shipped once everything before them is acknowledged, so a restart neither
//! reads it again nor skips what came before it.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::SystemTime;

use encoding_rs::Encoding;
use regex::bytes::RegexSet;

use crate::chunk::{EventAt, Span};
use crate::collect::{CollectEntry, Format};
use crate::lines::Taken;

/// The encoding of a label, if this agent can read files in it.
pub fn encoding_for(label: &str) -> Result<&'static Encoding, &'static str> {
    let enc = Encoding::for_label_no_replacement(label.trim().as_bytes())
        .ok_or("is not a known encoding label (WHATWG: gbk, gb18030, big5, shift_jis, euc-kr, windows-1252, ...)")?;
    if enc == encoding_rs::UTF_16LE || enc == encoding_rs::UTF_16BE {
        // Lines are split at the byte 0x0A, which is half of many UTF-16 characters.
        return Err("is not supported yet: UTF-16 lines cannot be split at the byte 0x0A");
    }
    Ok(enc)
}

/// Checks that a filter regex compiles (the same syntax and limits as [`Rules`]).
pub fn compile(regex: &str) -> Result<(), String> {
    RegexSet::new([regex])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// An entry's content options, compiled once per tailer.
#[derive(Debug)]
pub struct Rules {
    /// None for UTF-8 (the bytes are kept; invalid sequences only replaced in JSON).
    encoding: Option<&'static Encoding>,
    include: Option<RegexSet>,
    exclude: Option<RegexSet>,
    /// `format: json`: the host, pre-rendered, and the `fields` object, pre-rendered.
    json: Option<(String, String)>,
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
}

impl Rules {
    /// The compiled options of `entry`; `None` when it has none (the raw path). A bad
    /// option (validation let it through: it cannot) is an error naming it.
    pub fn for_entry(entry: &CollectEntry, host: &str) -> Result<Option<Rules>, String> {
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
        {
            return Ok(None);
        }
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
        }))
    }

    /// Shapes the lines of `t` (read from `path` at `now`) into records.
    pub fn apply(&self, t: &Taken, path: &str, now: SystemTime) -> Shaped {
        let mut out = Shaped {
            data: Vec::with_capacity(t.data.len() + t.lines.len() * self.overhead(path)),
            lines: Vec::with_capacity(t.lines.len()),
            events: Vec::with_capacity(t.lines.len()),
            ..Shaped::default()
        };
        let stamp = self.json.as_ref().map(|_| rfc3339(now));
        let path_json = self.json.as_ref().map(|_| json_str(path));
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
                    let (cow, errors) = enc.decode_without_bom_handling(raw);
                    if errors {
                        out.replaced += cow.matches('\u{FFFD}').count() as u64;
                    }
                    decoded.push_str(&cow);
                    decoded.as_bytes()
                }
                None => raw,
            };
            let keep = self.include.as_ref().is_none_or(|s| s.is_match(text))
                && self.exclude.as_ref().is_none_or(|s| !s.is_match(text));
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
                continue;
            }
            match (&self.json, &stamp, &path_json) {
                (Some((host, fields)), Some(stamp), Some(path)) => {
                    let message = String::from_utf8_lossy(text);
                    if self.encoding.is_none() && matches!(message, std::borrow::Cow::Owned(_)) {
                        out.replaced += message.matches('\u{FFFD}').count() as u64;
                    }
                    out.data.extend_from_slice(b"{\"message\":");
                    out.data.extend_from_slice(json_str(&message).as_bytes());
                    // Writing into a Vec cannot fail.
                    let _ = write!(
                        out.data,
                        ",\"host\":{host},\"path\":{path},\"offset\":{},\"@timestamp\":\"{stamp}\",\"fields\":{fields}}}",
                        at.line
                    );
                }
                _ => out.data.extend_from_slice(text),
            }
            let end = out.data.len() as u32;
            out.lines.push(Span {
                start,
                end,
                next: end,
            });
            out.events.push(at);
        }
        out
    }

    /// Bytes a record adds around its line (a guess for the buffer's capacity).
    fn overhead(&self, path: &str) -> usize {
        self.json
            .as_ref()
            .map_or(0, |(h, f)| 96 + h.len() + f.len() + path.len())
    }
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
    let (y, m, day) = crate::ops::civil_from_days((t / 86_400) as i64);
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
        assert!(Rules::for_entry(&entry(), "h").unwrap().is_none());
        let utf8 = CollectEntry {
            encoding: Some("utf-8".into()),
            ..entry()
        };
        assert!(Rules::for_entry(&utf8, "h").unwrap().is_none());
    }

    #[test]
    fn filters_keep_offsets_of_every_line_and_mark_the_filtered() {
        let e = CollectEntry {
            include_lines: vec!["^ERROR".into(), "^WARN".into()],
            exclude_lines: vec!["healthcheck".into()],
            ..entry()
        };
        let r = Rules::for_entry(&e, "h").unwrap().unwrap();
        let t = taken(
            100,
            &[b"INFO a", b"ERROR b", b"WARN healthcheck", b"WARN c"],
        );
        let s = r.apply(&t, "/var/log/app.log", SystemTime::now());
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
        let r = Rules::for_entry(&e, "h").unwrap().unwrap();
        let (gbk, _, _) = encoding_rs::GBK.encode("错误: 数据库连接失败");
        let t = taken(0, &[&gbk, b"ok \xff end"]);
        let s = r.apply(&t, "/p", SystemTime::now());
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
        let r = Rules::for_entry(&e, "web-1").unwrap().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_335_034_123);
        let t = taken(10, &[b"say \"hi\"\t\\ \xff"]);
        let s = r.apply(&t, "/var/log/a \"b\".log", now);
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

    #[test]
    fn labels_are_checked() {
        assert!(encoding_for("gb18030").is_ok());
        assert!(encoding_for(" Shift_JIS ").is_ok());
        assert!(encoding_for("klingon").is_err());
        assert!(encoding_for("utf-16le").is_err());
        assert!(compile("(unclosed").is_err());
    }
}
