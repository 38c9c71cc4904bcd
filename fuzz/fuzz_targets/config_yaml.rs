//! `agent.yaml`: any text is parsed (and validated) or refused with an error, never a
//! panic; a config that is accepted renders (`check-config`) to YAML that parses back to
//! the same config (secrets shown as `<redacted>`), and reloading it unchanged plans no
//! change.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use logagent::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("agent.yaml");
    let Ok(cfg) = Config::parse(text, path) else {
        return;
    };
    let yaml = cfg.to_yaml();
    let again = Config::parse(&yaml, path)
        .unwrap_or_else(|e| panic!("the resolved config does not parse back: {e}\n{yaml}"));
    let mut shown = cfg.clone();
    let redact = |s: &mut Option<String>| {
        if s.is_some() {
            *s = Some("<redacted>".into());
        }
    };
    redact(&mut shown.kafka.security.password);
    if let Some(o) = &mut shown.kafka.security.oauth {
        redact(&mut o.client_secret);
    }
    if let Some(e) = &mut shown.etcd {
        redact(&mut e.password);
    }
    // Secret-looking keys of `kafka.properties` are shown redacted too (whatever the
    // key: a fuzzed one with "token" in it is one).
    for (k, v) in shown.kafka.properties.iter_mut() {
        *v = logagent::secrets::redact(k, v).to_owned();
    }
    assert_eq!(
        again, shown,
        "the resolved config parses back to another:\n{yaml}"
    );
    let plan = logagent::reload::plan(&shown, &again);
    assert_eq!(
        plan,
        Default::default(),
        "reloading the same config changes something"
    );
    let screened = logagent::collect::screen(cfg.collect.clone(), &cfg.agent.allowed_paths);
    assert_eq!(
        screened.accepted.len() + screened.refused.len(),
        cfg.collect.len()
    );
});
