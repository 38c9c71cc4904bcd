//! What the agent may open, and how: a file is first found without being opened
//! (`O_PATH`), every check is made on that descriptor, never on the path before, and
//! only a regular file that passed them is opened for reading, through that descriptor
//! (the inode checked, whatever the path names by then), without blocking. So a symlink
//! or file swapped in between a check and the open cannot slip through, and a FIFO or
//! device swapped in is never opened at all (opening one can act).
//!
//! The rules (docs/security.md):
//! - a followed path may be a symlink, but the file its descriptor refers to (its real
//!   path, read from `/proc/self/fd`) must lie inside the allow-list: `agent.allowed_paths`
//!   for entries from the central config; for a static `collect:` list, those globs and
//!   the entries' own paths ([`crate::collect::AllowList::for_static`]);
//! - a rotation candidate (`app.log.1`, a copytruncate copy, `app.log.2.gz`) is opened
//!   without following a symlink (logrotate never makes one) and must be a regular file
//!   whose real directory is the followed file's real directory, a directory where the
//!   followed file itself may be read (see [`crate::tail::siblings::Scope`]); one found
//!   by its content must have one link unless `agent.allow_hardlinks`.
//!
//! Nothing here logs; callers say what was refused and why.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A file found but not opened for reading: an `O_PATH` descriptor, its type and its
/// real path known before anything is opened. Opening is not harmless: opening a FIFO
/// for reading releases a writer blocked on it, opening some devices acts (a watchdog
/// arms and reboots the host once closed, a tape rewinds). A path swapped for a symlink
/// to one between a `stat` and an `open` would be opened however soon the descriptor
/// is checked after; through a `Resolved` only a regular file is ever opened, and only
/// the inode that was checked ([`Resolved::open`] goes through `/proc/self/fd`, never
/// through the path again).
#[derive(Debug)]
pub struct Resolved {
    fd: File,
    /// Its metadata (fstat of the `O_PATH` descriptor).
    pub meta: fs::Metadata,
}

/// Finds `p` (following a symlink at its last component if `follow`; without, a
/// symlink resolves to itself and is not a regular file).
pub fn resolve(p: &Path, follow: bool) -> io::Result<Resolved> {
    let mut flags = libc::O_PATH | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let fd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(p)?;
    let meta = fd.metadata()?;
    Ok(Resolved { fd, meta })
}

impl Resolved {
    /// The path the kernel has for it (symlinks resolved, as it was reached). Fails
    /// without `/proc`: callers then refuse the file.
    pub fn real_path(&self) -> io::Result<PathBuf> {
        fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Opens it for reading, without blocking, if it is a regular file: the inode
    /// found, whatever the path names now.
    pub fn open(&self) -> io::Result<File> {
        if !self.meta.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))?;
        let m = f.metadata()?;
        if (m.dev(), m.ino()) != (self.meta.dev(), self.meta.ino()) {
            return Err(io::Error::other("replaced while being opened"));
        }
        Ok(f)
    }
}

/// Why a rotation candidate whose descriptor has real path `real` is not one of the
/// files in `dir_real` (the followed file's real directory), or `None` when it is.
pub fn outside_dir(real: &Path, dir_real: &Path) -> Option<String> {
    if real.parent() == Some(dir_real) {
        None
    } else {
        Some(format!(
            "resolves to {}, outside {}",
            real.display(),
            dir_real.display()
        ))
    }
}

/// Opens the rotation candidate `p` in the directory whose real path is `dir_real`:
/// not through a symlink, a regular file, really in that directory, and (unless
/// `links_ok`) with one link only: a second link can be a file from anywhere on the
/// file system, linked in under a rotation name (see `agent.allow_hardlinks`). Nothing
/// is opened for reading before all of that holds.
pub fn open_sibling(p: &Path, dir_real: &Path, links_ok: bool) -> io::Result<(File, fs::Metadata)> {
    let r = resolve(p, false)?;
    if !r.meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if !links_ok && r.meta.nlink() > 1 {
        return Err(io::Error::other(format!(
            "has {} hard links",
            r.meta.nlink()
        )));
    }
    let real = r.real_path()?;
    if let Some(why) = outside_dir(&real, dir_real) {
        return Err(io::Error::other(why));
    }
    let f = r.open()?;
    Ok((f, r.meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sibling_must_be_in_the_followed_files_real_directory() {
        let d = Path::new("/var/log/app");
        assert_eq!(outside_dir(Path::new("/var/log/app/app.log.1"), d), None);
        let why = outside_dir(Path::new("/etc/shadow"), d).expect("refused");
        assert!(why.contains("/etc/shadow"), "{why}");
        assert!(outside_dir(Path::new("/var/log/app/sub/app.log.1"), d).is_some());
        assert!(outside_dir(Path::new("/var/log/application.log"), d).is_some());
    }

    #[test]
    fn symlinks_are_not_followed_for_siblings_and_the_descriptor_names_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = fs::canonicalize(dir.path()).unwrap();
        let target = dir.path().join("target.log");
        fs::write(&target, "x\n").unwrap();
        let link = dir.path().join("app.log.1");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let own = resolve(&link, false).unwrap();
        assert!(own.meta.file_type().is_symlink(), "not followed");
        assert!(own.open().is_err());
        assert!(open_sibling(&link, &real_dir, true).is_err());
        let followed = resolve(&link, true).unwrap();
        assert_eq!(followed.real_path().unwrap(), real_dir.join("target.log"));
        assert!(open_sibling(&target, &real_dir, true).is_ok());
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(open_sibling(&target, elsewhere.path(), true).is_err());
    }

    #[test]
    fn a_second_link_is_refused_unless_links_are_ok() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = fs::canonicalize(dir.path()).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let secret = elsewhere.path().join("secret");
        fs::write(&secret, "x\n").unwrap();
        let link = dir.path().join("app.log.1");
        fs::hard_link(&secret, &link).unwrap();
        let e = open_sibling(&link, &real_dir, false).expect_err("refused");
        assert!(e.to_string().contains("2 hard links"), "{e}");
        assert!(open_sibling(&link, &real_dir, true).is_ok());
    }

    /// What is opened is the inode found and checked, whatever the path names by then:
    /// a file, or a symlink to one outside, swapped in after the check is not read.
    #[test]
    fn a_file_swapped_in_after_the_check_is_not_what_is_opened() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log");
        fs::write(&p, "checked\n").unwrap();
        let read = |r: &Resolved| {
            let mut s = String::new();
            let mut f = r.open().unwrap();
            f.read_to_string(&mut s).unwrap();
            (s, f.metadata().unwrap().ino())
        };
        let r = resolve(&p, true).unwrap();
        let other = dir.path().join("other");
        fs::write(&other, "swapped in\n").unwrap();
        fs::rename(&other, &p).unwrap();
        assert_eq!(read(&r), ("checked\n".to_string(), r.meta.ino()));
        let r = resolve(&p, true).unwrap();
        let secret = outside.path().join("secret");
        fs::write(&secret, "secret\n").unwrap();
        fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&secret, &p).unwrap();
        assert_eq!(read(&r), ("swapped in\n".to_string(), r.meta.ino()));
    }

    /// A FIFO is never opened for reading: that alone would release a writer blocked
    /// in its open (and opening a device can act). Checking the descriptor after the
    /// open is too late for that.
    #[test]
    fn a_fifo_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("app.log.1");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo on a path in our own temp dir.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let writer = {
            let fifo = fifo.clone();
            // Blocks in open until the FIFO has a reader.
            std::thread::spawn(move || fs::OpenOptions::new().write(true).open(fifo))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let real_dir = fs::canonicalize(dir.path()).unwrap();
        let e = open_sibling(&fifo, &real_dir, true).expect_err("not a regular file");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let r = resolve(&fifo, true).unwrap();
        assert!(r.open().is_err());
        std::thread::sleep(std::time::Duration::from_millis(300));
        let released = writer.is_finished();
        // Let the writer go (a reader of our own), whatever happened.
        let _reader = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let _ = writer.join();
        assert!(!released, "the FIFO was opened for reading");
    }
}
