//! The agent's claim on its `data_dir`: one agent per directory, held with an
//! exclusive `flock` on `data_dir/lock` (which names the holder's pid) for the life of
//! the process, and temp names no two writers can share.
//!
//! Two agents on one `data_dir` would each ship every line and overwrite each other's
//! ledger: the second one exits 1 at start naming the first. The lock is released by
//! the kernel when the process ends (also on SIGKILL), so a stale lock file never
//! blocks a start; a restart in place (exec) closes it and takes it again.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// Why the data_dir cannot be claimed.
#[derive(Debug, Error)]
pub enum DataDirError {
    /// Another process holds the lock.
    #[error("data_dir {dir} is in use by another logagent (pid {holder}, lock file {lock}); one agent per data_dir: stop it, or give this one its own agent.data_dir")]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// What the lock file says (the holder's pid, or "unknown").
        holder: String,
    },
    /// The lock file cannot be made or locked.
    #[error("data_dir {dir}: cannot lock {lock}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Held for the life of the agent: dropping it (or the process ending) frees the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes `data_dir/lock` (creating the directory), or says who holds it.
pub fn lock(data_dir: &Path) -> Result<DataDirLock, DataDirError> {
    let lock = data_dir.join("lock");
    let io = |source| DataDirError::Io {
        dir: data_dir.to_owned(),
        lock: lock.clone(),
        source,
    };
    fs::create_dir_all(data_dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&lock)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own; the result is checked.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(e));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(DataDirError::InUse {
            dir: data_dir.to_owned(),
            lock,
            holder: if holder.is_empty() {
                "unknown".into()
            } else {
                holder.to_owned()
            },
        });
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{pid}"))
        .map_err(io)?;
    remove_stale_temps(data_dir);
    Ok(DataDirLock { _file: file })
}

const TEMP_SUFFIX: &str = ".logagent-tmp";

/// A temp name beside `path` that no other writer (thread or process) uses: written,
/// synced, then renamed over `path`.
pub fn temp_for(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}{TEMP_SUFFIX}", std::process::id()));
    path.with_file_name(name)
}

/// Temp files a killed agent left behind (only ours: named by [`temp_for`]).
fn remove_stale_temps(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return;
    };
    for e in entries.flatten().take(10_000) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(TEMP_SUFFIX) else {
            continue;
        };
        // `<file>.<pid>.<n>`: a temp of a process still running (an agent starting at
        // the same moment, probing the directory before it asks for the lock) stays.
        let pid = stem.rsplit('.').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
            continue;
        }
        let _ = fs::remove_file(e.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_the_first_release_frees_it() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let first = lock(&data).unwrap();
        let e = lock(&data).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("one agent per data_dir"), "{e}");
        drop(first);
        let _again = lock(&data).unwrap();
    }

    #[test]
    fn temp_names_are_unique_and_stale_ones_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registry.json");
        let (a, b) = (temp_for(&p), temp_for(&p));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(d.path()));
        // A temp of a process that is gone (pid 0 is never a process's).
        let stale = d.path().join(format!("registry.json.0.7{TEMP_SUFFIX}"));
        fs::write(&stale, "half").unwrap();
        fs::write(&a, "half").unwrap();
        fs::write(d.path().join("keep.tmp"), "not ours").unwrap();
        let _l = lock(d.path()).unwrap();
        assert!(!stale.exists());
        // This process's own (a probe under way) stays.
        assert!(a.exists());
        assert!(d.path().join("keep.tmp").exists());
    }
}
