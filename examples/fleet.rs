//! The fleet benchmark behind `scripts/fleet-bench.sh`: N simulated agents, each one
//! thread running the agent's real config thread (`logagent::central::run`, which starts
//! its own watcher thread) against a 3-member etcd cluster that the script started on
//! loopback.
//!
//! The agents live in worker processes of at most `--agents-per-worker` (2,000) each: one
//! process cannot hold 10,000 (each agent needs 3 descriptors, and the hard limit of
//! open files here is 20,000). This process is the coordinator: it starts the workers
//! (this same binary with `--worker-first`/`--worker-count`), tells them when to start
//! their agents, measures etcd, and reads what each agent saw from the worker's stdout
//! (one line per first apply and per change marker, stamped with CLOCK_MONOTONIC, which
//! is one clock for every process of the machine). A worker that cannot start a thread
//! says so and the run ends with that error (exit 1), not an abort.
//!
//! Every agent has its own `agent.ip`, `agent.hostname` and `agent.data_dir` (the config
//! thread writes its cache file there on every apply), belongs to group `web` (every
//! `--java-every`th also to `java`), and every `--host-key-every`th has a host key of its
//! own. What the config thread drives is a stub ([`Stub`]): it counts applies, notes when
//! an apply first holds a change marker (`/var/log/bench/<seq>.log`), and reports one
//! constant [`FileStatus`] per entry, so an idle agent's status document does not change.
//!
//! Measured in one run (etcd numbers from each member's `/metrics`, CPU and RSS from
//! `/proc`):
//! 1. start-up: time until every agent applied its first config; etcd requests and writes
//!    until then and until the first status documents are written (settled);
//! 2. an idle fleet for `--idle-secs`: etcd requests/s (`grpc_server_handled_total`,
//!    summed over members, by method), new revisions/s (header revision of a range read),
//!    writes/s (`etcd_mvcc_put_total` + `etcd_mvcc_delete_total` of the member furthest
//!    ahead), raft proposals/s, etcd CPU and RSS, and this process's CPU and RSS (the N
//!    agents);
//! 3. `--changes` puts of the group key with a new marker: put → apply per agent
//!    (p50/p99/max, agents that never applied within `--change-timeout-secs`), and the
//!    etcd load of the `--change-window-secs` after each put (the status writes the change
//!    causes);
//! 4. per-agent costs, and what they come to for 10,000 hosts (a linear extrapolation).
//!
//! Timing: the put is timed from just before it is sent, the apply when the stub's `apply`
//! is entered, both with CLOCK_MONOTONIC (shared by all processes).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use logagent::central::{self, CentralContext, FileStatus, Followers};
use logagent::collect::CollectEntry;
use logagent::config::Config;
use logagent::etcd::{EtcdClient, EtcdSettings};
use logagent::metrics::Metrics;
use logagent::stop::stop_pair;
use serde::Serialize;
use serde_json::{json, Value};

const WEB_KEY: &str = "/logagent/groups/web/collect_config";
const JAVA_KEY: &str = "/logagent/groups/java/collect_config";
const MARKER_DIR: &str = "/var/log/bench/";
/// The config thread's default status interval (src/config.rs); `--status-interval-ms`
/// changes it.
const STATUS_INTERVAL_MS: u64 = 5000;
/// The idle period is also measured in sub-windows this long (the peak is reported).
const IDLE_STEP: Duration = Duration::from_secs(5);

const USAGE: &str = "usage: fleet --endpoints URL,URL,URL --data-root DIR [--etcd-pids P,P,P]
  [--agents 2000] [--idle-secs 60] [--changes 5] [--change-window-secs 10]
  [--change-timeout-secs 30] [--startup-timeout-secs 180] [--baseline-secs 5]
  [--stack-kib 256] [--java-every 10] [--host-key-every 10] [--poll-interval-ms 30000]
  [--status-interval-ms 5000] [--start-spread-ms 1000] [--status on|off]
  [--agents-per-worker 2000] [--out bench/fleet-results.json] [--etcd-version TEXT]
(scripts/fleet-bench.sh starts the etcd cluster and passes the first four;
--worker-first and --worker-count are set by the coordinator for its workers)";

type Res<T> = Result<T, String>;

struct Args {
    agents: usize,
    idle_secs: u64,
    changes: usize,
    change_window_secs: u64,
    change_timeout_secs: u64,
    startup_timeout_secs: u64,
    baseline_secs: u64,
    stack_kib: usize,
    java_every: usize,
    host_key_every: usize,
    /// `etcd.poll_interval_ms` of every agent; None: the agent's default.
    poll_interval_ms: Option<u64>,
    /// `etcd.status_interval_ms`, `etcd.start_spread_ms` and `etcd.status` of every agent
    /// (None: the agent's default).
    status_interval_ms: Option<u64>,
    start_spread_ms: Option<u64>,
    status: Option<bool>,
    agents_per_worker: usize,
    /// Set in a worker: the index of its first agent and how many it runs.
    worker: Option<(usize, usize)>,
    endpoints: Vec<String>,
    etcd_pids: Vec<u32>,
    data_root: PathBuf,
    out: PathBuf,
    etcd_version: String,
}

const OPTIONS: &[&str] = &[
    "--agents",
    "--idle-secs",
    "--changes",
    "--change-window-secs",
    "--change-timeout-secs",
    "--startup-timeout-secs",
    "--baseline-secs",
    "--stack-kib",
    "--java-every",
    "--host-key-every",
    "--poll-interval-ms",
    "--status-interval-ms",
    "--start-spread-ms",
    "--status",
    "--agents-per-worker",
    "--worker-first",
    "--worker-count",
    "--endpoints",
    "--etcd-pids",
    "--data-root",
    "--out",
    "--etcd-version",
];

fn parse_args() -> Res<Args> {
    let mut given: BTreeMap<String, String> = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if !OPTIONS.contains(&a.as_str()) {
            return Err(format!("unknown option {a}\n{USAGE}"));
        }
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        // The first of each wins (the script puts the user's options first).
        given.entry(a).or_insert(v);
    }
    fn num<T: FromStr>(g: &BTreeMap<String, String>, name: &str, default: T) -> Res<T>
    where
        T::Err: Display,
    {
        match g.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| format!("{name} {v}: {e} (a whole number is expected)")),
        }
    }
    let endpoints: Vec<String> = given
        .get("--endpoints")
        .ok_or_else(|| format!("--endpoints is required\n{USAGE}"))?
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Err("--endpoints: no endpoint given".into());
    }
    let etcd_pids = match given.get("--etcd-pids") {
        None => Vec::new(),
        Some(p) => p
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().map_err(|e| format!("--etcd-pids {p}: {e}")))
            .collect::<Res<Vec<u32>>>()?,
    };
    let args = Args {
        agents: num(&given, "--agents", 2000)?,
        idle_secs: num(&given, "--idle-secs", 60)?,
        changes: num(&given, "--changes", 5)?,
        change_window_secs: num(&given, "--change-window-secs", 10)?,
        change_timeout_secs: num(&given, "--change-timeout-secs", 30)?,
        startup_timeout_secs: num(&given, "--startup-timeout-secs", 180)?,
        baseline_secs: num(&given, "--baseline-secs", 5)?,
        stack_kib: num(&given, "--stack-kib", 256)?,
        java_every: num(&given, "--java-every", 10)?,
        host_key_every: num(&given, "--host-key-every", 10)?,
        poll_interval_ms: match given.get("--poll-interval-ms") {
            None => None,
            Some(_) => Some(num(&given, "--poll-interval-ms", 0)?),
        },
        status_interval_ms: match given.get("--status-interval-ms") {
            None => None,
            Some(_) => Some(num(&given, "--status-interval-ms", 0)?),
        },
        start_spread_ms: match given.get("--start-spread-ms") {
            None => None,
            Some(_) => Some(num(&given, "--start-spread-ms", 0)?),
        },
        status: match given.get("--status").map(String::as_str) {
            None => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(v) => return Err(format!("--status {v}: on or off")),
        },
        agents_per_worker: num(&given, "--agents-per-worker", 2000)?,
        worker: match (given.get("--worker-first"), given.get("--worker-count")) {
            (Some(_), Some(_)) => Some((
                num(&given, "--worker-first", 0)?,
                num(&given, "--worker-count", 0)?,
            )),
            (None, None) => None,
            _ => return Err("--worker-first and --worker-count go together".into()),
        },
        endpoints,
        etcd_pids,
        data_root: PathBuf::from(
            given
                .get("--data-root")
                .ok_or_else(|| format!("--data-root is required\n{USAGE}"))?,
        ),
        out: PathBuf::from(
            given
                .get("--out")
                .map_or("bench/fleet-results.json", String::as_str),
        ),
        etcd_version: given.get("--etcd-version").cloned().unwrap_or_default(),
    };
    if args.agents == 0 || args.agents > 60_000 {
        return Err(format!(
            "--agents {}: between 1 and 60000 (IPs are 10.x.y.z from the index)",
            args.agents
        ));
    }
    if args.agents_per_worker == 0 || args.agents_per_worker > 5000 {
        return Err("--agents-per-worker: between 1 and 5000 (3 descriptors each)".into());
    }
    if let Some((first, count)) = args.worker {
        if count == 0 || first + count > args.agents {
            return Err(format!(
                "--worker-first {first} --worker-count {count}: outside --agents {}",
                args.agents
            ));
        }
    }
    if args.stack_kib < 64 {
        return Err("--stack-kib: at least 64".into());
    }
    if args.change_window_secs == 0 || args.change_timeout_secs == 0 {
        return Err("--change-window-secs and --change-timeout-secs: at least 1".into());
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------
// The simulated agents.

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of this machine (an
/// `Instant` cannot cross a process boundary).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The [`Followers`] of a simulated agent: follows nothing, reports constant files, and
/// tells the coordinator (a line on the worker's stdout) when it first applied a config
/// and when an apply first held each change marker.
struct Stub {
    index: usize,
    applies: Arc<AtomicU64>,
    first_told: bool,
    markers_told: Vec<u64>,
    files: Vec<FileStatus>,
}

fn marker_seq(path: &str) -> Option<u64> {
    path.strip_prefix(MARKER_DIR)?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// One line to the coordinator (stdout is locked per call: lines never interleave).
fn tell(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // A coordinator that is gone ends the worker at its next read of stdin.
    let _ = out.write_fmt(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

impl Followers for Stub {
    fn apply(&mut self, entries: Vec<CollectEntry>) {
        let now = mono_ns();
        self.applies.fetch_add(1, Ordering::Relaxed);
        if !self.first_told {
            self.first_told = true;
            tell(format_args!("first {} {now}", self.index));
        }
        for seq in entries.iter().filter_map(|e| marker_seq(&e.path)) {
            if !self.markers_told.contains(&seq) {
                self.markers_told.push(seq);
                tell(format_args!("marker {} {seq} {now}", self.index));
            }
        }
        self.files = entries
            .iter()
            .map(|e| FileStatus {
                path: e.path.clone(),
                topic: e.topic.clone(),
                committed: 4096,
                size: 4096,
                lag_bytes: 0,
                error: None,
                records_refused: 0,
                bytes_lost: BTreeMap::new(),
                lines_filtered: 0,
                chars_replaced: 0,
                stalled: false,
            })
            .collect();
    }

    fn rescan(&mut self) {}

    fn files(&self) -> Vec<FileStatus> {
        self.files.clone()
    }

    fn count(&self) -> usize {
        self.files.len()
    }
}

fn ip_of(i: usize) -> String {
    let n = i + 1;
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

fn host_key(ip: &str) -> String {
    format!("/logagent/{ip}/collect_config")
}

struct AgentSpec {
    ip: String,
    hostname: String,
    groups: Vec<&'static str>,
    has_host_key: bool,
    data_dir: PathBuf,
}

fn spec(args: &Args, i: usize) -> AgentSpec {
    let mut groups = vec!["web"];
    if args.java_every > 0 && i.is_multiple_of(args.java_every) {
        groups.push("java");
    }
    AgentSpec {
        ip: ip_of(i),
        hostname: format!("fleet-{i:05}"),
        groups,
        // Offset from the java agents so the three kinds of source mix.
        has_host_key: args.host_key_every > 0 && i % args.host_key_every == args.host_key_every / 2,
        data_dir: args.data_root.join(format!("a{i:05}")),
    }
}

fn yaml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(", "))
}

fn agent_config(s: &AgentSpec, args: &Args) -> Res<Config> {
    let endpoints = &args.endpoints;
    let mut etcd_extra = String::new();
    if let Some(ms) = args.poll_interval_ms {
        etcd_extra += &format!("  poll_interval_ms: {ms}\n");
    }
    if let Some(ms) = args.status_interval_ms {
        etcd_extra += &format!("  status_interval_ms: {ms}\n");
    }
    if let Some(ms) = args.start_spread_ms {
        etcd_extra += &format!("  start_spread_ms: {ms}\n");
    }
    if let Some(on) = args.status {
        etcd_extra += &format!("  status: {on}\n");
    }
    let dir = serde_json::to_string(&s.data_dir.display().to_string()).unwrap_or_default();
    let groups: Vec<String> = s.groups.iter().map(|g| (*g).to_owned()).collect();
    let text = format!(
        "kafka:\n  brokers: [\"127.0.0.1:9\"]\n\
         agent:\n  data_dir: {dir}\n  hostname: {host}\n  ip: {ip}\n  \
         allowed_paths: [\"/var/log/**\"]\n  glob_interval_ms: 60000\n\
         etcd:\n  endpoints: {eps}\n  groups: {groups}\n{poll}",
        host = serde_json::to_string(&s.hostname).unwrap_or_default(),
        ip = serde_json::to_string(&s.ip).unwrap_or_default(),
        eps = yaml_list(endpoints),
        groups = yaml_list(&groups),
        poll = etcd_extra,
    );
    Config::parse(&text, Path::new("fleet.yaml")).map_err(|e| format!("{e}\n--- config:\n{text}"))
}

fn collect_json(paths: &[String], topic: &str) -> String {
    let list: Vec<Value> = paths
        .iter()
        .map(|p| json!({ "path": p, "topic": topic }))
        .collect();
    Value::Array(list).to_string()
}

fn web_value(marker: Option<u64>) -> String {
    let mut paths = vec![
        "/var/log/web/access.log".to_owned(),
        "/var/log/web/error.log".to_owned(),
    ];
    if let Some(seq) = marker {
        paths.push(format!("{MARKER_DIR}{seq}.log"));
    }
    collect_json(&paths, "t")
}

// ---------------------------------------------------------------------------------------
// Logging: the agents' warnings and errors are counted; only the first few are printed
// (2000 agents that all lose etcd at once must not flood the terminal).

struct CountingLogger {
    /// Info lines "the periodic re-read found a change the etcd watch did not report":
    /// each drops a working watch and starts a new one after a linearizable read.
    reread_restarts: AtomicU64,
    warnings: AtomicU64,
    errors: AtomicU64,
    printed: AtomicU64,
}

const PRINT_FIRST: u64 = 20;

impl log::Log for CountingLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record<'_>) {
        match r.level() {
            log::Level::Error => self.errors.fetch_add(1, Ordering::Relaxed),
            log::Level::Warn => self.warnings.fetch_add(1, Ordering::Relaxed),
            log::Level::Info => {
                if r.args()
                    .to_string()
                    .contains("the etcd watch did not report")
                {
                    self.reread_restarts.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            _ => return,
        };
        if self.printed.fetch_add(1, Ordering::Relaxed) < PRINT_FIRST {
            eprintln!(
                "  agent {}: {} [{}]",
                r.level(),
                r.args(),
                std::thread::current().name().unwrap_or("?")
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: CountingLogger = CountingLogger {
    reread_restarts: AtomicU64::new(0),
    warnings: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    printed: AtomicU64::new(0),
};

// ---------------------------------------------------------------------------------------
// Measuring etcd and this process.

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in seconds.
fn cpu_of(pid: &str) -> f64 {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / clk_tck()
}

/// A `/proc/PID/status` field (`VmRSS` in KiB, `Threads`).
fn status_field(pid: &str, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// TCP sockets in TIME_WAIT on this machine (connection churn).
fn time_wait() -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(3) == Some("06"))
                .count()
        })
        .sum()
}

/// One look at everything: etcd's counters and the processes.
#[derive(Clone)]
struct Sample {
    at: Instant,
    /// `grpc_server_handled_total` summed over members, by method.
    handled: BTreeMap<String, f64>,
    /// Per member: mvcc puts + deletes, raft proposals committed.
    writes: Vec<f64>,
    proposals: Vec<f64>,
    lease_renewed: f64,
    watch_streams: f64,
    watchers: f64,
    header_rev: i64,
    /// Range requests this benchmark made itself before this sample's scrape.
    own_ranges: f64,
    etcd_cpu: Vec<f64>,
    etcd_rss_kib: Vec<u64>,
    self_cpu: f64,
    self_rss_kib: u64,
    threads: u64,
    fds: usize,
    time_wait: usize,
}

struct Meter {
    http: ureq::Agent,
    endpoints: Vec<String>,
    pids: Vec<u32>,
    admin: EtcdClient,
    /// Range requests made by [`Meter::revision`] (subtracted from the fleet's).
    own_ranges: f64,
    /// The fleet's processes: this one ("self") and its workers.
    fleet_pids: Vec<String>,
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

impl Meter {
    fn scrape(&self, endpoint: &str) -> Res<String> {
        let url = format!("{}/metrics", endpoint.trim_end_matches('/'));
        let mut last = String::new();
        for _ in 0..3 {
            match self.http.get(&url).call() {
                Ok(mut r) => match r.body_mut().read_to_string() {
                    Ok(t) => return Ok(t),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("cannot read {url}: {last}"))
    }

    fn sample(&mut self) -> Res<Sample> {
        let mut s = Sample {
            at: Instant::now(),
            handled: BTreeMap::new(),
            writes: Vec::new(),
            proposals: Vec::new(),
            lease_renewed: 0.0,
            watch_streams: 0.0,
            watchers: 0.0,
            header_rev: 0,
            own_ranges: self.own_ranges,
            etcd_cpu: Vec::new(),
            etcd_rss_kib: Vec::new(),
            self_cpu: self.fleet_pids.iter().map(|p| cpu_of(p)).sum(),
            self_rss_kib: self
                .fleet_pids
                .iter()
                .map(|p| status_field(p, "VmRSS:"))
                .sum(),
            threads: self
                .fleet_pids
                .iter()
                .map(|p| status_field(p, "Threads:"))
                .sum(),
            fds: self
                .fleet_pids
                .iter()
                .map(|p| fs::read_dir(format!("/proc/{p}/fd")).map_or(0, |d| d.count()))
                .sum(),
            time_wait: time_wait(),
        };
        for ep in self.endpoints.clone() {
            let text = self.scrape(&ep)?;
            let (mut writes, mut proposals) = (0.0, 0.0);
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((head, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let Ok(v) = value.parse::<f64>() else {
                    continue;
                };
                let (name, labels) = match head.split_once('{') {
                    Some((n, l)) => (n, l),
                    None => (head, ""),
                };
                match name {
                    "grpc_server_handled_total" => {
                        let method = label(labels, "grpc_method").unwrap_or("?");
                        let key = if label(labels, "grpc_service")
                            .is_some_and(|s| s.starts_with("grpc.health"))
                        {
                            format!("Health.{method}")
                        } else {
                            method.to_owned()
                        };
                        *s.handled.entry(key).or_default() += v;
                    }
                    "etcd_mvcc_put_total" | "etcd_mvcc_delete_total" => writes += v,
                    "etcd_server_proposals_committed_total" => proposals += v,
                    "etcd_debugging_lease_renewed_total" => s.lease_renewed += v,
                    "etcd_debugging_mvcc_watch_stream_total" => s.watch_streams += v,
                    "etcd_debugging_mvcc_watcher_total" => s.watchers += v,
                    _ => {}
                }
            }
            s.writes.push(writes);
            s.proposals.push(proposals);
        }
        for pid in &self.pids {
            s.etcd_cpu.push(cpu_of(&pid.to_string()));
            s.etcd_rss_kib
                .push(status_field(&pid.to_string(), "VmRSS:"));
        }
        s.header_rev = self.revision()?;
        Ok(s)
    }

    /// The store revision, from the header of a range read (counted as our own).
    fn revision(&mut self) -> Res<i64> {
        self.own_ranges += 1.0;
        self.admin
            .get(WEB_KEY)
            .map(|g| g.revision)
            .map_err(|e| format!("reading the store revision: {e}"))
    }
}

/// What etcd and the fleet did between two samples.
#[derive(Debug, Clone, Serialize)]
struct Window {
    name: String,
    secs: f64,
    requests: f64,
    requests_per_s: f64,
    requests_per_s_by_method: BTreeMap<String, f64>,
    revisions: i64,
    revisions_per_s: f64,
    /// mvcc puts + deletes on the member furthest ahead (every member applies each write).
    writes: f64,
    writes_per_s: f64,
    raft_proposals_per_s: f64,
    lease_renewals_per_s: f64,
    etcd_cpu_s_per_s: f64,
    etcd_cpu_s_per_s_by_member: Vec<f64>,
    etcd_rss_mb: f64,
    /// The coordinator and its worker processes together.
    fleet_cpu_s_per_s: f64,
    fleet_rss_mb: f64,
    fleet_threads: u64,
    fleet_fds: usize,
    etcd_watch_streams: f64,
    etcd_watchers: f64,
    tcp_time_wait: usize,
}

fn max_delta(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| y - x).fold(0.0, f64::max)
}

fn window(name: &str, a: &Sample, b: &Sample) -> Window {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let mut by_method = BTreeMap::new();
    let mut requests = 0.0;
    for (m, v) in &b.handled {
        let mut d = v - a.handled.get(m).copied().unwrap_or(0.0);
        if m == "Range" {
            d -= b.own_ranges - a.own_ranges;
        }
        if d > 0.0 {
            by_method.insert(m.clone(), d / secs);
            requests += d;
        }
    }
    let writes = max_delta(&a.writes, &b.writes);
    let cpu: Vec<f64> = a
        .etcd_cpu
        .iter()
        .zip(&b.etcd_cpu)
        .map(|(x, y)| (y - x) / secs)
        .collect();
    Window {
        name: name.to_owned(),
        secs,
        requests,
        requests_per_s: requests / secs,
        requests_per_s_by_method: by_method,
        revisions: b.header_rev - a.header_rev,
        revisions_per_s: (b.header_rev - a.header_rev) as f64 / secs,
        writes,
        writes_per_s: writes / secs,
        raft_proposals_per_s: max_delta(&a.proposals, &b.proposals) / secs,
        lease_renewals_per_s: (b.lease_renewed - a.lease_renewed) / secs,
        etcd_cpu_s_per_s: cpu.iter().sum(),
        etcd_cpu_s_per_s_by_member: cpu,
        etcd_rss_mb: b.etcd_rss_kib.iter().sum::<u64>() as f64 / 1024.0,
        fleet_cpu_s_per_s: (b.self_cpu - a.self_cpu) / secs,
        fleet_rss_mb: b.self_rss_kib as f64 / 1024.0,
        fleet_threads: b.threads,
        fleet_fds: b.fds,
        etcd_watch_streams: b.watch_streams,
        etcd_watchers: b.watchers,
        tcp_time_wait: b.time_wait,
    }
}

// ---------------------------------------------------------------------------------------

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v
}

fn raise_nofile(need: u64) -> Res<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Err(format!(
                "getrlimit(NOFILE): {}",
                std::io::Error::last_os_error()
            ));
        }
        r.rlim_cur = r.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            return Err(format!(
                "setrlimit(NOFILE): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if r.rlim_cur < need {
        return Err(format!(
            "open files: the hard limit is {}, {need} are needed for these agents (ulimit -Hn, or fewer --agents)",
            r.rlim_cur
        ));
    }
    Ok(r.rlim_cur)
}

fn machine(args: &Args) -> Value {
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
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu, "cores": cores, "mem": mem, "etcd": args.etcd_version,
        "loadavg_at_start": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

// ---------------------------------------------------------------------------------------
// Worker processes.

/// A worker process: prepares agents `first..first + count`, starts them on `go` (a line
/// on stdin), reports on stdout, stops them on `stop` or when stdin ends.
fn run_worker(args: &Args, first: usize, count: usize) -> Res<()> {
    raise_nofile(3 * count as u64 + 256)?;
    // Configs, data dirs, clients: everything that can fail before a thread starts.
    let mut prepared = Vec::with_capacity(count);
    for i in first..first + count {
        let s = spec(args, i);
        fs::create_dir_all(&s.data_dir)
            .map_err(|e| format!("cannot create {}: {e}", s.data_dir.display()))?;
        let cfg = agent_config(&s, args)?;
        let ecfg = cfg
            .etcd
            .as_ref()
            .ok_or("the agent config has no etcd section")?;
        let client = central::client(ecfg)?;
        prepared.push((i, cfg, client));
    }
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded::<String>();
    std::thread::Builder::new()
        .name("stdin".into())
        .stack_size(64 << 10)
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if cmd_tx.send(line).is_err() {
                    return;
                }
            }
            // The coordinator is gone (or closed our stdin): stop.
            let _ = cmd_tx.send("stop".into());
        })
        .map_err(|e| format!("cannot start the stdin thread: {e}"))?;
    tell(format_args!("prepared"));
    match cmd_rx.recv() {
        Ok(l) if l == "go" => {}
        _ => return Ok(()), // stopped before the start
    }
    let (stopper, token) = stop_pair();
    let applies: Vec<Arc<AtomicU64>> = (0..count).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut handles: Vec<JoinHandle<()>> = Vec::with_capacity(count);
    for ((i, cfg, client), applies) in prepared.into_iter().zip(applies.iter().cloned()) {
        let token = token.clone();
        let h = std::thread::Builder::new()
            .name(format!("agent-{i:05}"))
            .stack_size(args.stack_kib << 10)
            .spawn(move || {
                let mut stub = Stub {
                    index: i,
                    applies,
                    first_told: false,
                    markers_told: Vec::new(),
                    files: Vec::new(),
                };
                central::run(
                    CentralContext {
                        cfg: &cfg,
                        followers: &mut stub,
                        metrics: Arc::new(Metrics::default()),
                        shutdown: token,
                    },
                    client,
                );
            });
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                stopper.stop();
                return Err(format!(
                    "cannot start agent thread {i} (the {}th of this worker's {count}): {e} \
                     (threads: ulimit -u, /proc/sys/kernel/threads-max, /proc/sys/kernel/pid_max)",
                    handles.len() + 1
                ));
            }
        }
    }
    tell(format_args!("spawned {}", mono_ns()));
    let counts = || {
        let a: Vec<u64> = applies.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        format!(
            "counts {} {} {} {} {} {}",
            LOGGER.warnings.load(Ordering::Relaxed),
            LOGGER.errors.load(Ordering::Relaxed),
            LOGGER.reread_restarts.load(Ordering::Relaxed),
            a.iter().sum::<u64>(),
            a.iter().min().copied().unwrap_or(0),
            a.iter().max().copied().unwrap_or(0),
        )
    };
    let mut last = String::new();
    loop {
        match cmd_rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) if l == "stop" => break,
            Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        let line = counts();
        if line != last {
            tell(format_args!("{line}"));
            last = line;
        }
    }
    // Every config thread returns when the stopper fires (their watcher threads block on
    // their streams; they end with the process).
    stopper.stop();
    let stop_by = Instant::now() + Duration::from_secs(15);
    while Instant::now() < stop_by && handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tell(format_args!("{}", counts()));
    tell(format_args!(
        "stopped {}",
        handles.iter().filter(|h| h.is_finished()).count()
    ));
    Ok(())
}

/// What a worker's agents did so far (its last `counts` line).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    warnings: u64,
    errors: u64,
    restarts: u64,
    applies: u64,
    applies_min: u64,
    applies_max: u64,
}

/// What the coordinator heard from its workers.
#[derive(Default)]
struct Seen {
    /// Per agent: when it first applied a config (CLOCK_MONOTONIC ns).
    first: Vec<Option<u64>>,
    /// Per change marker, per agent: when an apply first held it.
    markers: BTreeMap<u64, Vec<Option<u64>>>,
    counts: Vec<Counts>,
    prepared: usize,
    spawned: Vec<Option<u64>>,
    stopped: Vec<Option<usize>>,
    failed: Vec<String>,
}

impl Seen {
    fn applied(&self) -> usize {
        self.first.iter().filter(|f| f.is_some()).count()
    }

    fn marked(&self, seq: u64) -> usize {
        self.markers
            .get(&seq)
            .map_or(0, |m| m.iter().filter(|t| t.is_some()).count())
    }

    fn total(&self) -> Counts {
        let mut t = Counts {
            applies_min: u64::MAX,
            ..Counts::default()
        };
        for c in &self.counts {
            t.warnings += c.warnings;
            t.errors += c.errors;
            t.restarts += c.restarts;
            t.applies += c.applies;
            t.applies_min = t.applies_min.min(c.applies_min);
            t.applies_max = t.applies_max.max(c.applies_max);
        }
        if self.counts.is_empty() {
            t.applies_min = 0;
        }
        t
    }

    fn hear(&mut self, w: usize, n: usize, line: &str) {
        let mut f = line.split_whitespace();
        let kind = f.next().unwrap_or("");
        let mut nums = f.clone().map(|v| v.parse::<u64>().ok());
        let mut next = || nums.next().flatten();
        match kind {
            "prepared" => self.prepared += 1,
            "spawned" => self.spawned[w] = next(),
            "first" => {
                if let (Some(i), Some(t)) = (next(), next()) {
                    if let Some(slot) = self.first.get_mut(i as usize) {
                        slot.get_or_insert(t);
                    }
                }
            }
            "marker" => {
                if let (Some(i), Some(seq), Some(t)) = (next(), next(), next()) {
                    let m = self.markers.entry(seq).or_insert_with(|| vec![None; n]);
                    if let Some(slot) = m.get_mut(i as usize) {
                        slot.get_or_insert(t);
                    }
                }
            }
            "counts" => {
                let v: Vec<u64> = (0..6).map(|_| next().unwrap_or(0)).collect();
                self.counts[w] = Counts {
                    warnings: v[0],
                    errors: v[1],
                    restarts: v[2],
                    applies: v[3],
                    applies_min: v[4],
                    applies_max: v[5],
                };
            }
            "stopped" => self.stopped[w] = next().map(|k| k as usize),
            "fail" => self
                .failed
                .push(format!("worker {w}: {}", line.trim_start_matches("fail "))),
            _ => {}
        }
    }
}

/// The worker processes; stopped (and killed if they do not stop) when dropped.
struct Workers {
    procs: Vec<(Child, Option<ChildStdin>)>,
    readers: Vec<JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
}

impl Workers {
    /// Starts `ceil(n / per_worker)` workers with this process's own options.
    fn start(n: usize, per_worker: usize) -> Res<Workers> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let own: Vec<String> = std::env::args().skip(1).collect();
        let count = n.div_ceil(per_worker);
        let seen = Arc::new(Mutex::new(Seen {
            first: vec![None; n],
            counts: vec![Counts::default(); count],
            spawned: vec![None; count],
            stopped: vec![None; count],
            ..Seen::default()
        }));
        let mut workers = Workers {
            procs: Vec::new(),
            readers: Vec::new(),
            seen: seen.clone(),
        };
        for w in 0..count {
            let first = w * per_worker;
            let size = per_worker.min(n - first);
            let mut child = Command::new(&exe)
                .args(&own)
                .args(["--worker-first", &first.to_string()])
                .args(["--worker-count", &size.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start worker {w}: {e}"))?;
            let stdin = child.stdin.take();
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| format!("worker {w}: no stdout"))?;
            workers.procs.push((child, stdin));
            let seen = seen.clone();
            let reader = std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        lock(&seen).hear(w, n, &line);
                    }
                    let mut s = lock(&seen);
                    if s.stopped[w].is_none()
                        && s.failed
                            .iter()
                            .all(|f| !f.starts_with(&format!("worker {w}:")))
                    {
                        s.failed.push(format!("worker {w}: ended without a word"));
                    }
                })
                .map_err(|e| format!("cannot start the reader of worker {w}: {e}"))?;
            workers.readers.push(reader);
        }
        Ok(workers)
    }

    fn pids(&self) -> Vec<String> {
        self.procs.iter().map(|(c, _)| c.id().to_string()).collect()
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        lock(&self.seen)
    }

    /// Sends `cmd` to every worker.
    fn tell_all(&mut self, cmd: &str) {
        for (_, stdin) in &mut self.procs {
            if let Some(s) = stdin.as_mut() {
                let _ = writeln!(s, "{cmd}");
                let _ = s.flush();
            }
        }
    }

    /// Waits until `done` holds (true) or the deadline passes (false); a worker's
    /// failure ends the wait with its error.
    fn wait(&self, deadline: Instant, done: impl Fn(&Seen) -> bool) -> Res<bool> {
        loop {
            {
                let s = self.seen();
                if !s.failed.is_empty() {
                    return Err(s.failed.join("; "));
                }
                if done(&s) {
                    return Ok(true);
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Closing stdin stops a worker; one that has not exited after 20 s is killed.
        for (_, stdin) in &mut self.procs {
            stdin.take();
        }
        let by = Instant::now() + Duration::from_secs(20);
        for (child, _) in &mut self.procs {
            while Instant::now() < by && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fleet: {e}");
            std::process::exit(2);
        }
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    if let Some((first, count)) = args.worker {
        let status = match run_worker(&args, first, count) {
            Ok(()) => 0,
            Err(e) => {
                tell(format_args!("fail {e}"));
                1
            }
        };
        // The watcher threads block on their streams: they end with the process.
        std::process::exit(status);
    }
    if let Err(e) = run(&args) {
        eprintln!("fleet: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Res<()> {
    let n = args.agents;
    let status_interval =
        Duration::from_millis(args.status_interval_ms.unwrap_or(STATUS_INTERVAL_MS));
    let machine = machine(args);
    eprintln!(
        "fleet: {n} agents, idle {} s, {} changes ({} s windows), stack {} KiB; etcd {} at {}; machine {}",
        args.idle_secs,
        args.changes,
        args.change_window_secs,
        args.stack_kib,
        args.etcd_version,
        args.endpoints.join(","),
        machine
    );
    // The agents' descriptors are the workers' (each raises its own limit).
    let nofile = raise_nofile(256)?;
    let per_worker = args.agents_per_worker;
    let settings = EtcdSettings {
        endpoints: args.endpoints.clone(),
        timeout: Duration::from_secs(5),
        ..EtcdSettings::default()
    };
    let mut admin = EtcdClient::new(settings.clone()).map_err(|e| e.to_string())?;
    // The cluster elects a leader within a few seconds of the script starting it.
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        match admin.put("/logagent-fleet-bench/ready", b"1") {
            Ok(_) => break,
            Err(e) if Instant::now() < ready_by => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                return Err(format!(
                    "the etcd cluster at {} took no write within 60 s: {e}",
                    args.endpoints.join(",")
                ))
            }
        }
    }
    let version = admin.version().unwrap_or_else(|_| "?".into());
    let mut meter = Meter {
        http: ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into(),
        endpoints: args.endpoints.clone(),
        pids: args.etcd_pids.clone(),
        admin: EtcdClient::new(settings).map_err(|e| e.to_string())?,
        own_ranges: 0.0,
        fleet_pids: vec!["self".to_owned()],
    };

    // Keys: the groups' lists and some hosts' own.
    let specs: Vec<AgentSpec> = (0..n).map(|i| spec(args, i)).collect();
    let put = |c: &mut EtcdClient, k: &str, v: &str| {
        c.put(k, v.as_bytes()).map_err(|e| format!("put {k}: {e}"))
    };
    put(&mut admin, WEB_KEY, &web_value(None))?;
    put(
        &mut admin,
        JAVA_KEY,
        &collect_json(&["/var/log/java/gc.log".to_owned()], "java"),
    )?;
    let mut host_keys = 0;
    for s in specs.iter().filter(|s| s.has_host_key) {
        let v = collect_json(&[format!("/var/log/host/{}.log", s.hostname)], "host");
        put(&mut admin, &host_key(&s.ip), &v)?;
        host_keys += 1;
    }
    let java = specs.iter().filter(|s| s.groups.contains(&"java")).count();

    // Baseline: the cluster with no agent.
    let b0 = meter.sample()?;
    std::thread::sleep(Duration::from_secs(args.baseline_secs));
    let b1 = meter.sample()?;
    let baseline = window("baseline (no agents)", &b0, &b1);
    let rss_before_kib = b1.self_rss_kib;

    // 1. Start-up: the workers prepare their agents (configs, data dirs, clients), then
    // all start them at once on "go".
    let mut workers = Workers::start(n, per_worker)?;
    let nworkers = workers.procs.len();
    let prepared_by = Instant::now() + Duration::from_secs(300);
    if !workers.wait(prepared_by, |s| s.prepared == nworkers)? {
        return Err(format!(
            "only {}/{nworkers} workers prepared their agents within 300 s",
            workers.seen().prepared
        ));
    }
    meter.fleet_pids.extend(workers.pids());
    let s_start = meter.sample()?;
    let t0 = Instant::now();
    let t0_ns = mono_ns();
    workers.tell_all("go");
    let startup_deadline = t0 + Duration::from_secs(args.startup_timeout_secs);
    workers.wait(startup_deadline, |s| s.spawned.iter().all(Option::is_some))?;
    let spawned_in = workers
        .seen()
        .spawned
        .iter()
        .flatten()
        .max()
        .map_or(f64::NAN, |t| t.saturating_sub(t0_ns) as f64 / 1e9);
    workers.wait(startup_deadline, |s| s.applied() == n)?;
    let applied = workers.seen().applied();
    let s_applied = meter.sample()?;
    let first: Vec<f64> = sorted(
        workers
            .seen()
            .first
            .iter()
            .flatten()
            .map(|t| t.saturating_sub(t0_ns) as f64 / 1e9)
            .collect(),
    );
    eprintln!(
        "fleet: start-up: {applied}/{n} applied, the last after {:.2} s (threads spawned in {:.2} s by {nworkers} workers)",
        pct(&first, 1.0),
        spawned_in
    );
    // Settled: every first status and registration written (the revision stops moving
    // after the start spread and the first status interval).
    let settle_deadline = Instant::now() + Duration::from_secs(120);
    let mut last_rev = s_applied.header_rev;
    let mut stable_since = Instant::now();
    while Instant::now() < settle_deadline {
        std::thread::sleep(Duration::from_millis(500));
        let rev = meter.revision()?;
        if rev != last_rev {
            last_rev = rev;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(3)
            && t0.elapsed()
                >= status_interval
                    + Duration::from_millis(args.start_spread_ms.unwrap_or(1000))
                    + Duration::from_secs(1)
        {
            break;
        }
    }
    let s_settled = meter.sample()?;
    let startup_applied = window("start-up: until all applied", &s_start, &s_applied);
    let startup_settled = window("start-up: until settled", &s_start, &s_settled);
    let status_len = meter
        .admin
        .get(&format!("/logagent/{}/status", ip_of(0)))
        .ok()
        .and_then(|g| g.kv)
        .map_or(0, |kv| kv.value.len());

    // 2. Idle.
    // (The workers report their counts every 500 ms.)
    std::thread::sleep(Duration::from_millis(600));
    let applies_before = workers.seen().total().applies;
    eprintln!("fleet: idle for {} s", args.idle_secs);
    // In sub-windows of IDLE_STEP too: the average hides bursts (timers of agents that
    // started together fire together).
    let i0 = meter.sample()?;
    let idle_end = i0.at + Duration::from_secs(args.idle_secs);
    let mut idle_steps = Vec::new();
    let mut prev = i0.clone();
    let i1 = loop {
        sleep_until((prev.at + IDLE_STEP).min(idle_end));
        let s = meter.sample()?;
        idle_steps.push(window("idle step", &prev, &s));
        let done = s.at >= idle_end;
        prev = s;
        if done || idle_steps.len() > 100_000 {
            break prev;
        }
    };
    let idle = window("idle", &i0, &i1);
    let peak = |f: &dyn Fn(&Window) -> f64| idle_steps.iter().map(f).fold(0.0, f64::max);
    let idle_peak_rps = peak(&|w| w.requests_per_s);
    let idle_peak_wps = peak(&|w| w.writes_per_s);
    let idle_steps_json: Vec<Value> = idle_steps
        .iter()
        .map(|w| {
            json!({
                "secs": w.secs, "requests_per_s": w.requests_per_s,
                "by_method": w.requests_per_s_by_method, "writes_per_s": w.writes_per_s,
                "etcd_cpu_s_per_s": w.etcd_cpu_s_per_s,
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    let applies_idle = workers.seen().total().applies - applies_before;

    // 3. Changes.
    let mut changes = Vec::new();
    let mut change_windows: Vec<Window> = Vec::new();
    let mut all_lat = Vec::new();
    for k in 1..=args.changes as u64 {
        let c0 = meter.sample()?;
        let restarts0 = workers.seen().total().restarts;
        let value = web_value(Some(k));
        let t_put = Instant::now();
        let t_put_ns = mono_ns();
        put(&mut admin, WEB_KEY, &value)?;
        let put_ms = t_put.elapsed().as_secs_f64() * 1000.0;
        let deadline = t_put + Duration::from_secs(args.change_timeout_secs);
        workers.wait(deadline, |s| s.marked(k) == n)?;
        let seen = workers.seen().marked(k);
        let lat = sorted(
            workers
                .seen()
                .markers
                .get(&k)
                .map(|m| {
                    m.iter()
                        .flatten()
                        .map(|t| t.saturating_sub(t_put_ns) as f64 / 1e6)
                        .collect()
                })
                .unwrap_or_default(),
        );
        sleep_until(t_put + Duration::from_secs(args.change_window_secs));
        let c1 = meter.sample()?;
        let restarts = workers.seen().total().restarts - restarts0;
        let w = window(&format!("change {k}"), &c0, &c1);
        eprintln!(
            "fleet: change {k}: {seen}/{n} applied, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {:.0} requests/s, {:.1} writes/s in the window",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
            w.requests_per_s,
            w.writes_per_s
        );
        changes.push(json!({
            "seq": k, "applied": seen, "never_applied": n - seen, "put_ms": put_ms,
            "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99), "max_ms": pct(&lat, 1.0),
            "watch_restarts_by_reread": restarts,
            "window": w,
        }));
        change_windows.push(w);
        all_lat.extend(lat);
    }
    let all_lat = sorted(all_lat);
    let never: usize = changes
        .iter()
        .map(|c| c["never_applied"].as_u64().unwrap_or(0) as usize)
        .sum();

    // Stop: every worker stops its config threads and says how many returned.
    workers.tell_all("stop");
    let stop_by = Instant::now() + Duration::from_secs(20);
    workers.wait(stop_by, |s| s.stopped.iter().all(Option::is_some))?;
    let (stopped, totals) = {
        let s = workers.seen();
        (s.stopped.iter().flatten().sum::<usize>(), s.total())
    };
    drop(workers);

    // 4. Per agent, and 10,000 hosts.
    let nf = n as f64;
    let avg = |f: &dyn Fn(&Window) -> f64| {
        if change_windows.is_empty() {
            f64::NAN
        } else {
            change_windows.iter().map(f).sum::<f64>() / change_windows.len() as f64
        }
    };
    let change_writes = avg(&|w| w.writes);
    let change_rps = avg(&|w| w.requests_per_s);
    let change_wps = avg(&|w| w.writes_per_s);
    let change_cpu = avg(&|w| w.etcd_cpu_s_per_s);
    let idle_etcd_cpu_net = (idle.etcd_cpu_s_per_s - baseline.etcd_cpu_s_per_s).max(0.0);
    let fleet_rss_per_agent_kib = (i1.self_rss_kib.saturating_sub(rss_before_kib)) as f64 / nf;
    let per_agent = json!({
        "idle_requests_per_s": idle.requests_per_s / nf,
        "idle_writes_per_s": idle.writes_per_s / nf,
        "idle_etcd_cpu_s_per_s_over_baseline": idle_etcd_cpu_net / nf,
        "idle_fleet_cpu_s_per_s": idle.fleet_cpu_s_per_s / nf,
        "fleet_rss_kib": fleet_rss_per_agent_kib,
        "startup_requests": startup_settled.requests / nf,
        "startup_writes": startup_settled.writes / nf,
        "writes_per_change": change_writes / nf,
        "status_doc_bytes": status_len,
    });
    let scale = 10_000.0 / nf;
    let at_10k = json!({
        "note": "linear extrapolation of the per-agent rates measured here; not measured",
        "idle_requests_per_s": idle.requests_per_s * scale,
        "idle_writes_per_s": idle.writes_per_s * scale,
        "idle_etcd_cpu_s_per_s": baseline.etcd_cpu_s_per_s + idle_etcd_cpu_net * scale,
        "startup_requests": startup_settled.requests * scale,
        "startup_writes": startup_settled.writes * scale,
        "writes_per_change": change_writes * scale,
        "change_status_writes_per_s": change_writes * scale / status_interval.as_secs_f64(),
        "status_keyspace_mb": status_len as f64 * 10_000.0 / 1e6,
        "watch_streams": 10_000,
    });
    let pooled = json!({
        "changes": args.changes, "samples": all_lat.len(), "never_applied": never,
        "p50_ms": pct(&all_lat, 0.5), "p99_ms": pct(&all_lat, 0.99), "max_ms": pct(&all_lat, 1.0),
    });
    let doc = json!({
        "params": {
            "agents": n, "idle_secs": args.idle_secs, "changes": args.changes,
            "change_window_secs": args.change_window_secs,
            "change_timeout_secs": args.change_timeout_secs,
            "stack_kib": args.stack_kib, "java_agents": java, "host_keys": host_keys,
            "workers": nworkers, "agents_per_worker": per_worker,
            "endpoints": args.endpoints, "nofile": nofile,
            "seed": "none of ours: each agent's jitter is its own xorshift seeded from pid, ip/hostname and the clock (src/central/mod.rs)",
            "agent_defaults": "poll_interval_ms 30000, status_interval_ms 5000, heartbeat_ms 20000, watch on",
            "poll_interval_ms": args.poll_interval_ms,
            "status_interval_ms": args.status_interval_ms,
            "start_spread_ms": args.start_spread_ms,
            "status": args.status,
        },
        "machine": machine,
        "etcd_server_version": version,
        "startup": {
            "applied": applied, "threads_spawned_s": spawned_in,
            "first_apply_p50_s": pct(&first, 0.5), "first_apply_p99_s": pct(&first, 0.99),
            "all_applied_s": pct(&first, 1.0),
            "until_applied": startup_applied, "until_settled": startup_settled,
        },
        "baseline": baseline,
        "idle": idle,
        "idle_peak_5s": { "requests_per_s": idle_peak_rps, "writes_per_s": idle_peak_wps },
        "idle_steps_5s": idle_steps_json,
        "idle_applies": applies_idle,
        "changes": changes,
        "change_latency": pooled,
        "applies_per_agent": { "min": totals.applies_min, "max": totals.applies_max },
        "config_threads_stopped": stopped,
        "agent_warnings": totals.warnings,
        "watch_restarts_by_reread": totals.restarts,
        "agent_errors": totals.errors,
        "per_agent": per_agent,
        "at_10000_hosts": at_10k,
        "loadavg_at_end": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    if let Some(dir) = args.out.parent() {
        let _ = fs::create_dir_all(dir);
    }
    fs::write(
        &args.out,
        serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;

    // The table.
    let p99_target = if pct(&all_lat, 0.99) <= 1000.0 && never == 0 {
        "met"
    } else {
        "MISSED"
    };
    let idle_target = if idle.writes_per_s <= 1.0 {
        "met"
    } else {
        "MISSED"
    };
    let methods = |w: &Window| {
        w.requests_per_s_by_method
            .iter()
            .map(|(m, v)| format!("{m} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!();
    println!(
        "Fleet benchmark: {n} agents ({java} also in group java, {host_keys} with a host key), 3-member etcd {version} on loopback; {} cores, {}",
        machine["cores"], machine["cpu"].as_str().unwrap_or("?")
    );
    println!();
    println!("| measure | value | target |");
    println!("|---|---:|---|");
    let row = |m: &str, v: String, t: &str| println!("| {m} | {v} | {t} |");
    row(
        "start-up: all agents applied their first config",
        format!(
            "{applied}/{n} after {:.2} s (p50 {:.2} s)",
            pct(&first, 1.0),
            pct(&first, 0.5)
        ),
        "",
    );
    row(
        "start-up: etcd requests / writes until all applied",
        format!(
            "{:.0} / {:.0}",
            startup_applied.requests, startup_applied.writes
        ),
        "",
    );
    row(
        "start-up: etcd requests / writes until settled (first status written)",
        format!(
            "{:.0} / {:.0} in {:.1} s",
            startup_settled.requests, startup_settled.writes, startup_settled.secs
        ),
        "",
    );
    row(
        &format!("idle ({:.0} s): etcd requests/s", idle.secs),
        format!("{:.1}", idle.requests_per_s),
        "",
    );
    row("idle: requests/s by method", methods(&idle), "");
    row(
        "idle: busiest 5 s: requests/s; writes/s",
        format!("{idle_peak_rps:.1}; {idle_peak_wps:.2}"),
        "",
    );
    row(
        "idle: new revisions/s; writes/s (mvcc put+delete); raft proposals/s",
        format!(
            "{:.2}; {:.2}; {:.2}",
            idle.revisions_per_s, idle.writes_per_s, idle.raft_proposals_per_s
        ),
        &format!("≤ 1 write/s: {idle_target}"),
    );
    row(
        "idle: etcd CPU (3 members), cpu-s/s [baseline without agents]",
        format!(
            "{:.3} [{:.3}]",
            idle.etcd_cpu_s_per_s, baseline.etcd_cpu_s_per_s
        ),
        "",
    );
    row(
        "idle: etcd RSS (3 members)",
        format!("{:.0} MB", idle.etcd_rss_mb),
        "",
    );
    row(
        "idle: fleet process CPU, cpu-s/s (per agent)",
        format!(
            "{:.3} ({:.1} µs/s)",
            idle.fleet_cpu_s_per_s,
            idle.fleet_cpu_s_per_s / nf * 1e6
        ),
        "",
    );
    row(
        "idle: fleet process RSS (per agent); threads; fds",
        format!(
            "{:.0} MB ({:.0} KiB); {}; {}",
            idle.fleet_rss_mb, fleet_rss_per_agent_kib, idle.fleet_threads, idle.fleet_fds
        ),
        "",
    );
    row(
        "idle: etcd watch streams / watchers; TCP TIME_WAIT",
        format!(
            "{:.0} / {:.0}; {}",
            idle.etcd_watch_streams, idle.etcd_watchers, idle.tcp_time_wait
        ),
        "",
    );
    row("idle: applies (should be 0)", applies_idle.to_string(), "");
    row(
        &format!(
            "change → applied, {} changes pooled: p50 / p99 / max",
            args.changes
        ),
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            pct(&all_lat, 0.5),
            pct(&all_lat, 0.99),
            pct(&all_lat, 1.0)
        ),
        &format!("p99 ≤ 1000 ms: {p99_target}"),
    );
    row(
        "change: agents that never applied (all changes)",
        never.to_string(),
        "0",
    );
    row(
        &format!(
            "change window ({} s): etcd requests/s; writes/s; writes per change",
            args.change_window_secs
        ),
        format!("{change_rps:.1}; {change_wps:.1}; {change_writes:.0}"),
        "",
    );
    row(
        "change window: etcd CPU, cpu-s/s",
        format!("{change_cpu:.3}"),
        "",
    );
    row(
        "per agent: idle requests/s; idle writes/s; writes per change",
        format!(
            "{:.4}; {:.5}; {:.2}",
            idle.requests_per_s / nf,
            idle.writes_per_s / nf,
            change_writes / nf
        ),
        "",
    );
    row(
        "per agent: etcd idle CPU over baseline",
        format!("{:.1} µs/s", idle_etcd_cpu_net / nf * 1e6),
        "",
    );
    row(
        "10,000 hosts (extrapolated): idle requests/s; idle writes/s",
        format!(
            "{:.0}; {:.1}",
            idle.requests_per_s * scale,
            idle.writes_per_s * scale
        ),
        "",
    );
    row(
        "10,000 hosts (extrapolated): etcd idle CPU, cpu-s/s",
        format!(
            "{:.2}",
            baseline.etcd_cpu_s_per_s + idle_etcd_cpu_net * scale
        ),
        "",
    );
    row(
        "10,000 hosts (extrapolated): writes per change, over the status interval",
        format!(
            "{:.0} ({:.0}/s)",
            change_writes * scale,
            change_writes * scale / status_interval.as_secs_f64()
        ),
        "",
    );
    row(
        "10,000 hosts (extrapolated): start-up requests / writes",
        format!(
            "{:.0} / {:.0}",
            startup_settled.requests * scale,
            startup_settled.writes * scale
        ),
        "",
    );
    row(
        "agents' warnings / errors logged",
        format!("{} / {}", totals.warnings, totals.errors),
        "",
    );
    row(
        "watches restarted because a periodic re-read saw a change first (whole run)",
        totals.restarts.to_string(),
        "",
    );
    println!();
    println!("| change | applied | put ms | p50 ms | p99 ms | max ms | requests/s | writes/s | etcd cpu-s/s | watches restarted |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &changes {
        let w = &c["window"];
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {}/{n} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.3} | {} |",
            c["seq"],
            c["applied"],
            f(&c["put_ms"]),
            f(&c["p50_ms"]),
            f(&c["p99_ms"]),
            f(&c["max_ms"]),
            f(&w["requests_per_s"]),
            f(&w["writes_per_s"]),
            f(&w["etcd_cpu_s_per_s"]),
            c["watch_restarts_by_reread"],
        );
    }
    println!();
    eprintln!(
        "fleet: {stopped}/{n} config threads stopped; wrote {}",
        args.out.display()
    );
    Ok(())
}
