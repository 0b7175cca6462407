//! The broker's system calls and context switches over an exact span, from `perf stat`.
//!
//! `perf stat -p <broker> -D -1` attaches at once with its counters disabled; the harness
//! enables them at the start of the span and disables them at its end through perf's control
//! FIFO (`--control fifo:ctl,ack`, perf 5.9 or later), waiting for perf's acknowledgement each
//! time, so the counts cover the span as closely as the /proc samples of the broker's CPU do.
//! While the `raw_syscalls:sys_enter` tracepoint is enabled every system call of the machine
//! takes the kernel's tracing path, which costs a little: the report says so.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sys::mono_ns;

/// The events counted: every system call entry, every context switch.
pub const EVENTS: &str = "raw_syscalls:sys_enter,context-switches";

/// How long perf gets to start and to acknowledge a command.
const ACK_TIMEOUT_MS: u64 = 5_000;

/// What perf counted while enabled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfCounts {
    /// `raw_syscalls:sys_enter`: system calls entered by the broker's threads.
    pub syscalls: Option<u64>,
    /// `context-switches` of the broker's threads (voluntary and involuntary).
    pub ctx_switches: Option<u64>,
}

/// A running `perf stat` attached to one process.
pub struct PerfCounter {
    child: Option<Child>,
    ctl: File,
    ack: File,
    dir: PathBuf,
    out: PathBuf,
    err: PathBuf,
}

fn mkfifo(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "a NUL in the temporary path".to_string())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

impl PerfCounter {
    /// Starts `perf stat` on `pid` with its counters disabled.
    pub fn start(pid: u32) -> Result<PerfCounter, String> {
        let dir = std::env::temp_dir().join(format!(
            "bench-harness-perf-{}-{}",
            std::process::id(),
            mono_ns()
        ));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let ctl_path = dir.join("ctl");
        let ack_path = dir.join("ack");
        let out = dir.join("stat.csv");
        let err = dir.join("stderr.txt");
        let cleanup = |e: String| {
            let _ = fs::remove_dir_all(&dir);
            e
        };
        mkfifo(&ctl_path).map_err(cleanup)?;
        mkfifo(&ack_path).map_err(cleanup)?;
        // Read-write opens of a FIFO never block, and keep it open whatever perf does.
        let open = |p: &PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(p)
                .map_err(|e| format!("cannot open {}: {e}", p.display()))
        };
        let ctl = open(&ctl_path).map_err(cleanup)?;
        let ack = open(&ack_path).map_err(cleanup)?;
        let stderr = File::create(&err).map_err(|e| cleanup(format!("stderr file: {e}")))?;
        let control = format!("fifo:{},{}", ctl_path.display(), ack_path.display());
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", EVENTS, "-p"])
            .arg(pid.to_string())
            .args(["-D", "-1", "--control"])
            .arg(control)
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| cleanup(format!("cannot run perf: {e}")))?;
        Ok(PerfCounter {
            child: Some(child),
            ctl,
            ack,
            dir,
            out,
            err,
        })
    }

    /// Starts counting; returns once perf has acknowledged.
    pub fn enable(&mut self) -> Result<(), String> {
        self.command("enable")
    }

    /// Stops counting; returns once perf has acknowledged.
    pub fn disable(&mut self) -> Result<(), String> {
        self.command("disable")
    }

    fn command(&mut self, what: &str) -> Result<(), String> {
        self.ctl
            .write_all(format!("{what}\n").as_bytes())
            .map_err(|e| format!("perf control: {e}"))?;
        let deadline = mono_ns() + ACK_TIMEOUT_MS * 1_000_000;
        let mut got = Vec::new();
        loop {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("perf exited ({status}): {}", self.stderr_tail()));
                }
            }
            let mut pfd = libc::pollfd {
                fd: self.ack.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            let mut buf = [0u8; 64];
            match self.ack.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => {}
            }
            if got.windows(3).any(|w| w == b"ack") {
                return Ok(());
            }
            if mono_ns() >= deadline {
                return Err(format!(
                    "perf did not acknowledge `{what}` within {} s: {}",
                    ACK_TIMEOUT_MS / 1000,
                    self.stderr_tail()
                ));
            }
        }
    }

    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.err).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("Events "))
            .collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
        if tail.is_empty() {
            "no message".into()
        } else {
            tail
        }
    }

    /// Stops perf (SIGINT makes it write its counts) and reads what it counted.
    pub fn finish(mut self) -> Result<PerfCounts, String> {
        let Some(mut child) = self.child.take() else {
            return Err("perf is not running".into());
        };
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = mono_ns() + 5_000_000_000;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if mono_ns() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("perf did not stop within 5 s of SIGINT".into());
                }
            }
        }
        let text = fs::read_to_string(&self.out)
            .map_err(|e| format!("no perf output ({e}): {}", self.stderr_tail()))?;
        let counts = parse(&text);
        if counts.syscalls.is_none() && counts.ctx_switches.is_none() {
            return Err(format!(
                "perf counted nothing: {}",
                text.lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join(" / ")
            ));
        }
        Ok(counts)
    }
}

impl Drop for PerfCounter {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Reads `perf stat -x ,` output: `count,unit,event,...` lines; `<not counted>` and
/// `<not supported>` counts are absent.
pub fn parse(text: &str) -> PerfCounts {
    let mut counts = PerfCounts::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(value), Some(event)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let value = value.round() as u64;
        match event.trim() {
            "raw_syscalls:sys_enter" => counts.syscalls = Some(value),
            "context-switches" | "cs" => counts.ctx_switches = Some(value),
            _ => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv_output() {
        let text = "# started on Wed Dec  2 15:47:20 2026\n\n\
                    3792516,,raw_syscalls:sys_enter,441582009,100.00,,\n\
                    103,,context-switches,441574910,100.00,,\n";
        assert_eq!(
            parse(text),
            PerfCounts {
                syscalls: Some(3_792_516),
                ctx_switches: Some(103)
            }
        );
        let text = "<not counted>,,raw_syscalls:sys_enter,0,100.00,,\n\
                    <not supported>,,context-switches,0,100.00,,\n";
        assert_eq!(parse(text), PerfCounts::default());
    }

    #[test]
    fn counts_its_own_process_when_perf_works() {
        // Only where perf exists and may trace: otherwise start or enable fails, which the
        // harness reports as a warning (and this test accepts).
        let Ok(mut perf) = PerfCounter::start(std::process::id()) else {
            return;
        };
        if perf.enable().is_err() {
            return;
        }
        for _ in 0..200 {
            let _ = fs::metadata("/");
        }
        std::thread::sleep(Duration::from_millis(20));
        perf.disable().unwrap();
        let counts = perf.finish().unwrap();
        assert!(counts.syscalls.unwrap() >= 200, "{counts:?}");
    }
}
