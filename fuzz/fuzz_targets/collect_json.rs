//! The collect list in JSON (an etcd value, or `config push`'s file): any bytes are
//! accepted or refused, never a panic. An accepted list: every entry's content options
//! compile (the validator's promise to the tailer), it serializes and parses back to the
//! same list, and the host's sources take it as the value of its key (the merge keeps
//! one entry per path). A refused value leaves the source's last good value in place.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use logagent::central::sources::{CachedSource, Observed, Sources};
use logagent::collect;
use logagent::content::Rules;
use logagent::etcd::KeyValue;

const HOST: &str = "/logagent/hosts/web-1";
const GROUP: &str = "/logagent/groups/web";
const GOOD: &str = r#"[{"path":"/var/log/app.log","topic":"app"}]"#;

fn kv(key: &str, rev: i64, value: &[u8]) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.to_vec(),
        mod_revision: rev,
        lease: 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = collect::parse_json(&text);
    if let Ok(entries) = &parsed {
        for e in entries {
            e.validate()
                .expect("parse_json accepted an entry that does not validate");
            Rules::for_entry(e, "web-1", 1 << 20)
                .unwrap_or_else(|why| panic!("validated entry whose rules fail: {why}: {e:?}"));
            let _ = e.record_key("web-1", "/var/log/x.log");
        }
        let json = serde_json::to_string(entries).expect("entries serialize");
        let again = collect::parse_json(&json)
            .unwrap_or_else(|e| panic!("a valid list serialized does not parse back: {e}\n{json}"));
        assert_eq!(&again, entries, "the list parses back to another: {json}");
    }

    // The host's key says GOOD first, then these bytes; the group's key says these bytes.
    let mut s = Sources::new(HOST.into(), &[("web".into(), GROUP.into())]);
    assert_eq!(
        s.get_mut(HOST)
            .unwrap()
            .observe(Some(&kv(HOST, 2, GOOD.as_bytes()))),
        Observed::Changed
    );
    let host = s.get_mut(HOST).unwrap().observe(Some(&kv(HOST, 3, data)));
    let group = s.get_mut(GROUP).unwrap().observe(Some(&kv(GROUP, 4, data)));
    assert_eq!(host == Observed::Changed, group == Observed::Changed);
    match &parsed {
        Ok(_) => assert_eq!(host, Observed::Changed),
        Err(_) => {
            assert!(matches!(host, Observed::Rejected(_)), "{host:?}");
            assert_eq!(
                s.get_mut(HOST).unwrap().revision(),
                2,
                "the last good value stays"
            );
        }
    }
    assert_eq!(
        s.get_mut(HOST).unwrap().observe(Some(&kv(HOST, 3, data))),
        Observed::Same
    );
    let merged = s.merged();
    let paths: BTreeSet<&str> = merged
        .entries
        .iter()
        .map(|f| f.entry.path.as_str())
        .collect();
    assert_eq!(paths.len(), merged.entries.len(), "one entry per path");
    for src in s.iter() {
        for e in src.entries() {
            assert!(
                paths.contains(e.path.as_str()),
                "{} lost in the merge",
                e.path
            );
        }
    }

    // The cache of the last applied values, written and read back (a start without etcd).
    let cache: Vec<CachedSource> = s.to_cache();
    let mut fresh = Sources::new(HOST.into(), &[("web".into(), GROUP.into())]);
    fresh.load_cache(&cache);
    assert_eq!(
        fresh.merged(),
        merged,
        "the cached values merge to another list"
    );
    if let Ok(cached) = serde_json::from_slice::<Vec<CachedSource>>(data) {
        let mut other = Sources::new(HOST.into(), &[("web".into(), GROUP.into())]);
        other.load_cache(&cached);
        let _ = other.merged();
    }
});
