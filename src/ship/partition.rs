//! Which partition a source's next record goes to: librdkafka's choice, a fixed one, or
//! the topic's partitions in turn (their count read from the brokers, re-read every
//! 10 s while unknown). The decision is [`Partitioner::pick`]'s `pick_with`, given the
//! partition count as a plain value (unit tested); `pick` asks the brokers for it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::warn;
use rdkafka::producer::{BaseProducer, Producer};

use crate::chunk::{Route, Source};

use super::kafka::Context;

struct RoundRobin {
    partitions: i32,
    next: i32,
    checked: Instant,
}

/// Partition choice for every topic the producer sends to.
#[derive(Default)]
pub struct Partitioner {
    round_robin: HashMap<String, RoundRobin>,
}

impl Partitioner {
    /// The partition for the next record of `src` (`None`: librdkafka chooses).
    pub fn pick(&mut self, src: &Source, producer: &BaseProducer<Context>) -> Option<i32> {
        self.pick_with(src, Instant::now(), || {
            let n = producer
                .client()
                .fetch_metadata(Some(&src.topic), Duration::from_secs(2))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                .unwrap_or(0);
            (n, Instant::now())
        })
    }

    /// [`Partitioner::pick`]'s decision, with the brokers' answer as a plain value:
    /// `count` says how many partitions the topic has (0: unknown) and when that was
    /// known, and is asked only for a round-robin topic seen first, or whose count was
    /// still unknown more than 10 s before `now`.
    fn pick_with(
        &mut self,
        src: &Source,
        now: Instant,
        count: impl FnOnce() -> (i32, Instant),
    ) -> Option<i32> {
        match src.route {
            Route::Default => None,
            Route::Partition(p) => Some(p),
            Route::RoundRobin => {
                let stale = self.round_robin.get(&src.topic).is_none_or(|r| {
                    r.partitions == 0
                        && now.saturating_duration_since(r.checked) > Duration::from_secs(10)
                });
                if stale {
                    let (n, checked) = count();
                    if n == 0 {
                        warn!("topic {}: partition count unknown yet; round robin falls back to librdkafka's choice", src.topic);
                    }
                    self.round_robin.insert(
                        src.topic.clone(),
                        RoundRobin {
                            partitions: n,
                            next: 0,
                            checked,
                        },
                    );
                }
                let rr = self.round_robin.get_mut(&src.topic)?;
                if rr.partitions == 0 {
                    return None;
                }
                let p = rr.next;
                rr.next = (rr.next + 1) % rr.partitions;
                Some(p)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Arc;

    use super::*;
    use crate::ship::testkit::source;

    fn routed(topic: &str, route: Route) -> Arc<Source> {
        let (s, _) = source(1, "/l/a.log", 1, topic);
        let mut s = Arc::into_inner(s).unwrap();
        s.route = route;
        Arc::new(s)
    }

    #[test]
    fn default_and_fixed_routes_never_ask_the_brokers() {
        let mut p = Partitioner::default();
        let now = Instant::now();
        let asked = Cell::new(0);
        let count = || {
            asked.set(asked.get() + 1);
            (4, now)
        };
        assert_eq!(p.pick_with(&routed("t", Route::Default), now, count), None);
        assert_eq!(
            p.pick_with(&routed("t", Route::Partition(3)), now, count),
            Some(3)
        );
        assert_eq!(asked.get(), 0);
    }

    #[test]
    fn round_robin_takes_the_partitions_in_turn_per_topic_asking_once() {
        let mut p = Partitioner::default();
        let now = Instant::now();
        let (a, b) = (
            routed("a", Route::RoundRobin),
            routed("b", Route::RoundRobin),
        );
        let asked = Cell::new(0);
        let mut picks = Vec::new();
        for _ in 0..4 {
            picks.push(p.pick_with(&a, now, || {
                asked.set(asked.get() + 1);
                (3, now)
            }));
        }
        assert_eq!(picks, [Some(0), Some(1), Some(2), Some(0)]);
        assert_eq!(
            p.pick_with(&b, now, || (2, now)),
            Some(0),
            "a topic of its own"
        );
        assert_eq!(
            p.pick_with(&a, now + Duration::from_secs(3600), || (9, now)),
            Some(1)
        );
        assert_eq!(asked.get(), 1, "a known count is never asked again");
    }

    #[test]
    fn an_unknown_count_leaves_the_choice_to_librdkafka_and_is_asked_again_after_10_s() {
        let mut p = Partitioner::default();
        let t0 = Instant::now();
        let a = routed("a", Route::RoundRobin);
        // The count is known when the brokers answer (a request may take its timeout).
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(p.pick_with(&a, t0, || (0, t1)), None);
        let not_asked = || -> (i32, Instant) { panic!("asked again within 10 s") };
        let t11 = t0 + Duration::from_secs(11);
        assert_eq!(
            p.pick_with(&a, t11, not_asked),
            None,
            "10 s after the answer"
        );
        let t13 = t0 + Duration::from_secs(13);
        assert_eq!(p.pick_with(&a, t13, || (2, t13)), Some(0));
        assert_eq!(p.pick_with(&a, t13, || (2, t13)), Some(1));
    }
}
