//! Agent core against a real broker: delivery, start positions, rotation, truncation,
//! crash and restart, broker outage, partitioning, hostile input.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

fn entry(path: &str, topic: &str, extra: &str) -> String {
    format!("  - path: {path}\n    topic: {topic}\n{extra}")
}

#[test]
fn three_files_two_topics_every_line_exactly_once() {
    let broker = Broker::start();
    broker.create_topic("web", 3);
    broker.create_topic("app", 2);
    let w = Workdir::new();
    let files = [("a", "web"), ("b", "web"), ("c", "app")];
    for (tag, _) in files {
        append_lines(&w.path(&format!("{tag}.log")), tag, 0..25_000);
    }
    let collect: String = files
        .iter()
        .map(|(tag, topic)| entry(&w.p(&format!("{tag}.log")), topic, "    from: beginning\n"))
        .collect();
    let cfg = w.config(&broker, &collect, "");
    let mut agent = Agent::start(&w, &cfg);
    for (tag, _) in files {
        append_lines(&w.path(&format!("{tag}.log")), tag, 25_000..50_000);
    }
    let paths: Vec<_> = files
        .iter()
        .map(|(t, _)| w.path(&format!("{t}.log")))
        .collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    wait_shipped(&w, &agent, &refs);
    assert!(agent.stop().success(), "clean exit on SIGTERM");

    let web = consume_all(&broker, "web", 100_000, SHIP_TIMEOUT);
    assert_exactly_once(&web, "a", 50_000);
    assert_exactly_once(&web, "b", 50_000);
    let app = consume_all(&broker, "app", 50_000, SHIP_TIMEOUT);
    assert_exactly_once(&app, "c", 50_000);
    // Headers for de-duplication: host, path, and the line's start offset.
    let r = app
        .iter()
        .find(|r| r.payload == line("c", 1).as_bytes())
        .unwrap();
    assert_eq!(r.headers["host"], "testhost");
    assert_eq!(r.headers["path"], w.p("c.log"));
    assert_eq!(r.headers["offset"], (line("c", 0).len() + 1).to_string());
}

#[test]
fn start_positions_late_files_and_globs() {
    let broker = Broker::start();
    broker.create_topic("pos", 1);
    let w = Workdir::new();
    fs::create_dir(w.path("g")).unwrap();
    append_lines(&w.path("end.log"), "end", 0..10);
    append_lines(&w.path("beg.log"), "beg", 0..10);
    append_lines(&w.path("g/one.log"), "g1", 0..3);
    let collect = [
        entry(&w.p("end.log"), "pos", ""),
        entry(&w.p("beg.log"), "pos", "    from: beginning\n"),
        entry(&w.p("late.log"), "pos", ""),
        entry(&w.p("g/*.log"), "pos", ""),
    ]
    .concat();
    let cfg = w.config(&broker, &collect, "");
    let mut agent = Agent::start(&w, &cfg);
    // Wait until every existing file is followed (its start position is recorded).
    assert!(
        wait_until(SHIP_TIMEOUT, || registry_entries(&w).len() >= 3),
        "{}",
        agent.log()
    );
    append_lines(&w.path("end.log"), "end", 10..20);
    append_lines(&w.path("beg.log"), "beg", 10..20);
    append_lines(&w.path("late.log"), "late", 0..5);
    append_lines(&w.path("g/one.log"), "g1", 3..6);
    append_lines(&w.path("g/two.log"), "g2", 0..4);
    let files = ["end.log", "beg.log", "late.log", "g/one.log", "g/two.log"].map(|f| w.path(f));
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    wait_shipped(&w, &agent, &refs);
    assert!(agent.stop().success());

    let got = tally(&consume_all(
        &broker,
        "pos",
        20 + 10 + 5 + 3 + 4,
        SHIP_TIMEOUT,
    ));
    let want: Vec<String> = (10..20)
        .map(|i| line("end", i))
        .chain((0..20).map(|i| line("beg", i)))
        .chain((0..5).map(|i| line("late", i)))
        .chain((3..6).map(|i| line("g1", i)))
        .chain((0..4).map(|i| line("g2", i)))
        .collect();
    let want_set: HashSet<Vec<u8>> = want.iter().map(|l| l.clone().into_bytes()).collect();
    let got_set: HashSet<Vec<u8>> = got.keys().cloned().collect();
    assert_eq!(
        got_set, want_set,
        "from:end skips old lines, everything else from 0"
    );
    assert!(got.values().all(|&c| c == 1), "no duplicates: {got:?}");
}

#[test]
fn rename_rotation_while_writing_loses_and_duplicates_nothing() {
    let Following {
        broker,
        w,
        path,
        mut agent,
    } = start_following("rot", 2, "app.log", "app.log", "r");
    let rotated = w.path("app.log.1");
    let mut n = 1;
    for round in 0..2 {
        for _ in 0..50 {
            append_lines(&path, "r", n..n + 100);
            n += 100;
        }
        if round == 0 {
            // logrotate's default: rename, then the writer creates a new file.
            fs::rename(&path, &rotated).unwrap();
        }
    }
    wait_shipped(&w, &agent, &[path.as_path(), rotated.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "rot", n, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "r", n);
    // The rename is noticed either before the writer recreates the path ("renamed
    // away") or after ("rotated"); both are the rotation, and both must be logged.
    let log = agent.log();
    assert!(
        log.contains("rotated") || log.contains("renamed away"),
        "{log}"
    );
}

#[test]
fn copytruncate_is_noticed_counted_and_shipping_goes_on() {
    let OneFile {
        broker,
        w,
        path,
        cfg,
    } = one_file("trunc", 1, "t", 1000, "");
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    // copytruncate: copy, then truncate in place (same inode), then the writer goes on.
    fs::copy(&path, w.path("app.log.1")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append_lines(&path, "t", 1000..1500);
    assert!(
        agent.wait_log("truncated", SHIP_TIMEOUT),
        "truncation not noticed:\n{}",
        agent.log()
    );
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "trunc", 1500, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "t", 1500);
    assert!(
        agent.log().contains("1 truncations so far"),
        "{}",
        agent.log()
    );
}

#[test]
fn sigkill_and_restart_lose_nothing_and_duplicate_only_past_the_checkpoint() {
    let broker = Broker::start();
    broker.create_topic("crash", 2);
    let w = Workdir::new();
    let path = w.path("app.log");
    let cfg = w.config(
        &broker,
        &entry(&w.p("app.log"), "crash", "    from: beginning\n"),
        "",
    );
    let mut agent = Agent::start(&w, &cfg);
    let total = 60_000;
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            for k in 0..60 {
                append_lines(&path, "k", k * 1000..(k + 1) * 1000);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Kill once some lines are acknowledged and checkpointed, while writing goes on.
    assert!(
        wait_until(SHIP_TIMEOUT, || registry_entries(&w)
            .iter()
            .any(|(_, _, off)| *off > 200_000)),
        "{}",
        agent.log()
    );
    agent.kill9();
    let checkpoint = registry_entries(&w)[0].2;
    let mut agent = Agent::start(&w, &cfg);
    writer.join().unwrap();
    // Under load the writer may be done before the kill and everything acknowledged:
    // "shipped" is then already true, so wait for the restart to have resumed first.
    assert!(
        agent.wait_log("resuming at offset", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    wait_shipped(&w, &agent, &[path.as_path()]);
    let st = agent.stop();
    assert!(st.success(), "{st:?}\n{}", agent.log());
    assert!(
        agent
            .log()
            .contains(&format!("resuming at offset {checkpoint}")),
        "{}",
        agent.log()
    );

    let recs = consume_all(&broker, "crash", total, SHIP_TIMEOUT);
    let t = tally(&recs);
    let missing: Vec<usize> = (0..total)
        .filter(|&i| !t.contains_key(line("k", i).as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lines lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // Duplicates only for lines after the checkpoint on disk at the time of the kill.
    for r in &recs {
        if t[&r.payload] > 1 {
            let off: u64 = r.headers["offset"].parse().unwrap();
            assert!(
                off >= checkpoint,
                "line at {off} duplicated, but checkpoint was {checkpoint}"
            );
        }
    }
}

/// Kafka's Java client `murmur2` (what `partitioner: key` must agree with).
fn java_murmur2(data: &[u8]) -> u32 {
    let m: u32 = 0x5bd1_e995;
    let seed: u32 = 0x9747_b28c;
    let len = data.len();
    let mut h = seed ^ len as u32;
    let chunks = data.chunks_exact(4);
    let rem = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> 24;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    if rem.len() >= 3 {
        h ^= u32::from(rem[2]) << 16;
    }
    if rem.len() >= 2 {
        h ^= u32::from(rem[1]) << 8;
    }
    if !rem.is_empty() {
        h ^= u32::from(rem[0]);
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h
}

#[test]
fn partitioning_fixed_keyed_and_round_robin() {
    let broker = Broker::start();
    for t in ["fixed", "keyed", "rr"] {
        broker.create_topic(t, 3);
    }
    let w = Workdir::new();
    let collect = [
        entry(
            &w.p("fixed.log"),
            "fixed",
            "    from: beginning\n    partition: 1\n",
        ),
        entry(
            &w.p("keyed.log"),
            "keyed",
            "    from: beginning\n    partitioner: key\n    key: \"{host}:{path}\"\n",
        ),
        entry(
            &w.p("rr.log"),
            "rr",
            "    from: beginning\n    partitioner: round_robin\n",
        ),
    ]
    .concat();
    for f in ["fixed", "keyed", "rr"] {
        append_lines(&w.path(&format!("{f}.log")), f, 0..300);
    }
    let cfg = w.config(&broker, &collect, "");
    let mut agent = Agent::start(&w, &cfg);
    let files = ["fixed.log", "keyed.log", "rr.log"].map(|f| w.path(f));
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    wait_shipped(&w, &agent, &refs);
    assert!(agent.stop().success());

    let fixed = consume_all(&broker, "fixed", 300, SHIP_TIMEOUT);
    assert_exactly_once(&fixed, "fixed", 300);
    assert!(
        fixed.iter().all(|r| r.partition == 1),
        "partition: 1 lands only in 1"
    );

    let keyed = consume_all(&broker, "keyed", 300, SHIP_TIMEOUT);
    assert_exactly_once(&keyed, "keyed", 300);
    let key = format!("testhost:{}", w.p("keyed.log")).into_bytes();
    let want = ((java_murmur2(&key) & 0x7fff_ffff) % 3) as i32;
    assert!(keyed.iter().all(|r| r.key.as_deref() == Some(&key[..])));
    assert!(
        keyed.iter().all(|r| r.partition == want),
        "keyed records land in the Java-murmur2 partition {want}"
    );

    let rr = consume_all(&broker, "rr", 300, SHIP_TIMEOUT);
    assert_exactly_once(&rr, "rr", 300);
    let mut per: HashMap<i32, usize> = HashMap::new();
    for r in &rr {
        *per.entry(r.partition).or_default() += 1;
    }
    assert_eq!(
        per,
        HashMap::from([(0, 100), (1, 100), (2, 100)]),
        "round robin spreads evenly"
    );
}

#[test]
fn rotation_while_the_agent_is_down_reads_the_rest_of_the_old_file() {
    let OneFile {
        broker,
        w,
        path,
        cfg,
    } = one_file("down", 1, "d", 100, "");
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());

    // While the agent is down: more lines, rotation, a new file with more lines.
    append_lines(&path, "d", 100..200);
    let rotated = w.path("app.log.1");
    fs::rename(&path, &rotated).unwrap();
    append_lines(&path, "d", 200..300);

    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[rotated.as_path(), path.as_path()]);
    assert!(agent.stop().success());
    assert!(
        agent.log().contains("rotated while not followed"),
        "{}",
        agent.log()
    );
    assert_exactly_once(&consume_all(&broker, "down", 300, SHIP_TIMEOUT), "d", 300);
}

#[test]
fn glob_that_matches_rotated_names_sends_nothing_twice() {
    let Following {
        broker,
        w,
        path,
        mut agent,
    } = start_following("globrot", 1, "logs/app.log*", "logs/app.log", "g");
    append_lines(&path, "g", 1..3000);
    let rotated = w.path("logs/app.log.1");
    fs::rename(&path, &rotated).unwrap();
    append_lines(&path, "g", 3000..6000);
    wait_shipped(&w, &agent, &[rotated.as_path(), path.as_path()]);
    // The rotated name matches the glob: once its first reader is done and acknowledged,
    // a tailer for app.log.1 starts, resumes at its end, and sends nothing again.
    assert!(
        agent.wait_log("app.log.1: resuming at offset", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    assert_exactly_once(
        &consume_all(&broker, "globrot", 6000, SHIP_TIMEOUT),
        "g",
        6000,
    );
}

#[test]
fn copytruncate_gap_is_recovered_from_the_copy() {
    let OneFile {
        broker,
        w,
        path,
        cfg,
    } = one_file("gap", 1, "c", 1000, "");
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    // The agent falls behind (stopped), lines keep coming, then logrotate's copytruncate:
    // lines 1000..1200 were never read and now exist only in the copy.
    agent.freeze();
    append_lines(&path, "c", 1000..1200);
    let copy = w.path("app.log.1");
    fs::copy(&path, &copy).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append_lines(&path, "c", 1200..1300);
    agent.thaw();
    assert!(
        agent.wait_log("from its copy", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    wait_shipped(&w, &agent, &[path.as_path(), copy.as_path()]);
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "gap", 1300, SHIP_TIMEOUT), "c", 1300);
}

/// How many lines of the agent's log contain `needle`.
fn log_count(agent: &Agent, needle: &str) -> usize {
    agent.log().lines().filter(|l| l.contains(needle)).count()
}

/// A hard link in a log directory to a file elsewhere (`ln /etc/shadow logs/x.log`) is
/// not read: at the first open, and when a followed path is replaced by one (rm + ln),
/// at the reopen. The normal file next to it flows. Once the other name is gone (one
/// link left) the file is read: the check is made again later.
#[test]
fn hard_links_are_refused_at_open_and_on_reopen() {
    let broker = Broker::start();
    broker.create_topic("hl", 1);
    let w = Workdir::new();
    // The system temp dir, like the work dir: a hard link cannot cross file systems.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.log");
    append_lines(&secret, "secret", 0..10);
    fs::create_dir(w.path("logs")).unwrap();
    fs::create_dir(w.path("other")).unwrap();
    let app = w.path("logs/app.log");
    append_lines(&app, "a", 0..10);
    fs::hard_link(&secret, w.path("logs/x.log")).unwrap();
    let swap = w.path("other/swap.log");
    append_lines(&swap, "s", 0..5);
    let collect = [
        beginning_entry(&w.p("logs/*.log"), "hl"),
        beginning_entry(&w.p("other/swap.log"), "hl"),
    ]
    .concat();
    let cfg = w.config(&broker, &collect, "");
    let mut agent = Agent::start(&w, &cfg);
    let refused_x = format!("{}: has 2 hard links", w.p("logs/x.log"));
    assert!(agent.wait_log(&refused_x, SHIP_TIMEOUT), "{}", agent.log());
    assert!(
        agent.log().contains("agent.allow_hardlinks: true"),
        "{}",
        agent.log()
    );
    wait_shipped(&w, &agent, &[app.as_path(), swap.as_path()]);

    // The followed path replaced by a hard link to another outside file.
    let secret2 = outside.path().join("secret2.log");
    append_lines(&secret2, "s", 5..8);
    fs::remove_file(&swap).unwrap();
    fs::hard_link(&secret2, &swap).unwrap();
    let refused_swap = format!("{}: has 2 hard links", w.p("other/swap.log"));
    assert!(
        agent.wait_log(&refused_swap, SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&app, "a", 10..20);
    append_lines(&secret, "secret", 10..20);
    wait_shipped(&w, &agent, &[app.as_path()]);
    let recs = consume_all(&broker, "hl", 25, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "a", 20);
    let shipped = |recs: &[Record], tag: &str| {
        recs.iter()
            .filter(|r| r.payload.starts_with(tag.as_bytes()))
            .count()
    };
    assert_eq!(shipped(&recs, "secret:"), 0, "the linked outside file");
    assert_eq!(
        shipped(&recs, "s:"),
        5,
        "only what swap.log held before the swap"
    );

    // Its outside name removed, swap.log has one link: read at the next try.
    fs::remove_file(&secret2).unwrap();
    wait_shipped(&w, &agent, &[swap.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "hl", 28, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "a", 20);
    assert_exactly_once(&recs, "s", 8);
    assert_eq!(shipped(&recs, "secret:"), 0, "the linked outside file");
    // Retried with back-off meanwhile, logged once.
    assert_eq!(log_count(&agent, &refused_x), 1, "{}", agent.log());
    assert_eq!(log_count(&agent, &refused_swap), 1, "{}", agent.log());
}

/// `agent.allow_hardlinks: true`: a hard-linked file is read like any other.
#[test]
fn hard_links_are_read_when_allowed() {
    let broker = Broker::start();
    broker.create_topic("hlok", 1);
    let w = Workdir::new();
    let outside = tempfile::tempdir().unwrap();
    let shared = outside.path().join("shared.log");
    append_lines(&shared, "h", 0..10);
    fs::create_dir(w.path("logs")).unwrap();
    let app = w.path("logs/app.log");
    append_lines(&app, "a", 0..10);
    let linked = w.path("logs/x.log");
    fs::hard_link(&shared, &linked).unwrap();
    let cfg = w.config(
        &broker,
        &beginning_entry(&w.p("logs/*.log"), "hlok"),
        "  allow_hardlinks: true\n",
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[app.as_path(), linked.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "hlok", 20, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "a", 10);
    assert_exactly_once(&recs, "h", 10);
    assert!(!agent.log().contains("hard links"), "{}", agent.log());
}

/// A path two entries name is warned about once per entry list, not at every glob
/// rescan (each new file in the directory makes the rescans expand the globs again).
#[test]
fn a_path_named_twice_is_warned_about_once_per_config_change() {
    let broker = Broker::start();
    broker.create_topic("twice", 1);
    let w = Workdir::new();
    fs::create_dir(w.path("logs")).unwrap();
    append_lines(&w.path("logs/a.log"), "a", 0..3);
    let entries = |extra: &str| {
        [
            beginning_entry(&w.p("logs/*.log"), "twice"),
            beginning_entry(&w.p("logs/a.log"), "twice"),
            extra.to_owned(),
        ]
        .concat()
    };
    let cfg = w.config(&broker, &entries(""), "");
    let mut agent = Agent::start(&w, &cfg);
    let twice = format!("{}: named by two collect entries", w.p("logs/a.log"));
    assert!(agent.wait_log(&twice, SHIP_TIMEOUT), "{}", agent.log());
    let new_files = |agent: &Agent, names: &[&str]| {
        for n in names {
            let p = w.path(&format!("logs/{n}.log"));
            append_lines(&p, n, 0..1);
            let found = format!("{}: new file matches", p.display());
            assert!(agent.wait_log(&found, SHIP_TIMEOUT), "{}", agent.log());
            // Rescans every 200 ms expand again while the directory changed recently.
            std::thread::sleep(Duration::from_millis(600));
        }
    };
    new_files(&agent, &["b", "c", "d"]);
    assert_eq!(log_count(&agent, &twice), 1, "{}", agent.log());

    // A changed entry list: said once more, then not again.
    w.config(
        &broker,
        &entries(&beginning_entry(&w.p("other.log"), "twice")),
        "",
    );
    assert!(agent.wait_started());
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(SHIP_TIMEOUT, || log_count(&agent, &twice) == 2),
        "{}",
        agent.log()
    );
    new_files(&agent, &["e", "f"]);
    assert_eq!(log_count(&agent, &twice), 2, "{}", agent.log());
    assert!(agent.stop().success());
}
