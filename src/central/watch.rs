//! The watcher thread: holds one watch stream on a host's keys and hands each message
//! to the config thread, waking it.
//!
//! A thread of its own because the config thread also keeps time (glob rescans, status,
//! keep-alives) and a blocking read cannot be interrupted without an async runtime. The
//! stream ends by itself after a renewal time (see [`EtcdClient::watch`]), so a watcher
//! the config thread gave up on (its messages are dropped with its channel) or a silently
//! dead connection never lives longer than that. No logging here: the config thread
//! decides what a message means.

use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};

use crate::etcd::{EtcdClient, EtcdError, WatchMsg};
use crate::stop::Waker;

/// What a watcher reports.
pub type Report = Result<WatchMsg, EtcdError>;

/// The config thread's end of a watcher.
pub struct Watch {
    rx: Receiver<Report>,
}

impl Watch {
    /// Starts a watcher on `keys` from `from` with `client` (a fork of the config
    /// thread's: its endpoint and token); `waker` is poked after each report.
    pub fn start(
        mut client: EtcdClient,
        keys: Vec<String>,
        from: i64,
        renew: Duration,
        waker: Waker,
    ) -> std::io::Result<Watch> {
        // Small queue: the config thread drains it on every wake; a watcher that gets
        // ahead of it waits (etcd then holds the events, bounded by its own buffers).
        let (tx, rx) = crossbeam_channel::bounded::<Report>(64);
        std::thread::Builder::new()
            .name("etcd-watch".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let mut stream = match client.watch(&keys, from, renew) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        waker.wake();
                        return;
                    }
                };
                loop {
                    let msg = stream.next_msg();
                    // A cancel ends the stream's use: drop its connection (and etcd's
                    // watchers behind it) now, not at the renewal deadline.
                    let last = matches!(msg, Err(_) | Ok(WatchMsg::Canceled { .. }));
                    if tx.send(msg).is_err() {
                        return; // the config thread dropped this watch
                    }
                    waker.wake();
                    if last {
                        return;
                    }
                }
            })?;
        Ok(Watch { rx })
    }

    /// The next report, if one is waiting; `Some(Err(WatchEnded))` if the thread is gone
    /// without saying why (it cannot: it always reports its end).
    pub fn try_next(&self) -> Option<Report> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(EtcdError::WatchEnded(
                "the watcher thread is gone".into(),
            ))),
        }
    }
}
