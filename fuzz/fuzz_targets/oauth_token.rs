//! The OIDC token endpoint's answer (OAUTHBEARER, client credentials): any text gives a
//! token or an error, never a panic (overflow checks are on); a token is never empty,
//! and one that says it lives `expires_in` seconds (no JWT `exp`) does not expire
//! before now.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logagent::ship::oauth::parse_token;

const NOW_MS: i64 = 1_795_335_034_123;

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    let Ok(t) = parse_token(&body, "logagent", NOW_MS) else {
        return;
    };
    assert!(!t.value.is_empty());
    let v: serde_json::Value = serde_json::from_str(&body).expect("a token came from JSON");
    let has_exp = t.value.contains('.');
    if !has_exp && v["expires_in"].as_i64().is_some_and(|s| s >= 0) {
        assert!(
            t.expires_ms >= NOW_MS,
            "expires before now: {}",
            t.expires_ms
        );
    }
});
