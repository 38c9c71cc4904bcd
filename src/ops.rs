//! Operator commands that talk to etcd: `config push`, `config show`, `status`.
//!
//! They use the same validator and allow-list as the running agent, so what `config
//! push` accepts is exactly what an agent applies.

use std::fmt::Write as _;

use thiserror::Error;

use crate::central::{self, StatusDoc};
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

/// Validates `text` and writes it to the host's key. Returns a report for the operator.
pub fn push(cfg: &Config, host: Option<&str>, text: &str) -> Result<String, OpsError> {
    let entries = collect::parse_json(text).map_err(OpsError::Invalid)?;
    let (key, _) = keys(cfg, host)?;
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

/// The resolved key, its value, and what this host would follow and refuse.
pub fn show(cfg: &Config, host: Option<&str>) -> Result<String, OpsError> {
    let (key, _) = keys(cfg, host)?;
    let res = client(cfg)?.get(&key)?;
    let mut out = format!("key: {key}\n");
    let Some(kv) = res.kv else {
        out.push_str("value: (key does not exist: this host collects nothing)\n");
        return Ok(out);
    };
    let text = String::from_utf8_lossy(&kv.value);
    let _ = writeln!(out, "revision: {}\nvalue: {text}", kv.mod_revision);
    match collect::parse_json(&text) {
        Err(why) => {
            let _ = writeln!(out, "INVALID: {why} (agents keep their last good config)");
        }
        Ok(entries) => {
            let s = screen(entries, &cfg.agent.allowed_paths);
            for e in &s.accepted {
                let _ = writeln!(out, "collect: {} -> {}", e.path, e.topic);
            }
            for (e, why) in &s.refused {
                let _ = writeln!(out, "refuse:  {} ({why})", e.path);
            }
        }
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

/// The civil date (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// civil-from-days: no time crate for a date).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A unix time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(t: u64) -> String {
    let rem = t % 86_400;
    let (y, m, d) = civil_from_days((t / 86_400) as i64);
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
