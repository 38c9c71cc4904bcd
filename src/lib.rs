//! logagent: follows log files and ships every line to Kafka, at least once.
//!
//! The shape (see `DESIGN.md` in the project's shared notes): one tailer thread per file
//! ([`tail`]) → one bounded crossbeam channel of [`chunk::Chunk`]s → one producer
//! thread ([`ship`]) → Kafka, with acknowledged offsets kept in the [`registry`].
//! The [`supervisor`] starts and stops tailers from a wanted set of
//! [`collect::CollectEntry`]s; [`agent::run`] wires it all together.

#![warn(missing_docs)]

pub mod agent;
pub mod central;
pub mod chunk;
pub mod collect;
pub mod config;
pub mod consume;
pub mod content;
pub mod datadir;
pub mod etcd;
pub mod expand;
pub mod http;
pub mod identity;
pub mod lines;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod pem;
pub mod registry;
pub mod reload;
pub mod restart;
pub mod secrets;
pub mod ship;
pub mod stop;
pub mod supervisor;
pub mod tail;
pub mod time;
pub mod tls_files;

/// Settings every property test shares: 512 cases in CI, and no seed files (a failure
/// found once becomes an explicit unit test beside the property).
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: 512,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
