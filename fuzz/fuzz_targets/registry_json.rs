//! `data_dir/registry.json`: any bytes load or are refused as corrupt, never a panic. A
//! registry that loads writes JSON that loads back to the same checkpoints and collect
//! paths (and writing that again changes nothing); every checkpoint is found by its
//! inode and its path, and deciding where to resume each file cannot panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use logagent::registry::{Checkpoint, Registry};
use logagent::tail::rotation::{start_position, Saved};

fn sorted(r: &Registry) -> Vec<Checkpoint> {
    let mut v: Vec<Checkpoint> = r.files().cloned().collect();
    v.sort_by(|a, b| (&a.path, a.id).cmp(&(&b.path, b.id)));
    v
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/var/lib/logagent/registry.json");
    let Ok(reg) = Registry::parse(path, data) else {
        return;
    };
    let json = reg.to_json().expect("a loaded registry serializes");
    let again = Registry::parse(path, &json).unwrap_or_else(|e| {
        panic!(
            "the registry it writes does not load: {e}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(
        sorted(&again),
        sorted(&reg),
        "the registry loads back to other checkpoints"
    );
    assert_eq!(
        again.to_json().unwrap(),
        json,
        "writing it again changes it"
    );
    for c in reg.files() {
        assert_eq!(reg.get(c.id), Some(c));
        assert!(reg.path_known(&c.path));
        assert!(
            reg.entries_for_path(&c.path).iter().any(|e| e.id == c.id),
            "{} not found by its path",
            c.path
        );
        let head = &data[..data.len().min(1024)];
        let saved = Saved {
            offset: c.offset,
            head_matches: c.same_file(c.born, head),
        };
        for size in [0, c.offset, c.size, u64::MAX] {
            let start = start_position(Some(saved), size, true, true);
            assert!(
                start.offset() <= size,
                "{start:?} past the end of {size} bytes"
            );
        }
    }
});
