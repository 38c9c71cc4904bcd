//! The `logagent` command line: parse, load config, run, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use log::{error, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use signal_hook::low_level::signal_name;

use logagent::config::{Config, LogFormat};
use logagent::consume::{consume, ConsumeOptions};
use logagent::ops;
use logagent::registry;
use logagent::reload::Reloader;
use logagent::stop::stop_pair;

/// How the process ends: the one list of exit codes (`--help` and the README name
/// them). A second stop signal exits at once with 130 (see `run_agent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// 0: done, or stopped cleanly.
    Success,
    /// 1: a runtime failure.
    Failure,
    /// 2: a bad command line or config.
    Config,
    /// 3: `logagent fleet`: some host reports errors or is stale.
    Unhealthy,
    /// 4: `kafka.delivery: exactly_once`: another agent took this agent's
    /// transactional id (the unit does not restart it: the two would fence each other
    /// in turn). Also exited with directly by the producer thread when it is fenced.
    Fenced,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(match e {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Config => 2,
            Exit::Unhealthy => 3,
            Exit::Fenced => logagent::ship::txn::EXIT_FENCED as u8,
        })
    }
}

/// Where a fatal error is said: on stderr as `error: …` (the commands an operator
/// types), or in the agent's log (`run`, usually under systemd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    Stderr,
    Log,
}

/// An error that ends the process: what to say, where, and the exit code.
#[derive(Debug)]
struct Fatal {
    exit: Exit,
    report: Report,
    error: anyhow::Error,
}

impl Fatal {
    /// A bad command line or config, said on stderr.
    fn config(e: impl Into<anyhow::Error>) -> Fatal {
        Fatal {
            exit: Exit::Config,
            report: Report::Stderr,
            error: e.into(),
        }
    }

    /// A runtime failure, said on stderr.
    fn failure(e: impl Into<anyhow::Error>) -> Fatal {
        Fatal {
            exit: Exit::Failure,
            report: Report::Stderr,
            error: e.into(),
        }
    }

    /// The same, said in the log.
    fn logged(self) -> Fatal {
        Fatal {
            report: Report::Log,
            ..self
        }
    }
}

#[derive(Parser)]
#[command(
    name = "logagent",
    about = "Follows log files and ships every line to Kafka, at least once.",
    long_about = "Follows the log files named in agent.yaml (or, later, in etcd) and ships each \
new line to Kafka. Offsets are committed only after Kafka acknowledged the line, so a crash, a \
rotation or an hour-long Kafka outage loses nothing.\n\nFiles: /etc/logagent/agent.yaml (the \
config; `logagent check-config` prints it with every default), data_dir (default \
/var/lib/logagent) with registry.json, the ledger of acknowledged offsets.\n\nSignals: SIGTERM \
or SIGINT stop cleanly (tailers first, then the producer flushes for at most \
agent.shutdown_timeout_ms; a second signal exits at once with 130); SIGHUP reads agent.yaml \
again.\n\nExit codes: 0 stopped cleanly, 1 runtime failure, 2 bad command line or \
config.\n\nLogging: RUST_LOG (default info)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (for the default `run` command).
    #[arg(short, long, global = true, default_value = "/etc/logagent/agent.yaml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default command).
    Run,
    /// Check the config: print it with every default filled in (secret values hidden), or
    /// the first error (exit 2); warn when credentials would travel unencrypted.
    CheckConfig,
    /// Central config in etcd: push a collect list, or show what a host collects.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a host's status document (written back by its agent) as a table.
    Status {
        /// The host's IP (default: this host's).
        #[arg(long)]
        host: Option<String>,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every host that reports to etcd, one line each: state (ok, errors, stale), config
    /// revision, files, lag, bytes lost, errors. Exit 3 if any host reports errors or is
    /// stale (for monitoring), 1 if etcd cannot be read.
    Fleet {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print records of a topic as `partition offset key value`.
    Consume {
        /// Bootstrap brokers, comma separated.
        #[arg(long)]
        brokers: String,
        /// Topic to read.
        #[arg(long)]
        topic: String,
        /// Start at the oldest record (default: only new records).
        #[arg(long)]
        from_beginning: bool,
        /// Read only this partition.
        #[arg(long)]
        partition: Option<i32>,
        /// Exit after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Exit when no record arrived for this many milliseconds.
        #[arg(long)]
        idle_timeout_ms: Option<u64>,
        /// Only records of committed transactions (`isolation.level=read_committed`):
        /// what consumers of an agent with `kafka.delivery: exactly_once` must set.
        /// Without it, records of aborted transactions are printed too, as the Java
        /// console consumer does by default.
        #[arg(long)]
        read_committed: bool,
    },
    /// Print a shell completion script: `logagent completions bash > /etc/bash_completion.d/logagent`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff); the packages install it as logagent(1).
    #[command(hide = true)]
    Man {
        /// Write logagent.1 and a page per subcommand (logagent-run.1, …) here instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a JSON collect list and write it to a host's key, or a group's (exit 2 if
    /// invalid).
    Push {
        /// The JSON file (`-` for stdin).
        #[arg(long)]
        file: PathBuf,
        /// The host's IP (default: this host's).
        #[arg(long, conflicts_with = "group")]
        host: Option<String>,
        /// Write the group's key instead (every host in `etcd.groups` with it applies it).
        #[arg(long)]
        group: Option<String>,
    },
    /// Print the resolved key, its value, and what the host would collect and refuse.
    Show {
        /// The host's IP (default: this host's).
        #[arg(long)]
        host: Option<String>,
    },
}

/// The glibc tunable that sizes each thread's cache of freed chunks.
const TCACHE_TUNABLE: &str = "glibc.malloc.tcache_count";

/// Restarts the agent (same pid, same arguments) with glibc's per-thread cache of
/// freed chunks switched off, unless `GLIBC_TUNABLES` already sets it.
///
/// Every followed file has a thread, and every thread that ever freed memory keeps up
/// to 7 freed chunks per size class for itself. Measured with 2,000 quiet files: 5.3 KB
/// per file (64.0 MB RSS with the cache, 53.4 MB without); at 10,000 files that is
/// 53 MB held for nothing. Only an environment variable read at exec time sizes that
/// cache, hence the exec. It costs one exec at start; the hot path's A/B is in the
/// README. glibc before 2.26 (no tcache) ignores the variable; if the exec fails, the
/// agent goes on with the caches. Never twice (a marker in the environment, removed at
/// once): glibc drops tunables for a setuid or file-capability binary (`setcap
/// cap_dac_read_search+ep`, to read /var/log unprivileged), which is therefore not
/// exec'd at all (AT_SECURE); nor is an agent started through the dynamic loader
/// (`ld-linux-x86-64.so.2 logagent run`: /proc/self/exe is the loader).
fn without_thread_caches() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    if std::env::var_os(REEXEC_MARKER).is_some() {
        // SAFETY (of the environment change): no other thread exists yet.
        std::env::remove_var(REEXEC_MARKER);
        // The kernel named the process after /proc/self/exe ("exe"): give it back the
        // name it was started under, for pgrep -x, killall and ps.
        let name = std::path::Path::new(&argv0)
            .file_name()
            .map(|n| {
                n.as_encoded_bytes()
                    .iter()
                    .copied()
                    .take(15)
                    .collect::<Vec<u8>>()
            })
            .unwrap_or_default();
        if let Ok(name) = std::ffi::CString::new(name) {
            // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        }
        return;
    }
    // SAFETY: getauxval only reads the auxiliary vector.
    if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
        return;
    }
    let loader = std::fs::read_link("/proc/self/exe").is_ok_and(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ld-") || n.starts_with("ld."))
    });
    if loader {
        return;
    }
    let current = std::env::var_os("GLIBC_TUNABLES");
    let current = current.as_ref().map(|v| v.to_string_lossy().into_owned());
    if current
        .as_deref()
        .is_some_and(|v| v.contains(TCACHE_TUNABLE))
    {
        return;
    }
    let tunables = match current.as_deref() {
        Some(v) if !v.is_empty() => format!("{v}:{TCACHE_TUNABLE}=0"),
        _ => format!("{TCACHE_TUNABLE}=0"),
    };
    use std::os::unix::process::CommandExt;
    // Only returns on failure.
    let _ = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(REEXEC_MARKER, "1")
        .exec();
}

/// Set for the one exec of [`without_thread_caches`]; removed by the exec'd agent.
const REEXEC_MARKER: &str = "LOGAGENT_REEXECED";

/// SIGHUP's default action ends the process, and systemd does not restart a unit that
/// died of it: it is held back from the first instruction of ours that runs, a
/// constructor (before the Rust runtime and `main`), until the reload handler is there
/// (`run` unblocks it; a restart in place also holds back SIGTERM and SIGINT across the
/// exec, which keeps the mask). What comes before any code of ours (the kernel's exec,
/// the dynamic loader) cannot be covered from inside: under systemd, `Type=notify`
/// makes a reload wait for READY=1, sent once the handler exists.
extern "C" fn block_sighup_at_load() {
    set_signal_mask(libc::SIG_BLOCK, &[SIGHUP]);
}

#[used]
#[link_section = ".init_array"]
static BLOCK_SIGHUP_AT_LOAD: extern "C" fn() = block_sighup_at_load;

fn main() -> ExitCode {
    // Again, in case the constructor did not run (a loader without .init_array).
    set_signal_mask(libc::SIG_BLOCK, &[SIGHUP]);
    // One malloc arena per thread (glibc's default, up to 8 per core) multiplies the
    // memory that hundreds of tailer threads keep cached; two arenas are plenty for
    // threads that mostly sleep.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // `--version` names the commit and the librdkafka inside, which decide behaviour.
    let version: &'static str = Box::leak(
        format!(
            "{} (commit {}, librdkafka {})",
            env!("CARGO_PKG_VERSION"),
            env!("LOGAGENT_GIT_COMMIT"),
            rdkafka::util::get_rdkafka_version().1
        )
        .into_boxed_str(),
    );
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let command = cli.command.unwrap_or(Command::Run);
    if !matches!(command, Command::Run) {
        // Only `run` has a SIGHUP handler; the other commands end on a hangup as usual.
        set_signal_mask(libc::SIG_UNBLOCK, &[SIGHUP]);
        init_logging(LogFormat::Text);
    } else {
        without_thread_caches();
    }
    match run(command, &cli.config, || Cli::command().version(version)) {
        Ok(exit) => exit.into(),
        Err(f) => {
            match f.report {
                Report::Stderr => eprintln!("error: {}", f.error),
                Report::Log => error!("{}", f.error),
            }
            f.exit.into()
        }
    }
}

/// Runs `command`: what it printed went to stdout; a fatal error comes back to `main`,
/// which says it and maps it to its exit code.
fn run(
    command: Command,
    config: &std::path::Path,
    command_tree: impl Fn() -> clap::Command,
) -> Result<Exit, Fatal> {
    match command {
        Command::Run => run_agent(config),
        Command::CheckConfig => {
            let cfg = Config::load(config).map_err(Fatal::config)?;
            logagent::tls_files::check(&cfg.kafka.security).map_err(Fatal::config)?;
            print!("{}", cfg.to_yaml());
            if let Some(w) = cfg.plaintext_credentials() {
                eprintln!("warning: {w}");
            }
            Ok(Exit::Success)
        }
        Command::Config(cmd) => ops_command(config, |cfg| match cmd {
            ConfigCommand::Push { file, host, group } => {
                let text = if file.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(&file)
                }
                .map_err(|source| ops::OpsError::Read {
                    path: file.display().to_string(),
                    source,
                })?;
                let target = match &group {
                    Some(g) => ops::Target::Group(g),
                    None => ops::Target::Host(host.as_deref()),
                };
                ops::push(cfg, target, &text)
            }
            ConfigCommand::Show { host } => ops::show(cfg, host.as_deref()),
        }),
        Command::Status { host, json } => ops_command(config, |cfg| {
            let doc = ops::status(cfg, host.as_deref())?;
            Ok(if json {
                serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
            } else {
                ops::status_table(&doc, logagent::registry::unix_now())
            })
        }),
        Command::Fleet { json } => {
            let cfg = Config::load(config).map_err(Fatal::config)?;
            let f = ops::fleet(&cfg).map_err(ops_fatal)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
            } else {
                print!("{}", ops::fleet_table(&f, logagent::registry::unix_now()));
            }
            Ok(if f.unhealthy() > 0 {
                Exit::Unhealthy
            } else {
                Exit::Success
            })
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command_tree(), "logagent", &mut out);
            print_bytes(&out)
        }
        Command::Man { dir: Some(dir) } => {
            // Built: the generated `help` subcommand is listed, and gets a page.
            let mut c = command_tree();
            c.build();
            write_man_pages(c, &dir, "").map_err(|e| {
                Fatal::failure(anyhow::anyhow!(
                    "cannot write man pages to {}: {e}",
                    dir.display()
                ))
            })?;
            Ok(Exit::Success)
        }
        Command::Man { dir: None } => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command_tree())
                .render(&mut out)
                .map_err(|e| Fatal::failure(anyhow::anyhow!("cannot render the man page: {e}")))?;
            print_bytes(&out)
        }
        Command::Consume {
            brokers,
            topic,
            from_beginning,
            partition,
            count,
            idle_timeout_ms,
            read_committed,
        } => {
            let opts = ConsumeOptions {
                brokers,
                topic,
                from_beginning,
                partition,
                count,
                idle_timeout: idle_timeout_ms.map(Duration::from_millis),
                read_committed,
            };
            let stdout = std::io::stdout();
            consume(&opts, &mut stdout.lock())
                .map_err(|e| Fatal::failure(anyhow::anyhow!("consume: {e}")).logged())?;
            Ok(Exit::Success)
        }
    }
}

/// Writes the page of `cmd` (named `prefix-name`, as clap_mangen's SEE ALSO names it)
/// and of each visible subcommand into `dir`.
fn write_man_pages(cmd: clap::Command, dir: &std::path::Path, prefix: &str) -> std::io::Result<()> {
    let name = if prefix.is_empty() {
        cmd.get_name().to_owned()
    } else {
        format!("{prefix}-{}", cmd.get_name())
    };
    // `help`'s own subcommands mirror the real ones: its page lists none of them.
    let cmd = if cmd.get_name() == "help" {
        clap::Command::new("help")
            .about("Print the help of logagent or of the given subcommand(s)")
            .display_name(name.clone())
    } else {
        cmd.display_name(name.clone())
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub.clone(), dir, &name)?;
    }
    Ok(())
}

/// Writes generated text to stdout; a reader that went away (`| head`) is no error.
fn print_bytes(out: &[u8]) -> Result<Exit, Fatal> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(out) {
        Ok(()) => Ok(Exit::Success),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Exit::Success),
        Err(e) => Err(Fatal::failure(anyhow::anyhow!(
            "cannot write to stdout: {e}"
        ))),
    }
}

/// An etcd operator command's error: bad input is a config error (2), the rest 1.
fn ops_fatal(e: ops::OpsError) -> Fatal {
    if e.exit_code() == 2 {
        Fatal::config(e)
    } else {
        Fatal::failure(e)
    }
}

/// Loads the config, runs an etcd operator command, prints its report.
fn ops_command(
    config: &std::path::Path,
    f: impl FnOnce(&Config) -> Result<String, ops::OpsError>,
) -> Result<Exit, Fatal> {
    let cfg = Config::load(config).map_err(Fatal::config)?;
    let out = f(&cfg).map_err(ops_fatal)?;
    print!("{out}");
    Ok(Exit::Success)
}

fn init_logging(format: LogFormat) {
    logagent::logging::init(format, None);
}

/// `logagent run`: the agent, until a stop signal (or a restart in place).
fn run_agent(config: &std::path::Path) -> Result<Exit, Fatal> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            init_logging(LogFormat::Text);
            return Err(Fatal::config(e).logged());
        }
    };
    logagent::logging::init(cfg.agent.log_format, cfg.agent.log_level);
    if let Some(w) = cfg.plaintext_credentials() {
        warn!("{w}");
    }
    // A TLS file that is missing, not PEM, expired or not the key of its certificate is
    // named here; librdkafka's own handshake errors do not name the file.
    if let Err(e) = logagent::tls_files::check(&cfg.kafka.security) {
        error!("{e}");
    }
    // Before any thread: an agent that cannot checkpoint would ship and then re-ship
    // everything after its next restart; better one clear message and exit 1.
    registry::probe_writable(&cfg.agent.data_dir).map_err(|e| Fatal::failure(e).logged())?;
    let (stopper, token) = stop_pair();
    let (reloads_tx, reloads) = crossbeam_channel::unbounded();
    let mut reloader = Reloader::new(config, cfg.clone());
    // SIGHUP must not stop the agent (systemd's Restart=on-failure would not bring back
    // an exit 0), so every signal is taken over, and handled on a thread of its own:
    // reloading reads a file and logs, which a signal handler must not do.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|e| {
        Fatal::failure(anyhow::anyhow!("cannot install signal handlers: {e}")).logged()
    })?;
    // The handlers exist: what arrived meanwhile (held back) is delivered now.
    set_signal_mask(libc::SIG_UNBLOCK, &[SIGHUP, SIGTERM, SIGINT]);
    let handler = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            use std::sync::atomic::Ordering::SeqCst;
            let mut stops = 0u32;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    if stops > 0 || RESTART_IN_PLACE.load(SeqCst) != NO_RESTART {
                        warn!("SIGHUP while stopping: ignored");
                        continue;
                    }
                    let r = reloader.reload();
                    if let Some(collect) = r.collect {
                        // Fails only once the agent has stopped and needs no list.
                        let _ = reloads_tx.send(collect);
                    }
                    if r.restart_in_place {
                        RESTART_IN_PLACE.store(RESTART_REQUESTED, SeqCst);
                        stopper.stop();
                    }
                    continue;
                }
                let name = signal_name(sig).unwrap_or("signal");
                match RESTART_IN_PLACE.compare_exchange(
                    RESTART_REQUESTED,
                    RESTART_CANCELLED,
                    SeqCst,
                    SeqCst,
                ) {
                    Ok(_) => {
                        // The clean stop is under way already: it ends the process now.
                        warn!("{name} received during the restart in place: stopping instead (send it again to exit at once)");
                        stops = 1;
                        continue;
                    }
                    // The clean stop is done and the exec under way: end here instead.
                    Err(RESTART_EXECUTING) => {
                        warn!("{name} received during the restart in place: the clean stop is done, exiting");
                        std::process::exit(0);
                    }
                    Err(_) => {}
                }
                stops += 1;
                if stops == 1 {
                    warn!("{name} received: stopping cleanly (send it again to exit at once)");
                    stopper.stop();
                } else {
                    // The registry on disk only ever holds acknowledged offsets: exiting
                    // now costs duplicates after restart, never lost lines.
                    warn!("second {name}: exiting at once");
                    std::process::exit(130);
                }
            }
        });
    handler.map_err(|e| {
        Fatal::failure(anyhow::anyhow!("cannot start the signal thread: {e}")).logged()
    })?;
    // The handler exists: systemd may send SIGHUP from now on (`Type=notify`).
    if let Err(e) = logagent::notify::notify("READY=1") {
        warn!("cannot tell systemd the agent is ready (NOTIFY_SOCKET): {e}");
    }
    logagent::agent::run_reloadable(cfg, token, reloads).map_err(|e| {
        let fenced = matches!(
            e,
            logagent::agent::AgentError::Transactions(logagent::ship::txn::TxnError::Fenced(_))
        );
        let mut f = Fatal::failure(e);
        if fenced {
            f.exit = Exit::Fenced;
        }
        f.logged()
    })?;
    let restart = RESTART_IN_PLACE.compare_exchange(
        RESTART_REQUESTED,
        RESTART_EXECUTING,
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
    );
    if restart.is_ok() {
        return Err(restart_in_place());
    }
    Ok(Exit::Success)
}

/// Blocks or unblocks `signals` for the calling thread (threads started later inherit
/// its mask; the mask survives `exec`).
fn set_signal_mask(how: libc::c_int, signals: &[libc::c_int]) {
    // SAFETY: plain libc calls on a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Where a restart in place stands: none; asked for by SIGHUP (`kafka.security`
/// changed: after the clean stop, execute again); cancelled by a stop signal; the clean
/// stop done and the exec under way (a stop signal now just exits).
static RESTART_IN_PLACE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(NO_RESTART);
const NO_RESTART: u8 = 0;
const RESTART_REQUESTED: u8 = 1;
const RESTART_CANCELLED: u8 = 2;
const RESTART_EXECUTING: u8 = 3;

/// Executes this binary again with the same arguments (same pid, so systemd and
/// supervisors see no exit). Returns only if that fails: why.
fn restart_in_place() -> Fatal {
    let err = logagent::restart::exec_self(false);
    Fatal::failure(anyhow::anyhow!(
        "cannot restart in place: {err}; exiting (the offsets are on disk)"
    ))
    .logged()
}
