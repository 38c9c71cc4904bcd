//! The reliability scenario runner: a paced writer of numbered lines, and a checker
//! that reads every partition back and reports, per file, how many lines were expected,
//! received, missing and duplicated.
//!
//! A scenario passes only with missing = 0; duplicates must stay within the bound the
//! scenario states. When `LOGAGENT_RELIABILITY_REPORT` names a file, each report is
//! appended to it as one Markdown table row (`scripts/reliability.sh` prints the table).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{line, Record};

/// What a writer does besides writing, every `period` (rotate, copytruncate, …). It gets
/// the path and the action's number (1, 2, …). The writer pauses while it runs, as a
/// logging process does while logrotate holds it.
pub type Action = Box<dyn FnMut(&Path, usize) + Send>;

/// A thread appending numbered lines `<tag>:<seq>:<padding>` to one path at a steady rate.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(usize, usize)>>,
}

impl Writer {
    /// Writes `rate` lines/s to `path` for `duration` (or until [`Writer::finish`]), in
    /// 10 ms batches, numbering from `first`. With `every`, runs the action each period.
    /// Finishing returns the next sequence number: lines `0..n` of `tag` exist.
    pub fn start(
        path: &Path,
        tag: &str,
        first: usize,
        rate: usize,
        duration: Duration,
        every: Option<(Duration, Action)>,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, tag, flag) = (path.to_path_buf(), tag.to_owned(), stop.clone());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let tick = Duration::from_millis(10);
            let mut every = every;
            let mut next_action = every.as_ref().map(|(p, _)| start + *p);
            let (mut n, mut actions) = (first, 0usize);
            let mut buf = String::new();
            while start.elapsed() < duration && !flag.load(Ordering::Relaxed) {
                // Catch up to where the rate says we should be (a slow tick writes more).
                let due = first + ((start.elapsed().as_secs_f64() + 0.01) * rate as f64) as usize;
                buf.clear();
                while n < due {
                    buf.push_str(&line(&tag, n));
                    buf.push('\n');
                    n += 1;
                }
                if !buf.is_empty() {
                    append(&path, buf.as_bytes());
                }
                if let (Some(at), Some((period, action))) = (next_action, every.as_mut()) {
                    if Instant::now() >= at {
                        actions += 1;
                        action(&path, actions);
                        next_action = Some(at + *period);
                    }
                }
                std::thread::sleep(tick);
            }
            (n, actions)
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops writing; returns (next sequence number, actions run).
    pub fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits until the writer's duration is over; returns (next sequence number, actions run).
    pub fn join(mut self) -> (usize, usize) {
        self.handle
            .take()
            .map(|h| h.join().expect("writer thread"))
            .unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(bytes).expect("append");
}

/// The outcome for one file (one tag).
#[derive(Debug, Clone)]
pub struct FileReport {
    pub tag: String,
    pub expected: usize,
    pub received: usize,
    pub missing: usize,
    pub duplicated: usize,
    /// The first few missing sequence numbers, for the failure message.
    pub first_missing: Vec<usize>,
}

/// The outcome of a scenario: one [`FileReport`] per file, plus records nobody wrote.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub files: Vec<FileReport>,
    /// Records of these tags with a sequence number outside 0..expected.
    pub unexpected: usize,
}

impl Report {
    /// Compares what arrived with lines `0..n` of each `(tag, n)`.
    pub fn check(scenario: &str, records: &[Record], expected: &[(String, usize)]) -> Report {
        let mut counts: HashMap<&[u8], usize> = HashMap::new();
        // Records per tag (the part before the first ':'), whatever their number.
        let mut per_tag: HashMap<&[u8], usize> = HashMap::new();
        for r in records {
            *counts.entry(r.payload.as_slice()).or_insert(0) += 1;
            if let Some(tag) = r.payload.split(|&b| b == b':').next() {
                *per_tag.entry(tag).or_insert(0) += 1;
            }
        }
        let mut unexpected = 0;
        let files = expected
            .iter()
            .map(|(tag, n)| {
                let mut f = FileReport {
                    tag: tag.clone(),
                    expected: *n,
                    received: 0,
                    missing: 0,
                    duplicated: 0,
                    first_missing: Vec::new(),
                };
                for i in 0..*n {
                    match counts.get(line(tag, i).as_bytes()) {
                        None => {
                            f.missing += 1;
                            if f.first_missing.len() < 10 {
                                f.first_missing.push(i);
                            }
                        }
                        Some(&c) => {
                            f.received += 1;
                            f.duplicated += c - 1;
                        }
                    }
                }
                let ours = per_tag.get(tag.as_bytes()).copied().unwrap_or(0);
                unexpected += ours - f.received - f.duplicated;
                f
            })
            .collect();
        Report {
            scenario: scenario.to_owned(),
            files,
            unexpected,
        }
    }

    /// Lines written over all files.
    pub fn expected(&self) -> usize {
        self.files.iter().map(|f| f.expected).sum()
    }

    /// Missing lines over all files.
    pub fn missing(&self) -> usize {
        self.files.iter().map(|f| f.missing).sum()
    }

    /// Duplicated lines over all files.
    pub fn duplicated(&self) -> usize {
        self.files.iter().map(|f| f.duplicated).sum()
    }

    /// Prints the per-file table, records the summary row, and asserts missing = 0,
    /// no records nobody wrote, and duplicates ≤ `dup_bound` (stated by the scenario,
    /// with `why` saying where the bound comes from).
    pub fn assert_ok(&self, dup_bound: usize, why: &str) {
        eprintln!("scenario {}:", self.scenario);
        eprintln!(
            "  {:<12} {:>10} {:>10} {:>8} {:>10}",
            "file", "expected", "received", "missing", "duplicated"
        );
        let shown = if self.files.len() > 20 {
            // 500 files: the ones with something to say, and the total.
            self.files
                .iter()
                .filter(|f| f.missing > 0 || f.duplicated > 0)
                .take(20)
                .collect::<Vec<_>>()
        } else {
            self.files.iter().collect()
        };
        for f in shown {
            eprintln!(
                "  {:<12} {:>10} {:>10} {:>8} {:>10}",
                f.tag, f.expected, f.received, f.missing, f.duplicated
            );
        }
        eprintln!(
            "  {:<12} {:>10} {:>10} {:>8} {:>10}  (bound {dup_bound}: {why})",
            format!("all {}", self.files.len()),
            self.expected(),
            self.expected() - self.missing(),
            self.missing(),
            self.duplicated()
        );
        self.record(dup_bound, why);
        for f in &self.files {
            assert_eq!(
                f.missing, 0,
                "{}: {} of {} lines of {} missing (first: {:?})",
                self.scenario, f.missing, f.expected, f.tag, f.first_missing
            );
        }
        assert_eq!(
            self.unexpected, 0,
            "{}: records nobody wrote",
            self.scenario
        );
        assert!(
            self.duplicated() <= dup_bound,
            "{}: {} duplicates, bound {dup_bound} ({why})",
            self.scenario,
            self.duplicated()
        );
    }

    fn record(&self, dup_bound: usize, why: &str) {
        let Some(out) = std::env::var_os("LOGAGENT_RELIABILITY_REPORT").map(PathBuf::from) else {
            return;
        };
        let row = format!(
            "| {} | {} | {} | {} | {} | {} ({why}) |\n",
            self.scenario,
            self.files.len(),
            self.expected(),
            self.missing(),
            self.duplicated(),
            dup_bound
        );
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(out) {
            let _ = f.write_all(row.as_bytes());
        }
    }
}
