//! Test harness: real Apache Kafka ([`kafka`]), real etcd, the real `logagent` binary,
//! and a consumer that counts what arrived. Every wait is bounded.

#![allow(dead_code)]

pub mod kafka;
pub mod scenario;

#[allow(unused_imports)]
pub use kafka::{Broker, KafkaCluster, NodeSpec};

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Headers, Message};
use rdkafka::Offset;

/// How long a test waits for lines to be acknowledged.
pub const SHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls `f` every 50 ms until it is true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// Waits (≤ 10 s) until every thread of `pid` is in the stopped state.
fn wait_stopped(pid: u32) {
    let stopped = || {
        fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten().all(|t| {
                    fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                        st.rsplit_once(')')
                            .and_then(|(_, rest)| rest.split_whitespace().next())
                            .is_some_and(|state| state == "T" || state == "t")
                    })
                })
            })
            .unwrap_or(true)
    };
    assert!(
        wait_until(Duration::from_secs(10), stopped),
        "process {pid} did not stop on SIGSTOP"
    );
}

/// The agent binary under test: `LOGAGENT_BIN` (scripts/test.sh runs the core and
/// reliability tests again on the portable glibc-2.17 build), else the one cargo built.
pub fn agent_bin() -> std::path::PathBuf {
    std::env::var_os("LOGAGENT_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_logagent").into())
}

/// `logagent check-config -c CONFIG`: its exit code (`None`: killed by a signal), stdout
/// and stderr.
pub fn check_config(config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(agent_bin())
        .args(["check-config", "-c"])
        .arg(config)
        .output()
        .expect("run logagent check-config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child pid we own.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A scratch directory with the agent's config, data dir, log and the watched files.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    /// A fresh directory; with `LOGAGENT_TEST_KEEP=1` it is left behind for a look at
    /// the agent's log and files after a failure.
    pub fn new() -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix("logagent-test")
            .disable_cleanup(std::env::var_os("LOGAGENT_TEST_KEEP").is_some())
            .tempdir()
            .expect("tempdir");
        Workdir { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn p(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// agent.yaml for this broker, with short intervals so tests run quickly, plus the
    /// given `collect:` YAML (a list) and extra `agent:` keys.
    pub fn config(&self, broker: &Broker, collect: &str, agent_extra: &str) -> PathBuf {
        self.config_to(&broker.addr(), "", collect, agent_extra)
    }

    /// [`Workdir::config`] towards `brokers` (comma separated), with extra `kafka:` keys.
    pub fn config_to(
        &self,
        brokers: &str,
        kafka_extra: &str,
        collect: &str,
        agent_extra: &str,
    ) -> PathBuf {
        let list = brokers
            .split(',')
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let yaml = format!(
            "kafka:\n  brokers: [{list}]\n  linger_ms: 5\n{kafka_extra}agent:\n  data_dir: {}\n  poll_interval_ms: 50\n  checkpoint_interval_ms: 200\n  glob_interval_ms: 200\n  hostname: testhost\n{agent_extra}collect:\n{collect}",
            self.p("data"),
        );
        let path = self.path("agent.yaml");
        fs::write(&path, yaml).expect("write agent.yaml");
        path
    }
}

/// agent.yaml for a central config: the collect list comes from `etcd` under
/// `/logagent/<ip>/collect_config`; files under the work dir are allowed. `agent_extra`
/// adds `agent:` keys.
pub fn central_config(
    w: &Workdir,
    broker: &Broker,
    etcd: &Etcd,
    ip: &str,
    agent_extra: &str,
) -> PathBuf {
    let yaml = format!(
        "kafka:\n  brokers: [\"{}\"]\n  linger_ms: 5\nagent:\n  data_dir: {}\n  poll_interval_ms: 50\n  checkpoint_interval_ms: 200\n  glob_interval_ms: 200\n  hostname: testhost\n  ip: {ip}\n  allowed_paths: [\"{}/**\"]\n{agent_extra}etcd:\n  endpoints: [\"{}\"]\n  poll_interval_ms: 100\n  status_interval_ms: 300\n  timeout_ms: 1000\n",
        broker.addr(),
        w.p("data"),
        w.dir.path().display(),
        etcd.endpoint(),
    );
    let path = w.path("agent.yaml");
    fs::write(&path, yaml).expect("write agent.yaml");
    path
}

/// The real `logagent run` process; killed on drop.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
    /// Length of the (shared, appended) log when this process started.
    log_start: u64,
}

impl Agent {
    pub fn start(work: &Workdir, config: &Path) -> Agent {
        Agent::start_with(work, config, |_| {})
    }

    /// Starts the agent, letting `tweak` adjust the command (user, env).
    pub fn start_with(work: &Workdir, config: &Path, tweak: impl FnOnce(&mut Command)) -> Agent {
        let log = work.path("agent.log");
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open agent log");
        let log_start = logf.metadata().map_or(0, |m| m.len());
        let mut cmd = Command::new(agent_bin());
        cmd.args(["run", "-c"])
            .arg(config)
            // LOGAGENT_TEST_LOG=logagent=debug,info to see the tailer's decisions.
            .env(
                "RUST_LOG",
                std::env::var("LOGAGENT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(logf);
        tweak(&mut cmd);
        let child = cmd.spawn().expect("start logagent");
        Agent {
            child: Some(child),
            log,
            log_start,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What this process logged (the log file is shared by restarts in one work dir).
    pub fn own_log(&self) -> String {
        let log = fs::read(&self.log).unwrap_or_default();
        let mine = &log[(self.log_start as usize).min(log.len())..];
        String::from_utf8_lossy(mine).into_owned()
    }

    /// Waits (bounded) until the agent's log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    /// SIGTERM and wait for a clean exit (≤ 60 s). A SIGTERM that arrives before the
    /// agent installed its handler would kill it outright, so first wait (bounded) for
    /// this process's "starting" line, logged after the handler is in place.
    pub fn stop(&mut self) -> ExitStatus {
        let started = || self.own_log().contains(" starting: ");
        wait_until(Duration::from_secs(30), started);
        let mut child = self.child.take().expect("agent running");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().expect("wait agent") {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "agent did not stop within 60 s after SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until this process logged its "starting" line: its signal
    /// handlers are in place from then on (before, SIGHUP would kill it).
    pub fn wait_started(&self) -> bool {
        wait_until(Duration::from_secs(30), || {
            self.own_log().contains(" starting: ")
        })
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    /// Whether the process is still running (not exited, not reaped).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits (bounded) for the process to exit by itself; its status, or None if it
    /// still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// SIGSTOP: the agent stops reading, as if it were very slow. Returns once every
    /// thread is stopped: inotify wakes a tailer within microseconds, so a write right
    /// after the signal could otherwise still be read.
    pub fn freeze(&self) {
        signal(self.pid(), libc::SIGSTOP);
        wait_stopped(self.pid());
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// SIGKILL: no flush, no final checkpoint.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One record read back from the broker.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads every partition of `topic` from the beginning until at least `expected`
/// records arrived (or `timeout`), then keeps reading until 1 s passes without a
/// record, so that duplicates beyond `expected` are counted too.
pub fn consume_all(
    broker: &Broker,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Record> {
    consume_from(&broker.addr(), topic, expected, timeout)
}

/// [`consume_all`] from the brokers at `bootstrap` (a cluster's).
pub fn consume_from(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "logagent-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.message.max.bytes", "8000000")
        .create()
        .expect("consumer");
    logagent::consume::assign_partitions(&consumer, topic, None, Offset::Beginning)
        .expect("assign partitions");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut quiet_since = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if out.len() >= expected && now.duration_since(quiet_since) >= Duration::from_secs(1) {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        let hd = h.get(i);
                        headers.insert(
                            hd.key.to_owned(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    partition: m.partition(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Payload → how many times it arrived.
pub fn tally(records: &[Record]) -> HashMap<Vec<u8>, usize> {
    let mut m = HashMap::new();
    for r in records {
        *m.entry(r.payload.clone()).or_insert(0) += 1;
    }
    m
}

/// The numbered line `<tag>:<seq>:<padding>` used by the writers.
pub fn line(tag: &str, seq: usize) -> String {
    format!("{tag}:{seq:08}:the quick brown fox jumps over the lazy dog")
}

/// Appends lines `from..to` of `tag` to `path`.
pub fn append_lines(path: &Path, tag: &str, range: std::ops::Range<usize>) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    let mut buf = String::new();
    for i in range {
        buf.push_str(&line(tag, i));
        buf.push('\n');
        if buf.len() > 64 * 1024 {
            f.write_all(buf.as_bytes()).expect("append");
            buf.clear();
        }
    }
    f.write_all(buf.as_bytes()).expect("append");
}

/// Asserts that `records` hold exactly the lines `0..n` of `tag`, each once.
pub fn assert_exactly_once(records: &[Record], tag: &str, n: usize) {
    let t = tally(records);
    let mut missing = Vec::new();
    let mut dups = 0;
    for i in 0..n {
        match t.get(line(tag, i).as_bytes()) {
            None => missing.push(i),
            Some(&c) if c > 1 => dups += c - 1,
            _ => {}
        }
    }
    let ours = records
        .iter()
        .filter(|r| r.payload.starts_with(format!("{tag}:").as_bytes()))
        .count();
    assert!(
        missing.is_empty(),
        "{tag}: {} of {n} lines missing (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(dups, 0, "{tag}: {dups} duplicated lines");
    assert_eq!(ours, n, "{tag}: unexpected extra records");
}

/// A single-member etcd (Debian's etcd-server) on free loopback ports; killed on drop.
pub struct Etcd {
    child: Option<Child>,
    pub port: u16,
    peer_port: u16,
    pub data: tempfile::TempDir,
    /// `http` or `https`.
    scheme: &'static str,
    extra: Vec<String>,
    /// Settings for clients of the harness (TLS files for `https`).
    pub settings: logagent::etcd::EtcdSettings,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with("http", &[], logagent::etcd::EtcdSettings::default())
    }

    /// Starts a member with extra flags; `settings` (endpoints filled in here) is what
    /// the harness's own client uses.
    pub fn start_with(
        scheme: &'static str,
        extra: &[&str],
        mut settings: logagent::etcd::EtcdSettings,
    ) -> Etcd {
        let data = tempfile::Builder::new()
            .prefix("logagent-etcd")
            .tempdir()
            .expect("etcd tempdir");
        let port = free_port();
        settings.endpoints = vec![format!("{scheme}://127.0.0.1:{port}")];
        settings.timeout = Duration::from_secs(3);
        let mut e = Etcd {
            child: None,
            port,
            peer_port: free_port(),
            data,
            scheme,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            settings,
        };
        e.restart();
        e
    }

    /// (Re)starts the member on the same ports and data dir; waits until it answers.
    pub fn restart(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.data.path().join("member"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (Debian's etcd-server; scripts/test.sh installs it)");
        self.child = Some(child);
        let ep = self.endpoint();
        assert!(
            wait_until(Duration::from_secs(30), || self.client().version().is_ok()),
            "etcd did not answer at {ep}"
        );
    }

    /// Saves a snapshot of the store to `file` (etcdctl, Debian's etcd-client).
    pub fn snapshot(&self, file: &Path) {
        let out = Command::new("etcdctl")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("snapshot")
            .arg("save")
            .arg(file)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "snapshot save: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the member, replaces its data with `file` (an older snapshot: the store
    /// revision goes back), and starts it again — an operator's disaster recovery.
    pub fn restore(&mut self, file: &Path) {
        self.kill();
        let member = self.data.path().join("member");
        fs::remove_dir_all(&member).expect("remove member dir");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let out = Command::new("etcdctl")
            .arg("snapshot")
            .arg("restore")
            .arg(file)
            .arg("--data-dir")
            .arg(&member)
            .args(["--name", "t", "--initial-cluster", &format!("t={peer}")])
            .args(["--initial-advertise-peer-urls", &peer])
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "snapshot restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.restart();
    }

    /// Kills the member (SIGKILL); its data stays for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// A client of the library under test, used as an etcdctl.
    pub fn client(&self) -> logagent::etcd::EtcdClient {
        logagent::etcd::EtcdClient::new(self.settings.clone()).expect("etcd client")
    }

    pub fn put(&self, key: &str, value: &str) {
        self.client().put(key, value.as_bytes()).expect("etcd put");
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.client()
            .get(key)
            .expect("etcd get")
            .kv
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// (path, inode, offset) of every registry entry.
pub fn registry_entries(w: &Workdir) -> Vec<(String, u64, u64)> {
    let Ok(text) = fs::read_to_string(w.path("data/registry.json")) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    v["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or_default().to_owned(),
                f["id"]["ino"].as_u64().unwrap_or_default(),
                f["offset"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// True when the registry says every byte of each file (by inode) is acknowledged.
pub fn all_shipped(w: &Workdir, files: &[&Path]) -> bool {
    let reg = registry_entries(w);
    files.iter().all(|p| {
        let Ok(m) = fs::metadata(p) else {
            return false;
        };
        reg.iter()
            .any(|(_, ino, off)| *ino == m.ino() && *off == m.len())
    })
}

pub fn wait_shipped(w: &Workdir, agent: &Agent, files: &[&Path]) {
    assert!(
        wait_until(SHIP_TIMEOUT, || all_shipped(w, files)),
        "not all of {files:?} acknowledged; registry {:?}\nagent log:\n{}",
        registry_entries(w),
        agent.log()
    );
}

/// A TCP relay on a loopback port in front of the broker, which the test can cut (the
/// port refuses connections, open ones are closed) and restore: "broker unreachable"
/// without touching the broker.
pub struct Relay {
    pub port: u16,
    target: u16,
    up: Option<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn new(port: u16, target: u16) -> Relay {
        let mut r = Relay {
            port,
            target,
            up: None,
            conns: Default::default(),
        };
        r.restore();
        r
    }

    /// Starts accepting and relaying again.
    pub fn restore(&mut self) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("relay bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (stop2, conns, target) = (stop.clone(), self.conns.clone(), self.target);
        let h = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server.try_clone().unwrap(), client.try_clone().unwrap()),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                        let mut c = conns.lock().unwrap();
                        c.push(client);
                        c.push(server);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        self.up = Some((stop, h));
    }

    /// Closes the port and every relayed connection.
    pub fn cut(&mut self) {
        if let Some((stop, h)) = self.up.take() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = h.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// GET `http://127.0.0.1:PORT/PATH`: (status, body); (0, "") when nothing answers.
pub fn get(port: u16, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    match agent.get(&format!("http://127.0.0.1:{port}{path}")).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// The value of one series line in Prometheus text, e.g.
/// `logagent_lines_read_total{path="…",topic="m"}`.
pub fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One series of the agent's `/metrics` on `port`.
pub fn metric(port: u16, series: &str) -> Option<u64> {
    value(&get(port, "/metrics").1, series)
}

/// VmHWM (peak RSS) of a process in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A `collect:` entry (YAML) for `path` into `topic`, read from its beginning.
pub fn beginning_entry(path: &str, topic: &str) -> String {
    format!("  - path: {path}\n    topic: {topic}\n    from: beginning\n")
}

/// A broker with a topic, a work dir whose `app.log` holds numbered lines, and an
/// agent.yaml that follows `app.log` from its beginning.
pub struct OneFile {
    pub broker: Broker,
    pub w: Workdir,
    pub path: PathBuf,
    pub cfg: PathBuf,
}

/// [`OneFile`] with `topic` (`partitions`), lines `0..n` of `tag`, and `agent_extra`
/// added under `agent:`.
pub fn one_file(topic: &str, partitions: i32, tag: &str, n: usize, agent_extra: &str) -> OneFile {
    one_file_on(Broker::start(), topic, partitions, tag, n, agent_extra)
}

/// [`one_file`] on a broker of the test's own (one it freezes).
pub fn one_file_own(
    topic: &str,
    partitions: i32,
    tag: &str,
    n: usize,
    agent_extra: &str,
) -> OneFile {
    one_file_on(Broker::start_own(), topic, partitions, tag, n, agent_extra)
}

fn one_file_on(
    broker: Broker,
    topic: &str,
    partitions: i32,
    tag: &str,
    n: usize,
    agent_extra: &str,
) -> OneFile {
    broker.create_topic(topic, partitions);
    let w = Workdir::new();
    let path = w.path("app.log");
    append_lines(&path, tag, 0..n);
    let cfg = w.config(
        &broker,
        &beginning_entry(&w.p("app.log"), topic),
        agent_extra,
    );
    OneFile {
        broker,
        w,
        path,
        cfg,
    }
}

/// A broker with `topic`, a work dir, and an agent that follows `entry_path` (relative to
/// the work dir; may be a glob) from its beginning, with line 0 of `tag` already written
/// to `file` and the agent following it: rotation tests must not rotate earlier.
pub struct Following {
    pub broker: Broker,
    pub w: Workdir,
    pub path: PathBuf,
    pub agent: Agent,
}

pub fn start_following(
    topic: &str,
    partitions: i32,
    entry_path: &str,
    file: &str,
    tag: &str,
) -> Following {
    let broker = Broker::start();
    broker.create_topic(topic, partitions);
    let w = Workdir::new();
    let path = w.path(file);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("mkdir");
    }
    append_lines(&path, tag, 0..1);
    let cfg = w.config(&broker, &beginning_entry(&w.p(entry_path), topic), "");
    let agent = Agent::start(&w, &cfg);
    assert!(
        wait_until(SHIP_TIMEOUT, || !registry_entries(&w).is_empty()),
        "{}",
        agent.log()
    );
    Following {
        broker,
        w,
        path,
        agent,
    }
}

/// Runs the real logrotate on `file` with `directives` (forced, own state file).
pub fn logrotate(w: &Workdir, file: &Path, directives: &str) {
    logrotate_in(&w.path(""), file, directives);
}

/// [`logrotate`] with its config and state file in `dir` (from a writer's thread,
/// which has no [`Workdir`]).
pub fn logrotate_in(dir: &Path, file: &Path, directives: &str) {
    let conf = dir.join("logrotate.conf");
    fs::write(&conf, format!("{} {{\n{directives}\n}}\n", file.display()))
        .expect("write logrotate.conf");
    let out = Command::new("/usr/sbin/logrotate")
        .arg("-f")
        .arg("-s")
        .arg(dir.join("logrotate.state"))
        .arg(&conf)
        .output()
        .expect("run /usr/sbin/logrotate (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "logrotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `collect:` entry with the defaults an operator gets (`from: end`).
pub fn end_entry(path: &str, topic: &str) -> String {
    format!("  - path: {path}\n    topic: {topic}\n")
}

/// A broker with `topic`, a work dir and an agent following `app.log` with the default
/// `from: end`; `app.log` holds `head` and lines of an old run (tag "old", never to be
/// shipped).
pub fn follow_from_end(topic: &str, extra: &str, head: &str) -> FromEnd {
    follow_from_end_on(Broker::start(), topic, extra, head)
}

/// [`follow_from_end`] on a broker of the test's own (one it freezes).
pub fn follow_from_end_own(topic: &str, extra: &str, head: &str) -> FromEnd {
    follow_from_end_on(Broker::start_own(), topic, extra, head)
}

/// What [`follow_from_end`] returns: broker, work dir, `app.log`, agent.yaml, agent.
pub type FromEnd = (
    Broker,
    Workdir,
    std::path::PathBuf,
    std::path::PathBuf,
    Agent,
);

fn follow_from_end_on(broker: Broker, topic: &str, extra: &str, head: &str) -> FromEnd {
    broker.create_topic(topic, 1);
    let w = Workdir::new();
    let path = w.path("app.log");
    fs::write(&path, head).expect("write the head");
    append_lines(&path, "old", 0..5);
    let cfg = w.config(&broker, &end_entry(&w.p("app.log"), topic), extra);
    let agent = Agent::start(&w, &cfg);
    assert!(
        agent.wait_log("following from its end", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    (broker, w, path, cfg, agent)
}

/// A seed from an env knob: decimal or `0x…` hex; panics naming `var` otherwise.
pub fn parse_seed(s: &str, var: &str) -> u64 {
    let s = s.trim();
    let v = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    v.unwrap_or_else(|_| panic!("{var}={s:?} is no number"))
}

/// A failed seed's agent log: saved whole to `/tmp/<name>-<seed>.log`, last 80 lines
/// printed.
pub fn dump_agent_log(name: &str, seed: u64, log: &str) {
    let full = std::env::temp_dir().join(format!("{name}-{seed:#x}.log"));
    if fs::write(&full, log.as_bytes()).is_ok() {
        eprintln!("  full agent log: {}", full.display());
    }
    let tail: Vec<&str> = log.lines().collect();
    eprintln!("  agent log (last 80 lines):");
    for l in &tail[tail.len().saturating_sub(80)..] {
        eprintln!("    {l}");
    }
}

/// splitmix64: tiny, seedable, good enough to pick actions in the model tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// Three etcd members on loopback; killed on drop.
pub struct Cluster {
    pub members: Vec<Option<std::process::Child>>,
    client: Vec<u16>,
    peer: Vec<u16>,
    data: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        let mut c = Cluster {
            members: vec![None, None, None],
            client: (0..3).map(|_| free_port()).collect(),
            peer: (0..3).map(|_| free_port()).collect(),
            data: tempfile::tempdir().unwrap(),
        };
        for i in 0..3 {
            c.start_member(i, "new");
        }
        assert!(
            wait_until(SHIP_TIMEOUT, || c.via(1).put("/probe", b"x").is_ok()),
            "cluster did not form"
        );
        c
    }

    pub fn start_member(&mut self, i: usize, state: &str) {
        let cluster: Vec<String> = (0..3)
            .map(|k| format!("e{k}=http://127.0.0.1:{}", self.peer[k]))
            .collect();
        let cl = format!("http://127.0.0.1:{}", self.client[i]);
        let p = format!("http://127.0.0.1:{}", self.peer[i]);
        self.members[i] = Some(
            Command::new("etcd")
                .args(["--name", &format!("e{i}"), "--data-dir"])
                .arg(self.data.path().join(format!("e{i}")))
                .args(["--listen-client-urls", &cl, "--advertise-client-urls", &cl])
                .args([
                    "--listen-peer-urls",
                    &p,
                    "--initial-advertise-peer-urls",
                    &p,
                ])
                .args([
                    "--initial-cluster",
                    &cluster.join(","),
                    "--initial-cluster-state",
                    state,
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("etcd"),
        );
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.client
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    pub fn via(&self, i: usize) -> logagent::etcd::EtcdClient {
        logagent::etcd::EtcdClient::new(logagent::etcd::EtcdSettings {
            endpoints: vec![self.endpoints()[i].clone()],
            timeout: Duration::from_secs(2),
            ..Default::default()
        })
        .unwrap()
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut m) = self.members[i].take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

/// A central-config entry (JSON) for `path` into `topic`, read from its beginning.
pub fn j(path: &str, topic: &str) -> String {
    format!(r#"{{"path":"{path}","topic":"{topic}","from":"beginning"}}"#)
}

/// A central-config list (JSON) of `entries`.
pub fn list(entries: &[String]) -> String {
    format!("[{}]", entries.join(","))
}

/// `logagent <args> -c <cfg>`, run to its end.
pub fn logagent(args: &[&str], cfg: &Path) -> std::process::Output {
    Command::new(agent_bin())
        .args(args)
        .arg("-c")
        .arg(cfg)
        .output()
        .expect("run logagent")
}

/// `etcdctl` against `etcd` (as `user`, if given); panics with its stderr on failure.
pub fn etcdctl(etcd: &Etcd, user: Option<&str>, args: &[&str]) {
    let mut cmd = Command::new("etcdctl");
    cmd.arg(format!("--endpoints={}", etcd.endpoint()))
        .env("ETCDCTL_API", "3");
    if let Some(u) = user {
        cmd.arg(format!("--user={u}"));
    }
    let out = cmd
        .args(args)
        .output()
        .expect("etcdctl (Debian's etcd-client; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The seed of a seeded test: `var` from the environment (decimal or `0x…`), else one
/// from the clock. Printed with the test's name, so a failure can be replayed.
pub fn seed_from_env(test: &str, var: &str) -> u64 {
    let seed = std::env::var(var)
        .map(|s| parse_seed(&s, var))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: {var}={seed:#x} replays this run");
    seed
}

/// The numbers of the lines `0..n` of `tag` that are not among `records`.
pub fn missing(records: &[Record], tag: &str, n: usize) -> Vec<usize> {
    let t = tally(records);
    (0..n)
        .filter(|&i| !t.contains_key(line(tag, i).as_bytes()))
        .collect()
}

/// How many of `records` are lines of a file the agent must never read (the hostile
/// and hardening tests plant files of lines starting with `SECRET`).
pub fn leaked(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| r.payload.starts_with(b"SECRET"))
        .count()
}
