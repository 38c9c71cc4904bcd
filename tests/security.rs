//! The agent against real Kafka security: SASL (PLAIN, SCRAM-SHA-256/512) over TLS and
//! plaintext, mutual TLS, and what the brokers say when they refuse the agent (a wrong
//! password, a CA that did not sign the brokers, an expired client certificate, an ACL
//! that denies one topic). Every case counts lines in Kafka and reads offsets on disk.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::kafka::Secure;
use common::*;

/// agent.yaml towards `port` with `security` (YAML under `kafka.security:`, indented 4),
/// a metrics port, short retries, and `collect`.
fn config(w: &Workdir, port: u16, metrics: u16, security: &str, collect: &str) -> PathBuf {
    let yaml = format!(
        "kafka:\n  brokers: [\"127.0.0.1:{port}\"]\n  linger_ms: 5\n  entry_retry_ms: 300\n  security:\n{security}agent:\n  data_dir: {}\n  poll_interval_ms: 50\n  checkpoint_interval_ms: 200\n  hostname: testhost\n  metrics_addr: 127.0.0.1:{metrics}\n  shutdown_timeout_ms: 2000\ncollect:\n{collect}",
        w.p("data"),
        collect = if collect.is_empty() { "  []\n" } else { collect },
    );
    let path = w.path("agent.yaml");
    fs::write(&path, yaml).expect("write agent.yaml");
    path
}

/// Writes `n` lines of `tag` into `<tag>.log`, ships them through `security` on `port`,
/// and checks that `topic` holds each exactly once. Returns the agent's log.
fn ships_through(k: &Secure, port: u16, security: &str, topic: &str, tag: &str) -> String {
    k.broker.create_topic(topic, 2);
    let w = Workdir::new();
    let file = w.path(&format!("{tag}.log"));
    append_lines(&file, tag, 0..500);
    let cfg = config(
        &w,
        port,
        free_port(),
        security,
        &beginning_entry(&file.to_string_lossy(), topic),
    );
    let mut agent = Agent::start(&w, &cfg);
    wait_shipped(&w, &agent, &[file.as_path()]);
    append_lines(&file, tag, 500..1_000);
    wait_shipped(&w, &agent, &[file.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    assert_exactly_once(
        &consume_all(&k.broker, topic, 1_000, SHIP_TIMEOUT),
        tag,
        1_000,
    );
    agent.log()
}

/// How often the agent warned that credentials travel unencrypted.
fn plaintext_warnings(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains("credentials travel unencrypted"))
        .count()
}

#[test]
fn sasl_over_tls_and_plaintext_and_mutual_tls_each_ship_every_line_once() {
    let k = Broker::start_secure();
    let ca = k.tls_file("ca.crt");
    let sasl = |protocol: &str, mechanism: &str, tls: bool| {
        let ca_line = if tls {
            format!("    ca_file: {ca}\n")
        } else {
            String::new()
        };
        format!(
            "    protocol: {protocol}\n    sasl_mechanism: {mechanism}\n    username: alice\n    password: alice-secret\n{ca_line}"
        )
    };
    let log = ships_through(
        &k,
        k.sasl_ssl,
        &sasl("sasl_ssl", "SCRAM-SHA-512", true),
        "scram512",
        "s512",
    );
    assert_eq!(plaintext_warnings(&log), 0, "{log}");
    ships_through(
        &k,
        k.sasl_ssl,
        &sasl("sasl_ssl", "SCRAM-SHA-256", true),
        "scram256",
        "s256",
    );
    let log = ships_through(
        &k,
        k.sasl_ssl,
        &sasl("sasl_ssl", "PLAIN", true),
        "plainssl",
        "pssl",
    );
    assert_eq!(plaintext_warnings(&log), 0, "{log}");
    // Over plaintext to a broker on loopback: nothing leaves the host, no warning (the
    // warning towards a remote broker: tests/operate.rs).
    let log = ships_through(
        &k,
        k.sasl_plaintext,
        &sasl("sasl_plaintext", "PLAIN", false),
        "plainplain",
        "pplain",
    );
    assert_eq!(plaintext_warnings(&log), 0, "{log}");
    assert!(!log.contains("alice-secret"), "{log}");
    let log = ships_through(
        &k,
        k.sasl_plaintext,
        &sasl("sasl_plaintext", "SCRAM-SHA-256", false),
        "scramplain",
        "splain",
    );
    assert_eq!(plaintext_warnings(&log), 0, "{log}");
    ships_through(
        &k,
        k.ssl,
        &format!(
            "    protocol: ssl\n    ca_file: {ca}\n    cert_file: {}\n    key_file: {}\n",
            k.tls_file("client.crt"),
            k.tls_file("client.key")
        ),
        "mtls",
        "mtls",
    );
}

/// Registry offsets of the agent's files, summed (0 when none were acknowledged).
fn committed(w: &Workdir) -> u64 {
    registry_entries(w).iter().map(|(_, _, off)| off).sum()
}

/// The agent is refused by the brokers (`cause` in its log, once), stays up, `/health`
/// answers 503 naming the cause, and no offset moves; then `fix` is applied and SIGHUP
/// makes it restart in place and ship everything exactly once.
fn refused_then_fixed(
    k: &Secure,
    port: u16,
    bad: &str,
    cause: &str,
    fix: impl FnOnce(&Workdir) -> String,
    topic: &str,
) {
    k.broker.create_topic(topic, 1);
    let w = Workdir::new();
    let file = w.path("app.log");
    append_lines(&file, "a", 0..300);
    let metrics = free_port();
    let collect = beginning_entry(&file.to_string_lossy(), topic);
    let cfg = config(&w, port, metrics, bad, &collect);
    let mut agent = Agent::start(&w, &cfg);
    assert!(agent.wait_log(cause, SHIP_TIMEOUT), "{}", agent.log());
    assert!(
        wait_until(SHIP_TIMEOUT, || {
            let (code, body) = get(metrics, "/health");
            code == 503 && body.contains(cause)
        }),
        "/health: {:?}",
        get(metrics, "/health")
    );
    assert!(agent.running(), "the agent stays up:\n{}", agent.log());
    assert_eq!(committed(&w), 0, "no offset moved while refused");
    // librdkafka reports the refusal on every reconnect; the log says it once. (The
    // reconnects above took at least the time /health needed to say it.)
    assert_eq!(
        agent.log().matches(cause).count(),
        1,
        "the cause is logged once:\n{}",
        agent.log()
    );

    let security = fix(&w);
    config(&w, port, metrics, &security, &collect);
    agent.signal(libc::SIGHUP);
    assert!(
        agent.wait_log("restarting in place", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    wait_shipped(&w, &agent, &[file.as_path()]);
    append_lines(&file, "a", 300..400);
    wait_shipped(&w, &agent, &[file.as_path()]);
    let (code, _) = get(metrics, "/health");
    assert_eq!(code, 200, "healthy again:\n{}", agent.log());
    assert!(agent.stop().success(), "{}", agent.log());
    assert_exactly_once(&consume_all(&k.broker, topic, 400, SHIP_TIMEOUT), "a", 400);
}

#[test]
fn a_wrong_password_is_named_once_holds_everything_and_a_sighup_after_the_fix_ships_it() {
    let k = Broker::start_secure();
    let ca = k.tls_file("ca.crt");
    let security = |pw_file: &Path| {
        format!(
            "    protocol: sasl_ssl\n    sasl_mechanism: SCRAM-SHA-512\n    username: alice\n    password_file: {}\n    ca_file: {ca}\n",
            pw_file.display()
        )
    };
    let pw = Workdir::new();
    let pw_file = pw.path("kafka-password");
    fs::write(&pw_file, "not-the-password\n").unwrap();
    refused_then_fixed(
        &k,
        k.sasl_ssl,
        &security(&pw_file),
        "refuse the agent's credentials",
        |_| {
            // The same path, rewritten: the operator rotates the file, then SIGHUP.
            fs::write(&pw_file, "alice-secret\n").unwrap();
            security(&pw_file)
        },
        "wrongpw",
    );
}

#[test]
fn a_ca_that_did_not_sign_the_brokers_is_named_and_a_sighup_after_the_fix_ships_it() {
    let k = Broker::start_secure();
    let sec = |ca: &str| {
        format!("    protocol: sasl_ssl\n    sasl_mechanism: SCRAM-SHA-256\n    username: alice\n    password: alice-secret\n    ca_file: {ca}\n")
    };
    let (other, right) = (k.tls_file("other-ca.crt"), k.tls_file("ca.crt"));
    refused_then_fixed(
        &k,
        k.sasl_ssl,
        &sec(&other),
        "TLS with the brokers fails",
        |_| sec(&right),
        "unknownca",
    );
}

#[test]
fn an_expired_client_certificate_is_named_by_check_config_and_at_run() {
    let k = Broker::start_secure();
    let sec = |cert: &str, key: &str| {
        format!(
            "    protocol: ssl\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
            k.tls_file("ca.crt"),
            k.tls_file(cert),
            k.tls_file(key)
        )
    };
    // check-config names the file and the date; then a key that is not the
    // certificate's.
    let w = Workdir::new();
    let check_config = |cert: &str, key: &str| {
        let cfg = config(&w, k.ssl, free_port(), &sec(cert, key), "");
        let out = std::process::Command::new(agent_bin())
            .args(["check-config", "-c"])
            .arg(&cfg)
            .output()
            .expect("run check-config");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check_config("expired.crt", "expired.key");
    assert!(
        !ok && err.contains("kafka.security.cert_file") && err.contains("expired"),
        "{err}"
    );
    let (ok, err) = check_config("client.crt", "expired.key");
    assert!(
        !ok && err.contains("is not the key of the certificate"),
        "{err}"
    );

    // At run: the agent says which file, the brokers refuse the handshake, the agent
    // stays up; a renewed certificate and SIGHUP ship everything.
    refused_then_fixed(
        &k,
        k.ssl,
        &sec("expired.crt", "expired.key"),
        "TLS with the brokers fails",
        |_| sec("client.crt", "client.key"),
        "expiredcert",
    );
}

#[test]
fn an_acl_denying_one_topic_holds_only_that_entry_and_granting_it_ships_what_was_held() {
    let k = Broker::start_secure();
    k.broker.create_topic("denied", 1);
    k.broker.create_topic("open", 1);
    let deny_write = |action: &[&str]| {
        let rule = ["--deny-principal", "User:alice", "--operation", "Write"];
        k.acl(&[action, &rule, &["--topic", "denied"]].concat());
    };
    deny_write(&["--add"]);
    let w = Workdir::new();
    let (d, o) = (w.path("d.log"), w.path("o.log"));
    append_lines(&d, "d", 0..200);
    append_lines(&o, "o", 0..200);
    let metrics = free_port();
    let collect = [
        beginning_entry(&d.to_string_lossy(), "denied"),
        beginning_entry(&o.to_string_lossy(), "open"),
    ]
    .concat();
    let security = format!(
        "    protocol: sasl_ssl\n    sasl_mechanism: SCRAM-SHA-512\n    username: alice\n    password: alice-secret\n    ca_file: {}\n",
        k.tls_file("ca.crt")
    );
    let cfg = config(&w, k.sasl_ssl, metrics, &security, &collect);
    let mut agent = Agent::start(&w, &cfg);
    // The open topic flows while the denied one is held, named in one ERROR.
    wait_shipped(&w, &agent, &[o.as_path()]);
    assert!(
        agent.wait_log("Topic authorization failed", SHIP_TIMEOUT),
        "{}",
        agent.log()
    );
    append_lines(&o, "o", 200..300);
    wait_shipped(&w, &agent, &[o.as_path()]);
    assert!(!all_shipped(&w, &[d.as_path()]), "the denied file is held");
    let held_errors = agent
        .log()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("d.log") && l.contains("authoriz"))
        .count();
    assert_eq!(held_errors, 1, "{}", agent.log());

    deny_write(&["--remove", "--force"]);
    wait_shipped(&w, &agent, &[d.as_path(), o.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    assert_exactly_once(
        &consume_all(&k.broker, "denied", 200, SHIP_TIMEOUT),
        "d",
        200,
    );
    assert_exactly_once(&consume_all(&k.broker, "open", 300, SHIP_TIMEOUT), "o", 300);
}

/// A token endpoint on loopback (client credentials): checks the client's Basic auth
/// and answers RS256 JWTs for `alice`, signed by the key whose JWKS the broker trusts.
/// Returns its URL and how many tokens it handed out.
fn token_endpoint(
    key_pem: &Path,
    secret: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let key = openssl::pkey::PKey::private_key_from_pem(&fs::read(key_pem).unwrap()).unwrap();
    let server = tiny_http::Server::http("127.0.0.1:0").expect("token endpoint");
    let url = format!("http://{}/token", server.server_addr());
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = issued.clone();
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("logagent:{secret}"))
    );
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = String::new();
            let _ = req.as_reader().read_to_string(&mut body);
            let auth = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .map(|h| h.value.to_string());
            if auth.as_deref() != Some(want.as_str())
                || !body.contains("grant_type=client_credentials")
            {
                let _ = req.respond(
                    tiny_http::Response::from_string(r#"{"error":"invalid_client"}"#)
                        .with_status_code(401),
                );
                continue;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let head = b64(br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
            let claims =
                b64(format!(r#"{{"sub":"alice","iat":{now},"exp":{}}}"#, now + 3600).as_bytes());
            let mut signer =
                openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
            signer
                .update(format!("{head}.{claims}").as_bytes())
                .unwrap();
            let jwt = format!("{head}.{claims}.{}", b64(&signer.sign_to_vec().unwrap()));
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = req.respond(tiny_http::Response::from_string(format!(
                r#"{{"access_token":"{jwt}","token_type":"Bearer","expires_in":3600}}"#
            )));
        }
    });
    (url, issued)
}

#[test]
fn oauthbearer_tokens_from_an_oidc_endpoint_ship_every_line_and_a_bad_secret_is_named() {
    let k = Broker::start_secure();
    let (url, issued) = token_endpoint(&k.tls.join("jwt.key"), "oidc-secret");
    let oauth = |secret: &str| {
        format!(
            "    protocol: sasl_plaintext\n    sasl_mechanism: OAUTHBEARER\n    oauth:\n      token_endpoint_url: {url}\n      client_id: logagent\n      client_secret: {secret}\n"
        )
    };
    // A wrong secret: the endpoint says no, the agent names it once and holds.
    refused_then_fixed(
        &k,
        k.oauth,
        &oauth("wrong"),
        "the agent gets no OAUTHBEARER token",
        |_| oauth("oidc-secret"),
        "oauthfix",
    );
    assert!(issued.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    ships_through(&k, k.oauth, &oauth("oidc-secret"), "oauth", "oauth");
}

#[test]
fn a_user_created_on_the_brokers_after_the_agent_started_clears_the_refusal_without_a_signal() {
    let k = Broker::start_secure();
    k.broker.create_topic("lateuser", 1);
    let w = Workdir::new();
    let file = w.path("app.log");
    fs::write(&file, "").unwrap();
    let metrics = free_port();
    let security = format!(
        "    protocol: sasl_ssl\n    sasl_mechanism: SCRAM-SHA-512\n    username: bob\n    password: bob-secret\n    ca_file: {}\n",
        k.tls_file("ca.crt")
    );
    let cfg = config(
        &w,
        k.sasl_ssl,
        metrics,
        &security,
        &beginning_entry(&file.to_string_lossy(), "lateuser"),
    );
    let mut agent = Agent::start(&w, &cfg);
    // bob does not exist yet: refused, with nothing to send.
    assert!(
        wait_until(SHIP_TIMEOUT, || get(metrics, "/health").0 == 503),
        "{}",
        agent.log()
    );
    // The operator creates the user on the brokers; no SIGHUP. An idle agent asks
    // again by itself and is healthy once the brokers answer.
    k.scram_user("bob", "bob-secret");
    assert!(
        wait_until(SHIP_TIMEOUT, || get(metrics, "/health").0 == 200),
        "{}",
        agent.log()
    );
    append_lines(&file, "b", 0..50);
    wait_shipped(&w, &agent, &[file.as_path()]);
    assert!(agent.stop().success(), "{}", agent.log());
    assert_exactly_once(
        &consume_all(&k.broker, "lateuser", 50, SHIP_TIMEOUT),
        "b",
        50,
    );
}
