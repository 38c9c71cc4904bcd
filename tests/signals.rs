//! Signals against a real broker and the real binary: SIGHUP reloads `agent.yaml` and
//! never stops the agent; SIGTERM still stops it cleanly; an unwritable `data_dir` is
//! refused at start.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Lines of this process's log that are ERROR lines.
fn error_lines(agent: &Agent) -> Vec<String> {
    agent
        .own_log()
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn sighup_with_a_new_collect_entry_follows_it_and_keeps_the_first() {
    let broker = Broker::start();
    broker.create_topic("first", 1);
    broker.create_topic("second", 1);
    let w = Workdir::new();
    let (first, second) = (w.path("first.log"), w.path("second.log"));
    append_lines(&first, "first", 0..100);
    append_lines(&second, "second", 0..50);
    let cfg = w.config(&broker, &beginning_entry(&w.p("first.log"), "first"), "");
    let mut agent = Agent::start(&w, &cfg);
    assert!(agent.wait_started(), "{}", agent.log());
    wait_shipped(&w, &agent, &[first.as_path()]);

    let both = beginning_entry(&w.p("first.log"), "first")
        + &beginning_entry(&w.p("second.log"), "second");
    w.config(&broker, &both, "");
    agent.signal(libc::SIGHUP);
    let reloaded = format!("SIGHUP: reloaded {}: collect 1 → 2 entries", cfg.display());
    assert!(agent.wait_log(&reloaded, SHIP_TIMEOUT), "{}", agent.log());
    // Both files keep growing after the reload: the first file's tailer was kept.
    append_lines(&first, "first", 100..200);
    append_lines(&second, "second", 50..100);
    wait_shipped(&w, &agent, &[first.as_path(), second.as_path()]);
    assert!(
        agent.running(),
        "SIGHUP stopped the agent:\n{}",
        agent.log()
    );
    assert!(
        !agent.own_log().contains("needs a restart"),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    let log = agent.own_log();
    assert!(
        !log.contains(&format!("{}: settings changed", w.p("first.log"))),
        "the unchanged first file's tailer was restarted:\n{log}"
    );
    assert_exactly_once(
        &consume_all(&broker, "first", 200, SHIP_TIMEOUT),
        "first",
        200,
    );
    assert_exactly_once(
        &consume_all(&broker, "second", 100, SHIP_TIMEOUT),
        "second",
        100,
    );
}

#[test]
fn sighup_with_a_broken_file_keeps_the_running_config() {
    let OneFile {
        broker,
        w,
        path,
        cfg,
    } = one_file("keep", 1, "keep", 100, "");
    let mut agent = Agent::start(&w, &cfg);
    assert!(agent.wait_started(), "{}", agent.log());
    wait_shipped(&w, &agent, &[path.as_path()]);

    fs::write(&cfg, "kafka:\n  brokers: [\"127.0.0.1:9\"\ncollect: nope\n").unwrap();
    agent.signal(libc::SIGHUP);
    assert!(
        agent.wait_log(
            "SIGHUP: keeping the running config: invalid config",
            SHIP_TIMEOUT
        ),
        "{}",
        agent.log()
    );
    append_lines(&path, "keep", 100..200);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(
        agent.running(),
        "SIGHUP stopped the agent:\n{}",
        agent.log()
    );
    let errors = error_lines(&agent);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains(&cfg.display().to_string()) && errors[0].contains("keeping"),
        "{errors:#?}"
    );
    assert!(agent.stop().success());
    assert_exactly_once(
        &consume_all(&broker, "keep", 200, SHIP_TIMEOUT),
        "keep",
        200,
    );
}

#[test]
fn sighup_never_stops_the_agent_and_sigterm_still_does() {
    let OneFile {
        broker,
        w,
        path,
        cfg,
    } = one_file("hup", 1, "hup", 50, "");
    let mut agent = Agent::start(&w, &cfg);
    assert!(agent.wait_started(), "{}", agent.log());
    wait_shipped(&w, &agent, &[path.as_path()]);

    // Unchanged file: a reload that changes nothing.
    agent.signal(libc::SIGHUP);
    let same = format!("SIGHUP: reloaded {}: nothing changed", cfg.display());
    assert!(agent.wait_log(&same, SHIP_TIMEOUT), "{}", agent.log());
    // A setting that needs a restart: named once, the running value stays.
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, text.replace("linger_ms: 5", "linger_ms: 7")).unwrap();
    agent.signal(libc::SIGHUP);
    assert!(
        agent.wait_log(
            "kafka.linger_ms changed; that needs a restart",
            SHIP_TIMEOUT
        ),
        "{}",
        agent.log()
    );
    assert_eq!(
        agent.own_log().matches("needs a restart").count(),
        1,
        "{}",
        agent.log()
    );
    append_lines(&path, "hup", 50..100);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(
        agent.running(),
        "SIGHUP stopped the agent:\n{}",
        agent.log()
    );

    let status = agent.stop();
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert_exactly_once(&consume_all(&broker, "hup", 100, SHIP_TIMEOUT), "hup", 100);
}

/// Whether `pid` holds SIGHUP back or handles it (its `SigBlk` / `SigCgt` masks in
/// /proc): true from the agent's first code on, a constructor that runs before `main`.
fn guards_sighup(pid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (libc::SIGHUP - 1)) != 0)
    };
    mask("SigBlk:") || mask("SigCgt:")
}

/// SIGHUPs from the moment the agent's own code runs (a `systemctl reload` racing a
/// start): through the constructor, `main`, the glibc re-exec, the config load and
/// until the handler exists, none may kill it (systemd does not restart a unit that
/// died of SIGHUP). And READY=1 on `$NOTIFY_SOCKET` (systemd's `Type=notify`) comes only
/// once SIGHUP is handled: a burst right after it changes nothing.
#[test]
fn sighup_during_start_up_never_kills_the_agent() {
    let OneFile {
        broker,
        w,
        path,
        cfg,
    } = one_file("hup-start", 1, "hs", 20, "");
    let notify_path = w.path("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind");
    notify
        .set_read_timeout(Some(SHIP_TIMEOUT))
        .expect("timeout");
    for round in 0..5u64 {
        let mut agent = Agent::start_with(&w, &cfg, |c| {
            c.env("NOTIFY_SOCKET", &notify_path);
        });
        let pid = agent.pid();
        assert!(
            wait_until(SHIP_TIMEOUT, || guards_sighup(pid)),
            "the agent never blocked nor handled SIGHUP:\n{}",
            agent.log()
        );
        // A burst from the first moment, spaced a little further apart each round.
        for i in 0..200u64 {
            agent.signal(libc::SIGHUP);
            std::thread::sleep(std::time::Duration::from_micros(20 * (round + 1) + i % 7));
        }
        assert!(
            agent.running(),
            "round {round}: SIGHUP during start-up killed the agent:\n{}",
            agent.log()
        );
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("READY=1 on NOTIFY_SOCKET");
        assert_eq!(&buf[..n], b"READY=1");
        agent.signal(libc::SIGHUP);
        let from = 20 + round as usize * 10;
        append_lines(&path, "hs", from..from + 10);
        wait_shipped(&w, &agent, &[path.as_path()]);
        let status = agent.stop();
        assert_eq!(status.code(), Some(0), "round {round}: {}", agent.log());
    }
    assert_exactly_once(
        &consume_all(&broker, "hup-start", 70, SHIP_TIMEOUT),
        "hs",
        70,
    );
}

#[test]
fn an_unwritable_data_dir_exits_1_naming_the_path() {
    let w = Workdir::new();
    // A regular file as parent: creating the directory fails even for root, which
    // permission bits would not stop.
    fs::write(w.path("afile"), "not a directory\n").unwrap();
    let data_dir = w.path("afile/sub");
    let cfg = w.path("agent.yaml");
    fs::write(
        &cfg,
        format!(
            "kafka:\n  brokers: [\"127.0.0.1:9\"]\nagent:\n  data_dir: {}\ncollect:\n{}",
            data_dir.display(),
            beginning_entry(&w.p("app.log"), "t")
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&w, &cfg);
    let status = agent.wait_exit(std::time::Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", agent.log());
    let log = agent.own_log();
    assert!(
        log.contains(&format!(
            "data_dir {} is not writable: ",
            data_dir.display()
        )),
        "{log}"
    );
    assert!(
        !log.contains(" starting: "),
        "started despite the bad data_dir:\n{log}"
    );
    assert!(!Path::new(&data_dir).exists());
}

#[test]
fn sighup_applies_log_level_live() {
    let broker = Broker::start();
    broker.create_topic("lvl", 1);
    let w = Workdir::new();
    let (a, b) = (w.path("a.log"), w.path("b.log"));
    append_lines(&a, "a", 0..20);
    append_lines(&b, "b", 0..20);
    let cfg = w.config(&broker, &beginning_entry(&w.p("a.log"), "lvl"), "");
    let mut agent = Agent::start(&w, &cfg);
    assert!(agent.wait_started(), "{}", agent.log());
    wait_shipped(&w, &agent, &[a.as_path()]);

    // One reload: a second file and `warn`. The reload line itself is still logged at
    // info; nothing at info after it, although a tailer starts and the agent stops.
    let both = beginning_entry(&w.p("a.log"), "lvl") + &beginning_entry(&w.p("b.log"), "lvl");
    w.config(&broker, &both, "  log_level: warn\n");
    agent.signal(libc::SIGHUP);
    let reloaded = format!(
        "SIGHUP: reloaded {}: collect 1 → 2 entries, log_level RUST_LOG → warn",
        cfg.display()
    );
    assert!(agent.wait_log(&reloaded, SHIP_TIMEOUT), "{}", agent.log());
    wait_shipped(&w, &agent, &[a.as_path(), b.as_path()]);
    assert!(agent.stop().success());
    let log = agent.own_log();
    let after = log.split(&reloaded).nth(1).unwrap_or_default();
    assert!(
        !after.contains(" INFO "),
        "info lines after log_level: warn:\n{log}"
    );
    let records = consume_all(&broker, "lvl", 40, SHIP_TIMEOUT);
    assert_exactly_once(&records, "a", 20);
    assert_exactly_once(&records, "b", 20);
}

#[test]
fn a_second_signal_exits_at_once_with_130() {
    let port = free_port();
    let extra = format!("  shutdown_timeout_ms: 120000\n  metrics_addr: 127.0.0.1:{port}\n");
    let OneFile {
        broker,
        w,
        path,
        cfg,
    } = one_file_own("twice", 1, "twice", 10, &extra);
    let mut agent = Agent::start(&w, &cfg);
    assert!(agent.wait_started(), "{}", agent.log());
    wait_shipped(&w, &agent, &[path.as_path()]);
    // Lines read but not acknowledged (the broker is frozen): the clean stop waits for
    // them, up to shutdown_timeout_ms, so the second signal finds the agent stopping.
    broker.freeze();
    append_lines(&path, "twice", 10..20);
    let read = format!(
        "logagent_lines_read_total{{path=\"{}\",topic=\"twice\"}}",
        w.p("app.log")
    );
    assert!(
        wait_until(SHIP_TIMEOUT, || metric(port, &read) == Some(20)),
        "{}",
        get(port, "/metrics").1
    );
    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait_log("SIGTERM received: stopping cleanly", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    assert!(
        agent.running(),
        "stopped before the second signal:\n{}",
        agent.log()
    );
    agent.signal(libc::SIGINT);
    let status = agent.wait_exit(std::time::Duration::from_secs(60));
    broker.thaw();
    assert_eq!(status.and_then(|s| s.code()), Some(130), "{}", agent.log());
    assert!(
        agent.own_log().contains("second SIGINT: exiting at once"),
        "{}",
        agent.log()
    );
}
