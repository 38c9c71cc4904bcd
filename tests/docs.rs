//! The configuration reference (docs/configuration.md, and the README with the other
//! docs) cannot drift from the config structs: every key that `agent.yaml` accepts must
//! have a row in one of their tables. The key lists come from
//! the parser itself (its "unknown field, expected one of …" message).

use std::path::Path;

use logagent::config::Config;

/// The keys a section accepts, read from the error for an unknown key in it.
fn keys_of(yaml_with_bogus_key: &str) -> Vec<String> {
    let e = Config::parse(yaml_with_bogus_key, Path::new("probe.yaml"))
        .expect_err("bogus key must be refused")
        .to_string();
    let list = e
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list in: {e}"));
    list.lines()
        .next()
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().trim_matches('`').to_owned())
        .filter(|k| !k.is_empty())
        .collect()
}

#[test]
fn every_config_key_is_documented_in_the_readme() {
    // The README and the documents it links (docs/: the configuration reference, and
    // the operating guide's tables of the metrics settings).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    for d in docs {
        readme.push_str(&std::fs::read_to_string(d).unwrap());
    }
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| ")).collect();
    let k = "kafka:\n  brokers: [b:1]\n";
    let sections = [
        ("top level", format!("{k}bogus_key: 1\n")),
        (
            "kafka",
            "kafka:\n  brokers: [b:1]\n  bogus_key: 1\n".to_string(),
        ),
        (
            "kafka.security",
            "kafka:\n  brokers: [b:1]\n  security:\n    bogus_key: 1\n".to_string(),
        ),
        (
            "kafka.security.oauth",
            "kafka:\n  brokers: [b:1]\n  security:\n    oauth:\n      token_endpoint_url: http://i\n      client_id: c\n      bogus_key: 1\n".to_string(),
        ),
        (
            "kafka.transactions",
            "kafka:\n  brokers: [b:1]\n  transactions:\n    bogus_key: 1\n".to_string(),
        ),
        ("agent", format!("{k}agent:\n  bogus_key: 1\n")),
        (
            "etcd",
            format!("{k}etcd:\n  endpoints: [\"http://e:1\"]\n  bogus_key: 1\n"),
        ),
        (
            "collect entry",
            format!("{k}collect:\n  - path: /a\n    topic: t\n    bogus_key: 1\n"),
        ),
    ];
    let mut missing = Vec::new();
    for (section, yaml) in sections {
        let keys = keys_of(&yaml);
        assert!(keys.len() >= 3, "{section}: suspiciously few keys {keys:?}");
        for key in keys {
            let documented = rows.iter().any(|r| r.contains(&format!("`{key}`")))
                || readme.contains(&format!("### `{key}:`"));
            if !documented {
                missing.push(format!("{section}: {key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "config keys without a row in the README or docs/: {missing:?}"
    );
}
