//! `kafka.delivery: exactly_once` against a real broker: lines and their files' offsets
//! in one transaction. Every test counts what a read_committed consumer sees: each line
//! once, across SIGKILLs, rotations, a second agent with the same transactional id, and
//! an outage longer than the transaction timeout.

mod common;

use std::fs;
use std::time::Duration;

use common::scenario::{Report, Writer};
use common::*;

/// `kafka:` keys for exactly-once with a short commit interval.
fn eos(extra: &str) -> String {
    format!("  delivery: exactly_once\n  transactions:\n    commit_interval_ms: 200\n{extra}")
}

fn entry(w: &Workdir, file: &str, topic: &str) -> String {
    format!("  - path: {}\n    topic: {topic}\n    from: beginning\n", w.p(file))
}

#[test]
fn lines_and_offsets_are_committed_together_and_the_offsets_topic_is_compacted() {
    let broker = Broker::start_own();
    broker.create_topic("e1", 2);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, "a", 0..1000);
    let cfg = w.config_to(&broker.addr(), &eos(""), &entry(&w, "app.log", "e1"), "");
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);
    append_lines(&path, "a", 1000..2000);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    let log = agent.log();
    assert!(log.contains("exactly-once delivery: transactional.id logagent-testhost-"), "{log}");
    assert!(log.contains("created the offsets topic logagent-offsets"), "{log}");
    let recs = consume_all(&broker, "e1", 2000, Duration::from_secs(15));
    Report::check("exactly_once: plain", &recs, &[("a".into(), 2000)]).assert_ok(0, "none");
    // The offsets topic: compacted, and it holds this file's offset (its size).
    let offsets = consume_all(&broker, "logagent-offsets", 1, Duration::from_secs(5));
    let size = fs::metadata(&path).unwrap().len();
    let last = offsets.last().expect("an offset record");
    let v: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(v["entry"]["offset"].as_u64(), Some(size), "{v}");
    assert_eq!(
        broker.topic_config("logagent-offsets", "cleanup.policy").as_deref(),
        Some("compact")
    );
}
