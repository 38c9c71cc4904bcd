//! Many files on one agent (issue 14): a glob over 2,000 files, every file watched with
//! inotify; inotify's watches used up falls back to polling, said once, and still
//! delivers; `agent.max_files` reached is one error, a metric and a waiting list, and a
//! waiting file starts once a followed one ends; the agent runs without glibc's
//! per-thread caches; files that come and go leave no per-file series or registry
//! entries behind (issue 26). Lines are counted in Kafka.

mod common;

use std::fs;

use common::*;

/// A broker with topic `topic`, a work dir with `logs/`, and an agent.yaml following
/// `logs/*.log` from the beginning with `/metrics` on the returned port.
fn glob_setup(topic: &str, agent_extra: &str) -> (Broker, Workdir, u16, std::path::PathBuf) {
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    let w = Workdir::new();
    fs::create_dir_all(w.path("logs")).unwrap();
    let port = free_port();
    let cfg = w.config(
        &broker,
        &beginning_entry(&format!("\"{}/*.log\"", w.p("logs")), topic),
        &format!("  metrics_addr: 127.0.0.1:{port}\n{agent_extra}"),
    );
    (broker, w, port, cfg)
}

#[test]
fn glob_over_two_thousand_files_delivers_every_line_and_watches_them_all() {
    let (broker, w, port, cfg) = glob_setup("many", "  inotify: true\n");
    let files = 2000;
    for i in 0..files {
        append_lines(&w.path(&format!("logs/f{i:04}.log")), "m", 2 * i..2 * i + 2);
    }
    let mut agent = Agent::start(&w, &cfg);
    let first = consume_all(&broker, "many", 2 * files, SHIP_TIMEOUT);
    assert_eq!(first.len(), 2 * files, "{}", agent.log());
    // The agent runs without glibc's per-thread caches of freed chunks (5 KB per
    // idle tailer thread): it exec'd itself with the tunable set.
    let environ = fs::read(format!("/proc/{}/environ", agent.pid())).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v.starts_with(b"GLIBC_TUNABLES=")
                && v.ends_with(b"glibc.malloc.tcache_count=0")),
        "GLIBC_TUNABLES not set: {}",
        String::from_utf8_lossy(&environ)
    );
    // ... and kept its name (pgrep -x, killall): not "exe".
    let comm = fs::read_to_string(format!("/proc/{}/comm", agent.pid())).unwrap();
    assert_eq!(comm.trim(), "logagent");
    // Every file and the directory are watched: nothing is polled.
    assert_eq!(metric(port, "logagent_files_polled"), Some(0));
    assert_eq!(
        metric(port, "logagent_inotify_watches"),
        Some(files as u64 + 1)
    );
    // New lines in quiet files come through the watches.
    for k in 0..100 {
        let i = k * 19 % files;
        append_lines(
            &w.path(&format!("logs/f{i:04}.log")),
            "m",
            2 * files + k..2 * files + k + 1,
        );
    }
    let all = consume_all(&broker, "many", 2 * files + 100, SHIP_TIMEOUT);
    assert!(agent.stop().success());
    assert_exactly_once(&all, "m", 2 * files + 100);
}

#[test]
fn inotify_watches_used_up_fall_back_to_polling_said_once_and_deliver() {
    // LOGAGENT_INOTIFY_MAX_WATCHES refuses watches past 5, as the kernel does past
    // fs.inotify.max_user_watches (8,192 by default on CentOS 7).
    let (broker, w, port, cfg) = glob_setup("fallback", "  inotify: true\n");
    let files = 40;
    for i in 0..files {
        append_lines(&w.path(&format!("logs/f{i:02}.log")), "p", 2 * i..2 * i + 2);
    }
    let mut agent = Agent::start_with(&w, &cfg, |c| {
        c.env("LOGAGENT_INOTIFY_MAX_WATCHES", "5");
    });
    let first = consume_all(&broker, "fallback", 2 * files, SHIP_TIMEOUT);
    assert_eq!(first.len(), 2 * files, "{}", agent.log());
    let polled = metric(port, "logagent_files_polled").unwrap_or(0);
    assert!(
        polled >= (files - 5) as u64,
        "{polled} of {files} files polled with 5 watches"
    );
    for k in 0..files {
        append_lines(
            &w.path(&format!("logs/f{k:02}.log")),
            "p",
            2 * files + k..2 * files + k + 1,
        );
    }
    let all = consume_all(&broker, "fallback", 3 * files, SHIP_TIMEOUT);
    let log = agent.log();
    assert!(agent.stop().success());
    assert_exactly_once(&all, "p", 3 * files);
    let said = log
        .lines()
        .filter(|l| {
            l.contains("not watched (fs.inotify.max_user_watches reached)") && l.contains("WARN")
        })
        .count();
    assert_eq!(said, 1, "said once, then counted:\n{log}");
}

#[test]
fn max_files_reached_is_one_error_and_a_waiting_file_starts_when_another_ends() {
    let (broker, w, port, cfg) = glob_setup("capped", "  max_files: 2\n");
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        append_lines(&w.path(&format!("logs/{name}.log")), name, 0..10 + i);
    }
    let mut agent = Agent::start(&w, &cfg);
    // a and b are followed (the glob's order), c waits.
    let first = consume_all(&broker, "capped", 21, SHIP_TIMEOUT);
    assert_eq!(first.len(), 21, "{}", agent.log());
    assert_exactly_once(&first, "a", 10);
    assert_exactly_once(&first, "b", 11);
    assert!(
        wait_until(SHIP_TIMEOUT, || metric(port, "logagent_files_waiting")
            == Some(1)),
        "{}",
        agent.log()
    );
    // a ends (deleted after it was shipped): c starts, from its beginning.
    wait_shipped(&w, &agent, &[w.path("logs/a.log").as_path()]);
    fs::remove_file(w.path("logs/a.log")).unwrap();
    let all = consume_all(&broker, "capped", 33, SHIP_TIMEOUT);
    assert!(
        wait_until(SHIP_TIMEOUT, || metric(port, "logagent_files_waiting")
            == Some(0)),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert!(agent.stop().success());
    assert_exactly_once(&all, "c", 12);
    assert_eq!(all.len(), 33, "nothing twice");
    let errors = log
        .lines()
        .filter(|l| l.contains("agent.max_files (2) reached: 1 more files are not followed"))
        .count();
    assert_eq!(errors, 1, "{log}");
    assert!(log.contains("c.log"), "{log}");
}

/// Issue 26, item 10: a glob over files that come and go (each created, written,
/// shipped and deleted, one after another) leaves no bookkeeping behind. The per-file
/// series of a deleted file go once it is acknowledged and
/// `agent.file_metrics_retention_ms` passed, its registry entry as soon as it is
/// acknowledged: every 50 files, and at the end, only the files that exist have either.
/// The agent-wide sums keep counting; every line arrives once.
#[test]
fn files_that_come_and_go_leave_neither_series_nor_registry_entries_behind() {
    use std::os::unix::fs::MetadataExt;
    const FILES: usize = 300;
    const LINES: usize = 4;
    // Files written ahead of the one being deleted.
    const AHEAD: usize = 8;
    let (broker, w, port, cfg) = glob_setup("comego", "  file_metrics_retention_ms: 500\n");
    let mut agent = Agent::start(&w, &cfg);
    let path = |i: usize| w.path(&format!("logs/f{i:04}.log"));
    // Shipped: the registry entry of this path and inode has the file's length. (By
    // path too: a new file may get a deleted one's inode, whose entry may still be
    // there with the same length.)
    let shipped = |p: &std::path::Path| {
        let m = fs::metadata(p).expect("stat a file not yet deleted");
        let name = p.to_string_lossy();
        registry_entries(&w)
            .iter()
            .any(|(path, ino, off)| *path == name && *ino == m.ino() && *off == m.len())
    };
    let per_file_series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("logagent_lines_read_total{"))
            .count()
    };
    let (mut most_series, mut most_entries) = (0, 0);
    // Each file's writer keeps its descriptor (as a logger does until it reopens): no
    // deleted file's inode is handed to a new file meanwhile, whose start would replace
    // the old entry and hide how many entries pile up.
    let mut writers = Vec::with_capacity(FILES);
    for i in 0..FILES + AHEAD {
        if i < FILES {
            append_lines(&path(i), "c", i * LINES..(i + 1) * LINES);
            writers.push(fs::File::open(path(i)).unwrap());
        }
        if let Some(old) = i.checked_sub(AHEAD).map(path) {
            assert!(
                wait_until(SHIP_TIMEOUT, || shipped(&old)),
                "{} not acknowledged; registry {:?}\n{}",
                old.display(),
                registry_entries(&w),
                agent.log()
            );
            fs::remove_file(&old).unwrap();
        }
        most_series = most_series.max(per_file_series(&get(port, "/metrics").1));
        most_entries = most_entries.max(registry_entries(&w).len());
        // Every 50 files: what the deleted ones left goes, down to the AHEAD files
        // that exist (whatever the pace of this loop against the agent's).
        if i % 50 == 0 && i >= AHEAD {
            let caught_up = wait_until(SHIP_TIMEOUT, || {
                per_file_series(&get(port, "/metrics").1) <= AHEAD
                    && registry_entries(&w).len() <= AHEAD
            });
            assert!(
                caught_up,
                "after {} files deleted, {} per-file series and {} registry entries are left, {AHEAD} files exist",
                i + 1 - AHEAD,
                per_file_series(&get(port, "/metrics").1),
                registry_entries(&w).len()
            );
        }
    }
    let records = consume_all(&broker, "comego", FILES * LINES, SHIP_TIMEOUT);
    // Every file is gone now: so are, a moment later, their series and entries.
    let settled = wait_until(SHIP_TIMEOUT, || {
        per_file_series(&get(port, "/metrics").1) == 0 && registry_entries(&w).is_empty()
    });
    let text = get(port, "/metrics").1;
    let entries = registry_entries(&w);
    eprintln!(
        "{FILES} files: at most {most_series} per-file series and {most_entries} registry entries at once; at the end {} and {}",
        per_file_series(&text),
        entries.len()
    );
    assert!(
        settled,
        "per-file series or registry entries left:\n{text}\nregistry {entries:?}"
    );
    // The sums count the files whose series went.
    let total = (FILES * LINES) as u64;
    assert_eq!(value(&text, "logagent_agent_lines_read_total"), Some(total));
    assert_eq!(
        value(&text, "logagent_agent_lines_acked_total"),
        Some(total)
    );
    assert_eq!(
        value(&text, "logagent_file_series_removed_total"),
        Some(FILES as u64)
    );
    assert_eq!(value(&text, "logagent_tailers_running"), Some(0));
    drop(writers);
    assert!(agent.stop().success());
    assert_exactly_once(&records, "c", FILES * LINES);
}
