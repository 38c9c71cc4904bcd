//! What the agent may open, and how: every open is non-blocking (a FIFO swapped in
//! never hangs a thread) and every check is made on the *opened descriptor*, never on
//! the path before the open, so a symlink or file swapped in between a check and the
//! open cannot slip through.
//!
//! The rules (README, "Security"):
//! - a followed path may be a symlink, but the file its descriptor refers to (its real
//!   path, read from `/proc/self/fd`) must lie inside the allow-list: `agent.allowed_paths`
//!   for entries from the central config; for a static `collect:` list, those globs and
//!   the entries' own paths ([`AllowList::for_static`]);
//! - a rotation candidate (`app.log.1`, a copytruncate copy, `app.log.2.gz`) is opened
//!   without following a symlink (logrotate never makes one) and must be a regular file
//!   whose real directory is the followed file's real directory.
//!
//! Nothing here logs; callers say what was refused and why.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Opens `p` for reading without blocking, following a symlink at its last component.
pub fn open_nonblocking(p: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
}

/// Opens `p` for reading without blocking and without following a symlink at its last
/// component (a symlink fails with `ELOOP`).
pub fn open_no_follow(p: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(p)
}

/// The path the kernel has for an open descriptor (symlinks resolved, as the file was
/// reached at the open). Fails without `/proc`: callers then refuse the file.
pub fn real_path(f: &File) -> io::Result<PathBuf> {
    fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
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
/// not through a symlink, a regular file, really in that directory.
pub fn open_sibling(p: &Path, dir_real: &Path) -> io::Result<(File, fs::Metadata)> {
    let f = open_no_follow(p)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let real = real_path(&f)?;
    if let Some(why) = outside_dir(&real, dir_real) {
        return Err(io::Error::other(why));
    }
    Ok((f, m))
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
        let e = open_no_follow(&link).expect_err("a symlink is not followed");
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(open_sibling(&link, &real_dir).is_err());
        let f = open_nonblocking(&link).unwrap();
        assert_eq!(real_path(&f).unwrap(), real_dir.join("target.log"));
        assert!(open_sibling(&target, &real_dir).is_ok());
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(open_sibling(&target, elsewhere.path()).is_err());
    }

    #[test]
    fn a_fifo_opens_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("app.log.1");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo on a path in our own temp dir.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let real_dir = fs::canonicalize(dir.path()).unwrap();
        let e = open_sibling(&fifo, &real_dir).expect_err("not a regular file");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
