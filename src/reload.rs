//! SIGHUP: read `agent.yaml` again, apply what can change live, name what cannot.
//!
//! Live: the static `collect:` list (when the agent runs without `etcd:`) and
//! `agent.log_level`. `kafka.security`, and the contents of the files it names (password,
//! CA, certificate, key), apply by a restart in place: the agent stops cleanly (offsets
//! on disk) and executes itself again, so that fixed credentials or a renewed certificate
//! take effect with one SIGHUP. Everything else is wired into threads and clients at
//! start (the librdkafka producer, the etcd client, the registry in `data_dir`, channel
//! sizes, the metrics server), so a change to it is named in one warning and the running
//! values stay until a restart. [`plan`] decides, without side effects; [`Reloader`]
//! reads the file, logs the outcome and applies the log level; the collect list goes to
//! the agent's main loop, which owns the supervisor.

use std::path::{Path, PathBuf};

use log::{error, info, warn};
use serde::Serialize;

use crate::collect::CollectEntry;
use crate::config::{Config, LogLevel};
use crate::logging;

/// What a reload does with a new config, compared with the running one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReloadPlan {
    /// The new static collect list, when it changed and the agent follows it (no `etcd:`).
    pub collect: Option<Vec<CollectEntry>>,
    /// The new `agent.log_level` when it changed (`Some(None)`: back to `RUST_LOG`).
    pub log_level: Option<Option<LogLevel>>,
    /// Changed settings that only a restart applies: `kafka.brokers`, `etcd`, `agent.data_dir`…
    pub restart_needed: Vec<String>,
    /// `kafka.security` changed: the agent restarts itself in place to apply it.
    pub restart_in_place: bool,
    /// What changed, for people: `collect 2 → 3 entries`, `log_level info → debug`.
    pub changes: Vec<String>,
}

impl ReloadPlan {
    /// One phrase for the log: the changes, or that nothing changed.
    pub fn summary(&self) -> String {
        match (self.changes.is_empty(), self.restart_needed.is_empty()) {
            (false, _) => self.changes.join(", "),
            (true, true) => "nothing changed".into(),
            (true, false) => "nothing that applies live changed".into(),
        }
    }
}

/// Compares the running config with a new one (both already validated).
pub fn plan(old: &Config, new: &Config) -> ReloadPlan {
    let mut p = ReloadPlan::default();
    if old.collect != new.collect {
        let (a, b) = (old.collect.len(), new.collect.len());
        let what = if a == b {
            format!("collect {a} entries changed")
        } else {
            format!("collect {a} → {b} entries")
        };
        // The mode (static list or etcd) is the running one: a list under a running
        // `etcd:` is ignored, as it was at start.
        if old.etcd.is_none() {
            p.collect = Some(new.collect.clone());
            p.changes.push(what);
        } else {
            p.changes.push(format!(
                "{what} (not used: the collect list comes from etcd)"
            ));
        }
    }
    if old.agent.log_level != new.agent.log_level {
        p.log_level = Some(new.agent.log_level);
        p.changes.push(format!(
            "log_level {} → {}",
            level_name(old.agent.log_level),
            level_name(new.agent.log_level)
        ));
    }
    if old.kafka.security != new.kafka.security {
        p.restart_in_place = true;
        p.changes.push("kafka.security".into());
    }
    let mut new_kafka = new.kafka.clone();
    new_kafka.security = old.kafka.security.clone();
    p.restart_needed
        .extend(changed_fields("kafka", &old.kafka, &new_kafka));
    // The live setting is compared above; only the rest of `agent:` needs a restart.
    let mut new_agent = new.agent.clone();
    new_agent.log_level = old.agent.log_level;
    p.restart_needed
        .extend(changed_fields("agent", &old.agent, &new_agent));
    match (&old.etcd, &new.etcd) {
        (Some(a), Some(b)) => p.restart_needed.extend(changed_fields("etcd", a, b)),
        (None, None) => {}
        _ => p.restart_needed.push("etcd".into()),
    }
    p
}

fn level_name(l: Option<LogLevel>) -> String {
    match l {
        Some(l) => format!("{l:?}").to_lowercase(),
        None => "RUST_LOG".into(),
    }
}

/// `section.key` for every key that differs; `section` alone when the difference does
/// not show in the serialized form (a password, which serializes as `<redacted>`).
fn changed_fields<T: PartialEq + Serialize>(section: &str, old: &T, new: &T) -> Vec<String> {
    if old == new {
        return Vec::new();
    }
    let as_map = |v: &T| match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (as_map(old), as_map(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let out: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{section}.{k}"))
        .collect();
    if out.is_empty() {
        vec![section.to_owned()]
    } else {
        out
    }
}

/// What a SIGHUP asks of the agent beyond what [`Reloader::reload`] applied itself.
#[derive(Debug, Default)]
pub struct Reload {
    /// The new static collect list, for the agent's main loop.
    pub collect: Option<Vec<CollectEntry>>,
    /// Stop cleanly and execute again: `kafka.security` or one of its files changed.
    pub restart_in_place: bool,
}

/// The contents of the files `kafka.security` names, as one hash: a rotated password
/// file or a renewed certificate under the same path is a change too. A file that
/// cannot be read hashes as its error, so that it coming back is a change as well.
pub fn security_files_digest(cfg: &Config) -> u64 {
    use std::hash::{Hash, Hasher};
    let sec = &cfg.kafka.security;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let secret = sec
        .oauth
        .as_ref()
        .and_then(|o| o.client_secret_file.clone());
    for f in [
        &sec.password_file,
        &sec.ca_file,
        &sec.cert_file,
        &sec.key_file,
        &secret,
    ]
    .into_iter()
    .flatten()
    {
        f.hash(&mut h);
        match std::fs::read(f) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().hash(&mut h),
        }
    }
    h.finish()
}

/// The running config as far as reloads go, and where it came from.
pub struct Reloader {
    path: PathBuf,
    running: Config,
    /// [`security_files_digest`] of what the producer was built with.
    security_files: u64,
}

impl Reloader {
    /// A reloader for `path`, which the agent started with as `running`.
    pub fn new(path: &Path, running: Config) -> Reloader {
        Reloader {
            path: path.to_owned(),
            security_files: security_files_digest(&running),
            running,
        }
    }

    /// Reads the file again and applies what applies live: sets the log level here (it is
    /// process-wide) and returns the new collect list for the agent's main loop, and
    /// whether to restart in place. Logs one line for the outcome, plus one warning when
    /// settings that need a restart changed. A file that cannot be read or is invalid
    /// changes nothing.
    pub fn reload(&mut self) -> Reload {
        let new = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                // The reason last: parser messages can go on over several lines.
                error!("SIGHUP: keeping the running config: {e}");
                return Reload::default();
            }
        };
        let mut p = plan(&self.running, &new);
        if !p.restart_in_place && security_files_digest(&new) != self.security_files {
            p.restart_in_place = true;
            p.changes
                .push("the files kafka.security names (password, CA, certificate, key)".into());
        }
        // Logged before the level changes, so that lowering it still shows this line.
        info!("SIGHUP: reloaded {}: {}", self.path.display(), p.summary());
        if !p.restart_needed.is_empty() {
            warn!(
                "SIGHUP: {}: {} changed; that needs a restart, the running values stay until then",
                self.path.display(),
                p.restart_needed.join(", ")
            );
        }
        if let Some(level) = p.log_level {
            logging::set_level(level);
            self.running.agent.log_level = level;
        }
        if let Some(c) = &p.collect {
            self.running.collect = c.clone();
        }
        if p.restart_in_place {
            warn!("SIGHUP: kafka.security changed: restarting in place to connect with it (clean stop, offsets on disk, then the same command again)");
        }
        Reload {
            collect: p.collect,
            restart_in_place: p.restart_in_place,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        Config::parse(
            &format!("kafka:\n  brokers: [\"b:1\"]\n{extra}"),
            Path::new("agent.yaml"),
        )
        .unwrap()
    }

    const ONE: &str = "collect:\n  - path: /a.log\n    topic: t\n";
    const TWO: &str = "collect:\n  - path: /a.log\n    topic: t\n  - path: /b.log\n    topic: t\n";

    #[test]
    fn same_config_changes_nothing() {
        let p = plan(&cfg(ONE), &cfg(ONE));
        assert_eq!(p, ReloadPlan::default());
        assert_eq!(p.summary(), "nothing changed");
    }

    #[test]
    fn a_new_collect_entry_applies_live() {
        let new = cfg(TWO);
        let p = plan(&cfg(ONE), &new);
        assert_eq!(p.collect.as_ref(), Some(&new.collect));
        assert!(p.restart_needed.is_empty(), "{p:?}");
        assert_eq!(p.summary(), "collect 1 → 2 entries");
    }

    #[test]
    fn a_changed_entry_of_the_same_count_is_applied_too() {
        let p = plan(
            &cfg(ONE),
            &cfg("collect:\n  - path: /a.log\n    topic: other\n"),
        );
        assert!(p.collect.is_some());
        assert_eq!(p.summary(), "collect 1 entries changed");
    }

    #[test]
    fn log_level_applies_live_and_can_go_back_to_rust_log() {
        let p = plan(&cfg(""), &cfg("agent:\n  log_level: debug\n"));
        assert_eq!(p.log_level, Some(Some(LogLevel::Debug)));
        assert!(p.restart_needed.is_empty(), "{p:?}");
        assert_eq!(p.summary(), "log_level RUST_LOG → debug");
        let back = plan(&cfg("agent:\n  log_level: debug\n"), &cfg(""));
        assert_eq!(back.log_level, Some(None));
    }

    #[test]
    fn other_sections_are_named_and_not_applied() {
        let mut new = cfg(&format!(
            "agent:\n  data_dir: /elsewhere\n  channel_capacity: 4\n{ONE}"
        ));
        new.kafka.brokers = vec!["c:2".into()];
        let p = plan(&cfg(ONE), &new);
        assert_eq!(p.collect, None);
        assert_eq!(
            p.restart_needed,
            ["kafka.brokers", "agent.channel_capacity", "agent.data_dir"]
        );
        assert_eq!(p.summary(), "nothing that applies live changed");
    }

    fn sasl(password: Option<&str>, file: Option<&Path>) -> Config {
        let mut c = cfg("");
        c.kafka.security.protocol = crate::config::SecurityProtocol::SaslPlaintext;
        c.kafka.security.username = Some("u".into());
        c.kafka.security.password = password.map(str::to_owned);
        c.kafka.security.password_file = file.map(Path::to_owned);
        c
    }

    #[test]
    fn kafka_security_restarts_in_place_and_is_not_named_as_needing_a_restart() {
        let p = plan(&sasl(Some("one"), None), &sasl(Some("two"), None));
        assert!(p.restart_in_place, "{p:?}");
        assert!(p.restart_needed.is_empty(), "{p:?}");
        assert!(!plan(&sasl(Some("one"), None), &sasl(Some("one"), None)).restart_in_place);
    }

    #[test]
    fn a_password_file_rewritten_in_place_changes_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "one\n").unwrap();
        let c = sasl(None, Some(&f));
        let before = security_files_digest(&c);
        assert_eq!(before, security_files_digest(&c));
        std::fs::write(&f, "two\n").unwrap();
        assert_ne!(before, security_files_digest(&c));
    }

    #[test]
    fn a_changed_secret_is_named_by_its_section() {
        let with = |pw: &str| {
            cfg(&format!(
                "etcd:\n  endpoints: [\"http://e:1\"]\n  username: u\n  password: {pw}\n"
            ))
        };
        let p = plan(&with("one"), &with("two"));
        assert_eq!(p.restart_needed, ["etcd"]);
    }

    #[test]
    fn collect_under_etcd_is_not_applied_and_etcd_toggles_need_a_restart() {
        let etcd = "etcd:\n  endpoints: [\"http://e:1\"]\n";
        let p = plan(&cfg(&format!("{etcd}{ONE}")), &cfg(&format!("{etcd}{TWO}")));
        assert_eq!(p.collect, None);
        assert!(p.summary().contains("not used"), "{}", p.summary());
        let p = plan(&cfg(ONE), &cfg(&format!("{etcd}{ONE}")));
        assert_eq!(p.restart_needed, ["etcd"]);
    }
}
