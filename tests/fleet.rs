//! Central config at fleet scale against a real etcd (one member, or three) and a real
//! broker: changes arrive by watch (the periodic re-read is set to an hour, so nothing
//! else could deliver them), the watch recovers from an etcd restart, from compaction
//! and from a restore to an older revision; an idle agent creates no revisions; a killed
//! host goes stale in `logagent fleet` when its lease expires; group and host keys merge.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const IP: &str = "10.7.7.7";
const KEY: &str = "/logagent/10.7.7.7/collect_config";
const STATUS_KEY: &str = "/logagent/10.7.7.7/status";

/// agent.yaml whose etcd re-read is an hour: only the watch (or a fresh read after the
/// watch broke) can bring a change. Status looked at every 200 ms, lease of 3 s.
fn config(w: &Workdir, broker: &Broker, endpoints: &[String], etcd_extra: &str) -> PathBuf {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let yaml = format!(
        "kafka:\n  brokers: [\"{}\"]\n  linger_ms: 5\nagent:\n  data_dir: {}\n  poll_interval_ms: 50\n  checkpoint_interval_ms: 200\n  glob_interval_ms: 200\n  hostname: fleethost\n  ip: {IP}\n  allowed_paths: [\"{}/**\"]\netcd:\n  endpoints: [{}]\n  poll_interval_ms: 3600000\n  status_interval_ms: 200\n  heartbeat_ms: 1000\n  timeout_ms: 1000\n{etcd_extra}",
        broker.addr(),
        w.p("data"),
        w.dir.path().display(),
        eps.join(", "),
    );
    let path = w.path("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Sets the agent's etcd re-read (an hour in [`config`]) to `ms`.
fn reread_every(cfg: &Path, ms: u64) {
    let yaml = std::fs::read_to_string(cfg).unwrap().replace(
        "poll_interval_ms: 3600000",
        &format!("poll_interval_ms: {ms}"),
    );
    std::fs::write(cfg, yaml).unwrap();
}

/// The store revision now.
fn revision(etcd: &Etcd) -> i64 {
    etcd.client().get("/probe").expect("etcd get").revision
}

#[test]
fn a_watched_change_applies_without_a_poll_and_survives_an_etcd_restart() {
    let broker = Broker::start();
    broker.create_topic("t1", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let (a, b, c) = (w.path("a.log"), w.path("b.log"), w.path("c.log"));
    for (f, tag) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        append_lines(f, tag, 0..10);
    }
    let cfg = config(&w, &broker, &[etcd.endpoint()], "");
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t1")]));
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);

    // Re-read every hour: only the watch can bring this.
    etcd.put(
        KEY,
        &list(&[j(&w.p("a.log"), "t1"), j(&w.p("b.log"), "t1")]),
    );
    wait_shipped(&w, &agent, &[a.as_path(), b.as_path()]);

    // etcd restarts: the watch breaks, a fresh read and a new watch follow.
    etcd.kill();
    etcd.restart();
    etcd.put(
        KEY,
        &list(&[
            j(&w.p("a.log"), "t1"),
            j(&w.p("b.log"), "t1"),
            j(&w.p("c.log"), "t1"),
        ]),
    );
    wait_shipped(&w, &agent, &[a.as_path(), b.as_path(), c.as_path()]);
    assert!(
        agent.log().contains("reading every key again"),
        "the broken watch is said:\n{}",
        agent.log()
    );

    // A delete arrives by watch too: every tailer stops, offsets stay.
    etcd.client().delete(KEY).unwrap();
    assert!(
        agent.wait_log("does not exist (deleted?)", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "t1", 30, SHIP_TIMEOUT);
    for tag in ["a", "b", "c"] {
        assert_exactly_once(&recs, tag, 10);
    }
}

#[test]
fn a_watch_stream_ends_by_itself_after_its_renewal_time() {
    // What lets the agent replace a connection that died without a word: the stream's
    // own deadline. Quiet keys, a 2 s deadline: the stream must end, not block forever.
    let etcd = Etcd::start();
    let mut client = etcd.client();
    let rev = client.put("/quiet", b"x").unwrap();
    let mut stream = client
        .watch(&["/quiet".to_string()], rev + 1, Duration::from_secs(2))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut msgs = Vec::new();
        let end = loop {
            match stream.next_msg() {
                Ok(m) => msgs.push(m),
                Err(e) => break e.to_string(),
            }
        };
        let _ = tx.send((msgs, end));
    });
    let (msgs, end) = rx
        .recv_timeout(SHIP_TIMEOUT)
        .expect("the watch stream never ended");
    assert_eq!(msgs, vec![logagent::etcd::WatchMsg::Created], "{end}");
}

#[test]
fn a_watch_canceled_by_compaction_reads_again_and_applies_the_newest_value() {
    let broker = Broker::start();
    broker.create_topic("t3", 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let (a, b) = (w.path("a.log"), w.path("b.log"));
    append_lines(&a, "a", 0..10);
    append_lines(&b, "b", 0..10);
    let cfg = config(&w, &broker, &[etcd.endpoint()], "");
    let one = list(&[j(&w.p("a.log"), "t3")]);
    etcd.put(KEY, &one);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);

    // A stalled agent (SIGSTOP) stops reading its watch: etcd's buffers for it fill, the
    // watcher falls behind, and compaction past it cancels the watch. 300 values of
    // 200 KB (the same list, padded) are more than the socket and etcd's buffers hold.
    agent.freeze();
    let padded = format!("{one}{}", " ".repeat(200_000));
    let mut client = etcd.client();
    let mut rev = 0;
    for _ in 0..300 {
        rev = client.put(KEY, padded.as_bytes()).unwrap();
    }
    client.compact(rev).unwrap();
    etcd.put(
        KEY,
        &list(&[j(&w.p("a.log"), "t3"), j(&w.p("b.log"), "t3")]),
    );
    agent.thaw();
    assert!(
        agent.wait_log("are compacted; reading every key again", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    wait_shipped(&w, &agent, &[a.as_path(), b.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "t3", 20, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "a", 10);
    assert_exactly_once(&recs, "b", 10);
}

#[test]
fn a_restore_to_an_older_revision_is_applied_and_so_are_puts_after_it() {
    let broker = Broker::start();
    broker.create_topic("t4", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let names = ["a", "b", "c", "d"];
    for n in names {
        append_lines(&w.path(&format!("{n}.log")), n, 0..10);
    }
    let p = |n: &str| w.path(&format!("{n}.log"));
    let entries = |ns: &[&str]| {
        list(
            &ns.iter()
                .map(|n| j(&w.p(&format!("{n}.log")), "t4"))
                .collect::<Vec<_>>(),
        )
    };
    let cfg = config(&w, &broker, &[etcd.endpoint()], "");
    etcd.put(KEY, &entries(&["a"]));
    let snap = w.path("snap.db");
    etcd.snapshot(&snap);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&p("a")]);
    // Later history the restores undo.
    for _ in 0..5 {
        etcd.put("/other", "x");
    }
    let seen = etcd
        .client()
        .put(KEY, entries(&["a", "b"]).as_bytes())
        .unwrap();
    wait_shipped(&w, &agent, &[&p("a"), &p("b")]);

    // While the agent cannot look (stopped), etcd is restored and the next put to its key
    // lands on the very revision the agent saw last, with another value.
    agent.freeze();
    etcd.restore(&snap);
    let mut client = etcd.client();
    let mut rev = revision(&etcd);
    assert!(rev < seen, "the restore took the revision back");
    for _ in 0..seen {
        if rev + 1 >= seen {
            break;
        }
        rev = client.put("/other", b"y").unwrap();
    }
    assert_eq!(
        client.put(KEY, entries(&["a", "c"]).as_bytes()).unwrap(),
        seen
    );
    agent.thaw();
    assert!(
        agent.wait_log("b.log: no longer collected", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    wait_shipped(&w, &agent, &[&p("a"), &p("c")]);

    // Restored again while the agent watches: the revision goes back, the old value applies.
    let before = revision(&etcd);
    etcd.restore(&snap);
    assert!(revision(&etcd) < before);
    assert!(
        agent.wait_log("c.log: no longer collected", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains("revision went back"),
        "{}",
        agent.log()
    );
    etcd.put(KEY, &entries(&["a", "d"]));
    wait_shipped(&w, &agent, &[&p("a"), &p("d")]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "t4", 40, SHIP_TIMEOUT);
    for n in names {
        assert_exactly_once(&recs, n, 10);
    }
}

#[test]
fn an_idle_agent_creates_no_revisions_and_a_killed_one_goes_stale() {
    let broker = Broker::start();
    broker.create_topic("t5", 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let a = w.path("a.log");
    append_lines(&a, "a", 0..10);
    let cfg = config(&w, &broker, &[etcd.endpoint()], "");
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t5")]));
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);
    let size = std::fs::metadata(&a).unwrap().len();
    assert!(
        wait_until(SHIP_TIMEOUT, || etcd.get(STATUS_KEY).is_some_and(|s| {
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            v["files"][0]["committed"].as_u64() == Some(size)
        })),
        "status: {:?}",
        etcd.get(STATUS_KEY)
    );
    let out = logagent(&["fleet", "--json"], &cfg);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hosts"][0]["state"], "ok", "{v}");
    assert_eq!(v["hosts"][0]["hostname"], "fleethost");

    // A minute idle, its lease (3 s) kept alive all along: not one new revision.
    let start = revision(&etcd);
    std::thread::sleep(Duration::from_secs(60));
    assert_eq!(revision(&etcd), start, "an idle agent wrote to etcd");
    assert!(
        etcd.get(STATUS_KEY).is_some(),
        "the lease was kept alive without writes"
    );

    // Killed: its status goes with its lease, its registration keeps it listed, stale.
    agent.kill9();
    assert!(
        wait_until(SHIP_TIMEOUT, || etcd.get(STATUS_KEY).is_none()),
        "the lease did not expire"
    );
    let out = logagent(&["fleet"], &cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a stale host fails the check:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(IP) && l.contains("stale")),
        "{text}"
    );
}

#[test]
fn group_keys_merge_under_the_host_key_and_a_bad_group_value_keeps_its_last_good_one() {
    let broker = Broker::start();
    for t in ["th", "tw", "tj"] {
        broker.create_topic(t, 1);
    }
    let etcd = Etcd::start();
    let w = Workdir::new();
    let files: Vec<PathBuf> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| w.path(&format!("{n}.log")))
        .collect();
    for (f, tag) in files.iter().zip(["a", "b", "c", "d"]) {
        append_lines(f, tag, 0..10);
    }
    let cfg = config(&w, &broker, &[etcd.endpoint()], "  groups: [web, java]\n");
    let (web, java) = (
        "/logagent/groups/web/collect_config",
        "/logagent/groups/java/collect_config",
    );
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "th")]));
    etcd.put(
        web,
        &list(&[j(&w.p("a.log"), "tw"), j(&w.p("b.log"), "tw")]),
    );
    etcd.put(
        java,
        &list(&[j(&w.p("b.log"), "tj"), j(&w.p("c.log"), "tj")]),
    );
    let mut agent = Agent::start(&w, &cfg);
    let (a, b, c, d) = (&files[0], &files[1], &files[2], &files[3]);
    wait_shipped(&w, &agent, &[a, b, c]);

    // What came from where, as the operator sees it.
    let out = logagent(&["config", "show"], &cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("collect: {} -> th  (from {KEY})", w.p("a.log"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("collect: {} -> tw  (from {web})", w.p("b.log"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("ignore:  {} from {java}", w.p("b.log"))),
        "{text}"
    );

    // A bad java value: java keeps its last good list (c still followed), the rest works.
    etcd.put(java, "[{\"path\":");
    assert!(
        agent.wait_log(&format!("of {java} rejected"), SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(c, "c", 10..20);
    // One put of a group key reconfigures the host.
    etcd.put(
        web,
        &list(&[j(&w.p("b.log"), "tw"), j(&w.p("d.log"), "tw")]),
    );
    wait_shipped(&w, &agent, &[a, b, c, d]);
    assert!(
        wait_until(SHIP_TIMEOUT, || etcd
            .get(STATUS_KEY)
            .is_some_and(|s| s.contains("rejected") && s.contains(java))),
        "status: {:?}",
        etcd.get(STATUS_KEY)
    );
    let out = logagent(&["fleet"], &cfg);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a host with a config error fails the check"
    );
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "th", 10, SHIP_TIMEOUT), "a", 10);
    let tw = consume_all(&broker, "tw", 20, SHIP_TIMEOUT);
    assert_exactly_once(&tw, "b", 10);
    assert_exactly_once(&tw, "d", 10);
    assert_exactly_once(&consume_all(&broker, "tj", 20, SHIP_TIMEOUT), "c", 20);
}

#[test]
fn three_members_each_stopped_in_turn_the_watch_moves_on() {
    let broker = Broker::start();
    broker.create_topic("t7", 1);
    let mut cluster = Cluster::start();
    let w = Workdir::new();
    let files: Vec<PathBuf> = (0..4).map(|i| w.path(&format!("f{i}.log"))).collect();
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("f{i}"), 0..10);
    }
    let cfg = config(&w, &broker, &cluster.endpoints(), "");
    let entries = |n: usize| {
        list(
            &(0..n)
                .map(|i| j(&w.p(&format!("f{i}.log")), "t7"))
                .collect::<Vec<_>>(),
        )
    };
    cluster.via(1).put(KEY, entries(1).as_bytes()).unwrap();
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&files[0]]);
    // Whichever member the agent watches, one of these stops is its member's.
    for m in 0..3 {
        cluster.kill(m);
        let other = (m + 1) % 3;
        assert!(
            wait_until(SHIP_TIMEOUT, || cluster
                .via(other)
                .put(KEY, entries(m + 2).as_bytes())
                .is_ok()),
            "two members did not accept the write"
        );
        let want: Vec<&Path> = files[..m + 2].iter().map(PathBuf::as_path).collect();
        wait_shipped(&w, &agent, &want);
        cluster.start_member(m, "existing");
        assert!(
            wait_until(SHIP_TIMEOUT, || cluster.via(m).get("/probe").is_ok()),
            "member {m} did not come back"
        );
    }
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "t7", 40, SHIP_TIMEOUT);
    for i in 0..4 {
        assert_exactly_once(&recs, &format!("f{i}"), 10);
    }
}

#[test]
fn a_frozen_member_delays_a_change_by_one_re_read_at_most() {
    // SIGSTOP, not a kill: connections to the member stay open and silent, so a watch on
    // it never breaks. The periodic re-read (2 s here) moves to a member that answers,
    // finds the change, applies it, and watches anew there.
    let broker = Broker::start();
    broker.create_topic("t8", 1);
    let cluster = Cluster::start();
    let w = Workdir::new();
    let files: Vec<PathBuf> = (0..4).map(|i| w.path(&format!("f{i}.log"))).collect();
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("f{i}"), 0..10);
    }
    let cfg = config(&w, &broker, &cluster.endpoints(), "");
    reread_every(&cfg, 2000);
    let entries = |n: usize| {
        list(
            &(0..n)
                .map(|i| j(&w.p(&format!("f{i}.log")), "t8"))
                .collect::<Vec<_>>(),
        )
    };
    cluster.via(1).put(KEY, entries(1).as_bytes()).unwrap();
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&files[0]]);
    for m in 0..3 {
        let pid = cluster.members[m].as_ref().unwrap().id();
        signal(pid, libc::SIGSTOP);
        let other = (m + 1) % 3;
        assert!(
            wait_until(SHIP_TIMEOUT, || cluster
                .via(other)
                .put(KEY, entries(m + 2).as_bytes())
                .is_ok()),
            "two members did not accept the write"
        );
        let want: Vec<&Path> = files[..m + 2].iter().map(PathBuf::as_path).collect();
        wait_shipped(&w, &agent, &want);
        signal(pid, libc::SIGCONT);
    }
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "t8", 40, SHIP_TIMEOUT);
    for i in 0..4 {
        assert_exactly_once(&recs, &format!("f{i}"), 10);
    }
}

// ---- review15: tests that try to break the change ----

/// agent.yaml for `logagent fleet` only (no broker needed).
fn fleet_only_config(w: &Workdir, etcd: &Etcd) -> PathBuf {
    let yaml = format!(
        "kafka:\n  brokers: [\"127.0.0.1:1\"]\nagent:\n  data_dir: {}\n  ip: {IP}\netcd:\n  endpoints: [\"{}\"]\n  timeout_ms: 1000\n",
        w.p("data"),
        etcd.endpoint()
    );
    let path = w.path("fleet.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn fleet_an_unleased_status_of_a_dead_older_host_is_not_ok() {
    // The version before the lease wrote its status with a plain put (no lease) and no
    // registration. A host that ran it and died (or was decommissioned) keeps that doc
    // forever; `logagent fleet` must not call it ok (its `updated` is a day old).
    let etcd = Etcd::start();
    let w = Workdir::new();
    let cfg = fleet_only_config(&w, &etcd);
    let day_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 86_400;
    etcd.put(
        "/logagent/10.9.9.9/status",
        &format!(r#"{{"version":"0.1.0","hostname":"old","ip":"10.9.9.9","config_revision":4,"etcd_reachable":true,"refused":[],"files":[],"updated":{day_ago}}}"#),
    );
    let out = logagent(&["fleet", "--json"], &cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a status last updated a day ago, without a lease, passes the fleet check:\n{text}"
    );
}

#[test]
fn fleet_an_unreadable_status_doc_is_not_silently_skipped() {
    // A status doc that does not parse (garbage, a future version's shape) under the
    // prefix: the host it belongs to is not shown at all and the check passes.
    let etcd = Etcd::start();
    let w = Workdir::new();
    let cfg = fleet_only_config(&w, &etcd);
    etcd.put(
        "/logagent/10.9.9.8/status",
        "{\"version\":\"9.0\",\"files\":7}",
    );
    let out = logagent(&["fleet", "--json"], &cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.code() != Some(0) || text.contains("10.9.9.8"),
        "an unreadable status doc vanished from the fleet (exit {:?}):\n{text}",
        out.status.code()
    );
}

#[test]
fn registration_lost_by_a_restore_is_written_again() {
    // etcd restored from a snapshot taken before this host registered: the agent keeps
    // running (new lease, status rewritten) but never writes its registration again, so
    // once it dies it vanishes from `logagent fleet` instead of showing stale.
    let broker = Broker::start();
    broker.create_topic("t11", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let a = w.path("a.log");
    append_lines(&a, "a", 0..10);
    let cfg = config(&w, &broker, &[etcd.endpoint()], "");
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t11")]));
    let snap = w.path("snap.db");
    etcd.snapshot(&snap);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);
    let agent_key = "/logagent/10.7.7.7/agent";
    assert!(wait_until(SHIP_TIMEOUT, || etcd.get(agent_key).is_some()));
    etcd.restore(&snap);
    assert!(
        wait_until(SHIP_TIMEOUT, || etcd.get(STATUS_KEY).is_some()),
        "status not rewritten after the restore:\n{}",
        agent.log()
    );
    let back = wait_until(Duration::from_secs(20), || etcd.get(agent_key).is_some());
    agent.kill9();
    assert!(
        back,
        "the registration is never written again after a restore lost it"
    );
}

#[test]
fn host_entry_removed_the_group_entry_for_the_same_path_takes_over() {
    let broker = Broker::start();
    broker.create_topic("th2", 1);
    broker.create_topic("tw2", 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let a = w.path("a.log");
    append_lines(&a, "a", 0..10);
    let cfg = config(&w, &broker, &[etcd.endpoint()], "  groups: [web]\n");
    let web = "/logagent/groups/web/collect_config";
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "th2")]));
    etcd.put(web, &list(&[j(&w.p("a.log"), "tw2")]));
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);
    // Lines keep coming while the host entry goes away.
    let writer = {
        let a = a.clone();
        std::thread::spawn(move || {
            for i in 10..200 {
                append_lines(&a, "a", i..i + 1);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    etcd.put(KEY, "[]");
    writer.join().unwrap();
    wait_shipped(&w, &agent, &[a.as_path()]);
    assert!(agent.stop().success());
    let mut recs = consume_all(&broker, "th2", 10, Duration::from_secs(20));
    recs.extend(consume_all(&broker, "tw2", 10, Duration::from_secs(20)));
    assert_exactly_once(&recs, "a", 200);
    let tw = consume_all(&broker, "tw2", 1, Duration::from_secs(20));
    assert!(!tw.is_empty(), "the group's entry never took over");
}

#[test]
fn one_group_key_the_user_may_not_read_does_not_block_the_others() {
    // RBAC: the agent's user may read its host key and group web, not group java (a
    // group it was added to before its role was). "A bad key keeps its last good value,
    // the others apply" — but the one txn over all keys fails as a whole.
    let broker = Broker::start();
    broker.create_topic("t13", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let (a, b) = (w.path("a.log"), w.path("b.log"));
    append_lines(&a, "a", 0..10);
    append_lines(&b, "b", 0..10);
    let web = "/logagent/groups/web/collect_config";
    let java = "/logagent/groups/java/collect_config";
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t13")]));
    etcd.put(web, &list(&[j(&w.p("b.log"), "t13")]));
    etcd.put(java, "[]");
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "agent"],
        &[
            "role",
            "grant-permission",
            "agent",
            "--prefix=true",
            "readwrite",
            "/logagent/10.7.7.7/",
        ],
        &["role", "grant-permission", "agent", "read", web],
        &["user", "add", "agent:agentpw"],
        &["user", "grant-role", "agent", "agent"],
        &["auth", "enable"],
    ] {
        etcdctl(&etcd, None, args);
    }
    etcd.settings.username = Some("root".into());
    etcd.settings.password = Some("rootpw".into());
    let cfg = config(
        &w,
        &broker,
        &[etcd.endpoint()],
        "  groups: [web, java]\n  username: agent\n  password: agentpw\n",
    );
    let mut agent = Agent::start(&w, &cfg);
    let ok = wait_until(Duration::from_secs(30), || {
        all_shipped(&w, &[a.as_path(), b.as_path()])
    });
    let log = agent.log();
    agent.kill9();
    assert!(
        ok,
        "the readable host and web keys never applied because java is not readable:\n{log}"
    );
    assert!(
        log.contains("cannot read /logagent/groups/java/collect_config"),
        "the unreadable key is named:\n{log}"
    );
}

#[test]
fn auth_with_short_lived_tokens_watch_status_and_restart() {
    let broker = Broker::start();
    broker.create_topic("t14", 1);
    let mut etcd = Etcd::start_with(
        "http",
        &["--auth-token-ttl", "2"],
        logagent::etcd::EtcdSettings::default(),
    );
    let w = Workdir::new();
    let files: Vec<PathBuf> = (0..4).map(|i| w.path(&format!("f{i}.log"))).collect();
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("f{i}"), 0..10);
    }
    let entries = |n: usize| {
        list(
            &(0..n)
                .map(|i| j(&w.p(&format!("f{i}.log")), "t14"))
                .collect::<Vec<_>>(),
        )
    };
    etcd.put(KEY, &entries(1));
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "agent"],
        &[
            "role",
            "grant-permission",
            "agent",
            "--prefix=true",
            "readwrite",
            "/logagent/10.7.7.7/",
        ],
        &["user", "add", "agent:agentpw"],
        &["user", "grant-role", "agent", "agent"],
        &["auth", "enable"],
    ] {
        etcdctl(&etcd, None, args);
    }
    etcd.settings.username = Some("root".into());
    etcd.settings.password = Some("rootpw".into());
    let cfg = config(
        &w,
        &broker,
        &[etcd.endpoint()],
        "  username: agent\n  password: agentpw\n",
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&files[0]]);
    // Idle well past the token TTL: keep-alives only.
    std::thread::sleep(Duration::from_secs(10));
    etcd.put(KEY, &entries(2));
    wait_shipped(&w, &agent, &[&files[0], &files[1]]);
    assert!(
        wait_until(Duration::from_secs(20), || etcd
            .get(STATUS_KEY)
            .is_some_and(|s| s.contains("f1.log"))),
        "status not updated with an expired token:\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        etcd.get(STATUS_KEY).is_some(),
        "status lease lost while idle with an expired token:\n{}",
        agent.log()
    );
    // etcd restart: every token is gone.
    etcd.kill();
    etcd.restart();
    etcd.put(KEY, &entries(3));
    wait_shipped(&w, &agent, &[&files[0], &files[1], &files[2]]);
    std::thread::sleep(Duration::from_secs(8));
    etcd.put(KEY, &entries(4));
    let ok = wait_until(Duration::from_secs(30), || {
        all_shipped(&w, &files.iter().map(PathBuf::as_path).collect::<Vec<_>>())
    });
    let log = agent.log();
    assert!(ok, "last change not applied:\n{log}");
    assert!(agent.stop().success());
    assert!(
        !log.contains("authentication failed") && !log.contains("cannot write status"),
        "{log}"
    );
}

#[test]
fn a_burst_of_puts_and_a_group_deleted_and_recreated_ends_on_the_final_values() {
    let broker = Broker::start();
    broker.create_topic("t15", 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let files: Vec<PathBuf> = (0..6).map(|i| w.path(&format!("f{i}.log"))).collect();
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("f{i}"), 0..10);
    }
    let web = "/logagent/groups/web/collect_config";
    let cfg = config(&w, &broker, &[etcd.endpoint()], "  groups: [web]\n");
    etcd.put(KEY, &list(&[j(&w.p("f0.log"), "t15")]));
    etcd.put(web, &list(&[j(&w.p("f1.log"), "t15")]));
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&files[0], &files[1]]);
    let mut c = etcd.client();
    for k in 0..200 {
        let i = k % 5;
        c.put(
            KEY,
            list(&[j(&w.p(&format!("f{i}.log")), "t15")]).as_bytes(),
        )
        .unwrap();
        if k % 7 == 0 {
            c.delete(web).unwrap();
        }
        if k % 7 == 3 {
            c.put(web, b"[{\"path\":").unwrap();
        }
        if k % 7 == 5 {
            c.put(web, list(&[j(&w.p("f1.log"), "t15")]).as_bytes())
                .unwrap();
        }
    }
    // Final: host f5, group deleted then re-created with f2.
    c.put(KEY, list(&[j(&w.p("f5.log"), "t15")]).as_bytes())
        .unwrap();
    c.delete(web).unwrap();
    c.put(web, list(&[j(&w.p("f2.log"), "t15")]).as_bytes())
        .unwrap();
    let host_rev = c.get(KEY).unwrap().kv.unwrap().mod_revision;
    let web_rev = c.get(web).unwrap().kv.unwrap().mod_revision;
    let ok = wait_until(Duration::from_secs(20), || {
        etcd.get(STATUS_KEY).is_some_and(|s| {
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            let revs: Vec<i64> = v["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    s["revision"].as_str().map_or_else(
                        || s["revision"].as_i64().unwrap_or(-1),
                        |x| x.parse().unwrap(),
                    )
                })
                .collect();
            let mut paths: Vec<String> = v["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["path"].as_str().unwrap().to_owned())
                .collect();
            paths.sort();
            revs == [host_rev, web_rev] && paths == [w.p("f2.log"), w.p("f5.log")]
        })
    });
    let st = etcd.get(STATUS_KEY);
    assert!(agent.stop().success());
    assert!(ok, "final values not applied; status {st:?}");
}

#[test]
fn a_restore_that_brings_back_an_old_status_doc_is_overwritten() {
    // Snapshot while the host is healthy (the status lease is in it); the host then
    // stalls (broker frozen) and says so; etcd is restored. The restored store holds the
    // healthy doc and the lease, so the agent (whose last written doc is the stalled
    // one) never writes again: `logagent fleet` says ok for a stalled host.
    let broker = Broker::start_own();
    broker.create_topic("t16", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let a = w.path("a.log");
    append_lines(&a, "a", 0..10);
    let cfg = config(&w, &broker, &[etcd.endpoint()], "");
    let yaml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("agent:\n", "agent:\n  stall_warn_ms: 1000\n");
    std::fs::write(&cfg, yaml).unwrap();
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t16")]));
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);
    let size = std::fs::metadata(&a).unwrap().len();
    assert!(wait_until(SHIP_TIMEOUT, || etcd
        .get(STATUS_KEY)
        .is_some_and(|s| {
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            v["files"][0]["committed"].as_u64() == Some(size)
        })));
    let snap = w.path("snap.db");
    etcd.snapshot(&snap);
    broker.freeze();
    append_lines(&a, "a", 10..2000);
    let stalled = wait_until(Duration::from_secs(30), || {
        etcd.get(STATUS_KEY)
            .is_some_and(|s| s.contains("\"stalled\":true"))
    });
    assert!(
        stalled,
        "never reported stalled: {:?}",
        etcd.get(STATUS_KEY)
    );
    etcd.restore(&snap);
    std::thread::sleep(Duration::from_secs(10));
    let out = logagent(&["fleet", "--json"], &cfg);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let st = etcd.get(STATUS_KEY);
    broker.thaw();
    agent.kill9();
    assert!(
        st.as_deref().is_some_and(|s| s.contains("\"stalled\":true")),
        "after the restore the status shows the healthy pre-snapshot doc: {st:?}\nfleet (exit {:?}): {text}\n{}",
        out.status.code(),
        agent.log()
    );
}

#[test]
fn agent_frozen_past_its_lease_writes_its_status_again() {
    let broker = Broker::start();
    broker.create_topic("t17", 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let (a, b) = (w.path("a.log"), w.path("b.log"));
    append_lines(&a, "a", 0..10);
    append_lines(&b, "b", 0..10);
    let cfg = config(&w, &broker, &[etcd.endpoint()], "");
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t17")]));
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);
    assert!(wait_until(SHIP_TIMEOUT, || etcd.get(STATUS_KEY).is_some()));
    agent.freeze();
    assert!(wait_until(SHIP_TIMEOUT, || etcd.get(STATUS_KEY).is_none()));
    etcd.put(
        KEY,
        &list(&[j(&w.p("a.log"), "t17"), j(&w.p("b.log"), "t17")]),
    );
    agent.thaw();
    wait_shipped(&w, &agent, &[a.as_path(), b.as_path()]);
    let back = wait_until(Duration::from_secs(15), || etcd.get(STATUS_KEY).is_some());
    assert!(agent.stop().success());
    assert!(
        back,
        "status not rewritten after the freeze:\n{}",
        agent.log()
    );
    let recs = consume_all(&broker, "t17", 20, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "a", 10);
    assert_exactly_once(&recs, "b", 10);
}

#[test]
fn two_hosts_sharing_one_ip_are_named_and_do_not_rewrite_each_other() {
    // A realistic misconfiguration: two hosts behind one NAT address (or one `agent.ip`
    // copied around) write one status key. Each must not rewrite the other's document
    // on every re-read; one error line says what is wrong.
    let broker = Broker::start();
    broker.create_topic("t18", 1);
    let etcd = Etcd::start();
    let (w1, w2) = (Workdir::new(), Workdir::new());
    append_lines(&w1.path("a.log"), "a", 0..10);
    append_lines(&w2.path("b.log"), "b", 0..10);
    let fast = |w: &Workdir, host: &str| {
        let cfg = config(w, &broker, &[etcd.endpoint()], "");
        let yaml = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("poll_interval_ms: 3600000", "poll_interval_ms: 300")
            .replace("hostname: fleethost", &format!("hostname: {host}"));
        std::fs::write(&cfg, yaml).unwrap();
        cfg
    };
    let (c1, c2) = (fast(&w1, "one"), fast(&w2, "two"));
    // Each allowed only its own workdir; the list names both files.
    etcd.put(
        KEY,
        &list(&[j(&w1.p("a.log"), "t18"), j(&w2.p("b.log"), "t18")]),
    );
    let mut a1 = Agent::start(&w1, &c1);
    let mut a2 = Agent::start(&w2, &c2);
    wait_shipped(&w1, &a1, &[w1.path("a.log").as_path()]);
    wait_shipped(&w2, &a2, &[w2.path("b.log").as_path()]);
    assert!(
        wait_until(SHIP_TIMEOUT, || (a1.log() + &a2.log())
            .contains("share one IP")),
        "{}\n{}",
        a1.log(),
        a2.log()
    );
    // Both idle now: ten seconds of re-reads every 300 ms, and no rewrite war.
    std::thread::sleep(Duration::from_secs(2));
    let said = (a1.log() + &a2.log()).matches("share one IP").count();
    let start = revision(&etcd);
    std::thread::sleep(Duration::from_secs(10));
    let writes = revision(&etcd) - start;
    assert_eq!(
        writes, 0,
        "{writes} revisions in 10 s: the two agents rewrite each other"
    );
    assert_eq!(
        (a1.log() + &a2.log()).matches("share one IP").count(),
        said,
        "said once, not on every re-read"
    );
    assert!(a1.stop().success() && a2.stop().success());
}

/// etcd with auth: root, and a user `agent` that may readwrite the host's prefix and
/// read `extra` keys.
fn auth_setup(etcd: &mut Etcd, extra: &[&str]) {
    let mut cmds: Vec<Vec<String>> = [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "agent"],
        &[
            "role",
            "grant-permission",
            "agent",
            "--prefix=true",
            "readwrite",
            "/logagent/10.7.7.7/",
        ],
        &["user", "add", "agent:agentpw"],
        &["user", "grant-role", "agent", "agent"],
    ]
    .iter()
    .map(|a| a.iter().map(|s| s.to_string()).collect())
    .collect();
    for k in extra {
        cmds.push(vec![
            "role".into(),
            "grant-permission".into(),
            "agent".into(),
            "read".into(),
            k.to_string(),
        ]);
    }
    cmds.push(vec!["auth".into(), "enable".into()]);
    for c in cmds {
        let c: Vec<&str> = c.iter().map(String::as_str).collect();
        etcdctl(etcd, None, &c);
    }
    etcd.settings.username = Some("root".into());
    etcd.settings.password = Some("rootpw".into());
}

#[test]
fn group_key_permission_revoked_then_granted_again_while_running() {
    let broker = Broker::start();
    broker.create_topic("t19", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let f: Vec<PathBuf> = (0..4).map(|i| w.path(&format!("f{i}.log"))).collect();
    for (i, p) in f.iter().enumerate() {
        append_lines(p, &format!("f{i}"), 0..10);
    }
    let web = "/logagent/groups/web/collect_config";
    etcd.put(KEY, &list(&[j(&w.p("f0.log"), "t19")]));
    etcd.put(web, &list(&[j(&w.p("f1.log"), "t19")]));
    auth_setup(&mut etcd, &[web]);
    let cfg = config(
        &w,
        &broker,
        &[etcd.endpoint()],
        "  groups: [web]\n  username: agent\n  password: agentpw\n",
    );
    reread_every(&cfg, 2000);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&f[0], &f[1]]);
    // revoke read on web
    etcdctl(
        &etcd,
        Some("root:rootpw"),
        &["role", "revoke-permission", "agent", web],
    );
    std::thread::sleep(Duration::from_secs(6));
    let revoked_log = agent.log();
    // the host key still follows by watch
    etcd.put(
        KEY,
        &list(&[j(&w.p("f0.log"), "t19"), j(&w.p("f2.log"), "t19")]),
    );
    let host_ok = wait_until(Duration::from_secs(10), || all_shipped(&w, &[&f[2]]));
    // grant again, change web
    etcdctl(
        &etcd,
        Some("root:rootpw"),
        &["role", "grant-permission", "agent", "read", web],
    );
    std::thread::sleep(Duration::from_secs(1));
    etcd.put(
        web,
        &list(&[j(&w.p("f1.log"), "t19"), j(&w.p("f3.log"), "t19")]),
    );
    let web_ok = wait_until(Duration::from_secs(15), || all_shipped(&w, &[&f[3]]));
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.log();
    agent.kill9();
    let n = |s: &str| log.matches(s).count();
    eprintln!("{log}");
    eprintln!(
        "watch canceled: {}, readable again: {}, cannot read: {}, lines: {}",
        n("canceled the watch"),
        n("readable again"),
        n("cannot read"),
        log.lines().count()
    );
    assert!(
        revoked_log.contains("cannot read /logagent/groups/web"),
        "revocation not noticed:\n{revoked_log}"
    );
    assert!(
        host_ok,
        "host key change not applied while web is denied:\n{log}"
    );
    assert!(
        web_ok,
        "web change not applied after the permission came back:\n{log}"
    );
    assert!(log.lines().count() < 60, "log spam:\n{log}");
}

#[test]
fn a_group_key_denied_at_restart_keeps_its_cached_value() {
    // A group key readable last run, denied after a restart (a role edited meanwhile):
    // "that key keeps its last good value". After a restart, the last good value is the
    // one in data_dir/central-config.json; the agent should keep following the group's
    // files, not drop them (and not erase the group from the cache).
    let broker = Broker::start();
    broker.create_topic("t20", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let (a, b) = (w.path("a.log"), w.path("b.log"));
    append_lines(&a, "a", 0..10);
    append_lines(&b, "b", 0..10);
    let web = "/logagent/groups/web/collect_config";
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t20")]));
    etcd.put(web, &list(&[j(&w.p("b.log"), "t20")]));
    auth_setup(&mut etcd, &[web]);
    let cfg = config(
        &w,
        &broker,
        &[etcd.endpoint()],
        "  groups: [web]\n  username: agent\n  password: agentpw\n",
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&a, &b]);
    assert!(agent.stop().success());
    let cache_before = std::fs::read_to_string(w.path("data/central-config.json")).unwrap();
    etcdctl(
        &etcd,
        Some("root:rootpw"),
        &["role", "revoke-permission", "agent", web],
    );
    append_lines(&b, "b", 10..20);
    let mut agent = Agent::start(&w, &cfg);
    let ok = wait_until(Duration::from_secs(15), || all_shipped(&w, &[&a, &b]));
    let log = agent.log();
    let cache_after = std::fs::read_to_string(w.path("data/central-config.json")).unwrap();
    agent.kill9();
    assert!(
        ok,
        "after a restart, the denied group's files are dropped although the cache holds its last good value\n--- cache before:\n{cache_before}\n--- cache after:\n{cache_after}\n--- log:\n{log}"
    );
}

#[test]
fn every_key_denied_at_start_runs_the_cached_config() {
    // The agent's role lost all its permissions (or its user was given the wrong role)
    // while it was stopped. Claimed: "on the first failure before anything was applied
    // (any error: unreachable, bad credentials, permission) the cached config runs".
    let broker = Broker::start();
    broker.create_topic("t21", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let a = w.path("a.log");
    append_lines(&a, "a", 0..10);
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t21")]));
    auth_setup(&mut etcd, &[]);
    let cfg = config(
        &w,
        &broker,
        &[etcd.endpoint()],
        "  username: agent\n  password: agentpw\n",
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&a]);
    assert!(agent.stop().success());
    etcdctl(
        &etcd,
        Some("root:rootpw"),
        &[
            "role",
            "revoke-permission",
            "agent",
            "--prefix=true",
            "/logagent/10.7.7.7/",
        ],
    );
    append_lines(&a, "a", 10..20);
    let mut agent = Agent::start(&w, &cfg);
    let ok = wait_until(Duration::from_secs(15), || all_shipped(&w, &[&a]));
    let log = agent.log();
    let cache = std::fs::read_to_string(w.path("data/central-config.json")).unwrap();
    agent.kill9();
    assert!(ok, "every key denied at start: the cached config does not run\n--- cache after:\n{cache}\n--- log:\n{}", log.lines().rev().take(8).collect::<Vec<_>>().join("\n"));
}

#[test]
fn bad_password_at_start_runs_the_cached_config_and_logs_once() {
    let broker = Broker::start();
    broker.create_topic("t22", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let a = w.path("a.log");
    append_lines(&a, "a", 0..10);
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t22")]));
    auth_setup(&mut etcd, &[]);
    let cfg = config(
        &w,
        &broker,
        &[etcd.endpoint()],
        "  username: agent\n  password: agentpw\n",
    );
    reread_every(&cfg, 500);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&a]);
    assert!(agent.stop().success());
    etcdctl(&etcd, Some("root:rootpw"), &["user", "delete", "agent"]);
    etcdctl(
        &etcd,
        Some("root:rootpw"),
        &["user", "add", "agent:otherpw"],
    );
    etcdctl(
        &etcd,
        Some("root:rootpw"),
        &["user", "grant-role", "agent", "agent"],
    );
    append_lines(&a, "a", 10..20);
    let mut agent = Agent::start(&w, &cfg);
    let ok = wait_until(Duration::from_secs(15), || all_shipped(&w, &[&a]));
    std::thread::sleep(Duration::from_secs(10));
    let log = agent.log();
    agent.kill9();
    eprintln!("{log}");
    assert!(
        ok,
        "bad password at start: the cached config does not run\n{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count()
            <= 3,
        "log spam\n{log}"
    );
}

#[test]
fn registration_deleted_alone_on_an_idle_host_is_written_again() {
    // `etcdctl del /logagent/<ip>/agent` (the status untouched): item "when etcd no longer
    // holds what the agent last wrote (restore, etcdctl del), the agent writes them again".
    let broker = Broker::start();
    broker.create_topic("t23", 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let a = w.path("a.log");
    append_lines(&a, "a", 0..10);
    let cfg = config(&w, &broker, &[etcd.endpoint()], "");
    reread_every(&cfg, 1000);
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t23")]));
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&a]);
    let agent_key = "/logagent/10.7.7.7/agent";
    assert!(wait_until(SHIP_TIMEOUT, || etcd.get(agent_key).is_some()));
    std::thread::sleep(Duration::from_secs(3)); // idle: status settled
    let mut c = etcd.client();
    c.delete(agent_key).unwrap();
    let back = wait_until(Duration::from_secs(15), || etcd.get(agent_key).is_some());
    let log = agent.log();
    agent.kill9();
    assert!(
        back,
        "registration deleted alone is not written again on an idle host:\n{}",
        log.lines().rev().take(6).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn read_only_on_the_host_key_no_status_rights() {
    let broker = Broker::start();
    broker.create_topic("t24", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let (a, b) = (w.path("a.log"), w.path("b.log"));
    append_lines(&a, "a", 0..10);
    append_lines(&b, "b", 0..10);
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t24")]));
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "agent"],
        &["role", "grant-permission", "agent", "read", KEY],
        &["user", "add", "agent:agentpw"],
        &["user", "grant-role", "agent", "agent"],
        &["auth", "enable"],
    ] {
        etcdctl(&etcd, None, args);
    }
    etcd.settings.username = Some("root".into());
    etcd.settings.password = Some("rootpw".into());
    let cfg = config(
        &w,
        &broker,
        &[etcd.endpoint()],
        "  username: agent\n  password: agentpw\n",
    );
    reread_every(&cfg, 500);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&a]);
    etcd.put(
        KEY,
        &list(&[j(&w.p("a.log"), "t24"), j(&w.p("b.log"), "t24")]),
    );
    let ok = wait_until(Duration::from_secs(10), || all_shipped(&w, &[&a, &b]));
    std::thread::sleep(Duration::from_secs(8));
    let log = agent.log();
    agent.kill9();
    eprintln!("{log}");
    assert!(ok, "change not applied:\n{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count()
            <= 2,
        "log spam\n{log}"
    );
}

#[test]
fn all_permissions_revoked_while_running_then_granted_again() {
    let broker = Broker::start();
    broker.create_topic("t25", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let (a, b) = (w.path("a.log"), w.path("b.log"));
    append_lines(&a, "a", 0..10);
    append_lines(&b, "b", 0..10);
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t25")]));
    auth_setup(&mut etcd, &[]);
    let cfg = config(
        &w,
        &broker,
        &[etcd.endpoint()],
        "  username: agent\n  password: agentpw\n",
    );
    reread_every(&cfg, 1000);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&a]);
    for i in 0..5 {
        etcd.put(&format!("/other/{i}"), "x");
    }
    etcdctl(
        &etcd,
        Some("root:rootpw"),
        &[
            "role",
            "revoke-permission",
            "agent",
            "--prefix=true",
            "/logagent/10.7.7.7/",
        ],
    );
    std::thread::sleep(Duration::from_secs(5));
    append_lines(&a, "a", 10..20);
    let kept = wait_until(Duration::from_secs(10), || all_shipped(&w, &[&a]));
    etcdctl(
        &etcd,
        Some("root:rootpw"),
        &[
            "role",
            "grant-permission",
            "agent",
            "--prefix=true",
            "readwrite",
            "/logagent/10.7.7.7/",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    etcd.put(
        KEY,
        &list(&[j(&w.p("a.log"), "t25"), j(&w.p("b.log"), "t25")]),
    );
    let ok = wait_until(Duration::from_secs(10), || all_shipped(&w, &[&a, &b]));
    let log = agent.log();
    agent.kill9();
    eprintln!("{log}");
    assert!(kept, "config not kept while denied");
    assert!(ok, "not applied after the grant");
    assert!(
        !log.contains("restored from a snapshot"),
        "a permission revocation is reported as a restore:\n{log}"
    );
}

#[test]
fn etcd_flapping_then_stable_a_change_applies_and_the_log_stays_short() {
    let broker = Broker::start();
    broker.create_topic("t26", 1);
    let mut etcd = Etcd::start();
    let w = Workdir::new();
    let f: Vec<PathBuf> = (0..2).map(|i| w.path(&format!("f{i}.log"))).collect();
    for (i, p) in f.iter().enumerate() {
        append_lines(p, &format!("f{i}"), 0..10);
    }
    etcd.put(KEY, &list(&[j(&w.p("f0.log"), "t26")]));
    let cfg = config(&w, &broker, &[etcd.endpoint()], "");
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[&f[0]]);
    std::thread::sleep(Duration::from_secs(11)); // a healthy watch
    for _ in 0..8 {
        etcd.kill();
        std::thread::sleep(Duration::from_millis(700));
        etcd.restart();
        std::thread::sleep(Duration::from_millis(1500));
    }
    // stable from now on
    std::thread::sleep(Duration::from_secs(2));
    let t0 = std::time::Instant::now();
    etcd.put(
        KEY,
        &list(&[j(&w.p("f0.log"), "t26"), j(&w.p("f1.log"), "t26")]),
    );
    // Bounded, not timed: after the outages the back-off may be at its 30 s cap; the
    // change must arrive (by the next read and the watch after it), and quietly.
    let ok = wait_until(SHIP_TIMEOUT, || all_shipped(&w, &[&f[0], &f[1]]));
    let took = t0.elapsed();
    let log = agent.log();
    agent.kill9();
    let warns = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(ok, "the change never applied after etcd settled:\n{log}");
    eprintln!("took {took:?}, {warns} warnings");
    assert!(warns <= 20, "{warns} warnings for 8 restarts");
}

#[test]
fn three_agents_with_the_same_ip_scale_the_fight() {
    // Same as the two-agent case with three (containers on a default docker bridge all
    // detect 172.17.0.2 as agent.ip): revisions grow with the number of agents.
    let broker = Broker::start();
    broker.create_topic("t27", 1);
    let etcd = Etcd::start();
    let ws: Vec<Workdir> = (0..3).map(|_| Workdir::new()).collect();
    let mut agents = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        append_lines(&w.path("a.log"), "a", 0..10);
        let cfg = config(w, &broker, &[etcd.endpoint()], "");
        let y = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("poll_interval_ms: 3600000", "poll_interval_ms: 1000")
            .replace("hostname: fleethost", &format!("hostname: host{i}"))
            .replace(
                &format!("allowed_paths: [\"{}/**\"]", w.dir.path().display()),
                "allowed_paths: [\"/tmp/**\"]",
            );
        std::fs::write(&cfg, y).unwrap();
        agents.push(cfg);
    }
    etcd.put(KEY, &list(&[j(&ws[0].p("a.log"), "t27")]));
    let mut running: Vec<Agent> = ws
        .iter()
        .zip(&agents)
        .map(|(w, c)| Agent::start(w, c))
        .collect();
    std::thread::sleep(Duration::from_secs(8));
    let start = revision(&etcd);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(s) = etcd.get(STATUS_KEY) {
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            seen.insert(v["hostname"].as_str().unwrap_or("?").to_owned());
        }
    }
    let grown = revision(&etcd) - start;
    for a in &mut running {
        a.kill9();
    }
    assert!(grown <= 4, "three idle agents sharing an IP: {grown} revisions in 20 s; the status key flipped between {seen:?}");
}

#[test]
fn a_prefix_of_many_keys_is_read_in_pages_at_one_revision() {
    // `logagent fleet` reads every host under one prefix: more than one answer may hold.
    let etcd = Etcd::start();
    let mut c = etcd.client();
    for i in 0..250 {
        c.put(
            &format!("/logagent/10.0.{}.{}/status", i / 200, i % 200),
            b"{}",
        )
        .unwrap();
    }
    c.put("/logagent0", b"outside").unwrap();
    let kvs = c.get_prefix("/logagent/").unwrap();
    assert_eq!(kvs.len(), 250);
    let mut keys: Vec<&str> = kvs.iter().map(|k| k.key.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 250, "no key twice across pages");
}
