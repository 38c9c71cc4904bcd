//! A watch stream (`POST /v3/watch`, newline-delimited JSON): any bytes give messages
//! and then one error (a bad line, a line too long, the end), never a panic, and the
//! same messages and the same end whatever sizes the network delivered the bytes in.
//!
//! Input: byte 0 seeds the delivery sizes; the rest is the stream.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use logagent::etcd::WatchStream;

/// A line longer than this is refused (the agent's is 32 MiB; small here so the bound
/// is exercised).
const MAX_LINE: usize = 1000;

/// Delivers `data` in reads of the sizes `sizes` (cycled; 0 means the rest).
struct Pieces {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = match self.sizes[self.turn % self.sizes.len()] {
            0 => usize::MAX,
            n => n,
        };
        self.turn += 1;
        let n = want.min(buf.len()).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn messages(data: &[u8], sizes: Vec<usize>) -> Vec<String> {
    let reader = Pieces {
        data: data.to_vec(),
        at: 0,
        sizes,
        turn: 0,
    };
    let mut s = WatchStream::from_reader(Box::new(reader), MAX_LINE);
    let mut out = Vec::new();
    // Each message takes at least one byte of the stream.
    for _ in 0..=data.len() {
        match s.next_msg() {
            Ok(m) => out.push(format!("{m:?}")),
            Err(e) => {
                out.push(format!("error: {e}"));
                return out;
            }
        }
    }
    panic!("more messages than bytes: {out:?}");
}

fuzz_target!(|input: &[u8]| {
    let Some((&seed, data)) = input.split_first() else {
        return;
    };
    let whole = messages(data, vec![0]);
    let bytewise = messages(data, vec![1]);
    assert_eq!(whole, bytewise, "read whole vs byte by byte");
    let mut x = u32::from(seed) | 0x100;
    let sizes: Vec<usize> = (0..16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            1 + (x % 97) as usize
        })
        .collect();
    let pieces = messages(data, sizes.clone());
    assert_eq!(whole, pieces, "read whole vs in pieces of {sizes:?}");
});
