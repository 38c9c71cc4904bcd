//! Micro-benchmarks of the two pure hot paths, no broker needed:
//! `cargo bench --bench micro` (a plain harness: medians of timed rounds).
//!
//! - the line splitter ([`logagent::lines::LineBuffer`]): 64 KiB reads of ~120-byte
//!   lines, as the tailer does;
//! - the watermark tracker ([`logagent::ship::Tracker`]): push then ack, in order,
//!   in reverse, and interleaved over three partitions.
//!
//! Regressions show up as a higher ns/line than the figures in the README.

use std::hint::black_box;
use std::time::{Duration, Instant};

use logagent::lines::LineBuffer;
use logagent::ship::Tracker;

/// Median of `rounds` timings of `f`, per `items`, in ns.
fn per_item(rounds: usize, items: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<Duration> = (0..rounds)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2].as_nanos() as f64 / items as f64
}

fn main() {
    // Same shape as the benchmark's lines: ~120 bytes, digits and text.
    let mut data = Vec::new();
    let mut n = 0;
    while data.len() < 16 << 20 {
        data.extend_from_slice(
            format!("10.0.{}.{} - - [22/Nov/2026:10:00:00 +0000] \"GET /api/v1/items/{n} HTTP/1.1\" 200 512 seq={n:010}....\n", n % 250, n % 7)
                .as_bytes(),
        );
        n += 1;
    }
    let lines = n;
    let ns = per_item(9, lines, || {
        let mut b = LineBuffer::new(0, 1 << 20);
        let mut got = 0usize;
        for piece in data.chunks(64 * 1024) {
            b.push(piece);
            if let Some(t) = b.take_lines() {
                got += t.lines.len();
                black_box(&t);
            }
        }
        assert_eq!(got, lines);
    });
    println!(
        "splitter: {ns:.1} ns/line, {:.0} MB/s ({lines} lines of ~{} bytes in 64 KiB reads)",
        data.len() as f64 / lines as f64 / ns * 1e3,
        data.len() / lines
    );

    let k = 100_000;
    for (name, order) in [
        ("in order", (0..k).collect::<Vec<_>>()),
        ("reversed", (0..k).rev().collect()),
        (
            "3 partitions",
            (0..3).flat_map(|p| (p..k).step_by(3)).collect(),
        ),
    ] {
        let ns = per_item(9, k, || {
            let mut t = Tracker::new();
            let seqs: Vec<u64> = (0..k as u64)
                .map(|i| t.push(i * 120, (i + 1) * 120))
                .collect();
            for &i in &order {
                t.ack(seqs[i] as u32);
            }
            assert_eq!(t.take_commit(), Some(k as u64 * 120));
            black_box(&t);
        });
        println!("tracker, acks {name}: {ns:.1} ns/line (push + ack)");
    }
}
