//! Read-only scans of a followed file's directory: a file found again by its inode
//! after further renames, copies and rotations found by their first bytes, and
//! rotations made between two looks. Nothing here logs, reads lines or touches the
//! ledger; every function returns what it found and the tailer decides.
//!
//! Every candidate is opened through [`access::open_sibling`]: never through a symlink,
//! only a regular file, only one really in the followed file's directory (a symlink
//! `app.log.1 -> /etc/shadow` planted by whoever owns the directory is not a rotation),
//! and a file found by its content only with one link (see [`Scope`]). That directory
//! is only scanned if the followed file itself may be read there: whoever owns a
//! directory above it can swap the directory for a symlink to one elsewhere.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::collect::AllowList;
use crate::identity::{read_head, read_head_of, Compression, FileId, Fingerprint};
use crate::tail::access;
use crate::tail::rotation::{sibling, Sibling};

/// At most this many directory entries are looked at per scan (a bounded loop: a
/// directory with a million files must not stall the tailer).
const MAX_ENTRIES: usize = 10_000;

/// A file opened during a scan.
#[derive(Debug)]
pub struct Found {
    /// The open file (read-only, non-blocking open).
    pub file: File,
    /// Its identity.
    pub id: FileId,
    /// Where it was found.
    pub path: PathBuf,
    /// Its first bytes (≤ 1 KiB).
    pub head: Vec<u8>,
    /// Its size when found.
    pub size: u64,
    /// Its birth time, if the file system has one.
    pub born: Option<u64>,
    /// Its number of hard links when found (see `agent.allow_hardlinks`).
    pub nlink: u64,
}

/// What a scan may read, besides files really in the followed file's directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// Where the followed file may be (its tailer's allow-list): the directory scanned
    /// must be one where `<dir>/<followed name>` is allowed. `None`: anywhere.
    pub allowed: Option<&'a AllowList>,
    /// `agent.allow_hardlinks`: a file found by its name and first bytes (not by the
    /// inode the ledger knows) may have more than one link.
    pub allow_hardlinks: bool,
}

/// The real path of a followed file's directory (where its rotations must really be),
/// if the followed file `base` may be read there.
fn real_dir(dir: &Path, base: &str, scope: Scope<'_>) -> Option<PathBuf> {
    let real = fs::canonicalize(dir).ok()?;
    if let Some(list) = scope.allowed {
        list.check(real.join(base).to_str()?).ok()?;
    }
    Some(real)
}

fn open_found(p: &Path, dir_real: &Path, links_ok: bool) -> Option<Found> {
    let (file, m) = access::open_sibling(p, dir_real, links_ok).ok()?;
    let head = read_head(&file).ok()?;
    Some(Found {
        id: FileId::of(&m),
        born: crate::identity::born(&m),
        size: m.len(),
        nlink: m.nlink(),
        file,
        path: p.to_path_buf(),
        head,
    })
}

/// (directory, file name) of a followed path.
pub fn split(path: &str) -> Option<(&Path, &str)> {
    let p = Path::new(path);
    Some((p.parent()?, p.file_name()?.to_str()?))
}

/// The file with identity `id` in `dir`: first under `hint` (its last known name), else
/// anywhere in the directory (renamed again meanwhile: `app.log.1` → `app.log.2`).
///
/// Only under the followed name `base` or one of its rotation names: a file under any
/// other name is not it (ext4 hands a freed inode to the next file created, logrotate's
/// state file say, and a file committed at offset 0 has no head to tell them apart).
pub fn find_by_inode(
    dir: &Path,
    base: &str,
    id: FileId,
    hint: Option<&Path>,
    scope: Scope<'_>,
) -> Option<Found> {
    let named_like = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == base || sibling(base, n) != Sibling::Unrelated)
    };
    let dir_real = real_dir(dir, base, scope)?;
    // The file the ledger knows (its inode): a second link does not make it another.
    let at = |p: &Path| {
        if !named_like(p) {
            return None;
        }
        open_found(p, &dir_real, true).filter(|f| f.id == id)
    };
    if let Some(f) = hint.and_then(at) {
        return Some(f);
    }
    fs::read_dir(dir)
        .ok()?
        .take(MAX_ENTRIES)
        .flatten()
        .filter(|e| {
            e.metadata()
                .is_ok_and(|m| m.ino() == id.ino && m.dev() == id.dev)
        })
        .find_map(|e| at(&e.path()))
}

/// Paths in `dir` whose names relate to `base` as `kind` (bounded scan).
fn named<'a>(dir: &'a Path, base: &'a str, kind: Sibling) -> impl Iterator<Item = PathBuf> + 'a {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .take(MAX_ENTRIES)
        .flatten()
        .filter(move |e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| sibling(base, n) == kind)
        })
        .map(|e| e.path())
}

/// Uncompressed siblings of `base` named by a rotation scheme whose first bytes match
/// `fp` (a copytruncate copy, or a rotated file whose inode we did not know), except
/// `not`. Larger first.
pub fn copies(
    dir: &Path,
    base: &str,
    fp: Fingerprint,
    not: FileId,
    scope: Scope<'_>,
) -> Vec<Found> {
    if fp.len == 0 {
        return Vec::new();
    }
    let Some(dir_real) = real_dir(dir, base, scope) else {
        return Vec::new();
    };
    let mut out: Vec<Found> = named(dir, base, Sibling::Rotated)
        .filter_map(|p| open_found(&p, &dir_real, scope.allow_hardlinks))
        .filter(|f| f.id != not && fp.matches(&f.head) && Compression::of(&f.head).is_none())
        .collect();
    out.sort_by_key(|f| std::cmp::Reverse(f.size));
    out
}

/// A gzip-compressed rotation of `base` whose decompressed first bytes match `fp`: its
/// path and identity (of the file opened, not of what the path names later).
pub fn compressed_copy(
    dir: &Path,
    base: &str,
    fp: Fingerprint,
    scope: Scope<'_>,
) -> Option<(PathBuf, FileId)> {
    if fp.len == 0 {
        return None;
    }
    let dir_real = real_dir(dir, base, scope)?;
    named(dir, base, Sibling::Compressed).find_map(|p| {
        let (f, m) = access::open_sibling(&p, &dir_real, scope.allow_hardlinks).ok()?;
        let is_gzip = read_head(&f).is_ok_and(|h| Compression::of(&h) == Some(Compression::Gzip));
        let matches = is_gzip
            && read_head_of(&mut flate2::read::MultiGzDecoder::new(f))
                .is_ok_and(|h| fp.matches(&h));
        matches.then(|| (p, FileId::of(&m)))
    })
}

/// Opens the gzip rotation `path` of the followed file `base` to read it through a
/// decoder, under the rules of a scan, if it is still the file `id` found before.
pub fn open_gzip(path: &Path, base: &str, id: FileId, scope: Scope<'_>) -> std::io::Result<File> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no directory"))?;
    let dir_real = real_dir(dir, base, scope)
        .ok_or_else(|| std::io::Error::other("its directory is outside the allow-list"))?;
    let (f, m) = access::open_sibling(path, &dir_real, scope.allow_hardlinks)?;
    if FileId::of(&m) != id {
        return Err(std::io::Error::other("replaced since it was found"));
    }
    Ok(f)
}

/// gzip-compressed rotations of `base` modified after `since`, with their decompressed
/// first bytes (path, id, head). Oldest first.
pub fn gzip_since(
    dir: &Path,
    base: &str,
    since: SystemTime,
    scope: Scope<'_>,
) -> Vec<(PathBuf, FileId, Vec<u8>)> {
    let Some(dir_real) = real_dir(dir, base, scope) else {
        return Vec::new();
    };
    let mut found: Vec<(SystemTime, PathBuf, FileId, Vec<u8>)> =
        named(dir, base, Sibling::Compressed)
            .filter_map(|p| {
                let (f, m) = access::open_sibling(&p, &dir_real, scope.allow_hardlinks).ok()?;
                let mtime = m.modified().ok()?;
                if mtime <= since
                    || Compression::of(&read_head(&f).ok()?) != Some(Compression::Gzip)
                {
                    return None;
                }
                let head =
                    read_head_of(&mut flate2::read::MultiGzDecoder::new(f.try_clone().ok()?))
                        .ok()?;
                Some((mtime, p, FileId::of(&m), head))
            })
            .collect();
    found.sort_by_key(|a| a.0);
    found.into_iter().map(|(_, p, id, h)| (p, id, h)).collect()
}

/// A rotation of `base` compressed with a format the agent cannot decode (xz, zstd,
/// bzip2; gzip is read) and modified at or after `since_secs`: path, id, format, size.
pub fn undecodable_since(
    dir: &Path,
    base: &str,
    since_secs: u64,
    scope: Scope<'_>,
) -> Option<(PathBuf, FileId, Compression, u64)> {
    let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(since_secs);
    let dir_real = real_dir(dir, base, scope)?;
    // Only its head is read (to name the format); nothing of it is shipped.
    named(dir, base, Sibling::Compressed).find_map(|p| {
        let f = open_found(&p, &dir_real, true)?;
        let fresh = f.file.metadata().ok()?.modified().ok()? >= since;
        match Compression::of(&f.head) {
            Some(c) if c != Compression::Gzip && fresh => Some((f.path, f.id, c, f.size)),
            _ => None,
        }
    })
}

/// Siblings of `base` that a rotation between two looks could have produced:
/// uncompressed rotation names, text, modified at or after `since`. Oldest first. The
/// caller removes the ones it knows (ledger, live readers) and refuses those with a
/// second link (saying so).
pub fn rotated_since(dir: &Path, base: &str, since: SystemTime, scope: Scope<'_>) -> Vec<Found> {
    let Some(dir_real) = real_dir(dir, base, scope) else {
        return Vec::new();
    };
    let mut found: Vec<(SystemTime, Found)> = named(dir, base, Sibling::Rotated)
        .filter_map(|p| {
            // lstat: a symlink's own time, never its target's (it is refused below).
            let mtime = fs::symlink_metadata(&p).ok()?.modified().ok()?;
            (mtime >= since).then(|| open_found(&p, &dir_real, true).map(|f| (mtime, f)))?
        })
        .filter(|(_, f)| crate::identity::looks_like_text(&f.head))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.path.cmp(&a.1.path)));
    found.into_iter().map(|(_, f)| f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn scans_take_only_real_rotations() {
        let any = Scope::default();
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        fs::write(p("app.log"), b"new\n").unwrap();
        fs::write(p("app.log.1"), b"old head\nmore\n").unwrap();
        fs::write(p("app.log.bak"), b"old head\nmore\n").unwrap();
        fs::write(p("app.log.3"), b"\0\0binary").unwrap();
        let mut gz = flate2::write::GzEncoder::new(
            File::create(p("app.log.2.gz")).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(b"older head\nx\n").unwrap();
        gz.finish().unwrap();
        let since = SystemTime::now() - std::time::Duration::from_secs(60);
        let names: Vec<String> = rotated_since(d.path(), "app.log", since, any)
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["app.log.1"], "no .bak, no binary, no .gz");
        let fp = Fingerprint::of(b"old head\n");
        let none = FileId { dev: 0, ino: 0 };
        let c = copies(d.path(), "app.log", fp, none, any);
        assert_eq!(c.len(), 1);
        assert!(c[0].path.ends_with("app.log.1"));
        let gz = compressed_copy(d.path(), "app.log", Fingerprint::of(b"older head\n"), any);
        assert!(gz.unwrap().0.ends_with("app.log.2.gz"));
        assert!(compressed_copy(d.path(), "app.log", fp, any).is_none());
        let id = c[0].id;
        fs::rename(p("app.log.1"), p("app.log.4")).unwrap();
        let again = find_by_inode(d.path(), "app.log", id, Some(&p("app.log.1")), any).unwrap();
        assert!(again.path.ends_with("app.log.4"));
        fs::rename(p("app.log.4"), p("state")).unwrap();
        assert!(
            find_by_inode(d.path(), "app.log", id, None, any).is_none(),
            "an unrelated name is not the file, whatever its inode"
        );
    }

    #[test]
    fn a_copy_with_a_second_link_or_in_a_directory_not_allowed_is_not_found() {
        let d = tempfile::tempdir().unwrap();
        let real = fs::canonicalize(d.path()).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::write(d.path().join("app.log"), b"").unwrap();
        let secret = elsewhere.path().join("secret");
        fs::write(&secret, b"old head\nsecret\n").unwrap();
        fs::hard_link(&secret, d.path().join("app.log.1")).unwrap();
        let fp = Fingerprint::of(b"old head\n");
        let none = FileId { dev: 0, ino: 0 };
        let strict = Scope::default();
        assert!(copies(d.path(), "app.log", fp, none, strict).is_empty());
        let lax = Scope {
            allow_hardlinks: true,
            ..Scope::default()
        };
        assert_eq!(copies(d.path(), "app.log", fp, none, lax).len(), 1);
        // The followed file may be read only elsewhere: this directory is not scanned.
        let other = AllowList::new(&["/nowhere/**".to_owned()]);
        let scoped = Scope {
            allowed: Some(&other),
            allow_hardlinks: true,
        };
        assert!(copies(d.path(), "app.log", fp, none, scoped).is_empty());
        let since = SystemTime::now() - std::time::Duration::from_secs(60);
        assert!(rotated_since(d.path(), "app.log", since, scoped).is_empty());
        let here = AllowList::new(&[format!("{}/app.log", real.display())]);
        let scoped = Scope {
            allowed: Some(&here),
            allow_hardlinks: true,
        };
        assert_eq!(copies(d.path(), "app.log", fp, none, scoped).len(), 1);
    }
}
