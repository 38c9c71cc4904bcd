//! Content options of a collect entry against the real broker (issue 12): GBK and
//! UTF-16LE files arrive as the same text in UTF-8; `include_lines` / `exclude_lines` ship exactly
//! the kept lines, count the rest, and commit past them (a restart reads nothing
//! again); the JSON envelope parses and carries `fields`; bad options are refused with
//! an error naming them.

mod common;

use std::fs;
use std::io::Write;

use common::*;

fn entry_with(path: &str, topic: &str, options: &str) -> String {
    format!("  - path: {path}\n    topic: {topic}\n    from: beginning\n{options}")
}

fn start(
    topic: &str,
    options: &str,
) -> (Broker, Workdir, std::path::PathBuf, std::path::PathBuf, u16) {
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    let w = Workdir::new();
    let path = w.path("app.log");
    fs::write(&path, "").unwrap();
    let port = free_port();
    let cfg = w.config(
        &broker,
        &entry_with(&w.p("app.log"), topic, options),
        &format!("  metrics_addr: 127.0.0.1:{port}\n"),
    );
    (broker, w, path, cfg, port)
}

fn append(path: &std::path::Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn a_gbk_file_arrives_as_the_same_text_in_utf8_and_bad_bytes_are_counted() {
    let (broker, w, path, cfg, port) = start("gbk", "    encoding: gbk\n");
    let texts: Vec<String> = (0..300)
        .map(|i| format!("{i:04} 错误：数据库连接失败，重试第{i}次 (订单服务)"))
        .collect();
    let mut bytes = Vec::new();
    for t in &texts {
        let (b, _, bad) = encoding_rs::GBK.encode(t);
        assert!(!bad);
        bytes.extend_from_slice(&b);
        bytes.push(b'\n');
    }
    // One byte GBK cannot decode (0xFF), in the last line.
    bytes.extend_from_slice(b"0300 broken \xff end\n");
    append(&path, &bytes);
    let mut agent = Agent::start(&w, &cfg);
    let recs = consume_all(&broker, "gbk", 301, SHIP_TIMEOUT);
    wait_shipped(&w, &agent, &[path.as_path()]);
    let labels = format!("{{path=\"{}\",topic=\"gbk\"}}", w.p("app.log"));
    assert_eq!(
        metric(port, &format!("logagent_chars_replaced_total{labels}")),
        Some(1)
    );
    assert!(agent.stop().success());
    let got: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).expect("UTF-8"))
        .collect();
    let mut want = texts.clone();
    want.push("0300 broken \u{FFFD} end".into());
    assert_eq!(got, want);
    // The offset header is where the line starts in the GBK file.
    let second = recs[1].headers.get("offset").cloned();
    let first_len = encoding_rs::GBK.encode(&texts[0]).0.len() + 1;
    assert_eq!(second, Some(first_len.to_string()));
}

#[test]
fn a_utf16le_file_with_a_bom_arrives_as_the_same_text_in_utf8() {
    let (broker, w, path, cfg, _) = start("u16", "    encoding: utf-16le\n");
    // U+0A0D is 0D 0A in UTF-16LE and U+010A is 0A 01: bytes 0x0A that are no newline.
    let texts: Vec<String> = (0..200)
        .map(|i| format!("{i:04} Ошибка \u{0A0D}\u{010A} 错误 ✓"))
        .collect();
    let mut bytes = vec![0xFF, 0xFE];
    for t in &texts {
        for u in t.encode_utf16().chain("\n".encode_utf16()) {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
    }
    // Written in two parts cut at an odd byte: the half code unit waits for its other half.
    let cut = (bytes.len() / 2) | 1;
    append(&path, &bytes[..cut]);
    let mut agent = Agent::start(&w, &cfg);
    assert!(agent.wait_started(), "{}", agent.log());
    append(&path, &bytes[cut..]);
    let recs = consume_all(&broker, "u16", texts.len(), SHIP_TIMEOUT);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    let got: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).expect("UTF-8"))
        .collect();
    assert_eq!(got, texts);
}

#[test]
fn filters_ship_exactly_the_kept_lines_count_the_rest_and_commit_past_them() {
    let options = "    include_lines: ['^ERROR', '^WARN']\n    exclude_lines: ['healthcheck']\n";
    let (broker, w, path, cfg, port) = start("flt", options);
    let kind = |i: usize| match i % 5 {
        0 => "ERROR",
        1 => "WARN",
        2 => "WARN healthcheck",
        _ => "INFO",
    };
    let text = |i: usize| format!("{} line {i:06}", kind(i));
    let kept = |i: usize| matches!(i % 5, 0 | 1);
    let mut body = String::new();
    for i in 0..1000 {
        body.push_str(&text(i));
        body.push('\n');
    }
    append(&path, body.as_bytes());
    let mut agent = Agent::start(&w, &cfg);
    let want1 = (0..1000).filter(|&i| kept(i)).count();
    let recs = consume_all(&broker, "flt", want1, SHIP_TIMEOUT);
    // The last lines are filtered (INFO): the offset still reaches the end of the file.
    wait_shipped(&w, &agent, &[path.as_path()]);
    let labels = format!("{{path=\"{}\",topic=\"flt\"}}", w.p("app.log"));
    assert_eq!(
        metric(port, &format!("logagent_lines_filtered_total{labels}")),
        Some(1000 - want1 as u64)
    );
    assert!(agent.stop().success());
    // Restarted, with more lines: nothing is read again, the new kept lines arrive.
    let mut more = String::new();
    for i in 1000..1500 {
        more.push_str(&text(i));
        more.push('\n');
    }
    append(&path, more.as_bytes());
    let mut agent = Agent::start(&w, &cfg);
    let want = (0..1500).filter(|&i| kept(i)).count();
    let recs2 = consume_all(&broker, "flt", want, SHIP_TIMEOUT);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    assert_eq!(recs.len(), want1);
    let got: Vec<String> = recs2
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..1500).filter(|&i| kept(i)).map(text).collect();
    assert_eq!(got, expected, "exactly the kept lines, once each, in order");
}

#[test]
fn the_json_envelope_parses_and_carries_fields() {
    let options = "    format: json\n    fields: {env: prod, service: payments}\n";
    let (broker, w, path, cfg, _) = start("json", options);
    append(&path, b"plain line\nwith \"quotes\" and \\ and \ttab\n");
    let mut agent = Agent::start(&w, &cfg);
    let recs = consume_all(&broker, "json", 2, SHIP_TIMEOUT);
    wait_shipped(&w, &agent, &[path.as_path()]);
    assert!(agent.stop().success());
    assert_eq!(recs.len(), 2);
    let v: Vec<serde_json::Value> = recs
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("a JSON record"))
        .collect();
    assert_eq!(v[0]["message"], "plain line");
    assert_eq!(v[1]["message"], "with \"quotes\" and \\ and \ttab");
    assert_eq!(v[0]["offset"], 0);
    assert_eq!(v[1]["offset"], 11);
    assert_eq!(v[1]["path"], w.p("app.log"));
    assert_eq!(v[0]["fields"]["env"], "prod");
    assert_eq!(v[0]["fields"]["service"], "payments");
    assert!(v[0]["host"].as_str().is_some_and(|h| !h.is_empty()));
    let ts = v[0]["@timestamp"].as_str().unwrap_or_default();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
    // The headers are as for raw records.
    assert_eq!(
        recs[1].headers.get("offset").map(String::as_str),
        Some("11")
    );
}

#[test]
fn bad_content_options_are_refused_with_an_error_naming_them() {
    for (options, says) in [
        ("    encoding: klingon\n", "encoding \"klingon\""),
        (
            "    include_lines: ['(unclosed']\n",
            "include_lines regex \"(unclosed\"",
        ),
        ("    fields: {a: b}\n", "`fields` needs `format: json`"),
        // Each compiles alone; as the one set the agent builds, it is too large.
        (
            "    exclude_lines: ['SECRET', '\\w{200}a', '\\w{200}b']\n",
            "the list as one set",
        ),
        ("    format: yaml\n", "format"),
    ] {
        let w = Workdir::new();
        let cfg = w.path("agent.yaml");
        fs::write(
            &cfg,
            format!(
                "kafka:\n  brokers: [\"127.0.0.1:9\"]\nagent:\n  data_dir: {}\ncollect:\n{}",
                w.p("data"),
                entry_with(&w.p("app.log"), "t", options)
            ),
        )
        .unwrap();
        let out = std::process::Command::new(agent_bin())
            .args(["check-config", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{options} accepted");
        assert!(err.contains(says), "{options}: {err}");
    }
}

/// A Java stack trace (with `Caused by:`), a Python traceback or a one-line event,
/// picked by `rng`; the event's first line starts with a timestamp, the others do not.
fn random_event(rng: &mut Rng, n: usize) -> Vec<String> {
    let head = format!("2026-12-01 10:{:02}:{:02},{n:06} ", n / 60 % 60, n % 60);
    match rng.below(3) {
        0 => {
            let mut v = vec![
                format!("{head}ERROR [main] o.e.Service - request {n} failed"),
                format!("java.lang.IllegalStateException: order {n} is closed"),
            ];
            for i in 0..1 + rng.below(6) {
                v.push(format!(
                    "\tat com.shop.Orders.close(Orders.java:{})",
                    100 + i
                ));
            }
            v.push(format!("Caused by: java.sql.SQLException: lock {n}"));
            v.push("\t... 12 more".into());
            v
        }
        1 => {
            let mut v = vec![
                format!("{head}ERROR worker {n}"),
                "Traceback (most recent call last):".into(),
            ];
            for i in 0..1 + rng.below(3) {
                v.push(format!(
                    "  File \"/srv/app/jobs.py\", line {}, in run",
                    10 + i
                ));
                v.push(format!("    handle(job_{n})"));
            }
            v.push(format!("KeyError: 'job_{n}'"));
            v
        }
        _ => vec![format!("{head}INFO request {n} done")],
    }
}

/// Seeded: events written in random pieces (an event often in two halves, with a pause
/// between), the agent SIGKILLed once with half an event written, a real logrotate
/// rename rotation between two events. Every record must be exactly one whole event;
/// every event must arrive (a SIGKILL may repeat events, never cut them).
#[test]
fn multiline_events_arrive_whole_across_split_writes_a_sigkill_and_a_rotation() {
    let seed = seed_from_env("multiline", "LOGAGENT_MULTILINE_SEED");
    let mut rng = Rng(seed);
    let options = "    multiline:\n      start: '^\\d{4}-\\d{2}-\\d{2} '\n      timeout_ms: 3000\n";
    let (broker, w, path, cfg, _) = start("ml", options);
    let events: Vec<Vec<String>> = (0..120).map(|n| random_event(&mut rng, n)).collect();
    let text = |e: &Vec<String>| e.join("\n");
    let kill_at = 30 + rng.below(30) as usize;
    let rotate_at = 70 + rng.below(30) as usize;
    let mut agent = Agent::start(&w, &cfg);
    assert!(agent.wait_started(), "{}", agent.log());
    for (n, e) in events.iter().enumerate() {
        if n == rotate_at {
            // Between two events: the old file's last event is flushed when it is done
            // with, never merged with the new file's first.
            logrotate(&w, &path, "  rotate 2\n  create\n  missingok");
        }
        let lines: Vec<String> = e.iter().map(|l| format!("{l}\n")).collect();
        let cut = if lines.len() > 1 && (n == kill_at || rng.below(3) == 0) {
            1 + rng.below(lines.len() as u64 - 1) as usize
        } else {
            lines.len()
        };
        append(&path, lines[..cut].concat().as_bytes());
        if n == kill_at {
            // Half an event is written and read: the agent dies before its timeout.
            agent.kill9();
            append(&path, lines[cut..].concat().as_bytes());
            agent = Agent::start(&w, &cfg);
            continue;
        }
        if cut < lines.len() {
            std::thread::sleep(std::time::Duration::from_millis(rng.below(200)));
            append(&path, lines[cut..].concat().as_bytes());
        }
    }
    // Shipped to the end of both files (the last events went out on their timeout
    // and when the rotated file was done with), then counted.
    wait_shipped(&w, &agent, &[w.path("app.log.1").as_path(), path.as_path()]);
    assert!(agent.stop().success());
    let recs = consume_all(&broker, "ml", events.len(), SHIP_TIMEOUT);
    let wanted: std::collections::HashSet<String> = events.iter().map(text).collect();
    let got: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    let broken: Vec<&String> = got.iter().filter(|g| !wanted.contains(*g)).collect();
    if !broken.is_empty() {
        dump_agent_log("multiline", seed, &agent.log());
    }
    assert!(
        broken.is_empty(),
        "seed {seed:#x}: {} records are not whole events, first: {:?}",
        broken.len(),
        broken.first()
    );
    let missing: Vec<usize> = (0..events.len())
        .filter(|&n| !got.contains(&text(&events[n])))
        .collect();
    if !missing.is_empty() {
        dump_agent_log("multiline", seed, &agent.log());
    }
    assert!(
        missing.is_empty(),
        "seed {seed:#x}: events missing: {missing:?} (killed at {kill_at}, rotated at {rotate_at}; {} records)",
        got.len()
    );
}
