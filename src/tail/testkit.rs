//! Helpers the tailer parts' unit tests share: a real tailer on a real file in a temp
//! directory, and what it handed on.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crossbeam_channel::Receiver;

use super::Tailer;
use crate::chunk::Chunk;
use crate::identity::FileId;
use crate::stop::Stopper;

/// `app.log` holding `content` in a temp directory, and a tailer of it (not opened yet).
pub(super) fn setup(
    content: &str,
) -> (tempfile::TempDir, PathBuf, Tailer, Receiver<Chunk>, Stopper) {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("app.log");
    fs::write(&log, content).unwrap();
    let (t, rx, stop) = Tailer::for_test(&log, &d.path().join("data"), 64);
    (d, log, t, rx, stop)
}

/// Reads what is there and hands its complete lines on.
pub(super) fn read(t: &mut Tailer) {
    t.open.as_mut().unwrap().read_some().unwrap().unwrap();
    assert!(t.ship_lines(false));
}

pub(super) fn append(p: &Path, s: &str) {
    let mut f = File::options().append(true).open(p).unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

/// The lines handed on so far.
pub(super) fn lines(rx: &Receiver<Chunk>) -> Vec<String> {
    rx.try_iter()
        .flat_map(|c| {
            (0..c.lines.len())
                .map(|i| String::from_utf8_lossy(c.payload(i)).into_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub(super) fn id_of(p: &Path) -> FileId {
    FileId::of(&fs::metadata(p).unwrap())
}
