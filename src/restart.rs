//! Starting the agent again in place: the same binary executed again with the same
//! arguments, same pid (systemd and other supervisors see no exit). Used by SIGHUP for
//! settings that need a new Kafka client, and by exactly-once delivery after an aborted
//! transaction. How many of the latter happened since the process began travels in the
//! environment (`LOGAGENT_TXN_RESTARTS`).

use std::os::unix::process::CommandExt;

/// The variable counting restarts after aborted transactions.
const RESTARTS: &str = "LOGAGENT_TXN_RESTARTS";

/// The variable counting those restarts since the last committed transaction.
const IN_A_ROW: &str = "LOGAGENT_TXN_RESTARTS_IN_A_ROW";

/// A transaction was committed since this image started.
static COMMITTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn env_count(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Restarts after aborted transactions since the process began.
pub fn restarts() -> u64 {
    env_count(RESTARTS)
}

/// Restarts after aborted transactions with no transaction committed in between (what
/// the wait before the next one grows with).
pub fn restarts_in_a_row() -> u64 {
    if COMMITTED.load(std::sync::atomic::Ordering::Relaxed) {
        0
    } else {
        env_count(IN_A_ROW)
    }
}

/// A transaction was committed: the restarts in a row start again from 0.
pub fn committed() {
    COMMITTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Executes this binary again with the same arguments; `counted`: after an aborted
/// transaction (counted in `LOGAGENT_TXN_RESTARTS`). Stop signals are blocked across
/// the exec (the mask survives it) until the new image has its handlers. Returns only
/// if the exec failed: why.
pub fn exec_self(counted: bool) -> std::io::Error {
    block_stop_signals();
    // /proc/self/exe: the running binary even if a package upgrade replaced the file.
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    if counted {
        cmd.env(RESTARTS, (restarts() + 1).to_string());
        cmd.env(IN_A_ROW, (restarts_in_a_row() + 1).to_string());
    }
    cmd.args(args).exec()
}

/// Blocks SIGHUP, SIGTERM and SIGINT for the calling thread.
fn block_stop_signals() {
    // SAFETY: plain libc calls on a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
