//! Operator surface against a real broker: the metrics endpoint reports what really
//! happened, and health follows the broker.

mod common;

use common::*;

#[test]
fn metrics_match_real_counts_and_health_follows_the_broker() {
    let port = free_port();
    let extra = format!(
        "  metrics_addr: 127.0.0.1:{port}\n  stall_warn_ms: 2000\n  stats_interval_ms: 300\n"
    );
    let OneFile {
        broker,
        w,
        path,
        cfg,
    } = one_file_own("m", 2, "m", 1000, &extra);
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[path.as_path()]);

    let labels = format!("{{path=\"{}\",topic=\"m\"}}", w.p("app.log"));
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(
        wait_until(SHIP_TIMEOUT, || {
            let (_, m) = get(port, "/metrics");
            value(&m, &format!("logagent_lines_acked_total{labels}")) == Some(1000)
        }),
        "{}",
        get(port, "/metrics").1
    );
    let (code, m) = get(port, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        value(&m, &format!("logagent_lines_read_total{labels}")),
        Some(1000)
    );
    assert_eq!(
        value(&m, &format!("logagent_bytes_read_total{labels}")),
        Some(size)
    );
    assert_eq!(
        value(&m, &format!("logagent_bytes_acked_total{labels}")),
        Some(size)
    );
    assert_eq!(value(&m, &format!("logagent_lag_bytes{labels}")), Some(0));
    assert_eq!(value(&m, "logagent_tailers_running"), Some(1));
    for series in [
        "logagent_rotations_total",
        "logagent_truncations_total",
        "logagent_bytes_lost_total",
        "logagent_channel_depth",
        "logagent_kafka_queue_depth",
        "logagent_delivery_errors_total",
        "logagent_records_refused_total",
        "logagent_held_records",
        "logagent_checkpoint_errors_total",
        "logagent_config_revision",
        "logagent_config_rejected_total",
        "logagent_etcd_errors_total",
        "logagent_files_stalled",
    ] {
        assert!(
            m.contains(&format!("# TYPE {series} ")),
            "{series} missing:\n{m}"
        );
    }
    assert_eq!(get(port, "/health").0, 200);
    // The summary line reports the same state.
    assert!(
        agent.wait_log(", lag 0 bytes,", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );

    // Broker frozen with lines waiting: health turns 503 past the threshold…
    broker.freeze();
    append_lines(&path, "m", 1000..1100);
    assert!(
        wait_until(SHIP_TIMEOUT, || get(port, "/health").0 == 503),
        "health did not report the stall"
    );
    // …and back to 200 once deliveries flow again.
    broker.thaw();
    assert!(
        wait_until(SHIP_TIMEOUT, || get(port, "/health").0 == 200),
        "health did not recover"
    );
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "m", 1100, SHIP_TIMEOUT), "m", 1100);
}

#[test]
fn check_config_redacts_secrets() {
    let w = Workdir::new();
    let cfg = w.path("agent.yaml");
    std::fs::write(
        &cfg,
        "kafka:\n  brokers: [\"192.0.2.1:9\"]\n  security:\n    protocol: sasl_plaintext\n    username: k\n    password: kafka-secret\n  properties:\n    sasl.password: prop-sasl-secret\n    ssl.key.password: prop-key-secret\n    sasl.oauthbearer.client.secret: prop-oauth-secret\n    sasl.username: prop-user-name\n    sasl.mechanism: PLAIN\n    linger.ms: \"7\"\netcd:\n  endpoints: [\"http://192.0.2.1:2379\"]\n  username: u\n  password: hunter2\n",
    )
    .unwrap();
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, Some(0), "{err}");
    for secret in [
        "kafka-secret",
        "hunter2",
        "prop-sasl-secret",
        "prop-key-secret",
        "prop-oauth-secret",
        "prop-user-name",
    ] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} printed:\n{out}\n{err}"
        );
    }
    for shown in [
        "sasl.password: <redacted>",
        "ssl.key.password: <redacted>",
        "sasl.oauthbearer.client.secret: <redacted>",
        "sasl.username: <redacted>",
        "sasl.mechanism: PLAIN",
        "linger.ms:",
    ] {
        assert!(out.contains(shown), "{shown} missing:\n{out}");
    }
    // Credentials over plaintext, to Kafka and to etcd (not loopback, 192.0.2.1 is
    // TEST-NET-1): one warning naming both fixes.
    assert_eq!(
        err.matches("warning: credentials travel unencrypted")
            .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("kafka.security.protocol sasl_plaintext with PLAIN sends the password")
            && err.contains("sasl_ssl")
            && err.contains("etcd.endpoints http://192.0.2.1:2379 with etcd.username")
            && err.contains("https://"),
        "{err}"
    );
}

#[test]
fn run_warns_once_when_the_password_would_travel_in_the_clear() {
    let w = Workdir::new();
    // A broker that is not loopback (TEST-NET-1: never answers): the warning is logged
    // at start, before any connection, and only once however long librdkafka retries.
    let cfg = w.config_to(
        "192.0.2.1:9092",
        "  security:\n    protocol: sasl_plaintext\n    sasl_mechanism: PLAIN\n    username: alice\n    password: run-secret\n",
        "  []\n",
        "  shutdown_timeout_ms: 500\n",
    );
    let mut agent = Agent::start(&w, &cfg);
    assert!(agent.wait_started(), "{}", agent.log());
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(agent.stop().success(), "{}", agent.log());
    let log = agent.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("credentials travel unencrypted"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN")
            && warnings[0].contains(
                "sasl_plaintext with PLAIN sends the password in the clear (to 192.0.2.1:9092)"
            )
            && warnings[0].contains("set protocol sasl_ssl"),
        "{log}"
    );
    assert!(!log.contains("run-secret"), "{log}");
}

#[test]
fn a_yaml_error_on_a_secret_line_quotes_no_secret() {
    let w = Workdir::new();
    let cfg = w.path("agent.yaml");
    for (yaml, secret) in [
        // Unterminated quote: the parser stops on the next line and quotes both.
        (
            "kafka:\n  brokers: [\"127.0.0.1:9\"]\n  properties:\n    sasl.password: \"yaml-secret-one\n  linger_ms: 5\n",
            "yaml-secret-one",
        ),
        (
            "kafka:\n  brokers: [\"127.0.0.1:9\"]\n  security:\n    password: yaml-secret-two: x\n",
            "yaml-secret-two",
        ),
        // A misspelt password key is unknown, and its value still hidden.
        (
            "kafka:\n  brokers: [\"127.0.0.1:9\"]\n  security:\n    pasword: yaml-secret-three\n",
            "yaml-secret-three",
        ),
    ] {
        std::fs::write(&cfg, yaml).unwrap();
        let (code, out, err) = check_config(&cfg);
        assert_eq!(code, Some(2), "{out}{err}");
        assert!(err.contains("line "), "no location: {err}");
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} printed:\n{err}"
        );
        assert!(err.contains("<redacted>"), "the line is quoted, hidden: {err}");
    }
}

#[test]
fn a_property_librdkafka_refuses_is_named_without_its_secret() {
    let w = Workdir::new();
    // A misspelt key: librdkafka does not know it, and rdkafka's error echoes the value.
    let cfg = w.config_to(
        "127.0.0.1:9",
        "  properties: {sasl.passwrd: typo-secret-value}\n",
        "  []\n",
        "",
    );
    let mut agent = Agent::start(&w, &cfg);
    let status = agent
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("the agent exits when librdkafka refuses a property");
    let log = agent.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("cannot create Kafka producer") && log.contains("sasl.passwrd"),
        "{log}"
    );
    assert!(!log.contains("typo-secret-value"), "{log}");
}

#[test]
fn install_into_a_destdir_produces_the_expected_tree() {
    let root = tempfile::tempdir().unwrap();
    let run = || {
        std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_logagent")])
            .env("DESTDIR", root.path())
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = |rel: &str| root.path().join(rel);
    use std::os::unix::fs::PermissionsExt;
    let bin = std::fs::metadata(p("usr/local/bin/logagent")).unwrap();
    assert!(
        bin.permissions().mode() & 0o111 != 0,
        "binary is executable"
    );
    assert!(p("var/lib/logagent").is_dir());
    let unit = std::fs::read_to_string(p("etc/systemd/system/logagent.service")).unwrap();
    for directive in [
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/logagent",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(directive), "{directive} missing");
    }
    let yaml = p("etc/logagent/agent.yaml");
    let installed = std::fs::read_to_string(&yaml).unwrap();
    assert!(installed.contains("data_dir: /var/lib/logagent"));
    // The packaged config, not the demo's: no demo address, and placeholders that
    // check-config (and run) refuse by name until they are filled in.
    assert!(!installed.contains("127.0.0.1"), "{installed}");
    let (code, _, err) = check_config(&yaml);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("kafka.brokers, etcd.endpoints still hold the placeholder CHANGE_ME"),
        "{err}"
    );
    let filled = root.path().join("filled.yaml");
    std::fs::write(
        &filled,
        installed.replace("CHANGE_ME", "kafka1.example.com"),
    )
    .unwrap();
    let (code, _, err) = check_config(&filled);
    assert_eq!(
        code,
        Some(0),
        "filled in, the installed config is valid: {err}"
    );
    // A second install keeps the operator's config.
    std::fs::write(&yaml, "# mine\n").unwrap();
    assert!(run().status.success());
    assert_eq!(std::fs::read_to_string(&yaml).unwrap(), "# mine\n");
}
