//! Stop flags that also wake sleepers: a thread waiting on a [`StopToken`] returns the
//! moment its [`Stopper`] fires, instead of finishing its poll interval.
//!
//! Built on a crossbeam channel that never carries a message: firing drops the sender,
//! which disconnects every receiver at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

/// The firing side. Cloneable; fires once, the first time [`Stopper::stop`] is called.
#[derive(Debug, Clone)]
pub struct Stopper(Arc<Mutex<Option<Sender<()>>>>);

/// The waiting side. Cloneable: every clone sees the same stop.
#[derive(Debug, Clone)]
pub struct StopToken(Receiver<()>);

/// A new, not yet fired, stopper and its token.
pub fn stop_pair() -> (Stopper, StopToken) {
    let (tx, rx) = crossbeam_channel::bounded(0);
    (Stopper(Arc::new(Mutex::new(Some(tx)))), StopToken(rx))
}

impl Stopper {
    /// Fires the stop; every token holder sees it immediately.
    pub fn stop(&self) {
        if let Ok(mut g) = self.0.lock() {
            g.take();
        }
    }

    /// Whether [`Stopper::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.lock().map(|g| g.is_none()).unwrap_or(true)
    }
}

impl StopToken {
    /// Whether the stop has fired.
    pub fn is_stopped(&self) -> bool {
        matches!(self.0.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Sleeps for `d` or until the stop fires; returns true if it fired.
    pub fn sleep(&self, d: Duration) -> bool {
        matches!(
            self.0.recv_timeout(d),
            Err(RecvTimeoutError::Disconnected) | Ok(())
        )
    }

    /// The channel, for use in `crossbeam_channel::select!`.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_wakes_a_sleeper() {
        let (s, t) = stop_pair();
        assert!(!t.is_stopped());
        assert!(!t.sleep(Duration::from_millis(1)));
        let t2 = t.clone();
        let h = std::thread::spawn(move || t2.sleep(Duration::from_secs(600)));
        s.stop();
        assert!(h.join().unwrap());
        assert!(t.is_stopped() && s.is_stopped());
        assert!(
            t.sleep(Duration::from_secs(600)),
            "a fired token never sleeps"
        );
    }
}
