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
    let leaked = leaked(&recs);
    let missing = missing(&recs, "app", next);
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
    assert_eq!(leaked(&recs), 0);
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

/// A hard link named like a copytruncate copy (`ln /elsewhere/secret app.log.1`, where
/// `fs.protected_hardlinks` is off or the owner of the directory also owns the target),
/// starting with the followed file's bytes: a truncation must not read it as the copy.
/// A regular file, really in the directory: only its second link tells it apart.
#[test]
fn a_hard_link_named_like_a_copy_is_never_read() {
    let (broker, w, app, cfg, mut agent) = follow_from_end("hostile-hardlink", "", "");
    append_lines(&app, "app", 0..10);
    wait_shipped(&w, &agent, &[app.as_path()]);
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = plant_secret(outside.path(), 0, &fs::read(&app).expect("read app.log"));
    fs::hard_link(&secret, w.path("app.log.1")).expect("plant the hard link");
    fs::write(&app, "").expect("truncate");
    append_lines(&app, "app", 10..20);
    wait_shipped(&w, &agent, &[app.as_path()]);
    // The restart looks for copies of a file truncated while stopped, too.
    assert!(agent.stop().success(), "{}", agent.log());
    let _ = fs::remove_file(w.path("app.log.1"));
    let secret = plant_secret(outside.path(), 1, &fs::read(&app).expect("read app.log"));
    fs::hard_link(&secret, w.path("app.log.1")).expect("plant the hard link");
    fs::write(&app, "").expect("truncate while stopped");
    agent = Agent::start(&w, &cfg);
    append_lines(&app, "app", 20..30);
    wait_shipped(&w, &agent, &[app.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    let recs = consume_all(&broker, "hostile-hardlink", 30, SHIP_TIMEOUT);
    let leaked = leaked(&recs);
    assert_eq!(
        leaked,
        0,
        "a hard link was read as a copy:\n{}",
        agent.log()
    );
    let missing = missing(&recs, "app", 30);
    assert!(missing.is_empty(), "app lines missing: {missing:?}");
}

/// The followed file's *directory* replaced by a symlink to a directory elsewhere
/// (whoever owns `logs/` can do that to `logs/inst`) while the agent is stopped: the
/// start's scan for rotations missed meanwhile must not read the rotation-named files
/// there. Their real directory is the one scanned, so only the allow-list (the followed
/// file's own real path) can tell.
#[test]
fn a_directory_swapped_for_a_symlink_is_not_scanned_for_rotations() {
    let broker = Broker::start();
    broker.create_topic("hostile-dirswap", 1);
    let w = Workdir::new();
    let inst = w.path("logs/inst");
    fs::create_dir_all(&inst).expect("mkdir");
    let app = inst.join("app.log");
    append_lines(&app, "old", 0..5);
    let cfg = w.config(
        &broker,
        &end_entry(&app.to_string_lossy(), "hostile-dirswap"),
        "",
    );
    let mut agent = Agent::start(&w, &cfg);
    assert!(
        agent.wait_log("following from its end", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&app, "app", 0..10);
    wait_shipped(&w, &agent, &[app.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    let outside = tempfile::tempdir().expect("tempdir");
    for name in ["app.log.1", "app.log-20261207"] {
        let mut body = String::new();
        for i in 0..20 {
            body.push_str(&format!("SECRET {name} {i}\n"));
        }
        fs::write(outside.path().join(name), body).expect("write the secret");
    }
    fs::rename(&inst, w.path("logs/inst-real")).expect("move the directory away");
    std::os::unix::fs::symlink(outside.path(), &inst).expect("plant the directory link");
    // Planted by the application's user (nobody here), who owns `logs/`: not a link the
    // agent trusts (it runs as root in this test, as the packaged unit may).
    std::os::unix::fs::lchown(&inst, Some(65534), Some(65534)).expect("chown the link");
    std::os::unix::fs::chown(w.path("logs"), Some(65534), Some(65534)).expect("chown logs/");
    agent = Agent::start(&w, &cfg);
    assert!(
        wait_until(SHIP_TIMEOUT, || agent
            .own_log()
            .contains("following 1 files")),
        "{}",
        agent.log()
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    fs::remove_file(&inst).expect("remove the directory link");
    fs::create_dir(&inst).expect("mkdir");
    append_lines(&app, "app", 10..20);
    wait_shipped(&w, &agent, &[app.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    let recs = consume_all(&broker, "hostile-dirswap", 20, SHIP_TIMEOUT);
    let leaked = leaked(&recs);
    assert_eq!(
        leaked,
        0,
        "rotation-named files of a directory outside were read:\n{}",
        agent.log()
    );
}
