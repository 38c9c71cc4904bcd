//! Stop flags that also wake sleepers: a thread sleeping on a [`StopToken`] returns the
//! moment its [`Stopper`] fires, instead of finishing its poll interval.
//!
//! A flag under a mutex plus a condvar: an idle tailer's poll sleep is one futex wait,
//! which matters when hundreds of tailers wake four times a second.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Flag {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Flag {
    fn get(&self) -> bool {
        self.stopped.lock().map(|g| *g).unwrap_or(true)
    }
}

/// The firing side. Cloneable; firing more than once is harmless.
#[derive(Debug, Clone)]
pub struct Stopper(Arc<Flag>);

/// The waiting side. Cloneable: every clone sees the same stop.
#[derive(Debug, Clone)]
pub struct StopToken(Arc<Flag>);

/// A new, not yet fired, stopper and its token.
pub fn stop_pair() -> (Stopper, StopToken) {
    let f = Arc::new(Flag::default());
    (Stopper(f.clone()), StopToken(f))
}

impl Stopper {
    /// Fires the stop; every sleeping token holder wakes immediately.
    pub fn stop(&self) {
        if let Ok(mut g) = self.0.stopped.lock() {
            *g = true;
        }
        self.0.wake.notify_all();
    }

    /// Whether [`Stopper::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.get()
    }
}

impl StopToken {
    /// Whether the stop has fired.
    pub fn is_stopped(&self) -> bool {
        self.0.get()
    }

    /// Sleeps for `d` or until the stop fires; returns true if it fired.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let Ok(mut g) = self.0.stopped.lock() else {
            return true;
        };
        loop {
            if *g {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = match self.0.wake.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(_) => return true,
            };
        }
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
