//! A hung file system stops only its own file (issue 26, item 7). A FUSE file system
//! (a few lines of Python over Debian's python3-fusepy) serves `app.log` and, while a
//! flag file exists, blocks every `stat` and `read` of it in the kernel (state D, as a
//! hard NFS mount whose server went away does). The agent follows it and a file on the
//! local disk: with the mount hung, the local file's lines are still acknowledged and
//! checkpointed, `/health` and `/metrics` still answer, and SIGTERM still stops the
//! agent. A `stat` of a followed file under the registry lock or on the producer thread
//! (as before) blocked all of that.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// The FUSE file system: `/app.log` holds 200 lines of tag `h`; while FLAG exists,
/// `getattr` and `read` of it wait (bounded: 10 minutes) in the kernel's request.
const HANGFS: &str = r#"
import os, stat, sys, time, errno
from fusepy import FUSE, Operations
mnt, flag = sys.argv[1], sys.argv[2]
data = "".join("h:%08d:the quick brown fox jumps over the lazy dog\n" % i for i in range(200)).encode()
t0 = time.time()
class Hang(Operations):
    def _hang(self):
        end = time.time() + 600
        while os.path.exists(flag) and time.time() < end:
            time.sleep(0.05)
    def getattr(self, path, fh=None):
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == "/app.log":
            self._hang()
            return dict(st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_size=len(data),
                        st_mtime=t0, st_ctime=t0, st_ino=2)
        raise OSError(errno.ENOENT, "")
    def readdir(self, path, fh):
        return [".", "..", "app.log"]
    def read(self, path, size, offset, fh):
        self._hang()
        return data[offset:offset + size]
FUSE(Hang(), mnt, foreground=True, allow_other=True)
"#;

/// The mounted file system; unmounted (and its process ended) on drop.
struct HangFs {
    mnt: PathBuf,
    flag: PathBuf,
    child: Child,
}

impl HangFs {
    /// Mounts it under `dir`: `None` where FUSE cannot be used at all (no /dev/fuse, or
    /// not root, so no mount); anywhere else a failure to mount fails the test, with
    /// the daemon's output (a skip there would be a test that cannot fail).
    fn mount(dir: &Path) -> Option<HangFs> {
        // SAFETY: geteuid has no preconditions.
        if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let mnt = dir.join("mnt");
        fs::create_dir_all(&mnt).expect("mkdir mnt");
        let script = dir.join("hangfs.py");
        fs::write(&script, HANGFS).expect("write hangfs.py");
        let flag = dir.join("hang");
        let log = dir.join("hangfs.log");
        let out = fs::File::create(&log).expect("hangfs.log");
        // Debian's python (the package is installed for it), not one a PATH shim picks.
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&mnt)
            .arg(&flag)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start /usr/bin/python3 (scripts/test.sh installs python3-fusepy)");
        let mut fsys = HangFs { mnt, flag, child };
        let mounted = wait_until(Duration::from_secs(20), || {
            fsys.mnt.join("app.log").exists() || fsys.child.try_wait().ok().flatten().is_some()
        }) && fsys.mnt.join("app.log").exists();
        let said = fs::read_to_string(&log).unwrap_or_default();
        if !mounted
            && (said.contains("Operation not permitted") || said.contains("Permission denied"))
        {
            // A container without CAP_SYS_ADMIN: no mount possible, said once.
            eprintln!("SKIPPED: the kernel refused the FUSE mount here: {said}");
            return None;
        }
        assert!(mounted, "the FUSE file system did not mount: {said}");
        Some(fsys)
    }

    fn hang(&self) {
        fs::write(&self.flag, b"").expect("flag");
    }

    fn release(&self) {
        let _ = fs::remove_file(&self.flag);
    }
}

impl Drop for HangFs {
    fn drop(&mut self) {
        self.release();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_hung_mount_stops_only_its_own_file() {
    let w = Workdir::new();
    let Some(hangfs) = HangFs::mount(&w.path("")) else {
        eprintln!(
            "SKIPPED: FUSE cannot be mounted here (/dev/fuse, CAP_SYS_ADMIN, python3-fusepy)"
        );
        return;
    };
    let broker = Broker::start();
    broker.create_topic("hung-nfs", 1);
    broker.create_topic("hung-local", 1);
    let local = w.path("local.log");
    append_lines(&local, "l", 0..100);
    let nfs = hangfs.mnt.join("app.log");
    let port = free_port();
    let collect = format!(
        "  - path: {}\n    topic: hung-nfs\n    from: beginning\n  - path: {}\n    topic: hung-local\n    from: beginning\n",
        nfs.display(),
        local.display()
    );
    let cfg = w.config(
        &broker,
        &collect,
        &format!(
            "  metrics_addr: 127.0.0.1:{port}\n  stats_interval_ms: 200\n  stall_warn_ms: 1000\n  allowed_paths: [\"{}\", \"{}\"]\n",
            hangfs.mnt.display(),
            w.p("")
        ),
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[nfs.as_path(), local.as_path()]);
    hangfs.hang();
    // Long enough for the tailer of app.log to be stuck in a stat of it, and for the
    // stats line, stall watch, checkpoint and status to have run meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    append_lines(&local, "l", 100..2100);
    wait_shipped(&w, &agent, &[local.as_path()]);
    assert_eq!(get(port, "/health").0, 200, "{}", agent.log());
    let (code, body) = get(port, "/metrics");
    assert_eq!(code, 200, "{}", agent.log());
    assert!(body.contains("hung-local"), "{body}");
    let recs = consume_all(&broker, "hung-local", 2100, Duration::from_secs(15));
    assert_eq!(missing(&recs, "l", 2100), Vec::<usize>::new());
    // A stop while the mount is still hung: the agent's part is bounded (the tailer
    // stuck in the kernel is named and not waited for past the shutdown timeout, the
    // producer flushes and checkpoints). The process itself cannot end before the FUSE
    // request is answered (a request already in the daemon's hands is waited out
    // uninterruptibly by the kernel; a hard NFS mount's waits are killable), so the
    // hang is released once the agent said it stopped.
    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait_log("not waited for", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    assert!(
        agent.wait_log("producer stopped", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    hangfs.release();
    let status = agent.wait_exit(SHIP_TIMEOUT).expect("the agent exits");
    assert!(status.success(), "{}", agent.log());
    let recs = consume_all(&broker, "hung-nfs", 200, Duration::from_secs(15));
    assert_eq!(missing(&recs, "h", 200), Vec::<usize>::new());
}
