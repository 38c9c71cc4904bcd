//! Log lines to stderr (text or JSON), at a level a SIGHUP can change.
//!
//! env_logger fixes its filter when it is built, and `log::set_max_level` alone can only
//! lower what that filter lets through. So the filter is chosen per record here: the
//! `agent.log_level` override when one is set (every module at that level), otherwise
//! `RUST_LOG` (default `info`), kept as parsed at start. The writer itself filters nothing.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use log::{LevelFilter, Log, Metadata, Record};

use crate::config::{LogFormat, LogLevel};

/// The override: 0 none, else 1 + the [`LogLevel`] index.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);
/// The most verbose level `RUST_LOG` lets through, as `LevelFilter as usize`.
static RUST_LOG_MAX: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

const LEVELS: [LogLevel; 6] = [
    LogLevel::Off,
    LogLevel::Error,
    LogLevel::Warn,
    LogLevel::Info,
    LogLevel::Debug,
    LogLevel::Trace,
];

fn override_level() -> Option<LevelFilter> {
    let i = usize::from(OVERRIDE.load(Ordering::Relaxed));
    i.checked_sub(1)
        .and_then(|i| LEVELS.get(i))
        .map(|l| l.filter())
}

fn rust_log_max() -> LevelFilter {
    let n = RUST_LOG_MAX.load(Ordering::Relaxed);
    LevelFilter::iter()
        .find(|f| *f as usize == n)
        .unwrap_or(LevelFilter::Info)
}

struct Leveled {
    /// Only asked whether `RUST_LOG` lets a record through.
    rust_log: env_logger::Logger,
    /// Writes every record it is handed.
    writer: env_logger::Logger,
}

impl Log for Leveled {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        match override_level() {
            Some(level) => m.level() <= level,
            None => self.rust_log.enabled(m),
        }
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            self.writer.log(r);
        }
    }

    fn flush(&self) {
        self.writer.flush();
    }
}

/// Installs the logger: `format` lines, at `level` if set, else at `RUST_LOG`.
pub fn init(format: LogFormat, level: Option<LogLevel>) {
    let rust_log =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    RUST_LOG_MAX.store(rust_log.filter() as usize, Ordering::Relaxed);
    let mut w = env_logger::Builder::new();
    w.filter_level(LevelFilter::Trace);
    match format {
        LogFormat::Text => {
            w.format_timestamp_millis();
        }
        LogFormat::Json => {
            w.format(|buf, r| {
                use std::io::Write;
                let line = serde_json::json!({
                    "ts": buf.timestamp_millis().to_string(),
                    "level": r.level().as_str(),
                    "target": r.target(),
                    "msg": r.args().to_string(),
                });
                writeln!(buf, "{line}")
            });
        }
    }
    let writer = w.build();
    // A logger already installed (a second init) keeps running; only the level follows.
    let _ = log::set_boxed_logger(Box::new(Leveled { rust_log, writer }));
    set_level(level);
}

/// Sets the `agent.log_level` override (`None`: back to `RUST_LOG`), effective at once
/// for every thread.
pub fn set_level(level: Option<LogLevel>) {
    let code = level
        .and_then(|l| LEVELS.iter().position(|x| *x == l))
        .and_then(|i| u8::try_from(i + 1).ok())
        .unwrap_or(0);
    OVERRIDE.store(code, Ordering::Relaxed);
    // The global cap lets the macros skip formatting what no filter would write.
    log::set_max_level(level.map_or_else(rust_log_max, LogLevel::filter));
}
