//! The metrics and health endpoint against clients that misbehave (issue 26, item 6):
//! anyone on the host can reach the port. A client that never finishes its request,
//! clients that never read a large `/metrics`, an endless request head and a burst of
//! connections must not stop `/health` (nor the agent); a `metrics_addr` that other
//! hosts can reach needs `metrics_allow_remote`. Each wait on the agent is bounded; the
//! bounds are safety nets far above the agent's own deadlines (5 s for a request head).

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::FromRawFd;
use std::process::Command;
use std::time::Duration;

use common::*;

/// How long a test client waits for the agent to answer or close before calling it a
/// hang: far longer than any of the server's deadlines.
const HANG: Duration = Duration::from_secs(60);

/// The agent, following `files` empty files under `logs/` whose names are `name_len`
/// characters long (each adds ~20 series of `/metrics`, labelled with its path and
/// `topic`), with metrics on the returned port; returns once `/health` answers 200 and
/// every file is followed.
fn serving(topic: &str, files: usize, name_len: usize) -> (Workdir, Agent, u16) {
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    let w = Workdir::new();
    fs::create_dir_all(w.path("logs")).expect("mkdir logs");
    for i in 0..files {
        let name = format!("{i:04}{}.log", "x".repeat(name_len.saturating_sub(8)));
        fs::write(w.path(&format!("logs/{name}")), b"").expect("create a log file");
    }
    let port = free_port();
    let cfg = w.config(
        &broker,
        &beginning_entry(&format!("\"{}/*.log\"", w.p("logs")), topic),
        &format!("  metrics_addr: 127.0.0.1:{port}\n"),
    );
    let agent = Agent::start(&w, &cfg);
    assert!(
        wait_until(SHIP_TIMEOUT, || get(port, "/health").0 == 200
            && metric(port, "logagent_tailers_running") == Some(files as u64)),
        "{}",
        agent.log()
    );
    (w, agent, port)
}

/// A loopback connection whose receive buffer is as small as the kernel allows, set
/// before the handshake: the agent can put little of its answer into it.
fn connect_small_window(port: u16) -> TcpStream {
    // SAFETY: a new socket of ours, handed to TcpStream at once (closed on drop).
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let size: libc::c_int = 1024;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid pointers and lengths of local values.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of_val(&size) as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of_val(&addr) as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    stream
}

/// A plain loopback connection with [`HANG`] as read and write timeout.
fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(HANG)).expect("read timeout");
    s.set_write_timeout(Some(HANG)).expect("write timeout");
    s
}

/// Reads until the agent closes: what it sent; Err only if it neither answered nor
/// closed within [`HANG`] (a reset after an answer counts as closed).
fn read_until_closed(s: &mut TcpStream) -> Result<Vec<u8>, std::io::Error> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(e)
            }
            Err(_) => return Ok(got),
        }
    }
}

/// The status line's code of an answer, or 0 when nothing was answered.
fn status(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Threads of process `pid` now.
fn threads(pid: u32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_client_that_never_finishes_its_request_neither_blocks_health_nor_stays() {
    let (_w, mut agent, port) = serving("hard_stall", 1, 10);
    let mut stalled = connect(port);
    stalled
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .expect("send half a request");
    for _ in 0..3 {
        assert_eq!(get(port, "/health"), (200, "ok\n".to_owned()));
    }
    // The agent gives up on it by itself: 408, then closed.
    let answer = read_until_closed(&mut stalled).expect("the agent never closed a stalled client");
    assert_eq!(status(&answer), 408, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(get(port, "/health").0, 200);
    assert!(agent.stop().success(), "{}", agent.log());
}

#[test]
fn clients_that_read_nothing_of_a_large_metrics_answer_leave_health_answering() {
    // 800 files named with 240 characters into a topic of 200: /metrics is over 6 MB,
    // more than the kernel buffers between the agent and a client with a small window
    // (net.ipv4.tcp_wmem allows at most 4 MiB by default).
    let topic = format!("hard_unread_{}", "t".repeat(188));
    let (_w, mut agent, port) = serving(&topic, 800, 240);
    let size = get(port, "/metrics").1.len();
    assert!(size > 6_000_000, "/metrics is only {size} bytes");
    // More such clients than the agent has workers: each sends its request and reads
    // nothing, but waits until the agent began to answer (peek takes nothing).
    let mut unread = Vec::new();
    let mut codes = Vec::new();
    for _ in 0..10 {
        let mut s = connect_small_window(port);
        s.set_read_timeout(Some(HANG)).expect("read timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send the request");
        let mut head = [0u8; 12];
        let mut seen = 0;
        for _ in 0..100 {
            seen = s.peek(&mut head).expect("the agent never began to answer");
            if seen == head.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        codes.push(status(&head[..seen]));
        unread.push(s);
    }
    // Some were served (and stall the agent's writes), the rest were told to come back.
    let served = codes.iter().filter(|&&c| c == 200).count();
    assert!(
        served >= 1 && codes.iter().all(|&c| c == 200 || c == 503),
        "{codes:?}"
    );
    assert!(
        served <= 4,
        "more than 4 unread /metrics answers at once: {codes:?}"
    );
    // Health meanwhile: workers that answered 503 may be a moment from idle, so a
    // 503 "busy" from the accept thread is retried (a bounded number of times).
    let mut health = (0, String::new());
    for _ in 0..50 {
        health = get(port, "/health");
        if health.0 == 200 {
            break;
        }
        assert_eq!(health.1, "busy\n", "{health:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(health, (200, "ok\n".to_owned()));
    // They go; /metrics is served whole again.
    drop(unread);
    assert!(
        wait_until(SHIP_TIMEOUT, || metric(port, "logagent_tailers_running")
            == Some(800)),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success(), "{}", agent.log());
}

#[test]
fn an_endless_request_head_is_cut_off_with_431_and_the_agent_serves_on() {
    let (_w, mut agent, port) = serving("hard_head", 1, 10);
    let mut s = connect(port);
    s.write_all(b"GET /health HTTP/1.1\r\n")
        .expect("send the request line");
    let line = format!("X-Pad: {}\r\n", "a".repeat(1000));
    // At most 64 MiB: the agent must close long before (8 KiB head limit, 64 KiB read
    // after its answer, and what the kernel buffers hold).
    let mut sent = 0usize;
    let ended = loop {
        if sent > 64 << 20 {
            break None;
        }
        match s.write(line.as_bytes()) {
            Ok(n) => sent += n,
            Err(e) => break Some(e),
        }
    };
    let e = ended.unwrap_or_else(|| panic!("the agent read {sent} bytes of one head"));
    assert!(
        !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "the agent stopped reading but kept the connection: {e}"
    );
    // The 431 may or may not have reached us before the reset; if anything came, it is.
    let answer = read_until_closed(&mut s).expect("closed");
    if !answer.is_empty() {
        assert_eq!(status(&answer), 431, "{}", String::from_utf8_lossy(&answer));
    }
    assert_eq!(get(port, "/health"), (200, "ok\n".to_owned()));
    assert!(agent.stop().success(), "{}", agent.log());
}

#[test]
fn a_burst_of_connections_costs_no_thread_and_the_agent_serves_after_it() {
    let (_w, mut agent, port) = serving("hard_burst", 1, 10);
    let before = threads(agent.pid());
    // 64 connections that send nothing: 8 workers wait for their heads, the rest are
    // answered 503 at once.
    let mut conns: Vec<TcpStream> = (0..64).map(|_| connect(port)).collect();
    let mut codes = Vec::new();
    // The last ones first: once they are answered, all 64 were accepted.
    for s in conns.iter_mut().rev().take(32) {
        codes.push(status(
            &read_until_closed(s).expect("a connection was kept open"),
        ));
    }
    let during = threads(agent.pid());
    assert!(
        during <= before + 2,
        "threads grew with the connections: {before} before, {during} with 64 open"
    );
    for s in conns.iter_mut().rev().skip(32) {
        codes.push(status(
            &read_until_closed(s).expect("a connection was kept open"),
        ));
    }
    // Each was answered 503 (busy) or 408 (no request in time); none was kept.
    assert!(codes.iter().all(|&c| c == 503 || c == 408), "{codes:?}");
    drop(conns);
    assert_eq!(get(port, "/health"), (200, "ok\n".to_owned()));
    assert_eq!(get(port, "/metrics").0, 200);
    // Other methods and unknown paths.
    let mut post = connect(port);
    post.write_all(b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .expect("send");
    assert_eq!(status(&read_until_closed(&mut post).expect("answer")), 405);
    assert_eq!(get(port, "/nope").0, 404);
    assert!(agent.stop().success(), "{}", agent.log());
}

#[test]
fn a_metrics_addr_other_hosts_reach_needs_metrics_allow_remote() {
    let broker = Broker::start();
    let w = Workdir::new();
    let check = |agent_extra: &str| {
        let cfg = w.config(&broker, "  []\n", agent_extra);
        Command::new(agent_bin())
            .args(["check-config", "-c"])
            .arg(&cfg)
            .output()
            .expect("run logagent check-config")
    };
    let out = check("  metrics_addr: 0.0.0.0:9108\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(
        err.contains("agent.metrics_addr") && err.contains("metrics_allow_remote"),
        "{err}"
    );
    let out = check("  metrics_addr: 0.0.0.0:9108\n  metrics_allow_remote: true\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("metrics_allow_remote: true"));
    assert!(check("  metrics_addr: 127.0.0.1:9108\n").status.success());
    // `run` refuses it too, before anything is bound.
    let cfg = w.config(&broker, "  []\n", "  metrics_addr: 0.0.0.0:9108\n");
    let mut agent = Agent::start(&w, &cfg);
    let st = agent
        .wait_exit(HANG)
        .unwrap_or_else(|| panic!("the agent ran: {}", agent.log()));
    assert!(!st.success());
    assert!(
        agent.own_log().contains("agent.metrics_addr"),
        "{}",
        agent.log()
    );
}
