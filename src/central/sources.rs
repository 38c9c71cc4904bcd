//! The keys a host's collect list comes from — its own key and one per group in
//! `etcd.groups` — with what etcd last said about each and the last good value of each,
//! and the pure merge of those values into the one list the host follows.
//!
//! Precedence: the host key first, then the groups in the order agent.yaml lists them;
//! for one path the first source that names it wins. A bad value of one source is
//! rejected alone: that source keeps its last good value, the others apply.

use serde::{Deserialize, Serialize};

use crate::collect::{self, CollectEntry};
use crate::etcd::KeyValue;

/// Where a source's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The host's own key.
    Host,
    /// A group's key (the group's name).
    Group(String),
}

/// What etcd last said about a key: its `mod_revision` (0: absent) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    mod_revision: i64,
    value: Option<Vec<u8>>,
}

/// A source's last good value.
#[derive(Debug, Clone, PartialEq)]
struct Good {
    /// 0: the key did not exist (the source adds nothing).
    mod_revision: i64,
    entries: Vec<CollectEntry>,
    raw: String,
}

/// One key the collect list comes from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The key.
    pub key: String,
    /// Host or group.
    pub origin: Origin,
    seen: Option<Seen>,
    good: Option<Good>,
    /// Why the newest value was rejected (its last good value still applies).
    pub error: Option<String>,
    /// The store revision this source is known at (a read's revision, or the last event
    /// taken): a watch event at or below it is older news and is skipped.
    pub seen_at: i64,
}

/// What an answer from etcd changed for one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The same revision and value as last time: nothing to do.
    Same,
    /// A new good value (or the key is gone: the source adds nothing now).
    Changed,
    /// A new value that does not validate; the last good value stays.
    Rejected(String),
}

impl Source {
    fn new(key: String, origin: Origin) -> Source {
        Source {
            key,
            origin,
            seen: None,
            good: None,
            error: None,
            seen_at: 0,
        }
    }

    /// Takes etcd's answer for this key (`None`: the key does not exist).
    ///
    /// Values are compared, not only revisions: after a restore from a snapshot, a later
    /// put can land on a revision seen before with another value.
    pub fn observe(&mut self, kv: Option<&KeyValue>) -> Observed {
        let seen = Seen {
            mod_revision: kv.map_or(0, |kv| kv.mod_revision),
            value: kv.map(|kv| kv.value.clone()),
        };
        if self.seen.as_ref() == Some(&seen) {
            return Observed::Same;
        }
        self.seen = Some(seen);
        let Some(kv) = kv else {
            self.error = None;
            self.good = Some(Good {
                mod_revision: 0,
                entries: Vec::new(),
                raw: "[]".into(),
            });
            return Observed::Changed;
        };
        let text = String::from_utf8_lossy(&kv.value).into_owned();
        match collect::parse_json(&text) {
            Ok(entries) => {
                self.error = None;
                self.good = Some(Good {
                    mod_revision: kv.mod_revision,
                    entries,
                    raw: text,
                });
                Observed::Changed
            }
            Err(why) => {
                let msg = format!(
                    "revision {} of {} rejected: {why}",
                    kv.mod_revision, self.key
                );
                self.error = Some(msg.clone());
                Observed::Rejected(msg)
            }
        }
    }

    /// Whether this answer differs from the last one (without taking it).
    pub fn differs(&self, kv: Option<&KeyValue>) -> bool {
        match &self.seen {
            None => true,
            Some(seen) => {
                seen.mod_revision != kv.map_or(0, |kv| kv.mod_revision)
                    || seen.value.as_deref() != kv.map(|kv| kv.value.as_slice())
            }
        }
    }

    /// `mod_revision` of the value that applies (0: none, or the key is absent).
    pub fn revision(&self) -> i64 {
        self.good.as_ref().map_or(0, |g| g.mod_revision)
    }

    /// The entries that apply from this source.
    pub fn entries(&self) -> &[CollectEntry] {
        self.good.as_ref().map_or(&[], |g| &g.entries)
    }

    /// How the source is called in logs: `host key /k` or `group web (/k)`.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::Host => format!("host key {}", self.key),
            Origin::Group(g) => format!("group {g} ({})", self.key),
        }
    }
}

/// One entry of a merged list and the key it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct FromKey {
    /// The entry.
    pub entry: CollectEntry,
    /// The key it came from.
    pub key: String,
}

/// A path named by two sources with different entries: the first one is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    /// The path.
    pub path: String,
    /// The key whose entry is used.
    pub used: String,
    /// The key whose entry is not.
    pub ignored: String,
}

/// The list a host follows, and the conflicts resolved on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// Entries in source order, one per path.
    pub entries: Vec<FromKey>,
    /// Paths a later source also named differently.
    pub shadowed: Vec<Shadowed>,
}

/// Merges lists in precedence order: the first list to name a path wins.
pub fn merge<'a>(lists: impl IntoIterator<Item = (&'a str, &'a [CollectEntry])>) -> Merged {
    let mut out = Merged::default();
    for (key, entries) in lists {
        for e in entries {
            match out.entries.iter().find(|f| f.entry.path == e.path) {
                Some(first) if first.entry != *e => out.shadowed.push(Shadowed {
                    path: e.path.clone(),
                    used: first.key.clone(),
                    ignored: key.to_owned(),
                }),
                Some(_) => {} // the same entry twice: nothing to say
                None => out.entries.push(FromKey {
                    entry: e.clone(),
                    key: key.to_owned(),
                }),
            }
        }
    }
    out
}

/// The sources of one host, in precedence order.
#[derive(Debug, Clone)]
pub struct Sources {
    list: Vec<Source>,
}

/// One source as kept in `data_dir` for starts without etcd.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedSource {
    /// Its key.
    pub key: String,
    /// Revision of the value (0: the key did not exist).
    pub mod_revision: i64,
    /// The value.
    pub value: String,
}

impl Sources {
    /// The host key, then one key per group.
    pub fn new(host_key: String, groups: &[(String, String)]) -> Sources {
        let mut list = vec![Source::new(host_key, Origin::Host)];
        for (name, key) in groups {
            list.push(Source::new(key.clone(), Origin::Group(name.clone())));
        }
        Sources { list }
    }

    /// Every key, in precedence order (the order of reads and watches).
    pub fn keys(&self) -> Vec<String> {
        self.list.iter().map(|s| s.key.clone()).collect()
    }

    /// The sources.
    pub fn iter(&self) -> impl Iterator<Item = &Source> {
        self.list.iter()
    }

    /// The source of `key`.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Source> {
        self.list.iter_mut().find(|s| s.key == key)
    }

    /// The source at `i` (the order of [`Sources::keys`]).
    pub fn at_mut(&mut self, i: usize) -> Option<&mut Source> {
        self.list.get_mut(i)
    }

    /// The merged list of every source's last good value.
    pub fn merged(&self) -> Merged {
        merge(self.list.iter().map(|s| (s.key.as_str(), s.entries())))
    }

    /// Whether the source of `key` has a value to apply (read or cached).
    pub fn has_value(&self, key: &str) -> bool {
        self.list.iter().any(|s| s.key == key && s.good.is_some())
    }

    /// The newest `mod_revision` among the values that apply: the "config revision" a
    /// host reports (it changes only when one of its sources does).
    pub fn revision(&self) -> i64 {
        self.list.iter().map(Source::revision).max().unwrap_or(0)
    }

    /// The rejection messages of every source.
    pub fn errors(&self) -> Option<String> {
        let v: Vec<&str> = self
            .list
            .iter()
            .filter_map(|s| s.error.as_deref())
            .collect();
        (!v.is_empty()).then(|| v.join("; "))
    }

    /// What to keep in `data_dir`.
    pub fn to_cache(&self) -> Vec<CachedSource> {
        self.list
            .iter()
            .filter_map(|s| {
                s.good.as_ref().map(|g| CachedSource {
                    key: s.key.clone(),
                    mod_revision: g.mod_revision,
                    value: g.raw.clone(),
                })
            })
            .collect()
    }

    /// Takes the cached values of the keys this host still uses; true if any applied.
    pub fn load_cache(&mut self, cached: &[CachedSource]) -> bool {
        let mut any = false;
        for c in cached {
            let Some(s) = self.get_mut(&c.key) else {
                continue; // a group this host left, or another host key
            };
            let kv = (c.mod_revision > 0).then(|| KeyValue {
                key: c.key.clone(),
                value: c.value.clone().into_bytes(),
                mod_revision: c.mod_revision,
                lease: 0,
            });
            any |= s.observe(kv.as_ref()) == Observed::Changed;
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, topic: &str) -> CollectEntry {
        collect::parse_json(&format!(r#"[{{"path":"{path}","topic":"{topic}"}}]"#))
            .unwrap()
            .remove(0)
    }

    fn kv(key: &str, rev: i64, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            mod_revision: rev,
            lease: 0,
        }
    }

    #[test]
    fn the_host_key_wins_then_groups_in_order() {
        let host = [e("/l/a", "host")];
        let web = [e("/l/a", "web"), e("/l/b", "web")];
        let java = [e("/l/b", "java"), e("/l/c", "java"), e("/l/c", "java")];
        let m = merge([("H", &host[..]), ("W", &web[..]), ("J", &java[..])]);
        let got: Vec<(&str, &str, &str)> = m
            .entries
            .iter()
            .map(|f| {
                (
                    f.entry.path.as_str(),
                    f.entry.topic.as_str(),
                    f.key.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/l/a", "host", "H"),
                ("/l/b", "web", "W"),
                ("/l/c", "java", "J")
            ]
        );
        let sh: Vec<(&str, &str, &str)> = m
            .shadowed
            .iter()
            .map(|s| (s.path.as_str(), s.used.as_str(), s.ignored.as_str()))
            .collect();
        assert_eq!(
            sh,
            [("/l/a", "H", "W"), ("/l/b", "W", "J")],
            "an identical repeat is not a conflict"
        );
    }

    #[test]
    fn a_bad_value_keeps_that_sources_last_good_one() {
        let mut s = Sources::new("/h".into(), &[("web".into(), "/g/web".into())]);
        assert_eq!(s.at_mut(0).unwrap().observe(None), Observed::Changed);
        let good = r#"[{"path":"/l/a","topic":"t"}]"#;
        assert_eq!(
            s.at_mut(1).unwrap().observe(Some(&kv("/g/web", 5, good))),
            Observed::Changed
        );
        assert_eq!(
            s.at_mut(1).unwrap().observe(Some(&kv("/g/web", 5, good))),
            Observed::Same
        );
        let bad = s.at_mut(1).unwrap().observe(Some(&kv("/g/web", 6, "[{")));
        assert!(matches!(bad, Observed::Rejected(ref m) if m.contains("revision 6 of /g/web")));
        assert_eq!(
            s.merged().entries.len(),
            1,
            "the last good group value still applies"
        );
        assert_eq!(s.revision(), 5);
        assert!(s.errors().unwrap().contains("/g/web"));
        // The bad value again is the same answer: no second rejection.
        assert_eq!(
            s.at_mut(1).unwrap().observe(Some(&kv("/g/web", 6, "[{"))),
            Observed::Same
        );
        // Fixed: the error goes.
        assert_eq!(
            s.at_mut(1).unwrap().observe(Some(&kv("/g/web", 7, "[]"))),
            Observed::Changed
        );
        assert_eq!((s.errors(), s.merged().entries.len()), (None, 0));
    }

    #[test]
    fn a_restored_store_reusing_a_revision_with_another_value_is_a_change() {
        let mut s = Sources::new("/h".into(), &[]);
        let src = s.at_mut(0).unwrap();
        assert_eq!(src.observe(Some(&kv("/h", 9, "[]"))), Observed::Changed);
        let other = r#"[{"path":"/l/x","topic":"t"}]"#;
        assert_eq!(src.observe(Some(&kv("/h", 9, other))), Observed::Changed);
        assert_eq!(s.merged().entries[0].entry.path, "/l/x");
    }

    #[test]
    fn the_cache_round_trips_and_ignores_keys_no_longer_used() {
        let mut s = Sources::new("/h".into(), &[("web".into(), "/g/web".into())]);
        s.at_mut(0).unwrap().observe(None);
        s.at_mut(1)
            .unwrap()
            .observe(Some(&kv("/g/web", 4, r#"[{"path":"/l/a","topic":"t"}]"#)));
        let mut cached = s.to_cache();
        cached.push(CachedSource {
            key: "/g/old".into(),
            mod_revision: 2,
            value: "[]".into(),
        });
        let mut fresh = Sources::new("/h".into(), &[("web".into(), "/g/web".into())]);
        assert!(fresh.load_cache(&cached));
        assert_eq!(fresh.merged(), s.merged());
        assert_eq!(fresh.revision(), 4);
        // etcd then says the same: nothing to apply.
        assert_eq!(
            fresh.at_mut(1).unwrap().observe(Some(&kv(
                "/g/web",
                4,
                r#"[{"path":"/l/a","topic":"t"}]"#
            ))),
            Observed::Same
        );
    }
}
