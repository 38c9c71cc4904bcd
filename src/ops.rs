//! Operator commands that talk to etcd: `config push`, `config show`, `status`, `fleet`.
//!
//! They use the same validator and allow-list as the running agent, so what `config
//! push` accepts is exactly what an agent applies.

use std::fmt::Write as _;

use thiserror::Error;

use serde::Serialize;

use crate::central::{self, Registration, StatusDoc};
use crate::collect;
use crate::collect::screen;
use crate::config::Config;
use crate::etcd::EtcdError;

/// Why an operator command failed.
#[derive(Debug, Error)]
pub enum OpsError {
    /// The config has no `etcd:` section.
    #[error("agent.yaml has no etcd: section")]
    NoEtcd,
    /// The collect list is invalid (nothing was written).
    #[error("invalid collect list: {0}")]
    Invalid(String),
    /// Reading the input file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Client set-up failed.
    #[error("{0}")]
    Setup(String),
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The key does not exist.
    #[error("key {0} does not exist")]
    Missing(String),
    /// The status document does not parse.
    #[error("status document at {key} is not valid: {why}")]
    BadStatus {
        /// Key.
        key: String,
        /// Parser message.
        why: String,
    },
}

impl OpsError {
    /// Exit code: 2 for bad input, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            OpsError::Invalid(_) | OpsError::NoEtcd | OpsError::Read { .. } => 2,
            _ => 1,
        }
    }
}

fn keys(cfg: &Config, host: Option<&str>) -> Result<(String, String), OpsError> {
    let e = cfg.etcd.as_ref().ok_or(OpsError::NoEtcd)?;
    let ip = host
        .map(str::to_owned)
        .unwrap_or_else(|| central::host_ip(cfg));
    let hostname = cfg.hostname();
    Ok((
        central::resolve_key(&e.key, &ip, &hostname),
        central::resolve_key(&e.status_key, &ip, &hostname),
    ))
}

fn client(cfg: &Config) -> Result<crate::etcd::EtcdClient, OpsError> {
    let e = cfg.etcd.as_ref().ok_or(OpsError::NoEtcd)?;
    central::client(e).map_err(OpsError::Setup)
}

/// Where `config push` writes: a host's key or a group's.
pub enum Target<'a> {
    /// A host's key (`None`: this host's).
    Host(Option<&'a str>),
    /// A group's key.
    Group(&'a str),
}

/// Validates `text` and writes it to the host's (or group's) key. Returns a report for
/// the operator.
pub fn push(cfg: &Config, target: Target<'_>, text: &str) -> Result<String, OpsError> {
    let entries = collect::parse_json(text).map_err(OpsError::Invalid)?;
    let key = match target {
        Target::Host(host) => keys(cfg, host)?.0,
        Target::Group(g) => {
            let e = cfg.etcd.as_ref().ok_or(OpsError::NoEtcd)?;
            if g.is_empty()
                || !g
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(OpsError::Invalid(format!(
                    "group {g:?}: a group name is letters, digits, '.', '_' and '-'"
                )));
            }
            central::resolve_key(&e.group_key.replace("{group}", g), "", "")
        }
    };
    let s = screen(entries.clone(), &cfg.agent.allowed_paths);
    let rev = client(cfg)?.put(&key, text.trim().as_bytes())?;
    let mut out = format!(
        "wrote {} entries to {key} (revision {rev})\n",
        entries.len()
    );
    for (e, why) in s.refused {
        let _ = writeln!(
            out,
            "warning: an agent with this agent.yaml refuses {}: {why}",
            e.path
        );
    }
    Ok(out)
}

/// Every key the host's list comes from (its own, its groups'), each value, and the
/// merged list: what it follows (and from which key), what it ignores, what it refuses.
pub fn show(cfg: &Config, host: Option<&str>) -> Result<String, OpsError> {
    let e = cfg.etcd.as_ref().ok_or(OpsError::NoEtcd)?;
    let ip = host
        .map(str::to_owned)
        .unwrap_or_else(|| central::host_ip(cfg));
    let mut sources = central::host_sources(e, &ip, &cfg.hostname());
    let keys = sources.keys();
    let snap = client(cfg)?.get_all(&keys, false)?;
    let mut out = String::new();
    for (i, kv) in snap.kvs.iter().enumerate() {
        let Some(src) = sources.at_mut(i) else {
            continue;
        };
        let what = match &src.origin {
            central::sources::Origin::Host => "host".to_owned(),
            central::sources::Origin::Group(g) => format!("group {g}"),
        };
        let _ = writeln!(out, "key: {} ({what})", src.key);
        match kv {
            None => out.push_str("value: (key does not exist: it adds nothing)\n"),
            Some(kv) => {
                let _ = writeln!(
                    out,
                    "revision: {}\nvalue: {}",
                    kv.mod_revision,
                    String::from_utf8_lossy(&kv.value)
                );
            }
        }
        if let central::sources::Observed::Rejected(why) = src.observe(kv.as_ref()) {
            let _ = writeln!(
                out,
                "INVALID: {why} (agents keep their last good value of this key)"
            );
        }
    }
    let merged = sources.merged();
    let from: std::collections::HashMap<String, String> = merged
        .entries
        .iter()
        .map(|f| (f.entry.path.clone(), f.key.clone()))
        .collect();
    let entries = merged
        .entries
        .into_iter()
        .map(|f| f.entry)
        .collect::<Vec<_>>();
    let s = screen(entries, &cfg.agent.allowed_paths);
    let multi = keys.len() > 1;
    for e in &s.accepted {
        let src = from.get(&e.path).map_or("", String::as_str);
        if multi {
            let _ = writeln!(out, "collect: {} -> {}  (from {src})", e.path, e.topic);
        } else {
            let _ = writeln!(out, "collect: {} -> {}", e.path, e.topic);
        }
    }
    for sh in &merged.shadowed {
        let _ = writeln!(
            out,
            "ignore:  {} from {} ({} names it first)",
            sh.path, sh.ignored, sh.used
        );
    }
    for (e, why) in &s.refused {
        let _ = writeln!(out, "refuse:  {} ({why})", e.path);
    }
    Ok(out)
}

/// The host's status document, parsed.
pub fn status(cfg: &Config, host: Option<&str>) -> Result<StatusDoc, OpsError> {
    let (_, key) = keys(cfg, host)?;
    let res = client(cfg)?.get(&key)?;
    let kv = res.kv.ok_or_else(|| OpsError::Missing(key.clone()))?;
    serde_json::from_slice(&kv.value).map_err(|e| OpsError::BadStatus {
        key,
        why: e.to_string(),
    })
}

/// One host in `logagent fleet`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FleetHost {
    /// IP in its keys.
    pub ip: String,
    /// Hostname.
    pub hostname: String,
    /// Agent version.
    pub version: String,
    /// `ok`, `errors` (its status reports some), or `stale` (registered, but its status
    /// lease expired: the agent is down or cannot reach etcd).
    pub state: String,
    /// Config revision applied (from its status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_revision: Option<i64>,
    /// Files followed.
    pub files: usize,
    /// Sum of the files' lag.
    pub lag_bytes: u64,
    /// Bytes skipped instead of shipped since its agent started.
    pub bytes_lost: u64,
    /// What its status reports as wrong.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Unix seconds of its status document's last change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<u64>,
}

/// A status document without a lease older than this is shown stale.
const UNLEASED_STALE_SECS: u64 = 300;

/// Every host under the keys' common prefix, read in one range.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Fleet {
    /// Hosts by IP.
    pub hosts: Vec<FleetHost>,
}

impl Fleet {
    /// Hosts that report errors or are stale.
    pub fn unhealthy(&self) -> usize {
        self.hosts.iter().filter(|h| h.state != "ok").count()
    }
}

/// The literal text of a key template before its first `{` and after its last `}`.
fn template_ends(t: &str) -> (&str, &str) {
    match (t.find('{'), t.rfind('}')) {
        (Some(a), Some(b)) if a < b => (&t[..a], &t[b + 1..]),
        _ => (t, ""),
    }
}

/// Whether `key` can be an instance of `template`.
fn matches_template(template: &str, key: &str) -> bool {
    let (pre, suf) = template_ends(template);
    if suf.is_empty() && !template.contains('{') {
        return key == template;
    }
    key.len() > pre.len() + suf.len() && key.starts_with(pre) && key.ends_with(suf)
}

/// What a status document reports as wrong.
fn status_errors(d: &StatusDoc) -> Vec<String> {
    let mut v: Vec<String> = d.config_error.iter().cloned().collect();
    v.extend(
        d.refused
            .iter()
            .map(|r| format!("refused {}: {}", r.path, r.reason)),
    );
    v.extend(
        d.missing_topics
            .iter()
            .map(|t| format!("missing topic {t}")),
    );
    for f in &d.files {
        if let Some(e) = &f.error {
            v.push(e.clone());
        }
        if f.stalled {
            v.push(format!("{}: stalled", f.path));
        }
    }
    v
}

/// The fleet from one range over the prefix the status and registration keys share.
pub fn fleet(cfg: &Config) -> Result<Fleet, OpsError> {
    let e = cfg.etcd.as_ref().ok_or(OpsError::NoEtcd)?;
    let (sp, _) = template_ends(&e.status_key);
    let (ap, _) = template_ends(&e.agent_key);
    let prefix: String = sp
        .chars()
        .zip(ap.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let kvs = client(cfg)?.get_prefix(&prefix)?;
    let mut hosts: std::collections::BTreeMap<String, FleetHost> = Default::default();
    let blank = |ip: &str, hostname: &str, version: &str| FleetHost {
        ip: ip.to_owned(),
        hostname: hostname.to_owned(),
        version: version.to_owned(),
        state: "stale".into(),
        config_revision: None,
        files: 0,
        lag_bytes: 0,
        bytes_lost: 0,
        errors: Vec::new(),
        updated: None,
    };
    // A host is what its keys' placeholders resolve to (its IP with the default
    // templates): two hosts writing one key are one row, whatever their documents say.
    let id_of = |template: &str, key: &str| {
        let (pre, suf) = template_ends(template);
        key[pre.len()..key.len() - suf.len()].to_owned()
    };
    for kv in &kvs {
        if matches_template(&e.agent_key, &kv.key) {
            let id = id_of(&e.agent_key, &kv.key);
            match serde_json::from_slice::<Registration>(&kv.value) {
                Ok(r) => {
                    hosts
                        .entry(id)
                        .or_insert_with(|| blank(&r.ip, &r.hostname, &r.version));
                }
                Err(why) => {
                    let h = hosts
                        .entry(id.clone())
                        .or_insert_with(|| blank(&id, "?", "?"));
                    h.errors
                        .push(format!("registration at {} does not parse: {why}", kv.key));
                }
            }
        }
    }
    let now = crate::registry::unix_now();
    for kv in &kvs {
        if !matches_template(&e.status_key, &kv.key) {
            continue;
        }
        let d = match serde_json::from_slice::<StatusDoc>(&kv.value) {
            Ok(d) => d,
            Err(why) => {
                // Listed, not skipped: a host whose status cannot be read is not fine.
                let id = id_of(&e.status_key, &kv.key);
                let h = hosts
                    .entry(id.clone())
                    .or_insert_with(|| blank(&id, "?", "?"));
                h.state = "errors".into();
                h.errors = vec![format!(
                    "status document at {} does not parse: {why}",
                    kv.key
                )];
                continue;
            }
        };
        let mut errors = status_errors(&d);
        // Without a lease (an agent older than leases, or a hand-made key) a document
        // stays after its host died: only its age tells.
        // (A time far ahead of ours is no proof of life either.)
        let unleased_stale = kv.lease == 0 && now.abs_diff(d.updated) > UNLEASED_STALE_SECS;
        let h = hosts
            .entry(id_of(&e.status_key, &kv.key))
            .or_insert_with(|| blank(&d.ip, &d.hostname, &d.version));
        errors.append(&mut h.errors); // a registration that does not parse
        h.hostname = d.hostname.clone();
        h.version = d.version.clone();
        h.state = if unleased_stale {
            "stale"
        } else if errors.is_empty() {
            "ok"
        } else {
            "errors"
        }
        .into();
        h.config_revision = Some(d.config_revision);
        h.files = d.files.len();
        h.lag_bytes = d.files.iter().map(|f| f.lag_bytes).sum();
        h.bytes_lost = d.files.iter().flat_map(|f| f.bytes_lost.values()).sum();
        h.errors = errors;
        h.updated = Some(d.updated);
    }
    Ok(Fleet {
        hosts: hosts.into_values().collect(),
    })
}

/// The fleet as a table, ages as seen at `now`.
pub fn fleet_table(f: &Fleet, now: u64) -> String {
    let mut out = format!(
        "{:<16} {:<24} {:<8} {:<7} {:>9} {:>6} {:>14} {:>12} {:>6}  status changed\n",
        "ip", "hostname", "version", "state", "config", "files", "lag", "lost", "errors"
    );
    for h in &f.hosts {
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<8} {:<7} {:>9} {:>6} {:>14} {:>12} {:>6}  {}",
            h.ip,
            h.hostname,
            h.version,
            h.state,
            h.config_revision.map_or("-".into(), |r| r.to_string()),
            h.files,
            h.lag_bytes,
            h.bytes_lost,
            h.errors.len(),
            match h.updated {
                Some(t) => when(t, now),
                None => "- (status lease expired)".into(),
            }
        );
    }
    for h in f.hosts.iter().filter(|h| !h.errors.is_empty()) {
        for e in &h.errors {
            let _ = writeln!(out, "{} ({}): {e}", h.ip, h.hostname);
        }
    }
    let _ = writeln!(
        out,
        "{} hosts, {} with errors, {} stale",
        f.hosts.len(),
        f.hosts.iter().filter(|h| h.state == "errors").count(),
        f.hosts.iter().filter(|h| h.state == "stale").count()
    );
    out
}

/// A status document as a table, its age as seen at `now` (unix seconds).
pub fn status_table(d: &StatusDoc, now: u64) -> String {
    let mut out = format!(
        "host {} ({}), logagent {}, config revision {}, etcd {}, updated {}\n",
        d.hostname,
        d.ip,
        d.version,
        d.config_revision,
        if d.etcd_reachable {
            "reachable"
        } else {
            "unreachable"
        },
        when(d.updated, now)
    );
    if let Some(e) = &d.config_error {
        let _ = writeln!(out, "config error: {e}");
    }
    for r in &d.refused {
        let _ = writeln!(out, "refused: {} ({})", r.path, r.reason);
    }
    if d.files_waiting > 0 {
        let _ = writeln!(
            out,
            "waiting: {} files beyond agent.max_files (first: {})",
            d.files_waiting,
            d.waiting_files.join(", ")
        );
    }
    for t in &d.missing_topics {
        let _ = writeln!(
            out,
            "missing topic: {t} (its files are held until it exists)"
        );
    }
    let w = d
        .files
        .iter()
        .map(|f| f.path.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<w$}  {:<20} {:>14} {:>14} {:>12} {:>10}  error",
        "path", "topic", "committed", "size", "lag", "lost"
    );
    for f in &d.files {
        let lost: u64 = f.bytes_lost.values().sum();
        let mut notes: Vec<String> = f.error.iter().cloned().collect();
        if f.stalled {
            notes.push("stalled".into());
        }
        if lost > 0 {
            let why: Vec<String> = f
                .bytes_lost
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            notes.push(format!("lost: {}", why.join(", ")));
        }
        let _ = writeln!(
            out,
            "{:<w$}  {:<20} {:>14} {:>14} {:>12} {:>10}  {}",
            f.path,
            f.topic,
            f.committed,
            f.size,
            f.lag_bytes,
            lost,
            if notes.is_empty() {
                "-".to_owned()
            } else {
                notes.join("; ")
            }
        );
    }
    out
}

/// `2026-12-01 19:13:04 UTC (12 s ago)`: a unix time for people, with its age at `now`
/// (a clock ahead of ours says so rather than showing a negative age).
pub fn when(t: u64, now: u64) -> String {
    let age = match now.checked_sub(t) {
        None => format!("{} s in the future: clocks differ", t - now),
        Some(a) if a < 120 => format!("{a} s ago"),
        Some(a) if a < 7200 => format!("{} min ago", a / 60),
        Some(a) if a < 172_800 => format!("{} h ago", a / 3600),
        Some(a) => format!("{} days ago", a / 86_400),
    };
    format!("{} ({age})", utc(t))
}

/// A unix time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(t: u64) -> String {
    let rem = t % 86_400;
    let (y, m, d) = crate::time::civil_from_days((t / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod when_tests {
    use super::*;

    #[test]
    fn keys_match_their_templates() {
        assert!(matches_template(
            "/logagent/{ip}/status",
            "/logagent/10.0.0.1/status"
        ));
        assert!(!matches_template(
            "/logagent/{ip}/status",
            "/logagent/10.0.0.1/agent"
        ));
        assert!(!matches_template(
            "/logagent/{ip}/status",
            "/logagent//status"
        ));
        assert!(matches_template("/s/{hostname}-{ip}", "/s/web-10.0.0.1"));
        assert!(matches_template("/fixed", "/fixed") && !matches_template("/fixed", "/fixedx"));
        assert_eq!(
            template_ends("/logagent/{ip}/agent"),
            ("/logagent/", "/agent")
        );
    }

    #[test]
    fn times_read_as_dates_with_their_age() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_335_034), "2026-11-22 08:10:34 UTC");
        assert_eq!(when(100, 112), "1970-01-01 00:01:40 UTC (12 s ago)");
        assert_eq!(when(0, 600), "1970-01-01 00:00:00 UTC (10 min ago)");
        assert_eq!(when(0, 3 * 3600), "1970-01-01 00:00:00 UTC (3 h ago)");
        assert_eq!(when(0, 5 * 86_400), "1970-01-01 00:00:00 UTC (5 days ago)");
        assert!(when(10, 5).contains("5 s in the future"));
    }
}
