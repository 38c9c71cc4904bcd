//! Real Apache Kafka for the tests: `scripts/kafka.sh run` (the one harness, also used by
//! the demo and the benchmark) under a small supervisor, on free loopback ports.
//!
//! - [`Broker::start`] hands out the test binary's **shared** single-node broker: a JVM
//!   takes seconds to start, so every test that only produces and consumes uses it, each
//!   with its own topics ([`Broker::create_topic`] panics on a name already taken, so two
//!   tests cannot count each other's lines).
//! - [`Broker::start_own`] starts a broker for one test: one it freezes, or one behind a
//!   relay ([`Broker::start_behind`]), or one with security listeners
//!   ([`Broker::start_with`]).
//! - [`KafkaCluster`] is three combined nodes (replication factor 3, `min.insync.replicas`
//!   2) for failover.
//!
//! Every broker runs as `bash kafka.sh run` → `java`; the bash supervisor kills the JVM
//! and removes the data dir when it gets SIGTERM, and gets SIGTERM from the kernel when
//! the test process dies (`PR_SET_PDEATHSIG`), so no broker outlives its tests.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::{free_port, signal, wait_stopped, wait_until};

/// How long a broker may take to start (a JVM on a busy 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// `scripts/kafka.sh` of this checkout.
pub fn kafka_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

/// How one broker node is started.
#[derive(Default, Clone)]
pub struct NodeSpec {
    pub node_id: u32,
    pub port: u16,
    pub ctrl_port: u16,
    /// `controller.quorum.voters` (default: this node alone).
    pub voters: Option<String>,
    /// The PLAINTEXT listener's advertised port (a relay's), if not its own.
    pub advertised: Option<u16>,
    pub cluster_id: Option<String>,
    /// Lines appended to server.properties (later keys win).
    pub extra_props: String,
    /// Extra `StorageTool format` arguments (SCRAM users).
    pub format_args: Vec<String>,
    /// Also the SASL_PLAINTEXT, SASL_SSL and SSL listeners, users, certificates and the
    /// StandardAuthorizer (`KAFKA_SECURE=1` of scripts/kafka.sh).
    pub secure: bool,
}

/// One broker process (bash supervisor + JVM) and its data dir.
struct Node {
    child: Child,
    dir: PathBuf,
    /// Remove `dir` when the node is dropped (a cluster keeps its nodes' dirs across
    /// restarts).
    owns_dir: bool,
    port: u16,
}

impl Node {
    /// Starts a node in a fresh temp dir.
    fn spawn(spec: &NodeSpec) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("logagent-kafka")
            .tempdir()
            .expect("kafka tempdir")
            .keep();
        let mut n = Node::spawn_in(spec, dir, true);
        n.owns_dir = true;
        n
    }

    /// Starts a node in `dir` (formatted on first use, kept afterwards).
    /// `rm_on_exit`: the supervisor removes `dir` when it stops.
    fn spawn_in(spec: &NodeSpec, dir: PathBuf, rm_on_exit: bool) -> Node {
        fs::create_dir_all(&dir).expect("kafka node dir");
        if !spec.extra_props.is_empty() {
            fs::write(dir.join("extra.properties"), &spec.extra_props).expect("extra props");
        }
        let mut cmd = Command::new("bash");
        cmd.arg(kafka_sh())
            .arg("run")
            .arg(&dir)
            .env("KAFKA_SUPERVISE", if rm_on_exit { "rm" } else { "keep" })
            .env("KAFKA_NODE_ID", spec.node_id.max(1).to_string())
            .env("KAFKA_PORT", spec.port.to_string())
            .env("KAFKA_CTRL_PORT", spec.ctrl_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(v) = &spec.voters {
            cmd.env("KAFKA_VOTERS", v);
        }
        if let Some(a) = spec.advertised {
            cmd.env("KAFKA_ADVERTISED_PORT", a.to_string());
        }
        if let Some(c) = &spec.cluster_id {
            cmd.env("KAFKA_CLUSTER_ID", c);
        }
        if !spec.extra_props.is_empty() {
            cmd.env("KAFKA_EXTRA_PROPS", dir.join("extra.properties"));
        }
        if !spec.format_args.is_empty() {
            cmd.env("KAFKA_FORMAT_ARGS", spec.format_args.join(" "));
        }
        if spec.secure {
            cmd.env("KAFKA_SECURE", "1");
        }
        // SAFETY: prctl in the child between fork and exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("run scripts/kafka.sh (bash)");
        Node {
            child,
            dir,
            owns_dir: false,
            port: spec.port,
        }
    }

    /// Waits until the broker listens (Kafka binds a fixed port only once it is ready).
    fn wait_ready(&mut self) {
        let addr = format!("127.0.0.1:{}", self.port);
        let ok = wait_until(START_TIMEOUT, || {
            std::net::TcpStream::connect(&addr).is_ok()
                || self.child.try_wait().ok().flatten().is_some()
        });
        if !ok || self.child.try_wait().ok().flatten().is_some() {
            panic!("Kafka did not start on {addr}:\n{}", self.log_tail());
        }
    }

    fn log_tail(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let out = read("server.out") + &read("format.out");
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The JVM's pid (the supervisor writes it before starting the JVM).
    fn java_pid(&self) -> u32 {
        let mut pid = None;
        wait_until(Duration::from_secs(30), || {
            pid = fs::read_to_string(self.dir.join("java.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        });
        pid.expect("kafka.sh wrote java.pid")
    }

    /// SIGKILL of the JVM (a crash); the supervisor exits with it.
    fn kill9(&mut self) {
        signal(self.java_pid(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGTERM to the supervisor: it SIGKILLs the JVM (frozen or not) and, for a
            // shared broker whose owner never drops it, removes the data dir.
            signal(self.child.id(), libc::SIGTERM);
            let _ = self.child.wait();
        }
        if self.owns_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Kafka broker for a test: the shared one or one of its own.
pub struct Broker {
    node: Option<Node>,
    /// How an own broker was started (for [`Broker::restart`]).
    spec: Option<NodeSpec>,
    /// Its PLAINTEXT port on 127.0.0.1.
    pub port: u16,
}

/// The shared broker: started by a thread that lives as long as the test process, so
/// that PR_SET_PDEATHSIG (which follows the spawning *thread*) fires only at exit.
static SHARED: OnceLock<u16> = OnceLock::new();

impl Broker {
    /// The test binary's shared single-node broker (started on first use).
    pub fn start() -> Broker {
        let port = *SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let port = free_port();
                let mut node = Node::spawn(&NodeSpec {
                    port,
                    ctrl_port: free_port(),
                    ..NodeSpec::default()
                });
                node.wait_ready();
                let _ = tx.send(port);
                // Keep the node (and this thread) until the process exits.
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("the shared Kafka broker started")
        });
        Broker {
            node: None,
            spec: None,
            port,
        }
    }

    /// A single-node broker of this test's own (it may freeze or kill it).
    pub fn start_own() -> Broker {
        Broker::start_with(NodeSpec::default())
    }

    /// A broker that advertises `advertised` (a relay's port) instead of its own.
    pub fn start_behind(advertised: u16) -> Broker {
        Broker::start_with(NodeSpec {
            advertised: Some(advertised),
            ..NodeSpec::default()
        })
    }

    /// A broker of this test's own; ports left 0 in `spec` are picked here.
    pub fn start_with(mut spec: NodeSpec) -> Broker {
        if spec.port == 0 {
            spec.port = free_port();
        }
        if spec.ctrl_port == 0 {
            spec.ctrl_port = free_port();
        }
        let mut node = Node::spawn(&spec);
        node.wait_ready();
        Broker {
            port: spec.port,
            node: Some(node),
            spec: Some(spec),
        }
    }

    /// SIGKILL of the broker's JVM (a crash); its data dir stays for [`Broker::restart`].
    pub fn kill9(&mut self) {
        self.node
            .as_mut()
            .expect("this test kills its broker: start it with Broker::start_own()")
            .kill9();
    }

    /// Starts a killed broker again on its ports and data dir; returns once it listens.
    pub fn restart(&mut self) {
        let mut old = self.node.take().expect("an own broker");
        old.owns_dir = false;
        let dir = old.dir.clone();
        drop(old);
        let spec = self.spec.as_ref().expect("an own broker");
        let mut n = Node::spawn_in(spec, dir, true);
        n.owns_dir = true;
        n.wait_ready();
        self.node = Some(n);
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An admin client on the PLAINTEXT listener.
    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        admin(&self.addr())
    }

    /// Creates a topic with `partitions` partitions (replication factor 1). Panics if the
    /// topic exists: on the shared broker a name must be one test's alone.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        create_topic(&self.addr(), name, partitions, 1, &[]);
    }

    /// Creates a topic; an error (it exists, or its deletion is still going on) is
    /// returned, not a panic.
    pub fn try_create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let r = futures_executor::block_on(self.admin().create_topics([&t], &opts))
            .map_err(|e| e.to_string())?;
        r.into_iter()
            .try_for_each(|x| x.map(|_| ()).map_err(|(t, e)| format!("{t}: {e}")))
    }

    /// Creates a topic with topic-level configs (e.g. `max.message.bytes`).
    pub fn create_topic_with(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        create_topic(&self.addr(), name, partitions, 1, configs);
    }

    /// Deletes a topic (waits for the answer).
    pub fn delete_topic(&self, name: &str) {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let r = futures_executor::block_on(self.admin().delete_topics(&[name], &opts))
            .expect("delete_topics");
        for x in r {
            x.unwrap_or_else(|(t, e)| panic!("delete topic {t}: {e}"));
        }
    }

    /// Grows `name` to `total` partitions.
    pub fn add_partitions(&self, name: &str, total: usize) {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let r = futures_executor::block_on(
            self.admin()
                .create_partitions(&[NewPartitions::new(name, total)], &opts),
        )
        .expect("create_partitions");
        for x in r {
            x.unwrap_or_else(|(t, e)| panic!("add partitions to {t}: {e}"));
        }
    }

    /// Sets a topic config (`max.message.bytes`, ...).
    pub fn alter_topic(&self, name: &str, key: &str, value: &str) {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let cfg = AlterConfig::new(ResourceSpecifier::Topic(name)).set(key, value);
        let r = futures_executor::block_on(self.admin().alter_configs(&[cfg], &opts))
            .expect("alter_configs");
        for x in r {
            x.unwrap_or_else(|(t, e)| panic!("alter topic {t:?}: {e}"));
        }
    }

    /// A topic config's value (`cleanup.policy`, ...), `None` if the topic or key is
    /// unknown.
    pub fn topic_config(&self, name: &str, key: &str) -> Option<String> {
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        let r = futures_executor::block_on(
            self.admin()
                .describe_configs([&ResourceSpecifier::Topic(name)], &opts),
        )
        .ok()?;
        r.into_iter()
            .next()?
            .ok()?
            .get(key)
            .and_then(|e| e.value.clone())
    }

    /// What Kafka's own Java console consumer prints of `topic` (one payload per
    /// line), reading from the beginning with `isolation` (`read_committed` or
    /// `read_uncommitted`) until nothing arrives for 10 s: a consumer written by someone
    /// else than the agent's authors.
    pub fn java_consume(&self, topic: &str, isolation: &str) -> Vec<String> {
        let out = Command::new("bash")
            .arg(kafka_sh())
            .args([
                "tool",
                "org.apache.kafka.tools.consumer.ConsoleConsumer",
                "--bootstrap-server",
                &self.addr(),
                "--topic",
                topic,
                "--from-beginning",
                "--isolation-level",
                isolation,
                "--timeout-ms",
                "10000",
            ])
            .output()
            .expect("run Kafka's ConsoleConsumer");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn own(&self) -> &Node {
        self.node
            .as_ref()
            .expect("this test stops or freezes its broker: start it with Broker::start_own()")
    }

    /// SIGSTOP: the broker stops answering but keeps its sockets open (returns once
    /// every thread is stopped).
    pub fn freeze(&self) {
        let pid = self.own().java_pid();
        signal(pid, libc::SIGSTOP);
        wait_stopped(pid);
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        signal(self.own().java_pid(), libc::SIGCONT);
    }

    /// The broker's own log (for failure messages).
    pub fn log(&self) -> String {
        self.node.as_ref().map(Node::log_tail).unwrap_or_default()
    }

    /// A broker of the test's own with every security listener (see [`Secure`]).
    pub fn start_secure() -> Secure {
        let broker = Broker::start_with(NodeSpec {
            secure: true,
            ..NodeSpec::default()
        });
        let dir = broker.own().dir.clone();
        let ports = fs::read_to_string(dir.join("ports")).expect("kafka.sh wrote ports");
        let port = |name: &str| -> u16 {
            ports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no {name} port in {ports:?}"))
        };
        Secure {
            sasl_plaintext: port("SASL_PLAINTEXT"),
            sasl_ssl: port("SASL_SSL"),
            ssl: port("SSL"),
            oauth: port("OAUTH"),
            tls: dir.join("tls"),
            broker,
        }
    }
}

/// A broker with security listeners, made by `scripts/kafka.sh` (`KAFKA_SECURE=1`):
/// users `alice`/`alice-secret` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and `admin`
/// (super user); the SSL listener requires a client certificate; ACLs by the
/// StandardAuthorizer, a resource without ACLs open to everyone. The PLAINTEXT listener
/// ([`Broker::addr`]) is the super-user admin door the tests consume through.
pub struct Secure {
    pub broker: Broker,
    pub sasl_plaintext: u16,
    pub sasl_ssl: u16,
    pub ssl: u16,
    /// SASL_PLAINTEXT with OAUTHBEARER: RS256 JWTs signed by `tls/jwt.key` (kid `k1`).
    pub oauth: u16,
    /// `ca.crt`, `client.crt`/`client.key`, `expired.crt`/`expired.key`, `other-ca.crt`,
    /// `jwt.key`.
    pub tls: PathBuf,
}

impl Secure {
    /// A file in the certificate directory.
    pub fn tls_file(&self, name: &str) -> String {
        self.tls.join(name).to_string_lossy().into_owned()
    }

    /// Creates (or changes) a SCRAM-SHA-512 user through the admin listener.
    pub fn scram_user(&self, name: &str, password: &str) {
        let config = format!("SCRAM-SHA-512=[password={password}]");
        self.tool(
            "kafka.admin.ConfigCommand",
            &["--alter", "--entity-type", "users", "--entity-name", name]
                .into_iter()
                .chain(["--add-config", &config])
                .collect::<Vec<_>>(),
        );
    }

    /// Runs Kafka's AclCommand through the admin listener (e.g. `--add --deny-principal
    /// User:alice --operation Write --topic t`).
    pub fn acl(&self, args: &[&str]) {
        self.tool("org.apache.kafka.tools.AclCommand", args);
    }

    /// Runs one of Kafka's tools against the admin listener; panics with its output if
    /// it fails.
    fn tool(&self, class: &str, args: &[&str]) {
        let out = Command::new("bash")
            .arg(kafka_sh())
            .args(["tool", class, "--bootstrap-server", &self.broker.addr()])
            .args(args)
            .output()
            .expect("run a Kafka tool");
        assert!(
            out.status.success(),
            "{class} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An admin client for `bootstrap` (PLAINTEXT).
pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("kafka admin client")
}

/// Creates `name` on the cluster at `bootstrap`; panics on any error, an existing topic
/// included.
pub fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
) {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let r = futures_executor::block_on(admin(bootstrap).create_topics([&t], &opts))
        .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
    for x in r {
        x.unwrap_or_else(|(t, e)| {
            panic!("create topic {t}: {e} (on the shared broker a topic name must be one test's alone)")
        });
    }
}

/// Three combined broker+controller nodes: replication factor 3, `min.insync.replicas`
/// 2, fast failure detection. Nodes are numbered 1..=3.
pub struct KafkaCluster {
    /// Dropped first (fields drop in order): the JVMs stop before `root` goes.
    nodes: Vec<Option<Node>>,
    root: tempfile::TempDir,
    specs: Vec<NodeSpec>,
    pub ports: Vec<u16>,
}

impl KafkaCluster {
    pub fn start() -> KafkaCluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let ctrl: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let voters = (0..3)
            .map(|i| format!("{}@127.0.0.1:{}", i + 1, ctrl[i]))
            .collect::<Vec<_>>()
            .join(",");
        let props = "default.replication.factor=3\nmin.insync.replicas=2\n\
            offsets.topic.replication.factor=3\ntransaction.state.log.replication.factor=3\n\
            transaction.state.log.min.isr=2\nbroker.heartbeat.interval.ms=500\n\
            broker.session.timeout.ms=3000\nreplica.lag.time.max.ms=5000\n\
            auto.leader.rebalance.enable=false\ncontrolled.shutdown.enable=false\n";
        let specs: Vec<NodeSpec> = (0..3)
            .map(|i| NodeSpec {
                node_id: i as u32 + 1,
                port: ports[i],
                ctrl_port: ctrl[i],
                voters: Some(voters.clone()),
                cluster_id: Some("logagent-test-cluster-3".into()),
                extra_props: props.into(),
                ..NodeSpec::default()
            })
            .collect();
        let root = tempfile::Builder::new()
            .prefix("logagent-kafka3")
            .tempdir()
            .expect("cluster tempdir");
        // All three at once: each node's start-up waits for the quorum.
        let mut nodes: Vec<Node> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Node::spawn_in(s, root.path().join(format!("n{}", i + 1)), false))
            .collect();
        for n in &mut nodes {
            n.wait_ready();
        }
        let c = KafkaCluster {
            root,
            nodes: nodes.into_iter().map(Some).collect(),
            specs,
            ports,
        };
        let all = c.bootstrap();
        assert!(
            wait_until(START_TIMEOUT, || {
                admin(&all)
                    .inner()
                    .fetch_metadata(None, Duration::from_secs(5))
                    .is_ok_and(|m| m.brokers().len() == 3)
            }),
            "the three brokers did not all register"
        );
        c
    }

    /// Every node's address, comma separated.
    pub fn bootstrap(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The addresses of the nodes still running.
    pub fn live_bootstrap(&self) -> String {
        self.nodes
            .iter()
            .zip(&self.ports)
            .filter(|(n, _)| n.is_some())
            .map(|(_, p)| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A topic with replication factor 3.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        create_topic(&self.live_bootstrap(), name, partitions, 3, &[]);
    }

    /// The node id (1..=3) leading `topic`'s `partition`.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let md = admin(&self.live_bootstrap())
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()?;
        let t = md.topics().iter().find(|t| t.name() == topic)?;
        let p = t.partitions().iter().find(|p| p.id() == partition)?;
        (p.leader() >= 1).then_some(p.leader())
    }

    /// SIGKILL of node `id` (1..=3).
    pub fn kill9(&mut self, id: i32) {
        if let Some(mut n) = self.nodes[(id - 1) as usize].take() {
            n.kill9();
        }
    }

    /// Starts node `id` again on its ports and data dir.
    pub fn restart(&mut self, id: i32) {
        let i = (id - 1) as usize;
        assert!(self.nodes[i].is_none(), "node {id} is running");
        let dir = self.root.path().join(format!("n{}", i + 1));
        let mut n = Node::spawn_in(&self.specs[i], dir, false);
        n.wait_ready();
        self.nodes[i] = Some(n);
    }
}
