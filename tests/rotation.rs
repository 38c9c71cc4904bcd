//! The tailing lifecycle as production walks it: the default `from: end`, the real
//! `logrotate` binary with real configs, restarts and crashes across rotations, late
//! writers, compressed rotations and siblings that are not rotations. Each test is one
//! finding of issue 10 that lost lines silently before the tail was rebuilt around the
//! ledger; each asserts on lines counted in Kafka.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use common::*;

/// Whether `payload` is one of the lines `0..n` of `tag` (parsed: a scan of all `n`
/// per record is quadratic at 200k lines).
fn is_line_of(payload: &[u8], tag: &str, n: usize) -> bool {
    let text = String::from_utf8_lossy(payload);
    let seq = text
        .strip_prefix(tag)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|r| r.get(..8))
        .and_then(|d| d.parse::<usize>().ok());
    seq.is_some_and(|i| i < n && line(tag, i).as_bytes() == payload)
}

/// Asserts that lines `0..n` of `tag` all arrived and nothing else did; returns the
/// number of duplicates (at-least-once: lines in flight at a SIGKILL may come twice).
fn assert_all(records: &[Record], tag: &str, n: usize) -> usize {
    let t = tally(records);
    let missing: Vec<usize> = (0..n)
        .filter(|i| !t.contains_key(line(tag, *i).as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{tag}: {} of {n} lines missing (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let foreign: Vec<String> = t
        .keys()
        .filter(|p| !is_line_of(p, tag, n))
        .take(5)
        .map(|p| String::from_utf8_lossy(&p[..p.len().min(60)]).into_owned())
        .collect();
    assert!(
        foreign.is_empty(),
        "{tag}: records that were never written as lines: {foreign:?}"
    );
    records.len() - t.len()
}

#[test]
fn restart_across_a_create_rotation_with_from_end_reads_the_new_file_from_0() {
    let (broker, w, path, cfg, mut agent) = follow_from_end("f1", "", "");
    append_lines(&path, "a", 0..10);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    // While stopped: the daily rotation, and the new file gets 1000 lines (the old one
    // was read to its end: nothing of it is owed).
    logrotate(&w, &path, "  rotate 3\n  create\n  missingok");
    append_lines(&path, "a", 10..1010);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[w.path("app.log.1").as_path(), path.as_path()]);
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "f1", 1010, SHIP_TIMEOUT), "a", 1010);
}

#[test]
fn restart_across_a_copytruncate_with_from_end_recovers_the_copy_and_reads_from_0() {
    let (broker, w, path, cfg, mut agent) = follow_from_end("f1c", "", "");
    append_lines(&path, "c", 0..10);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    append_lines(&path, "c", 10..300);
    logrotate(&w, &path, "  rotate 3\n  copytruncate");
    append_lines(&path, "c", 300..800);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[w.path("app.log.1").as_path(), path.as_path()]);
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "f1c", 800, SHIP_TIMEOUT), "c", 800);
}

/// A file empty when the agent last looked has an empty fingerprint, which matches
/// any content: filled and copytruncated while the agent is down (stopped, or killed
/// right after it started), the restart must still find and read the copy. `after`:
/// how many lines the writer adds after the copytruncate (0: the file stays empty).
fn empty_file_copytruncated_while_down(topic: &str, kill: bool, after: usize) {
    empty_file_rotated_while_down(topic, kill, after, "  rotate 3\n  copytruncate", 1);
}

/// [`empty_file_copytruncated_while_down`] with logrotate `directives`, run `times`
/// times while the agent is down (1,000 lines before each run).
fn empty_file_rotated_while_down(
    topic: &str,
    kill: bool,
    after: usize,
    directives: &str,
    times: usize,
) {
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    let w = Workdir::new();
    let path = w.path("app.log");
    fs::write(&path, "").unwrap();
    let cfg = w.config(&broker, &end_entry(&w.p("app.log"), topic), "");
    let mut agent = Agent::start(&w, &cfg);
    assert!(
        agent.wait_log("following from its end", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    if kill {
        // The start positions are on disk before any tailer starts.
        assert!(
            wait_until(SHIP_TIMEOUT, || !registry_entries(&w).is_empty()),
            "no ledger entry: {}",
            agent.log()
        );
        agent.kill9();
    } else {
        assert!(agent.stop().success());
    }
    for i in 0..times {
        append_lines(&path, "e", 1000 * i..1000 * (i + 1));
        logrotate(&w, &path, directives);
    }
    let before = 1000 * times;
    append_lines(&path, "e", before..before + after);
    let mut agent = Agent::start(&w, &cfg);
    let n = before + after;
    let recs = consume_all(&broker, topic, n, SHIP_TIMEOUT);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    assert_exactly_once(&recs, "e", n);
}

#[test]
fn empty_file_filled_and_copytruncated_with_compress_while_stopped_loses_nothing() {
    empty_file_rotated_while_down(
        "f1gz",
        false,
        10,
        "  rotate 3\n  copytruncate\n  compress",
        1,
    );
}

#[test]
fn empty_file_copytruncated_twice_with_delaycompress_while_stopped_loses_nothing() {
    empty_file_rotated_while_down(
        "f1dc",
        false,
        10,
        "  rotate 3\n  copytruncate\n  compress\n  delaycompress",
        2,
    );
}

/// `from: end` on a first start: a copy logrotate made a moment before (old lines) is
/// not shipped, neither at that start nor after a restart once the file was written.
#[test]
fn a_copy_made_just_before_the_first_start_is_not_shipped_from_end() {
    let broker = Broker::start();
    broker.create_topic("f1old", 1);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "old", 0..200);
    logrotate(&w, &path, "  rotate 3\n  copytruncate");
    let cfg = w.config(&broker, &end_entry(&w.p("app.log"), "f1old"), "");
    let mut agent = Agent::start(&w, &cfg);
    assert!(
        agent.wait_log("following from its end", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&path, "new", 0..5);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    append_lines(&path, "new", 5..15);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "f1old", 15, SHIP_TIMEOUT), "new", 15);
}

#[test]
fn empty_file_filled_and_copytruncated_while_stopped_loses_nothing() {
    empty_file_copytruncated_while_down("f1e", false, 10);
}

#[test]
fn empty_file_filled_and_copytruncated_while_killed_loses_nothing() {
    empty_file_copytruncated_while_down("f1k", true, 10);
}

#[test]
fn empty_file_filled_copytruncated_and_left_empty_while_stopped_loses_nothing() {
    empty_file_copytruncated_while_down("f1z", false, 0);
}

#[test]
fn glob_match_that_appeared_while_stopped_is_read_from_0() {
    let broker = Broker::start();
    broker.create_topic("f1g", 1);
    let w = Workdir::new();
    fs::create_dir_all(w.path("logs")).unwrap();
    append_lines(&w.path("logs/a.log"), "old", 0..5);
    let cfg = w.config(&broker, &end_entry(&w.p("logs/*.log"), "f1g"), "");
    let mut agent = Agent::start(&w, &cfg);
    assert!(
        agent.wait_log("following from its end", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    let b = w.path("logs/b.log");
    append_lines(&b, "g", 0..100);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[b.as_path()]);
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "f1g", 100, SHIP_TIMEOUT), "g", 100);
}

#[test]
fn copytruncate_then_sigkill_during_recovery_loses_nothing() {
    let (broker, w, path, cfg, mut agent) = follow_from_end_own("f2", "", "");
    append_lines(&path, "k", 0..100);
    wait_shipped(&w, &agent, &[path.as_path()]);
    // Nothing is acknowledged from here on, and the agent does not look while the
    // application writes and logrotate copies and truncates.
    broker.freeze();
    append_lines(&path, "k", 100..1100);
    agent.freeze();
    append_lines(&path, "k", 1100..2500);
    logrotate(&w, &path, "  rotate 3\n  copytruncate");
    append_lines(&path, "k", 2500..2600);
    agent.thaw();
    assert!(
        agent.wait_log("from its copy", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    agent.kill9();
    broker.thaw();
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[w.path("app.log.1").as_path(), path.as_path()]);
    assert!(agent.stop().success());
    let dups = assert_all(&consume_all(&broker, "f2", 2600, SHIP_TIMEOUT), "k", 2600);
    eprintln!("copytruncate + SIGKILL: {dups} duplicates (lines in flight at the kill)");
    assert!(
        dups <= 2500,
        "{dups} duplicates: more than was ever in flight"
    );
}

/// How [`copytruncate_again_while_reading_the_copy`] goes.
struct Again {
    /// Lines of the next content written before the agent looks at the truncation
    /// (0: it finds the file empty and knows nothing of what comes next).
    before_look: usize,
    /// logrotate directives of the rotations made while the copy is read.
    directives: &'static str,
    /// More rotations of those while the copy is read (each with 100 new lines).
    rotations: usize,
    /// Kafka takes a little of the copy meanwhile (acknowledgements move the ledger).
    some_acks: bool,
    /// How the agent ends before it is back from the copy: none, SIGKILL, SIGTERM.
    restart: Option<bool>,
}

/// A logrotate `copytruncate` (then more rotations) while the agent still reads the
/// copy of the first (Kafka frozen: nothing of the copy's 200k unread lines is taken
/// beyond the queues). logrotate shifts the copy being read to `.2` (and on); the newer
/// copies hold what the file had when the agent left it for the first copy, and only
/// there. Every line arrives; without a crash, once.
fn copytruncate_again_while_reading_the_copy(topic: &str, how: Again) {
    let (broker, w, path, cfg, mut agent) = follow_from_end_own(topic, "", "");
    append_lines(&path, "a", 0..100);
    wait_shipped(&w, &agent, &[path.as_path()]);
    broker.freeze();
    agent.freeze();
    append_lines(&path, "a", 100..200_000);
    logrotate(&w, &path, "  rotate 5\n  copytruncate");
    append_lines(&path, "b", 0..how.before_look);
    agent.thaw();
    assert!(
        agent.wait_log("from its copy", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    // Stuck in the copy: ~30k lines fit in the channel and librdkafka's queue.
    append_lines(&path, "b", how.before_look..100);
    let mut tags = vec![("a".to_string(), 200_000), ("b".to_string(), 100)];
    for k in 0..how.rotations {
        logrotate(&w, &path, how.directives);
        let tag = format!("r{k}");
        append_lines(&path, &tag, 0..100);
        tags.push((tag, 100));
        // logrotate names rotations by the second: the next one must not overwrite it.
        std::thread::sleep(Duration::from_millis(1100));
    }
    if how.some_acks {
        broker.thaw();
        std::thread::sleep(Duration::from_millis(300));
        broker.freeze();
    }
    match how.restart {
        Some(true) => agent.kill9(),
        Some(false) => {
            broker.thaw();
            assert!(agent.stop().success());
        }
        None => {}
    }
    broker.thaw();
    if how.restart.is_some() {
        agent = Agent::start(&w, &cfg);
    }
    let total: usize = tags.iter().map(|(_, n)| n).sum();
    let records = consume_all(&broker, topic, total, SHIP_TIMEOUT);
    let log = agent.log();
    assert!(agent.stop().success());
    let mut dups = 0;
    for (tag, n) in &tags {
        let mine: Vec<Record> = records
            .iter()
            .filter(|r| r.payload.starts_with(format!("{tag}:").as_bytes()))
            .cloned()
            .collect();
        dups += assert_all(&mine, tag, *n);
    }
    let old = records
        .iter()
        .filter(|r| r.payload.starts_with(b"old:"))
        .count();
    assert_eq!(old, 0, "lines written before the agent started (from: end)");
    assert!(!log.contains("counted as lost"), "nothing was lost:\n{log}");
    if how.restart != Some(true) {
        assert_eq!(dups, 0, "without a crash nothing comes twice");
    }
}

#[test]
fn copytruncate_again_while_the_copy_is_read_loses_nothing() {
    copytruncate_again_while_reading_the_copy(
        "f6",
        Again {
            before_look: 50,
            directives: "  rotate 5\n  copytruncate",
            rotations: 1,
            some_acks: false,
            restart: None,
        },
    );
}

#[test]
fn copytruncate_again_while_the_copy_is_read_then_sigkill_loses_nothing() {
    copytruncate_again_while_reading_the_copy(
        "f7",
        Again {
            before_look: 50,
            directives: "  rotate 5\n  copytruncate",
            rotations: 1,
            some_acks: false,
            restart: Some(true),
        },
    );
}

/// The quiet-log case: the agent finds the truncated file empty (nothing tells the
/// next content apart), Kafka takes some of the copy, then a restart.
#[test]
fn copytruncate_of_a_quiet_log_again_while_the_copy_is_read_then_restart_loses_nothing() {
    for restart in [false, true] {
        copytruncate_again_while_reading_the_copy(
            if restart { "f8k" } else { "f8t" },
            Again {
                before_look: 0,
                directives: "  rotate 5\n  copytruncate",
                rotations: 1,
                some_acks: true,
                restart: Some(restart),
            },
        );
    }
}

/// `compress` + `delaycompress`, two more rotations while the copy is read: what the
/// file had when the agent left it is in `app.log.2.gz` by the time it is back.
#[test]
fn copytruncate_compressed_twice_while_the_copy_is_read_loses_nothing() {
    copytruncate_again_while_reading_the_copy(
        "f9",
        Again {
            before_look: 50,
            directives: "  rotate 5\n  copytruncate\n  compress\n  delaycompress",
            rotations: 2,
            some_acks: false,
            restart: None,
        },
    );
}

/// A `create` rotation with `compress` while the copy is read: the file the agent left
/// is `app.log.1.gz` at once.
#[test]
fn create_rotation_compressed_while_the_copy_is_read_loses_nothing() {
    copytruncate_again_while_reading_the_copy(
        "f10",
        Again {
            before_look: 50,
            directives: "  rotate 5\n  create\n  compress",
            rotations: 1,
            some_acks: false,
            restart: None,
        },
    );
}

#[test]
fn late_writer_on_the_renamed_file_loses_nothing() {
    let Following {
        broker,
        w,
        path,
        mut agent,
    } = start_following("f3", 1, "app.log", "app.log", "l");
    // The application holds its descriptor (O_APPEND) across the rotation.
    let mut app = fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .unwrap();
    for i in 1..10 {
        writeln!(app, "{}", line("l", i)).unwrap();
    }
    logrotate(&w, &path, "  rotate 3\n  create\n  nocompress");
    // 3 s of late lines to the renamed file, then the application reopens the path.
    for i in 10..70 {
        writeln!(app, "{}", line("l", i)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(app);
    append_lines(&path, "l", 70..80);
    wait_shipped(&w, &agent, &[w.path("app.log.1").as_path(), path.as_path()]);
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "f3", 80, SHIP_TIMEOUT), "l", 80);
}

#[test]
fn rotated_files_in_flight_tail_is_read_again_after_a_sigkill() {
    let (broker, w, path, cfg, mut agent) = follow_from_end_own("f4", "", "");
    append_lines(&path, "r", 0..10);
    wait_shipped(&w, &agent, &[path.as_path()]);
    broker.freeze();
    append_lines(&path, "r", 10..1010);
    logrotate(&w, &path, "  rotate 3\n  create");
    append_lines(&path, "r", 1010..1020);
    // "rotated after": the new file was there at the look; "renamed away after":
    // inotify woke the tailer between logrotate's rename and its create.
    assert!(
        wait_until(SHIP_TIMEOUT, || {
            let log = agent.log();
            log.contains("rotated after") || log.contains("renamed away after")
        }),
        "{}",
        agent.log()
    );
    assert!(
        wait_until(SHIP_TIMEOUT, || registry_entries(&w).len() >= 2),
        "the new file is in the ledger"
    );
    agent.kill9();
    broker.thaw();
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[w.path("app.log.1").as_path(), path.as_path()]);
    assert!(agent.stop().success());
    assert_all(&consume_all(&broker, "f4", 1020, SHIP_TIMEOUT), "r", 1020);
}

#[test]
fn siblings_that_are_not_rotations_are_never_shipped() {
    let (broker, w, path, cfg, mut agent) = follow_from_end("f5", "", "");
    append_lines(&path, "s", 0..10);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    // Fresh siblings whose names start with the file's name: a backup and a gzip.
    append_lines(&w.path("app.log.bak"), "bak", 0..50);
    let mut gz = flate2::write::GzEncoder::new(
        fs::File::create(w.path("app.log.2.gz")).unwrap(),
        flate2::Compression::default(),
    );
    for i in 0..50 {
        writeln!(gz, "{}", line("gz", i)).unwrap();
    }
    gz.finish().unwrap();
    append_lines(&path, "s", 10..20);
    logrotate(&w, &path, "  rotate 5\n  create\n  nocompress");
    append_lines(&path, "s", 20..120);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[w.path("app.log.1").as_path(), path.as_path()]);
    assert!(agent.stop().success());
    assert_all(&consume_all(&broker, "f5", 120, SHIP_TIMEOUT), "s", 120);
}

#[test]
fn rotation_compressed_while_stopped_is_read_through_gzip() {
    let (broker, w, path, cfg, mut agent) = follow_from_end("f5z", "", "");
    append_lines(&path, "z", 0..100);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    // Unread lines, then `compress` without `delaycompress`: app.log.1.gz at once.
    append_lines(&path, "z", 100..2000);
    logrotate(&w, &path, "  rotate 3\n  create\n  compress");
    assert!(w.path("app.log.1.gz").exists() && !w.path("app.log.1").exists());
    append_lines(&path, "z", 2000..2100);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    let records = consume_all(&broker, "f5z", 2100, SHIP_TIMEOUT);
    assert!(agent.stop().success());
    assert!(agent.log().contains("through gzip"), "{}", agent.log());
    assert_exactly_once(&records, "z", 2100);
}

#[test]
fn glob_over_copytruncate_copies_sends_nothing_twice() {
    let Following {
        broker,
        w,
        path,
        mut agent,
    } = start_following("f5g", 1, "logs/app.log*", "logs/app.log", "t");
    // (rotate_wait_ms is the default 30 s: a copy renamed .1 -> .2 is taken up by the
    // glob's tailer once the quiet wait of its old name ended.)
    let mut next = 1;
    for round in 0..3 {
        append_lines(&path, "t", next..next + 500);
        next += 500;
        wait_shipped(&w, &agent, &[path.as_path()]);
        logrotate(&w, &path, "  rotate 5\n  copytruncate\n  nocompress");
        append_lines(&path, "t", next..next + 100);
        next += 100;
        assert!(w.path("logs/app.log.1").exists(), "round {round}");
    }
    wait_shipped(&w, &agent, &[path.as_path()]);
    // The glob picks up every copy (app.log.1..3); each must resume where the original
    // was read (or read the part nobody read), never send the copy's lines again.
    assert!(
        wait_until(SHIP_TIMEOUT, || {
            let log = agent.log();
            (1..=3).all(|k| log.contains(&format!("logs/app.log.{k}: new file matches")))
        }),
        "{}",
        agent.log()
    );
    wait_shipped(
        &w,
        &agent,
        &[
            w.path("logs/app.log.1").as_path(),
            w.path("logs/app.log.2").as_path(),
            w.path("logs/app.log.3").as_path(),
            path.as_path(),
        ],
    );
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "f5g", next, SHIP_TIMEOUT), "t", next);
}

/// copytruncate seen only after the application wrote again (the agent was busy: its
/// look came after both): what the file holds since the truncation arrives at once, not
/// after the next write or the 60 s safety poll. Then `: > app.log` while stopped, every
/// byte shipped: nothing is counted lost (the size the ledger knew was that of the
/// content before the first truncation).
#[test]
fn a_truncation_seen_after_new_writes_is_read_at_once_and_counts_no_false_loss() {
    let (broker, w, app, cfg, mut agent) = follow_from_end("rot-late-trunc", "", "");
    append_lines(&app, "app", 0..10);
    wait_shipped(&w, &agent, &[app.as_path()]);
    agent.freeze();
    fs::copy(&app, w.path("app.log.1")).expect("copy");
    fs::write(&app, "").expect("truncate");
    append_lines(&app, "app", 10..15);
    agent.thaw();
    let t = std::time::Instant::now();
    wait_shipped(&w, &agent, &[app.as_path()]);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "lines written after the truncation took {:?} to arrive:\n{}",
        t.elapsed(),
        agent.log()
    );
    assert!(agent.stop().success(), "{}", agent.log());
    fs::write(&app, "").expect("truncate while stopped");
    agent = Agent::start(&w, &cfg);
    append_lines(&app, "app", 15..20);
    wait_shipped(&w, &agent, &[app.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    let log = agent.own_log();
    assert!(!log.contains("counted as lost"), "{log}");
    let recs = consume_all(&broker, "rot-late-trunc", 20, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "app", 20);
}
