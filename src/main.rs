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
    let handle = match broker::start(config) {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("shardmq: {error}");
            return ExitCode::from(2);
        }
    };
    let signal = wait_for(&signals);
    tracing::info!(signal, "stopping: disconnecting clients");
    handle.shutdown();
    handle.join();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

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

fn wait_for(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` holds blocked signals; sigwait stores the one received.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}
