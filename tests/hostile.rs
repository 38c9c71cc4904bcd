//! A hostile log directory: whoever owns the directory of a followed file (the
//! application's user, not root) plants symlinks, loops and FIFOs; the agent (which may
//! read everything: CAP_DAC_READ_SEARCH) must never ship a file from outside what it
//! was told to read, never hang, and never lose a line of the files it follows.
//! Real agent, real broker, real files; seeded action sequences (the seed is printed; `LOGAGENT_HOSTILE_SEED` replays one).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// A file outside the allow-list, starting with `head` (what an attacker who writes
/// the application's log knows: its first bytes) and then secret lines.
fn plant_secret(dir: &Path, n: usize, head: &[u8]) -> PathBuf {
    let p = dir.join(format!("secret-{n}"));
    let mut body = head.to_vec();
    for i in 0..20 {
        body.extend_from_slice(format!("SECRET {n} {i}\n").as_bytes());
    }
    fs::write(&p, body).expect("write the secret");
    p
}

fn head_of(p: &Path) -> Vec<u8> {
    let mut h = fs::read(p).unwrap_or_default();
    h.truncate(256);
    h
}

/// Symlinks named like rotations (`app.log.1 -> /elsewhere/secret`), with or without the
/// followed file's first bytes, planted before a truncation, a rename rotation, a
/// SIGKILL and restart, or a truncation while the agent is stopped: nothing of the
/// targets is shipped, and every line of `app.log` arrives.
#[test]
fn symlinks_named_like_rotations_are_never_read() {
    let seed = seed_from_env(
        "symlinks_named_like_rotations_are_never_read",
        "LOGAGENT_HOSTILE_SEED",
    );
    let mut rng = Rng(seed);
    let (broker, w, app, cfg, mut agent) = follow_from_end("hostile-rot", "", "");
    let outside = tempfile::tempdir().expect("tempdir");
    let names = ["app.log.1", "app.log-20261207", "app.log.0", "app.log.2"];
    let mut next = 0;
    let mut actions = Vec::new();
    for round in 0..6 {
        append_lines(&app, "app", next..next + 10);
        next += 10;
        wait_shipped(&w, &agent, &[app.as_path()]);
        let name = names[rng.below(names.len() as u64) as usize];
        let head = if rng.chance(1, 2) {
            head_of(&app)
        } else {
            Vec::new()
        };
        let secret = plant_secret(outside.path(), round, &head);
        let link = w.path(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&secret, &link).expect("plant the symlink");
        let action = rng.below(4);
        actions.push(format!(
            "{name}{} then {action}",
            if head.is_empty() { "" } else { " (same head)" }
        ));
        match action {
            // copytruncate whose "copy" is the planted link
            0 => fs::write(&app, "").expect("truncate"),
            // a real rename rotation beside the link
            1 => {
                fs::rename(&app, w.path("app.log.3")).expect("rotate");
                fs::write(&app, "").expect("create");
            }
            // a restart: the start looks for files owed and missed rotations
            2 => {
                agent.kill9();
                agent = Agent::start(&w, &cfg);
            }
            // truncated while the agent is down
            _ => {
                assert!(agent.stop().success(), "{}", agent.log());
                fs::write(&app, "").expect("truncate");
                agent = Agent::start(&w, &cfg);
            }
        }
        append_lines(&app, "app", next..next + 10);
        next += 10;
        wait_shipped(&w, &agent, &[app.as_path()]);
        fs::remove_file(&link).expect("remove the link");
    }
    assert!(agent.stop().success(), "{}", agent.log());
    let recs = consume_all(&broker, "hostile-rot", next, SHIP_TIMEOUT);
    let leaked = recs
        .iter()
        .filter(|r| r.payload.starts_with(b"SECRET"))
        .count();
    let t = tally(&recs);
    let missing: Vec<usize> = (0..next)
        .filter(|&i| !t.contains_key(line("app", i).as_bytes()))
        .collect();
    if leaked > 0 || !missing.is_empty() {
        dump_agent_log("hostile-rot", seed, &agent.log());
        panic!(
            "seed {seed:#x}: {leaked} lines of files outside the allow-list shipped, {} app lines missing {:?}; actions {actions:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

/// A static list's own path replaced by a symlink to a file elsewhere: refused with
/// one clear line naming where it leads; the file is read again once it is a file.
#[test]
fn a_listed_path_turned_into_a_symlink_is_refused() {
    let (broker, w, app, cfg, mut agent) = follow_from_end("hostile-swap", "", "");
    append_lines(&app, "app", 0..10);
    wait_shipped(&w, &agent, &[app.as_path()]);
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = plant_secret(outside.path(), 0, b"");
    fs::rename(&app, w.path("app.log.1")).expect("rotate");
    std::os::unix::fs::symlink(&secret, &app).expect("plant");
    assert!(
        agent.wait_log("app.log: resolves to", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    fs::remove_file(&app).expect("remove the link");
    append_lines(&app, "app", 10..20);
    wait_shipped(&w, &agent, &[app.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    let _ = cfg;
    let recs = consume_all(&broker, "hostile-swap", 20, SHIP_TIMEOUT);
    assert!(!recs.iter().any(|r| r.payload.starts_with(b"SECRET")));
    assert_exactly_once(&recs, "app", 20);
}

/// `**` over a directory with symlink loops (`ln -s . loop`, `ln -s .. up`) and a FIFO
/// that matches: the agent expands it (each real directory once), follows the real
/// files, never blocks on the FIFO, and keeps applying changes.
#[test]
fn a_glob_over_symlink_loops_and_a_fifo_neither_hangs_nor_explodes() {
    let broker = Broker::start();
    broker.create_topic("hostile-glob", 1);
    let w = Workdir::new();
    let logs = w.path("logs");
    fs::create_dir_all(logs.join("a/b")).expect("mkdir");
    for l in ["loop", "a/again", "a/b/up"] {
        let target = if l.ends_with("up") { ".." } else { "." };
        std::os::unix::fs::symlink(target, logs.join(l)).expect("loop");
    }
    let fifo = logs.join("a/pipe.log");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let (one, two) = (logs.join("a/one.log"), logs.join("a/b/two.log"));
    append_lines(&one, "one", 0..10);
    append_lines(&two, "two", 0..10);
    let cfg = w.config(
        &broker,
        &beginning_entry(&format!("{}/**/*.log", logs.display()), "hostile-glob"),
        "",
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[one.as_path(), two.as_path()]);
    // A file appearing later is found by the next expansion.
    let three = logs.join("a/b/three.log");
    append_lines(&three, "three", 0..10);
    wait_shipped(&w, &agent, &[three.as_path()]);
    assert!(agent.stop().success(), "stopped cleanly: {}", agent.log());
    let recs = consume_all(&broker, "hostile-glob", 30, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "one", 10);
    assert_exactly_once(&recs, "two", 10);
    assert_exactly_once(&recs, "three", 10);
}
