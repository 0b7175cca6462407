//! The `shardmq` binary: subcommand, flags and config in, broker out. All logic lives in the
//! library.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use shardmq::broker::{self, BrokerHandle};
use shardmq::config::{Cli, Command, Config, Flags, LogFormat};
use shardmq::logging::LogOutput;
use shardmq::metrics::{self, MetricsServer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match Cli::parse().into_command() {
        Command::Serve(flags) => serve(flags),
        Command::CheckConfig(flags) => check_config(flags),
        Command::Passwd(args) => match shardmq::auth::passwd::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("shardmq passwd: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Inspect(args) => match shardmq::store::inspect::inspect(&args.dir) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("shardmq inspect: {error}");
                ExitCode::from(2)
            }
        },
    }
}

/// `shardmq check-config`: the effective configuration as TOML on stdout, or why it is invalid
/// on stderr with exit status 2.
fn check_config(flags: Flags) -> ExitCode {
    let config = match Config::from_flags(flags) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shardmq: {error}");
            return ExitCode::from(2);
        }
    };
    match config.to_toml() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("shardmq: cannot print the configuration as TOML: {error}");
            ExitCode::from(2)
        }
    }
}

/// `shardmq [serve]`: runs the broker until SIGINT/SIGTERM, reloading on SIGHUP.
fn serve(flags: Flags) -> ExitCode {
    let mut config = match Config::from_flags(flags.clone()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shardmq: {error}");
            return ExitCode::from(2);
        }
    };
    // RUST_LOG, when set, wins over log_level, at start and on every reload.
    let log_from_env = EnvFilter::try_from_default_env().ok();
    let pinned_log = log_from_env.is_some();
    let filter = log_from_env
        .or_else(|| EnvFilter::try_new(&config.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, log_filter) = reload::Layer::new(filter);
    // log_file: appended to (stderr when unset), reopened on every SIGHUP.
    let logs = match LogOutput::open(config.log_file.as_deref()) {
        Ok(logs) => logs,
        Err(error) => {
            let path = config.log_file.as_deref().unwrap_or(Path::new(""));
            eprintln!(
                "shardmq: cannot open the log file {}: {error}",
                path.display()
            );
            return ExitCode::from(2);
        }
    };
    // log_format is read once: changing it needs a restart (reload_diff says so).
    let format = match config.log_format {
        LogFormat::Text => {
            let text = fmt::layer().with_writer(logs.clone());
            // No colour codes in a file; on stderr the default (colour unless NO_COLOR).
            if config.log_file.is_some() {
                text.with_ansi(false).boxed()
            } else {
                text.boxed()
            }
        }
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(logs.clone())
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .init();

    // Block SIGINT/SIGTERM/SIGHUP before any shard thread exists (threads inherit the mask),
    // then wait for them here: a signal never interrupts a shard.
    let signals = match block_signals() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("shardmq: cannot set up signal handling: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut handle = match broker::start(config.clone()) {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("shardmq: {error}");
            return ExitCode::from(2);
        }
    };
    log_access(&config);
    // The metrics endpoint, once every shard accepts; kept until the broker has stopped, so
    // that /healthz says 503 while clients are being disconnected.
    let metrics = match start_metrics(&config, &handle) {
        Ok(metrics) => metrics,
        Err(error) => {
            eprintln!("shardmq: {error}");
            handle.shutdown();
            handle.join();
            return ExitCode::from(2);
        }
    };
    // Wait for a signal, and watch the shards meanwhile: a dead shard ends the process with a
    // failure status so that a supervisor restarts it, instead of leaving it half alive.
    loop {
        match wait_for(&signals, SHARD_CHECK) {
            Some(libc::SIGHUP) => {
                // Log rotation first, whatever the file says now: the renamed file is left
                // behind and the lines that follow go to a new one at the configured path.
                if config.log_file.is_some() {
                    reopen_log(&logs, config.log_file.as_deref());
                }
                if let Some(new) = reload(&flags, &handle) {
                    if !pinned_log && new.log_level != config.log_level {
                        set_log_level(&log_filter, &new.log_level);
                    }
                    if new.log_file != config.log_file {
                        tracing::info!(
                            log_file = %display_log_file(new.log_file.as_deref()),
                            "the log goes on elsewhere"
                        );
                        reopen_log(&logs, new.log_file.as_deref());
                    }
                    config = new;
                }
            }
            Some(signal) => {
                tracing::info!(signal, "stopping: disconnecting clients");
                handle.shutdown();
                handle.join();
                drop(metrics);
                tracing::info!("stopped");
                return ExitCode::SUCCESS;
            }
            None => {}
        }
        if handle.failed() {
            tracing::error!("a shard died: stopping the broker with a failure status");
            handle.shutdown();
            if !handle.join_timeout(FAILED_STOP_GRACE) {
                tracing::error!("the remaining shards did not stop in time; exiting anyway");
            }
            drop(metrics);
            return ExitCode::from(EXIT_SHARD_DIED);
        }
    }
}

/// Says who may connect, and how to open the broker up when it only serves loopback.
fn log_access(config: &Config) {
    let anonymous = config.anonymous_allowed();
    match (&config.password_file, config.loopback_only()) {
        (None, true) => tracing::info!(
            "loopback only, anonymous clients accepted; to serve the network use \
             `--listen 0.0.0.0:1883 --password-file FILE` (create it with `shardmq passwd -c FILE USER`) \
             or `--listen 0.0.0.0:1883 --allow-anonymous`"
        ),
        (None, false) => tracing::warn!(
            "allow_anonymous: clients from the network connect without credentials"
        ),
        (Some(file), _) => tracing::info!(
            password_file = %file.display(),
            anonymous,
            "clients authenticate with the password file"
        ),
    }
    if let Some(acl) = &config.acl_file {
        tracing::info!(acl_file = %acl.display(), "topic access from the ACL file");
    }
}

/// Starts the Prometheus endpoint if `metrics_listen` is set.
///
/// The `/admin` endpoints are served there too; they answer 404 until an admin token is
/// configured (a reload may set or change it).
fn start_metrics(config: &Config, handle: &BrokerHandle) -> Result<Option<MetricsServer>, String> {
    let admin = handle.admin();
    let Some(addr) = config.metrics_listen else {
        if admin.enabled() {
            tracing::warn!("admin_token is set but metrics_listen is not: no /admin endpoints");
        }
        return Ok(None);
    };
    let server = metrics::spawn_with_admin(addr, handle.stats_source(), Some(admin.clone()))
        .map_err(|error| format!("cannot serve metrics on {addr}: {error}"))?;
    if admin.enabled() {
        tracing::info!(addr = %server.local_addr(), "serving /metrics, /healthz and /admin");
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "the admin token travels in clear text (plain HTTP) on a non-loopback address"
            );
        }
    } else {
        tracing::info!(addr = %server.local_addr(), "serving /metrics and /healthz");
    }
    Ok(Some(server))
}

/// SIGHUP: builds the configuration again the way it was built at start (the same flags over
/// the file read anew), validates it and hands it to every shard. Returns the new configuration
/// if the broker took it; on any error logs why and keeps the running one.
fn reload(flags: &Flags, handle: &BrokerHandle) -> Option<Config> {
    tracing::info!("SIGHUP: reloading the configuration");
    let config = match Config::from_flags(flags.clone()) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "configuration not reloaded; the running one stays");
            return None;
        }
    };
    match handle.reload(config.clone()) {
        Ok(report) => {
            if report.applied.is_empty() && report.restart_needed.is_empty() {
                tracing::info!("configuration reloaded: nothing changed");
            } else if !report.applied.is_empty() {
                tracing::info!(applied = ?report.applied, "configuration reloaded");
            }
            if !report.restart_needed.is_empty() {
                tracing::warn!(
                    keys = ?report.restart_needed,
                    "changed settings that take effect only after a restart"
                );
            }
            Some(config)
        }
        Err(error) => {
            tracing::error!(%error, "configuration not reloaded; the running one stays");
            None
        }
    }
}

/// Opens the log file at `path` anew (stderr for `None`) and says so in it; if it cannot be
/// opened, the log stays where it was and says why.
fn reopen_log(logs: &LogOutput, path: Option<&Path>) {
    let log_file = display_log_file(path);
    match logs.reopen(path) {
        Ok(()) => tracing::info!(%log_file, "log file reopened"),
        Err(error) => tracing::error!(
            %error,
            %log_file,
            "cannot open the log file; logging goes on where it was"
        ),
    }
}

/// A `log_file` for log lines: its path, or `stderr`.
fn display_log_file(path: Option<&Path>) -> String {
    path.map_or_else(|| "stderr".to_string(), |path| path.display().to_string())
}

/// Applies a reloaded `log_level` to the running log filter.
fn set_log_level<S>(filter: &reload::Handle<EnvFilter, S>, log_level: &str) {
    let result = EnvFilter::try_new(log_level)
        .map_err(|error| error.to_string())
        .and_then(|new| filter.reload(new).map_err(|error| error.to_string()));
    match result {
        Ok(()) => tracing::info!(log_level, "log level changed"),
        Err(error) => tracing::error!(%error, log_level, "cannot change the log level"),
    }
}

/// How often the main thread checks that every shard is alive while it waits for signals.
const SHARD_CHECK: std::time::Duration = std::time::Duration::from_millis(100);
/// Time the surviving shards get to disconnect their clients after one died.
const FAILED_STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(1500);
/// Exit status when a shard died (EX_SOFTWARE).
const EXIT_SHARD_DIED: u8 = 70;

/// Blocks SIGINT, SIGTERM (stop) and SIGHUP (reload) in the calling thread and every thread it
/// starts afterwards; returns the set for [`wait_for`].
fn block_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: plain libc signal-set manipulation on a zeroed sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// A blocked signal from `set` received within `within`, if any.
fn wait_for(set: &libc::sigset_t, within: std::time::Duration) -> Option<i32> {
    let timeout = libc::timespec {
        tv_sec: within.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(within.subsec_nanos() as i32),
    };
    // SAFETY: `set` holds blocked signals; a null siginfo pointer is allowed.
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    (signal > 0).then_some(signal)
}
