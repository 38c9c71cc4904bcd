//! Secrets in what the agent prints, and credentials on the wire.
//!
//! Pure functions, used wherever config values can reach a terminal or the journal:
//! `check-config`'s resolved config ([`redact`] on `kafka.properties`), `agent.yaml`
//! errors (the lines around the error are quoted: [`yaml_error`]), librdkafka's
//! refusal of a property (it echoes the value: [`scrub`]); and the one warning at start
//! when credentials would travel unencrypted ([`crate::config::Config::plaintext_credentials`]).
//!
//! The rule for a key (a `kafka.properties` key, or a key of `agent.yaml`): it is secret
//! when, lower-cased with `_`/`-` read as `.`, it contains `password`, `passwd`,
//! `secret`, `passphrase`, `credential` or `token`; or it starts with `sasl.` (every
//! SASL setting but `sasl.mechanism`/`sasl.mechanisms`, which only name the method:
//! librdkafka itself treats `sasl.username` and `sasl.oauthbearer.config` as sensitive);
//! or it holds a private key inline (`ssl.key.pem`, `ssl_key`, any `*key.pem`). A key
//! that names a file (`*.file`, `*_file`, `*.location`) is not secret: its value is a
//! path, and the path is what an operator needs to see.

/// What a hidden value is printed as.
pub const REDACTED: &str = "<redacted>";

/// Words that make a key secret wherever they appear in it.
const SECRET_WORDS: [&str; 6] = [
    "password",
    "passwd",
    "secret",
    "passphrase",
    "credential",
    "token",
];

/// Whether the value of `key` is a secret (see the module documentation for the rule).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.trim().to_ascii_lowercase().replace(['_', '-'], ".");
    if k.ends_with(".file") || k.ends_with(".location") {
        return false;
    }
    if k == "sasl.mechanism" || k == "sasl.mechanisms" {
        return false;
    }
    k.starts_with("sasl.")
        || k == "ssl.key"
        || k.ends_with("key.pem")
        || SECRET_WORDS.iter().any(|w| k.contains(w))
}

/// `value`, or [`REDACTED`] when `key` is secret.
pub fn redact<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret_key(key) {
        REDACTED
    } else {
        value
    }
}

/// `text` with every occurrence of each secret (and of its Rust-escaped form, as `{:?}`
/// prints it) replaced by [`REDACTED`]. Longer secrets are matched first, in one pass,
/// so a secret that contains another leaves no piece behind. Empty secrets are ignored.
pub fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut forms: Vec<String> = Vec::new();
    for s in secrets {
        if s.is_empty() {
            continue;
        }
        let escaped = s.escape_debug().to_string();
        if escaped != s {
            forms.push(escaped);
        }
        forms.push(s.to_owned());
    }
    if forms.is_empty() {
        return text.to_owned();
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match forms.iter().find(|f| rest.starts_with(f.as_str())) {
            Some(f) => {
                out.push_str(REDACTED);
                rest = &rest[f.len()..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// The values of secret keys in YAML text, as they are written (so that a quoted source
/// line can be scrubbed): for each `key:` whose key is secret, or is one of `also`, the
/// rest of the line, without a trailing comment, without its quotes, and up to the next
/// `,`/`}`/`]` inside a flow mapping; and every following line indented deeper than the
/// key's line (a multi-line value, or what the parser took for one). Works on text that
/// does not parse.
pub fn secrets_in_yaml(text: &str, also: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start_matches([' ', '\t']).len();
    for (i, line) in lines.iter().enumerate() {
        let mut secret_here = false;
        for (key, value_start) in keys_in_line(line) {
            if !(is_secret_key(key) || also.contains(&key)) {
                continue;
            }
            secret_here = true;
            let in_flow = line[..value_start].contains('{');
            value_candidates(&line[value_start..], in_flow, &mut out);
        }
        if secret_here {
            let own = indent(line);
            for next in lines[i + 1..].iter() {
                if next.trim().is_empty() {
                    continue;
                }
                if indent(next) <= own {
                    break;
                }
                value_candidates(next, false, &mut out);
            }
        }
    }
    out.retain(|c| !c.is_empty() && !["|", "|-", "|+", ">", ">-", ">+"].contains(&c.as_str()));
    out.sort();
    out.dedup();
    out
}

/// Each `key:` in a YAML line (block or flow style, quoted or not) and where its value
/// starts.
fn keys_in_line(line: &str) -> Vec<(&str, usize)> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        // A key starts the line (after indentation and `- `) or follows `{`, `,` or a blank.
        let starts = i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'{' | b',');
        let quote = matches!(b[i], b'"' | b'\'');
        let first = if quote { i + 1 } else { i };
        let mut j = first;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b"_.-".contains(&b[j])) {
            j += 1;
        }
        if starts && j > first {
            let key_end = j;
            if quote && j < b.len() && b[j] == b[i] {
                j += 1;
            }
            if j < b.len() && b[j] == b':' && (j + 1 == b.len() || matches!(b[j + 1], b' ' | b'\t'))
            {
                out.push((&line[first..key_end], j + 1));
            }
        }
        i = j.max(i + 1);
    }
    out
}

/// The ways a value written as `rest` (what follows `key:` on its line) can appear.
fn value_candidates(rest: &str, in_flow: bool, out: &mut Vec<String>) {
    let whole = rest.trim();
    out.push(whole.to_owned());
    // A comment, when the value is not quoted: ` #` ends it.
    if let Some((v, _)) = whole.split_once(" #") {
        out.push(v.trim().to_owned());
    }
    let first = whole.chars().next();
    match first {
        Some(q @ ('"' | '\'')) => {
            let inner = &whole[1..];
            let inner = inner.split_once(q).map_or(inner, |(v, _)| v);
            out.push(inner.to_owned());
            out.push(format!("{q}{inner}{q}"));
        }
        _ if in_flow => {
            let v = whole.split([',', '}', ']']).next().unwrap_or_default();
            out.push(v.trim().to_owned());
        }
        _ => {}
    }
}

/// A parser error for `text` (its `message`, and the line and column it points at),
/// with the lines around it quoted, and every secret that could be in either hidden:
/// the values of secret keys ([`secrets_in_yaml`]), and the value of an unknown key in a
/// section that has a secret key (`kafka.security`, its `oauth`, `etcd`): it may be a
/// misspelt `password`. Some messages quote a value too (`unknown variant`, `invalid
/// type: string`). Lines are quoted whole: a cropped line could hold a piece of a
/// secret that no longer matches. The caret under the column is left out when a hidden
/// value before it moved it.
pub fn yaml_error(message: &str, text: &str, at: Option<(usize, usize)>) -> String {
    let secrets = yaml_error_secrets(message, text);
    let hide = |t: &str| scrub(t, secrets.iter().map(String::as_str));
    let Some((line, column)) = at else {
        return hide(message);
    };
    // `line L column C: what`, as before the lines: the parser's own form puts the
    // location last, after a list of expected keys.
    let what = message
        .strip_suffix(&format!(" at line {line}, column {column}"))
        .unwrap_or(message);
    let mut out = format!("line {line} column {column}: {}", hide(what));
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || line > lines.len() {
        return out;
    }
    let first = line.saturating_sub(2).max(1);
    let width = line.to_string().len();
    for n in first..=line {
        out.push_str(&format!("\n{n:>width$} | {}", hide(lines[n - 1])));
    }
    let source = lines[line - 1];
    let before: String = source.chars().take(column.saturating_sub(1)).collect();
    if hide(source).starts_with(&before) && !hide(&before).contains(REDACTED) {
        let pad: String = before
            .chars()
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!("\n{:width$} | {pad}^", ""));
    }
    out
}

/// The secrets to hide from a parser error about `text` (see [`yaml_error`]).
fn yaml_error_secrets(message: &str, text: &str) -> Vec<String> {
    let mut also: Vec<&str> = Vec::new();
    if let Some((_, rest)) = message.split_once("unknown field `") {
        if let Some((key, rest)) = rest.split_once('`') {
            let expected = rest
                .split_once("expected one of ")
                .map(|(_, l)| l.lines().next().unwrap_or_default())
                .unwrap_or_default();
            if expected
                .split(',')
                .any(|k| is_secret_key(k.trim().trim_matches('`')))
            {
                also.push(key);
            }
        }
    }
    secrets_in_yaml(text, &also)
}

/// Whether `addr` (`host:port`, `[v6]:port`, or a URL) names this host: `localhost`
/// (and `*.localhost`), 127.0.0.0/8, `::1`.
pub fn is_loopback(addr: &str) -> bool {
    let a = addr.trim();
    let a = a.split_once("://").map_or(a, |(_, rest)| rest);
    let a = a.split(['/', '?']).next().unwrap_or(a);
    let a = a.rsplit_once('@').map_or(a, |(_, host)| host);
    let host = match a.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => a.rsplit_once(':').map_or(a, |(h, _)| h),
    };
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn secret_keys_follow_the_rule() {
        for k in [
            "sasl.password",
            "sasl.username",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.jaas.config",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "ssl_key",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "SASL.PASSWORD",
            "sasl_password",
            "password",
            "client_secret",
            "my.api.token",
        ] {
            assert!(is_secret_key(k), "{k} should be secret");
        }
        for k in [
            "sasl.mechanism",
            "sasl.mechanisms",
            "ssl.key.location",
            "ssl.keystore.location",
            "ssl.certificate.pem",
            "ssl.ca.location",
            "password_file",
            "client_secret_file",
            "sasl.oauthbearer.assertion.private.key.file",
            "linger.ms",
            "username",
            "client.id",
            "bootstrap.servers",
        ] {
            assert!(!is_secret_key(k), "{k} should not be secret");
        }
    }

    #[test]
    fn redact_hides_only_secret_values() {
        assert_eq!(redact("sasl.password", "hunter2"), REDACTED);
        assert_eq!(redact("sasl.mechanism", "PLAIN"), "PLAIN");
        assert_eq!(redact("linger.ms", "5"), "5");
    }

    #[test]
    fn scrub_replaces_every_form_and_the_longest_first() {
        let t = scrub(
            "a hunter2 b \"hun\\\"ter\" c hunter2x",
            ["hunter2", "hun\"ter", "hunter2x", ""],
        );
        assert_eq!(
            t,
            format!("a {REDACTED} b \"{REDACTED}\" c {REDACTED}"),
            "{t}"
        );
        assert_eq!(scrub("nothing", []), "nothing");
        // A secret inside the marker's own text leaves no piece behind either.
        assert!(!scrub("x d y", ["d"]).contains(" d "));
    }

    #[test]
    fn yaml_values_are_found_in_every_style() {
        let text = "kafka:\n  properties: {sasl.password: \"fl0w\", linger.ms: 5}\n  security:\n    password: 'quo ted' # comment\n    username: u\n  other:\n    - ssl.key.password: listed\n    sasl.oauthbearer.config: |\n      multi\n      line\n    \"sasl.username\": qkey\n    password_file: /etc/pw\n";
        let found = secrets_in_yaml(text, &[]);
        for want in ["fl0w", "quo ted", "listed", "multi", "line", "qkey"] {
            assert!(found.iter().any(|f| f == want), "{want} not in {found:?}");
        }
        for not in ["u", "5", "/etc/pw"] {
            assert!(!found.iter().any(|f| f == not), "{not} in {found:?}");
        }
        // The line as written is scrubbed whole, comment or not.
        let line = "    password: 'quo ted' # comment";
        assert!(!scrub(line, found.iter().map(String::as_str)).contains("quo"));
    }

    fn parse_error(text: &str) -> String {
        Config::parse(text, Path::new("agent.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn yaml_errors_quote_no_secret() {
        let long = format!("conn-{}-end", "x".repeat(300));
        for (text, secret) in [
            // A syntax error on the line after the password: the parser quotes both.
            (
                "kafka:\n  brokers: [b:1]\n  security:\n    password: \"hunter2\n    username: u\n",
                "hunter2",
            ),
            (
                "kafka:\n  brokers: [b:1]\n  security:\n    password: hunter2: x\n",
                "hunter2",
            ),
            (
                "kafka:\n  brokers: [b:1]\n  properties: {sasl.password: hunter2, linger.ms: 5\n",
                "hunter2",
            ),
            // A misspelt key of a section with a password: its value may be one.
            (
                "kafka:\n  brokers: [b:1]\n  security:\n    pasword: hunter2\n",
                "hunter2",
            ),
            (
                "kafka:\n  brokers: [b:1]\netcd:\n  endpoints: [\"http://e:1\"]\n  pass: hunter2\n",
                "hunter2",
            ),
            // A long secret is not cropped into a piece that no longer matches.
            (
                &format!(
                    "kafka:\n  brokers: [b:1]\n  properties:\n    sasl.password: {long} ]: x\n"
                ),
                &long,
            ),
        ] {
            let e = parse_error(text);
            assert!(e.contains("line"), "{e}");
            assert!(!e.contains(secret), "{secret} in:\n{e}");
            assert!(!e.contains("conn-") && !e.contains("xxxxxxxx"), "{e}");
        }
        // An unknown key elsewhere keeps its value visible: it helps, and is no secret.
        let e = parse_error("kafka:\n  brokers: [b:1]\nagent:\n  data_dri: /tmp/x\n");
        assert!(e.contains("/tmp/x"), "{e}");
    }

    #[test]
    fn secrets_of_a_parsed_config() {
        let c = Config::parse(
            "kafka:\n  brokers: [b:1]\n  properties: {sasl.password: p1, linger.ms: \"7\"}\n  security:\n    protocol: sasl_ssl\n    username: u\n    password: p2\netcd:\n  endpoints: [\"https://e:1\"]\n  password: p3\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        let mut s = c.secret_values();
        s.sort();
        assert_eq!(s, ["p1", "p2", "p3"]);
    }

    fn warning(yaml: &str) -> Option<String> {
        Config::parse(yaml, Path::new("t.yaml"))
            .unwrap()
            .plaintext_credentials()
    }

    #[test]
    fn credentials_over_plaintext_are_warned_once_naming_the_fix() {
        let kafka = |sec: &str| format!("kafka:\n  brokers: [b:1]\n  security:\n{sec}");
        let w = warning(&kafka(
            "    protocol: sasl_plaintext\n    sasl_mechanism: PLAIN\n    username: u\n    password: p\n",
        ))
        .unwrap();
        assert!(
            w.contains("kafka.security.protocol sasl_plaintext with PLAIN sends the password"),
            "{w}"
        );
        assert!(w.contains("sasl_ssl"), "{w}");
        let w = warning(&kafka(
            "    protocol: sasl_plaintext\n    sasl_mechanism: SCRAM-SHA-512\n    username: u\n",
        ))
        .unwrap();
        assert!(w.contains("does not send the password"), "{w}");
        for safe in [
            "    protocol: sasl_ssl\n    sasl_mechanism: PLAIN\n    username: u\n",
            "    protocol: plaintext\n",
            "    protocol: ssl\n",
        ] {
            assert_eq!(warning(&kafka(safe)), None, "{safe}");
        }
        // kafka.properties wins over kafka.security, as in the client.
        let w = warning("kafka:\n  brokers: [b:1]\n  properties: {security.protocol: SASL_PLAINTEXT, sasl.mechanisms: plain, sasl.username: u, sasl.password: p}\n").unwrap();
        assert!(w.contains("kafka.properties security.protocol"), "{w}");
        assert_eq!(
            warning("kafka:\n  brokers: [b:1]\n  properties: {security.protocol: sasl_plaintext, sasl.mechanism: GSSAPI}\n"),
            None
        );
        // etcd: credentials over http:// only.
        let etcd = |ep: &str, auth: &str| {
            format!("kafka:\n  brokers: [b:1]\netcd:\n  endpoints: [{ep}]\n{auth}")
        };
        let w = warning(&etcd(
            "\"https://a:2379\", \"http://b:2379\"",
            "  username: u\n  password_file: /p\n",
        ))
        .unwrap();
        assert!(
            w.contains("etcd.endpoints http://b:2379 with etcd.username"),
            "{w}"
        );
        assert!(!w.contains("https://a"), "{w}");
        assert_eq!(warning(&etcd("\"http://b:2379\"", "")), None);
        assert_eq!(
            warning(&etcd(
                "\"https://b:2379\"",
                "  username: u\n  password: p\n"
            )),
            None
        );
        // Both at once: one warning with both parts.
        let w = warning(&format!(
            "{}etcd:\n  endpoints: [\"http://b:2379\"]\n  username: u\n  password: p\n",
            kafka("    protocol: sasl_plaintext\n    username: u\n    password: p\n")
        ))
        .unwrap();
        assert_eq!(w.matches("credentials travel unencrypted").count(), 1);
        assert!(w.contains("PLAIN") && w.contains("etcd.endpoints"), "{w}");
    }

    #[test]
    fn loopback_is_exempt_and_only_remote_addresses_are_named() {
        let sasl = "  security:\n    protocol: sasl_plaintext\n    username: u\n    password: p\n";
        let local = [
            "127.0.0.1:9092",
            "localhost:9093",
            "[::1]:9094",
            "127.3.4.5:1",
        ];
        for b in local {
            let yaml = format!("kafka:\n  brokers: [\"{b}\"]\n{sasl}");
            assert_eq!(warning(&yaml), None, "{b}");
        }
        let w = warning(&format!(
            "kafka:\n  brokers: [\"127.0.0.1:9092\", \"kafka1:9092\"]\n{sasl}"
        ))
        .unwrap();
        assert!(w.contains("(to kafka1:9092)"), "{w}");
        // bootstrap.servers in kafka.properties is what the client uses.
        let w = warning(&format!(
            "kafka:\n  brokers: [\"127.0.0.1:9092\"]\n  properties: {{bootstrap.servers: \"10.0.0.7:9092, localhost:1\"}}\n{sasl}"
        ))
        .unwrap();
        assert!(w.contains("(to 10.0.0.7:9092)"), "{w}");
        let etcd = |ep: &str| {
            warning(&format!(
                "kafka:\n  brokers: [\"127.0.0.1:1\"]\netcd:\n  endpoints: [\"{ep}\"]\n  username: u\n  password: p\n"
            ))
        };
        for ep in [
            "http://127.0.0.1:2379",
            "http://localhost:2379/",
            "http://[::1]:2379",
        ] {
            assert_eq!(etcd(ep), None, "{ep}");
        }
        assert!(etcd("http://10.0.0.8:2379").is_some());
        for (addr, want) in [
            ("127.0.0.1:9092", true),
            ("LOCALHOST:1", true),
            ("http://u:p@127.0.0.1:2379/x", true),
            ("[::1]:1", true),
            ("10.0.0.1:9092", false),
            ("localhost.example.com:1", false),
            ("kafka:9092", false),
        ] {
            assert_eq!(is_loopback(addr), want, "{addr}");
        }
    }
}
