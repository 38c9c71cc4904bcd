//! What the agent does at the edge of its resources: a tailer thread that cannot start
//! (the cgroup's task limit, systemd's `TasksMax`) waits and is tried again; nothing
//! is lost once there is room. Real agent, real broker, a real pids cgroup.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// A pids cgroup (v1 controller, as on this kind of machine) of the test's own, removed
/// on drop; `None` where none can be made (then the test says so and does not run).
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    fn new() -> Option<PidsCgroup> {
        let root = Path::new("/sys/fs/cgroup/pids");
        let dir = root.join(format!("logagent-test-{}", std::process::id()));
        fs::create_dir(&dir).ok()?;
        Some(PidsCgroup(dir))
    }

    fn set_max(&self, max: &str) {
        fs::write(self.0.join("pids.max"), max).expect("write pids.max");
    }

    fn current(&self) -> u64 {
        fs::read_to_string(self.0.join("pids.current"))
            .expect("read pids.current")
            .trim()
            .parse()
            .expect("a number")
    }

    fn add(&self, pid: u32) {
        fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// Files that appear while the task limit leaves no room for their tailer threads: one
/// ERROR for the episode (not one per file and rescan), the files wait, and once the
/// limit is raised every line of every file arrives exactly once.
#[test]
fn tailer_threads_that_cannot_start_are_retried_once_there_is_room() {
    let Some(cg) = PidsCgroup::new() else {
        eprintln!("SKIPPED: no writable pids cgroup under /sys/fs/cgroup/pids on this machine");
        return;
    };
    let broker = Broker::start();
    broker.create_topic("limits-tasks", 1);
    let w = Workdir::new();
    let dir = w.path("logs");
    fs::create_dir(&dir).expect("mkdir");
    let first: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("f{i}.log"))).collect();
    for (i, f) in first.iter().enumerate() {
        append_lines(f, &format!("f{i}"), 0..10);
    }
    let cfg = w.config(
        &broker,
        &beginning_entry(&format!("{}/*.log", dir.display()), "limits-tasks"),
        "",
    );
    let mut agent = Agent::start(&w, &cfg);
    cg.add(agent.pid());
    let refs: Vec<&Path> = first.iter().map(PathBuf::as_path).collect();
    wait_shipped(&w, &agent, &refs);
    // No room for one more thread.
    cg.set_max(&cg.current().to_string());
    let late: Vec<PathBuf> = (3..23).map(|i| dir.join(format!("f{i}.log"))).collect();
    for (i, f) in late.iter().enumerate() {
        append_lines(f, &format!("f{}", i + 3), 0..10);
    }
    assert!(
        agent.wait_log("cannot start a tailer thread", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    // Several rescans (glob_interval_ms 200) go by while there is no room.
    std::thread::sleep(std::time::Duration::from_secs(2));
    cg.set_max("max");
    let all: Vec<&Path> = first
        .iter()
        .chain(late.iter())
        .map(PathBuf::as_path)
        .collect();
    wait_shipped(&w, &agent, &all);
    assert!(agent.stop().success(), "{}", agent.log());
    let log = agent.own_log();
    let errors = log
        .lines()
        .filter(|l| l.contains("cannot start a tailer thread"))
        .count();
    assert_eq!(errors, 1, "one ERROR for the episode:\n{log}");
    let recs = consume_all(&broker, "limits-tasks", 230, SHIP_TIMEOUT);
    for i in 0..23 {
        assert_exactly_once(&recs, &format!("f{i}"), 10);
    }
}
