//! Whether one source's records may go to Kafka now: the hold-and-probe state machine
//! behind "an entry error blocks that entry only".
//!
//! Pure: no I/O, no clock of its own (every call is given `now`), so every transition is
//! unit tested. The producer owns one [`Flow`] per source and does what the returned
//! [`Event`]s say (log, pause the tailer, release what was held).

use std::time::{Duration, Instant};

use super::kafka::ErrorClass;

/// How long a source waits after a transient refusal before its next try.
pub const TRANSIENT_RETRY: Duration = Duration::from_secs(1);

/// The state of one source's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Records go out as they come.
    Open,
    /// Kafka refused a record: nothing of this source is sent until `next_try`, then one
    /// record is sent as a probe.
    Held(Hold),
    /// A probe is out (`probe` is its opaque); its delivery report decides.
    Probing(Hold, usize),
}

/// Why and since when a source is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Transient or entry error.
    pub class: ErrorClass,
    /// The error as logged (librdkafka's words plus what to change).
    pub reason: String,
    /// When the first refusal of this spell came.
    pub since: Instant,
    /// Refusals during this spell (the first included).
    pub refused: u64,
    /// When the next probe may go.
    pub next_try: Instant,
    /// The probe must go out alone, with nothing else of its source in librdkafka:
    /// the refusal was of a batch too large for the topic, and only a record refused
    /// by itself tells that the record is too large.
    pub alone: bool,
}

/// What the producer must say or do after a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The source is held from now on (log once, pause its tailer).
    Held,
    /// Still held, for another reason than the one logged (log once more).
    ReasonChanged,
    /// Kafka took the probe: release what was held, resume the tailer.
    Recovered {
        /// Refusals during the spell.
        refused: u64,
        /// How long it lasted.
        after: Duration,
    },
}

impl Flow {
    /// Whether records may be sent now.
    pub fn is_open(&self) -> bool {
        matches!(self, Flow::Open)
    }

    /// The hold, if any.
    pub fn hold(&self) -> Option<&Hold> {
        match self {
            Flow::Open => None,
            Flow::Held(h) | Flow::Probing(h, _) => Some(h),
        }
    }

    /// A record of this source was refused with `class` for `reason`. `entry_retry` is
    /// the probe interval for entry errors. A refused probe puts the source back to
    /// waiting; any refusal while held only counts.
    pub fn refuse(
        &mut self,
        class: ErrorClass,
        reason: &str,
        now: Instant,
        entry_retry: Duration,
    ) -> Option<Event> {
        let wait = match class {
            ErrorClass::Entry | ErrorClass::Fatal => entry_retry,
            ErrorClass::Transient => TRANSIENT_RETRY,
        };
        match std::mem::replace(self, Flow::Open) {
            Flow::Open => {
                *self = Flow::Held(Hold {
                    class,
                    reason: reason.to_owned(),
                    since: now,
                    refused: 1,
                    next_try: now + wait,
                    alone: false,
                });
                Some(Event::Held)
            }
            Flow::Held(mut h) | Flow::Probing(mut h, _) => {
                h.refused += 1;
                h.next_try = h.next_try.max(now + wait);
                let changed = h.reason != reason;
                if changed {
                    h.reason = reason.to_owned();
                    h.class = class;
                }
                *self = Flow::Held(h);
                changed.then_some(Event::ReasonChanged)
            }
        }
    }

    /// From now on this hold's probes go out alone (see [`Hold::alone`]), the next one
    /// at once.
    pub fn probe_alone_now(&mut self, now: Instant) {
        if let Flow::Held(h) | Flow::Probing(h, _) = self {
            h.alone = true;
            h.next_try = now;
        }
    }

    /// Whether `opaque` is the probe out now.
    pub fn probe_is(&self, opaque: usize) -> bool {
        matches!(self, Flow::Probing(_, p) if *p == opaque)
    }

    /// Whether a probe should go now.
    pub fn probe_due(&self, now: Instant) -> bool {
        matches!(self, Flow::Held(h) if now >= h.next_try)
    }

    /// A probe (record `opaque`) was handed to librdkafka.
    pub fn probing(&mut self, opaque: usize) {
        if let Flow::Held(h) = std::mem::replace(self, Flow::Open) {
            *self = Flow::Probing(h, opaque);
        }
    }

    /// A probe could not even be tried (the topic is still missing, say): wait another
    /// interval without counting a refusal.
    pub fn postpone(&mut self, now: Instant, entry_retry: Duration) {
        if let Flow::Held(h) = self {
            h.next_try = now + entry_retry;
        }
    }

    /// Kafka acknowledged record `opaque` of this source. Only the probe's ack ends a
    /// hold: records sent before the hold began may still be acknowledged meanwhile.
    pub fn delivered(&mut self, opaque: usize, now: Instant) -> Option<Event> {
        match self {
            Flow::Probing(h, p) if *p == opaque => {
                let ev = Event::Recovered {
                    refused: h.refused,
                    after: now.saturating_duration_since(h.since),
                };
                *self = Flow::Open;
                Some(ev)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_secs(10);

    #[test]
    fn an_entry_error_holds_until_the_probe_is_acknowledged() {
        let t0 = Instant::now();
        let mut f = Flow::Open;
        assert_eq!(
            f.refuse(ErrorClass::Entry, "no such partition", t0, RETRY),
            Some(Event::Held)
        );
        assert!(!f.is_open());
        // Records already queued fail too: counted, not logged again.
        assert_eq!(
            f.refuse(ErrorClass::Entry, "no such partition", t0, RETRY),
            None
        );
        assert!(!f.probe_due(t0 + RETRY / 2));
        assert!(f.probe_due(t0 + RETRY));
        f.probing(7);
        assert!(!f.probe_due(t0 + RETRY * 5), "one probe at a time");
        assert_eq!(f.delivered(6, t0 + RETRY), None, "an older record's ack");
        assert_eq!(
            f.delivered(7, t0 + RETRY * 2),
            Some(Event::Recovered {
                refused: 2,
                after: RETRY * 2
            })
        );
        assert!(f.is_open());
    }

    #[test]
    fn a_refused_probe_waits_another_interval_and_a_new_reason_is_news() {
        let t0 = Instant::now();
        let mut f = Flow::Open;
        f.refuse(ErrorClass::Entry, "a", t0, RETRY);
        f.probing(1);
        assert_eq!(f.refuse(ErrorClass::Entry, "a", t0 + RETRY, RETRY), None);
        assert!(!f.probe_due(t0 + RETRY));
        assert!(f.probe_due(t0 + RETRY * 2));
        assert_eq!(
            f.refuse(ErrorClass::Entry, "b", t0 + RETRY, RETRY),
            Some(Event::ReasonChanged)
        );
        assert_eq!(
            f.hold().map(|h| (h.refused, h.reason.as_str())),
            Some((3, "b"))
        );
    }

    #[test]
    fn transient_refusals_retry_soon_and_postponing_does_not_count() {
        let t0 = Instant::now();
        let mut f = Flow::Open;
        f.refuse(ErrorClass::Transient, "purged", t0, RETRY);
        assert!(f.probe_due(t0 + TRANSIENT_RETRY));
        f.postpone(t0 + TRANSIENT_RETRY, RETRY);
        assert!(!f.probe_due(t0 + TRANSIENT_RETRY * 2));
        assert_eq!(f.hold().map(|h| h.refused), Some(1));
        assert_eq!(f.delivered(1, t0), None, "no probe out: nothing recovers");
    }
}
