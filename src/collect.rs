//! Collect entries: what to read and where to send it.
//!
//! One entry names a file (or a glob of files) and the Kafka topic its lines go to, plus
//! how records are partitioned. The same type is read from the static `collect:` list in
//! `agent.yaml` and from the JSON value that the central config (etcd) holds, and both go
//! through [`CollectEntry::validate`], so a bad entry is refused the same way wherever it
//! comes from.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where a file that the agent has never seen before is first read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// Only lines appended after the agent started (the classic default).
    #[default]
    End,
    /// The whole file.
    Beginning,
}

/// How records of an entry are spread over the partitions of its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// No key; librdkafka's sticky partitioner picks the partition.
    #[default]
    Default,
    /// Records carry `key`; the partition is the Java-compatible murmur2 hash of it.
    Key,
    /// Each record goes to the next partition of the topic in turn.
    RoundRobin,
}

/// What a record's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The line's bytes as they are in the file (decoded to UTF-8 if `encoding` is set).
    #[default]
    Raw,
    /// A JSON object: `message`, `host`, `path`, `offset`, `@timestamp`, `fields`.
    Json,
}

impl Format {
    fn is_raw(&self) -> bool {
        *self == Format::Raw
    }
}

/// `multiline`: lines joined into events.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Multiline {
    /// A line matching this regex begins a new event; other lines are appended to the
    /// event before them (joined with `\n`).
    pub start: String,
    /// Lines per event at most (default 500); a longer event is cut there (counted),
    /// the rest starts the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lines: Option<usize>,
    /// Bytes per event at most (default `max_line_bytes`), cut the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    /// An event is sent once no line came for this long (default 1000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// One thing to collect: a path (or glob) and the topic its lines are shipped to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectEntry {
    /// Absolute path of a file, or a glob such as `/var/log/app/*.log`.
    pub path: String,
    /// Kafka topic the lines go to.
    pub topic: String,
    /// Where a file never seen before is first read from.
    #[serde(default)]
    pub from: StartFrom,
    /// How records are spread over partitions.
    #[serde(default)]
    pub partitioner: Partitioner,
    /// A fixed partition for every record of this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// The record key for `partitioner: key`: a literal, where `{host}` and `{path}` are
    /// replaced by the agent's hostname and the file's path. Defaults to `{host}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The file's character encoding (a WHATWG label: `gbk`, `big5`, `shift_jis`, ...);
    /// lines are decoded to UTF-8 before filtering. None: bytes as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Regexes: when given, only lines matching at least one are shipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_lines: Vec<String>,
    /// Regexes: lines matching any are not shipped (applied after `include_lines`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_lines: Vec<String>,
    /// The record value: the line (`raw`) or a JSON envelope (`json`).
    #[serde(default, skip_serializing_if = "Format::is_raw")]
    pub format: Format,
    /// Lines joined into events (stack traces) before the filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline: Option<Multiline>,
    /// Extra `fields` of the JSON envelope (needs `format: json`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

/// Why a collect entry was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EntryError {
    /// The path is not absolute.
    #[error("path {0:?} is not absolute")]
    RelativePath(String),
    /// The topic is empty or not a legal Kafka topic name.
    #[error("topic {topic:?} of {path:?} is not a valid Kafka topic name (1-249 chars of [a-zA-Z0-9._-])")]
    BadTopic {
        /// Entry path.
        path: String,
        /// The offending topic.
        topic: String,
    },
    /// A negative partition number.
    #[error("partition {partition} of {path:?} is negative")]
    NegativePartition {
        /// Entry path.
        path: String,
        /// The offending partition.
        partition: i32,
    },
    /// `partition` together with a partitioner other than the default, or `key` without
    /// `partitioner: key`: the entry says two different things.
    #[error("{path:?}: {why}")]
    Conflict {
        /// Entry path.
        path: String,
        /// What conflicts with what.
        why: &'static str,
    },
    /// `encoding` is not a label encoding_rs knows.
    #[error("{path:?}: encoding {label:?} {why}")]
    BadEncoding {
        /// Entry path.
        path: String,
        /// The label given.
        label: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A regex of `include_lines` / `exclude_lines` does not compile.
    #[error("{path:?}: {list} regex {regex:?} does not compile: {why}")]
    BadRegex {
        /// Entry path.
        path: String,
        /// `include_lines` or `exclude_lines`.
        list: &'static str,
        /// The regex.
        regex: String,
        /// The parser's message.
        why: String,
    },
    /// The glob pattern does not parse.
    #[error("path {path:?} is not a valid glob: {why}")]
    BadGlob {
        /// Entry path.
        path: String,
        /// Parser message.
        why: String,
    },
}

impl CollectEntry {
    /// Checks what serde cannot: absolute path, legal topic, consistent partitioning.
    pub fn validate(&self) -> Result<(), EntryError> {
        if !self.path.starts_with('/') {
            return Err(EntryError::RelativePath(self.path.clone()));
        }
        if !valid_topic(&self.topic) {
            return Err(EntryError::BadTopic {
                path: self.path.clone(),
                topic: self.topic.clone(),
            });
        }
        if let Some(p) = self.partition {
            if p < 0 {
                return Err(EntryError::NegativePartition {
                    path: self.path.clone(),
                    partition: p,
                });
            }
            if self.partitioner != Partitioner::Default {
                return Err(EntryError::Conflict {
                    path: self.path.clone(),
                    why: "`partition` cannot be combined with a `partitioner`",
                });
            }
        }
        if self.key.is_some() && self.partitioner != Partitioner::Key {
            return Err(EntryError::Conflict {
                path: self.path.clone(),
                why: "`key` needs `partitioner: key`",
            });
        }
        if let Some(label) = &self.encoding {
            encoding_for(label).map_err(|why| EntryError::BadEncoding {
                path: self.path.clone(),
                label: label.clone(),
                why,
            })?;
        }
        // The limits first: compiling is what they bound (an etcd value of 1.5 MiB
        // holds 200,000 short regexes, each compiled up to regex's 10 MB size limit).
        for (list, regexes) in [
            ("include_lines", &self.include_lines),
            ("exclude_lines", &self.exclude_lines),
            (
                "multiline.start",
                &self
                    .multiline
                    .iter()
                    .map(|m| m.start.clone())
                    .collect::<Vec<String>>(),
            ),
        ] {
            if regexes.len() > MAX_REGEXES || regexes.iter().any(|r| r.len() > MAX_REGEX_LEN) {
                return Err(EntryError::BadRegex {
                    path: self.path.clone(),
                    list,
                    regex: format!("{} regexes", regexes.len()),
                    why: format!(
                        "at most {MAX_REGEXES} regexes of at most {MAX_REGEX_LEN} bytes each"
                    ),
                });
            }
        }
        for (list, regexes) in [
            ("include_lines", &self.include_lines),
            ("exclude_lines", &self.exclude_lines),
        ] {
            for r in regexes {
                compile(r).map_err(|why| EntryError::BadRegex {
                    path: self.path.clone(),
                    list,
                    regex: r.clone(),
                    why,
                })?;
            }
            compile_set(regexes).map_err(|why| EntryError::BadRegex {
                path: self.path.clone(),
                list,
                regex: regexes.join(", "),
                why: format!("the list as one set: {why}"),
            })?;
        }
        if let Some(m) = &self.multiline {
            compile(&m.start).map_err(|why| EntryError::BadRegex {
                path: self.path.clone(),
                list: "multiline.start",
                regex: m.start.clone(),
                why,
            })?;
            if m.max_lines == Some(0) || m.max_bytes == Some(0) || m.timeout_ms == Some(0) {
                return Err(EntryError::Conflict {
                    path: self.path.clone(),
                    why: "`multiline` max_lines, max_bytes and timeout_ms must be above 0",
                });
            }
            // What one entry may make every one of its tailers hold: the joined event is
            // also cut at the local `agent.max_line_bytes` (see `content::Rules`).
            if m.max_lines.is_some_and(|n| n > MAX_EVENT_LINES)
                || m.max_bytes.is_some_and(|n| n > MAX_EVENT_BYTES)
                || m.timeout_ms.is_some_and(|n| n > MAX_EVENT_WAIT_MS)
            {
                return Err(EntryError::Conflict {
                    path: self.path.clone(),
                    why: "`multiline` limits too high: max_lines at most 100000, max_bytes at most 67108864 (64 MiB), timeout_ms at most 3600000",
                });
            }
        }
        if !self.fields.is_empty() && self.format != Format::Json {
            return Err(EntryError::Conflict {
                path: self.path.clone(),
                why: "`fields` needs `format: json`",
            });
        }
        if self.is_glob() {
            glob::Pattern::new(&self.path).map_err(|e| EntryError::BadGlob {
                path: self.path.clone(),
                why: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// True when `path` holds glob metacharacters and names a set of files.
    pub fn is_glob(&self) -> bool {
        self.path.contains(['*', '?', '['])
    }

    /// The record key for a file of this entry, with `{host}` and `{path}` replaced.
    pub fn record_key(&self, host: &str, file: &str) -> Option<Vec<u8>> {
        if self.partitioner != Partitioner::Key {
            return None;
        }
        let template = self.key.as_deref().unwrap_or("{host}");
        Some(
            template
                .replace("{host}", host)
                .replace("{path}", file)
                .into_bytes(),
        )
    }
}

/// Kafka's rule for topic names (`kafka.common.internals.Topic`).
fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The local allow-list (`agent.allowed_paths`): what the central config may make this
/// host read. Globs; `**` crosses directories; a path with `..` is never allowed.
#[derive(Debug, Clone)]
pub struct AllowList {
    raw: Vec<String>,
    patterns: Vec<glob::Pattern>,
}

impl AllowList {
    /// Compiles the patterns (invalid ones are skipped; `agent.yaml` validation reports
    /// them). A pattern whose directories go through trusted symlinks (`/var/log` →
    /// `/data/log`, see [`trusted_resolution`]) also allows where they lead: real paths
    /// are what is checked.
    pub fn new(raw: &[String]) -> AllowList {
        let resolved = raw.iter().filter_map(|p| trusted_resolution(p));
        AllowList {
            raw: raw.to_vec(),
            patterns: raw
                .iter()
                .cloned()
                .chain(resolved)
                .filter_map(|p| glob::Pattern::new(&p).ok())
                .collect(),
        }
    }

    /// The list for a static `collect:` list: `base` (`agent.allowed_paths`) and the
    /// entries' own paths (what the operator wrote in agent.yaml is allowed; a symlink
    /// planted at one of those paths that leads elsewhere is not).
    pub fn for_static(base: &[String], entries: &[CollectEntry]) -> AllowList {
        let mut raw = base.to_vec();
        raw.extend(entries.iter().map(|e| e.path.clone()));
        AllowList::new(&raw)
    }

    /// Ok when `path` (a path or a glob pattern) is inside the list, else why not.
    pub fn check(&self, path: &str) -> Result<(), String> {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        if std::path::Path::new(path)
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err("path contains `..`".into());
        }
        if self.patterns.iter().any(|p| p.matches_with(path, opts)) {
            Ok(())
        } else {
            Err(format!("outside agent.allowed_paths {:?}", self.raw))
        }
    }
}

/// `pattern` with the symlinks among its directories resolved, when each of them is
/// trusted: owned by root (or the agent's own user) in a directory that only root (or
/// the agent's user) may write, which an application user cannot plant. `None` when no
/// directory of it is a symlink, or one is not trusted (then only the pattern as
/// written allows anything). Looked at when the list is built.
pub fn trusted_resolution(pattern: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    let trusted = |uid: u32| uid == 0 || uid == me;
    let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let first_meta = comps
        .iter()
        .position(|c| c.contains(['*', '?', '[']))
        .unwrap_or(comps.len());
    // A literal path's last component is the file itself: only directories count.
    let dirs = if first_meta == comps.len() {
        comps.len().saturating_sub(1)
    } else {
        first_meta
    };
    let mut cur = std::path::PathBuf::from("/");
    let mut links = false;
    for c in &comps[..dirs] {
        let next = cur.join(c);
        let m = std::fs::symlink_metadata(&next).ok()?;
        if m.file_type().is_symlink() {
            let parent = std::fs::metadata(&cur).ok()?;
            if !trusted(m.uid()) || !trusted(parent.uid()) || parent.mode() & 0o022 != 0 {
                return None;
            }
            links = true;
        }
        cur = next;
    }
    if !links || !pattern.starts_with('/') {
        return None;
    }
    let real = std::fs::canonicalize(&cur).ok()?;
    let rest = comps[dirs..].join("/");
    Some(format!(
        "{}/{rest}",
        real.to_string_lossy().trim_end_matches('/')
    ))
}

/// A validated collect list split by the local allow-list.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Screened {
    /// Entries this host follows.
    pub accepted: Vec<CollectEntry>,
    /// Entries refused, with the reason.
    pub refused: Vec<(CollectEntry, String)>,
}

/// Splits `entries` into those inside `allowed` and those outside.
pub fn screen(entries: Vec<CollectEntry>, allowed: &[String]) -> Screened {
    let list = AllowList::new(allowed);
    let mut out = Screened::default();
    for e in entries {
        match list.check(&e.path) {
            Ok(()) => out.accepted.push(e),
            Err(why) => out.refused.push((e, why)),
        }
    }
    out
}

/// Checks every entry of a list; the first bad one fails the whole list.
pub fn validate_all(entries: &[CollectEntry]) -> Result<(), EntryError> {
    entries.iter().try_for_each(CollectEntry::validate)
}

/// The encoding of a label, if this agent can read files in it.
pub fn encoding_for(label: &str) -> Result<&'static encoding_rs::Encoding, &'static str> {
    let enc = encoding_rs::Encoding::for_label_no_replacement(label.trim().as_bytes())
        .ok_or("is not a known encoding label (WHATWG: gbk, gb18030, big5, shift_jis, euc-kr, windows-1252, ...)")?;
    Ok(enc)
}

/// Checks that a filter regex compiles (the same syntax and limits as [`crate::content::Rules`]).
pub fn compile(regex: &str) -> Result<(), String> {
    compile_set(&[regex])
}

/// Checks that a list compiles as the one set [`crate::content::Rules`] builds of it (a set can pass
/// the size limit that each of its regexes stays under).
pub fn compile_set<S: AsRef<str>>(list: &[S]) -> Result<(), String> {
    regex::bytes::RegexSet::new(list.iter().map(AsRef::as_ref))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Entries one collect list may hold (a host follows at most `agent.max_files` files;
/// a list far beyond that is a mistake, and each entry costs memory and a glob walk).
pub const MAX_ENTRIES: usize = 10_000;
/// `multiline.max_lines` at most.
pub const MAX_EVENT_LINES: usize = 100_000;
/// `multiline.max_bytes` at most (64 MiB).
pub const MAX_EVENT_BYTES: usize = 64 << 20;
/// `multiline.timeout_ms` at most (1 h).
pub const MAX_EVENT_WAIT_MS: u64 = 3_600_000;
/// Regexes per `include_lines` / `exclude_lines` list at most.
pub const MAX_REGEXES: usize = 64;
/// Bytes per regex at most.
pub const MAX_REGEX_LEN: usize = 4096;

/// Parses the central-config JSON (a list of entries) and validates it as a whole.
pub fn parse_json(text: &str) -> Result<Vec<CollectEntry>, String> {
    let entries: Vec<CollectEntry> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if entries.len() > MAX_ENTRIES {
        return Err(format!(
            "{} entries; one list may hold at most {MAX_ENTRIES}",
            entries.len()
        ));
    }
    validate_all(&entries).map_err(|e| e.to_string())?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, topic: &str) -> CollectEntry {
        CollectEntry {
            path: path.into(),
            topic: topic.into(),
            from: StartFrom::End,
            partitioner: Partitioner::Default,
            partition: None,
            key: None,
            ..CollectEntry::default()
        }
    }

    fn e(path: &str) -> CollectEntry {
        entry(path, "t")
    }

    #[test]
    fn classic_json_parses_with_defaults() {
        let v = parse_json(r#"[{"path":"/var/log/a.log","topic":"web_log"}]"#).unwrap();
        assert_eq!(v, vec![entry("/var/log/a.log", "web_log")]);
    }

    #[test]
    fn unknown_field_and_relative_path_are_refused() {
        assert!(parse_json(r#"[{"path":"/a","topic":"t","colour":1}]"#)
            .unwrap_err()
            .contains("colour"));
        assert!(parse_json(r#"[{"path":"a.log","topic":"t"}]"#)
            .unwrap_err()
            .contains("not absolute"));
        assert!(parse_json(r#"[{"path":"/a","topic":""}]"#).is_err());
        assert!(parse_json(r#"[{"path":"/a","topic":"bad topic"}]"#).is_err());
    }

    #[test]
    fn trusted_symlinked_directories_allow_where_they_lead() {
        let d = tempfile::tempdir().unwrap(); // 0700, ours
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("data/log")).unwrap();
        std::os::unix::fs::symlink(root.join("data/log"), root.join("log")).unwrap();
        let pattern = format!("{}/log/**", root.display());
        let real = format!("{}/data/log/**", root.display());
        assert_eq!(trusted_resolution(&pattern), Some(real));
        let list = AllowList::new(&[pattern]);
        assert!(list
            .check(&format!("{}/data/log/app/a.log", root.display()))
            .is_ok());
        assert!(list
            .check(&format!("{}/data/other.log", root.display()))
            .is_err());
        // No symlink: nothing to add.
        assert_eq!(
            trusted_resolution(&format!("{}/data/**", root.display())),
            None
        );
        // A link in a directory others may write (what an application user can plant).
        let open = root.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        std::os::unix::fs::symlink(root.join("data"), open.join("link")).unwrap();
        assert_eq!(
            trusted_resolution(&format!("{}/open/link/*.log", root.display())),
            None
        );
    }

    #[test]
    fn what_one_entry_or_list_may_cost_is_capped() {
        let ml = |extra: &str| {
            parse_json(&format!(
                r#"[{{"path":"/var/log/a.log","topic":"t","multiline":{{"start":"^x"{extra}}}}}]"#
            ))
        };
        assert!(ml(r#","max_bytes":67108864"#).is_ok());
        for too_much in [
            r#","max_bytes":67108865"#,
            r#","max_lines":100001"#,
            r#","timeout_ms":3600001"#,
        ] {
            let e = ml(too_much).unwrap_err();
            assert!(e.contains("limits too high"), "{e}");
        }
        let many: Vec<String> = (0..65).map(|i| format!(r#""r{i}""#)).collect();
        let e = parse_json(&format!(
            r#"[{{"path":"/var/log/a.log","topic":"t","include_lines":[{}]}}]"#,
            many.join(",")
        ))
        .unwrap_err();
        assert!(e.contains("at most 64 regexes"), "{e}");
        // Refused before anything is compiled: a list too long is not compiled first
        // (its bad first regex would be the error then).
        let mut many = many;
        many[0] = r#""(""#.to_owned();
        let e = parse_json(&format!(
            r#"[{{"path":"/var/log/a.log","topic":"t","exclude_lines":[{}]}}]"#,
            many.join(",")
        ))
        .unwrap_err();
        assert!(e.contains("at most 64 regexes"), "{e}");
        let long = "x".repeat(MAX_REGEX_LEN + 1);
        let e = parse_json(&format!(
            r#"[{{"path":"/var/log/a.log","topic":"t","multiline":{{"start":"{long}"}}}}]"#
        ))
        .unwrap_err();
        assert!(
            e.contains("at most 64 regexes of at most 4096 bytes"),
            "{e}"
        );
        let entries: Vec<String> = (0..=MAX_ENTRIES)
            .map(|i| format!(r#"{{"path":"/var/log/{i}.log","topic":"t"}}"#))
            .collect();
        let e = parse_json(&format!("[{}]", entries.join(","))).unwrap_err();
        assert!(e.contains("at most 10000"), "{e}");
        assert!(parse_json(&format!("[{}]", entries[1..].join(","))).is_ok());
    }

    #[test]
    fn partitioning_conflicts_are_refused() {
        let mut e = entry("/a", "t");
        e.partition = Some(1);
        e.partitioner = Partitioner::RoundRobin;
        assert!(e.validate().is_err());
        let mut e = entry("/a", "t");
        e.key = Some("x".into());
        assert!(e.validate().is_err());
        let mut e = entry("/a", "t");
        e.partition = Some(-1);
        assert!(e.validate().is_err());
    }

    #[test]
    fn allow_list_refuses_outside_and_dotdot() {
        let s = screen(
            vec![
                e("/var/log/nginx/access.log"),
                e("/var/log/app/*.log"),
                e("/etc/shadow"),
                e("/var/log/../../etc/shadow"),
            ],
            &["/var/log/**".into()],
        );
        let ok: Vec<&str> = s.accepted.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(ok, vec!["/var/log/nginx/access.log", "/var/log/app/*.log"]);
        assert_eq!(s.refused.len(), 2);
        assert!(s.refused[1].1.contains(".."));
    }

    #[test]
    fn key_template_is_substituted() {
        let mut e = entry("/var/log/*.log", "t");
        e.partitioner = Partitioner::Key;
        assert_eq!(e.record_key("h1", "/p"), Some(b"h1".to_vec()));
        e.key = Some("{host}:{path}".into());
        assert_eq!(
            e.record_key("h1", "/var/log/x.log"),
            Some(b"h1:/var/log/x.log".to_vec())
        );
        assert!(e.is_glob());
        assert_eq!(entry("/a", "t").record_key("h", "/a"), None);
    }

    fn arb_entry() -> impl proptest::strategy::Strategy<Value = CollectEntry> {
        use proptest::prelude::*;
        (
            "/?[a-z./*?\\[\\]]{0,16}",
            "[a-zA-Z0-9._#/ -]{0,12}",
            prop_oneof![Just(StartFrom::End), Just(StartFrom::Beginning)],
            prop_oneof![
                Just(Partitioner::Default),
                Just(Partitioner::Key),
                Just(Partitioner::RoundRobin)
            ],
            proptest::option::of(-2i32..4),
            proptest::option::of("[a-z{}]{0,8}"),
        )
            .prop_map(
                |(path, topic, from, partitioner, partition, key)| CollectEntry {
                    path,
                    topic,
                    from,
                    partitioner,
                    partition,
                    key,
                    ..CollectEntry::default()
                },
            )
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Any text at all: a clear error or a valid list, never a panic.
        #[test]
        fn any_text_is_refused_or_accepted_without_panic(text in "\\PC{0,200}") {
            let _ = parse_json(&text);
        }

        /// A generated entry is accepted exactly when it follows the documented rules,
        /// and what is accepted survives a round trip through JSON unchanged.
        #[test]
        fn entries_are_accepted_exactly_by_the_rules(entries in proptest::collection::vec(arb_entry(), 0..4)) {
            let text = serde_json::to_string(&entries).unwrap();
            let ok_by_rules = entries.iter().all(|e| {
                let topic_ok = !e.topic.is_empty()
                    && e.topic != "."
                    && e.topic != ".."
                    && e.topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                e.path.starts_with('/')
                    && topic_ok
                    && e.partition.is_none_or(|p| p >= 0 && e.partitioner == Partitioner::Default)
                    && (e.key.is_none() || e.partitioner == Partitioner::Key)
                    && (!e.is_glob() || glob::Pattern::new(&e.path).is_ok())
            });
            match parse_json(&text) {
                Ok(parsed) => {
                    proptest::prop_assert!(ok_by_rules, "accepted against the rules: {}", text);
                    proptest::prop_assert_eq!(&parsed, &entries);
                    let again = parse_json(&serde_json::to_string(&parsed).unwrap()).unwrap();
                    proptest::prop_assert_eq!(again, parsed);
                }
                Err(why) => {
                    proptest::prop_assert!(!ok_by_rules, "refused although valid: {} ({})", text, why);
                    proptest::prop_assert!(!why.is_empty());
                }
            }
        }
    }
}
