//! The `shardmq` binary: flags and config in, broker out. All logic lives in the library.

use std::process::ExitCode;

use clap::Parser;
use shardmq::broker;
use shardmq::config::{Config, Flags};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::from_flags(Flags::parse()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shardmq: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    // Block SIGINT/SIGTERM before any shard thread exists (threads inherit the mask), then wait
    // for them here: a signal never interrupts a shard.
    let signals = match block_termination_signals() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("shardmq: cannot set up signal handling: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut handle = match broker::start(config) {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("shardmq: {error}");
            return ExitCode::from(2);
        }
    };
    // Wait for a signal, and watch the shards meanwhile: a dead shard ends the process with a
    // failure status so that a supervisor restarts it, instead of leaving it half alive.
    loop {
        if let Some(signal) = wait_for(&signals, SHARD_CHECK) {
            tracing::info!(signal, "stopping: disconnecting clients");
            handle.shutdown();
            handle.join();
            tracing::info!("stopped");
            return ExitCode::SUCCESS;
        }
        if handle.failed() {
            tracing::error!("a shard died: stopping the broker with a failure status");
            handle.shutdown();
            if !handle.join_timeout(FAILED_STOP_GRACE) {
                tracing::error!("the remaining shards did not stop in time; exiting anyway");
            }
            return ExitCode::from(EXIT_SHARD_DIED);
        }
    }
}

/// How often the main thread checks that every shard is alive while it waits for signals.
const SHARD_CHECK: std::time::Duration = std::time::Duration::from_millis(100);
/// Time the surviving shards get to disconnect their clients after one died.
const FAILED_STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(1500);
/// Exit status when a shard died (EX_SOFTWARE).
const EXIT_SHARD_DIED: u8 = 70;

fn block_termination_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: plain libc signal-set manipulation on a zeroed sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
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
