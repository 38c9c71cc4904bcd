//! File identity: (device, inode) plus a fingerprint of the first bytes, reading a
//! file's head without moving its position, and telling compressed files from text.
//!
//! An inode alone is not an identity: a deleted file's inode is soon reused by a new
//! file. The head fingerprint tells the two apart, and it also finds a file's copy (a
//! copytruncate copy has another inode but the same first bytes).

use std::fs::File;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// Bytes at the head of a file that make up its fingerprint.
pub const FINGERPRINT_BYTES: usize = 1024;

/// (device, inode) of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// The identity of a file from its metadata.
    pub fn of(m: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// When the file was created (`statx` birth time, nanoseconds since the epoch), where
/// the file system records it (ext4, xfs, btrfs): with the inode it tells a new file that
/// got a freed inode from the file that had it, even when both start with the same bytes
/// (a banner every file of an application begins with). `None` where unknown.
pub fn born(m: &std::fs::Metadata) -> Option<u64> {
    let t = m.created().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_nanos()).ok()
}

/// A file's modification time, ns since the epoch.
pub fn mtime_ns(m: &std::fs::Metadata) -> Option<u64> {
    let d = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    u64::try_from(d.as_nanos()).ok()
}

/// A hash of the first `len` bytes of a file (`len` ≤ [`FINGERPRINT_BYTES`]).
///
/// `len == 0` means "nothing known about the head yet" and matches every file (an
/// empty file, or one committed at offset 0 right after a truncation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fingerprint {
    /// How many head bytes were hashed.
    pub len: u32,
    /// FNV-1a 64 of those bytes.
    pub hash: u64,
}

impl Fingerprint {
    /// Fingerprint of `head` (the caller passes at most [`FINGERPRINT_BYTES`]).
    pub fn of(head: &[u8]) -> Fingerprint {
        if head.is_empty() {
            // One value for "empty", whoever builds it (`default()` or `of(&[])`).
            return Fingerprint::default();
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in head {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Fingerprint {
            len: head.len() as u32,
            hash: h,
        }
    }

    /// Whether a file whose first bytes are `head` starts with the bytes this
    /// fingerprint was taken of.
    pub fn matches(&self, head: &[u8]) -> bool {
        let n = self.len as usize;
        n == 0 || (head.len() >= n && Fingerprint::of(&head[..n]) == *self)
    }
}

/// The first ≤ [`FINGERPRINT_BYTES`] of a file, without moving its read position.
pub fn read_head(file: &File) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; FINGERPRINT_BYTES];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    // Kept per open file: a short file's head must not hold 1 KiB.
    head.shrink_to_fit();
    Ok(head)
}

/// The first ≤ [`FINGERPRINT_BYTES`] bytes a reader yields (a decompressor, say).
pub fn read_head_of(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(FINGERPRINT_BYTES);
    r.take(FINGERPRINT_BYTES as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// A compression format recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `1f 8b` (logrotate's default `gzip`).
    Gzip,
    /// `fd 37 7a 58 5a 00`.
    Xz,
    /// `28 b5 2f fd`.
    Zstd,
    /// `42 5a 68` ("BZh").
    Bzip2,
}

impl Compression {
    /// The format `head` starts with, if any.
    pub fn of(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if head.starts_with(b"BZh") && head.get(3).is_some_and(|d| (b'1'..=b'9').contains(d))
        {
            Some(Compression::Bzip2)
        } else {
            None
        }
    }

    /// Lower-case name for log lines.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        }
    }
}

/// Whether `head` looks like text: not compressed, no NUL byte.
pub fn looks_like_text(head: &[u8]) -> bool {
    Compression::of(head).is_none() && !head.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_content_and_length() {
        assert_ne!(Fingerprint::of(b"abc"), Fingerprint::of(b"abd"));
        assert_ne!(Fingerprint::of(b"ab"), Fingerprint::of(b"abc"));
        assert_eq!(Fingerprint::of(b"abc"), Fingerprint::of(b"abc"));
    }

    #[test]
    fn empty_fingerprint_is_one_value_and_matches_everything() {
        // Finding: a truncation committed `default()` while the start compared with
        // `of(&[])`; the two never matched and a restart read the file from 0.
        assert_eq!(Fingerprint::of(&[]), Fingerprint::default());
        assert!(Fingerprint::default().matches(b""));
        assert!(Fingerprint::default().matches(b"anything"));
    }

    #[test]
    fn matches_needs_the_whole_prefix() {
        let fp = Fingerprint::of(b"hello\n");
        assert!(fp.matches(b"hello\nworld\n"));
        assert!(!fp.matches(b"hello"));
        assert!(!fp.matches(b"jello\nworld\n"));
    }

    #[test]
    fn compressed_heads_are_recognised() {
        assert_eq!(
            Compression::of(&[0x1f, 0x8b, 8, 0]),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::of(b"BZh91AY"), Some(Compression::Bzip2));
        assert_eq!(
            Compression::of(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::of(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Some(Compression::Xz)
        );
        assert_eq!(Compression::of(b"BZh is a word\n"), None);
        assert!(looks_like_text(b"2026-12-01 INFO started\n"));
        assert!(!looks_like_text(b"ab\0cd"));
    }
}
