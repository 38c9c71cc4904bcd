//! Change notification for the tailers: one inotify instance for the whole agent and
//! one thread reading it, which wakes the tailers whose file or directory changed.
//! A tailer with its file and directory watched sleeps for the slow safety poll;
//! without (no inotify, `max_user_watches` used up, a network or FUSE file system that
//! reports no changes) it polls as before. This module owns the inotify descriptor and
//! the table of who is woken by what; it never reads files and never logs (the tailer
//! and the agent decide what a refusal means and say so).

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::stop::{StopToken, Waker};

/// What a file watch reports: writes, truncation (attributes), its own rename or
/// deletion.
const FILE_MASK: u32 = libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVE_SELF
    | libc::IN_DELETE_SELF;
/// What a directory watch reports: names appearing and disappearing (rotation,
/// re-creation, copies made by copytruncate).
const DIR_MASK: u32 =
    libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE | libc::IN_ONLYDIR;

/// File system magic numbers (statfs) of file systems that do not report changes
/// made by other machines: NFS, SMB/CIFS, FUSE, 9p, Ceph, AFS, Lustre, GlusterFS (FUSE),
/// the shared-disk cluster file systems GFS2 and OCFS2, and VirtualBox shared folders.
const NO_EVENTS_FS: [i64; 12] = [
    0x6969,
    0x517B,
    0xFF53_4D42u32 as i64,
    0xFE53_4D42u32 as i64,
    0x6573_5546,
    0x0102_1997,
    0x00C3_6400,
    0x5346_414F,
    0x0BD0_0BD0,
    0x0116_1970,
    0x7461_636F,
    0x786F_4256,
];

/// Why a file is polled instead of watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotWatched {
    /// inotify could not be set up at all.
    Unavailable,
    /// inotify is switched off (`agent.inotify: false`).
    Off,
    /// `fs.inotify.max_user_watches` is used up.
    NoSpace,
    /// The file system does not report changes (network, FUSE).
    RemoteFs,
    /// Another error from inotify_add_watch (the path went away, say).
    Failed,
}

impl NotWatched {
    /// For log lines and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NotWatched::Unavailable => "inotify unavailable",
            NotWatched::Off => "agent.inotify is off",
            NotWatched::NoSpace => "fs.inotify.max_user_watches reached",
            NotWatched::RemoteFs => "network or FUSE file system",
            NotWatched::Failed => "inotify_add_watch failed",
        }
    }
}

struct Sub {
    id: u64,
    waker: Waker,
    /// For a directory watch: only names starting with this wake (the followed file
    /// and its rotation names).
    prefix: Option<OsString>,
    alive: Arc<AtomicBool>,
}

#[derive(Default)]
struct Table {
    by_wd: HashMap<i32, Vec<Sub>>,
    next_id: u64,
}

struct Inner {
    fd: OwnedFd,
    table: Mutex<Table>,
    /// Test and diagnostics knob (`LOGAGENT_INOTIFY_MAX_WATCHES`): refuse watches past
    /// this many as the kernel does past `max_user_watches`.
    max_watches: Option<usize>,
    /// inotify watches held now (shared with the metrics).
    watches: Arc<AtomicU64>,
}

/// The agent's one inotify instance (or none: everyone polls).
#[derive(Clone)]
pub struct Watcher {
    inner: Option<Arc<Inner>>,
    why_not: Option<NotWatched>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

/// One subscription; dropping it unsubscribes (and removes the inotify watch when it
/// was the last one on that inode).
pub struct Watch {
    inner: Arc<Inner>,
    wd: i32,
    id: u64,
    alive: Arc<AtomicBool>,
}

impl Watch {
    /// False once the kernel dropped the watch (the file or directory was deleted, or
    /// the queue overflowed and the watch was given up): poll until watched again.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("wd", &self.wd).finish()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut t = self.inner.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(subs) = t.by_wd.get_mut(&self.wd) {
            subs.retain(|s| s.id != self.id);
            if subs.is_empty() {
                t.by_wd.remove(&self.wd);
                // SAFETY: inotify_rm_watch on our own descriptor; a stale wd is EINVAL.
                unsafe { libc::inotify_rm_watch(self.inner.fd.as_raw_fd(), self.wd) };
                self.inner.watches.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Watcher {
    /// A watcher that watches nothing: every tailer polls.
    pub fn disabled() -> Watcher {
        Watcher {
            inner: None,
            why_not: Some(NotWatched::Unavailable),
        }
    }

    /// A watcher switched off by configuration: every tailer polls, nobody says so.
    pub fn off() -> Watcher {
        Watcher {
            inner: None,
            why_not: Some(NotWatched::Off),
        }
    }

    /// Sets up inotify and starts its reader thread (ends when `stop` fires). Falls back
    /// to [`Watcher::disabled`] (with the error) when inotify cannot be had.
    pub fn start(
        stop: StopToken,
        watches: Arc<AtomicU64>,
    ) -> (Watcher, Option<JoinHandle<()>>, Option<io::Error>) {
        if std::env::var_os("LOGAGENT_INOTIFY").is_some_and(|v| v == "off") {
            return (Watcher::disabled(), None, None);
        }
        // SAFETY: inotify_init1 has no preconditions; the result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if raw < 0 {
            return (Watcher::disabled(), None, Some(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let max_watches = std::env::var("LOGAGENT_INOTIFY_MAX_WATCHES")
            .ok()
            .and_then(|v| v.parse().ok());
        let inner = Arc::new(Inner {
            fd,
            table: Mutex::default(),
            max_watches,
            watches,
        });
        let reader = inner.clone();
        let thread = std::thread::Builder::new()
            .name("inotify".into())
            .stack_size(256 * 1024)
            .spawn(move || read_events(&reader, &stop));
        match thread {
            Ok(h) => (
                Watcher {
                    inner: Some(inner),
                    why_not: None,
                },
                Some(h),
                None,
            ),
            Err(e) => (Watcher::disabled(), None, Some(e)),
        }
    }

    /// inotify watches held now.
    pub fn watches(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.watches.load(Ordering::Relaxed))
    }

    /// Wakes `waker` whenever the file at `path` (its inode: it follows renames) changes.
    pub fn watch_file(&self, path: &Path, waker: &Waker) -> Result<Watch, NotWatched> {
        self.add(path, FILE_MASK, None, waker)
    }

    /// Wakes `waker` whenever a name starting with `prefix` appears in or leaves `dir`.
    pub fn watch_dir(
        &self,
        dir: &Path,
        prefix: &OsStr,
        waker: &Waker,
    ) -> Result<Watch, NotWatched> {
        self.add(dir, DIR_MASK, Some(prefix.to_os_string()), waker)
    }

    fn add(
        &self,
        path: &Path,
        mask: u32,
        prefix: Option<OsString>,
        waker: &Waker,
    ) -> Result<Watch, NotWatched> {
        let Some(inner) = &self.inner else {
            return Err(self.why_not.unwrap_or(NotWatched::Unavailable));
        };
        if reports_no_events(path) {
            return Err(NotWatched::RemoteFs);
        }
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| NotWatched::Failed)?;
        let mut t = inner.table.lock().unwrap_or_else(|p| p.into_inner());
        if inner
            .max_watches
            .is_some_and(|m| inner.watches.load(Ordering::Relaxed) as usize >= m)
        {
            return Err(NotWatched::NoSpace);
        }
        // SAFETY: a valid C string and our own descriptor; the result is checked.
        let wd = unsafe { libc::inotify_add_watch(inner.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOSPC) => NotWatched::NoSpace,
                _ => NotWatched::Failed,
            });
        }
        let id = t.next_id;
        t.next_id += 1;
        let alive = Arc::new(AtomicBool::new(true));
        let subs = t.by_wd.entry(wd).or_default();
        if subs.is_empty() {
            inner.watches.fetch_add(1, Ordering::Relaxed);
        }
        subs.push(Sub {
            id,
            waker: waker.clone(),
            prefix,
            alive: alive.clone(),
        });
        Ok(Watch {
            inner: inner.clone(),
            wd,
            id,
            alive,
        })
    }
}

/// Whether `path` lies on a file system that does not report changes made elsewhere.
fn reports_no_events(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct we own; the result is checked.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let kind = s.f_type as i64;
    NO_EVENTS_FS.contains(&kind)
}

/// The reader thread: waits (≤ 500 ms, to see the stop) for events and wakes their
/// subscribers.
fn read_events(inner: &Inner, stop: &StopToken) {
    let fd = inner.fd.as_raw_fd();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.is_stopped() {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let ready = unsafe { libc::poll(&mut p, 1, 500) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: reading into our own buffer of that length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let events = parse(&buf[..n as usize]);
        let mut t = inner.table.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if e.mask & libc::IN_Q_OVERFLOW != 0 {
                // Events were lost: everyone looks.
                for s in t.by_wd.values().flatten() {
                    s.waker.wake();
                }
                continue;
            }
            let ignored = e.mask & libc::IN_IGNORED != 0;
            if let Some(subs) = t.by_wd.get(&e.wd) {
                for s in subs {
                    let named = match (&s.prefix, e.name) {
                        (Some(p), Some(n)) => n.as_bytes().starts_with(p.as_bytes()),
                        _ => true,
                    };
                    if ignored {
                        s.alive.store(false, Ordering::Relaxed);
                    }
                    if named || ignored {
                        s.waker.wake();
                    }
                }
            }
            if ignored && t.by_wd.remove(&e.wd).is_some() {
                // The kernel removed it (deleted file or directory): no rm_watch later.
                inner.watches.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// One inotify event.
#[derive(Debug, PartialEq)]
struct Event<'a> {
    wd: i32,
    mask: u32,
    name: Option<&'a OsStr>,
}

/// Splits what one read(2) of an inotify descriptor returned into events.
fn parse(mut b: &[u8]) -> Vec<Event<'_>> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut out = Vec::new();
    while b.len() >= HEADER {
        let wd = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        let mask = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
        let len = u32::from_ne_bytes([b[12], b[13], b[14], b[15]]) as usize;
        let Some(raw) = b.get(HEADER..HEADER + len) else {
            break;
        };
        let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        let name = (end > 0).then(|| OsStr::from_bytes(&raw[..end]));
        out.push(Event { wd, mask, name });
        b = &b[HEADER + len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::{stop_pair, Woke};
    use std::time::Duration;

    fn event(wd: i32, mask: u32, name: &[u8]) -> Vec<u8> {
        let len = if name.is_empty() {
            0
        } else {
            (name.len() + 1).div_ceil(16) * 16
        };
        let mut v = Vec::new();
        v.extend_from_slice(&wd.to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        let mut n = name.to_vec();
        n.resize(len, 0);
        v.extend_from_slice(&n);
        v
    }

    #[test]
    fn parses_events_with_and_without_names() {
        let mut b = event(3, libc::IN_MODIFY, b"");
        b.extend(event(4, libc::IN_CREATE, b"app.log.1"));
        b.extend_from_slice(&[1, 2, 3]); // a torn tail is not an event
        let e = parse(&b);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].wd, e[0].name), (3, None));
        assert_eq!(e[1].name, Some(OsStr::new("app.log.1")));
    }

    #[test]
    fn a_write_wakes_the_file_watcher_and_a_rename_the_directory_watcher() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("app.log");
        std::fs::write(&p, b"a\n").unwrap();
        let (stopper, stop) = stop_pair();
        let (w, thread, err) = Watcher::start(stop, Arc::default());
        assert!(err.is_none(), "{err:?}");
        let (_s, tok) = stop_pair();
        let file = w.watch_file(&p, &tok.waker()).unwrap();
        let (_s2, dir_tok) = stop_pair();
        let _dir = w
            .watch_dir(d.path(), OsStr::new("app.log"), &dir_tok.waker())
            .unwrap();
        assert_eq!(w.watches(), 2);
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"b\n")
            .unwrap();
        assert_eq!(tok.wait(Duration::from_secs(10)), Woke::Poked);
        std::fs::write(d.path().join("other.txt"), b"x").unwrap();
        std::fs::rename(&p, d.path().join("app.log.1")).unwrap();
        assert_eq!(dir_tok.wait(Duration::from_secs(10)), Woke::Poked);
        drop(file);
        assert_eq!(
            w.watches(),
            1,
            "the last subscriber gone, the watch is removed"
        );
        stopper.stop();
        thread.unwrap().join().unwrap();
    }
}
