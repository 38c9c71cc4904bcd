//! Pure decisions of the tail, with no I/O: where to start a file, what a look at an
//! open file means (truncated, rewritten, renamed, deleted), whether a sibling's name
//! is a rotation of the followed file, and when a rotated file is finished.
//!
//! Everything here is a function of values the caller read; the tailer does the I/O
//! and the logging. Each rule has unit tests below.

use std::time::Duration;

use crate::identity::FileId;

/// What the ledger says about the file now at the path, if it knows its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Committed offset.
    pub offset: u64,
    /// Whether the file still starts with the bytes it had when committed.
    pub head_matches: bool,
}

/// Where a freshly opened file is read from, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The ledger's offset applies: resume there.
    Resume(u64),
    /// Same inode and head, but smaller than the offset: truncated while not followed.
    TruncatedWhileDown,
    /// Same inode, other head: a new file reused the inode, or the file was truncated
    /// and written again while not followed.
    ReplacedWhileDown,
    /// A path never followed before, `from: end`: only lines written from now on.
    End(u64),
    /// From offset 0 (`from: beginning`, or a new file at a path followed before).
    Beginning,
}

impl Start {
    /// The offset to read from.
    pub fn offset(self) -> u64 {
        match self {
            Start::Resume(o) | Start::End(o) => o,
            _ => 0,
        }
    }
}

/// Decides where to start reading a file of `size` bytes.
///
/// `from_end` is the entry's `from: end`; `known` whether the agent followed this path
/// (or the glob it matches) before. `from: end` applies only to a path never followed:
/// a new file at a known path was rotated in, re-created or appeared while the agent
/// was stopped (or while the entry was removed), and all of it is new.
pub fn start_position(saved: Option<Saved>, size: u64, known: bool, from_end: bool) -> Start {
    match saved {
        Some(s) if s.head_matches && size >= s.offset => Start::Resume(s.offset),
        Some(s) if s.head_matches => Start::TruncatedWhileDown,
        Some(_) => Start::ReplacedWhileDown,
        None if from_end && !known => Start::End(size),
        None => Start::Beginning,
    }
}

/// What a periodic look at the open file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Nothing happened.
    Same,
    /// Smaller than what was read: truncated (copytruncate, or `> file`).
    Truncated,
    /// Same inode and size or larger, other first bytes: truncated and rewritten.
    Rewritten,
    /// Another file is at the path, or none while ours still has a name: renamed.
    Renamed,
    /// Our file has no name left (unlinked).
    Deleted,
    /// The path could not be looked at (permission, I/O): keep reading what we have.
    Unknown,
}

/// Interprets one look: `read` bytes read so far, `size` from fstat, `same_head`
/// whether the first bytes are unchanged, `at_path` the file now at the path (`Ok(None)`:
/// nothing there, `Err(())`: could not tell), `links` our file's link count.
pub fn look(
    own: FileId,
    read: u64,
    size: u64,
    same_head: bool,
    at_path: Result<Option<FileId>, ()>,
    links: u64,
) -> Look {
    if size < read {
        return Look::Truncated;
    }
    if !same_head {
        return Look::Rewritten;
    }
    match at_path {
        Ok(Some(id)) if id == own => Look::Same,
        Ok(_) if links == 0 => Look::Deleted,
        Ok(_) => Look::Renamed,
        Err(()) => Look::Unknown,
    }
}

/// Whether a rotated file (renamed away, read to its end) is finished: no new bytes for
/// `rotate_wait` (a writer holding its descriptor has moved on), or it was deleted.
pub fn rotated_done(quiet_for: Duration, rotate_wait: Duration, deleted: bool) -> bool {
    deleted || quiet_for >= rotate_wait
}

/// How a sibling's name relates to the followed file's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sibling {
    /// Not a rotation of it (`app.log.bak`, `app.log-old`, another file).
    Unrelated,
    /// A rotation scheme's name, uncompressed (`app.log.1`, `app.log-20261201`).
    Rotated,
    /// A rotation scheme's name with a compression suffix (`app.log.2.gz`).
    Compressed,
}

const COMPRESSED_SUFFIXES: [&str; 5] = [".gz", ".xz", ".zst", ".bz2", ".Z"];

/// Classifies `name` against the followed file's `base` name, by logrotate's schemes:
/// numbered (`base.1`), `dateext` (`base-20261201`, `base-2026-12-01`, `base-2026120113`,
/// `base-1795335034`, also with `.N`), dated with a dot (`base.2026-12-01`), and
/// logrotate's `extension` option (`app-20261201.log`, `app.1.log` for `app.log`), each
/// optionally followed by a compression suffix.
pub fn sibling(base: &str, name: &str) -> Sibling {
    let (name, compressed) = match COMPRESSED_SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
    {
        Some(n) => (n, true),
        None => (name, false),
    };
    let fits = |rest: &str| {
        let mut parts = rest.splitn(2, '.');
        let first = parts.next().unwrap_or("");
        let counter_ok = parts.next().is_none_or(is_number);
        counter_ok && (is_number(first) || is_date(first))
    };
    let mut ok = false;
    if let Some(rest) = name.strip_prefix(base) {
        ok = match rest.chars().next() {
            Some('.') => fits(&rest[1..]),
            Some('-') | Some('_') => {
                let r = &rest[1..];
                is_date(r.split('.').next().unwrap_or("")) && fits(r)
            }
            _ => false,
        };
    }
    // logrotate's `extension .log`: the date or number goes before the extension.
    if !ok {
        if let Some((stem, ext)) = base.rsplit_once('.') {
            if !stem.is_empty() {
                if let Some(mid) = name
                    .strip_prefix(stem)
                    .and_then(|r| r.strip_suffix(ext))
                    .and_then(|r| r.strip_suffix('.'))
                {
                    ok = match mid.chars().next() {
                        Some('.') => is_number(&mid[1..]),
                        Some('-') | Some('_') => is_date(&mid[1..]),
                        _ => false,
                    };
                }
            }
        }
    }
    match (ok, compressed) {
        (false, _) => Sibling::Unrelated,
        (true, false) => Sibling::Rotated,
        (true, true) => Sibling::Compressed,
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Digits with `-`, `_` or `.` between them, at least 6 digits (`%Y%m%d`, `%Y-%m-%d`,
/// `%Y%m%d%H`, `%s`).
fn is_date(s: &str) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    digits >= 6
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

/// Whether the file now at the path (`now`) completes the rotation of the live file
/// `old` that was left (renamed away, or `deleted`): files rotated out since are then
/// looked for. Another inode, or any file after a deletion: ext4 hands the deleted
/// file's inode to the next file created once its last descriptor is closed, so the
/// file logrotate creates at the path after a delete, re-create and rotation can carry
/// the old inode, while the re-created file, renamed away, holds lines to read.
pub fn completes_rotation(old: FileId, deleted: bool, now: FileId) -> bool {
    old != now || deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: FileId = FileId { dev: 1, ino: 10 };
    const OTHER: FileId = FileId { dev: 1, ino: 11 };

    #[test]
    fn a_file_after_a_deletion_completes_the_rotation_even_under_the_old_inode() {
        // Renamed away: the same inode at the path is the same file (nothing rotated).
        assert!(!completes_rotation(ME, false, ME));
        assert!(completes_rotation(ME, false, OTHER));
        // Deleted: whatever is at the path now is another file, even with the freed
        // inode handed on (lifecycle model seed 0x5b6f8f9b596c547f lost the 22 late
        // lines of the re-created file rotated away meanwhile).
        assert!(completes_rotation(ME, true, ME));
        assert!(completes_rotation(ME, true, OTHER));
    }

    #[test]
    fn from_end_only_for_a_path_never_followed() {
        assert_eq!(start_position(None, 500, false, true), Start::End(500));
        // Finding 1: a new file at a known path (rotated while stopped) is read from 0.
        assert_eq!(start_position(None, 500, true, true), Start::Beginning);
        assert_eq!(start_position(None, 500, false, false), Start::Beginning);
    }

    #[test]
    fn saved_offsets_apply_only_to_the_same_content() {
        let s = |offset, head_matches| {
            Some(Saved {
                offset,
                head_matches,
            })
        };
        assert_eq!(
            start_position(s(100, true), 100, true, true),
            Start::Resume(100)
        );
        assert_eq!(
            start_position(s(100, true), 300, true, true),
            Start::Resume(100)
        );
        assert_eq!(
            start_position(s(100, true), 50, true, true),
            Start::TruncatedWhileDown
        );
        assert_eq!(start_position(s(100, true), 50, true, true).offset(), 0);
        assert_eq!(
            start_position(s(100, false), 900, true, true),
            Start::ReplacedWhileDown
        );
    }

    #[test]
    fn looks() {
        let l = |read, size, head, at, links| look(ME, read, size, head, at, links);
        assert_eq!(l(10, 10, true, Ok(Some(ME)), 1), Look::Same);
        assert_eq!(l(10, 5, true, Ok(Some(ME)), 1), Look::Truncated);
        assert_eq!(l(10, 50, false, Ok(Some(ME)), 1), Look::Rewritten);
        assert_eq!(l(10, 10, true, Ok(Some(OTHER)), 1), Look::Renamed);
        assert_eq!(l(10, 10, true, Ok(None), 1), Look::Renamed);
        assert_eq!(l(10, 10, true, Ok(None), 0), Look::Deleted);
        assert_eq!(l(10, 10, true, Ok(Some(OTHER)), 0), Look::Deleted);
        assert_eq!(l(10, 10, true, Err(()), 1), Look::Unknown);
    }

    #[test]
    fn rotated_files_are_read_until_quiet() {
        let w = Duration::from_secs(5);
        assert!(!rotated_done(Duration::from_secs(1), w, false));
        assert!(rotated_done(Duration::from_secs(5), w, false));
        assert!(rotated_done(Duration::ZERO, w, true));
    }

    #[test]
    fn rotation_names() {
        use Sibling::*;
        let b = "app.log";
        for n in [
            "app.log.1",
            "app.log.12",
            "app.log-20261201",
            "app.log-2026-12-01",
            "app.log-2026120113",
            "app.log-1795335034",
            "app.log-20261201.1",
            "app.log.2026-12-01",
            "app-20261201.log",
            "app.1.log",
        ] {
            assert_eq!(sibling(b, n), Rotated, "{n}");
        }
        for n in [
            "app.log.2.gz",
            "app.log-20261201.gz",
            "app.log.1.xz",
            "app.log.3.zst",
        ] {
            assert_eq!(sibling(b, n), Compressed, "{n}");
        }
        // Finding 5: not every name that starts with the file's name is a rotation.
        for n in [
            "app.log.bak",
            "app.log.old",
            "app.log~",
            "app.log",
            "app.logger",
            "app.log-old",
            "app.log.swp",
            "app.log.1.bak",
            "other.log.1",
            "app.log.",
            "app.log-12",
        ] {
            assert_eq!(sibling(b, n), Unrelated, "{n}");
        }
    }
}
