//! What real Kafka does that a stand-in did not: a topic's size limit, a topic deleted
//! and created again, partitions added, a partition leader killed under load with
//! `acks: all`, too few replicas in sync, every broker gone and back. Each case counts
//! lines in Kafka (missing 0; duplicates counted) and reads offsets on disk.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;

/// The bytes `logagent_bytes_lost_total` reports for `path` and `reason`.
fn lost(port: u16, path: &str, topic: &str, reason: &str) -> Option<u64> {
    metric(
        port,
        &format!(r#"logagent_bytes_lost_total{{path="{path}",topic="{topic}",reason="{reason}"}}"#),
    )
}

/// A line of `n` bytes that compression cannot shrink (so the topic's limit, which
/// applies after compression, sees its size).
fn incompressible(n: usize, seed: u64) -> String {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| char::from(b'a' + (r.next() % 26) as u8))
        .collect()
}

#[test]
fn a_line_larger_than_the_topic_takes_is_dropped_counted_and_the_file_goes_on() {
    let broker = Broker::start();
    broker.create_topic_with("small", 1, &[("max.message.bytes", "100000")]);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "a", 0..300);
    let big = incompressible(200_000, 7);
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{big}\n").as_bytes()))
        .expect("append the big line");
    append_lines(&path, "a", 300..600);
    let port = free_port();
    // Batches stay below the topic's limit (the default 1,000,000 is below Kafka's
    // default limit of 1,048,588; this topic's is smaller).
    let cfg = w.config_to(
        &broker.addr(),
        "  batch_max_bytes: 50000\n  entry_retry_ms: 300\n",
        &beginning_entry(&w.p("app.log"), "small"),
        &format!("  metrics_addr: 127.0.0.1:{port}\n"),
    );
    let mut agent = Agent::start(&w, &cfg);
    // The file goes on: every byte is done (shipped, or dropped and counted).
    wait_shipped(&w, &agent, &[path.as_path()]);
    append_lines(&path, "a", 600..700);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert_eq!(
        lost(port, &w.p("app.log"), "small", "too_large"),
        Some(big.len() as u64),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert_eq!(
        log.matches("dropped and counted as lost (reason too_large)")
            .count(),
        1,
        "{log}"
    );
    assert!(agent.stop().success());
    let records = consume_all(&broker, "small", 700, SHIP_TIMEOUT);
    assert_exactly_once(&records, "a", 700);
}

#[test]
fn partitions_added_while_running_get_records() {
    let broker = Broker::start();
    broker.create_topic("grows", 1);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "g", 0..200);
    let cfg = w.config_to(
        &broker.addr(),
        "  properties:\n    topic.metadata.refresh.interval.ms: \"1000\"\n",
        &beginning_entry(&w.p("app.log"), "grows"),
        "",
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    broker.add_partitions("grows", 4);
    // Lines keep coming, in several batches, until the new partitions have records
    // (the sticky partitioner moves on per batch once the metadata shows them).
    let mut n = 200;
    let spread = wait_until(SHIP_TIMEOUT, || {
        append_lines(&path, "g", n..n + 50);
        n += 50;
        std::thread::sleep(Duration::from_millis(100));
        let recs = consume_all(&broker, "grows", 0, Duration::from_secs(1));
        recs.iter().any(|r| r.partition > 0)
    });
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    assert!(
        spread,
        "no record in the added partitions:\n{}",
        agent.log()
    );
    assert_exactly_once(&consume_all(&broker, "grows", n, SHIP_TIMEOUT), "g", n);
}

#[test]
fn a_topic_deleted_and_created_again_while_followed_gets_every_later_line() {
    let broker = Broker::start();
    broker.create_topic("again", 1);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "before", 0..100);
    let cfg = w.config_to(
        &broker.addr(),
        "  entry_retry_ms: 300\n",
        &beginning_entry(&w.p("app.log"), "again"),
        "",
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    broker.delete_topic("again");
    append_lines(&path, "gap", 0..100);
    // Deletion is asynchronous in Kafka: create again once it is gone.
    assert!(
        wait_until(SHIP_TIMEOUT, || broker.try_create_topic("again", 1).is_ok()),
        "the topic could not be created again"
    );
    append_lines(&path, "after", 0..100);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    let recs = consume_all(&broker, "again", 100, SHIP_TIMEOUT);
    // What went into the deleted topic is gone with it; lines written while it was
    // missing, and after, are in the new one, once each (some "gap" lines may have been
    // acknowledged by the old topic before its deletion completed).
    assert_exactly_once(&recs, "after", 100);
    let t = tally(&recs);
    assert!(
        t.values().all(|&c| c == 1),
        "duplicates in the new topic: {:?}",
        t.iter().filter(|(_, &c)| c > 1).count()
    );
}

/// A writer thread appending `n` lines of `tag` to `path`, a few at a time.
fn write_in_background(path: &Path, tag: &'static str, n: usize) -> std::thread::JoinHandle<()> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut i = 0;
        while i < n {
            append_lines(&path, tag, i..(i + 200).min(n));
            i += 200;
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn the_partition_leader_killed_under_load_with_acks_all_loses_and_duplicates_nothing() {
    let mut kafka = KafkaCluster::start();
    kafka.create_topic("failover", 1);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "f", 0..1);
    let cfg = w.config_to(
        &kafka.bootstrap(),
        "  acks: all\n  idempotence: true\n",
        &beginning_entry(&w.p("app.log"), "failover"),
        "",
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    let writer = write_in_background(&path, "load", 20_000);
    // Kill the leader while lines flow: once some of the load is acknowledged.
    assert!(wait_until(SHIP_TIMEOUT, || registry_entries(&w)
        .iter()
        .any(|(_, _, off)| *off > 100_000)));
    let leader = kafka.leader("failover", 0).expect("a leader");
    kafka.kill9(leader);
    writer.join().expect("writer");
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    let recs = consume_from(&kafka.live_bootstrap(), "failover", 20_001, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "load", 20_000);
    assert_exactly_once(&recs, "f", 1);
}

#[test]
fn two_of_three_brokers_down_holds_everything_and_ships_it_once_they_return() {
    let mut kafka = KafkaCluster::start();
    kafka.create_topic("quorum", 2);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "q", 0..500);
    let cfg = w.config_to(
        &kafka.bootstrap(),
        "  acks: all\n",
        &beginning_entry(&w.p("app.log"), "quorum"),
        "",
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    kafka.kill9(2);
    kafka.kill9(3);
    append_lines(&path, "q", 500..2_500);
    // Nothing can be acknowledged with one broker of three (min.insync.replicas 2, and
    // no controller quorum): the lines wait in the file and in librdkafka.
    std::thread::sleep(Duration::from_secs(5));
    let done: u64 = registry_entries(&w).iter().map(|(_, _, o)| o).sum();
    assert!(
        done < fs::metadata(&path).expect("app.log").len(),
        "acknowledged with two of three brokers down"
    );
    kafka.restart(2);
    kafka.restart(3);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    let recs = consume_from(&kafka.bootstrap(), "quorum", 2_500, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "q", 2_500);
}

#[test]
fn the_only_broker_killed_for_a_while_then_back_loses_nothing_and_memory_stays_bounded() {
    let mut broker = Broker::start_own();
    broker.create_topic("away", 2);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "w", 0..100);
    let cfg = w.config(&broker, &beginning_entry(&w.p("app.log"), "away"), "");
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    broker.kill9();
    // 60,000 lines (≈ 3.5 MB) arrive while no broker is there.
    append_lines(&path, "w", 100..60_100);
    std::thread::sleep(Duration::from_secs(20));
    let rss = peak_rss_kib(agent.pid());
    broker.restart();
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    assert!(
        rss > 0 && rss < 64 * 1024,
        "peak RSS {rss} KiB while the broker was away"
    );
    let recs = consume_all(&broker, "away", 60_100, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "w", 60_100);
}
