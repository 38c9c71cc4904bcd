//! The benchmark driver behind `scripts/bench.sh`: runs each case against one broker,
//! counts and checksums what arrived, and reports wall time, lines/s, CPU and peak RSS.
//!
//! Cases (each repeated, medians reported):
//! - `bare-defaults`, `bare-agent-settings` (`baseline` runs both): the yardsticks, a bare
//!   rdkafka `BaseProducer` in a child process, measured over the sending alone (see
//!   [`bare`]): librdkafka's defaults with the payload only, and the agent's own
//!   producer settings (`logagent::ship::client_config`) with its headers
//!   (`logagent::ship::record_headers`);
//! - `prewritten`: 1 file written before the agent starts, `from: beginning`;
//! - `live`: the agent runs, 8 writers append as fast as they can;
//! - `latency`: one writer appends at a steady rate, each line stamped with its write
//!   time; the consumer computes append→consume latency;
//! - `idle`: many files, nothing written: agent CPU and RSS;
//! - `config`: etcd put → first line of a newly configured file consumed;
//! - `many` (not in the default list): 10,000 files (`--many-files`) under one glob:
//!   time until all are shipped, idle CPU and RSS per file, then a line per file per
//!   second (latency, CPU).
//!
//! Children are measured with `wait4` (user+sys CPU, max RSS) after a clean SIGTERM
//! stop, so what is reported is the agent process alone.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Offset;
use serde_json::json;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// Line `seq`, ~120 bytes, deterministic; `stamp` (unix µs) for the latency case.
fn gen_line(seq: u64, stamp: Option<u128>) -> String {
    let mut l = format!(
        "10.{}.{}.{} - - [22/Nov/2026:10:{:02}:{:02} +0000] \"GET /api/v1/items/{} HTTP/1.1\" 200 {} seq={seq:010}",
        seq % 250,
        (seq / 250) % 250,
        seq % 7,
        (seq / 60) % 60,
        seq % 60,
        seq % 100_000,
        512 + seq % 4096
    );
    if let Some(t) = stamp {
        l.push_str(&format!(" t={t}"));
    }
    while l.len() < 120 {
        l.push('.');
    }
    l
}

fn seq_of(payload: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(payload).ok()?;
    let i = s.find("seq=")?;
    s.get(i + 4..i + 14)?.parse().ok()
}

fn stamp_of(payload: &[u8]) -> Option<u128> {
    let s = std::str::from_utf8(payload).ok()?;
    let i = s.find(" t=")?;
    s[i + 3..].split('.').next()?.trim().parse().ok()
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// What a consumer saw of one topic.
#[derive(Debug, Default)]
struct Seen {
    records: u64,
    lost: u64,
    duplicated: u64,
    checksum_ok: bool,
    /// When the last expected record arrived.
    done_at: Option<Instant>,
    first_at: Option<Instant>,
    latencies_us: Vec<u64>,
    /// (sequence number, arrival) of first arrivals.
    arrivals: Vec<(u64, Instant)>,
}

/// Consumes `topic` from the beginning until `expect` distinct sequence numbers arrived
/// (or `timeout`), then 1 s more to catch duplicates.
fn consume(
    brokers: &str,
    topic: &str,
    expect: u64,
    timeout: Duration,
    stamped: bool,
    start: Arc<AtomicBool>,
    check: Option<Check>,
) -> Seen {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "1")
        .create()
        .expect("consumer");
    logagent::consume::assign_partitions(&c, topic, None, Offset::Beginning)
        .expect("assign partitions");
    start.store(true, Ordering::SeqCst);
    let mut counts = vec![0u8; expect as usize];
    let mut distinct = 0u64;
    let mut sum: u64 = 0;
    let mut checks_ok = true;
    let mut seen = Seen::default();
    let deadline = Instant::now() + timeout;
    let mut settle: Option<Instant> = None;
    while Instant::now() < deadline && settle.is_none_or(|s| s.elapsed() < Duration::from_secs(1)) {
        let Some(Ok(m)) = c.poll(Duration::from_millis(50)) else {
            continue;
        };
        let now = Instant::now();
        seen.first_at.get_or_insert(now);
        seen.records += 1;
        let p = m.payload().unwrap_or_default();
        if stamped {
            if let Some(t) = stamp_of(p) {
                seen.latencies_us.push(now_us().saturating_sub(t) as u64);
            }
        }
        match seq_of(p) {
            Some(s) if (s as usize) < counts.len() => {
                let c = &mut counts[s as usize];
                if *c == 0 {
                    distinct += 1;
                    if expect <= 1000 {
                        seen.arrivals.push((s, now));
                    }
                    sum = sum.wrapping_add(fnv(p));
                    if let Some(check) = check {
                        checks_ok &= check(s, p);
                    }
                } else {
                    seen.duplicated += 1;
                }
                *c = c.saturating_add(1);
                if distinct == expect && seen.done_at.is_none() {
                    seen.done_at = Some(now);
                    settle = Some(now);
                }
            }
            _ => seen.duplicated += 1, // not ours: counts as wrong
        }
    }
    seen.lost = expect - distinct;
    if check.is_some() {
        // Shaped records (JSON, decoded, joined): each was checked against what it
        // must be made of.
        seen.checksum_ok = distinct == expect && checks_ok;
    } else if !stamped {
        let want = (0..expect).fold(0u64, |a, s| {
            a.wrapping_add(fnv(gen_line(s, None).as_bytes()))
        });
        seen.checksum_ok = distinct == expect && sum == want;
    } else {
        seen.checksum_ok = distinct == expect;
    }
    seen
}

/// User+sys CPU seconds of a child that has exited. (Its `ru_maxrss` is not used: it
/// carries the parent's RSS from before `exec`; peak RSS is read from VmHWM instead.)
fn wait_measured(child: &mut Child) -> (f64, u64) {
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child pid with valid pointers.
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    (cpu, ru.ru_maxrss as u64)
}

fn cpu_of(pid: u32) -> f64 {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / ticks
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: &str, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmRSS:")
}

struct Env {
    brokers: String,
    agent: PathBuf,
    work: PathBuf,
    lines: u64,
    topic_seq: AtomicU64,
    /// etcd endpoint for the config-change case.
    etcd: Option<String>,
    /// Extra `kafka:` lines for the agent (`--kafka-extra "  linger_ms: 5\n"`), for A/B runs.
    kafka_extra: String,
    /// Where the peer agents are (None: not installed, the table says so).
    peers: Peers,
    /// The delivery mode being measured (`--deliveries`): its label and its extra
    /// `kafka:` lines; `None`: the defaults, no label.
    mode: std::cell::RefCell<Option<(String, String)>>,
}

/// The peer agents (f): Debian's rsyslog (unpacked privately) and syslog-ng, both run
/// against the current librdkafka that rdkafka-sys built (the same client library as the
/// agent, so the comparison is of the agents, not of two librdkafka versions).
#[derive(Debug, Default)]
struct Peers {
    /// Directory holding `librdkafka.so.1`.
    rdkafka_lib: Option<PathBuf>,
    /// Root of the unpacked rsyslog packages (`usr/sbin/rsyslogd`).
    rsyslog_root: Option<PathBuf>,
    /// The `syslog-ng` binary.
    syslog_ng: Option<PathBuf>,
}

impl Env {
    fn topic(&self, case: &str, partitions: u32) -> String {
        let t = format!(
            "bench-{}-{case}-{}",
            std::process::id(),
            self.topic_seq.fetch_add(1, Ordering::Relaxed)
        );
        // Created with the admin API: a Kafka tool JVM per topic would cost seconds.
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("kafka admin client");
        let new = NewTopic::new(&t, partitions as i32, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let res = futures_executor::block_on(admin.create_topics([&new], &opts))
            .unwrap_or_else(|e| panic!("create topic {t}: {e}"));
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
        t
    }

    fn dir(&self, name: &str) -> PathBuf {
        let d = self.work.join(name);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    /// agent.yaml with the defaults (only brokers, data_dir and the list set).
    fn agent_config(&self, dir: &Path, collect: &str, extra: &str) -> PathBuf {
        let p = dir.join("agent.yaml");
        fs::write(
            &p,
            format!(
                "kafka:\n  brokers: [\"{}\"]\n{}{}agent:\n  data_dir: {}\n  hostname: bench\n{extra}collect:\n{collect}",
                self.brokers,
                self.kafka_extra,
                self.mode.borrow().as_ref().map_or("", |m| m.1.as_str()),
                dir.join("data").display()
            ),
        )
        .expect("write config");
        p
    }

    /// `label`, with `@mode` when a delivery mode is being measured.
    fn labelled(&self, label: &str) -> String {
        match self.mode.borrow().as_ref() {
            Some((m, _)) => format!("{label}@{m}"),
            None => label.to_owned(),
        }
    }

    fn spawn_agent(&self, cfg: &Path, dir: &Path) -> Child {
        self.spawn_agent_bin(&self.agent, cfg, dir)
    }

    fn spawn_agent_bin(&self, bin: &Path, cfg: &Path, dir: &Path) -> Child {
        Command::new(bin)
            .args(["run", "-c"])
            .arg(cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("agent.log")).expect("log"))
            .spawn()
            .expect("spawn agent")
    }
}

/// Stops the agent cleanly; returns its CPU seconds and peak RSS (KiB) while running.
fn stop(child: &mut Child) -> (f64, u64) {
    let hwm = status_kib(&child.id().to_string(), "VmHWM:");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    (wait_measured(child).0, hwm)
}

fn write_lines(path: &Path, range: std::ops::Range<u64>) {
    let mut f = std::io::BufWriter::with_capacity(
        256 * 1024,
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open"),
    );
    for s in range {
        f.write_all(gen_line(s, None).as_bytes()).expect("write");
        f.write_all(b"\n").expect("write");
    }
    f.flush().expect("flush");
}

type Row = BTreeMap<&'static str, serde_json::Value>;

/// One `collect:` entry read from the beginning.
fn entry_yaml(file: &Path, topic: &str) -> String {
    format!(
        "  - path: {}\n    topic: {topic}\n    from: beginning\n",
        file.display()
    )
}

fn row(case: &str, wall: f64, lines: u64, cpu: f64, rss_kib: u64, seen: &Seen) -> Row {
    let mut r = Row::new();
    r.insert("case", json!(case));
    r.insert("wall_s", json!(wall));
    r.insert("lines_per_s", json!(lines as f64 / wall));
    r.insert("cpu_s", json!(cpu));
    r.insert("cpu_s_per_million", json!(cpu / (lines as f64 / 1e6)));
    r.insert("peak_rss_mb", json!(rss_kib as f64 / 1024.0));
    r.insert("lost", json!(seen.lost));
    r.insert("duplicated", json!(seen.duplicated));
    r.insert(
        "ok",
        json!(seen.lost == 0 && seen.duplicated == 0 && seen.checksum_ok),
    );
    r
}

fn consumer_thread(
    env: &Env,
    topic: &str,
    expect: u64,
    stamped: bool,
) -> (std::thread::JoinHandle<Seen>, Arc<AtomicBool>) {
    consumer_thread_checked(env, topic, expect, stamped, None)
}

/// [`consumer_thread`], each first arrival checked by `check` (sequence, payload).
fn consumer_thread_checked(
    env: &Env,
    topic: &str,
    expect: u64,
    stamped: bool,
    check: Option<Check>,
) -> (std::thread::JoinHandle<Seen>, Arc<AtomicBool>) {
    let (b, t) = (env.brokers.clone(), topic.to_owned());
    let ready = Arc::new(AtomicBool::new(false));
    let r2 = ready.clone();
    let h = std::thread::spawn(move || {
        consume(&b, &t, expect, Duration::from_secs(300), stamped, r2, check)
    });
    while !ready.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    (h, ready)
}

/// The two yardsticks: a bare rdkafka `BaseProducer` sending the same lines, with nothing
/// of ours around it. `Defaults`: librdkafka's defaults (only `bootstrap.servers`), the
/// payload alone. `AgentSettings`: exactly the agent's producer settings
/// (`logagent::ship::client_config`, `--kafka-extra` included) and the agent's
/// `host`/`path`/`offset` headers (`logagent::ship::record_headers`) on each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bare {
    Defaults,
    AgentSettings,
}

impl Bare {
    fn arg(self) -> &'static str {
        match self {
            Bare::Defaults => "defaults",
            Bare::AgentSettings => "agent-settings",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Bare::Defaults => "a1_bare_defaults",
            Bare::AgentSettings => "a2_bare_agent_settings",
        }
    }
}

/// a) a yardstick, run as a child process (this binary, `--child-bare MODE`). The child
/// reports what it measured of the sending alone: wall time from the first send to the
/// last acknowledgement (flush), and its own user+sys CPU (`getrusage`, all threads,
/// librdkafka's included) over that window, less the CPU its line generator took (a
/// generator-only pass over the same lines, measured before, reported beside). The
/// whole-process CPU (`wait4`: producer creation and teardown included) is kept as
/// `cpu_process_s`.
fn bare(env: &Env, mode: Bare) -> Row {
    bare_with(env, mode, mode.label(), &[])
}

/// [`bare`] with extra child arguments (`--no-headers`, `--set k=v`) under `label`: the
/// cases that take the difference between the two yardsticks apart.
fn bare_with(env: &Env, mode: Bare, label: &str, extra: &[&str]) -> Row {
    let topic = env.topic(mode.arg(), 3);
    let (h, _) = consumer_thread(env, &topic, env.lines, false);
    let report_file = env.work.join(format!("bare-{}.report", mode.arg()));
    let _ = fs::remove_file(&report_file);
    // The agent's `path` header in case b) is this file's path: same header bytes.
    let path = env.work.join("prewritten").join("access.log");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--child-bare", mode.arg(), "--brokers", &env.brokers])
        .args(["--topic", &topic, "--lines", &env.lines.to_string()])
        .arg("--report")
        .arg(&report_file)
        .arg("--path")
        .arg(&path)
        .args(["--kafka-extra", &env.kafka_extra])
        .args(extra)
        .spawn()
        .expect("yardstick child");
    let (cpu_process, _) = wait_measured(&mut child);
    let report = fs::read_to_string(&report_file).unwrap_or_default();
    let v: Vec<f64> = report
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(f64::NAN);
    let (wall, hwm_kib, cpu_send, cpu_gen) = (get(0), get(1), get(2), get(3));
    let seen = h.join().expect("consumer");
    let mut r = row(label, wall, env.lines, cpu_send, hwm_kib as u64, &seen);
    r.insert("cpu_process_s", json!(cpu_process));
    r.insert("cpu_generator_s", json!(cpu_gen));
    r
}

/// User+sys CPU seconds of this process so far (all threads).
fn self_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6
}

/// Appends the decimal digits of `v`, at least `width` of them (zero-padded).
fn push_u64(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i.min(buf.len() - width)..]);
}

/// Line `seq` into `out` (cleared first), byte for byte `gen_line(seq, None)`, without
/// `format!` or allocation (about 80 ns on the benchmark VM; measured and subtracted by
/// the yardsticks), so that a yardstick can make each line just before sending it
/// instead of holding all of them.
fn write_line(seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"10.");
    push_u64(out, seq % 250, 1);
    out.push(b'.');
    push_u64(out, (seq / 250) % 250, 1);
    out.push(b'.');
    push_u64(out, seq % 7, 1);
    out.extend_from_slice(b" - - [22/Nov/2026:10:");
    push_u64(out, (seq / 60) % 60, 2);
    out.push(b':');
    push_u64(out, seq % 60, 2);
    out.extend_from_slice(b" +0000] \"GET /api/v1/items/");
    push_u64(out, seq % 100_000, 1);
    out.extend_from_slice(b" HTTP/1.1\" 200 ");
    push_u64(out, 512 + seq % 4096, 1);
    out.extend_from_slice(b" seq=");
    push_u64(out, seq, 10);
    if out.len() < 120 {
        out.resize(120, b'.');
    }
}

fn child_bare(mode: &str) {
    let mode = match mode {
        "defaults" => Bare::Defaults,
        "agent-settings" => Bare::AgentSettings,
        other => panic!("--child-bare {other}: defaults or agent-settings"),
    };
    let brokers = arg("--brokers", "");
    let topic = arg("--topic", "");
    let n: u64 = arg("--lines", "1000000").parse().unwrap_or(1_000_000);
    let path = arg("--path", "/bench/access.log");
    let report = PathBuf::from(arg("--report", "/tmp/bare.report"));
    let extra = arg("--kafka-extra", "");
    let mut line = Vec::with_capacity(256);
    // The generator makes exactly the lines the consumer checks for.
    for s in (0..2000).chain((0..2000).map(|i| i * 7919 + 123_456_789)) {
        write_line(s, &mut line);
        assert_eq!(line, gen_line(s, None).as_bytes(), "write_line({s})");
    }
    // What making the lines costs alone (subtracted from the sending window below).
    let g0 = self_cpu();
    let mut sum = 0u64;
    let mut offset = 0u64;
    for s in 0..n {
        write_line(s, &mut line);
        offset += line.len() as u64 + 1;
        sum = sum.wrapping_add(std::hint::black_box(&line)[line.len() - 1] as u64);
    }
    std::hint::black_box((sum, offset));
    let cpu_gen = self_cpu() - g0;
    let cfg = match mode {
        Bare::Defaults => {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", &brokers);
            c
        }
        Bare::AgentSettings => {
            let cfg = logagent::config::Config::parse(
                &format!("kafka:\n  brokers: [\"{brokers}\"]\n{extra}"),
                Path::new("bench"),
            )
            .expect("config");
            logagent::ship::client_config(&cfg).expect("client config")
        }
    };
    // For taking the difference between the yardsticks apart by hand (not used by the
    // cases): `--set key=value,…` overrides librdkafka settings, `--no-headers` drops
    // the headers of `agent-settings`.
    let mut cfg = cfg;
    for kv in arg("--set", "").split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').expect("--set key=value,…");
        cfg.set(k, v);
    }
    let headers = mode == Bare::AgentSettings && !std::env::args().any(|a| a == "--no-headers");
    let p: BaseProducer = cfg.create().expect("producer");
    let c0 = self_cpu();
    let t0 = Instant::now();
    let mut offset = 0u64;
    for s in 0..n {
        write_line(s, &mut line);
        let mut rec = BaseRecord::<(), [u8], ()>::to(&topic).payload(&line[..]);
        if headers {
            // The very record the agent sends: payload plus host/path/offset headers.
            rec = rec.headers(logagent::ship::record_headers("bench", &path, offset));
        }
        offset += line.len() as u64 + 1;
        let mut full = 0u32;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    // Queue full: serve a report if one is ready, else sleep 100 µs. Not
                    // `poll(1 ms)`: rdkafka 0.38's `poll` serves events until the deadline,
                    // passing the remaining time to librdkafka in whole milliseconds, so
                    // its last (here: only) sub-millisecond is a busy loop.
                    rec = r;
                    p.poll(Duration::ZERO);
                    if full > 0 {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    full += 1;
                }
            }
        }
        // Delivery reports are served now and then, not after every record.
        if s % 64 == 63 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    let wall = t0.elapsed().as_secs_f64();
    let cpu_send = (self_cpu() - c0 - cpu_gen).max(0.0);
    let hwm = status_kib("self", "VmHWM:");
    fs::write(&report, format!("{wall} {hwm} {cpu_send} {cpu_gen}")).expect("report");
}

/// b) one pre-written file, agent from the beginning.
///
/// `ab`: another agent binary and its name (`--agents`), labelled `b_prewritten@NAME`.
fn prewritten(env: &Env, ab: Option<&(String, PathBuf)>) -> Row {
    let topic = env.topic("prewritten", 3);
    let dir = env.dir("prewritten");
    let file = dir.join("access.log");
    write_lines(&file, 0..env.lines);
    let cfg = env.agent_config(&dir, &entry_yaml(&file, &topic), "");
    let (h, _) = consumer_thread(env, &topic, env.lines, false);
    let t0 = Instant::now();
    let bin = ab.map_or(&env.agent, |(_, p)| p);
    let mut agent = env.spawn_agent_bin(bin, &cfg, &dir);
    let seen = h.join().expect("consumer");
    let wall = seen
        .done_at
        .map_or(f64::NAN, |d| d.duration_since(t0).as_secs_f64());
    let (cpu, rss) = stop(&mut agent);
    let label = ab.map_or(env.labelled("b_prewritten"), |(n, _)| {
        format!("b_prewritten@{n}")
    });
    row(&label, wall, env.lines, cpu, rss, &seen)
}

/// Continuation lines of a benchmark stack trace (after its first line, `gen_line`).
const TRACE: [&str; 5] = [
    "java.lang.IllegalStateException: order is closed",
    "\tat com.shop.Orders.close(Orders.java:212)",
    "\tat com.shop.Api.handle(Api.java:88)",
    "Caused by: java.sql.SQLException: lock wait timeout",
    "\t... 42 more",
];

/// Whether a record (sequence number, payload) is what it must be.
type Check = fn(u64, &[u8]) -> bool;

/// A GBK line's text: `gen_line` and some Chinese.
fn gbk_text(seq: u64) -> String {
    format!("{} 订单处理完成，耗时正常", gen_line(seq, None))
}

/// h) content options on a pre-written file, from the beginning: `json` (the envelope
/// with two fields), `gbk` (decoding; lines with Chinese text), `multiline` (Java stack
/// traces of 6 lines joined into one record). Lines/s and CPU per M count the file's
/// physical lines; every record is checked against what it must be.
fn content(env: &Env, kind: &str) -> Row {
    let topic = env.topic(kind, 3);
    let dir = env.dir(kind);
    let file = dir.join("app.log");
    let mut f =
        std::io::BufWriter::with_capacity(256 * 1024, fs::File::create(&file).expect("create"));
    let (records, lines, options, check): (u64, u64, &str, Check) = match kind {
        "json" => {
            for s in 0..env.lines {
                writeln!(f, "{}", gen_line(s, None)).expect("write");
            }
            let check: Check = |s, p| {
                serde_json::from_slice::<serde_json::Value>(p).is_ok_and(|v| {
                    v["message"] == gen_line(s, None).as_str() && v["fields"]["env"] == "bench"
                })
            };
            (
                env.lines,
                env.lines,
                "    format: json\n    fields: {env: bench, service: shop}\n",
                check,
            )
        }
        "gbk" => {
            for s in 0..env.lines {
                let text = gbk_text(s);
                let (b, _, _) = encoding_rs::GBK.encode(&text);
                f.write_all(&b).expect("write");
                f.write_all(b"\n").expect("write");
            }
            let check: Check = |s, p| p == gbk_text(s).as_bytes();
            (env.lines, env.lines, "    encoding: gbk\n", check)
        }
        _ => {
            let events = env.lines / 6;
            for s in 0..events {
                writeln!(f, "{}", gen_line(s, None)).expect("write");
                for l in TRACE {
                    writeln!(f, "{l}").expect("write");
                }
            }
            let check: Check = |s, p| {
                let mut want = gen_line(s, None);
                for l in TRACE {
                    want.push('\n');
                    want.push_str(l);
                }
                p == want.as_bytes()
            };
            (
                events,
                events * 6,
                "    multiline: {start: '^10\\.', timeout_ms: 200}\n",
                check,
            )
        }
    };
    f.flush().expect("flush");
    drop(f);
    let cfg = env.agent_config(&dir, &format!("{}{options}", entry_yaml(&file, &topic)), "");
    let (h, _) = consumer_thread_checked(env, &topic, records, false, Some(check));
    let t0 = Instant::now();
    let mut agent = env.spawn_agent_bin(&env.agent, &cfg, &dir);
    let seen = h.join().expect("consumer");
    let wall = seen
        .done_at
        .map_or(f64::NAN, |d| d.duration_since(t0).as_secs_f64());
    let (cpu, rss) = stop(&mut agent);
    row(&format!("h_{kind}"), wall, lines, cpu, rss, &seen)
}

/// c) agent running, 8 writers append as fast as they can.
fn live(env: &Env, ab: Option<&(String, PathBuf)>) -> Row {
    let topic = env.topic("live", 3);
    let dir = env.dir("live");
    let files: Vec<PathBuf> = (0..8).map(|i| dir.join(format!("app{i}.log"))).collect();
    for f in &files {
        fs::write(f, b"").expect("create");
    }
    let collect: String = files.iter().map(|f| entry_yaml(f, &topic)).collect();
    let cfg = env.agent_config(&dir, &collect, "");
    let bin = ab.map_or(&env.agent, |(_, p)| p);
    let mut agent = env.spawn_agent_bin(bin, &cfg, &dir);
    // Followed once the registry names all 8 files.
    let reg = dir.join("data/registry.json");
    let t_wait = Instant::now();
    while t_wait.elapsed() < Duration::from_secs(30) {
        if fs::read_to_string(&reg).is_ok_and(|s| s.matches("\"path\"").count() >= 8) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (h, _) = consumer_thread(env, &topic, env.lines, false);
    let cpu0 = cpu_of(agent.id());
    let t0 = Instant::now();
    let per = env.lines / 8;
    let writers: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let f = f.clone();
            let n = env.lines;
            std::thread::spawn(move || {
                let end = if i == 7 { n } else { (i as u64 + 1) * per };
                write_lines(&f, i as u64 * per..end)
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let seen = h.join().expect("consumer");
    let wall = seen
        .done_at
        .map_or(f64::NAN, |d| d.duration_since(t0).as_secs_f64());
    let (cpu, rss) = stop(&mut agent);
    let label = ab.map_or("c_live".to_owned(), |(n, _)| format!("c_live@{n}"));
    row(&label, wall, env.lines, cpu - cpu0, rss, &seen)
}

/// d) steady appends, stamped; append→consume latency.
fn latency(env: &Env, rate: u64, secs: u64) -> Row {
    let topic = env.topic("latency", 3);
    let dir = env.dir("latency");
    let file = dir.join("app.log");
    fs::write(&file, b"").expect("create");
    let cfg = env.agent_config(&dir, &entry_yaml(&file, &topic), "");
    let mut agent = env.spawn_agent(&cfg, &dir);
    std::thread::sleep(Duration::from_millis(500));
    let total = rate * secs;
    let (h, _) = consumer_thread(env, &topic, total, true);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .expect("open");
    let t0 = Instant::now();
    let batch = (rate / 1000).max(1); // one write per millisecond
    let mut seq = 0;
    while seq < total {
        let due = t0 + Duration::from_micros(seq * 1_000_000 / rate);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let mut buf = String::new();
        for s in seq..(seq + batch).min(total) {
            buf.push_str(&gen_line(s, Some(now_us())));
            buf.push('\n');
        }
        f.write_all(buf.as_bytes()).expect("write");
        seq += batch;
    }
    let mut seen = h.join().expect("consumer");
    let (cpu, rss) = stop(&mut agent);
    let wall = t0.elapsed().as_secs_f64();
    seen.latencies_us.sort_unstable();
    let pct = |p: f64| latency_ms(&seen.latencies_us, p);
    let mut r = row(&env.labelled("d_latency"), wall, total, cpu, rss, &seen);
    r.insert("p50_ms", json!(pct(0.5)));
    r.insert("p99_ms", json!(pct(0.99)));
    r.insert("max_ms", json!(pct(1.0)));
    r
}

/// The `p` quantile (0..=1) of sorted latencies in µs, in ms; NaN when there are none.
fn latency_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        f64::NAN
    } else {
        sorted_us[((sorted_us.len() - 1) as f64 * p) as usize] as f64 / 1000.0
    }
}

/// e) many idle files.
fn idle(env: &Env, case: &str, files: usize, secs: u64) -> Row {
    let topic = env.topic("idle", 1);
    let dir = env.dir("idle");
    let mut collect = String::new();
    for i in 0..files {
        let f = dir.join(format!("idle{i}.log"));
        fs::write(&f, b"").expect("create");
        collect.push_str(&format!("  - path: {}\n    topic: {topic}\n", f.display()));
    }
    let cfg = env.agent_config(&dir, &collect, "");
    let mut agent = env.spawn_agent(&cfg, &dir);
    std::thread::sleep(Duration::from_secs(5)); // start-up is not idle time
    let cpu0 = cpu_of(agent.id());
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = cpu_of(agent.id()) - cpu0;
    let rss = rss_kib(agent.id());
    let threads = fs::read_dir(format!("/proc/{}/task", agent.id())).map_or(0, |d| d.count());
    let _ = stop(&mut agent);
    let mut r = Row::new();
    r.insert("case", json!(case));
    r.insert("files", json!(files));
    r.insert("threads", json!(threads));
    r.insert("idle_s", json!(secs));
    r.insert("cpu_s", json!(cpu));
    r.insert("cpu_s_per_s", json!(cpu / secs as f64));
    r.insert("rss_mb", json!(rss as f64 / 1024.0));
    r.insert("ok", json!(true));
    r
}

/// g) many files on one agent: `files` one-line files under one glob (`from:
/// beginning`). Three rows from one agent run: `g_many_follow` (spawn → every file's
/// line consumed; threads, descriptors, RSS then), `g_many_idle` (CPU per second and
/// RSS over `idle_secs` of quiet, and RSS per file above a one-file agent's),
/// `g_many_rate` (one line per file per second for `rate_secs`, spread evenly:
/// append → consumed p50/p99/max, CPU per second).
fn many(env: &Env, files: usize, idle_secs: u64, rate_secs: u64) -> Vec<Row> {
    // The base: the same agent following one file.
    let base_dir = env.dir("many-base");
    let base_topic = env.topic("many-base", 1);
    let one = base_dir.join("one.log");
    write_lines(&one, 0..1);
    let base_cfg = env.agent_config(&base_dir, &entry_yaml(&one, &base_topic), "");
    let mut base = env.spawn_agent(&base_cfg, &base_dir);
    std::thread::sleep(Duration::from_secs(5));
    let base_kib = rss_kib(base.id());
    let _ = stop(&mut base);

    let topic = env.topic("many", 1);
    let dir = env.dir("many");
    let logs = dir.join("logs");
    fs::create_dir_all(&logs).expect("logs dir");
    let name = |i: usize| logs.join(format!("f{i:05}.log"));
    for i in 0..files {
        write_lines(&name(i), i as u64..i as u64 + 1);
    }
    let collect = format!(
        "  - path: {}/*.log\n    topic: {topic}\n    from: beginning\n",
        logs.display()
    );
    let cfg = env.agent_config(&dir, &collect, "");
    let rounds = rate_secs as usize;
    let total = (files * (1 + rounds)) as u64;
    let (h, _) = consumer_thread(env, &topic, total, true);
    let (follow_h, _) = consumer_thread(env, &topic, files as u64, false);
    let t0 = Instant::now();
    let mut agent = env.spawn_agent(&cfg, &dir);
    let followed = follow_h.join().expect("consumer");
    let follow_s = followed
        .done_at
        .map_or(f64::NAN, |t| t.duration_since(t0).as_secs_f64());
    let pid = agent.id();
    let count = |sub: &str| fs::read_dir(format!("/proc/{pid}/{sub}")).map_or(0, |d| d.count());
    let (threads, fds, rss_follow) = (count("task"), count("fd"), rss_kib(pid));
    let mut r1 = Row::new();
    r1.insert("case", json!("g_many_follow"));
    r1.insert("files", json!(files));
    r1.insert("wall_s", json!(follow_s));
    r1.insert("threads", json!(threads));
    r1.insert("fds", json!(fds));
    r1.insert("rss_mb", json!(rss_follow as f64 / 1024.0));
    r1.insert("lost", json!(followed.lost));
    r1.insert("ok", json!(followed.lost == 0 && followed.duplicated == 0));

    std::thread::sleep(Duration::from_secs(5)); // start-up is not idle time
    let cpu0 = cpu_of(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle_cpu = (cpu_of(pid) - cpu0) / idle_secs as f64;
    let rss_idle = rss_kib(pid);
    let mut r2 = Row::new();
    r2.insert("case", json!("g_many_idle"));
    r2.insert("files", json!(files));
    r2.insert("idle_s", json!(idle_secs));
    r2.insert("cpu_s_per_s", json!(idle_cpu));
    r2.insert("rss_mb", json!(rss_idle as f64 / 1024.0));
    r2.insert("base_rss_mb", json!(base_kib as f64 / 1024.0));
    r2.insert(
        "rss_per_file_kb",
        json!(rss_idle.saturating_sub(base_kib) as f64 / files as f64),
    );
    r2.insert("ok", json!(true));

    // One line per file per second, spread over the second.
    let cpu0 = cpu_of(pid);
    let start = Instant::now();
    let step = Duration::from_secs(1).as_secs_f64() / files as f64;
    for round in 0..rounds {
        for i in 0..files {
            let at = Duration::from_secs_f64(round as f64 + i as f64 * step);
            if i % 100 == 0 {
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let seq = (files * (1 + round) + i) as u64;
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(name(i))
                .expect("open for append");
            let mut line = gen_line(seq, Some(now_us()));
            line.push('\n');
            f.write_all(line.as_bytes()).expect("append");
        }
    }
    let mut seen = h.join().expect("consumer");
    let wall = start.elapsed().as_secs_f64();
    let rate_cpu = (cpu_of(pid) - cpu0) / wall;
    let (_, hwm) = stop(&mut agent);
    seen.latencies_us.sort_unstable();
    let pct = |p: f64| latency_ms(&seen.latencies_us, p);
    let mut r3 = Row::new();
    r3.insert("case", json!("g_many_rate"));
    r3.insert("files", json!(files));
    r3.insert("wall_s", json!(wall));
    r3.insert("lines_per_s", json!((files * rounds) as f64 / wall));
    r3.insert("cpu_s_per_s", json!(rate_cpu));
    r3.insert("rss_mb", json!(hwm as f64 / 1024.0));
    r3.insert("p50_ms", json!(pct(0.5)));
    r3.insert("p99_ms", json!(pct(0.99)));
    r3.insert("max_ms", json!(pct(1.0)));
    r3.insert("lost", json!(seen.lost));
    r3.insert("duplicated", json!(seen.duplicated));
    r3.insert("ok", json!(seen.lost == 0 && seen.duplicated == 0));
    vec![r1, r2, r3]
}

/// f) etcd put → first line of the newly configured file consumed, `changes` times.
fn config_change(env: &Env, changes: u64) -> Row {
    let etcd = env
        .etcd
        .clone()
        .expect("--etcd endpoint (bench.sh starts one)");
    let topic = env.topic("config", 1);
    let dir = env.dir("config");
    let key = format!("/logagent/bench-{}/collect_config", std::process::id());
    let cfg = dir.join("agent.yaml");
    fs::write(
        &cfg,
        format!(
            "kafka:\n  brokers: [\"{}\"]\n{}agent:\n  data_dir: {}\n  hostname: bench\n  allowed_paths: [\"{}/**\"]\netcd:\n  endpoints: [\"{etcd}\"]\n  key: {key}\n",
            env.brokers,
            env.kafka_extra,
            dir.join("data").display(),
            dir.display()
        ),
    )
    .expect("config");
    let mut client = logagent::etcd::EtcdClient::new(logagent::etcd::EtcdSettings {
        endpoints: vec![etcd],
        timeout: Duration::from_secs(3),
        ..Default::default()
    })
    .expect("etcd client");
    client.put(&key, b"[]").expect("etcd put");
    let mut agent = env.spawn_agent(&cfg, &dir);
    std::thread::sleep(Duration::from_secs(2));
    let (h, _) = consumer_thread(env, &topic, changes, false);
    let mut entries = Vec::new();
    let mut put_at = Vec::new();
    for i in 0..changes {
        let f = dir.join(format!("new{i}.log"));
        write_lines(&f, i..i + 1);
        entries.push(format!(
            r#"{{"path":"{}","topic":"{topic}","from":"beginning"}}"#,
            f.display()
        ));
        put_at.push(Instant::now());
        client
            .put(&key, format!("[{}]", entries.join(",")).as_bytes())
            .expect("etcd put");
        // Spread the puts over the poll interval: no put lands on a poll by design.
        std::thread::sleep(Duration::from_millis(1300));
    }
    let seen = h.join().expect("consumer");
    let (cpu, rss) = stop(&mut agent);
    let mut lat: Vec<f64> = seen
        .arrivals
        .iter()
        .filter_map(|(seq, at)| {
            put_at
                .get(*seq as usize)
                .map(|p| at.duration_since(*p).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let mut r = row("g_config_change", f64::NAN, changes, cpu, rss, &seen);
    r.insert("p50_ms", json!(pct(0.5)));
    r.insert("p99_ms", json!(pct(0.99)));
    r.insert("max_ms", json!(pct(1.0)));
    r
}

/// f) a peer agent reads the same kind of pre-written file into the same broker (acks=all,
/// lz4, like the agent's defaults), counted and checksummed the same way.
fn peer(env: &Env, which: &str) -> Result<Row, String> {
    let lib = env
        .peers
        .rdkafka_lib
        .clone()
        .ok_or("no current librdkafka.so.1 (--rdkafka-lib)")?;
    let topic = env.topic(which, 3);
    let dir = env.dir(which);
    let file = dir.join("access.log");
    let conf = dir.join("peer.conf");
    let mut cmd = match which {
        "rsyslog" => {
            let root = env
                .peers
                .rsyslog_root
                .clone()
                .ok_or("rsyslog not installed (--rsyslog-root)")?;
            fs::create_dir_all(dir.join("work")).map_err(|e| e.to_string())?;
            fs::write(
                &conf,
                format!(
                    r#"global(workDirectory="{work}")
module(load="imfile")
module(load="omkafka")
template(name="raw" type="string" string="%rawmsg%")
ruleset(name="k") {{
  action(type="omkafka" broker=["{brokers}"] topic="{topic}" template="raw" partitions.auto="on"
         confParam=["compression.codec=lz4"] topicConfParam=["request.required.acks=-1"])
}}
input(type="imfile" file="{file}" tag="bench" ruleset="k")
"#,
                    work = dir.join("work").display(),
                    brokers = env.brokers,
                    file = file.display()
                ),
            )
            .map_err(|e| e.to_string())?;
            let mut c = Command::new(root.join("usr/sbin/rsyslogd"));
            c.args(["-n", "-f"])
                .arg(&conf)
                .arg("-i")
                .arg(dir.join("rsyslogd.pid"))
                .arg("-M")
                .arg(root.join("usr/lib/x86_64-linux-gnu/rsyslog"));
            c
        }
        _ => {
            let bin = env
                .peers
                .syslog_ng
                .clone()
                .ok_or("syslog-ng not installed (--syslog-ng)")?;
            fs::write(
                &conf,
                format!(
                    r#"@version: 3.38
options {{ stats-freq(0); }};
source s {{ file("{file}" flags(no-parse) follow-freq(0.1) log-iw-size(10000) log-fetch-limit(1000)); }};
destination d {{ kafka-c(bootstrap-servers("{brokers}") topic("{topic}") message("$MSG")
  config("compression.codec" => "lz4" "request.required.acks" => "-1")); }};
log {{ source(s); destination(d); flags(flow-control); }};
"#,
                    brokers = env.brokers,
                    file = file.display()
                ),
            )
            .map_err(|e| e.to_string())?;
            let mut c = Command::new(bin);
            c.args(["-F", "-e", "--no-caps", "-f"])
                .arg(&conf)
                .arg("-R")
                .arg(dir.join("persist"))
                .arg("-p")
                .arg(dir.join("pid"))
                .arg("-c")
                .arg(dir.join("ctl"));
            c
        }
    };
    write_lines(&file, 0..env.lines);
    let (h, _) = consumer_thread(env, &topic, env.lines, false);
    let t0 = Instant::now();
    let mut child = cmd
        .env("LD_LIBRARY_PATH", &lib)
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("peer.log")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start {which}: {e}"))?;
    // A peer that dies (bad config, library mismatch) ends the wait early.
    let mut died = false;
    while !h.is_finished() {
        let state = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        if state
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            died = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (cpu, rss) = stop(&mut child);
    if died {
        let log = fs::read_to_string(dir.join("peer.log")).unwrap_or_default();
        let last = log
            .lines()
            .find(|l| l.contains("rror"))
            .or_else(|| log.lines().last())
            .unwrap_or("")
            .to_owned();
        return Err(format!("{which} exited early: {last}"));
    }
    let seen = h.join().map_err(|_| "consumer panicked".to_owned())?;
    let wall = seen
        .done_at
        .map_or(f64::NAN, |d| d.duration_since(t0).as_secs_f64());
    Ok(row(&format!("f_{which}"), wall, env.lines, cpu, rss, &seen))
}

fn median(rows: &[Row], key: &str) -> f64 {
    let mut v: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.get(key).and_then(|x| x.as_f64()))
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() {
    let child = arg("--child-bare", "");
    if !child.is_empty() {
        child_bare(&child);
        return;
    }
    let env = Env {
        brokers: arg("--brokers", "127.0.0.1:9092"),
        agent: PathBuf::from(arg("--agent", "target/release/logagent")),
        work: PathBuf::from(arg("--work", "/tmp/logagent-bench")),
        lines: arg("--lines", "1000000").parse().expect("--lines"),
        topic_seq: AtomicU64::new(0),
        etcd: Some(arg("--etcd", "")).filter(|e| !e.is_empty()),
        kafka_extra: arg("--kafka-extra", "").replace("\\n", "\n"),
        mode: Default::default(),
        peers: Peers {
            rdkafka_lib: Some(PathBuf::from(arg("--rdkafka-lib", "")))
                .filter(|p| p.join("librdkafka.so.1").exists()),
            rsyslog_root: Some(PathBuf::from(arg("--rsyslog-root", "")))
                .filter(|p| p.join("usr/sbin/rsyslogd").exists()),
            syslog_ng: Some(PathBuf::from(arg("--syslog-ng", ""))).filter(|p| p.is_file()),
        },
    };
    let reps: usize = arg("--reps", "3").parse().expect("--reps");
    let cases = arg(
        "--cases",
        "bare-defaults,bare-agent-settings,prewritten,live,latency,idle,idle1,config,rsyslog,syslog_ng",
    );
    let lat_secs: u64 = arg("--latency-secs", "30").parse().expect("--latency-secs");
    let idle_secs: u64 = arg("--idle-secs", "60").parse().expect("--idle-secs");
    let many_files: usize = arg("--many-files", "10000").parse().expect("--many-files");
    let out = PathBuf::from(arg("--out", "bench/results.json"));
    // A/B: `--agents old=PATH,new=PATH` runs `prewritten` and `live` once per binary in
    // every repetition, side by side (labels `b_prewritten@old`, …), instead of `--agent`.
    let agents: Vec<(String, PathBuf)> = arg("--agents", "")
        .split(',')
        .filter(|a| !a.is_empty())
        .map(|a| {
            let (n, p) = a.split_once('=').expect("--agents NAME=PATH,…");
            (n.to_owned(), PathBuf::from(p))
        })
        .collect();
    // Delivery modes side by side: `--deliveries "alo=,eos1s=  delivery: exactly_once\n"`
    // runs `prewritten` and `latency` once per mode in every repetition (labels
    // `b_prewritten@alo`, ...), each with its extra `kafka:` lines.
    let deliveries: Vec<(String, String)> = arg("--deliveries", "")
        .split(',')
        .filter(|a| !a.is_empty())
        .map(|a| {
            let (n, x) = a.split_once('=').expect("--deliveries NAME=KAFKA_LINES,…");
            (n.to_owned(), x.replace("\\n", "\n"))
        })
        .collect();
    fs::create_dir_all(&env.work).expect("work dir");

    let mut all: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut not_run: BTreeMap<String, String> = BTreeMap::new();
    // Interleave cases per repetition so that machine noise hits all of them alike.
    for rep in 0..reps {
        // `baseline` (the old single yardstick's name) runs both yardsticks.
        let cases = cases.replace("baseline", "bare-defaults,bare-agent-settings");
        for case in cases.split(',') {
            // Most cases give one row; an A/B gives one per binary, `many` three.
            let rows: Vec<Row> = match case {
                "bare-defaults" => vec![bare(&env, Bare::Defaults)],
                "bare-agent-settings" => vec![bare(&env, Bare::AgentSettings)],
                "bare-agent-no-headers" => vec![bare_with(
                    &env,
                    Bare::AgentSettings,
                    "a3_agent_settings_no_headers",
                    &["--no-headers"],
                )],
                "bare-agent-no-idempotence" => vec![bare_with(
                    &env,
                    Bare::AgentSettings,
                    "a4_agent_settings_no_idempotence",
                    &["--set", "enable.idempotence=false"],
                )],
                "prewritten" | "latency" if !deliveries.is_empty() => deliveries
                    .iter()
                    .map(|d| {
                        *env.mode.borrow_mut() = Some(d.clone());
                        let r = if case == "latency" {
                            latency(&env, 20_000, lat_secs)
                        } else {
                            prewritten(&env, None)
                        };
                        *env.mode.borrow_mut() = None;
                        r
                    })
                    .collect(),
                "prewritten" | "live" if !agents.is_empty() => agents
                    .iter()
                    .map(|ab| {
                        if case == "live" {
                            live(&env, Some(ab))
                        } else {
                            prewritten(&env, Some(ab))
                        }
                    })
                    .collect(),
                "many" => many(&env, many_files, idle_secs.min(30), 20),
                "prewritten" => vec![prewritten(&env, None)],
                "json" | "gbk" | "multiline" => vec![content(&env, case)],
                "live" => vec![live(&env, None)],
                "latency" => vec![latency(&env, 20_000, lat_secs)],
                "idle" => vec![idle(&env, "e_idle", 500, idle_secs)],
                "idle1" => vec![idle(&env, "e_idle_1", 1, idle_secs.min(20))],
                "config" => vec![config_change(&env, 10)],
                "rsyslog" | "syslog_ng" => match peer(&env, case) {
                    Ok(r) => vec![r],
                    Err(why) => {
                        not_run.insert(case.to_owned(), why);
                        continue;
                    }
                },
                other => panic!("unknown case {other}"),
            };
            for r in rows {
                eprintln!(
                    "rep {}: {}",
                    rep + 1,
                    serde_json::to_string(&r).unwrap_or_default()
                );
                let label = r["case"].as_str().unwrap_or(case).to_owned();
                all.entry(label).or_default().push(r);
            }
        }
    }
    let mut summary = Vec::new();
    println!(
        "{:<22} {:>8} {:>11} {:>8} {:>11} {:>9} {:>8} {:>8} {:>8}  correct",
        "case", "wall s", "lines/s", "cpu s", "cpu s/M", "rss MB", "p50 ms", "p99 ms", "max ms",
    );
    for (case, rows) in &all {
        let ok = rows
            .iter()
            .all(|r| r.get("ok").and_then(|v| v.as_bool()).unwrap_or(false));
        let m = |k: &str| median(rows, k);
        let idle = case.starts_with("e_idle") || case.starts_with("g_many");
        let rss = if idle { m("rss_mb") } else { m("peak_rss_mb") };
        let cpu_per_m = if idle {
            m("cpu_s_per_s")
        } else {
            m("cpu_s_per_million")
        };
        println!(
            "{:<22} {:>8.2} {:>11.0} {:>8.2} {:>11.3} {:>9.1} {:>8.1} {:>8.1} {:>8.1}  {}",
            rows[0]["case"].as_str().unwrap_or(case),
            m("wall_s"),
            m("lines_per_s"),
            m("cpu_s"),
            cpu_per_m,
            rss,
            m("p50_ms"),
            m("p99_ms"),
            m("max_ms"),
            if ok {
                "ok"
            } else {
                "FAILED (lost/duplicated lines)"
            }
        );
        summary.push(json!({
            "case": case,
            "reps": rows.len(),
            "median": {
                "wall_s": m("wall_s"), "lines_per_s": m("lines_per_s"), "cpu_s": m("cpu_s"),
                "cpu_s_per_million": m("cpu_s_per_million"), "peak_rss_mb": m("peak_rss_mb"),
                "p50_ms": m("p50_ms"), "p99_ms": m("p99_ms"), "max_ms": m("max_ms"),
                "cpu_s_per_s": m("cpu_s_per_s"), "rss_mb": m("rss_mb"),
                "cpu_process_s": m("cpu_process_s"), "cpu_generator_s": m("cpu_generator_s"),
                "threads": m("threads"), "fds": m("fds"), "rss_per_file_kb": m("rss_per_file_kb"),
            },
            "ok": ok,
            "runs": rows,
        }));
    }
    // A peer that could not run is named with the reason, not left out.
    for (peer, why) in &not_run {
        println!("f_{peer:<12} not run: {why}");
        summary.push(json!({ "case": format!("f_{peer}"), "not_run": why }));
    }
    let against = against_yardsticks(&all);
    if let Some(dir) = out.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let doc = json!({
        "lines": env.lines,
        "reps": reps,
        "machine": machine(),
        "cases": summary,
        "against_yardsticks": against,
    });
    fs::write(&out, serde_json::to_vec_pretty(&doc).unwrap_or_default()).expect("write results");
    eprintln!("wrote {}", out.display());
}

/// The agent's cases against each yardstick, from the medians: lines/s and CPU per line
/// as ratios (agent ÷ yardstick), and the CPU per line above the yardstick in µs.
fn against_yardsticks(all: &BTreeMap<String, Vec<Row>>) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let yards = [Bare::Defaults.label(), Bare::AgentSettings.label()];
    if !yards.iter().any(|y| all.contains_key(*y)) {
        return out;
    }
    println!();
    println!(
        "{:<24} {:<22} {:>12} {:>12} {:>16}",
        "agent case", "against", "lines/s ×", "cpu/line ×", "cpu µs/line over"
    );
    let agent_cases = all
        .keys()
        .filter(|k| k.starts_with("b_prewritten") || k.starts_with("c_live"));
    for case in agent_cases {
        let rows = &all[case];
        for y in yards {
            let Some(yrows) = all.get(y) else { continue };
            let (lps, ylps) = (median(rows, "lines_per_s"), median(yrows, "lines_per_s"));
            let (cpm, ycpm) = (
                median(rows, "cpu_s_per_million"),
                median(yrows, "cpu_s_per_million"),
            );
            // CPU s per million lines is µs per line.
            println!(
                "{case:<24} {y:<22} {:>12.2} {:>12.2} {:>16.3}",
                lps / ylps,
                cpm / ycpm,
                cpm - ycpm
            );
            out.push(json!({
                "case": case, "yardstick": y,
                "lines_per_s_ratio": lps / ylps, "cpu_per_line_ratio": cpm / ycpm,
                "cpu_us_per_line_over": cpm - ycpm,
            }));
        }
    }
    out
}

fn machine() -> serde_json::Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default();
    json!({ "cpu": cpu, "cores": cores, "mem": mem })
}
