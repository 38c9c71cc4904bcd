//! Central config against a real etcd and a real broker: live start/stop/restart of
//! tailers, bad values, the allow-list, etcd outages, key deletion, status write-back,
//! and the operator commands.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const IP: &str = "10.9.8.7";
const KEY: &str = "/logagent/10.9.8.7/collect_config";
const STATUS_KEY: &str = "/logagent/10.9.8.7/status";

fn central_config(w: &Workdir, broker: &Broker, etcd: &Etcd) -> PathBuf {
    common::central_config(w, broker, etcd, IP, "")
}

/// Broker (with `topic`), etcd, and an agent that has shipped lines 0..10 of `a.log`
/// into `topic`.
fn one_file_shipped(topic: &str) -> (Broker, Etcd, Workdir, PathBuf, PathBuf, Agent) {
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let a = w.path("a.log");
    append_lines(&a, "a", 0..10);
    let cfg = central_config(&w, &broker, &etcd);
    etcd.put(KEY, &list(&[j(&w.p("a.log"), topic)]));
    let agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);
    (broker, etcd, w, a, cfg, agent)
}

#[test]
fn live_changes_start_stop_and_restart_tailers_without_loss() {
    let broker = Broker::start();
    broker.create_topic("t1", 2);
    broker.create_topic("t2", 2);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let (a, b) = (w.path("a.log"), w.path("b.log"));
    append_lines(&a, "a", 0..100);
    append_lines(&b, "b", 0..100);
    let cfg = central_config(&w, &broker, &etcd);
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "t1")]));
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);

    // Add b.
    etcd.put(
        KEY,
        &list(&[j(&w.p("a.log"), "t1"), j(&w.p("b.log"), "t2")]),
    );
    wait_shipped(&w, &agent, &[a.as_path(), b.as_path()]);

    // Remove a: its tailer stops, its offset stays; lines written meanwhile wait.
    etcd.put(KEY, &list(&[j(&w.p("b.log"), "t2")]));
    assert!(
        agent.wait_log("a.log: no longer collected", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&a, "a", 100..200);
    append_lines(&b, "b", 100..200);
    wait_shipped(&w, &agent, &[b.as_path()]);
    assert!(
        !all_shipped(&w, &[a.as_path()]),
        "a removed file is not read"
    );

    // Re-add a: it resumes at its offset, so 100..200 arrive once.
    etcd.put(
        KEY,
        &list(&[j(&w.p("a.log"), "t1"), j(&w.p("b.log"), "t2")]),
    );
    wait_shipped(&w, &agent, &[a.as_path(), b.as_path()]);

    // Change a's topic: restarted at its offset, new lines go to t2.
    etcd.put(
        KEY,
        &list(&[j(&w.p("a.log"), "t2"), j(&w.p("b.log"), "t2")]),
    );
    assert!(
        agent.wait_log("a.log: settings changed", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&a, "a2", 0..100);
    wait_shipped(&w, &agent, &[a.as_path(), b.as_path()]);
    assert!(agent.stop().success());

    let t1 = consume_all(&broker, "t1", 200, SHIP_TIMEOUT);
    assert_exactly_once(&t1, "a", 200);
    let t2 = consume_all(&broker, "t2", 300, SHIP_TIMEOUT);
    assert_exactly_once(&t2, "b", 200);
    assert_exactly_once(&t2, "a2", 100);
}

#[test]
fn bad_values_are_rejected_and_the_last_good_config_keeps_running() {
    let (broker, etcd, w, a, _cfg, mut agent) = one_file_shipped("s2");

    let bad = [
        "this is not json".to_string(),
        r#"[{"path":"relative.log","topic":"s2"}]"#.to_string(),
        format!(r#"[{{"path":"{}","topic":""}}]"#, w.p("a.log")),
        format!(
            r#"[{{"path":"{}","topic":"s2","colour":"red"}}]"#,
            w.p("a.log")
        ),
    ];
    for (i, value) in bad.iter().enumerate() {
        etcd.put(KEY, value);
        let n = i + 1;
        assert!(
            wait_until(SHIP_TIMEOUT, || agent.log().matches("rejected").count()
                >= n),
            "value {value:?} not rejected:\n{}",
            agent.log()
        );
        // The status document tells the operator too.
        assert!(
            wait_until(SHIP_TIMEOUT, || etcd.get(STATUS_KEY).is_some_and(|d| d
                .contains("\"config_error\"")
                && d.contains("rejected"))),
            "status does not show the rejection: {:?}",
            etcd.get(STATUS_KEY)
        );
        append_lines(&a, "a", 10 + i * 10..20 + i * 10);
        wait_shipped(&w, &agent, &[a.as_path()]);
    }
    let log = agent.log();
    assert!(
        log.contains("colour"),
        "the error names the problem:\n{log}"
    );
    assert!(log.contains("keeping its last good value"), "{log}");

    // The allow-list: the entry outside is refused, the rest applied.
    let outside = "/etc/passwd";
    let b = w.path("b.log");
    append_lines(&b, "b", 0..10);
    etcd.put(
        KEY,
        &list(&[
            j(&w.p("a.log"), "s2"),
            j(outside, "s2"),
            j(&w.p("b.log"), "s2"),
        ]),
    );
    assert!(
        agent.wait_log("/etc/passwd refused", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    wait_shipped(&w, &agent, &[a.as_path(), b.as_path()]);

    // The status document tells the operator the same.
    assert!(
        wait_until(SHIP_TIMEOUT, || {
            etcd.get(STATUS_KEY).is_some_and(|s| {
                let v: serde_json::Value = serde_json::from_str(&s).unwrap();
                v["refused"][0]["path"] == outside
                    && v["files"].as_array().is_some_and(|f| {
                        f.len() == 2
                            && f.iter()
                                .all(|f| f["lag_bytes"] == 0 && f["committed"].as_u64() > Some(0))
                    })
            })
        }),
        "status: {:?}",
        etcd.get(STATUS_KEY)
    );
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "s2", 50 + 10, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "a", 50);
    assert_exactly_once(&recs, "b", 10);
    assert!(!recs.iter().any(|r| r.headers["path"] == outside));
}

#[test]
fn etcd_down_at_start_runs_the_cached_config_and_catches_up_later() {
    let (broker, mut etcd, w, a, cfg, mut agent) = one_file_shipped("s3");
    let c = w.path("c.log");
    assert!(agent.stop().success());

    etcd.kill();
    let mut agent = Agent::start(&w, &cfg);
    assert!(
        agent.wait_log("running the cached config", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&a, "a", 10..20);
    wait_shipped(&w, &agent, &[a.as_path()]);

    // etcd returns with a new value: the agent catches up.
    etcd.restart();
    append_lines(&c, "c", 0..10);
    etcd.put(
        KEY,
        &list(&[j(&w.p("a.log"), "s3"), j(&w.p("c.log"), "s3")]),
    );
    wait_shipped(&w, &agent, &[a.as_path(), c.as_path()]);
    assert!(
        agent.log().contains("etcd reachable again"),
        "{}",
        agent.log()
    );

    // Lost while running: keeps going on what it has.
    etcd.kill();
    assert!(
        agent.wait_log("keeping the current config", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&c, "c", 10..20);
    wait_shipped(&w, &agent, &[a.as_path(), c.as_path()]);
    assert!(agent.stop().success());
    let unreachable_lines = agent.log().matches("etcd unreachable").count();
    assert!(
        unreachable_lines <= 2,
        "logged once per state change, not per retry:\n{}",
        agent.log()
    );

    let recs = consume_all(&broker, "s3", 40, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "a", 20);
    assert_exactly_once(&recs, "c", 20);
}

#[test]
fn deleted_key_stops_every_tailer_and_keeps_offsets() {
    let (broker, etcd, w, a, _cfg, mut agent) = one_file_shipped("s4");
    etcd.client().delete(KEY).unwrap();
    assert!(
        agent.wait_log("a.log: no longer collected", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    assert!(agent.log().contains("does not exist (deleted?)"));
    append_lines(&a, "a", 10..20);
    etcd.put(KEY, &list(&[j(&w.p("a.log"), "s4")]));
    wait_shipped(&w, &agent, &[a.as_path()]);
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "s4", 20, SHIP_TIMEOUT), "a", 20);
}

#[test]
fn operator_commands_push_show_and_status() {
    let broker = Broker::start();
    broker.create_topic("t5", 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let cfg = central_config(&w, &broker, &etcd);
    let a = w.path("a.log");
    append_lines(&a, "a", 0..5);

    std::fs::write(w.path("bad.json"), r#"[{"path":"a.log","topic":"t5"}]"#).unwrap();
    let out = logagent(&["config", "push", "--file", &w.p("bad.json")], &cfg);
    assert_eq!(out.status.code(), Some(2), "invalid input: exit 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not absolute"));
    assert_eq!(etcd.get(KEY), None, "nothing written");

    std::fs::write(
        w.path("good.json"),
        list(&[j(&w.p("a.log"), "t5"), j("/etc/shadow", "t5")]),
    )
    .unwrap();
    let out = logagent(
        &["config", "push", "--file", &w.p("good.json"), "--host", IP],
        &cfg,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(KEY) && text.contains("refuses /etc/shadow"),
        "{text}"
    );
    assert!(etcd.get(KEY).is_some());

    let out = logagent(&["config", "show"], &cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("collect: {} -> t", w.p("a.log"))),
        "{text}"
    );
    assert!(text.contains("refuse:  /etc/shadow"), "{text}");

    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);
    let size = std::fs::metadata(&a).unwrap().len().to_string();
    assert!(
        wait_until(SHIP_TIMEOUT, || {
            let out = logagent(&["status"], &cfg);
            let t = String::from_utf8_lossy(&out.stdout).into_owned();
            t.lines()
                .any(|l| l.starts_with(&w.p("a.log")) && l.split_whitespace().nth(2) == Some(&size))
        }),
        "{}",
        String::from_utf8_lossy(&logagent(&["status"], &cfg).stdout)
    );
    assert!(agent.stop().success());
}

#[test]
fn auth_failover_token_expiry_and_clear_errors() {
    // Tokens live 1 s here, so the client has to re-authenticate on its own.
    let etcd = Etcd::start_with("http", &["--auth-token-ttl", "1"], Default::default());
    etcdctl(
        &etcd,
        None,
        &["user", "add", "root", "--new-user-password=s3cret"],
    );
    etcdctl(&etcd, None, &["user", "grant-role", "root", "root"]);
    etcdctl(&etcd, None, &["auth", "enable"]);
    let settings = |user: Option<&str>, pw: &str| logagent::etcd::EtcdSettings {
        // A dead endpoint first: the client must fail over to the live one.
        endpoints: vec![format!("http://127.0.0.1:{}", free_port()), etcd.endpoint()],
        username: user.map(str::to_owned),
        password: Some(pw.to_owned()),
        timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let mut ok = logagent::etcd::EtcdClient::new(settings(Some("root"), "s3cret")).unwrap();
    ok.put("/k", b"v").unwrap();
    assert_eq!(ok.get("/k").unwrap().kv.unwrap().value, b"v");
    assert_eq!(
        ok.endpoint(),
        etcd.endpoint(),
        "sticks to the endpoint that answered"
    );

    let mut wrong = logagent::etcd::EtcdClient::new(settings(Some("root"), "nope")).unwrap();
    let e = wrong.get("/k").unwrap_err().to_string();
    assert!(e.contains("authentication failed"), "{e}");
    let mut anon = logagent::etcd::EtcdClient::new(settings(None, "")).unwrap();
    let e = anon.get("/k").unwrap_err().to_string();
    assert!(e.contains("requires authentication"), "{e}");

    let mut dead = logagent::etcd::EtcdClient::new(logagent::etcd::EtcdSettings {
        endpoints: vec![format!("http://127.0.0.1:{}", free_port())],
        timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    })
    .unwrap();
    let e = dead.get("/k").unwrap_err().to_string();
    assert!(e.contains("unreachable"), "{e}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it.
fn make_pki(dir: &Path) {
    let key = |name: &str| {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        )
    };
    key("ca-key.pem");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca-key.pem",
            "-subj",
            "/CN=test-ca",
            "-days",
            "2",
            "-out",
            "ca.pem",
        ],
    );
    // etcd 3.4's gateway dials its own gRPC port with the server certificate as a
    // client certificate, so the server certificate needs clientAuth too.
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        key(&format!("{name}-key.pem"));
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}-key.pem"),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

#[test]
fn tls_with_ca_and_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let f = |n: &str| pki.path().join(n);
    let s = |n: &str| f(n).to_string_lossy().into_owned();
    let good = logagent::etcd::EtcdSettings {
        ca_file: Some(f("ca.pem")),
        cert_file: Some(f("client.pem")),
        key_file: Some(f("client-key.pem")),
        ..Default::default()
    };
    let etcd = Etcd::start_with(
        "https",
        &[
            "--cert-file",
            &s("server.pem"),
            "--key-file",
            &s("server-key.pem"),
            "--trusted-ca-file",
            &s("ca.pem"),
            "--client-cert-auth",
        ],
        good.clone(),
    );
    etcd.put("/tls", "ok");
    assert_eq!(etcd.get("/tls").as_deref(), Some("ok"));

    // No client certificate: the server refuses the handshake.
    let mut no_cert = logagent::etcd::EtcdClient::new(logagent::etcd::EtcdSettings {
        cert_file: None,
        key_file: None,
        ..etcd.settings.clone()
    })
    .unwrap();
    assert!(no_cert.get("/tls").is_err());
    // The system roots do not know our CA.
    let mut no_ca = logagent::etcd::EtcdClient::new(logagent::etcd::EtcdSettings {
        ca_file: None,
        ..etcd.settings.clone()
    })
    .unwrap();
    assert!(no_ca.get("/tls").is_err());
    // A CA file that holds no certificate is a clear start-up error.
    let e = logagent::etcd::EtcdClient::new(logagent::etcd::EtcdSettings {
        ca_file: Some(f("client.csr")),
        ..etcd.settings.clone()
    })
    .err()
    .expect("bad CA file refused")
    .to_string();
    assert!(e.contains("no certificate"), "{e}");
}

#[test]
fn a_symlink_cannot_lead_out_of_allowed_paths() {
    let (broker, etcd, w, a, _cfg, mut agent) = one_file_shipped("s8");
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.log");
    std::fs::write(&secret, "secret line\n").unwrap();
    std::os::unix::fs::symlink(&secret, w.path("link.log")).unwrap();
    etcd.put(
        KEY,
        &list(&[j(&w.p("a.log"), "s8"), j(&w.p("link.log"), "s8")]),
    );
    assert!(
        agent.wait_log("link.log: resolves to", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&a, "a", 10..20);
    wait_shipped(&w, &agent, &[a.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "s8", 20, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "a", 20);
    assert!(!recs.iter().any(|r| r.payload == b"secret line"));
}

/// etcd processes killed on drop.
#[test]
fn three_member_cluster_agent_fails_over_when_its_member_stops() {
    let broker = Broker::start();
    broker.create_topic("t9", 1);
    let mut cluster = Cluster::start();
    let endpoints = cluster.endpoints();
    let w = Workdir::new();
    let (a, b) = (w.path("a.log"), w.path("b.log"));
    append_lines(&a, "a", 0..10);
    append_lines(&b, "b", 0..10);
    let yaml = format!(
        "kafka:\n  brokers: [\"{}\"]\nagent:\n  data_dir: {}\n  poll_interval_ms: 50\n  checkpoint_interval_ms: 200\n  ip: {IP}\n  allowed_paths: [\"{}/**\"]\netcd:\n  endpoints: [{}]\n  poll_interval_ms: 100\n  timeout_ms: 1000\n",
        broker.addr(),
        w.p("data"),
        w.dir.path().display(),
        endpoints.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", "),
    );
    let cfg = w.path("agent.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    cluster
        .via(1)
        .put(KEY, list(&[j(&w.p("a.log"), "t9")]).as_bytes())
        .unwrap();
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[a.as_path()]);
    // Stop the first member (the agent may talk to it: each host starts with its own
    // member), then change the config. tests/fleet.rs stops each member in turn.
    cluster.kill(0);
    assert!(
        wait_until(SHIP_TIMEOUT, || cluster
            .via(1)
            .put(
                KEY,
                list(&[j(&w.p("a.log"), "t9"), j(&w.p("b.log"), "t9")]).as_bytes()
            )
            .is_ok()),
        "the remaining two members did not accept the write"
    );
    wait_shipped(&w, &agent, &[a.as_path(), b.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "t9", 20, SHIP_TIMEOUT);
    assert_exactly_once(&recs, "a", 10);
    assert_exactly_once(&recs, "b", 10);
}

#[test]
fn key_deleted_and_recreated_reads_what_came_meanwhile_with_from_end() {
    // The defaults an operator gets: no `from`, so `from: end`.
    let broker = Broker::start();
    broker.create_topic("dr", 1);
    let etcd = Etcd::start();
    let w = Workdir::new();
    let a = w.path("a.log");
    append_lines(&a, "old", 0..5);
    let cfg = central_config(&w, &broker, &etcd);
    let entry = list(&[format!(r#"{{"path":"{}","topic":"dr"}}"#, w.p("a.log"))]);
    etcd.put(KEY, &entry);
    let mut agent = Agent::start(&w, &cfg);
    assert!(
        agent.wait_log("following from its end", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&a, "d", 0..10);
    wait_shipped(&w, &agent, &[a.as_path()]);
    etcd.client().delete(KEY).expect("delete the host key");
    assert!(
        agent.wait_log("no longer collected", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    // While the key is gone: the file is rotated, the new one gets 500 lines.
    std::fs::rename(&a, w.path("a.log.1")).unwrap();
    append_lines(&a, "d", 10..510);
    etcd.put(KEY, &entry);
    wait_shipped(&w, &agent, &[a.as_path()]);
    assert!(agent.stop().success());
    assert_exactly_once(&consume_all(&broker, "dr", 510, SHIP_TIMEOUT), "d", 510);
}
