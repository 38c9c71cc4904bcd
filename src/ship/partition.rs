//! Which partition a source's next record goes to: librdkafka's choice, a fixed one, or
//! the topic's partitions in turn (their count read from the brokers, re-read every
//! 10 s while unknown).

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
        match src.route {
            Route::Default => None,
            Route::Partition(p) => Some(p),
            Route::RoundRobin => {
                let stale = self.round_robin.get(&src.topic).is_none_or(|r| {
                    r.partitions == 0 && r.checked.elapsed() > Duration::from_secs(10)
                });
                if stale {
                    let n = producer
                        .client()
                        .fetch_metadata(Some(&src.topic), Duration::from_secs(2))
                        .ok()
                        .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                        .unwrap_or(0);
                    if n == 0 {
                        warn!("topic {}: partition count unknown yet; round robin falls back to librdkafka's choice", src.topic);
                    }
                    self.round_robin.insert(
                        src.topic.clone(),
                        RoundRobin {
                            partitions: n,
                            next: 0,
                            checked: Instant::now(),
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
