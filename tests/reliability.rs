//! Reliability scenarios against a real broker: special files, many files, repeated
//! SIGKILL under load. Each counts lines in Kafka; missing must be 0.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

fn entry(path: &str, topic: &str) -> String {
    format!("  - path: {path}\n    topic: {topic}\n    from: beginning\n")
}

#[test]
fn special_files_get_one_clear_line_each_and_others_keep_flowing() {
    let broker = Broker::start();
    broker.create_topic("special", 1);
    let w = Workdir::new();
    let fifo = w.path("fifo.log");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    fs::create_dir(w.path("dir.log")).unwrap();
    std::os::unix::fs::symlink(w.path("loop2.log"), w.path("loop1.log")).unwrap();
    std::os::unix::fs::symlink(w.path("loop1.log"), w.path("loop2.log")).unwrap();
    let replaced = w.path("replaced.log");
    append_lines(&replaced, "r", 0..10);
    let good = w.path("good.log");
    append_lines(&good, "good", 0..50);
    let collect = [
        entry(&w.p("fifo.log"), "special"),
        entry(&w.p("dir.log"), "special"),
        entry(&w.p("loop1.log"), "special"),
        entry("/dev/null", "special"),
        entry(&w.p("replaced.log"), "special"),
        entry(&w.p("good.log"), "special"),
    ]
    .concat();
    let cfg = w.config(&broker, &collect, "");
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[good.as_path(), replaced.as_path()]);
    // A followed file replaced by a directory: its lines are kept, the directory refused.
    fs::remove_file(&replaced).unwrap();
    fs::create_dir(&replaced).unwrap();
    assert!(
        agent.wait_log("replaced.log: is a directory", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&good, "good", 50..100);
    wait_shipped(&w, &agent, &[good.as_path()]);
    assert!(
        agent.stop().success(),
        "the agent never hung on a FIFO or device"
    );
    let log = agent.log();
    for (name, why) in [
        ("fifo.log", "is a FIFO"),
        ("dir.log", "is a directory"),
        ("loop1.log", "ymbolic links"),
        ("/dev/null", "is a device"),
    ] {
        let n = log
            .lines()
            .filter(|l| l.contains(name) && l.contains(why))
            .count();
        assert_eq!(n, 1, "{name}: one clear line saying {why:?}:\n{log}");
    }
    let recs = consume_all(&broker, "special", 110, SHIP_TIMEOUT);
    let goods: Vec<Record> = recs
        .iter()
        .filter(|r| r.payload.starts_with(b"good:"))
        .cloned()
        .collect();
    assert_exactly_once(&goods, "good", 100);
    let rs: Vec<Record> = recs
        .iter()
        .filter(|r| r.payload.starts_with(b"r:"))
        .cloned()
        .collect();
    assert_exactly_once(&rs, "r", 10);
}

fn fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

#[test]
fn five_hundred_files_all_delivered_and_deleted_files_release_their_fds() {
    let broker = Broker::start();
    broker.create_topic("many", 3);
    let w = Workdir::new();
    fs::create_dir(w.path("many")).unwrap();
    let n = 500;
    let files: Vec<_> = (0..n)
        .map(|i| w.path(&format!("many/f{i:03}.log")))
        .collect();
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("f{i:03}"), 0..10);
    }
    let cfg = w.config(&broker, &entry(&w.p("many/*.log"), "many"), "");
    let mut agent = Agent::start(&w, &cfg);
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    wait_shipped(&w, &agent, &refs);
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("f{i:03}"), 10..20);
    }
    wait_shipped(&w, &agent, &refs);
    let pid = agent.pid();
    let (t, open) = (threads(pid), fds(pid));
    assert!(
        (n..n + 32).contains(&t),
        "one thread per file plus a few: {t}"
    );
    assert!(open >= n, "one descriptor per file: {open}");
    // Delete every file: each is drained and closed, its descriptor released.
    for f in &files {
        fs::remove_file(f).unwrap();
    }
    assert!(
        wait_until(SHIP_TIMEOUT, || fds(pid) + n <= open),
        "descriptors of deleted files not released: {} of {open}",
        fds(pid)
    );
    assert!(
        wait_until(SHIP_TIMEOUT, || threads(pid) + n <= t),
        "tailer threads of deleted glob matches end"
    );
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "many", n * 20, SHIP_TIMEOUT);
    for i in 0..n {
        let tag = format!("f{i:03}");
        let mine: Vec<Record> = recs
            .iter()
            .filter(|r| r.payload.starts_with(format!("{tag}:").as_bytes()))
            .cloned()
            .collect();
        assert_exactly_once(&mine, &tag, 20);
    }
}

#[test]
fn ten_sigkills_under_load_lose_nothing() {
    let broker = Broker::start();
    broker.create_topic("kills", 2);
    let w = Workdir::new();
    let path = w.path("app.log");
    let cfg = w.config(&broker, &entry(&w.p("app.log"), "kills"), "");
    let total = 50_000;
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            for k in 0..200 {
                append_lines(&path, "k", k * 250..(k + 1) * 250);
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    let mut checkpoints = Vec::new();
    for kill in 0..10 {
        let mut agent = Agent::start(&w, &cfg);
        // Let it make some progress (a new checkpoint), then kill it without warning.
        let before = registry_entries(&w).first().map_or(0, |e| e.2);
        let progressed = || {
            let now = registry_entries(&w).first().map_or(0, |e| e.2);
            let size = fs::metadata(&path).map_or(0, |m| m.len());
            now > before || (writer.is_finished() && now == size)
        };
        assert!(
            wait_until(SHIP_TIMEOUT, progressed),
            "no progress before kill {kill}:\n{}",
            agent.log()
        );
        agent.kill9();
        let size = fs::metadata(&path).map_or(0, |m| m.len());
        checkpoints.push((registry_entries(&w).first().map_or(0, |e| e.2), size));
    }
    writer.join().unwrap();
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "kills", total, SHIP_TIMEOUT);
    let t = tally(&recs);
    let missing = (0..total)
        .filter(|&i| !t.contains_key(line("k", i).as_bytes()))
        .count();
    assert_eq!(missing, 0, "lines lost across 10 SIGKILLs");
    let dups: usize = t.values().map(|c| c - 1).sum();
    // A restart re-sends only what lies between the checkpoint on disk and what the
    // killed agent could have read (the file's size at the kill).
    let line_len = (line("k", 0).len() + 1) as u64;
    let bound: u64 = checkpoints
        .iter()
        .map(|(c, size)| (size - c) / line_len)
        .sum();
    eprintln!(
        "10 kills: {dups} duplicated lines, bound {bound}; (checkpoint, size) {checkpoints:?}"
    );
    assert!(
        checkpoints.windows(2).all(|p| p[0].0 <= p[1].0),
        "checkpoints only move forward: {checkpoints:?}"
    );
    assert!(
        dups as u64 <= bound,
        "{dups} duplicates, but only {bound} lines lay past the checkpoints"
    );
}

#[test]
fn broker_unreachable_for_a_while_memory_stays_bounded_and_nothing_is_lost() {
    let relay_port = free_port();
    let broker = Broker::start_behind(relay_port);
    broker.create_topic("outage", 2);
    let mut relay = Relay::new(relay_port, broker.port);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "o", 0..5000);
    // The agent only knows the relay: its bootstrap and the advertised address.
    let yaml = format!(
        "kafka:\n  brokers: [\"127.0.0.1:{relay_port}\"]\n  linger_ms: 5\nagent:\n  data_dir: {}\n  poll_interval_ms: 50\n  checkpoint_interval_ms: 200\ncollect:\n{}",
        w.p("data"),
        entry(&w.p("app.log"), "outage")
    );
    let cfg = w.path("agent.yaml");
    fs::write(&cfg, yaml).unwrap();
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    let rss_before = peak_rss_kib(agent.pid());

    relay.cut(); // connection refused from now on
    append_lines(&path, "o", 5000..100_000); // ~5 MB the agent cannot ship
                                             // The outage is the scenario: 10 s with the broker unreachable.
    std::thread::sleep(Duration::from_secs(10));
    let size = fs::metadata(&path).unwrap().len();
    let during = registry_entries(&w)[0].2;
    let rss_during = peak_rss_kib(agent.pid());
    assert!(
        during < size,
        "nothing new can be acknowledged while unreachable"
    );
    // Bound: channel (16 × 64 KiB) + librdkafka queue (8 MiB) + overhead. The backlog
    // stays in the file; memory does not grow with it.
    assert!(
        rss_during < rss_before + 48 * 1024,
        "peak RSS grew from {rss_before} KiB to {rss_during} KiB during the outage"
    );
    relay.restore();
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "outage", 100_000, SHIP_TIMEOUT);
    let t = tally(&recs);
    let missing = (0..100_000)
        .filter(|&i| !t.contains_key(line("o", i).as_bytes()))
        .count();
    let dups: usize = t.values().map(|c| c - 1).sum();
    eprintln!("outage: {missing} missing, {dups} duplicated, rss {rss_before} -> {rss_during} KiB");
    assert_eq!(missing, 0, "lines lost across the outage");
}

#[test]
fn rename_rotation_storm_loses_nothing() {
    let Following {
        broker,
        w,
        path,
        mut agent,
    } = start_following("storm", 2, "logs/app.log", "logs/app.log", "s");
    // Rotate every 100 ms while writing ~10k lines/s for 5 s: several rotations happen
    // between two looks of the tailer, so files are rotated out before it saw them.
    let mut n = 1;
    let mut rotations = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        for _ in 0..10 {
            append_lines(&path, "s", n..n + 100);
            n += 100;
            std::thread::sleep(Duration::from_millis(10));
        }
        rotations += 1;
        fs::rename(&path, w.path(&format!("logs/app.log.{rotations}"))).unwrap();
    }
    append_lines(&path, "s", n..n + 100);
    n += 100;
    let mut files: Vec<_> = (1..=rotations)
        .map(|r| w.path(&format!("logs/app.log.{r}")))
        .collect();
    files.push(path.clone());
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    wait_shipped(&w, &agent, &refs);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "storm", n, SHIP_TIMEOUT);
    eprintln!("storm: {rotations} rotations, {n} lines");
    assert_exactly_once(&recs, "s", n);
}

#[test]
fn copytruncate_storm_loses_nothing_the_agent_could_see() {
    let Following {
        broker,
        w,
        path,
        mut agent,
    } = start_following("ctstorm", 1, "logs/app.log", "logs/app.log", "t");
    // copytruncate every 200 ms while writing. The writer pauses during copy+truncate:
    // what lands between those two steps is lost by copytruncate itself, not the agent.
    let mut n = 1;
    let mut copies = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        for _ in 0..10 {
            append_lines(&path, "t", n..n + 50);
            n += 50;
            std::thread::sleep(Duration::from_millis(20));
        }
        copies += 1;
        fs::copy(&path, w.path(&format!("logs/app.log.{copies}"))).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
    }
    append_lines(&path, "t", n..n + 50);
    n += 50;
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "ctstorm", n, SHIP_TIMEOUT);
    let t = tally(&recs);
    let dups: usize = t.values().map(|c| c - 1).sum();
    eprintln!("copytruncate storm: {copies} copies, {n} lines, {dups} duplicated");
    let missing = (0..n)
        .filter(|&i| !t.contains_key(line("t", i).as_bytes()))
        .count();
    assert_eq!(missing, 0, "{}", agent.log());
}

#[test]
fn stale_offset_for_a_reused_inode_or_truncation_while_down_is_not_applied() {
    let broker = Broker::start();
    broker.create_topic("reuse", 1);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "old", 0..1000);
    let cfg = w.config(&broker, &entry(&w.p("app.log"), "reuse"), "");
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    // While the agent is down the file is truncated and rewritten with other content,
    // longer than before: same inode, offset still "fits", but the head differs (the
    // same thing an inode reused by a new file looks like).
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append_lines(&path, "new", 0..1500);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    assert!(agent.log().contains("does not apply"), "{}", agent.log());
    let recs = consume_all(&broker, "reuse", 2500, SHIP_TIMEOUT);
    let olds: Vec<Record> = recs
        .iter()
        .filter(|r| r.payload.starts_with(b"old:"))
        .cloned()
        .collect();
    let news: Vec<Record> = recs
        .iter()
        .filter(|r| r.payload.starts_with(b"new:"))
        .cloned()
        .collect();
    assert_exactly_once(&olds, "old", 1000);
    assert_exactly_once(&news, "new", 1500);
}
