//! Answers of etcd's JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, a prefix page, lease
//! grant and keep-alive): any JSON is read or refused with an error, never a panic; an
//! accepted read has a header revision; an error quotes at most a bounded part of the
//! answer (a proxy's error page can be megabytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use logagent::etcd::{self, EtcdError};

/// An error message stays one readable log line, whatever etcd (or a proxy) answered.
fn bounded(e: EtcdError) {
    let msg = e.to_string();
    assert!(
        msg.chars().count() <= 600,
        "an error of {} chars: {msg:.300}",
        msg.chars().count()
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    match etcd::get_answer(&v) {
        Ok(g) => assert!(g.revision > 0),
        Err(e) => bounded(e),
    }
    for keys in 0..4 {
        match etcd::txn_answer(&v, keys) {
            Ok(s) => {
                assert!(s.revision > 0);
                assert_eq!(s.kvs.len(), keys, "one answer per key asked");
            }
            Err(e) => bounded(e),
        }
    }
    match etcd::range_page(&v) {
        Ok((rev, _, _)) => assert!(rev > 0),
        Err(e) => bounded(e),
    }
    match etcd::lease_grant_answer(&v) {
        Ok(id) => assert_ne!(id, 0),
        Err(e) => bounded(e),
    }
    if let Err(e) = etcd::keepalive_answer(&v) {
        bounded(e);
    }
});
