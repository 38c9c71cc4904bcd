//! The reliability suite: each scenario drives the real binary against the real broker
//! (and etcd), writes numbered lines, reads every partition back and reports per file
//! expected / received / missing / duplicated (tests/common/scenario.rs). A scenario
//! passes only with missing = 0 and duplicates within the bound it states.
//! `scripts/reliability.sh` runs them and prints the table docs/design.md shows.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::scenario::{self, Report, Writer};
use common::*;

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
    // A second entry naming the same file through a symlink: read once, one clear line.
    std::os::unix::fs::symlink(&good, w.path("alias.log")).unwrap();
    let collect = [
        beginning_entry(&w.p("fifo.log"), "special"),
        beginning_entry(&w.p("dir.log"), "special"),
        beginning_entry(&w.p("loop1.log"), "special"),
        beginning_entry("/dev/null", "special"),
        beginning_entry(&w.p("replaced.log"), "special"),
        beginning_entry(&w.p("good.log"), "special"),
        beginning_entry(&w.p("alias.log"), "special"),
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
    let same = log
        .lines()
        .filter(|l| l.contains("is the same file as"))
        .count();
    assert_eq!(same, 1, "one line for the file named twice:\n{log}");
    let recs = consume_all(&broker, "special", 110, SHIP_TIMEOUT);
    Report::check(
        "special files: FIFO, directory, symlink loop, device, file replaced by a directory, one file named twice",
        &recs,
        &[("good".into(), 100), ("r".into(), 10)],
    )
    .assert_ok(0, "nothing is re-read");
}

fn fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

#[test]
fn hostile_input_binary_huge_line_and_unreadable_file() {
    let broker = Broker::start();
    broker.create_topic("bad", 1);
    let w = Workdir::new();
    let as_root = unsafe { libc::geteuid() } == 0;
    // Root reads any file; to see a permission error the agent runs as nobody.
    fs::set_permissions(w.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(w.path("data")).unwrap();
    if as_root {
        std::os::unix::fs::chown(w.path("data"), Some(65534), Some(65534)).unwrap();
    }
    let bin = w.path("bin.log");
    let mut bytes = b"plain\n\xff\xfe\x00binary\x00\n".to_vec();
    let huge: Vec<u8> = (0..50_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    bytes.extend_from_slice(&huge);
    bytes.extend_from_slice(b"\nafter\r\n");
    fs::write(&bin, &bytes).unwrap();
    let locked = w.path("locked.log");
    fs::write(&locked, b"secret\n").unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let good = w.path("good.log");
    append_lines(&good, "good", 0..100);
    for p in [&bin, &good] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let collect = [
        beginning_entry(&w.p("bin.log"), "bad"),
        beginning_entry(&w.p("locked.log"), "bad"),
        beginning_entry(&w.p("good.log"), "bad"),
    ]
    .concat();
    let cfg = w.config(&broker, &collect, "");
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    let mut agent = Agent::start_with(&w, &cfg, |c| {
        if as_root {
            use std::os::unix::process::CommandExt;
            c.uid(65534).gid(65534);
        }
    });
    wait_shipped(&w, &agent, &[bin.as_path(), good.as_path()]);
    // The others flow while the unreadable file keeps being refused.
    append_lines(&good, "good", 100..200);
    wait_shipped(&w, &agent, &[bin.as_path(), good.as_path()]);
    assert!(agent.stop().success());
    let log = agent.log();
    let denied = log
        .lines()
        .filter(|l| l.contains("locked.log") && l.contains("ermission denied"))
        .count();
    assert_eq!(
        denied, 1,
        "one clear error line for the unreadable file:\n{log}"
    );
    assert!(log.contains("split into pieces"), "{log}");

    let n_pieces = huge.len().div_ceil(1_000_000); // agent.max_line_bytes default
    let recs = consume_all(&broker, "bad", 200 + 2 + n_pieces + 1, SHIP_TIMEOUT);
    Report::check(
        "hostile input: binary, NUL, 50 MB line, CRLF, unreadable file; a good file beside",
        &recs,
        &[("good".into(), 200)],
    )
    .assert_ok(0, "nothing is re-read");
    let from_bin: Vec<&Record> = recs
        .iter()
        .filter(|r| r.headers["path"] == w.p("bin.log"))
        .collect();
    let payloads: Vec<&[u8]> = from_bin.iter().map(|r| &r.payload[..]).collect();
    assert_eq!(payloads[0], b"plain");
    assert_eq!(
        payloads[1], b"\xff\xfe\x00binary\x00",
        "bytes shipped as they are"
    );
    // 50,000,000 bytes in pieces of at most 1,000,000 bytes, nothing lost, in order.
    let pieces: Vec<u8> = payloads[2..payloads.len() - 1].concat();
    assert_eq!(pieces.len(), huge.len());
    assert!(pieces == huge, "the long line arrives whole, in pieces");
    assert_eq!(payloads.len(), 2 + n_pieces + 1);
    assert_eq!(
        *payloads.last().unwrap(),
        b"after\r",
        "only the newline is stripped"
    );
    assert!(!recs.iter().any(|r| r.payload == b"secret"));
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
        append_lines(f, &format!("f{i:03}"), 0..1);
    }
    let cfg = w.config(&broker, &beginning_entry(&w.p("many/*.log"), "many"), "");
    let mut agent = Agent::start(&w, &cfg);
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    wait_shipped(&w, &agent, &refs);
    // 10 lines/s into each of the 500 files for 10 s (5,000 lines/s in all).
    let per_file = 1 + 100;
    let start = Instant::now();
    for round in 1..per_file {
        for (i, f) in files.iter().enumerate() {
            append_lines(f, &format!("f{i:03}"), round..round + 1);
        }
        let next = start + Duration::from_millis(100 * round as u64);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
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
    let recs = consume_all(&broker, "many", n * per_file, SHIP_TIMEOUT);
    let expected: Vec<(String, usize)> = (0..n).map(|i| (format!("f{i:03}"), per_file)).collect();
    Report::check("500 files, 10 lines/s each for 10 s", &recs, &expected)
        .assert_ok(0, "nothing is re-read");
}

/// Files `app.log.1 … app.log.k` plus `app.log` (when it exists) under `dir`.
fn rotated_set(dir: &Path, base: &str, k: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=k).map(|r| dir.join(format!("{base}.{r}"))).collect();
    let current = dir.join(base);
    if current.exists() {
        files.push(current);
    }
    files
}

/// A storm: the agent follows `logs/app.log` from its start while a writer appends
/// `rate` lines/s of `tag` for 30 s and runs `action` every `period`. Returns the setup
/// and (lines `0..n` written, actions run) once the writer is done.
fn storm(
    topic: &str,
    partitions: i32,
    tag: &str,
    rate: usize,
    period: Duration,
    action: scenario::Action,
) -> (Following, usize, usize) {
    let f = start_following(topic, partitions, "logs/app.log", "logs/app.log", tag);
    let writer = Writer::start(
        &f.path,
        tag,
        1,
        rate,
        Duration::from_secs(30),
        Some((period, action)),
    );
    let (n, actions) = writer.join();
    (f, n, actions)
}

/// A rename storm (see [`storm`]) every 100 ms, then every rotated file and the current
/// one shipped, and each line of `tag` in Kafka exactly once.
fn rename_storm(topic: &str, tag: &str, rate: usize, rotate: scenario::Action, label: &str) {
    let (f, n, rotations) = storm(topic, 2, tag, rate, Duration::from_millis(100), rotate);
    let Following {
        broker,
        w,
        mut agent,
        ..
    } = f;
    let files = rotated_set(&w.path("logs"), "app.log", rotations);
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    wait_shipped(&w, &agent, &refs);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, topic, n, SHIP_TIMEOUT);
    Report::check(
        &label.replace("{rotations}", &rotations.to_string()),
        &recs,
        &[(tag.into(), n)],
    )
    .assert_ok(
        0,
        "each rotated file is read once, whatever its name by then",
    );
}

#[test]
fn rename_rotation_storm_loses_nothing() {
    // mv + new file every 100 ms while writing 20k lines/s for 30 s: several rotations
    // happen between two looks of the tailer, so files are rotated out before it saw them.
    let rotate = |p: &Path, k: usize| {
        fs::rename(p, p.with_file_name(format!("app.log.{k}"))).unwrap();
    };
    rename_storm(
        "storm",
        "s",
        20_000,
        Box::new(rotate),
        "rename rotation storm: mv every 100 ms ({rotations}×), 20k lines/s, 30 s",
    );
}

#[test]
fn rename_storm_with_logrotate_numbering_loses_nothing() {
    // logrotate's own scheme: app.log.N → app.log.N+1 … app.log → app.log.1, every
    // 100 ms at 10k lines/s for 30 s: files the agent has not read yet are renamed
    // again (and again) before it gets to them; it finds them by inode.
    let shift = |p: &Path, k: usize| {
        for i in (1..k).rev() {
            let from = p.with_file_name(format!("app.log.{i}"));
            fs::rename(&from, p.with_file_name(format!("app.log.{}", i + 1))).unwrap();
        }
        fs::rename(p, p.with_file_name("app.log.1")).unwrap();
    };
    rename_storm(
        "shift",
        "h",
        10_000,
        Box::new(shift),
        "rename storm, logrotate numbering (.1→.2→…, {rotations}×, every 100 ms), 10k lines/s, 30 s",
    );
}

#[test]
fn copytruncate_storm_loses_nothing_the_agent_could_see() {
    // copytruncate every 200 ms while writing 10k lines/s for 30 s. The writer pauses
    // during copy + truncate (as under logrotate's copytruncate with a quiet writer): what
    // lands between those two steps is lost by copytruncate itself, not the agent. Bytes
    // the agent had not read yet when the file was truncated come from the copy.
    let copytruncate = |p: &Path, k: usize| {
        fs::copy(p, p.with_file_name(format!("app.log.{k}"))).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(0)
            .unwrap();
    };
    let (f, n, copies) = storm(
        "ctstorm",
        1,
        "t",
        10_000,
        Duration::from_millis(200),
        Box::new(copytruncate),
    );
    let Following {
        broker,
        w,
        path,
        mut agent,
    } = f;
    append_lines(&path, "t", n..n + 1);
    let n = n + 1;
    wait_shipped(&w, &agent, &[path.as_path()]);
    // The current file being shipped does not mean the last copy was looked at: the
    // agent may not have noticed the last truncation yet (it looks every 200 ms here).
    // Read back while it still runs, until every line is there (bounded).
    let recs = consume_all(&broker, "ctstorm", n, SHIP_TIMEOUT);
    assert!(agent.stop().success());
    let lost = agent
        .log()
        .lines()
        .filter(|l| l.contains("counted as lost"))
        .count();
    assert_eq!(lost, 0, "nothing counted as lost:\n{}", agent.log());
    Report::check(
        &format!("copytruncate storm: copy + truncate every 200 ms ({copies}×), 10k lines/s, 30 s"),
        &recs,
        &[("t".into(), n)],
    )
    .assert_ok(0, "each byte is read from the file or from its copy, once");
}

/// Makes `path` a new file with the inode `ino` (freed a moment ago), if the file
/// system hands it out again within 1000 tries; false if it does not.
fn recreate_with_inode(path: &Path, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    // ext4 hands a freed inode out again once the deletion is committed to its journal,
    // to a new file in the same directory (same block group).
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let mut tries = Vec::new();
    let mut found = false;
    for i in 0..1000 {
        let p = path.with_file_name(format!(".reuse-{i}"));
        fs::write(&p, b"").unwrap();
        if fs::metadata(&p).unwrap().ino() == ino {
            fs::rename(&p, path).unwrap();
            found = true;
            break;
        }
        tries.push(p);
    }
    for p in tries {
        let _ = fs::remove_file(p);
    }
    if !found {
        fs::write(path, b"").unwrap();
    }
    found
}

#[test]
fn stale_offset_for_a_reused_inode_or_truncation_while_down_is_not_applied() {
    use std::os::unix::fs::MetadataExt;
    let OneFile {
        broker,
        w,
        path,
        cfg,
    } = one_file("reuse", 1, "old", 1000, "");
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    // While the agent is down the file is truncated and rewritten with other content,
    // longer than before: same inode, offset still "fits", but the head differs.
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

    // Inode reuse: the file is deleted and another file gets its inode number.
    let ino = fs::metadata(&path).unwrap().ino();
    fs::remove_file(&path).unwrap();
    let reused = recreate_with_inode(&path, ino);
    append_lines(&path, "reused", 0..2000);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "reuse", 4500, SHIP_TIMEOUT);
    eprintln!("inode {ino} handed out again: {reused}");
    if reused {
        // The registry knew this inode with the old content's offset: not applied.
        assert!(
            agent.own_log().contains("(inode reused)"),
            "{}",
            agent.own_log()
        );
    }
    Report::check(
        "truncated + rewritten while down, then inode reused",
        &recs,
        &[
            ("old".into(), 1000),
            ("new".into(), 1500),
            ("reused".into(), 2000),
        ],
    )
    .assert_ok(0, "a stale offset is never applied, nothing read twice");
}

/// A small deterministic generator for "random" moments (no dependency for it).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn twenty_sigkills_under_load_lose_nothing() {
    let broker = Broker::start();
    broker.create_topic("kills", 2);
    let w = Workdir::new();
    let path = w.path("app.log");
    let cfg = w.config(&broker, &beginning_entry(&w.p("app.log"), "kills"), "");
    let writer = Writer::start(&path, "k", 0, 5_000, Duration::from_secs(600), None);
    let mut rng = Lcg(0x5eed);
    let mut checkpoints = Vec::new();
    for kill in 0..20 {
        let mut agent = Agent::start(&w, &cfg);
        // Let it make some progress (a new checkpoint), then kill it at a random moment
        // up to 500 ms later, without warning.
        let before = registry_entries(&w).first().map_or(0, |e| e.2);
        let progressed = || registry_entries(&w).first().map_or(0, |e| e.2) > before;
        assert!(
            wait_until(SHIP_TIMEOUT, progressed),
            "no progress before kill {kill}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(rng.below(500)));
        agent.kill9();
        let size = fs::metadata(&path).map_or(0, |m| m.len());
        checkpoints.push((registry_entries(&w).first().map_or(0, |e| e.2), size));
    }
    let (n, _) = writer.finish();
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "kills", n, SHIP_TIMEOUT);
    assert!(
        checkpoints.windows(2).all(|p| p[0].0 <= p[1].0),
        "checkpoints only move forward: {checkpoints:?}"
    );
    // A restart re-sends only what lies between the checkpoint on disk and what the
    // killed agent could have read (the file's size at the kill).
    let line_len = (line("k", 0).len() + 1) as u64;
    let bound: u64 = checkpoints
        .iter()
        .map(|(c, size)| (size - c) / line_len)
        .sum();
    Report::check(
        "20 SIGKILLs at random moments, 5k lines/s",
        &recs,
        &[("k".into(), n)],
    )
    .assert_ok(
        bound as usize,
        "lines past the checkpoint on disk at each kill",
    );
}

#[test]
fn broker_frozen_for_60s_memory_stays_bounded_and_everything_arrives() {
    let broker = Broker::start_own();
    broker.create_topic("frozen", 2);
    let w = Workdir::new();
    let path = w.path("app.log");
    let cfg = w.config(&broker, &beginning_entry(&w.p("app.log"), "frozen"), "");
    let mut agent = Agent::start(&w, &cfg);
    let writer = Writer::start(&path, "f", 0, 2_000, Duration::from_secs(600), None);
    assert!(wait_until(SHIP_TIMEOUT, || registry_entries(&w)
        .first()
        .is_some_and(|e| e.2 > 0)));
    let rss_before = peak_rss_kib(agent.pid());
    broker.freeze();
    // The outage itself is the scenario: 60 s with the broker not answering while
    // 2,000 lines/s keep coming.
    std::thread::sleep(Duration::from_secs(60));
    let during = registry_entries(&w)[0].2;
    let rss_during = peak_rss_kib(agent.pid());
    broker.thaw();
    let (n, _) = writer.finish();
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    let size = fs::metadata(&path).unwrap().len();
    assert!(
        during < size,
        "nothing can be acknowledged while the broker is frozen"
    );
    // Bound: channel (16 × 64 KiB) + librdkafka queue (8 MiB) + overhead; the backlog
    // waits in the file.
    eprintln!("frozen 60 s: peak RSS {rss_before} KiB before, {rss_during} KiB during");
    assert!(
        rss_during < rss_before + 48 * 1024,
        "peak RSS grew from {rss_before} KiB to {rss_during} KiB during the outage"
    );
    let recs = consume_all(&broker, "frozen", n, SHIP_TIMEOUT);
    Report::check(
        "broker frozen (SIGSTOP) 60 s, 2k lines/s",
        &recs,
        &[("f".into(), n)],
    )
    .assert_ok(
        0,
        "idempotent producer: re-sent batches are dropped by the broker",
    );
}

#[test]
fn broker_unreachable_for_a_while_memory_stays_bounded_and_nothing_is_lost() {
    let relay_port = free_port();
    let broker = Broker::start_behind(relay_port);
    // The relay first: the broker advertises its port, so admin requests go through it.
    let mut relay = Relay::new(relay_port, broker.port);
    broker.create_topic("outage", 2);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "o", 0..5000);
    // The agent only knows the relay: its bootstrap and the advertised address.
    let yaml = format!(
        "kafka:\n  brokers: [\"127.0.0.1:{relay_port}\"]\n  linger_ms: 5\nagent:\n  data_dir: {}\n  poll_interval_ms: 50\n  checkpoint_interval_ms: 200\ncollect:\n{}",
        w.p("data"),
        beginning_entry(&w.p("app.log"), "outage")
    );
    let cfg = w.path("agent.yaml");
    fs::write(&cfg, yaml).unwrap();
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    let rss_before = peak_rss_kib(agent.pid());

    relay.cut(); // connection refused from now on
    append_lines(&path, "o", 5000..100_000); // ~6 MB the agent cannot ship
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
    eprintln!("unreachable: peak RSS {rss_before} KiB before, {rss_during} KiB during");
    let recs = consume_all(&broker, "outage", 100_000, SHIP_TIMEOUT);
    Report::check(
        "broker unreachable (connection refused) 10 s, 95k lines waiting",
        &recs,
        &[("o".into(), 100_000)],
    )
    .assert_ok(0, "nothing reached the broker during the outage");
}

const IP: &str = "10.1.2.3";
const KEY: &str = "/logagent/10.1.2.3/collect_config";
const STATUS_KEY: &str = "/logagent/10.1.2.3/status";

fn collect_json(paths: &[String], topic: &str) -> String {
    let entries: Vec<String> = paths
        .iter()
        .map(|p| format!(r#"{{"path":"{p}","topic":"{topic}","from":"beginning"}}"#))
        .collect();
    format!("[{}]", entries.join(","))
}

#[test]
fn config_churn_every_200ms_for_30s_with_an_etcd_restart_loses_nothing() {
    let broker = Broker::start();
    broker.create_topic("churn", 2);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let tags = ["a", "b", "c", "d"];
    let paths: Vec<PathBuf> = tags.iter().map(|t| w.path(&format!("{t}.log"))).collect();
    let names: Vec<String> = tags.iter().map(|t| w.p(&format!("{t}.log"))).collect();
    let cfg = central_config(&w, &broker, &etcd, IP, "");
    etcd.put(KEY, &collect_json(&names, "churn"));
    let mut agent = Agent::start(&w, &cfg);
    let writers: Vec<Writer> = paths
        .iter()
        .zip(tags)
        .map(|(p, t)| Writer::start(p, t, 0, 1_000, Duration::from_secs(600), None))
        .collect();
    // Every 200 ms another subset of the four files is collected; halfway etcd restarts.
    let start = Instant::now();
    let mut rng = Lcg(42);
    let (mut changes, mut restarted) = (0, false);
    while start.elapsed() < Duration::from_secs(30) {
        let mask = rng.below(16) as usize;
        let subset: Vec<String> = (0..4)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| names[i].clone())
            .collect();
        etcd.put(KEY, &collect_json(&subset, "churn"));
        changes += 1;
        if !restarted && start.elapsed() >= Duration::from_secs(15) {
            etcd.kill();
            std::thread::sleep(Duration::from_secs(1));
            etcd.restart();
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    etcd.put(KEY, &collect_json(&names, "churn"));
    let ns: Vec<usize> = writers.into_iter().map(|wr| wr.finish().0).collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    wait_shipped(&w, &agent, &refs);
    assert!(agent.stop().success());
    let total: usize = ns.iter().sum();
    let recs = consume_all(&broker, "churn", total, SHIP_TIMEOUT);
    let expected: Vec<(String, usize)> = tags.iter().map(|t| t.to_string()).zip(ns).collect();
    Report::check(
        &format!("config churn: collect list changed every 200 ms ({changes}×) for 30 s, etcd restarted, 4 files × 1k lines/s"),
        &recs,
        &expected,
    )
    .assert_ok(0, "a re-added file resumes where Kafka acknowledged");
}

#[test]
fn truncation_nobody_copied_is_counted_to_the_byte_and_stalls_are_reported() {
    let relay_port = free_port();
    let broker = Broker::start_behind(relay_port);
    // The relay first: the broker advertises its port, so admin requests go through it.
    let mut relay = Relay::new(relay_port, broker.port);
    broker.create_topic("loss", 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "o", 0..5000);
    let port = free_port();
    let cfg = {
        let text = fs::read_to_string(central_config(
            &w,
            &broker,
            &etcd,
            IP,
            &format!("  metrics_addr: 127.0.0.1:{port}\n  stall_warn_ms: 2000\n"),
        ))
        .unwrap()
        .replace(&broker.addr(), &format!("127.0.0.1:{relay_port}"));
        let cfg = w.path("agent.yaml");
        fs::write(&cfg, text).unwrap();
        cfg
    };
    etcd.put(KEY, &collect_json(&[w.p("app.log")], "loss"));
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);

    // Kafka unreachable; 95k more lines: part is read (channel, librdkafka queue), the
    // rest waits in the file. The stall detector reports the file once.
    relay.cut();
    append_lines(&path, "o", 5000..100_000);
    let size = fs::metadata(&path).unwrap().len();
    assert!(
        agent.wait_log("app.log: stalled", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    assert!(
        wait_until(SHIP_TIMEOUT, || metric(port, "logagent_files_stalled")
            == Some(1)),
        "files_stalled"
    );
    assert!(wait_until(SHIP_TIMEOUT, || etcd
        .get(STATUS_KEY)
        .is_some_and(|s| s.contains(r#""stalled":true"#))));
    // Give the blocked tailer a second to note the file's size, then truncate it with
    // no copy anywhere (logrotate with copytruncate + compress, or a careless `> app.log`).
    std::thread::sleep(Duration::from_millis(1500));
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append_lines(&path, "n", 0..1000);
    relay.restore();
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(
        agent.wait_log("recovered from a stall", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    let lost_series = format!(
        "logagent_bytes_lost_total{{path=\"{}\",topic=\"loss\",reason=\"truncated\"}}",
        w.p("app.log")
    );
    let lost = metric(port, &lost_series).expect("bytes_lost_total truncated");
    assert!(wait_until(SHIP_TIMEOUT, || etcd
        .get(STATUS_KEY)
        .is_some_and(|s| s.contains(&format!(
            r#""bytes_lost":{{"truncated":{lost}}}"#
        )))
        && metric(port, "logagent_files_stalled") == Some(0)));
    assert!(agent.stop().success());
    let log = agent.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("app.log: stalled"))
            .count(),
        1,
        "one stall line:\n{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("counted as lost"))
            .count(),
        1,
        "one loss line:\n{log}"
    );
    let recs = consume_all(&broker, "loss", 1000, SHIP_TIMEOUT);
    let got_old = Report::check("", &recs, &[("o".into(), 100_000)]).files[0].received;
    // Every byte of the old content is either in Kafka or counted: no silent gap.
    let line_len = (line("o", 0).len() + 1) as u64;
    eprintln!("truncated while behind: {got_old} old lines shipped, {lost} bytes counted lost, file held {size}");
    assert!(lost > 0, "something was truncated away unread");
    assert_eq!(
        got_old as u64 * line_len + lost,
        size,
        "shipped + lost = written"
    );
    let shipped: Vec<Record> = recs
        .iter()
        .filter(|r| r.payload.starts_with(b"o:"))
        .cloned()
        .collect();
    assert_exactly_once(&shipped, "o", got_old);
    Report::check(
        "truncated while Kafka unreachable, no copy: new lines after it",
        &recs,
        &[("n".into(), 1000)],
    )
    .assert_ok(0, "the new content is read once from 0");
}

#[test]
fn rotated_file_deleted_before_it_was_read_is_counted() {
    let relay_port = free_port();
    let broker = Broker::start_behind(relay_port);
    // The relay first: the broker advertises its port, so admin requests go through it.
    let mut relay = Relay::new(relay_port, broker.port);
    broker.create_topic("gone", 1);
    let w = Workdir::new();
    fs::create_dir(w.path("logs")).unwrap();
    let path = w.path("logs/app.log");
    append_lines(&path, "a", 0..10);
    let port = free_port();
    let text = fs::read_to_string(w.config(
        &broker,
        &beginning_entry(&w.p("logs/app.log"), "gone"),
        &format!("  metrics_addr: 127.0.0.1:{port}\n"),
    ))
    .unwrap()
    .replace(&broker.addr(), &format!("127.0.0.1:{relay_port}"));
    let cfg = w.path("agent.yaml");
    fs::write(&cfg, text).unwrap();
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);

    // Kafka unreachable; while the agent is stopped, two rotations it will only find
    // afterwards: app.log.2 (large: reading it fills every queue and blocks) and
    // app.log.3, which is deleted while the agent is still busy with app.log.2.
    relay.cut();
    agent.freeze();
    fs::rename(&path, w.path("logs/app.log.1")).unwrap();
    append_lines(&path, "b", 0..50_000);
    fs::rename(&path, w.path("logs/app.log.2")).unwrap();
    std::thread::sleep(Duration::from_millis(20)); // a later mtime: read after .2
    append_lines(&path, "c", 0..1000);
    fs::rename(&path, w.path("logs/app.log.3")).unwrap();
    append_lines(&path, "d", 0..10);
    let doomed = fs::metadata(w.path("logs/app.log.3")).unwrap().len();
    agent.thaw();
    assert!(
        agent.wait_log("reading rotated file", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    assert!(
        !agent.log().contains("app.log.3 from the beginning"),
        "app.log.3 must still be waiting:\n{}",
        agent.log()
    );
    fs::remove_file(w.path("logs/app.log.3")).unwrap();
    relay.restore();
    wait_shipped(&w, &agent, &[path.as_path()]);
    let series = format!(
        "logagent_bytes_lost_total{{path=\"{}\",topic=\"gone\",reason=\"deleted\"}}",
        w.p("logs/app.log")
    );
    assert_eq!(metric(port, &series), Some(doomed), "deleted bytes counted");
    assert!(agent.stop().success());
    let log = agent.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("app.log.3 were deleted") && l.contains("counted as lost"))
            .count(),
        1,
        "one loss line naming the file:\n{log}"
    );
    let recs = consume_all(&broker, "gone", 50_020, SHIP_TIMEOUT);
    assert!(!recs.iter().any(|r| r.payload.starts_with(b"c:")));
    Report::check(
        "rotated files found after a stop, one deleted before it was read (counted)",
        &recs,
        &[("a".into(), 10), ("b".into(), 50_000), ("d".into(), 10)],
    )
    .assert_ok(0, "each surviving file is read once");
}
