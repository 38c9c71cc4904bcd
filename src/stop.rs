//! Stop flags that also wake sleepers: a thread sleeping on a [`StopToken`] returns the
//! moment its [`Stopper`] fires, instead of finishing its poll interval.
//!
//! A flag under a mutex plus a condvar: an idle tailer's poll sleep is one futex wait,
//! which matters when hundreds of tailers wake four times a second. A [`Waker`] ends
//! one sleep early without stopping anything (inotify saw the file change).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    stopped: bool,
    /// A change was reported since the last sleep ended.
    poked: bool,
    /// Flags fired with this one (see [`StopToken::child`]).
    children: Vec<Arc<Flag>>,
}

#[derive(Debug, Default)]
struct Flag {
    state: Mutex<State>,
    wake: Condvar,
}

impl Flag {
    fn get(&self) -> bool {
        self.state.lock().map(|g| g.stopped).unwrap_or(true)
    }
}

/// Ends the current (or next) sleep of a token's holder early, once.
#[derive(Debug, Clone)]
pub struct Waker(Arc<Flag>);

impl Waker {
    /// Wakes the sleeper; a poke while it is awake ends its next sleep at once.
    pub fn wake(&self) {
        // Already poked: the sleeper was woken for that poke and sees this one with it
        // (inotify reports a write as IN_MODIFY and IN_CLOSE_WRITE: one wake, not two).
        let already = match self.0.state.lock() {
            Ok(mut g) => std::mem::replace(&mut g.poked, true),
            Err(_) => false,
        };
        if !already {
            self.0.wake.notify_all();
        }
    }
}

/// Why a [`StopToken::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The stop fired.
    Stopped,
    /// A [`Waker`] fired.
    Poked,
    /// The time was up.
    Timeout,
}

/// The firing side. Cloneable; firing more than once is harmless.
#[derive(Debug, Clone)]
pub struct Stopper(Arc<Flag>);

/// The waiting side. Cloneable: every clone sees the same stop.
#[derive(Debug, Clone)]
pub struct StopToken(Arc<Flag>);

fn fire(flag: &Arc<Flag>) {
    let children = match flag.state.lock() {
        Ok(mut g) => {
            g.stopped = true;
            std::mem::take(&mut g.children)
        }
        Err(_) => Vec::new(),
    };
    flag.wake.notify_all();
    for c in &children {
        fire(c);
    }
}

/// A new, not yet fired, stopper and its token.
pub fn stop_pair() -> (Stopper, StopToken) {
    let f = Arc::new(Flag::default());
    (Stopper(f.clone()), StopToken(f))
}

impl Stopper {
    /// Fires the stop; every sleeping token holder wakes immediately.
    pub fn stop(&self) {
        fire(&self.0);
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

    /// Sleeps for `d` or until the stop fires (or a [`Waker`] pokes); returns true if
    /// the stop fired.
    pub fn sleep(&self, d: Duration) -> bool {
        self.wait(d) == Woke::Stopped
    }

    /// A token of its own that fires when this one does: its [`Waker`] pokes only its
    /// holder (the wakes of one token's waker reach every thread that waits on it).
    pub fn child(&self) -> StopToken {
        let child = Arc::new(Flag::default());
        let stopped = match self.0.state.lock() {
            Ok(mut g) => {
                if !g.stopped {
                    g.children.push(child.clone());
                }
                g.stopped
            }
            Err(_) => true,
        };
        if stopped {
            fire(&child);
        }
        StopToken(child)
    }

    /// The handle that ends this token's sleeps early.
    pub fn waker(&self) -> Waker {
        Waker(self.0.clone())
    }

    /// Sleeps for `d`, until the stop fires, or until a [`Waker`] pokes (a poke that
    /// came while awake ends this wait at once); says which.
    pub fn wait(&self, d: Duration) -> Woke {
        let deadline = Instant::now() + d;
        let Ok(mut g) = self.0.state.lock() else {
            return Woke::Stopped;
        };
        loop {
            if g.stopped {
                return Woke::Stopped;
            }
            if g.poked {
                g.poked = false;
                return Woke::Poked;
            }
            let now = Instant::now();
            if now >= deadline {
                return Woke::Timeout;
            }
            g = match self.0.wake.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(_) => return Woke::Stopped,
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

    #[test]
    fn a_child_stops_with_its_parent_and_is_poked_alone() {
        let (s, t) = stop_pair();
        let c = t.child();
        c.waker().wake();
        assert_eq!(
            t.wait(Duration::from_millis(1)),
            Woke::Timeout,
            "the parent is not poked"
        );
        assert_eq!(c.wait(Duration::from_secs(600)), Woke::Poked);
        let c2 = c.clone();
        let h = std::thread::spawn(move || c2.wait(Duration::from_secs(600)));
        s.stop();
        assert_eq!(h.join().unwrap(), Woke::Stopped);
        assert!(
            t.child().is_stopped(),
            "a child of a fired token is born fired"
        );
    }

    #[test]
    fn a_poke_ends_one_sleep_and_is_not_a_stop() {
        let (s, t) = stop_pair();
        let w = t.waker();
        w.wake(); // while awake: the next wait returns at once
        assert_eq!(t.wait(Duration::from_secs(600)), Woke::Poked);
        assert_eq!(t.wait(Duration::from_millis(1)), Woke::Timeout);
        let t2 = t.clone();
        let h = std::thread::spawn(move || t2.wait(Duration::from_secs(600)));
        std::thread::sleep(Duration::from_millis(20));
        w.wake();
        assert_eq!(h.join().unwrap(), Woke::Poked);
        assert!(!t.is_stopped());
        s.stop();
        w.wake();
        assert_eq!(t.wait(Duration::from_secs(600)), Woke::Stopped, "stop wins");
    }
}
