//! The data_dir on a bad day: a second agent started on it, a registry found corrupt
//! or deleted. Real agent, real broker (and etcd); the outcome is counted in Kafka.

mod common;

use std::fs;

use common::*;

/// A second agent on the same data_dir exits 1 at once, naming the first one's pid;
/// the first keeps shipping, each line once.
#[test]
fn a_second_agent_on_the_same_data_dir_exits_naming_the_holder() {
    let f = one_file("dd-second", 1, "a", 10, "");
    let mut first = Agent::start(&f.w, &f.cfg);
    wait_shipped(&f.w, &first, &[f.path.as_path()]);
    let mut second = Agent::start(&f.w, &f.cfg);
    let status = second
        .wait_exit(SHIP_TIMEOUT)
        .expect("the second agent exits by itself");
    assert_eq!(status.code(), Some(1), "{}", second.own_log());
    let why = format!("is in use by another logagent (pid {}", first.pid());
    assert!(second.own_log().contains(&why), "{}", second.own_log());
    append_lines(&f.path, "a", 10..20);
    wait_shipped(&f.w, &first, &[f.path.as_path()]);
    assert!(first.stop().success(), "{}", first.log());
    let recs = consume_all(&f.broker, "dd-second", 20, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "a", 20);
}

/// `registry.json` overwritten with garbage while the agent is down: the start says so
/// in one WARN, falls back to the previous registry, and nothing is lost (a line may
/// come twice: the previous registry is one checkpoint older).
#[test]
fn a_corrupt_registry_falls_back_to_the_previous_one_and_loses_nothing() {
    let f = one_file("dd-corrupt", 1, "a", 10, "");
    let mut agent = Agent::start(&f.w, &f.cfg);
    wait_shipped(&f.w, &agent, &[f.path.as_path()]);
    append_lines(&f.path, "a", 10..20);
    wait_shipped(&f.w, &agent, &[f.path.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    assert!(f.w.path("data/registry.json.prev").exists());
    fs::write(f.w.path("data/registry.json"), b"\0\0\0\0garbage").expect("corrupt it");
    append_lines(&f.path, "a", 20..30);
    let mut agent = Agent::start(&f.w, &f.cfg);
    wait_shipped(&f.w, &agent, &[f.path.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    let log = agent.own_log();
    let warns = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("using the previous registry"))
        .count();
    assert_eq!(warns, 1, "{log}");
    let recs = consume_all(&f.broker, "dd-corrupt", 30, SHIP_TIMEOUT);
    let missing = missing(&recs, "a", 30);
    assert!(missing.is_empty(), "missing {missing:?}\n{log}");
}

/// A registry of a newer format is refused with a clear error (exit 1), and left as
/// it was: an older agent must not drop what it does not know.
#[test]
fn a_registry_from_a_newer_version_is_a_clear_error() {
    let f = one_file("dd-newer", 1, "a", 1, "");
    fs::create_dir_all(f.w.path("data")).expect("mkdir");
    let newer = br#"{"version": 99, "files": []}"#;
    fs::write(f.w.path("data/registry.json"), newer).expect("write");
    let mut agent = Agent::start(&f.w, &f.cfg);
    let status = agent.wait_exit(SHIP_TIMEOUT).expect("exits by itself");
    assert_eq!(status.code(), Some(1), "{}", agent.own_log());
    assert!(
        agent
            .own_log()
            .contains("written by a newer logagent (format 99"),
        "{}",
        agent.own_log()
    );
    assert_eq!(
        fs::read(f.w.path("data/registry.json")).expect("read"),
        newer
    );
}

/// The data_dir's registry (and its previous copy) deleted while the agent is down,
/// with `from: end` (the default) and a central config: the cached config shows the
/// path was followed, so its file is read from the beginning, and the lines written
/// while the agent was down arrive (the older ones again, said in one WARN).
#[test]
fn a_deleted_registry_does_not_turn_followed_paths_into_new_ones() {
    let broker = Broker::start();
    broker.create_topic("dd-deleted", 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let a = w.path("a.log");
    append_lines(&a, "old", 0..5);
    let ip = "10.9.8.6";
    let cfg = central_config(&w, &broker, &etcd, ip, "");
    etcd.put(
        &format!("/logagent/{ip}/collect_config"),
        &format!(r#"[{{"path":"{}","topic":"dd-deleted"}}]"#, w.p("a.log")),
    );
    let mut agent = Agent::start(&w, &cfg);
    assert!(
        agent.wait_log("following from its end", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&a, "a", 0..10);
    wait_shipped(&w, &agent, &[a.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    for f in ["registry.json", "registry.json.prev"] {
        let _ = fs::remove_file(w.path(&format!("data/{f}")));
    }
    append_lines(&a, "a", 10..20);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    assert!(
        agent
            .own_log()
            .contains("reading their files from the beginning"),
        "{}",
        agent.own_log()
    );
    let recs = consume_all(&broker, "dd-deleted", 20, SHIP_TIMEOUT);
    let missing = missing(&recs, "a", 20);
    assert!(missing.is_empty(), "missing {missing:?}\n{}", agent.log());
}
